//! A lean HTTP/1.1 path for SSE streams on plaintext connections.
//!
//! hyper keeps a connection's read and write buffers (and the auto-detecting builder's state)
//! for as long as a response is streaming, which for an idle SSE stream is most of what it
//! costs. Here the first request head of a connection is read into a small buffer and parsed;
//! when it is a plain `GET` of the stream path, the request goes through the same router (so
//! authentication, CORS, limits and every status code are the router's), the response head is
//! written directly and the body is pumped to the socket with chunked encoding. What stays per
//! idle stream is the stream itself and this task's small state.
//!
//! Anything else — another path or method, a request body, an upgrade, HTTP/1.0 or HTTP/2,
//! bytes after the head, a head that does not parse or is larger than [`MAX_HEAD`] — is handed
//! back ([`Outcome::Handoff`]) with the bytes already read, for hyper to serve unchanged. So is
//! the connection after a response has finished and the client keeps it alive.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use axum::body::{Body, HttpBody};
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tower::ServiceExt;

use crate::egress::TransportKill;

/// The request path served here (every other path goes to hyper).
const STREAM_PATH: &str = "/api/sse";
/// First allocation for the request head; grown up to [`MAX_HEAD`].
const HEAD_START: usize = 1024;
/// Larger heads are left to hyper.
const MAX_HEAD: usize = 8 * 1024;
/// More header fields than this are left to hyper.
const MAX_HEADERS: usize = 48;
/// Bytes a client may send while its stream is open (a pipelined request, kept for after the
/// stream); more closes the connection.
const MAX_STASH: usize = 8 * 1024;

/// What became of a connection.
pub(super) enum Outcome {
    /// Closed, or to be closed.
    Done,
    /// For hyper to serve from here: the stream replays what was read but not served.
    Handoff(Rewind),
}

/// A request head this path serves.
struct Head {
    request: Request<Body>,
    /// The client asked to close the connection after the response.
    close: bool,
}

/// How a buffer of request bytes is to be served.
enum Parsed {
    /// Incomplete: read more.
    Partial,
    /// Not for this path.
    Other,
    /// A stream request.
    Stream(Box<Head>),
}

/// Serves the first request of `tcp` when it is a stream request; hands the connection back
/// otherwise, or after a finished response on a connection the client keeps alive.
///
/// A head not complete within `header_timeout` closes the connection, as does shutdown before
/// it is complete. The request carries a [`TransportKill`]: cancelling it (a slow consumer)
/// drops the connection, even in the middle of a blocked write.
pub(super) async fn serve(
    mut tcp: TcpStream,
    router: Router,
    header_timeout: Duration,
    shutdown: &CancellationToken,
) -> Outcome {
    let deadline = Instant::now() + header_timeout;
    let mut buf = Vec::with_capacity(HEAD_START);
    let head = loop {
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, tcp.read_buf(&mut buf)) => r,
            () = shutdown.cancelled() => return Outcome::Done,
        };
        match read {
            Ok(Ok(0)) => return Outcome::Done,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "reading the request head failed");
                return Outcome::Done;
            }
            Err(_) => {
                tracing::debug!("request head not complete in time; closing");
                return Outcome::Done;
            }
        }
        match parse(&buf) {
            Parsed::Partial if buf.len() < MAX_HEAD => {
                if buf.len() == buf.capacity() {
                    buf.reserve(buf.len().min(MAX_HEAD - buf.len()));
                }
            }
            Parsed::Partial | Parsed::Other => {
                return Outcome::Handoff(Rewind::new(Bytes::from(buf), tcp))
            }
            Parsed::Stream(head) => break *head,
        }
    };
    drop(buf);
    let Head { mut request, close } = head;
    let kill = CancellationToken::new();
    request.extensions_mut().insert(TransportKill(kill.clone()));
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    // The header map is dropped before the body streams, which may be for hours.
    let (out, body, bodiless, chunked) = {
        let (parts, body) = response.into_parts();
        let status = parts.status;
        let bodiless = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let length = body.size_hint().exact();
        let chunked = !bodiless && length.is_none();
        let mut out = BytesMut::with_capacity(512);
        write_head(&mut out, status, &parts.headers, length, chunked, close);
        (out, body, bodiless, chunked)
    };
    let mut stash = Vec::new();
    let ended = if bodiless {
        let mut out = out;
        let killed = kill.cancelled();
        tokio::pin!(killed);
        let mut killed = Killed {
            token: &kill,
            wait: killed,
            waker: None,
        };
        write(&mut tcp, &mut out, &mut killed).await
    } else {
        pump(&mut tcp, body, out, chunked, &kill, &mut stash).await
    };
    if !ended || close || shutdown.is_cancelled() {
        return Outcome::Done;
    }
    Outcome::Handoff(Rewind::new(Bytes::from(stash), tcp))
}

/// Writes the body to `tcp`, chunked or as is, after what `out` holds (the response head).
/// Meanwhile the socket is read, so that a client that goes away ends the stream at once
/// (bytes it sends are kept in `stash`). True when the body was written to its end.
///
/// Each body chunk is written as it comes, between its chunk-size line and CRLF, in one
/// vectored write: no copy and no allocation per chunk. The body gathers itself (a stream's
/// chunk carries everything queued at its wake-up), so probing it for a second chunk before
/// writing would cost every wake-up a second poll of the stream for nothing.
async fn pump(
    tcp: &mut TcpStream,
    body: Body,
    mut out: BytesMut,
    chunked: bool,
    kill: &CancellationToken,
    stash: &mut Vec<u8>,
) -> bool {
    let mut data = body.into_data_stream();
    let mut probe = [0u8; 64];
    // Made once: a cancellation waiter registered and unlinked per write costs more than the
    // write's own work.
    let killed = kill.cancelled();
    tokio::pin!(killed);
    let mut killed = Killed {
        token: kill,
        wait: killed,
        waker: None,
    };
    if !write(tcp, &mut out, &mut killed).await {
        return false;
    }
    // Release the head's buffer while the stream is open.
    drop(out);
    loop {
        let next = tokio::select! {
            biased;
            () = &mut killed => return false,
            r = tcp.read(&mut probe) => match r {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    if stash.len() + n > MAX_STASH {
                        return false;
                    }
                    stash.extend_from_slice(&probe[..n]);
                    continue;
                }
            },
            next = data.next() => next,
        };
        match next {
            Some(Ok(chunk)) => {
                if !write_chunk(tcp, chunk, chunked, &mut killed).await {
                    return false;
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed; dropping the connection");
                return false;
            }
            None => {
                let end: &[u8] = if chunked { b"0\r\n\r\n" } else { b"" };
                let mut end = BytesMut::from(end);
                return write(tcp, &mut end, &mut killed).await;
            }
        }
    }
}

/// Writes all of `out`; false when the connection failed or was killed meanwhile.
async fn write(tcp: &mut TcpStream, out: &mut BytesMut, killed: &mut Killed<'_, '_>) -> bool {
    tokio::select! {
        biased;
        () = killed => false,
        r = tcp.write_all_buf(out) => r.is_ok(),
    }
}

/// Writes one body chunk (framed when `chunked`) without copying it; false when the connection
/// failed or was killed meanwhile.
async fn write_chunk(
    tcp: &mut TcpStream,
    chunk: Bytes,
    chunked: bool,
    killed: &mut Killed<'_, '_>,
) -> bool {
    if chunk.is_empty() {
        // An empty chunk would end a chunked body.
        return true;
    }
    let mut size = [0u8; 18];
    let size_len = if chunked {
        chunk_size_line(&mut size, chunk.len())
    } else {
        0
    };
    let trailer: &[u8] = if chunked { b"\r\n" } else { b"" };
    let parts: [&[u8]; 3] = [&size[..size_len], &chunk, trailer];
    let total = parts.iter().map(|p| p.len()).sum::<usize>();
    let mut done = 0usize;
    let writing = std::future::poll_fn(|cx| {
        while done < total {
            let mut skip = done;
            let mut slices = [io::IoSlice::new(&[]); 3];
            let mut n = 0;
            for part in parts {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                slices[n] = io::IoSlice::new(&part[skip..]);
                skip = 0;
                n += 1;
            }
            match Pin::new(&mut *tcp).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(false),
                Poll::Ready(Ok(written)) => done += written,
                Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(true)
    });
    tokio::select! {
        biased;
        () = killed => false,
        ok = writing => ok,
    }
}

/// Waits for a connection's kill. Its waiter is registered once (again only when the task's
/// waker changes) and then checked by the token's flag: re-polling a registered waiter relocks
/// the token's waiter list at every wake-up of the stream.
struct Killed<'t, 'w> {
    token: &'t CancellationToken,
    wait: Pin<&'w mut WaitForCancellationFuture<'t>>,
    waker: Option<Waker>,
}

impl Future for Killed<'_, '_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.token.is_cancelled() {
            return Poll::Ready(());
        }
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let polled = this.wait.as_mut().poll(cx);
        this.waker = Some(cx.waker().clone());
        polled
    }
}

/// Writes `len` in hex followed by CRLF into `buf`; returns the bytes used.
fn chunk_size_line(buf: &mut [u8; 18], len: usize) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        buf[digits - 1 - i] = HEX[(len >> (4 * i)) & 0xf];
    }
    buf[digits] = b'\r';
    buf[digits + 1] = b'\n';
    digits + 2
}

fn write_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &http::HeaderMap,
    length: Option<u64>,
    chunked: bool,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        // Framing is this path's to decide.
        if name == header::TRANSFER_ENCODING
            || name == header::CONTENT_LENGTH
            || name == header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if let Some(n) = length {
        out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Classifies the bytes read so far.
fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    // Bytes after the head (a body or a pipelined request) are hyper's to read.
    if len != buf.len() || req.method != Some("GET") || req.version != Some(1) {
        return Parsed::Other;
    }
    let Some(path) = req.path else {
        return Parsed::Other;
    };
    if path.split('?').next() != Some(STREAM_PATH) {
        return Parsed::Other;
    }
    let Ok(uri) = path.parse::<http::Uri>() else {
        return Parsed::Other;
    };
    let mut request = Request::new(Body::empty());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let mut close = false;
    let map = request.headers_mut();
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::Other;
        };
        let Ok(value) = HeaderValue::from_bytes(h.value) else {
            return Parsed::Other;
        };
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            // A GET with a body (or an unusual framing): hyper's to read.
            if name != header::CONTENT_LENGTH || value.as_bytes() != b"0" {
                return Parsed::Other;
            }
        }
        if name == header::UPGRADE || name == header::EXPECT {
            return Parsed::Other;
        }
        if name == header::CONNECTION {
            let tokens = String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase();
            if tokens.split(',').any(|t| t.trim() == "close") {
                close = true;
            }
        }
        map.append(name, value);
    }
    Parsed::Stream(Box::new(Head { request, close }))
}

/// A TCP stream that first yields bytes already read from it.
pub(super) struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl Rewind {
    fn new(prefix: Bytes, inner: TcpStream) -> Self {
        Self { prefix, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(raw: &str) -> Option<Head> {
        match parse(raw.as_bytes()) {
            Parsed::Stream(head) => Some(*head),
            _ => None,
        }
    }

    #[test]
    fn a_plain_stream_request_is_served_here() {
        let head =
            stream("GET /api/sse?channels=a:b HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\r\n")
                .unwrap();
        assert_eq!(head.request.uri().query(), Some("channels=a:b"));
        assert_eq!(head.request.headers()["last-event-id"], "7");
        assert!(!head.close);
        let head =
            stream("GET /api/sse HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").unwrap();
        assert!(head.close);
    }

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        for (len, line) in [
            (0, "0\r\n"),
            (1, "1\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (300, "12c\r\n"),
            (65_536, "10000\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            let mut buf = [0u8; 18];
            let n = chunk_size_line(&mut buf, len);
            assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), line);
        }
    }

    #[test]
    fn everything_else_is_left_to_hyper() {
        for raw in [
            "GET /health HTTP/1.1\r\n\r\n",
            "GET /api/sse/session HTTP/1.1\r\n\r\n",
            "POST /api/sse HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            "GET /api/sse HTTP/1.0\r\n\r\n",
            "GET /api/sse HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
            "GET /api/sse HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /api/sse HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET /api/sse HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET http://x/api/sse HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(parse(raw.as_bytes()), Parsed::Other), "{raw}");
        }
        assert!(matches!(
            parse(b"GET /api/sse HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
    }
}
