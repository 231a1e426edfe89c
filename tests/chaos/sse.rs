//! A minimal HTTP/1.1 SSE client over a raw socket: it can bind a chosen source address (to
//! spread thousands of streams over 127.0.0.2..9), shrink its receive buffer (to become a slow
//! consumer quickly), and simply stop reading.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Why a stream could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Connect, write or read failed (node down, reset, timeout).
    Io(String),
    /// The gateway answered with another status than 200.
    Status(u16),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Status(code) => write!(f, "status {code}"),
        }
    }
}

/// One SSE frame (a block of lines ended by a blank line).
#[derive(Debug, Default, Clone)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
}

impl Frame {
    fn is_empty(&self) -> bool {
        self.id.is_none() && self.event.is_none() && self.data.is_none()
    }
}

/// How to open a stream.
pub struct OpenOptions<'a> {
    pub addr: SocketAddr,
    pub source: Option<IpAddr>,
    pub recv_buffer: Option<u32>,
    pub path_and_query: &'a str,
    pub token: &'a str,
    pub last_event_id: Option<&'a str>,
    pub timeout: Duration,
}

/// An open `text/event-stream` body.
pub struct SseStream {
    stream: TcpStream,
    raw: Vec<u8>,
    raw_pos: usize,
    chunked: bool,
    /// Bytes left in the current chunk; `None` when a chunk-size line is expected next.
    chunk_left: Option<usize>,
    /// A CRLF after chunk data is still to be skipped.
    chunk_crlf: bool,
    body_done: bool,
    data: Vec<u8>,
    data_pos: usize,
    current: Frame,
}

/// Opens a stream; returns once the response headers are in.
pub async fn open(o: OpenOptions<'_>) -> Result<SseStream, OpenError> {
    tokio::time::timeout(o.timeout, open_inner(&o))
        .await
        .map_err(|_| OpenError::Io("timed out opening the stream".into()))?
}

async fn open_inner(o: &OpenOptions<'_>) -> Result<SseStream, OpenError> {
    let io = |e: std::io::Error| OpenError::Io(e.to_string());
    let socket = TcpSocket::new_v4().map_err(io)?;
    if let Some(src) = o.source {
        socket.bind(SocketAddr::new(src, 0)).map_err(io)?;
    }
    if let Some(size) = o.recv_buffer {
        socket.set_recv_buffer_size(size).map_err(io)?;
    }
    let mut stream = socket.connect(o.addr).await.map_err(io)?;
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {}\r\n",
        o.path_and_query, o.addr, o.token
    );
    if let Some(id) = o.last_event_id {
        request.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut raw = Vec::with_capacity(8192);
    let header_end = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if raw.len() > 64 * 1024 {
            return Err(OpenError::Io("response headers too large".into()));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(OpenError::Io(
                "connection closed before the response".into(),
            ));
        }
        raw.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..header_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| OpenError::Io(format!("bad status line: {head:?}")))?;
    if status != 200 {
        return Err(OpenError::Status(status));
    }
    let chunked = head.contains("transfer-encoding: chunked");
    Ok(SseStream {
        stream,
        raw,
        raw_pos: header_end,
        chunked,
        chunk_left: None,
        chunk_crlf: false,
        body_done: false,
        data: Vec::with_capacity(8192),
        data_pos: 0,
        current: Frame::default(),
    })
}

impl SseStream {
    /// The next frame; `Ok(None)` when the body ended (cleanly or not: the caller resumes by
    /// cursor either way). A frame cut off by the end of the body is never returned.
    pub async fn next_frame(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.parse_frame() {
                return Ok(Some(frame));
            }
            if self.body_done {
                return Ok(None);
            }
            self.decode();
            if self.parse_pending() {
                continue;
            }
            if self.body_done {
                continue;
            }
            // Need more bytes from the socket.
            if self.raw_pos > 0 {
                self.raw.drain(..self.raw_pos);
                self.raw_pos = 0;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                self.body_done = true;
                continue;
            }
            self.raw.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether decoded data holds a complete line that is not yet parsed.
    fn parse_pending(&self) -> bool {
        self.data[self.data_pos..].contains(&b'\n')
    }

    /// Moves body bytes from `raw` to `data`, undoing chunked transfer coding.
    fn decode(&mut self) {
        if !self.chunked {
            self.data.extend_from_slice(&self.raw[self.raw_pos..]);
            self.raw_pos = self.raw.len();
            return;
        }
        loop {
            if self.chunk_crlf {
                if self.raw.len() - self.raw_pos < 2 {
                    return;
                }
                self.raw_pos += 2;
                self.chunk_crlf = false;
            }
            match self.chunk_left {
                None => {
                    let rest = &self.raw[self.raw_pos..];
                    let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                        return;
                    };
                    let line = String::from_utf8_lossy(&rest[..eol]);
                    let size =
                        usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                            .unwrap_or(0);
                    self.raw_pos += eol + 2;
                    if size == 0 {
                        self.body_done = true;
                        return;
                    }
                    self.chunk_left = Some(size);
                }
                Some(left) => {
                    let avail = (self.raw.len() - self.raw_pos).min(left);
                    if avail == 0 {
                        return;
                    }
                    self.data
                        .extend_from_slice(&self.raw[self.raw_pos..self.raw_pos + avail]);
                    self.raw_pos += avail;
                    if avail == left {
                        self.chunk_left = None;
                        self.chunk_crlf = true;
                    } else {
                        self.chunk_left = Some(left - avail);
                    }
                }
            }
        }
    }

    /// Parses complete lines out of `data` until a frame is complete.
    fn parse_frame(&mut self) -> Option<Frame> {
        loop {
            let rest = &self.data[self.data_pos..];
            let eol = rest.iter().position(|&b| b == b'\n')?;
            let mut line = &rest[..eol];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            self.data_pos += eol + 1;
            if self.data_pos > 64 * 1024 {
                self.data.drain(..self.data_pos);
                self.data_pos = 0;
            }
            if line.is_empty() {
                let frame = std::mem::take(&mut self.current);
                if frame.is_empty() {
                    continue;
                }
                return Some(frame);
            }
            if line.starts_with(':') {
                continue;
            }
            let (name, value) = match line.split_once(':') {
                Some((n, v)) => (n.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
                None => (line.clone(), String::new()),
            };
            match name.as_str() {
                "id" => self.current.id = Some(value),
                "event" => self.current.event = Some(value),
                "data" => match &mut self.current.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(&value);
                    }
                    None => self.current.data = Some(value),
                },
                _ => {}
            }
        }
    }
}
