//! Several nodes sharing one ordered log in Redis Streams (SPEC §7), against the real Redis at
//! 127.0.0.1:6379. Each test uses its own key prefix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{publish, req, TestGateway, WAIT};
use serde_json::json;
use sse_gateway::ingest::pb::PublishBatchRequest;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

const REDIS: &str = "127.0.0.1:6379";

fn prefix(test: &str) -> String {
    format!("test-{test}-{}", sse_gateway::hub::random_id())
}

/// Spawns a node on the Redis broker at `url` with `prefix` and the shared `secret` ("" = its own).
async fn node(
    url: &str,
    prefix: &str,
    secret: &str,
    tweak: impl FnOnce(&mut sse_gateway::config::RawConfig),
) -> TestGateway {
    let (url, prefix, secret) = (url.to_owned(), prefix.to_owned(), secret.to_owned());
    TestGateway::spawn(move |raw| {
        raw.broker.kind = "redis".into();
        raw.broker.url = url;
        raw.broker.key_prefix = prefix;
        raw.broker.timeout_ms = 500;
        if !secret.is_empty() {
            raw.jwt.secret = secret;
        }
        tweak(raw);
    })
    .await
}

fn redis_url() -> String {
    format!("redis://{REDIS}")
}

#[tokio::test]
async fn publish_on_one_node_arrives_on_the_other() {
    let p = prefix("fanout");
    let a = node(&redis_url(), &p, "", |_| {}).await;
    let b = node(&redis_url(), &p, &a.secret, |_| {}).await;
    let token = a.token("alice", &["logs:**"], &[], 600);
    let (mut on_b, _) = b.open("/api/sse?channels=logs:ws1:wf1", &token, None).await;
    let mut pubr = a.publisher("l5-etl-service").await;
    let resp = publish(&mut pubr, req("logs:ws1:wf1", &json!({"n": 1}))).await;
    let env = on_b.next_data(WAIT).await;
    assert_eq!(env.id, resp.id);
    assert_eq!(env.payload, json!({"n": 1}));
    assert_eq!(env.channel, "logs:ws1:wf1");
}

#[tokio::test]
async fn cursor_from_one_node_resumes_exactly_on_the_other() {
    let p = prefix("resume");
    let a = node(&redis_url(), &p, "", |_| {}).await;
    let b = node(&redis_url(), &p, &a.secret, |_| {}).await;
    let token = a.token("alice", &["logs:**"], &[], 600);
    let mut pubr = a.publisher("l5-etl-service").await;
    let (mut on_b, _) = b.open("/api/sse?channels=logs:ws1", &token, None).await;
    let first = publish(&mut pubr, req("logs:ws1", &json!({"n": 0}))).await;
    assert_eq!(on_b.next_data(WAIT).await.id, first.id);
    drop(on_b);

    let mut expected = Vec::new();
    for chunk in 0..2 {
        let events = (0..500)
            .map(|i| req("logs:ws1", &json!({"n": 1 + chunk * 500 + i})))
            .collect();
        let resp = pubr
            .publish_batch(PublishBatchRequest { events })
            .await
            .unwrap()
            .into_inner();
        expected.extend(resp.results.into_iter().map(|r| r.id));
    }
    let (mut on_a, _) = a
        .open("/api/sse?channels=logs:ws1", &token, Some(&first.id))
        .await;
    for (i, id) in expected.iter().enumerate() {
        let env = on_a.next_data(WAIT).await;
        assert_eq!(&env.id, id, "event {i} in order");
        assert_eq!(env.payload, json!({"n": 1 + i}));
    }
    let live = publish(&mut pubr, req("logs:ws1", &json!({"n": "live"}))).await;
    assert_eq!(
        on_a.next_data(WAIT).await.id,
        live.id,
        "live after replay, no duplicate"
    );
}

#[tokio::test]
async fn node_restart_subscribers_resume_on_the_other_node() {
    let p = prefix("restart");
    let mut a = node(&redis_url(), &p, "", |_| {}).await;
    let b = node(&redis_url(), &p, &a.secret, |_| {}).await;
    let token = a.token("alice", &["metrics:*"], &[], 600);
    let mut pub_b = b.publisher("analytics-service").await;
    let (mut on_a, _) = a.open("/api/sse?channels=metrics:ws9", &token, None).await;
    let seen = publish(&mut pub_b, req("metrics:ws9", &json!({"v": 1}))).await;
    assert_eq!(on_a.next_data(WAIT).await.id, seen.id);
    a.shutdown(WAIT).await;
    on_a.expect_end(WAIT).await;
    let mut missed = Vec::new();
    for v in 2..12 {
        missed.push(
            publish(&mut pub_b, req("metrics:ws9", &json!({"v": v})))
                .await
                .id,
        );
    }
    let (mut on_b, _) = b
        .open("/api/sse?channels=metrics:ws9", &token, Some(&seen.id))
        .await;
    for id in &missed {
        assert_eq!(&on_b.next_data(WAIT).await.id, id);
    }
}

#[tokio::test]
async fn trimmed_history_is_reported_as_gap() {
    let p = prefix("trim");
    let a = node(&redis_url(), &p, "", |raw| raw.history.max_events = 10).await;
    let token = a.token("alice", &["logs:**"], &[], 600);
    let mut pubr = a.publisher("l5-etl-service").await;
    let first = publish(&mut pubr, req("logs:ws1", &json!({"n": 0}))).await;
    let mut last = String::new();
    for n in 1..50 {
        last = publish(&mut pubr, req("logs:ws1", &json!({"n": n})))
            .await
            .id;
    }
    let (mut stream, _) = a
        .open("/api/sse?channels=logs:ws1", &token, Some(&first.id))
        .await;
    let gap = stream.next_control("gap", WAIT).await;
    assert_eq!(gap["channels"], json!(["logs:ws1"]));
    // Then what is retained, ending with the newest.
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        got.push(stream.next_data(WAIT).await.id);
    }
    assert!(
        got.len() <= 10 && !got.is_empty(),
        "{} retained events replayed",
        got.len()
    );
    // A cursor inside retention resumes without a gap.
    let (mut fresh, _) = a
        .open("/api/sse?channels=logs:ws1", &token, Some(&got[0]))
        .await;
    let next = fresh.next_event(WAIT).await;
    assert!(
        next.event.is_none(),
        "no gap inside retention: {:?}",
        next.raw
    );
}

#[tokio::test]
async fn idempotency_keys_are_shared_by_all_nodes() {
    let p = prefix("idem");
    let a = node(&redis_url(), &p, "", |_| {}).await;
    let b = node(&redis_url(), &p, &a.secret, |_| {}).await;
    let mut pa = a.publisher("l5-etl-service").await;
    let mut pb = b.publisher("l5-etl-service").await;
    let mut r = req("logs:ws1", &json!({"once": true}));
    r.idempotency_key = "job-42-step-3".into();
    let first = publish(&mut pa, r.clone()).await;
    let again = publish(&mut pb, r).await;
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(again.id, first.id);
}

/// A TCP proxy to Redis that can be cut (existing connections dropped, new ones refused) and
/// restored, to simulate Redis going away for one node only.
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
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(REDIS).await {
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
async fn redis_outage_fails_fast_keeps_streams_and_loses_nothing_acked() {
    let p = prefix("outage");
    let proxy = CutProxy::start().await;
    let a = node(&format!("redis://{}", proxy.addr), &p, "", |raw| {
        raw.sse.heartbeat_secs = 1
    })
    .await;
    // B talks to Redis directly and keeps publishing while A is cut off.
    let b = node(&redis_url(), &p, &a.secret, |_| {}).await;
    let token = a.token("alice", &["logs:**"], &[], 600);
    let (mut on_a, _) = a.open("/api/sse?channels=logs:ws1", &token, None).await;
    let mut pub_a = a.publisher("l5-etl-service").await;
    let mut pub_b = b.publisher("l5-etl-service").await;
    let mut acked = Vec::new();
    for n in 0..10 {
        acked.push(
            publish(&mut pub_a, req("logs:ws1", &json!({"n": n})))
                .await
                .id,
        );
    }
    assert_eq!(a.get("/ready", None).await.status(), 200);

    proxy.cut();
    let status = tokio::time::timeout(
        Duration::from_secs(5),
        pub_a.publish(req("logs:ws1", &json!({"n": "lost"}))),
    )
    .await
    .expect("a publish during the outage answers quickly")
    .expect_err("a publish during the outage fails");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(a.get("/ready", None).await.status(), 503);
    for n in 10..20 {
        acked.push(
            publish(&mut pub_b, req("logs:ws1", &json!({"n": n})))
                .await
                .id,
        );
    }
    // The stream on A stays open: heartbeats keep coming.
    let mut live = Vec::new();
    loop {
        let frame = on_a.next_frame(WAIT).await;
        if frame.is_comment() && frame.comments.iter().any(|c| c == "ping") {
            break;
        }
        assert!(
            frame.event.is_none() || frame.event.as_deref() == Some("gap"),
            "unexpected {:?}",
            frame.raw
        );
        if let Some(id) = frame.id {
            assert!(
                acked[..10].contains(&id),
                "only pre-outage events before the cut: {id}"
            );
            live.push(id);
        }
    }

    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if a.get("/ready", None).await.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A ready again after Redis is back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 20..25 {
        acked.push(
            publish(&mut pub_a, req("logs:ws1", &json!({"n": n})))
                .await
                .id,
        );
    }
    // Every acked event reaches A's subscriber exactly once, in order.
    let (mut fresh, _) = a
        .open("/api/sse?channels=logs:ws1", &token, Some(&acked[0]))
        .await;
    for id in &acked[1..] {
        assert_eq!(&fresh.next_data(WAIT).await.id, id);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while live.len() < acked.len() {
        let frame = on_a.next_frame(deadline).await;
        if let (true, Some(id)) = (frame.is_message(), frame.id.clone()) {
            live.push(id);
        }
    }
    assert_eq!(
        live, acked,
        "the open stream caught up without gap or duplicate"
    );
}

#[tokio::test]
async fn a_lost_log_is_reported_as_gap() {
    let p = prefix("lost");
    let a = node(&redis_url(), &p, "", |_| {}).await;
    let token = a.token("alice", &["logs:**"], &[], 600);
    let mut pubr = a.publisher("l5-etl-service").await;
    let old = publish(&mut pubr, req("logs:ws1", &json!({"n": 0}))).await;
    publish(&mut pubr, req("logs:ws1", &json!({"n": 1}))).await;
    // The log disappears (a Redis restart without persistence, a flush).
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{p}:log"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let fresh = publish(&mut pubr, req("logs:ws1", &json!({"n": 2}))).await;
    let (mut stream, ready) = a
        .open("/api/sse?channels=logs:ws1", &token, Some(&old.id))
        .await;
    assert_eq!(ready.channels, vec!["logs:ws1".to_owned()]);
    let gap = stream.next_control("gap", WAIT).await;
    assert_eq!(gap["channels"], json!(["logs:ws1"]));
    assert_eq!(stream.next_data(WAIT).await.id, fresh.id);
}

#[tokio::test]
async fn events_past_max_age_are_reported_as_gap() {
    let p = prefix("age");
    let a = node(&redis_url(), &p, "", |raw| raw.history.max_age_secs = 1).await;
    let token = a.token("alice", &["logs:**"], &[], 600);
    let mut pubr = a.publisher("l5-etl-service").await;
    let first = publish(&mut pubr, req("logs:ws1", &json!({"n": 0}))).await;
    publish(&mut pubr, req("logs:ws1", &json!({"n": 1}))).await;
    // Wait (with a deadline) until the second event is older than max_age.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut gap = None;
    while gap.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no gap after max_age"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (mut stream, _) = a
            .open("/api/sse?channels=logs:ws1", &token, Some(&first.id))
            .await;
        let frame = stream.next_event(WAIT).await;
        if frame.event.as_deref() == Some("gap") {
            gap = Some(frame);
        } else {
            assert!(frame.is_message(), "{:?}", frame.raw);
        }
    }
}
