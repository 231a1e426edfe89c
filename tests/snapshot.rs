//! Latest value on subscribe (`snapshot` channel types): a stream without a cursor, a channel
//! added live and a stream that gets `gap` first receive each channel's latest event (no `id:`
//! line, `"snapshot":true`), then live events. Every test runs on the memory broker and on the
//! real Redis at 127.0.0.1:6379 (with its own key prefix).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{publish, req, req_for, SseReader, TestGateway, WAIT};
use serde_json::{json, Value};
use sse_gateway::config::{BrokerKind, RawConfig};
use sse_gateway::ingest::pb::PublishBatchRequest;
use tokio::time::Instant;

const BROKERS: [BrokerKind; 2] = [BrokerKind::Memory, BrokerKind::Redis];

fn prefix(test: &str) -> String {
    format!("test-snap-{test}-{}", sse_gateway::hub::random_id())
}

/// A gateway on `kind`; on Redis with key prefix `prefix` and, when given, the shared `secret`.
async fn spawn(
    kind: BrokerKind,
    prefix: &str,
    secret: Option<&str>,
    tweak: impl FnOnce(&mut RawConfig),
) -> TestGateway {
    let (prefix, secret) = (prefix.to_owned(), secret.map(str::to_owned));
    TestGateway::spawn(move |raw| {
        if kind == BrokerKind::Redis {
            raw.broker.kind = BrokerKind::Redis;
            raw.broker.url = "redis://127.0.0.1:6379".into();
            raw.broker.key_prefix = prefix;
            raw.broker.timeout_ms = 1000;
        }
        if let Some(secret) = secret {
            raw.jwt.secret = Some(secret.into());
        }
        tweak(raw);
    })
    .await
}

/// The next non-heartbeat frame, which must be a snapshot message: no `id:` line, no `event:`
/// field, `"snapshot":true` in the envelope. Returns the envelope.
async fn next_snapshot(reader: &mut SseReader) -> Value {
    let frame = reader.next_event(WAIT).await;
    assert!(frame.is_message(), "expected a snapshot: {:?}", frame.raw);
    assert!(
        frame.id.is_none(),
        "a snapshot has no id line: {:?}",
        frame.raw
    );
    assert!(
        frame.raw.starts_with("data: "),
        "a snapshot is one data line: {:?}",
        frame.raw
    );
    let env = frame.json();
    assert_eq!(env["snapshot"], json!(true), "{:?}", frame.raw);
    env
}

async fn post_subscriptions(gw: &TestGateway, token: &str, body: &Value) -> Value {
    let resp = gw
        .http
        .post(gw.url("/api/sse/subscriptions"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn a_fresh_stream_gets_the_latest_of_each_snapshot_channel_then_live() {
    for kind in BROKERS {
        let gw = spawn(kind, &prefix("fresh"), None, |_| {}).await;
        let mut analytics = gw.publisher("analytics-service").await;
        for n in 1..=3 {
            publish(&mut analytics, req("dashboards:d1", &json!({ "n": n }))).await;
        }
        publish(&mut analytics, req("dashboards:d2", &json!({ "d2": true }))).await;
        // `metrics` keeps no latest value.
        publish(&mut analytics, req("metrics:ws1", &json!({ "m": 1 }))).await;
        let token = gw.token("alice", &["dashboards:*", "metrics:*"], &[], 600);
        let (mut stream, _) = gw
            .open(
                "/api/sse?channels=dashboards:d1,metrics:ws1,dashboards:d2,dashboards:d3",
                &token,
                None,
            )
            .await;
        let mut got = [
            next_snapshot(&mut stream).await,
            next_snapshot(&mut stream).await,
        ];
        got.sort_by_key(|e| e["channel"].as_str().unwrap().to_owned());
        assert_eq!(got[0]["channel"], "dashboards:d1", "{kind:?}");
        assert_eq!(
            got[0]["payload"],
            json!({ "n": 3 }),
            "{kind:?}: the last one"
        );
        assert_eq!(got[1]["channel"], "dashboards:d2", "{kind:?}");
        assert_eq!(got[1]["payload"], json!({ "d2": true }), "{kind:?}");
        // Then live, with ids; no snapshot of `metrics:ws1` came before.
        let live = publish(&mut analytics, req("dashboards:d1", &json!({ "n": 4 }))).await;
        let env = stream.next_data(WAIT).await;
        assert_eq!(env.id, live.id, "{kind:?}");
        assert_eq!(env.payload, json!({ "n": 4 }), "{kind:?}");
    }
}

#[tokio::test]
async fn a_resume_without_gap_gets_no_snapshot() {
    for kind in BROKERS {
        let gw = spawn(kind, &prefix("resume"), None, |_| {}).await;
        let mut analytics = gw.publisher("analytics-service").await;
        let first = publish(&mut analytics, req("dashboards:d1", &json!({ "n": 1 }))).await;
        let second = publish(&mut analytics, req("dashboards:d1", &json!({ "n": 2 }))).await;
        let token = gw.token("alice", &["dashboards:*"], &[], 600);
        let (mut stream, _) = gw
            .open("/api/sse?channels=dashboards:d1", &token, Some(&first.id))
            .await;
        let env = stream.next_data(WAIT).await;
        assert_eq!(env.id, second.id, "{kind:?}: the replay, not a snapshot");
        let third = publish(&mut analytics, req("dashboards:d1", &json!({ "n": 3 }))).await;
        assert_eq!(stream.next_data(WAIT).await.id, third.id, "{kind:?}");
    }
}

#[tokio::test]
async fn a_gap_is_followed_by_the_latest_value_which_survives_trimming() {
    for kind in BROKERS {
        let gw = spawn(kind, &prefix("gap"), None, |raw| raw.history.max_events = 3).await;
        let mut analytics = gw.publisher("analytics-service").await;
        let old = publish(&mut analytics, req("dashboards:d1", &json!({ "n": 1 }))).await;
        let latest = publish(&mut analytics, req("dashboards:d1", &json!({ "n": 2 }))).await;
        let mut metrics = Vec::new();
        for m in 1..=3 {
            metrics.push(publish(&mut analytics, req("metrics:ws1", &json!({ "m": m }))).await);
        }
        // Both dashboard events are trimmed from the log now.
        let token = gw.token("alice", &["dashboards:*", "metrics:*"], &[], 600);
        let (mut stream, _) = gw
            .open(
                "/api/sse?channels=dashboards:d1,metrics:ws1",
                &token,
                Some(&old.id),
            )
            .await;
        stream.next_control("gap", WAIT).await;
        let snap = next_snapshot(&mut stream).await;
        assert_eq!(snap["payload"], json!({ "n": 2 }), "{kind:?}");
        assert_eq!(
            snap["id"],
            json!(latest.id),
            "{kind:?}: the original id, in the envelope"
        );
        // Then what is retained, in order.
        for m in &metrics {
            assert_eq!(stream.next_data(WAIT).await.id, m.id, "{kind:?}");
        }
        // A fresh stream gets it too.
        let (mut fresh, _) = gw
            .open("/api/sse?channels=dashboards:d1", &token, None)
            .await;
        assert_eq!(
            next_snapshot(&mut fresh).await["payload"],
            json!({ "n": 2 })
        );
    }
}

#[tokio::test]
async fn a_channel_added_live_gets_its_latest_value_then_live_events() {
    for kind in BROKERS {
        let gw = spawn(kind, &prefix("add"), None, |_| {}).await;
        let mut faas = gw.publisher("faas-service").await;
        publish(
            &mut faas,
            req("workflow:ws1:wf1", &json!({ "state": "running" })),
        )
        .await;
        let token = gw.token("alice", &["workflow:**", "metrics:*"], &[], 600);
        let (mut stream, ready) = gw.open("/api/sse?channels=metrics:ws1", &token, None).await;
        let outcome = post_subscriptions(
            &gw,
            &token,
            &json!({ "connection_id": ready.connection_id, "add": ["workflow:ws1:wf1"] }),
        )
        .await;
        assert_eq!(
            outcome["channels"],
            json!(["metrics:ws1", "workflow:ws1:wf1"])
        );
        stream.next_control("subscriptions", WAIT).await;
        let snap = next_snapshot(&mut stream).await;
        assert_eq!(snap["channel"], "workflow:ws1:wf1", "{kind:?}");
        assert_eq!(snap["payload"], json!({ "state": "running" }), "{kind:?}");
        let live = publish(
            &mut faas,
            req("workflow:ws1:wf1", &json!({ "state": "done" })),
        )
        .await;
        assert_eq!(stream.next_data(WAIT).await.id, live.id, "{kind:?}");
    }
}

#[tokio::test]
async fn a_latest_value_outside_the_audience_is_not_shown() {
    for kind in BROKERS {
        let gw = spawn(kind, &prefix("aud"), None, |_| {}).await;
        let mut analytics = gw.publisher("analytics-service").await;
        publish(&mut analytics, req("dashboards:d1", &json!({ "n": 1 }))).await;
        publish(
            &mut analytics,
            req_for(
                "dashboards:d1",
                &json!({ "n": 2, "secret": true }),
                &["bob"],
                &[],
            ),
        )
        .await;
        let alice = gw.token("alice", &["dashboards:*"], &[], 600);
        let bob = gw.token("bob", &["dashboards:*"], &[], 600);
        let (mut as_alice, _) = gw
            .open("/api/sse?channels=dashboards:d1", &alice, None)
            .await;
        let (mut as_bob, _) = gw.open("/api/sse?channels=dashboards:d1", &bob, None).await;
        assert_eq!(
            next_snapshot(&mut as_bob).await["payload"],
            json!({ "n": 2, "secret": true })
        );
        // Alice gets no snapshot (not bob's, and not an older one in its place): live first.
        let live = publish(&mut analytics, req("dashboards:d1", &json!({ "n": 3 }))).await;
        let env = as_alice.next_data(WAIT).await;
        assert_eq!(env.id, live.id, "{kind:?}");
    }
}

#[tokio::test]
async fn on_redis_a_latest_value_published_on_one_node_is_seen_on_another() {
    let p = prefix("nodes");
    let a = spawn(BrokerKind::Redis, &p, None, |_| {}).await;
    let b = spawn(BrokerKind::Redis, &p, Some(&a.secret), |_| {}).await;
    let mut analytics = a.publisher("analytics-service").await;
    publish(&mut analytics, req("dashboards:d9", &json!({ "v": "a" }))).await;
    let token = a.token("alice", &["dashboards:*"], &[], 600);
    let (mut on_b, _) = b
        .open("/api/sse?channels=dashboards:d9", &token, None)
        .await;
    assert_eq!(
        next_snapshot(&mut on_b).await["payload"],
        json!({ "v": "a" })
    );
}

#[tokio::test]
async fn a_latest_value_expires_after_its_ttl() {
    for kind in BROKERS {
        let gw = spawn(kind, &prefix("ttl"), None, |raw| {
            raw.channels
                .get_mut("dashboards")
                .unwrap()
                .snapshot_ttl_secs = 1;
        })
        .await;
        let mut analytics = gw.publisher("analytics-service").await;
        publish(&mut analytics, req("dashboards:d1", &json!({ "n": 1 }))).await;
        let token = gw.token("alice", &["dashboards:*", "metrics:*"], &[], 600);
        let path = "/api/sse?channels=dashboards:d1,metrics:ws1";
        let (mut first, _) = gw.open(path, &token, None).await;
        next_snapshot(&mut first).await;
        // Until it expires, a fresh stream's first message is the snapshot; after, it is the
        // marker published after the stream opened.
        let deadline = Instant::now() + WAIT;
        loop {
            let (mut stream, _) = gw.open(path, &token, None).await;
            let marker = publish(&mut analytics, req("metrics:ws1", &json!({ "marker": 1 }))).await;
            let frame = stream.next_event(WAIT).await;
            if frame.id.as_deref() == Some(marker.id.as_str()) {
                break;
            }
            assert!(frame.id.is_none(), "{kind:?}: {:?}", frame.raw);
            assert!(
                Instant::now() < deadline,
                "{kind:?}: the latest value did not expire"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[test]
fn snapshot_defaults_and_a_zero_ttl_is_refused() {
    let raw = RawConfig::default();
    for (name, c) in &raw.channels {
        let expected = name == "dashboards" || name == "workflow";
        assert_eq!(c.snapshot, expected, "{name}");
        assert_eq!(c.snapshot_ttl_secs, 86_400, "{name}");
    }
    let mut raw = RawConfig::default();
    raw.channels.get_mut("workflow").unwrap().snapshot_ttl_secs = 0;
    let err = sse_gateway::config::Config::from_raw(raw, std::path::Path::new("."))
        .expect_err("a zero ttl is refused");
    assert!(err.mentions("channels.workflow.snapshot_ttl_secs"), "{err}");
}

/// Reads `dashboards:d1` values until `last`, checking that they only go up and that, from the
/// first snapshot on, none is missing. Returns whether a snapshot was seen.
async fn read_increasing(stream: &mut SseReader, last: i64) -> bool {
    let mut prev: Option<i64> = None;
    let mut snapshot_seen = false;
    loop {
        let frame = stream.next_event(WAIT).await;
        if frame.event.is_some() {
            continue; // `subscriptions`
        }
        let env = frame.json();
        assert_eq!(env["channel"], "dashboards:d1", "{:?}", frame.raw);
        let n = env["payload"]["n"].as_i64().unwrap();
        let is_snapshot = env["snapshot"] == json!(true);
        assert_eq!(is_snapshot, frame.id.is_none(), "{:?}", frame.raw);
        if let Some(p) = prev {
            assert!(n > p, "went back from {p} to {n}");
            if snapshot_seen {
                assert_eq!(n, p + 1, "missing values after the snapshot");
            }
        }
        snapshot_seen |= is_snapshot;
        prev = Some(n);
        if n == last {
            return snapshot_seen;
        }
    }
}

#[tokio::test]
async fn snapshots_racing_with_live_events_never_go_back_nor_lose_any() {
    // Batches: an append holds the log for a whole batch, so streams often register in the
    // middle of one and then read a latest value newer than events already queued for them.
    const BATCH: i64 = 50;
    const LAST: i64 = BATCH * 20;
    for kind in BROKERS {
        let gw = spawn(kind, &prefix("race"), None, |_| {}).await;
        let token = gw.token("alice", &["dashboards:*", "metrics:*"], &[], 600);
        let mut analytics = gw.publisher("analytics-service").await;
        publish(&mut analytics, req("dashboards:d1", &json!({ "n": 0 }))).await;
        let (tx, mut published) = tokio::sync::watch::channel(0i64);
        let publisher = tokio::spawn(async move {
            for first in (1..=LAST).step_by(BATCH as usize) {
                let events = (first..first + BATCH)
                    .map(|n| req("dashboards:d1", &json!({ "n": n })))
                    .collect();
                analytics
                    .publish_batch(PublishBatchRequest { events })
                    .await
                    .unwrap();
                tx.send_replace(first + BATCH - 1);
            }
        });
        // A fresh stream and a live add, both while values are being published.
        published.wait_for(|n| *n >= 5 * BATCH).await.unwrap();
        let (mut fresh, _) = gw
            .open("/api/sse?channels=dashboards:d1", &token, None)
            .await;
        let (mut added, ready) = gw.open("/api/sse?channels=metrics:ws1", &token, None).await;
        published.wait_for(|n| *n >= 10 * BATCH).await.unwrap();
        post_subscriptions(
            &gw,
            &token,
            &json!({ "connection_id": ready.connection_id, "add": ["dashboards:d1"] }),
        )
        .await;
        publisher.await.unwrap();
        assert!(read_increasing(&mut fresh, LAST).await, "{kind:?}");
        read_increasing(&mut added, LAST).await;
    }
}
