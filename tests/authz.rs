//! `[authz]`: the gateway asks the app's own permission service, over real HTTP, for the
//! channels a token does not settle (or, in `always` mode, for every channel it grants), caches
//! the answers per (user, channel), and fails closed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::*;
use serde_json::{json, Value};
use sse_gateway::config::{AuthzMode, Overrides, RawConfig};
use tokio::time::Instant;

const UNAVAILABLE: &str = "authorizer unavailable";

/// What the fake app answers.
#[derive(Clone)]
enum Reply {
    /// 200 with this JSON.
    Json(Value),
    /// This status, empty body.
    Status(u16),
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with a 2 MiB JSON body, streamed (no Content-Length), that would allow `logs:ws2`.
    Huge,
    /// The same body in one piece, with its Content-Length.
    HugeWithLength,
    /// The JSON, after this delay.
    Slow(Duration, Value),
    /// The JSON, once a permit of the semaphore is released for it.
    Gated(Arc<tokio::sync::Semaphore>, Value),
}

/// One request the fake app received.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Value,
}

/// The app's permission service: a real HTTP server on an ephemeral port that records every
/// request and answers as told.
struct FakeApp {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    reply: Arc<Mutex<Reply>>,
}

impl FakeApp {
    async fn start(reply: Reply) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reply = Arc::new(Mutex::new(reply));
        let app = axum::Router::new().route(
            "/sse/authorize",
            post({
                let (seen, reply) = (seen.clone(), reply.clone());
                move |headers: HeaderMap, body: Bytes| async move {
                    let header =
                        |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
                    seen.lock().unwrap().push(Seen {
                        at: Instant::now(),
                        authorization: header("authorization"),
                        content_type: header("content-type"),
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    });
                    let reply = reply.lock().unwrap().clone();
                    answer(reply).await
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}/sse/authorize"),
            seen,
            reply,
        }
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

async fn answer(reply: Reply) -> Response {
    match reply {
        Reply::Json(v) => axum::Json(v).into_response(),
        Reply::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Reply::Garbage => "{\"allow\": [\"logs:ws2\"".into_response(),
        Reply::Huge => {
            let head = Bytes::from_static(b"{\"allow\":[\"logs:ws2\"],\"pad\":\"");
            let pad = Bytes::from(vec![b'x'; 64 * 1024]);
            let chunks = std::iter::once(head)
                .chain(std::iter::repeat_n(pad, 32))
                .chain(std::iter::once(Bytes::from_static(b"\"}")))
                .map(Ok::<_, std::io::Error>);
            Body::from_stream(futures_util::stream::iter(chunks)).into_response()
        }
        Reply::HugeWithLength => {
            let pad = "x".repeat(2 * 1024 * 1024);
            axum::Json(json!({"allow": ["logs:ws2"], "pad": pad})).into_response()
        }
        Reply::Slow(delay, v) => {
            tokio::time::sleep(delay).await;
            axum::Json(v).into_response()
        }
        Reply::Gated(gate, v) => {
            gate.acquire().await.unwrap().forget();
            axum::Json(v).into_response()
        }
    }
}

/// A URL where nothing listens (a port just released).
async fn refused_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/sse/authorize")
}

async fn gateway(url: &str, mode: AuthzMode, tweak: impl FnOnce(&mut RawConfig)) -> TestGateway {
    let url = url.to_owned();
    TestGateway::spawn(move |raw| {
        raw.authz.url = url;
        raw.authz.mode = mode;
        tweak(raw);
    })
    .await
}

fn channels_asked(seen: &Seen) -> Vec<String> {
    serde_json::from_value(seen.body["channels"].clone()).unwrap()
}

fn denied(channel: &str, reason: &str) -> Denied {
    Denied {
        channel: channel.to_owned(),
        reason: reason.to_owned(),
    }
}

#[tokio::test]
async fn fallback_asks_once_for_what_the_token_does_not_grant() {
    let app = FakeApp::start(Reply::Json(json!({
        "allow": ["logs:ws2:wf1", "logs:unasked"],
        "deny": [{"channel": "logs:ws3", "reason": "not a member of ws3"}],
        "ttl_secs": 30
    })))
    .await;
    let gw = gateway(&app.url, AuthzMode::Fallback, |_| {}).await;
    let token = gw.token("u1", &["logs:ws1"], &["viewer"], 600);
    let (mut stream, ready) = gw
        .open(
            "/api/sse?channels=logs:ws1,logs:ws2:wf1,logs:ws3,alerts:u1,logs:ws4,logs:unasked:x",
            &token,
            None,
        )
        .await;
    assert_eq!(app.count(), 1, "one request for the whole open");
    let seen = app.last();
    assert_eq!(seen.authorization, Some(format!("Bearer {token}")));
    assert_eq!(seen.content_type.as_deref(), Some("application/json"));
    assert_eq!(seen.body["sub"], "u1");
    assert_eq!(seen.body["roles"], json!(["viewer"]));
    assert_eq!(
        channels_asked(&seen),
        ["logs:ws2:wf1", "logs:ws3", "logs:ws4", "logs:unasked:x"],
        "the claim grants logs:ws1 and the default rule alerts:u1: not asked"
    );
    assert_eq!(ready.channels, ["logs:ws1", "logs:ws2:wf1", "alerts:u1"]);
    assert_eq!(
        ready.denied,
        [
            denied("logs:ws3", "not a member of ws3"),
            denied("logs:ws4", "not allowed by the authorizer"),
            denied("logs:unasked:x", "not allowed by the authorizer"),
        ],
        "a channel in neither list is denied; logs:unasked was not asked and is ignored"
    );

    // The granted channel really streams.
    let mut etl = gw.publisher("l5-etl-service").await;
    let id = publish(&mut etl, req("logs:ws2:wf1", &json!({"line": 1})))
        .await
        .id;
    let got = stream.next_data(WAIT).await;
    assert_eq!(
        (got.channel.as_str(), got.id.as_str()),
        ("logs:ws2:wf1", id.as_str())
    );

    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "sse_gateway_authz_requests_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&metrics, "sse_gateway_authz_request_seconds_count"),
        1.0
    );
    assert_eq!(
        metric_value(&metrics, "sse_gateway_authz_cache_misses_total"),
        4.0
    );
}

#[tokio::test]
async fn fallback_without_a_channel_to_ask_about_sends_nothing() {
    let app = FakeApp::start(Reply::Json(json!({"allow": []}))).await;
    let gw = gateway(&app.url, AuthzMode::Fallback, |_| {}).await;
    let token = gw.token("u1", &["logs:*"], &[], 600);
    let (_stream, ready) = gw
        .open("/api/sse?channels=logs:ws1,alerts:u1", &token, None)
        .await;
    assert_eq!(ready.channels, ["logs:ws1", "alerts:u1"]);
    assert_eq!(app.count(), 0);
}

#[tokio::test]
async fn always_needs_both_the_token_and_the_callback() {
    let app = FakeApp::start(Reply::Json(json!({
        "allow": ["logs:ws1", "logs:ws3"],
        "deny": [{"channel": "logs:ws2", "reason": "workflow archived"}]
    })))
    .await;
    let gw = gateway(&app.url, AuthzMode::Always, |_| {}).await;
    let token = gw.token("u1", &["logs:ws1", "logs:ws2"], &[], 600);
    let (_stream, ready) = gw
        .open("/api/sse?channels=logs:ws1,logs:ws2,logs:ws3", &token, None)
        .await;
    assert_eq!(app.count(), 1);
    assert_eq!(
        channels_asked(&app.last()),
        ["logs:ws1", "logs:ws2"],
        "only what the token grants is worth asking about"
    );
    assert_eq!(ready.channels, ["logs:ws1"]);
    assert_eq!(
        ready.denied,
        [
            denied("logs:ws2", "workflow archived"),
            denied(
                "logs:ws3",
                "not permitted by the token's channels claim or a subscribe rule"
            ),
        ]
    );

    // Nothing granted by the callback: 403.
    app.set(Reply::Json(json!({"allow": []})));
    let resp = gw
        .sse_response("/api/sse?channels=logs:ws2", Some(&token), None)
        .await;
    assert_eq!(resp.status(), 403);
    assert!(error_body(resp).await.contains("workflow archived"));
    assert_eq!(
        app.count(),
        1,
        "logs:ws2 was answered (denied) from the cache"
    );
}

/// Opens `channels` for `token` and returns what `ready` granted, and the instant the open
/// returned (any answer it cached was cached before it).
async fn granted(gw: &TestGateway, channels: &str, token: &str) -> (Vec<String>, Instant) {
    let (_stream, ready) = gw
        .open(&format!("/api/sse?channels={channels}"), token, None)
        .await;
    (ready.channels, Instant::now())
}

#[tokio::test]
async fn the_answers_ttl_is_honoured() {
    let app = FakeApp::start(Reply::Json(json!({"allow": ["logs:ws2"], "ttl_secs": 2}))).await;
    // The configured default would keep answers for an hour: the answer's ttl wins.
    let gw = gateway(&app.url, AuthzMode::Fallback, |raw| {
        raw.authz.cache_ttl_secs = 3600
    })
    .await;
    let token = gw.token("u1", &[], &[], 600);
    let before_first = Instant::now();
    let (channels, after_first) = granted(&gw, "logs:ws2", &token).await;
    assert_eq!(channels, ["logs:ws2"]);
    assert_eq!(app.count(), 1);

    app.set(Reply::Json(json!({"allow": []})));
    let (channels, after_second) = granted(&gw, "logs:ws2", &token).await;
    assert!(
        after_second < before_first + Duration::from_secs(2),
        "the second open must come within the ttl for this check to mean anything"
    );
    assert_eq!(channels, ["logs:ws2"], "answered from the cache");
    assert_eq!(app.count(), 1, "no request within the ttl");
    assert_eq!(gw.metric("sse_gateway_authz_cache_hits_total").await, 1.0);

    // Another user is asked about separately.
    let other = gw.token("u2", &[], &[], 600);
    let (channels, _) = granted_or_403(&gw, "logs:ws2", &other).await;
    assert!(channels.is_empty());
    assert_eq!(app.count(), 2);

    tokio::time::sleep_until(after_first + Duration::from_secs(2)).await;
    let resp = gw
        .sse_response("/api/sse?channels=logs:ws2", Some(&token), None)
        .await;
    assert_eq!(resp.status(), 403, "expired: asked again, now denied");
    assert_eq!(app.count(), 3);
}

/// Like [`granted`], accepting a 403 (nothing granted).
async fn granted_or_403(gw: &TestGateway, channels: &str, token: &str) -> (Vec<String>, Instant) {
    let resp = gw
        .sse_response(&format!("/api/sse?channels={channels}"), Some(token), None)
        .await;
    if resp.status() == 403 {
        return (Vec::new(), Instant::now());
    }
    let mut reader = SseReader::new(resp);
    (reader.ready(WAIT).await.channels, Instant::now())
}

#[tokio::test]
async fn without_ttl_secs_the_configured_cache_ttl_applies() {
    let app = FakeApp::start(Reply::Json(json!({"allow": ["logs:ws2"]}))).await;
    let gw = gateway(&app.url, AuthzMode::Fallback, |raw| {
        raw.authz.cache_ttl_secs = 1
    })
    .await;
    let token = gw.token("u1", &[], &[], 600);
    let (_, after_first) = granted(&gw, "logs:ws2", &token).await;
    assert_eq!(app.count(), 1);
    tokio::time::sleep_until(after_first + Duration::from_secs(1)).await;
    granted(&gw, "logs:ws2", &token).await;
    assert_eq!(app.count(), 2, "a 1 s default ttl has passed: asked again");
}

#[tokio::test]
async fn ttl_zero_is_not_cached() {
    let app = FakeApp::start(Reply::Json(json!({"allow": ["logs:ws2"], "ttl_secs": 0}))).await;
    let gw = gateway(&app.url, AuthzMode::Fallback, |_| {}).await;
    let token = gw.token("u1", &[], &[], 600);
    granted(&gw, "logs:ws2", &token).await;
    granted(&gw, "logs:ws2", &token).await;
    assert_eq!(app.count(), 2);
}

/// The callback fails as `reply` makes it (or is down when `reply` is `None`): the channels it
/// was asked about are denied "authorizer unavailable", a 403 when nothing else is granted,
/// nothing is cached, and the failure is counted under `label`.
async fn fails_closed(reply: Option<Reply>, label: &str) {
    let app = FakeApp::start(reply.clone().unwrap_or(Reply::Status(200))).await;
    let url = match reply {
        Some(_) => app.url.clone(),
        None => refused_url().await,
    };
    let gw = gateway(&url, AuthzMode::Fallback, |raw| raw.authz.timeout_ms = 300).await;
    let token = gw.token("u1", &["logs:ws1"], &[], 600);

    let started = Instant::now();
    let (_stream, ready) = gw
        .open("/api/sse?channels=logs:ws1,logs:ws2", &token, None)
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the open does not wait for a slow callback beyond its timeout"
    );
    assert_eq!(ready.channels, ["logs:ws1"]);
    assert_eq!(ready.denied, [denied("logs:ws2", UNAVAILABLE)]);

    let resp = gw
        .sse_response("/api/sse?channels=logs:ws2", Some(&token), None)
        .await;
    assert_eq!(resp.status(), 403);
    let message = error_body(resp).await;
    assert!(message.contains(UNAVAILABLE), "{message}");

    let failed = format!("sse_gateway_authz_requests_total{{result=\"{label}\"}}");
    assert_eq!(gw.metric(&failed).await, 2.0, "nothing cached: asked twice");
    if url == app.url {
        assert_eq!(app.count(), 2);
    }
    assert!(!gw
        .metrics()
        .await
        .contains("authz_requests_total{result=\"ok\"}"));
}

#[tokio::test]
async fn a_slow_authorizer_is_unavailable() {
    let slow = Reply::Slow(Duration::from_secs(5), json!({"allow": ["logs:ws2"]}));
    fails_closed(Some(slow), "timeout").await;
}

#[tokio::test]
async fn a_down_authorizer_is_unavailable() {
    fails_closed(None, "error").await;
}

#[tokio::test]
async fn a_500_is_unavailable() {
    fails_closed(Some(Reply::Status(500)), "bad_status").await;
}

#[tokio::test]
async fn garbage_json_is_unavailable() {
    fails_closed(Some(Reply::Garbage), "malformed").await;
}

#[tokio::test]
async fn a_huge_answer_is_unavailable() {
    fails_closed(Some(Reply::Huge), "malformed").await;
}

#[tokio::test]
async fn a_huge_answer_with_its_length_is_unavailable() {
    fails_closed(Some(Reply::HugeWithLength), "malformed").await;
}

#[tokio::test]
async fn a_recovered_authorizer_is_asked_again() {
    let app = FakeApp::start(Reply::Status(503)).await;
    let gw = gateway(&app.url, AuthzMode::Fallback, |_| {}).await;
    let token = gw.token("u1", &[], &[], 600);
    let resp = gw
        .sse_response("/api/sse?channels=logs:ws2", Some(&token), None)
        .await;
    assert_eq!(resp.status(), 403);
    app.set(Reply::Json(json!({"allow": ["logs:ws2"]})));
    let (channels, _) = granted(&gw, "logs:ws2", &token).await;
    assert_eq!(channels, ["logs:ws2"]);
    assert_eq!(app.count(), 2);
}

#[tokio::test]
async fn requests_in_flight_are_bounded_by_max_concurrent() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let app = FakeApp::start(Reply::Gated(gate.clone(), json!({"allow": ["logs:ws2"]}))).await;
    let gw = gateway(&app.url, AuthzMode::Fallback, |raw| {
        raw.authz.max_concurrent = 1;
        raw.authz.timeout_ms = 10_000;
    })
    .await;
    let (alice, bob) = (
        gw.token("alice", &[], &[], 600),
        gw.token("bob", &[], &[], 600),
    );
    let first_arrived = async {
        let deadline = Instant::now() + WAIT;
        while app.count() == 0 {
            assert!(Instant::now() < deadline, "the first request never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let first = gw.sse_response("/api/sse?channels=logs:ws2", Some(&alice), None);
    let second = async {
        first_arrived.await;
        gw.sse_response("/api/sse?channels=logs:ws2", Some(&bob), None)
            .await
    };
    let release = async {
        while app.count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Time for bob's open to reach the gateway: unbounded, its request would arrive now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let released = Instant::now();
        gate.add_permits(2);
        released
    };
    let (first, second, released) = tokio::join!(first, second, release);
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 200);
    let seen = app.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body["sub"], "bob");
    assert!(
        seen[1].at >= released,
        "bob's request waited until alice's was answered"
    );
}

#[tokio::test]
async fn subscription_adds_ask_the_authorizer() {
    let app = FakeApp::start(Reply::Json(json!({
        "allow": ["logs:ws2"],
        "deny": [{"channel": "logs:ws3", "reason": "not a member of ws3"}]
    })))
    .await;
    let gw = gateway(&app.url, AuthzMode::Fallback, |_| {}).await;
    let token = gw.token("u1", &["logs:ws1"], &[], 600);
    let (mut stream, ready) = gw.open("/api/sse?channels=logs:ws1", &token, None).await;
    assert_eq!(app.count(), 0, "the token grants everything asked at open");

    let change = |add: Value| {
        let req = gw
            .http
            .post(gw.url("/api/sse/subscriptions"))
            .bearer_auth(&token)
            .json(&json!({"connection_id": ready.connection_id, "add": add}));
        async move {
            let resp = tokio::time::timeout(WAIT, req.send())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    let outcome = change(json!(["logs:ws2", "logs:ws3", "logs:ws1"])).await;
    assert_eq!(app.count(), 1);
    let seen = app.last();
    assert_eq!(seen.authorization, Some(format!("Bearer {token}")));
    assert_eq!(channels_asked(&seen), ["logs:ws2", "logs:ws3"]);
    let expected = json!({
        "channels": ["logs:ws1", "logs:ws2"],
        "denied": [{"channel": "logs:ws3", "reason": "not a member of ws3"}]
    });
    assert_eq!(outcome, expected);
    assert_eq!(stream.next_control("subscriptions", WAIT).await, expected);

    app.set(Reply::Status(500));
    let outcome = change(json!(["logs:ws4"])).await;
    assert_eq!(
        outcome["denied"],
        json!([{"channel": "logs:ws4", "reason": UNAVAILABLE}])
    );
    assert_eq!(outcome["channels"], json!(["logs:ws1", "logs:ws2"]));
    assert_eq!(app.count(), 2);
}

#[tokio::test]
async fn works_with_the_redis_broker() {
    let app = FakeApp::start(Reply::Json(json!({"allow": ["logs:ws2"]}))).await;
    let prefix = format!("authz-test-{}", sse_gateway::hub::random_id());
    let gw = gateway(&app.url, AuthzMode::Fallback, |raw| {
        raw.broker.kind = sse_gateway::config::BrokerKind::Redis;
        raw.broker.key_prefix = prefix;
    })
    .await;
    let token = gw.token("u1", &[], &[], 600);
    let (mut stream, ready) = gw
        .open("/api/sse?channels=logs:ws2,logs:ws3", &token, None)
        .await;
    assert_eq!(ready.channels, ["logs:ws2"]);
    assert_eq!(app.count(), 1);
    let mut etl = gw.publisher("l5-etl-service").await;
    publish(&mut etl, req("logs:ws3", &json!("hidden"))).await;
    let id = publish(&mut etl, req("logs:ws2", &json!("shown"))).await.id;
    let got = stream.next_data(WAIT).await;
    assert_eq!(
        (got.channel.as_str(), got.id.as_str()),
        ("logs:ws2", id.as_str())
    );
}

#[tokio::test]
async fn a_reload_switches_the_authorizer_and_drops_the_cache() {
    let first = FakeApp::start(Reply::Json(json!({"allow": ["logs:ws2"]}))).await;
    let second = FakeApp::start(Reply::Json(json!({"allow": []}))).await;
    let url = Arc::new(Mutex::new(first.url.clone()));
    let dir = tempfile::tempdir().unwrap();
    sse_gateway::pki::ensure_dev_pki(dir.path(), &[]).unwrap();
    let secret = "a-reload-test-secret-of-at-least-32-bytes";
    let source: sse_gateway::app::ConfigSource = Arc::new({
        let (url, d) = (url.clone(), dir.path().to_owned());
        move || {
            let mut raw = RawConfig::default();
            raw.http.addr = "127.0.0.1:0".parse()?;
            raw.grpc.addr = "127.0.0.1:0".parse()?;
            raw.grpc.tls_cert = Some(d.join("server.pem"));
            raw.grpc.tls_key = Some(d.join("server-key.pem"));
            raw.grpc.client_ca = Some(d.join("ca.pem"));
            raw.jwt.secret = Some(secret.into());
            raw.authz.url = url.lock().unwrap().clone();
            Ok(sse_gateway::config::Config::from_raw(raw, &d)?)
        }
    });
    sse_gateway::app::install_crypto_provider();
    let gw = sse_gateway::app::Gateway::start_reloadable(source().unwrap(), None, source)
        .await
        .unwrap();
    let token = hs256(
        secret.as_bytes(),
        &json!({"sub": "u1", "exp": now_secs() + 600}),
    );
    let open = |token: String| {
        let url = format!("http://{}/api/sse?channels=logs:ws2", gw.http_addr);
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(open(token.clone()).await, 200);
    assert_eq!(open(token.clone()).await, 200, "cached");
    assert_eq!(first.count(), 1);

    // The same settings again: the cache stays.
    gw.reload().unwrap();
    assert_eq!(open(token.clone()).await, 200);
    assert_eq!(first.count(), 1);

    *url.lock().unwrap() = second.url.clone();
    gw.reload().unwrap();
    assert_eq!(open(token.clone()).await, 403, "the new authorizer denies");
    assert_eq!((first.count(), second.count()), (1, 1));
    gw.shutdown();
    tokio::time::timeout(WAIT * 2, gw.wait()).await.unwrap();
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The production settings a config needs besides `[authz]`, from the environment.
fn base_env(dir: &std::path::Path) -> Vec<(String, String)> {
    let file = dir.join("any.pem");
    std::fs::write(&file, "x").unwrap();
    let file = file.to_str().unwrap();
    env(&[
        ("SSE_GATEWAY__GRPC__TLS_CERT", file),
        ("SSE_GATEWAY__GRPC__TLS_KEY", file),
        ("SSE_GATEWAY__GRPC__CLIENT_CA", file),
        (
            "SSE_GATEWAY__JWT__SECRET",
            "0123456789abcdef0123456789abcdef",
        ),
    ])
}

#[test]
fn authz_is_configured_from_the_environment_and_printed() {
    let dir = tempfile::tempdir().unwrap();
    let mut vars = base_env(dir.path());
    vars.extend(env(&[
        (
            "SSE_GATEWAY__AUTHZ__URL",
            "https://app.internal/sse/authorize",
        ),
        ("SSE_GATEWAY__AUTHZ__MODE", "always"),
        ("SSE_GATEWAY__AUTHZ__TIMEOUT_MS", "250"),
        ("SSE_GATEWAY__AUTHZ__CACHE_TTL_SECS", "5"),
        ("SSE_GATEWAY__AUTHZ__MAX_CONCURRENT", "8"),
    ]));
    let (raw, config) =
        sse_gateway::config::load_effective(None, vars, &Overrides::default()).unwrap();
    let authz = config.authz.expect("configured");
    assert_eq!(authz.url, "https://app.internal/sse/authorize");
    assert_eq!(authz.mode, AuthzMode::Always);
    assert_eq!(authz.timeout, Duration::from_millis(250));
    assert_eq!(authz.cache_ttl, Duration::from_secs(5));
    assert_eq!(authz.max_concurrent, 8);
    let toml = raw.to_toml().unwrap();
    assert!(toml.contains("[authz]"), "{toml}");
    assert!(
        toml.contains("url = \"https://app.internal/sse/authorize\""),
        "{toml}"
    );
    assert!(toml.contains("mode = \"always\""), "{toml}");

    let (_, config) =
        sse_gateway::config::load_effective(None, base_env(dir.path()), &Overrides::default())
            .unwrap();
    assert!(config.authz.is_none(), "no url: no callback");
}

#[test]
fn bad_authz_values_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, needle) in [
        (
            "SSE_GATEWAY__AUTHZ__URL",
            "ftp://app/sse",
            "http:// or https://",
        ),
        ("SSE_GATEWAY__AUTHZ__URL", "not a url", "not a URL"),
        (
            "SSE_GATEWAY__AUTHZ__URL",
            "http://user:pw@app/x",
            "credentials",
        ),
        ("SSE_GATEWAY__AUTHZ__MODE", "sometimes", "fallback"),
        ("SSE_GATEWAY__AUTHZ__TIMEOUT_MS", "0", "at least 1"),
    ] {
        let mut vars = base_env(dir.path());
        vars.push((var.to_owned(), value.to_owned()));
        let errors =
            sse_gateway::config::Config::load(None, vars, &Overrides::default()).expect_err(value);
        assert!(errors.mentions(var), "{var}={value}: {errors}");
        assert!(errors.mentions(needle), "{var}={value}: {errors}");
        if value.contains("pw@") {
            assert!(!errors.mentions("pw@"), "{errors}");
        }
    }
}
