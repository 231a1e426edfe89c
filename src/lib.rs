//! sse-gateway: backend services publish events over mTLS gRPC; browsers receive every channel
//! they may read over one Server-Sent-Events stream, with resume and nothing lost silently.
//!
//! How an event flows, module by module:
//!
//! ```text
//! ingest::publisher  gRPC Publish → publisher from client cert (auth::mtls)
//! ingest::pipeline   validate once (permission, channel, event, compact JSON) → rate limit →
//!                    broker::Broker::append
//! broker             the ordered log (memory | redis): cursor, retention, idempotency keys,
//!                    the latest event of `snapshot` channels (kept apart from retention)
//! hub                channel → local connections; the frame rendered once, shared as Bytes,
//!                    offered to each bounded queue without blocking (overflow = slow consumer)
//! egress::sse        GET /api/sse: Subscriber extractor (auth) → authorise channels → register
//!                    in hub → latest values (no cursor or gap) or replay after Last-Event-ID
//!                    → live frames, heartbeats, expiry
//! admin              /health, /ready, /metrics, /admin (Admin extractor); history samples
//!                    the metrics every 5 s for the dashboard's 15-minute charts
//! authz              the app's permission callback ([authz]): asked by egress for channels
//!                    the token does not settle, answers cached per (user, channel)
//! control            gRPC Control: disconnect a user / remove channels on every node (through
//!                    Redis on the Redis broker); token revocations (auth::Revocations)
//! ```
//!
//! Around them, imports pointing down this list only:
//!
//! ```text
//! main.rs            mode (serve | dev | demo | config check | tools) → Config + its source
//! server             Gateway: binds, serves (http: TLS + h2; grpc: own TLS accept loop),
//!                    drains on shutdown, reloads certificates, keys and publishers
//! router             the composition root: HTTP routes and gRPC services over the state
//! state              AppState of cheap handles; handlers take parts of it through FromRef
//! live               Live<T>: the handle a reload swaps (verifier, TLS, publishers)
//! ```
//!
//! Start-up: `main` picks the mode; [`config`] layers defaults ⊕ file ⊕ env ⊕ flags and validates
//! them into one [`config::Config`]; only the dev modes pass through [`dev`] (dev PKI, secret).
//! [`app`] keeps the names tests and tools used before `server`/`state` existed.
#![warn(missing_docs)]

mod admin;
pub mod app;
pub mod auth;
mod authz;
pub mod broker;
pub mod channel;
pub mod client;
pub mod config;
mod control;
pub mod demo;
pub mod dev;
mod egress;
pub mod error;
pub mod event;
pub mod history;
pub mod hub;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod pki;
mod router;
pub mod server;
pub mod state;
