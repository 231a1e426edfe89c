//! The gRPC listener: our own TLS accept loop in front of tonic, so a reload can replace the
//! server certificate and client CA for new handshakes while open connections stay up (tonic's
//! own TLS setting is fixed at start). tonic still sees each TLS stream, so
//! `Request::peer_certs()` gives the publisher's certificate as before.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tls;
use crate::config::GrpcSettings;
use crate::live::Live;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; past it, accepting waits (a handshake flood cannot grow
/// tasks without bound).
const MAX_HANDSHAKES: usize = 1024;

/// Completed TLS connections waiting for tonic to take them.
const READY_QUEUE: usize = 64;

/// HTTP/2 flow-control window of one request stream: what a publisher may send on a stream
/// ahead of the server reading it. The HTTP/2 default.
///
/// Sized against h2's bound on small DATA frames held unread on a connection (framing overhead
/// of `256 − size` per frame under 256 bytes, at most half the connection window; past it h2
/// closes the connection with `GOAWAY ENHANCE_YOUR_CALM`). Every `PublishStream` is read as it
/// arrives; only one whose queue is full is left unread, and then holds at most this window.
/// With half of [`CONNECTION_WINDOW`] to spend, that leaves room for 8 such streams of frames
/// as small as 29 bytes (a short channel name and a few bytes of JSON), or 40 of 100-byte frames, at once.
const STREAM_WINDOW: u32 = 64 * 1024;

/// HTTP/2 flow-control window of one connection (all its streams together). Large next to
/// [`STREAM_WINDOW`] so it never holds back streams that are read promptly, and because h2's
/// small-frame allowance is half of it (see there).
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// Serves `routes` on `listener` until `shutdown`, each connection's TLS built from the
/// current `tls` at its handshake.
///
/// # Errors
/// When tonic's server fails.
pub(crate) async fn serve(
    listener: TcpListener,
    routes: tonic::service::Routes,
    tls: Live<rustls::ServerConfig>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) -> Result<(), tonic::transport::Error> {
    let (ready, incoming) = mpsc::channel::<std::io::Result<TlsStream<TcpStream>>>(READY_QUEUE);
    tasks.spawn(accept(
        listener,
        tls,
        ready,
        shutdown.clone(),
        tasks.clone(),
    ));
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(incoming),
            shutdown.cancelled_owned(),
        )
        .await
}

/// Accepts TCP connections and hands each to its own handshake task, so a slow client never
/// holds up the next one.
async fn accept(
    listener: TcpListener,
    tls: Live<rustls::ServerConfig>,
    ready: mpsc::Sender<std::io::Result<TlsStream<TcpStream>>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            p = handshakes.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // TCP_NODELAY: without it, Nagle holds back the end of multi-frame responses (a
        // batch's DATA and trailers) for ~40 ms of delayed ACK.
        let _ = tcp.set_nodelay(true);
        // The material current at this handshake: a reload applies from the next one.
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.load());
        let ready = ready.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
            let stream = tokio::select! {
                r = handshake => r,
                () = shutdown.cancelled() => return,
            };
            drop(permit);
            match stream {
                Ok(Ok(stream)) => {
                    // After shutdown tonic takes no more connections: drop it instead of waiting
                    // for room in the queue.
                    tokio::select! {
                        _ = ready.send(Ok(stream)) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "gRPC TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "gRPC TLS handshake timed out"),
            }
        });
    }
}

/// The gRPC server's TLS: certificate, key, and the CA every client certificate must chain to
/// (a client without one fails the handshake); ALPN `h2`.
///
/// # Errors
/// A file that cannot be read or parsed, named by its key.
pub(crate) fn tls_config(g: &GrpcSettings) -> anyhow::Result<rustls::ServerConfig> {
    let certs = tls::certs("grpc.tls_cert", &g.tls_cert)?;
    let key = tls::key("grpc.tls_key", &g.tls_key)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in tls::certs("grpc.client_ca", &g.client_ca)? {
        roots.add(ca).with_context(|| {
            format!(
                "grpc.client_ca {}: not a usable CA certificate",
                g.client_ca.display()
            )
        })?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .with_context(|| format!("grpc.client_ca {}", g.client_ca.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("grpc.tls_cert and grpc.tls_key do not form a usable identity")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
