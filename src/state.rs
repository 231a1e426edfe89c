//! The state every HTTP handler can ask for: cheap handles only. With `#[derive(FromRef)]` a
//! handler takes just the part it uses (`State<Arc<Hub>>`, `State<Broker>`) instead of the whole.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::FromRef;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{JwtVerifier, Revocations, TokenAuth};
use crate::authz::Authorizer;
use crate::broker::Broker;
use crate::config::Config;
use crate::control::Control;
use crate::history::History;
use crate::hub::Hub;
use crate::ingest::pipeline::Pipeline;
use crate::live::Live;
use crate::metrics::Metrics;

/// The demo page and its token endpoint (dev setup only; `serve` never has one).
#[derive(Clone)]
pub struct DemoState {
    /// The dev HS256 secret used to mint the demo page's tokens.
    pub secret: Arc<str>,
}

/// Cheap handles shared by every request handler.
#[derive(Clone, FromRef)]
pub struct AppState {
    /// The start-up configuration. Its `publishers` are empty: the live permissions are in
    /// `pipeline`, and the live token key in `verifier` (a reload replaces both).
    pub config: Arc<Config>,
    /// Local fan-out.
    pub hub: Arc<Hub>,
    /// The event log.
    pub broker: Broker,
    /// Subscriber token verifier, read per request (a reload replaces it).
    pub(crate) verifier: Live<JwtVerifier>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The last 15 minutes of metrics, for the admin dashboard.
    pub history: Arc<History>,
    /// Cancelled on shutdown; every stream ends on it.
    pub(crate) shutdown: CancellationToken,
    /// Every task a request spawns, so that shutdown waits for it.
    pub(crate) tasks: TaskTracker,
    /// Process start, for `/health`'s uptime.
    pub(crate) started: Instant,
    /// Validate → rate limit → append, for the gRPC `Publisher` service.
    pub(crate) pipeline: Pipeline,
    /// Whether the HTTP listener speaks TLS (cookies get `Secure`).
    pub tls: bool,
    /// Set in the dev setup: mounts the demo page.
    pub(crate) demo: Option<DemoState>,
    /// The app's permission callback and its answer cache (a reload swaps its settings).
    pub(crate) authz: Authorizer,
    /// Users whose earlier tokens are refused.
    pub(crate) revocations: Arc<Revocations>,
    /// Disconnects and channel removals, on every node.
    pub(crate) control: Control,
}

impl FromRef<AppState> for TokenAuth {
    fn from_ref(state: &AppState) -> Self {
        Self {
            verifier: state.verifier.clone(),
            allow_query_token: state.config.http.allow_query_token,
            secure_cookies: state.tls,
            revocations: state.revocations.clone(),
        }
    }
}
