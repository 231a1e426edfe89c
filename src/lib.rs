//! sse-gateway: backend services publish events over mTLS gRPC; browsers receive every channel
//! they may read over one Server-Sent-Events stream, with resume and nothing lost silently.
//!
//! How an event flows, module by module:
//!
//! ```text
//! ingest::publisher  gRPC Publish → publisher from client cert (auth::mtls) → validate once
//!                    (channel, event, compact JSON) → broker::Broker::append
//! broker             the ordered log (memory | redis): cursor, retention, idempotency keys
//! hub                channel → local connections; the frame rendered once, shared as Bytes,
//!                    offered to each bounded queue without blocking (overflow = slow consumer)
//! egress::sse        GET /api/sse: JWT (auth::jwt) → authorise channels → register in hub →
//!                    replay after Last-Event-ID → live frames, heartbeats, expiry
//! admin              /health, /ready, /metrics, /admin
//! app                AppState, routers, listeners, graceful drain
//! ```
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod client;
pub mod config;
pub mod demo;
pub mod egress;
pub mod error;
pub mod event;
pub mod hub;
pub mod ingest;
pub mod metrics;
pub mod pki;
