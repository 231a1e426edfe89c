//! Several nodes sharing one ordered log in Redis Streams, against the real Redis at
//! 127.0.0.1:6379 (each test with its own key prefix), or — for faults — a private
//! `redis-server` that a test may freeze (SIGSTOP) or cut off behind a proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::private_redis::PrivateRedis;
use common::{publish, req, TestGateway, WAIT};
use serde_json::json;
use sse_gateway::ingest::pb::PublishBatchRequest;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

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
        raw.broker.kind = sse_gateway::config::BrokerKind::Redis;
        raw.broker.url = url;
        raw.broker.key_prefix = prefix;
        raw.broker.timeout_ms = 500;
        if !secret.is_empty() {
            raw.jwt.secret = Some(secret.into());
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

/// A TCP proxy to a Redis that can be cut (existing connections dropped, new ones refused) and
/// restored, to simulate Redis going away for one node only.
struct CutProxy {
    addr: std::net::SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<JoinSet<()>>>,
    /// Connections accepted (and forwarded) so far.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl CutProxy {
    async fn start() -> Self {
        Self::to(REDIS.to_owned()).await
    }

    async fn to(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (c, set, count) = (cut.clone(), conns.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                count.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                set.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            addr,
            cut,
            conns,
            accepted,
        }
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
        .arg(format!("{{{p}}}:log"))
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

/// How many script calls (`EVAL`, `EVALSHA`) Redis has run or rejected.
async fn script_calls(redis: &PrivateRedis) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_eval:") || l.starts_with("cmdstat_evalsha:"))
        .flat_map(|l| l.split([':', ',']))
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "calls" || *k == "rejected_calls")
        .map(|(_, v)| v.parse::<u64>().unwrap())
        .sum()
}

/// Every entry of every stream in a private Redis: (id, payload).
async fn log_entries(redis: &PrivateRedis) -> Vec<(String, serde_json::Value)> {
    let mut conn = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if kind != "stream" {
            continue;
        }
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        for entry in reply.ids {
            let payload: String = entry.get("p").unwrap();
            out.push((entry.id.clone(), serde_json::from_str(&payload).unwrap()));
        }
    }
    out
}

/// Waits until `/ready` answers `status`.
async fn wait_ready(gw: &TestGateway, status: u16) {
    let deadline = Instant::now() + WAIT;
    while gw.get("/ready", None).await.status() != status {
        assert!(Instant::now() < deadline, "/ready never answered {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a stream and returns it with its `ready.cursor`.
async fn open_with_cursor(
    gw: &TestGateway,
    path: &str,
    token: &str,
    last_event_id: Option<&str>,
) -> (common::SseReader, Option<String>) {
    let mut reader = gw.sse(path, Some(token), last_event_id).await;
    let retry = reader.next_frame(WAIT).await;
    assert!(retry.retry.is_some(), "{:?}", retry.raw);
    let ready = reader.next_frame(WAIT).await;
    assert_eq!(ready.event.as_deref(), Some("ready"), "{:?}", ready.raw);
    let cursor = ready.json()["cursor"].as_str().map(str::to_owned);
    (reader, cursor)
}

#[tokio::test]
async fn a_publish_answered_unavailable_is_never_appended_later() {
    let redis = PrivateRedis::start().await;
    let a = node(&redis.url(), &prefix("late"), "", |raw| {
        raw.broker.timeout_ms = 500;
    })
    .await;
    let token = a.token("alice", &["logs:**"], &[], 600);
    let mut pubr = a.publisher("l5-etl-service").await;
    let before = publish(&mut pubr, req("logs:ws1", &json!({"n": "before"}))).await;
    let calls = script_calls(&redis).await;
    let sent_before = redis_log(&a).append_calls();

    redis.stop();
    let mut failing = JoinSet::new();
    for n in 0..4 {
        let mut client = pubr.clone();
        failing.spawn(async move {
            tokio::time::timeout(WAIT, client.publish(req("logs:ws1", &json!({"n": n})))).await
        });
    }
    while let Some(answer) = failing.join_next().await {
        let status = answer
            .unwrap()
            .expect("a publish answers while Redis is frozen")
            .expect_err("a publish fails while Redis is frozen");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
    // Concurrent appends share a script: as many went out as the node counts, at least one.
    let sent = redis_log(&a).append_calls() - sent_before;
    assert!((1..=4).contains(&sent), "{sent} scripts for 4 publishes");
    redis.cont();
    // Redis runs the scripts that queued up while it was frozen (it must refuse them).
    let deadline = Instant::now() + WAIT;
    while script_calls(&redis).await < calls + sent {
        assert!(Instant::now() < deadline, "the queued scripts ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let payloads: Vec<_> = log_entries(&redis).await.into_iter().map(|e| e.1).collect();
    assert_eq!(
        payloads,
        vec![json!({"n": "before"})],
        "the log holds none of the publishes answered UNAVAILABLE"
    );
    let after = publish(&mut pubr, req("logs:ws1", &json!({"n": "after"}))).await;
    let (mut resumed, _) = a
        .open("/api/sse?channels=logs:ws1", &token, Some(&before.id))
        .await;
    assert_eq!(resumed.next_data(WAIT).await.id, after.id);
}

/// The Redis log of a node.
fn redis_log(gw: &TestGateway) -> &sse_gateway::broker::RedisLog {
    match &gw.gateway().state.broker {
        sse_gateway::broker::Broker::Redis(log) => log,
        sse_gateway::broker::Broker::Memory(_) => panic!("a Redis node"),
    }
}

#[tokio::test]
async fn appends_waiting_together_share_one_script_in_order() {
    let redis = PrivateRedis::start().await;
    // A timeout longer than the freeze: nothing here may fail.
    let a = node(&redis.url(), &prefix("group"), "", |raw| {
        raw.broker.timeout_ms = 20_000;
    })
    .await;
    let log = redis_log(&a);
    let mut pubr = a.publisher("l5-etl-service").await;
    publish(&mut pubr, req("logs:ws1", &json!({"n": "warm"}))).await;
    let sent_before = log.append_calls();

    redis.stop();
    // The first append goes out alone and hangs on the frozen Redis ...
    let mut first_client = pubr.clone();
    let first = tokio::spawn(async move {
        first_client
            .publish(req("logs:ws1", &json!({"n": "first"})))
            .await
            .map(tonic::Response::into_inner)
    });
    let deadline = Instant::now() + WAIT;
    while log.append_calls() < sent_before + 1 {
        assert!(Instant::now() < deadline, "the first script was sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ... while six unary publishes (two with one idempotency key) and a batch queue up.
    let mut waiting = JoinSet::new();
    for n in 0..6 {
        let mut client = pubr.clone();
        waiting.spawn(async move {
            let mut r = req("logs:ws1", &json!({"n": n}));
            if n >= 4 {
                r.idempotency_key = "same-key".into();
            }
            vec![client.publish(r).await.unwrap().into_inner()]
        });
    }
    let mut batch_client = pubr.clone();
    waiting.spawn(async move {
        let events = (0..5).map(|i| req("logs:ws2", &json!({"b": i}))).collect();
        batch_client
            .publish_batch(PublishBatchRequest { events })
            .await
            .unwrap()
            .into_inner()
            .results
    });
    while log.queued_appends() < 7 {
        assert!(Instant::now() < deadline, "the appends queued up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    redis.cont();
    let first = first.await.unwrap().unwrap();
    let mut answers = Vec::new();
    while let Some(r) = waiting.join_next().await {
        answers.push(r.unwrap());
    }
    assert_eq!(
        log.append_calls() - sent_before,
        2,
        "the first script, then one for everything that waited"
    );

    // The log: the first, then each call's events together and in its order.
    let entries = log_entries(&redis).await;
    let ids: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    let parse = sse_gateway::broker::RedisLog::parse_cursor;
    // The index in the log of the entry a response names.
    let cursor_of = |id: &str| {
        ids.iter()
            .position(|i| parse(i) == parse(id))
            .unwrap_or_else(|| panic!("{id} is in the log"))
    };
    assert_eq!(entries[0].1, json!({"n": "warm"}));
    assert_eq!(cursor_of(&first.id), 1);
    assert_eq!(
        entries.len(),
        2 + 5 + 5,
        "one of the same-key pair is a duplicate"
    );
    let batch = answers.iter().find(|a| a.len() == 5).unwrap();
    let at = cursor_of(&batch[0].id);
    for (i, r) in batch.iter().enumerate() {
        assert_eq!(
            cursor_of(&r.id),
            at + i,
            "the batch is contiguous and in order"
        );
        assert_eq!(entries[at + i].1, json!({"b": i}));
    }
    let same: Vec<_> = answers
        .iter()
        .filter(|a| a.len() == 1)
        .map(|a| &a[0])
        .filter(|r| entries[cursor_of(&r.id)].1["n"].as_u64() >= Some(4))
        .collect();
    assert_eq!(same.len(), 2);
    assert_eq!(
        same[0].id, same[1].id,
        "a repeated key in one group is a duplicate"
    );
    assert_eq!(same.iter().filter(|r| r.duplicate).count(), 1);
}

/// Concurrent publishers on one node, each in its own way (unary one at a time, a stream,
/// batches): the log holds every acknowledged event under its id, each publisher's in the
/// order it sent them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_keep_their_order_on_redis() {
    const UNARY: usize = 150;
    const STREAM: usize = 2000;
    const BATCHES: usize = 20;
    let p = prefix("interleave");
    let a = node(&redis_url(), &p, "", |raw| raw.broker.timeout_ms = 5000).await;
    let mut tasks: JoinSet<(String, Vec<String>)> = JoinSet::new();
    for u in 0..3 {
        let mut client = a.publisher("l5-etl-service").await;
        tasks.spawn(async move {
            let src = format!("unary{u}");
            let mut ids = Vec::new();
            for i in 0..UNARY {
                let r = req("logs:mix", &json!({"src": src, "i": i}));
                ids.push(client.publish(r).await.unwrap().into_inner().id);
            }
            (src, ids)
        });
    }
    let mut client = a.publisher("analytics-service").await;
    tasks.spawn(async move {
        let src = "stream".to_owned();
        let requests: Vec<_> = (0..STREAM)
            .map(|i| req("metrics:mix", &json!({"src": "stream", "i": i})))
            .collect();
        let mut inbound = client
            .publish_stream(tokio_stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        let mut ids = Vec::new();
        while let Some(r) = inbound.message().await.unwrap() {
            ids.push(r.id);
        }
        (src, ids)
    });
    let mut client = a.publisher("faas-service").await;
    tasks.spawn(async move {
        let src = "batch".to_owned();
        let mut ids = Vec::new();
        for b in 0..BATCHES {
            let events = (0..50)
                .map(|i| req("workflow:mix:1", &json!({"src": "batch", "i": b * 50 + i})))
                .collect();
            let resp = client
                .publish_batch(PublishBatchRequest { events })
                .await
                .unwrap()
                .into_inner();
            ids.extend(resp.results.into_iter().map(|r| r.id));
        }
        (src, ids)
    });
    let mut acked = std::collections::HashMap::new();
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = tasks.join_next().await {
            let (src, ids) = r.unwrap();
            acked.insert(src, ids);
        }
    });
    all.await.expect("every publisher is answered");
    let total: usize = acked.values().map(Vec::len).sum();
    assert_eq!(total, 3 * UNARY + STREAM + BATCHES * 50);

    let channels: HashSet<_> = ["logs:mix", "metrics:mix", "workflow:mix:1"]
        .iter()
        .map(|c| a.config.channel_types.parse_name(c).unwrap())
        .collect();
    let broker = &a.gateway().state.broker;
    let mut after = sse_gateway::event::Position::default();
    let mut next: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut seen = 0;
    loop {
        let page = broker.read_after(after, &channels, 1000).await.unwrap();
        for ev in &page.events {
            let text = std::str::from_utf8(&ev.frame).unwrap();
            let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            let payload =
                serde_json::from_str::<serde_json::Value>(data).unwrap()["payload"].clone();
            let src = payload["src"].as_str().unwrap().to_owned();
            let i = usize::try_from(payload["i"].as_u64().unwrap()).unwrap();
            let n = next.entry(src.clone()).or_default();
            assert_eq!(i, *n, "{src}: in the order sent");
            assert_eq!(
                acked[&src][i], ev.cursor,
                "{src} {i}: acknowledged with its id"
            );
            *n += 1;
            seen += 1;
        }
        after = page.last;
        if page.done {
            break;
        }
    }
    assert_eq!(seen, total, "every acknowledged event is in the log");
}

/// Publishers `svc:x` and `svc` (both allowed on `logs:**`), with certificates of the test PKI.
fn colon_publishers(raw: &mut sse_gateway::config::RawConfig) {
    for name in ["svc:x", "svc"] {
        let mut p = common::test_publishers()[0].clone();
        p.name = name.to_owned();
        raw.publishers.push(p);
    }
}

async fn idempotency_keys_of_publishers_stay_apart(gw: &TestGateway) {
    sse_gateway::pki::ensure_dev_pki(gw.pki.path(), &["svc:x", "svc"]).unwrap();
    let mut colon = gw.publisher("svc:x").await;
    let mut plain = gw.publisher("svc").await;
    let mut first = req("logs:ws1", &json!({"from": "svc:x"}));
    first.idempotency_key = "K".into();
    let mut second = req("logs:ws1", &json!({"from": "svc"}));
    second.idempotency_key = "x:K".into();
    let first = publish(&mut colon, first).await;
    let second = publish(&mut plain, second).await;
    assert!(!first.duplicate);
    assert!(
        !second.duplicate,
        "publisher svc's key x:K is not publisher svc:x's key K"
    );
    assert_ne!(first.id, second.id);
}

#[tokio::test]
async fn idempotency_keys_of_different_publishers_never_collide_on_redis() {
    let a = node(&redis_url(), &prefix("idem-apart"), "", colon_publishers).await;
    idempotency_keys_of_publishers_stay_apart(&a).await;
}

#[tokio::test]
async fn idempotency_keys_of_different_publishers_never_collide_in_memory() {
    let a = TestGateway::spawn(colon_publishers).await;
    idempotency_keys_of_publishers_stay_apart(&a).await;
}

/// Redis Cluster's slot of a key (CRC16/XMODEM of the hash tag, or of the key, mod 16384).
fn key_slot(key: &[u8]) -> u16 {
    let mut tagged = key;
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                tagged = &key[open + 1..open + 1 + len];
            }
        }
    }
    let mut crc: u16 = 0;
    for &b in tagged {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// One line of `MONITOR` output: whether a script issued it, and its arguments.
fn parse_monitor_line(line: &str) -> Option<(bool, Vec<Vec<u8>>)> {
    let rest = line.strip_prefix('+')?;
    let open = rest.find('[')?;
    let close = rest[open..].find(']')? + open;
    let from_script = rest[open..close].ends_with(" lua");
    let mut args = Vec::new();
    let mut chars = rest[close + 1..].bytes().peekable();
    while let Some(b) = chars.next() {
        if b != b'"' {
            continue;
        }
        let mut arg = Vec::new();
        while let Some(c) = chars.next() {
            match c {
                b'"' => break,
                b'\\' => match chars.next()? {
                    b'n' => arg.push(b'\n'),
                    b'r' => arg.push(b'\r'),
                    b't' => arg.push(b'\t'),
                    b'a' => arg.push(7),
                    b'b' => arg.push(8),
                    b'x' => {
                        let hex = [chars.next()?, chars.next()?];
                        arg.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
                    }
                    other => arg.push(other),
                },
                other => arg.push(other),
            }
        }
        args.push(arg);
    }
    Some((from_script, args))
}

#[test]
fn key_slots_match_redis_cluster() {
    // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
    assert_eq!(key_slot(b"123456789"), 0x31C3);
    assert_eq!(key_slot(b"somekey"), 11058);
    assert_eq!(key_slot(b"foo{hash_tag}"), 2515);
    assert_eq!(key_slot(b"{hash_tag}bar"), 2515);
}

#[tokio::test]
async fn the_append_script_declares_every_key_it_touches_in_one_slot() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let redis = PrivateRedis::start().await;
    let stream = tokio::net::TcpStream::connect(redis.addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    write.write_all(b"MONITOR\r\n").await.unwrap();
    let mut lines = tokio::io::BufReader::new(read).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("+OK"));

    let a = node(&redis.url(), &prefix("keys"), "", |_| {}).await;
    let mut pubr = a.publisher("l5-etl-service").await;
    let mut keyed = req("logs:ws1", &json!({"n": 1}));
    keyed.idempotency_key = "k1".into();
    publish(&mut pubr, keyed.clone()).await;
    assert!(publish(&mut pubr, keyed.clone()).await.duplicate);
    let mut other = keyed.clone();
    other.idempotency_key = "k2".into();
    pubr.publish_batch(PublishBatchRequest {
        events: vec![keyed, req("logs:ws1", &json!({"n": 3})), other],
    })
    .await
    .unwrap();

    // Redis feeds MONITOR a script's own commands first, then the call that ran it.
    let mut conn = redis.conn().await;
    let mut touched: Vec<Vec<u8>> = Vec::new();
    let mut scripts = 0;
    let deadline = Instant::now() + WAIT;
    while scripts < 3 {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("three script runs seen before the deadline")
            .unwrap()
            .unwrap();
        let Some((from_script, args)) = parse_monitor_line(&line) else {
            continue;
        };
        if from_script {
            let keys: Vec<Vec<u8>> = redis::cmd("COMMAND")
                .arg("GETKEYS")
                .arg(&args)
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            touched.extend(keys);
            continue;
        }
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        if name != "evalsha" && name != "eval" {
            continue;
        }
        let numkeys: usize = String::from_utf8_lossy(&args[2]).parse().unwrap();
        let declared = &args[3..3 + numkeys];
        if touched.is_empty() {
            continue; // an EVALSHA answered NOSCRIPT, followed by the EVAL
        }
        for key in touched.drain(..) {
            assert!(
                declared.contains(&key),
                "the script touched {:?}, not among its KEYS {:?}",
                String::from_utf8_lossy(&key),
                declared
                    .iter()
                    .map(|k| String::from_utf8_lossy(k))
                    .collect::<Vec<_>>()
            );
        }
        let slots: HashSet<u16> = declared.iter().map(|k| key_slot(k)).collect();
        assert_eq!(
            slots.len(),
            1,
            "all keys of one log in one cluster slot: {line}"
        );
        // The appends that carry idempotency keys (other scripts are checked on the way).
        if numkeys > 1 {
            scripts += 1;
        }
    }
}

#[tokio::test]
async fn a_stream_opened_during_an_outage_gets_a_cursor_that_resumes_without_loss() {
    let p = prefix("outage-cursor");
    let proxy = CutProxy::start().await;
    let a = node(&format!("redis://{}", proxy.addr), &p, "", |_| {}).await;
    let b = node(&redis_url(), &p, &a.secret, |_| {}).await;
    let token = a.token("alice", &["logs:**"], &[], 600);
    let mut pub_a = a.publisher("l5-etl-service").await;
    let mut pub_b = b.publisher("l5-etl-service").await;
    let (mut before, _) = a.open("/api/sse?channels=logs:ws1", &token, None).await;
    let seen = publish(&mut pub_a, req("logs:ws1", &json!({"n": 0}))).await;
    assert_eq!(before.next_data(WAIT).await.id, seen.id);

    proxy.cut();
    wait_ready(&a, 503).await;
    let (mut during, cursor) =
        open_with_cursor(&a, "/api/sse?channels=logs:ws1", &token, None).await;
    let cursor = cursor.expect("ready.cursor is set while Redis is unreachable");
    let missed = publish(&mut pub_b, req("logs:ws1", &json!({"n": 1}))).await;
    proxy.restore();
    wait_ready(&a, 200).await;
    let next = publish(&mut pub_a, req("logs:ws1", &json!({"n": 2}))).await;

    // The stream opened during the outage carries both.
    assert_eq!(during.next_data(WAIT).await.id, missed.id);
    assert_eq!(during.next_data(WAIT).await.id, next.id);
    // A client that received nothing resumes from the cursor (on any node) without loss.
    let (mut resumed, _) = b
        .open("/api/sse?channels=logs:ws1", &token, Some(&cursor))
        .await;
    assert_eq!(resumed.next_data(WAIT).await.id, missed.id);
    assert_eq!(resumed.next_data(WAIT).await.id, next.id);
}

/// Reads `stream` until the last of `ids`: each event must follow the one before it in `ids`,
/// or come after a `gap`.
async fn expect_all_or_gap(stream: &mut common::SseReader, ids: &[String]) -> bool {
    let mut expected = 0;
    let mut gap = false;
    let mut any_gap = false;
    while expected < ids.len() {
        let frame = stream.next_event(WAIT).await;
        if frame.event.as_deref() == Some("gap") {
            gap = true;
            any_gap = true;
            continue;
        }
        let id = frame.envelope().id;
        let at = ids
            .iter()
            .position(|i| *i == id)
            .unwrap_or_else(|| panic!("unexpected event {id}"));
        assert!(
            at == expected || (gap && at > expected),
            "event {at} arrived after {expected} without gap"
        );
        gap = false;
        expected = at + 1;
    }
    any_gap
}

#[tokio::test]
async fn a_stream_opened_before_redis_was_ever_reached_resumes_or_gets_gap() {
    let p = prefix("cold-outage");
    let proxy = CutProxy::start().await;
    proxy.cut();
    let a = node(&format!("redis://{}", proxy.addr), &p, "", |_| {}).await;
    let b = node(&redis_url(), &p, &a.secret, |_| {}).await;
    let token = a.token("alice", &["logs:**"], &[], 600);
    let mut pub_b = b.publisher("l5-etl-service").await;
    let (mut during, cursor) =
        open_with_cursor(&a, "/api/sse?channels=logs:ws1", &token, None).await;
    let cursor = cursor.expect("ready.cursor is set while Redis is unreachable");
    let missed = publish(&mut pub_b, req("logs:ws1", &json!({"n": 1}))).await;
    proxy.restore();
    wait_ready(&a, 200).await;
    let mut pub_a = a.publisher("l5-etl-service").await;
    let next = publish(&mut pub_a, req("logs:ws1", &json!({"n": 2}))).await;
    let ids = [missed.id, next.id];
    expect_all_or_gap(&mut during, &ids).await;
    let (mut resumed, _) = b
        .open("/api/sse?channels=logs:ws1", &token, Some(&cursor))
        .await;
    expect_all_or_gap(&mut resumed, &ids).await;
}

#[tokio::test]
async fn a_tail_that_falls_behind_trimming_sends_gap() {
    let a = node(&redis_url(), &prefix("tail-trim"), "", |raw| {
        raw.history.max_events = 10;
    })
    .await;
    let token = a.token("alice", &["logs:**"], &[], 600);
    let (mut stream, _) = a.open("/api/sse?channels=logs:ws1", &token, None).await;
    let mut pubr = a.publisher("l5-etl-service").await;
    // One batch is appended (and trimmed to 10) before the tail can read any of it.
    let events = (0..50).map(|n| req("logs:ws1", &json!({"n": n}))).collect();
    let ids: Vec<String> = pubr
        .publish_batch(PublishBatchRequest { events })
        .await
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert!(
        expect_all_or_gap(&mut stream, &ids).await,
        "40 events were trimmed before the tail read them"
    );
}

#[tokio::test]
async fn shutdown_waits_for_the_redis_tail() {
    let redis = PrivateRedis::start().await;
    let proxy = CutProxy::to(redis.addr.to_string()).await;
    let mut a = node(
        &format!("redis://{}", proxy.addr),
        &prefix("drain"),
        "",
        |raw| {
            raw.broker.timeout_ms = 1000;
        },
    )
    .await;
    let sse_gateway::broker::Broker::Redis(log) = &a.gateway().state.broker else {
        panic!("a Redis broker");
    };
    let log = Arc::downgrade(log);
    // The tail is reading: a stream gets an event.
    let token = a.token("alice", &["logs:**"], &[], 600);
    let (mut stream, _) = a.open("/api/sse?channels=logs:ws1", &token, None).await;
    let mut pubr = a.publisher("l5-etl-service").await;
    let sent = publish(&mut pubr, req("logs:ws1", &json!({"n": 1}))).await;
    assert_eq!(stream.next_data(WAIT).await.id, sent.id);
    drop((stream, pubr));
    let connections = proxy.accepted.load(Ordering::SeqCst);
    redis.stop();
    // The tail's read times out; wait until it is connecting again (to the frozen Redis).
    let deadline = Instant::now() + WAIT;
    while proxy.accepted.load(Ordering::SeqCst) == connections {
        assert!(Instant::now() < deadline, "the tail reconnects");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.shutdown(WAIT).await;
    assert!(
        log.upgrade().is_none(),
        "every task using the Redis log ended before the gateway's wait() returned"
    );
    redis.cont();
}
