//! The application: shared state, the HTTP router, both listeners, and drain on shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::auth::JwtVerifier;
use crate::broker::{Broker, MemoryLog, RedisLog};
use crate::config::{BrokerKind, Config};
use crate::egress::TransportKill;
use crate::hub::Hub;
use crate::ingest::publisher::PublisherService;
use crate::ingest::{pb, RateLimiter};
use crate::metrics::Metrics;

/// How long shutdown waits for streams and publishes to finish.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Demo-mode extras (`sse-gateway demo`).
#[derive(Clone)]
pub struct DemoState {
    /// The HS256 secret used to mint the demo page's tokens.
    pub secret: Arc<str>,
}

/// Cheap handles shared by every request handler.
#[derive(Clone)]
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Local fan-out.
    pub hub: Arc<Hub>,
    /// The event log.
    pub broker: Broker,
    /// Subscriber token verifier.
    pub verifier: Arc<JwtVerifier>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Cancelled on shutdown; every stream ends on it.
    pub shutdown: CancellationToken,
    /// Process start.
    pub started: Instant,
    /// Per-publisher rate limit.
    pub limiter: Arc<RateLimiter>,
    /// Whether the HTTP listener speaks TLS (cookies get `Secure`).
    pub tls: bool,
    /// Set in demo mode.
    pub demo: Option<DemoState>,
}

/// The HTTP routes.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/api/sse", get(crate::egress::sse::stream))
        .route(
            "/api/sse/session",
            post(crate::egress::session::create).delete(crate::egress::session::delete),
        )
        .route(
            "/api/sse/subscriptions",
            post(crate::egress::subscriptions::change),
        )
        .route("/health", get(crate::admin::health))
        .route("/ready", get(crate::admin::ready))
        .route("/metrics", get(crate::admin::metrics))
        .route("/admin", get(crate::admin::page))
        .route("/admin/session", post(crate::admin::session))
        .route("/admin/connections", get(crate::admin::connections))
        .route("/admin/channels", get(crate::admin::channels));
    if state.demo.is_some() {
        router = router.merge(crate::demo::routes());
    }
    let cors = &state.config.raw.http.cors_origins;
    let router = if cors.is_empty() {
        router
    } else {
        let origins: Vec<http::HeaderValue> = cors
            .iter()
            .filter_map(|o| http::HeaderValue::from_str(o).ok())
            .collect();
        router.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_credentials(true)
                .allow_methods([http::Method::GET, http::Method::POST, http::Method::DELETE])
                .allow_headers([
                    http::header::AUTHORIZATION,
                    http::header::CONTENT_TYPE,
                    http::HeaderName::from_static("last-event-id"),
                ]),
        )
    };
    router.with_state(state)
}

/// A running gateway.
pub struct Gateway {
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Shared state.
    pub state: AppState,
    tasks: TaskTracker,
}

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Listen backlog: a gateway restart makes every browser reconnect at once.
const LISTEN_BACKLOG: u32 = 8192;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Installs the ring crypto provider for rustls (once per process).
pub fn install_crypto_provider() {
    // Err means one is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn dev_certs_dir(config: &Config) -> PathBuf {
    Path::new(&config.raw.grpc.tls_cert)
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."))
}

impl Gateway {
    /// Binds both listeners and starts serving.
    ///
    /// # Errors
    /// When a listener cannot bind, a certificate or key cannot be loaded, or the broker
    /// cannot be set up.
    pub async fn start(config: Config, demo: bool) -> anyhow::Result<Self> {
        install_crypto_provider();
        let mut dev_secret = None;
        if config.dev {
            let dir = dev_certs_dir(&config);
            crate::pki::ensure_dev_pki(&dir, &crate::pki::DEV_SERVICES)?;
            if config.raw.jwt.secret.is_empty() && config.raw.jwt.secret_file.is_empty() {
                dev_secret = Some(crate::pki::ensure_dev_secret(&dir)?);
            }
        }
        // The dev setup serves the demo page too (its panels go live with `sse-gateway demo`).
        let demo_secret = match (&dev_secret, config.raw.jwt.algorithm.as_str()) {
            (Some(s), _) => Some(s.clone()),
            (None, "HS256") if !config.raw.jwt.secret.is_empty() => {
                Some(config.raw.jwt.secret.clone())
            }
            _ => None,
        };
        // The dev setup serves the demo page too (its panels go live with `sse-gateway demo`).
        let demo = match (demo, config.dev, demo_secret) {
            (true, _, None) => {
                anyhow::bail!("demo mode needs the dev setup or an HS256 jwt.secret")
            }
            (true, _, Some(secret)) | (false, true, Some(secret)) => Some(DemoState {
                secret: Arc::from(secret.as_str()),
            }),
            _ => None,
        };
        let verifier = JwtVerifier::from_config(&config.raw.jwt, dev_secret.as_deref())?;
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone()));
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let broker = match config.broker_kind {
            BrokerKind::Memory => {
                Broker::Memory(Arc::new(MemoryLog::new(&config.raw.history, hub.clone())))
            }
            BrokerKind::Redis => {
                let log = RedisLog::connect(
                    &config.raw.broker,
                    &config.raw.history,
                    hub.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                )
                .await?;
                Broker::Redis(log)
            }
        };
        check_grpc_tls(&config.raw.grpc)?;
        let http_tls = if config.raw.http.tls_cert.is_empty() {
            None
        } else {
            Some(Arc::new(http_tls_config(
                &config.raw.http.tls_cert,
                &config.raw.http.tls_key,
            )?))
        };
        let http_listener = bind(config.http_addr)
            .with_context(|| format!("binding http.addr {}", config.http_addr))?;
        let grpc_listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("binding grpc.addr {}", config.grpc_addr))?;
        let http_addr = http_listener.local_addr()?;
        let grpc_addr = grpc_listener.local_addr()?;
        let state = AppState {
            limiter: Arc::new(RateLimiter::new(config.raw.limits.publisher_events_per_sec)),
            config: Arc::new(config),
            hub,
            broker,
            verifier: Arc::new(verifier),
            metrics,
            shutdown: shutdown.clone(),
            started: Instant::now(),
            tls: http_tls.is_some(),
            demo,
        };
        let grpc = grpc_server(&state, grpc_listener).await?;
        tasks.spawn(async move {
            if let Err(e) = grpc.await {
                tracing::error!(error = %e, "gRPC server failed");
            }
        });
        tasks.spawn(serve_http(
            http_listener,
            router(state.clone()),
            http_tls,
            shutdown.clone(),
            tasks.clone(),
        ));
        tracing::info!(%http_addr, %grpc_addr, broker = ?state.config.broker_kind, "gateway listening");
        Ok(Self {
            http_addr,
            grpc_addr,
            state,
            tasks,
        })
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

async fn grpc_server(
    state: &AppState,
    listener: TcpListener,
) -> anyhow::Result<impl std::future::Future<Output = Result<(), tonic::transport::Error>>> {
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    let g = &state.config.raw.grpc;
    let read = |p: &str| std::fs::read(p).with_context(|| format!("reading {p}"));
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&g.tls_cert)?, read(&g.tls_key)?))
        .client_ca_root(Certificate::from_pem(read(&g.client_ca)?))
        .client_auth_optional(false)
        .timeout(Duration::from_secs(10));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::publisher_server::PublisherServer<PublisherService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Both versions: grpcurl and grpcio-reflection clients still ask for v1alpha.
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let shutdown = state.shutdown.clone();
    let server = Server::builder()
        .tls_config(tls)?
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(PublisherService::new(state.clone()).into_server())
        .serve_with_incoming_shutdown(
            // TCP_NODELAY: without it, Nagle holds back the end of multi-frame responses
            // (a batch's DATA and trailers) for ~40 ms of delayed ACK.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled_owned(),
        );
    Ok(server)
}

/// Parses the gRPC certificate, key and client CA before any port is bound, so a bad file is
/// a start-up error naming its key.
fn check_grpc_tls(g: &crate::config::GrpcConfig) -> anyhow::Result<()> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    for (key, path) in [
        ("grpc.tls_cert", &g.tls_cert),
        ("grpc.client_ca", &g.client_ca),
    ] {
        let certs = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("{key} {path}"))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{key} {path}: not a PEM certificate"))?;
        if certs.is_empty() {
            anyhow::bail!("{key} {path}: no PEM certificate found");
        }
    }
    PrivateKeyDer::from_pem_file(&g.tls_key)
        .with_context(|| format!("grpc.tls_key {}: not a PEM private key", g.tls_key))?;
    Ok(())
}

fn http_tls_config(cert: &str, key: &str) -> anyhow::Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading http.tls_cert {cert}"))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing http.tls_cert {cert}"))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading http.tls_key {key}"))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("http TLS certificate and key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn serve_http(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let shutdown = shutdown.clone();
        let acceptor = acceptor.clone();
        tasks.spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(stream)) => {
                            serve_connection(TokioIo::new(stream), router, shutdown).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => serve_connection(TokioIo::new(tcp), router, shutdown).await,
            }
        });
    }
}

async fn serve_connection<I>(io: I, router: Router, shutdown: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let kill = CancellationToken::new();
    let kill_for_requests = kill.clone();
    let service =
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            if req.version() != http::Version::HTTP_2 {
                req.extensions_mut()
                    .insert(TransportKill(kill_for_requests.clone()));
            }
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that never finishes its request headers must not hold a socket forever.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "http connection ended with error");
                }
                break;
            }
            () = shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = kill.cancelled() => break,
        }
    }
}
