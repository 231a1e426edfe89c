//! The gRPC `Control` service: disconnecting a user and removing channels from their open
//! streams, on every node — two gateways sharing the real Redis (each test with its own key
//! prefix), a private `redis-server` for the outage, and the memory broker on one node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::private_redis::PrivateRedis;
use common::{now_secs, publish, req, test_publishers, SseReader, TestGateway, WAIT};
use serde_json::{json, Value};
use sse_gateway::config::{BrokerKind, RawConfig};
use sse_gateway::ingest::pb::control_client::ControlClient;
use sse_gateway::ingest::pb::{DisconnectRequest, UnsubscribeRequest};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

/// The certificate allowed to call `Control` in these tests.
const CONTROLLER: &str = "notify-service";

/// Within this, a command takes effect on every node.
const EVERY_NODE: Duration = Duration::from_secs(1);

fn prefix(test: &str) -> String {
    format!("test-control-{test}-{}", sse_gateway::hub::random_id())
}

fn allow_control(raw: &mut RawConfig) {
    raw.publishers = test_publishers();
    for p in &mut raw.publishers {
        p.control = p.name == CONTROLLER;
    }
}

async fn memory_node() -> TestGateway {
    TestGateway::spawn(allow_control).await
}

/// A node on the Redis broker at `url` with `prefix`, sharing `secret` ("" = its own).
async fn redis_node(url: &str, prefix: &str, secret: &str) -> TestGateway {
    let (url, prefix, secret) = (url.to_owned(), prefix.to_owned(), secret.to_owned());
    TestGateway::spawn(move |raw| {
        allow_control(raw);
        raw.broker.kind = BrokerKind::Redis;
        raw.broker.url = url;
        raw.broker.key_prefix = prefix;
        raw.broker.timeout_ms = 500;
        if !secret.is_empty() {
            raw.jwt.secret = Some(secret.into());
        }
    })
    .await
}

const REDIS_URL: &str = "redis://127.0.0.1:6379";

async fn control(gw: &TestGateway, service: &str) -> ControlClient<Channel> {
    let cert = gw.pki_file(&format!("{service}.pem"));
    let key = gw.pki_file(&format!("{service}-key.pem"));
    let channel = Channel::from_shared(gw.grpc_url())
        .unwrap()
        .tls_config(gw.client_tls(Some((&cert, &key))))
        .unwrap()
        .connect()
        .await
        .unwrap();
    ControlClient::new(channel)
}

fn disconnect(user_id: &str, reason: &str, revoke_tokens: bool) -> DisconnectRequest {
    DisconnectRequest {
        user_id: user_id.into(),
        reason: reason.into(),
        revoke_tokens,
    }
}

fn unsubscribe(user_id: &str, pattern: &str, reason: &str) -> UnsubscribeRequest {
    UnsubscribeRequest {
        user_id: user_id.into(),
        pattern: pattern.into(),
        reason: reason.into(),
    }
}

/// A token of `sub` for every channel, issued at `iat` (`None`: no `iat` claim).
fn token(gw: &TestGateway, sub: &str, iat: Option<i64>) -> String {
    let mut claims = json!({
        "sub": sub,
        "exp": now_secs() + 600,
        "channels": ["logs:**", "metrics:*"],
    });
    if let Some(iat) = iat {
        claims["iat"] = json!(iat);
    }
    gw.token_with(claims)
}

/// Reads `event: revoked` with `reason` and then the end of the stream, by `deadline`.
async fn expect_revoked(stream: &mut SseReader, reason: &str, deadline: Instant) {
    let data = stream.next_control("revoked", deadline).await;
    assert_eq!(data, json!({ "reason": reason }));
    stream.expect_end(deadline).await;
}

/// The status of `GET /api/sse` with `token`.
async fn sse_status(gw: &TestGateway, token: &str) -> u16 {
    gw.sse_response("/api/sse?channels=logs:ws1", Some(token), None)
        .await
        .status()
        .as_u16()
}

/// Waits until `GET /api/sse` with `token` answers `status`, by `deadline`.
async fn until_status(gw: &TestGateway, token: &str, status: u16, deadline: Instant) {
    loop {
        let got = sse_status(gw, token).await;
        if got == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {status} by the deadline, still {got}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn disconnect_on_one_node_closes_the_users_streams_on_both_within_a_second() {
    let p = prefix("disconnect");
    let a = redis_node(REDIS_URL, &p, "").await;
    let b = redis_node(REDIS_URL, &p, &a.secret).await;
    let alice = token(&a, "alice", None);
    let bob = token(&a, "bob", None);
    let (mut alice_a, _) = a.open("/api/sse?channels=logs:ws1", &alice, None).await;
    let (mut alice_b, _) = b.open("/api/sse?channels=logs:ws1", &alice, None).await;
    let (mut alice_b2, _) = b.open("/api/sse?channels=metrics:ws1", &alice, None).await;
    let (mut bob_b, _) = b.open("/api/sse?channels=logs:ws1", &bob, None).await;

    let started = Instant::now();
    let resp = control(&a, CONTROLLER)
        .await
        .disconnect(disconnect("alice", "signed out", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.streams, 1,
        "streams affected on the node that answered"
    );
    let deadline = started + EVERY_NODE;
    expect_revoked(&mut alice_a, "signed out", deadline).await;
    expect_revoked(&mut alice_b, "signed out", deadline).await;
    expect_revoked(&mut alice_b2, "signed out", deadline).await;

    // Another user's stream goes on.
    let mut pubr = a.publisher("l5-etl-service").await;
    let sent = publish(&mut pubr, req("logs:ws1", &json!({"n": 1}))).await;
    assert_eq!(bob_b.next_data(WAIT).await.id, sent.id);
    assert_eq!(
        b.gateway().state.hub.user_connections("alice").len(),
        0,
        "closed streams are unregistered"
    );
    // Without revoke_tokens the same token opens a stream again.
    assert_eq!(sse_status(&b, &alice).await, 200);
}

#[tokio::test]
async fn revoked_tokens_are_refused_on_every_node_and_later_tokens_accepted() {
    let p = prefix("revoke");
    let a = redis_node(REDIS_URL, &p, "").await;
    let b = redis_node(REDIS_URL, &p, &a.secret).await;
    let old = token(&a, "alice", Some(now_secs() - 60));
    let no_iat = token(&a, "alice", None);
    let (mut on_a, _) = a.open("/api/sse?channels=logs:ws1", &old, None).await;

    let started = Instant::now();
    let resp = control(&b, CONTROLLER)
        .await
        .disconnect(disconnect("alice", "account locked", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.streams, 0, "alice has no stream on the answering node");
    let after_call = now_secs();
    expect_revoked(&mut on_a, "account locked", started + EVERY_NODE).await;

    // Refused on both nodes: the answering node at once, the other within a second.
    assert_eq!(sse_status(&b, &old).await, 401);
    until_status(&a, &old, 401, started + EVERY_NODE).await;
    let body = common::error_body(
        a.sse_response("/api/sse?channels=logs:ws1", Some(&old), None)
            .await,
    )
    .await;
    assert!(body.contains("revoked"), "{body}");
    for gw in [&a, &b] {
        assert_eq!(
            sse_status(gw, &no_iat).await,
            401,
            "no iat counts as before"
        );
        let session = gw
            .http
            .post(gw.url("/api/sse/session"))
            .bearer_auth(&old)
            .send()
            .await
            .unwrap();
        assert_eq!(
            session.status(),
            401,
            "no session cookie for a revoked token"
        );
    }
    // A token issued after the call is accepted everywhere.
    let fresh = token(&a, "alice", Some(after_call + 1));
    assert_eq!(sse_status(&a, &fresh).await, 200);
    assert_eq!(sse_status(&b, &fresh).await, 200);
    // Another user's tokens are untouched.
    assert_eq!(sse_status(&a, &token(&a, "bob", None)).await, 200);

    // A node that starts later refuses the revoked token from its first request.
    let c = redis_node(REDIS_URL, &p, &a.secret).await;
    assert_eq!(sse_status(&c, &old).await, 401);
    assert_eq!(sse_status(&c, &fresh).await, 200);
}

#[tokio::test]
async fn unsubscribe_removes_matching_channels_from_the_users_streams_on_both_nodes() {
    let p = prefix("unsubscribe");
    let a = redis_node(REDIS_URL, &p, "").await;
    let b = redis_node(REDIS_URL, &p, &a.secret).await;
    let alice = token(&a, "alice", None);
    let (mut on_a, _) = a
        .open(
            "/api/sse?channels=logs:ws1:wf1,logs:ws2,metrics:ws1",
            &alice,
            None,
        )
        .await;
    let (mut on_b, _) = b
        .open("/api/sse?channels=logs:ws1:wf2,metrics:ws1", &alice, None)
        .await;
    let (mut untouched, _) = b.open("/api/sse?channels=logs:ws2", &alice, None).await;

    let started = Instant::now();
    let resp = control(&b, CONTROLLER)
        .await
        .unsubscribe(unsubscribe("alice", "logs:ws1:**", "removed from ws1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.streams, 1,
        "one stream on the answering node lost a channel"
    );
    let deadline = started + EVERY_NODE;
    let on_a_subs = on_a.next_control("subscriptions", deadline).await;
    assert_eq!(
        on_a_subs,
        json!({
            "channels": ["logs:ws2", "metrics:ws1"],
            "denied": [{"channel": "logs:ws1:wf1", "reason": "removed from ws1"}],
        })
    );
    let on_b_subs = on_b.next_control("subscriptions", deadline).await;
    assert_eq!(
        on_b_subs,
        json!({
            "channels": ["metrics:ws1"],
            "denied": [{"channel": "logs:ws1:wf2", "reason": "removed from ws1"}],
        })
    );
    // The removed channels no longer deliver; the others do (the log keeps their order).
    let mut pubr = a.publisher("l5-etl-service").await;
    publish(&mut pubr, req("logs:ws1:wf1", &json!({"n": 1}))).await;
    publish(&mut pubr, req("logs:ws1:wf2", &json!({"n": 2}))).await;
    let kept = publish(&mut pubr, req("metrics:ws1", &json!({"n": 3}))).await;
    assert_eq!(on_a.next_data(WAIT).await.id, kept.id);
    assert_eq!(on_b.next_data(WAIT).await.id, kept.id);
    // A stream without a matching channel got nothing.
    let ws2 = publish(&mut pubr, req("logs:ws2", &json!({"n": 4}))).await;
    let next = untouched.next_event(WAIT).await;
    assert_eq!(next.envelope().id, ws2.id, "{:?}", next.raw);
}

#[tokio::test]
async fn memory_broker_disconnect_revoke_and_unsubscribe_act_on_this_node() {
    let gw = memory_node().await;
    let old = token(&gw, "alice", Some(now_secs() - 5));
    let (mut logs, _) = gw
        .open("/api/sse?channels=logs:ws1,metrics:ws1", &old, None)
        .await;
    let mut client = control(&gw, CONTROLLER).await;
    let resp = client
        .unsubscribe(unsubscribe("alice", "metrics:*", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.streams, 1);
    let subs = logs.next_control("subscriptions", WAIT).await;
    assert_eq!(subs["channels"], json!(["logs:ws1"]));
    assert_eq!(subs["denied"][0]["channel"], "metrics:ws1");
    assert!(
        !subs["denied"][0]["reason"].as_str().unwrap().is_empty(),
        "a default reason"
    );
    // A pattern with {sub} is the user's own.
    let (mut own, _) = gw
        .open("/api/sse?channels=alerts:alice,logs:ws1", &old, None)
        .await;
    let resp = client
        .unsubscribe(unsubscribe("alice", "alerts:{sub}", "bye"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.streams, 1);
    assert_eq!(
        own.next_control("subscriptions", WAIT).await["channels"],
        json!(["logs:ws1"])
    );

    let resp = client
        .disconnect(disconnect("alice", "", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.streams, 2);
    let revoked = logs.next_control("revoked", WAIT).await;
    assert!(!revoked["reason"].as_str().unwrap().is_empty());
    logs.expect_end(WAIT).await;
    own.next_control("revoked", WAIT).await;
    own.expect_end(WAIT).await;
    assert_eq!(sse_status(&gw, &old).await, 401);
    let fresh = token(&gw, "alice", Some(now_secs() + 1));
    assert_eq!(sse_status(&gw, &fresh).await, 200);
}

#[tokio::test]
async fn control_refuses_other_certificates_and_bad_input() {
    let gw = memory_node().await;
    for service in ["l5-etl-service", "rogue-service"] {
        let err = control(&gw, service)
            .await
            .disconnect(disconnect("alice", "x", true))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::PermissionDenied,
            "{service}: {err:?}"
        );
        assert!(err.message().contains("control"), "{}", err.message());
        let err = control(&gw, service)
            .await
            .unsubscribe(unsubscribe("alice", "logs:**", "x"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }
    // A refused call had no effect.
    let alice = token(&gw, "alice", None);
    assert_eq!(sse_status(&gw, &alice).await, 200);

    let mut client = control(&gw, CONTROLLER).await;
    let err = client
        .disconnect(disconnect("", "x", false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("user_id"), "{}", err.message());
    let err = client
        .unsubscribe(unsubscribe("", "logs:**", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    for bad in ["", "logs:**:x", "LOGS:*", "logs:a b"] {
        let err = client
            .unsubscribe(unsubscribe("alice", bad, "x"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        assert!(
            err.message().contains("pattern"),
            "{bad:?}: {}",
            err.message()
        );
    }
    // An unknown user: nothing to do, and no error.
    let resp = client
        .disconnect(disconnect("nobody", "x", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.streams, 0);
    let resp = client
        .unsubscribe(unsubscribe("nobody", "logs:**", "x"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.streams, 0);

    // Every call above is counted by command and result.
    let text = gw.get("/metrics", None).await.text().await.unwrap();
    for (labels, n) in [
        (r#"command="disconnect",result="denied""#, 2.0),
        (r#"command="unsubscribe",result="denied""#, 2.0),
        (r#"command="disconnect",result="invalid""#, 1.0),
        (r#"command="unsubscribe",result="invalid""#, 5.0),
        (r#"command="disconnect",result="ok""#, 1.0),
        (r#"command="unsubscribe",result="ok""#, 1.0),
    ] {
        let name = format!("sse_gateway_control_calls_total{{{labels}}}");
        assert_eq!(common::metric_value(&text, &name), n, "{name}");
    }
}

#[tokio::test]
async fn redis_down_control_is_unavailable_and_no_node_applies_it() {
    let redis = PrivateRedis::start().await;
    let p = prefix("down");
    let a = redis_node(&redis.url(), &p, "").await;
    let b = redis_node(&redis.url(), &p, &a.secret).await;
    let alice = token(&a, "alice", None);
    let (mut on_a, _) = a
        .open("/api/sse?channels=logs:ws1,metrics:ws1", &alice, None)
        .await;
    let (mut on_b, _) = b
        .open("/api/sse?channels=logs:ws1,metrics:ws1", &alice, None)
        .await;
    let mut client = control(&a, CONTROLLER).await;

    redis.signal("-STOP");
    let err = client
        .disconnect(disconnect("alice", "x", true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    // Nothing was applied here either: the stream is open and the token accepted.
    assert_eq!(a.gateway().state.hub.user_connections("alice").len(), 1);
    assert_eq!(sse_status(&a, &alice).await, 200);
    redis.signal("-CONT");

    // Commands are applied in the order Redis took them: once a later one is seen on both
    // nodes, the refused one would have been seen before it.
    let started = Instant::now();
    let deadline = Instant::now() + WAIT;
    let resp = loop {
        match client
            .unsubscribe(unsubscribe("alice", "metrics:*", "later"))
            .await
        {
            Ok(resp) => break resp.into_inner(),
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                assert!(Instant::now() < deadline, "Redis answers again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(resp.streams, 1);
    for stream in [&mut on_a, &mut on_b] {
        let subs = stream.next_control("subscriptions", started + WAIT).await;
        assert_eq!(subs["channels"], json!(["logs:ws1"]));
    }
    assert_eq!(sse_status(&a, &alice).await, 200);
    assert_eq!(sse_status(&b, &alice).await, 200);
    let revoked: Option<String> = redis::cmd("HGET")
        .arg(format!("{{{p}}}:revoked"))
        .arg("alice")
        .query_async(
            &mut redis::Client::open(redis.url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(revoked, None, "no revocation was stored");
}

#[tokio::test]
async fn admin_disconnect_closes_a_user_on_every_node_or_one_connection() {
    let p = prefix("admin");
    let a = redis_node(REDIS_URL, &p, "").await;
    let b = redis_node(REDIS_URL, &p, &a.secret).await;
    let admin = a.token("root", &[], &["admin"], 600);
    let plain = a.token("carol", &[], &[], 600);
    let post = |gw: &TestGateway, token: Option<&str>, body: Value| {
        let mut req = gw.http.post(gw.url("/admin/disconnect")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let body = json!({"user_id": "alice", "reason": "x"});
    assert_eq!(post(&a, None, body.clone()).await.unwrap().status(), 401);
    assert_eq!(post(&a, Some(&plain), body).await.unwrap().status(), 403);
    for bad in [
        json!({"reason": "x"}),
        json!({"user_id": "alice", "connection_id": "c"}),
        json!({"user_id": ""}),
    ] {
        let resp = post(&a, Some(&admin), bad.clone()).await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
    }

    let alice = token(&a, "alice", None);
    let (mut one, ready) = a.open("/api/sse?channels=logs:ws1", &alice, None).await;
    let (mut two, _) = a.open("/api/sse?channels=logs:ws1", &alice, None).await;
    let (mut on_b, _) = b.open("/api/sse?channels=logs:ws1", &alice, None).await;

    // One connection, by the id /admin/connections shows.
    let listed: Value = a
        .http
        .get(a.url("/admin/connections"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["connection_id"] == ready.connection_id.as_str()));
    let resp = post(
        &a,
        Some(&admin),
        json!({"connection_id": ready.connection_id, "reason": "kicked"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"streams": 1}));
    expect_revoked(&mut one, "kicked", Instant::now() + WAIT).await;
    let resp = post(
        &a,
        Some(&admin),
        json!({"connection_id": ready.connection_id}),
    )
    .await
    .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"streams": 0}));

    // The user, on every node, as Control.Disconnect does.
    let started = Instant::now();
    let resp = post(
        &a,
        Some(&admin),
        json!({"user_id": "alice", "reason": "by admin"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"streams": 1}));
    expect_revoked(&mut two, "by admin", started + EVERY_NODE).await;
    expect_revoked(&mut on_b, "by admin", started + EVERY_NODE).await;
}

/// A TCP proxy to the shared Redis that can be cut (connections dropped, new ones refused) and
/// restored: Redis goes away for one node only.
struct CutProxy {
    addr: std::net::SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<JoinSet<()>>>,
}

impl CutProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let (c, set) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                set.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:6379").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.conns.lock().unwrap().abort_all();
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_node_briefly_away_from_redis_applies_the_revocation_when_back() {
    let p = prefix("away");
    let proxy = CutProxy::start().await;
    let a = redis_node(REDIS_URL, &p, "").await;
    let b = redis_node(&format!("redis://{}", proxy.addr), &p, &a.secret).await;
    let old = token(&a, "alice", Some(now_secs() - 60));
    let (mut on_b, _) = b.open("/api/sse?channels=logs:ws1", &old, None).await;

    proxy.cut();
    let resp = control(&a, CONTROLLER)
        .await
        .disconnect(disconnect("alice", "password changed", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.streams, 0);
    assert_eq!(sse_status(&a, &old).await, 401);
    // b is away: it has not heard of the revocation yet.
    assert_eq!(b.gateway().state.hub.user_connections("alice").len(), 1);
    assert_eq!(sse_status(&b, &old).await, 200);
    proxy.restore();

    // Back on Redis, b reads on from where its control tail stopped: the stream it held is
    // closed and the token refused.
    let deadline = Instant::now() + WAIT;
    loop {
        let frame = on_b.next_event(deadline).await;
        if frame.event.as_deref() == Some("revoked") {
            assert_eq!(frame.json(), json!({"reason": "password changed"}));
            break;
        }
    }
    on_b.expect_end(deadline).await;
    until_status(&b, &old, 401, deadline).await;
}

#[tokio::test]
async fn control_is_in_grpc_health_and_reflection() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let gw = memory_node().await;
    let cert = gw.pki_file("l5-etl-service.pem");
    let key = gw.pki_file("l5-etl-service-key.pem");
    let channel = Channel::from_shared(gw.grpc_url())
        .unwrap()
        .tls_config(gw.client_tls(Some((&cert, &key))))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "ssegateway.v1.Control".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = tokio::time::timeout(WAIT, responses.message())
        .await
        .unwrap()
        .unwrap()
        .expect("one reflection response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "ssegateway.v1.Control"),
        "{names:?}"
    );
}

/// An `[authz]` permission service that allows every channel it is asked about while `allow`
/// holds, and counts the requests.
struct FakeAuthorizer {
    url: String,
    allow: Arc<AtomicBool>,
    asked: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeAuthorizer {
    async fn start() -> Self {
        let allow = Arc::new(AtomicBool::new(true));
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (a, n) = (allow.clone(), asked.clone());
        let app = axum::Router::new().route(
            "/sse/authorize",
            axum::routing::post(move |body: axum::Json<Value>| async move {
                n.fetch_add(1, Ordering::SeqCst);
                let channels = body.0["channels"].clone();
                axum::Json(if a.load(Ordering::SeqCst) {
                    json!({"allow": channels, "ttl_secs": 300})
                } else {
                    json!({"allow": [], "ttl_secs": 300})
                })
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}/sse/authorize"),
            allow,
            asked,
        }
    }

    fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn unsubscribe_drops_the_users_cached_authorizer_answers() {
    let app = FakeAuthorizer::start().await;
    let url = app.url.clone();
    let gw = TestGateway::spawn(move |raw| {
        allow_control(raw);
        raw.authz.url = url;
    })
    .await;
    // The token grants no logs channel: the authorizer decides, and its answer is cached.
    let token = gw.token("alice", &[], &[], 600);
    let (mut first, ready) = gw.open("/api/sse?channels=logs:ws1", &token, None).await;
    assert_eq!(ready.channels, ["logs:ws1"]);
    assert_eq!(app.asked(), 1);
    let (mut second, _) = gw.open("/api/sse?channels=logs:ws1", &token, None).await;
    assert_eq!(
        app.asked(),
        1,
        "the second stream is granted from the cache"
    );

    // The app takes alice out of ws1: its service says no from now on, and it tells the gateway.
    app.allow.store(false, Ordering::SeqCst);
    let resp = control(&gw, CONTROLLER)
        .await
        .unsubscribe(unsubscribe("alice", "logs:ws1", "removed from ws1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.streams, 2);
    for stream in [&mut first, &mut second] {
        let subs = stream.next_control("subscriptions", WAIT).await;
        assert_eq!(subs["channels"], json!([]));
    }
    // Not granted from the old answer: the authorizer is asked again, and refuses.
    let refused = gw
        .sse_response("/api/sse?channels=logs:ws1", Some(&token), None)
        .await;
    assert_eq!(refused.status(), 403);
    assert_eq!(app.asked(), 2);
}
