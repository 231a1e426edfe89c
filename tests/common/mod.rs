//! Shared harness of the integration tests: a real gateway on ephemeral ports with a generated
//! PKI, token minting, mTLS publisher clients and an SSE reader that parses frames.
//!
//! Every wait has a deadline: readers take a [`Within`] (a `Duration` from now or an `Instant`)
//! and fail the test with context when it passes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod private_redis;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use sse_gateway::app::Gateway;
use sse_gateway::config::{Config, JwtAlgorithm, PublisherConfig, RawConfig};
use sse_gateway::ingest::pb::publisher_client::PublisherClient;
use sse_gateway::ingest::pb::{Audience, PublishRequest, PublishResponse};
use tempfile::TempDir;
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The default wait for one thing to happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// Client certificates of the test PKI. `notify-service` may publish alerts; `rogue-service`
/// has a valid certificate but no `[[publishers]]` entry.
pub const SERVICES: [&str; 5] = [
    "l5-etl-service",
    "analytics-service",
    "faas-service",
    "notify-service",
    "rogue-service",
];

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    i64::try_from(sse_gateway::event::now_ms() / 1000).unwrap()
}

fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// The publisher permissions every test gateway starts with.
pub fn test_publishers() -> Vec<PublisherConfig> {
    [
        ("l5-etl-service", vec!["logs:**", "metrics:*"]),
        ("analytics-service", vec!["metrics:*", "dashboards:*"]),
        ("faas-service", vec!["workflow:**"]),
        ("notify-service", vec!["alerts:*"]),
    ]
    .into_iter()
    .map(|(name, channels)| PublisherConfig {
        name: name.to_owned(),
        channels: channels.into_iter().map(str::to_owned).collect(),
        control: false,
    })
    .collect()
}

/// A gateway running in this process on ephemeral ports.
pub struct TestGateway {
    gateway: Option<Gateway>,
    /// Bound HTTP address.
    pub http_addr: std::net::SocketAddr,
    /// Bound gRPC address.
    pub grpc_addr: std::net::SocketAddr,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The PKI (ca.pem, server.pem, `<svc>.pem`, `<svc>-key.pem`).
    pub pki: TempDir,
    /// A second CA with a `l5-etl-service` client certificate the gateway must not trust.
    pub foreign_pki: TempDir,
    /// The HS256 secret.
    pub secret: String,
    /// HTTP client (HTTP/1.1, no proxy).
    pub http: reqwest::Client,
    /// The validated configuration the gateway runs with.
    pub config: Config,
}

impl TestGateway {
    /// Starts a gateway with the test defaults, changed by `customize`.
    pub async fn spawn(customize: impl FnOnce(&mut RawConfig)) -> Self {
        init_tracing();
        sse_gateway::app::install_crypto_provider();
        let pki = tempfile::tempdir().unwrap();
        sse_gateway::pki::ensure_dev_pki(pki.path(), &SERVICES).unwrap();
        let foreign_pki = tempfile::tempdir().unwrap();
        sse_gateway::pki::ensure_dev_pki(foreign_pki.path(), &["l5-etl-service"]).unwrap();
        let secret = format!("test-secret-{}", sse_gateway::hub::random_id());
        let p = |f: &str| Some(pki.path().join(f));
        let mut raw = RawConfig::default();
        raw.http.addr = "127.0.0.1:0".parse().unwrap();
        raw.grpc.addr = "127.0.0.1:0".parse().unwrap();
        raw.grpc.tls_cert = p("server.pem");
        raw.grpc.tls_key = p("server-key.pem");
        raw.grpc.client_ca = p("ca.pem");
        raw.jwt.algorithm = JwtAlgorithm::Hs256;
        raw.jwt.secret = Some(secret.clone().into());
        raw.publishers = test_publishers();
        customize(&mut raw);
        let config = Config::from_raw(raw, pki.path()).expect("test config is valid");
        let gateway = Gateway::start(config.clone(), None)
            .await
            .expect("gateway starts");
        let http = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .build()
            .unwrap();
        Self {
            http_addr: gateway.http_addr,
            grpc_addr: gateway.grpc_addr,
            base: format!("http://{}", gateway.http_addr),
            gateway: Some(gateway),
            pki,
            foreign_pki,
            secret,
            http,
            config,
        }
    }

    /// The running gateway (until [`TestGateway::shutdown`]).
    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("gateway is running")
    }

    /// Shuts the gateway down gracefully and waits for the drain (bounded by the gateway's
    /// own drain deadline and by `within`).
    pub async fn shutdown(&mut self, within: Duration) {
        let gateway = self.gateway.take().expect("gateway is running");
        gateway.shutdown();
        tokio::time::timeout(within, gateway.wait())
            .await
            .expect("gateway drains before the deadline");
    }

    /// A file of the test PKI.
    pub fn pki_file(&self, name: &str) -> PathBuf {
        self.pki.path().join(name)
    }

    /// `base` + `path`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    /// An HS256 token signed with the gateway's secret.
    pub fn token(&self, sub: &str, channels: &[&str], roles: &[&str], ttl_secs: i64) -> String {
        self.token_with(json!({
            "sub": sub,
            "exp": now_secs() + ttl_secs,
            "channels": channels,
            "roles": roles,
        }))
    }

    /// An HS256 token with arbitrary claims, signed with the gateway's secret.
    pub fn token_with(&self, claims: Value) -> String {
        hs256(self.secret.as_bytes(), &claims)
    }

    /// A `Publisher` client authenticated with `service`'s certificate.
    pub async fn publisher(&self, service: &str) -> PublisherClient<Channel> {
        sse_gateway::client::connect(
            &format!("127.0.0.1:{}", self.grpc_addr.port()),
            &self.pki_file("ca.pem"),
            &self.pki_file(&format!("{service}.pem")),
            &self.pki_file(&format!("{service}-key.pem")),
        )
        .await
        .expect("publisher connects")
    }

    /// A TLS client configuration trusting the gateway's CA, with an optional identity.
    pub fn client_tls(&self, identity: Option<(&Path, &Path)>) -> ClientTlsConfig {
        let ca = std::fs::read(self.pki_file("ca.pem")).unwrap();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(cert).unwrap(),
                std::fs::read(key).unwrap(),
            ));
        }
        tls
    }

    /// The gRPC endpoint URL.
    pub fn grpc_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.grpc_addr.port())
    }

    /// `GET path` with an optional Bearer token.
    pub async fn get(&self, path_and_query: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.url(path_and_query));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        tokio::time::timeout(WAIT, req.send())
            .await
            .expect("response before the deadline")
            .expect("request succeeds")
    }

    /// The raw response of `GET /api/sse…` (any status).
    pub async fn sse_response(
        &self,
        path_and_query: &str,
        token: Option<&str>,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .get(self.url(path_and_query))
            .header("accept", "text/event-stream");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        tokio::time::timeout(WAIT, req.send())
            .await
            .expect("response headers before the deadline")
            .expect("request succeeds")
    }

    /// Opens an SSE stream; fails the test unless the status is 200.
    pub async fn sse(
        &self,
        path_and_query: &str,
        token: Option<&str>,
        last_event_id: Option<&str>,
    ) -> SseReader {
        let resp = self
            .sse_response(path_and_query, token, last_event_id)
            .await;
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            let body = resp.text().await.unwrap_or_default();
            panic!("GET {path_and_query}: expected 200, got {status}: {body}");
        }
        SseReader::new(resp)
    }

    /// Opens an SSE stream and reads its `retry:` and `ready` frames.
    pub async fn open(
        &self,
        path_and_query: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> (SseReader, Ready) {
        let mut reader = self.sse(path_and_query, Some(token), last_event_id).await;
        let ready = reader.ready(WAIT).await;
        (reader, ready)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let resp = self.get("/metrics", None).await;
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    }

    /// The value of a metric sample (first line starting with `name` followed by a space).
    pub async fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics().await, name)
    }
}

/// The value of sample `name` in a Prometheus text exposition.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Signs `claims` with HS256.
pub fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A publish request with JSON `data`.
pub fn req(channel: &str, data: &Value) -> PublishRequest {
    PublishRequest {
        channel: channel.to_owned(),
        data: data.to_string(),
        event: String::new(),
        idempotency_key: String::new(),
        audience: None,
    }
}

/// A publish request with raw `data` text.
pub fn req_raw(channel: &str, data: &str) -> PublishRequest {
    PublishRequest {
        channel: channel.to_owned(),
        data: data.to_owned(),
        event: String::new(),
        idempotency_key: String::new(),
        audience: None,
    }
}

/// A publish request for an audience.
pub fn req_for(channel: &str, data: &Value, user_ids: &[&str], roles: &[&str]) -> PublishRequest {
    PublishRequest {
        audience: Some(Audience {
            user_ids: user_ids.iter().map(|s| (*s).to_owned()).collect(),
            roles: roles.iter().map(|s| (*s).to_owned()).collect(),
        }),
        ..req(channel, data)
    }
}

/// Publishes one event (with a deadline); fails the test on error.
pub async fn publish(client: &mut PublisherClient<Channel>, r: PublishRequest) -> PublishResponse {
    let channel = r.channel.clone();
    tokio::time::timeout(WAIT, client.publish(r))
        .await
        .expect("publish answers before the deadline")
        .unwrap_or_else(|s| panic!("publish to {channel} failed: {s:?}"))
        .into_inner()
}

/// Publishes one event and returns the gRPC status it fails with.
pub async fn publish_err(
    client: &mut PublisherClient<Channel>,
    r: PublishRequest,
) -> tonic::Status {
    match tokio::time::timeout(WAIT, client.publish(r))
        .await
        .expect("publish answers before the deadline")
    {
        Ok(resp) => panic!("publish unexpectedly succeeded: {:?}", resp.into_inner()),
        Err(status) => status,
    }
}

/// A deadline: a `Duration` from now, or an `Instant`.
pub trait Within {
    /// The instant.
    fn deadline(self) -> Instant;
}

impl Within for Duration {
    fn deadline(self) -> Instant {
        Instant::now() + self
    }
}

impl Within for Instant {
    fn deadline(self) -> Instant {
        self
    }
}

/// One SSE frame: the fields of a block of lines ended by a blank line.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    /// `id:`.
    pub id: Option<String>,
    /// `event:`.
    pub event: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: Option<String>,
    /// How many `data:` lines.
    pub data_lines: usize,
    /// `retry:`.
    pub retry: Option<String>,
    /// Comment lines, without the leading `:` (and one space).
    pub comments: Vec<String>,
    /// Other field names seen.
    pub unknown: Vec<String>,
    /// The block as received, including its terminating blank line.
    pub raw: String,
}

impl Frame {
    /// A message `EventSource.onmessage` gets: data and no `event:` field.
    pub fn is_message(&self) -> bool {
        self.data.is_some() && self.event.is_none()
    }

    /// Only comments (heartbeats).
    pub fn is_comment(&self) -> bool {
        self.id.is_none() && self.event.is_none() && self.data.is_none() && self.retry.is_none()
    }

    /// The data as JSON.
    pub fn json(&self) -> Value {
        let data = self
            .data
            .as_deref()
            .unwrap_or_else(|| panic!("frame has no data: {self:?}"));
        serde_json::from_str(data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {data:?}"))
    }

    /// The event envelope of a data message (checks the frame's shape).
    pub fn envelope(&self) -> Envelope {
        assert!(
            self.is_message(),
            "expected a data message, got {:?}",
            self.raw
        );
        assert_eq!(
            self.data_lines, 1,
            "one data line per event: {:?}",
            self.raw
        );
        let id = self.id.clone().expect("event frame has an id");
        let mut env: Envelope = serde_json::from_value(self.json())
            .unwrap_or_else(|e| panic!("bad envelope ({e}): {:?}", self.raw));
        assert_eq!(env.id, id, "envelope id equals the SSE id");
        env.frame = self.clone();
        env
    }
}

/// The JSON of an event message.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    /// Channel.
    pub channel: String,
    /// Event type.
    pub event: String,
    /// Cursor.
    pub id: String,
    /// Accept time, ms.
    pub ts: u64,
    /// The published JSON.
    pub payload: Value,
    /// The frame it came in.
    #[serde(skip)]
    pub frame: Frame,
}

/// The `ready` control event.
#[derive(Debug, Clone, Deserialize)]
pub struct Ready {
    /// Connection id.
    pub connection_id: String,
    /// Granted channels.
    pub channels: Vec<String>,
    /// Denied channels with reasons.
    pub denied: Vec<Denied>,
}

/// A denied channel.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Denied {
    /// Channel.
    pub channel: String,
    /// Why.
    pub reason: String,
}

/// Why a read did not produce a frame.
#[derive(Debug)]
pub enum ReadError {
    /// The deadline passed.
    Timeout,
    /// The body failed (connection reset, truncated chunked body...).
    Body(String),
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Reads an SSE response body frame by frame.
pub struct SseReader {
    /// Response status.
    pub status: reqwest::StatusCode,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    body: ByteStream,
    buf: Vec<u8>,
    /// Where the current (incomplete) frame starts in `buf`.
    frame_start: usize,
    /// Where the current line starts in `buf`.
    line_start: usize,
    current: Frame,
    /// The body ended cleanly.
    ended: bool,
    /// The last `id:` received.
    pub last_id: Option<String>,
}

impl SseReader {
    /// Wraps a response.
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
            frame_start: 0,
            line_start: 0,
            current: Frame::default(),
            ended: false,
            last_id: None,
        }
    }

    /// Parses one complete frame out of the buffer, if there is one.
    fn parse_buffered(&mut self) -> Option<Frame> {
        loop {
            let pos = self.buf[self.line_start..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')?;
            let line_end = self.line_start + pos;
            let mut next = line_end + 1;
            if self.buf[line_end] == b'\r' {
                match self.buf.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    // A CR at the end of the buffer may be the first half of a CRLF.
                    None if !self.ended => return None,
                    None => {}
                }
            }
            let line = String::from_utf8_lossy(&self.buf[self.line_start..line_end]).into_owned();
            self.line_start = next;
            if !line.is_empty() {
                self.current.field(&line);
                continue;
            }
            let raw = String::from_utf8_lossy(&self.buf[self.frame_start..next]).into_owned();
            self.frame_start = next;
            let mut frame = std::mem::take(&mut self.current);
            if frame.is_blank() {
                continue;
            }
            frame.raw = raw;
            if let Some(id) = &frame.id {
                self.last_id = Some(id.clone());
            }
            return Some(frame);
        }
    }

    /// Drops consumed bytes from the buffer.
    fn compact(&mut self) {
        if self.frame_start > 0 {
            self.buf.drain(..self.frame_start);
            self.line_start -= self.frame_start;
            self.frame_start = 0;
        }
    }

    /// The next frame of any kind; `Ok(None)` when the body ended cleanly.
    pub async fn try_next_frame(
        &mut self,
        within: impl Within,
    ) -> Result<Option<Frame>, ReadError> {
        let deadline = within.deadline();
        loop {
            if let Some(frame) = self.parse_buffered() {
                return Ok(Some(frame));
            }
            if self.ended {
                return Ok(None);
            }
            self.compact();
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Err(ReadError::Timeout),
                Ok(None) => self.ended = true,
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Some(Err(e))) => {
                    self.ended = true;
                    return Err(ReadError::Body(format!("{e:?}")));
                }
            }
        }
    }

    /// The next frame of any kind; fails the test on timeout, error or end.
    pub async fn next_frame(&mut self, within: impl Within) -> Frame {
        match self.try_next_frame(within).await {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("stream ended while a frame was expected"),
            Err(e) => panic!("no frame before the deadline: {e:?}"),
        }
    }

    /// The next frame that is not a heartbeat comment.
    pub async fn next_event(&mut self, within: impl Within) -> Frame {
        let deadline = within.deadline();
        loop {
            let frame = self.next_frame(deadline).await;
            if !frame.is_comment() {
                return frame;
            }
        }
    }

    /// The next event message (skipping heartbeats); fails the test when a control event
    /// (`event: …`) comes first.
    pub async fn next_data(&mut self, within: impl Within) -> Envelope {
        let frame = self.next_event(within).await;
        assert!(
            frame.is_message(),
            "expected an event message, got {:?}",
            frame.raw
        );
        frame.envelope()
    }

    /// The next control event (skipping heartbeats); checks its name and returns its data.
    pub async fn next_control(&mut self, name: &str, within: impl Within) -> Value {
        let frame = self.next_event(within).await;
        assert_eq!(
            frame.event.as_deref(),
            Some(name),
            "expected event: {name}, got {:?}",
            frame.raw
        );
        assert!(
            frame.id.is_none(),
            "control events carry no id: {:?}",
            frame.raw
        );
        frame.json()
    }

    /// Reads the opening `retry:` and `ready` frames exactly as SPEC §5 frames them.
    pub async fn ready(&mut self, within: impl Within) -> Ready {
        let deadline = within.deadline();
        let retry = self.next_frame(deadline).await;
        assert_eq!(retry.raw, "retry: 3000\n\n", "the stream starts with retry");
        let ready = self.next_frame(deadline).await;
        assert_eq!(ready.event.as_deref(), Some("ready"), "{:?}", ready.raw);
        assert_eq!(ready.data_lines, 1, "{:?}", ready.raw);
        assert!(
            ready.raw.starts_with("event: ready\ndata: {"),
            "{:?}",
            ready.raw
        );
        serde_json::from_value(ready.json())
            .unwrap_or_else(|e| panic!("ready: {e}: {:?}", ready.raw))
    }

    /// Reads until the body ends cleanly, returning the frames after the current point; fails
    /// the test on timeout or a body error.
    pub async fn read_to_end(&mut self, within: impl Within) -> Vec<Frame> {
        let deadline = within.deadline();
        let mut frames = Vec::new();
        loop {
            match self.try_next_frame(deadline).await {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return frames,
                Err(e) => panic!(
                    "stream did not end cleanly ({e:?}) after {} frames",
                    frames.len()
                ),
            }
        }
    }

    /// Reads until the body ends or fails, returning the frames and how it ended.
    pub async fn drain(&mut self, within: impl Within) -> (Vec<Frame>, Result<(), ReadError>) {
        let deadline = within.deadline();
        let mut frames = Vec::new();
        loop {
            match self.try_next_frame(deadline).await {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return (frames, Ok(())),
                Err(e) => return (frames, Err(e)),
            }
        }
    }

    /// Reads until a clean end; fails the test when anything but heartbeats comes first.
    pub async fn expect_end(&mut self, within: impl Within) {
        let frames = self.read_to_end(within).await;
        let unexpected: Vec<_> = frames.iter().filter(|f| !f.is_comment()).collect();
        assert!(
            unexpected.is_empty(),
            "frames before the end: {unexpected:?}"
        );
    }
}

impl Frame {
    fn is_blank(&self) -> bool {
        self.id.is_none()
            && self.event.is_none()
            && self.data.is_none()
            && self.retry.is_none()
            && self.comments.is_empty()
            && self.unknown.is_empty()
    }

    fn field(&mut self, line: &str) {
        if let Some(comment) = line.strip_prefix(':') {
            self.comments
                .push(comment.strip_prefix(' ').unwrap_or(comment).to_owned());
            return;
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match name {
            "id" => self.id = Some(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            "retry" => self.retry = Some(value.to_owned()),
            "data" => {
                self.data_lines += 1;
                match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                }
            }
            other => self.unknown.push(other.to_owned()),
        }
    }
}

/// A JSON error body: `{"error": "..."}`; returns the message.
pub async fn error_body(resp: reqwest::Response) -> String {
    let text = tokio::time::timeout(WAIT, resp.text())
        .await
        .expect("body before the deadline")
        .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let msg = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string: {text}"));
    assert!(!msg.is_empty());
    msg.to_owned()
}

/// A spawned process that is killed when dropped, so a test that fails half-way leaves no
/// gateway running behind it.
pub struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    pub fn new(child: std::process::Child) -> Self {
        Self(Some(child))
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }

    pub fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("the child is held until into_inner")
    }

    /// The process, no longer killed on drop (to wait for its own exit).
    pub fn into_inner(mut self) -> std::process::Child {
        self.0.take().expect("the child is held until into_inner")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
