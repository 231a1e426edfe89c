//! The running gateway: binds both listeners, serves them until shutdown, drains under a
//! deadline, and reloads certificates, keys and publishers on demand ([`Gateway::reload`]).
//!
//! The caller decides mode, files and ports; nothing here knows whether it runs the dev setup.

mod grpc;
mod h1_stream;
mod http;
mod reload;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use reload::{load_material, ConfigSource, Material, ReloadError};

use crate::auth::Revocations;
use crate::authz::Authorizer;
use crate::broker::{Broker, MemoryLog, RedisLog};
use crate::config::{BrokerKind, Config};
use crate::control::{Control, Node as ControlNode};
use crate::history::{History, SAMPLE_EVERY};
use crate::hub::Hub;
use crate::ingest::pipeline::Pipeline;
use crate::ingest::RateLimiter;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::state::{AppState, DemoState};
use reload::Reloader;

/// How long shutdown waits for streams and publishes to finish.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Installs the ring crypto provider for rustls (once per process).
pub fn install_crypto_provider() {
    // Err means one is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A running gateway.
pub struct Gateway {
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Shared state.
    pub state: AppState,
    reloader: Reloader,
    tasks: TaskTracker,
}

impl Gateway {
    /// Binds both listeners and starts serving `config` as given: the caller decides the mode
    /// (the demo page is mounted only with `demo`). [`Gateway::reload`] re-reads the
    /// certificate and key files `config` names.
    ///
    /// # Errors
    /// When a listener cannot bind, a certificate or key cannot be loaded, or the broker
    /// cannot be set up.
    pub async fn start(config: Config, demo: Option<DemoState>) -> anyhow::Result<Self> {
        Self::start_inner(config, demo, None).await
    }

    /// Like [`Gateway::start`], with `config` as read from `source`: [`Gateway::reload`] reads
    /// `source` again (so a reload also picks up `[[publishers]]`).
    ///
    /// # Errors
    /// As [`Gateway::start`].
    pub async fn start_reloadable(
        config: Config,
        demo: Option<DemoState>,
        source: ConfigSource,
    ) -> anyhow::Result<Self> {
        Self::start_inner(config, demo, Some(source)).await
    }

    async fn start_inner(
        mut config: Config,
        demo: Option<DemoState>,
        source: Option<ConfigSource>,
    ) -> anyhow::Result<Self> {
        let material = load_material(&config).map_err(|errors| {
            anyhow::anyhow!(errors
                .iter()
                .map(|e| format!("{e:#}"))
                .collect::<Vec<_>>()
                .join("\n"))
        })?;
        let started = Arc::new(config.clone());
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone()));
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let authz = Authorizer::new(material.authz, metrics.clone());
        let revocations = Arc::new(Revocations::new(config.jwt.max_token_lifetime_secs));
        let node = ControlNode::new(
            hub.clone(),
            revocations.clone(),
            authz.clone(),
            config.limits.max_channels_per_connection,
        );
        let control = match config.broker.kind {
            BrokerKind::Memory => Control::local(node),
            BrokerKind::Redis => {
                Control::redis(
                    &config.broker,
                    node,
                    metrics.clone(),
                    shutdown.clone(),
                    &tasks,
                )
                .await?
            }
        };
        let broker = match config.broker.kind {
            BrokerKind::Memory => Broker::Memory(Arc::new(
                MemoryLog::new(&config.history, hub.clone())
                    .with_snapshots(config.channel_types.clone()),
            )),
            BrokerKind::Redis => {
                let log = RedisLog::connect(
                    &config.broker,
                    &config.history,
                    config.channel_types.clone(),
                    hub.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                    &tasks,
                )
                .await?;
                Broker::Redis(log)
            }
        };
        let http_listener = http::bind(config.http.addr)
            .with_context(|| format!("binding http.addr {}", config.http.addr))?;
        let grpc_listener = TcpListener::bind(config.grpc.addr)
            .await
            .with_context(|| format!("binding grpc.addr {}", config.grpc.addr))?;
        let http_addr = http_listener.local_addr()?;
        let grpc_addr = grpc_listener.local_addr()?;
        // The live permissions are the pipeline's; the state's copy of the configuration holds
        // none, so nothing can read stale ones after a reload.
        let publishers = Live::new(std::mem::take(&mut config.publishers));
        let limiter = Arc::new(RateLimiter::new(config.limits.publisher_events_per_sec));
        let config = Arc::new(config);
        let verifier = Live::new(material.verifier);
        let grpc_tls = Live::new(material.grpc_tls);
        let http_tls = material.http_tls.map(Live::new);
        let state = AppState {
            pipeline: Pipeline {
                config: config.clone(),
                publishers: publishers.clone(),
                limiter,
                broker: broker.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
            },
            config,
            hub,
            broker,
            verifier: verifier.clone(),
            metrics: metrics.clone(),
            history: Arc::new(History::new(metrics.clone())),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
            started: Instant::now(),
            tls: http_tls.is_some(),
            demo,
            authz: authz.clone(),
            revocations,
            control,
        };
        let routes = crate::router::grpc_routes(&state).await?;
        tasks.spawn(state.history.clone().run(SAMPLE_EVERY, shutdown.clone()));
        tasks.spawn({
            let grpc = grpc::serve(
                grpc_listener,
                routes,
                grpc_tls.clone(),
                shutdown.clone(),
                tasks.clone(),
            );
            async move {
                if let Err(e) = grpc.await {
                    tracing::error!(error = %e, "gRPC server failed");
                }
            }
        });
        tasks.spawn(http::serve(
            http_listener,
            crate::router::router(state.clone()),
            http_tls.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
        tracing::info!(%http_addr, %grpc_addr, broker = ?state.config.broker.kind, "gateway listening");
        Ok(Self {
            http_addr,
            grpc_addr,
            state,
            reloader: Reloader {
                source,
                started,
                verifier,
                publishers,
                grpc_tls,
                http_tls,
                metrics,
                running: Mutex::new(()),
                authz,
            },
            tasks,
        })
    }

    /// Re-reads the configuration sources and every certificate and key they name, and swaps
    /// them in only when all of them load: TLS of both listeners (new handshakes), the JWT key
    /// (new requests), `[[publishers]]` (the next publish). Open streams and connections stay.
    /// Counted in `sse_gateway_config_reloads_total{result}`.
    ///
    /// # Errors
    /// [`ReloadError`] naming what is wrong; the running material is kept.
    pub fn reload(&self) -> Result<(), ReloadError> {
        self.reloader.reload()
    }

    /// Starts a graceful shutdown: stop accepting, flush and close streams, finish publishes.
    pub fn shutdown(&self) {
        self.state.shutdown.cancel();
    }

    /// Waits for everything to finish after [`Gateway::shutdown`], up to a deadline.
    pub async fn wait(self) {
        self.tasks.close();
        if tokio::time::timeout(DRAIN_DEADLINE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain deadline passed; closing remaining connections");
        }
    }
}

/// Reading PEM files into rustls types, with errors that name the key and file.
mod tls {
    use std::path::Path;

    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    /// Every certificate in a PEM file (at least one).
    pub(super) fn certs(key: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("{key} {shown}"))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{key} {shown}: not a PEM certificate"))?;
        if certs.is_empty() {
            anyhow::bail!("{key} {shown}: no PEM certificate found");
        }
        Ok(certs)
    }

    /// The private key of a PEM file.
    pub(super) fn key(key: &str, path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_file(path)
            .with_context(|| format!("{key} {}: not a PEM private key", path.display()))
    }
}
