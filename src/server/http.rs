//! The HTTP listener: accept, optional TLS (ALPN `h2` and `http/1.1`), one hyper connection per
//! socket serving the axum router, graceful close on shutdown. On plaintext, a connection whose
//! first request opens an SSE stream is served by [`h1_stream`] instead, which keeps far less
//! state per open stream.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::{h1_stream, tls};
use crate::config::TlsFiles;
use crate::egress::TransportKill;
use crate::live::Live;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Kernel send buffer of each HTTP connection (the kernel doubles it for bookkeeping): at
/// 100 ms round trip this still carries ~1 MB/s per stream.
const SEND_BUFFER_BYTES: usize = 64 * 1024;

/// Listen backlog: a gateway restart makes every browser reconnect at once.
const LISTEN_BACKLOG: u32 = 8192;

/// Binds the HTTP listener with a backlog sized for a reconnect storm.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// HTTPS: certificate and key, ALPN `h2` then `http/1.1`.
///
/// # Errors
/// A file that cannot be read or parsed, named by its key.
pub(crate) fn tls_config(files: &TlsFiles) -> anyhow::Result<rustls::ServerConfig> {
    let certs = tls::certs("http.tls_cert", &files.cert)?;
    let key = tls::key("http.tls_key", &files.key)?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("http TLS certificate and key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `router` on `listener` until `shutdown`; with `tls`, each connection's TLS is built
/// from the current material at its handshake.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Live<rustls::ServerConfig>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
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
        // A fixed, small send buffer: the kernel would otherwise grow it to megabytes, and a
        // replay would run that far ahead of what the client has read — then live events meet
        // a client still working through the backlog, and it is closed as a slow consumer
        // although it reads at full speed. Small buffers keep a stream paced by its reader
        // (and cost less kernel memory per idle stream).
        let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(SEND_BUFFER_BYTES);
        let router = router.clone();
        let shutdown = shutdown.clone();
        // The material current at this handshake: a reload applies from the next one.
        // Separate tasks, so a plaintext stream's task is not sized for a TLS handshake.
        match &tls {
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.load());
                tasks.spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            Box::pin(serve_connection(TokioIo::new(stream), router, shutdown))
                                .await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
            None => {
                tasks.spawn(async move {
                    let outcome =
                        h1_stream::serve(tcp, router.clone(), HEADER_READ_TIMEOUT, &shutdown).await;
                    if let h1_stream::Outcome::Handoff(io) = outcome {
                        // Boxed: only connections hyper serves pay for its state.
                        Box::pin(serve_connection(TokioIo::new(io), router, shutdown)).await;
                    }
                });
            }
        }
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
