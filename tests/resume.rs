//! Resume and stream lifecycle (SPEC §5): Last-Event-ID replay without gap or duplicate, gap
//! events, slow consumers, idempotency, token expiry, live subscription changes, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sse_gateway::ingest::pb::{PublishBatchRequest, PublishRequest};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Publishes `n` events on `channel` (payload `{"i": i}`), returning their ids.
async fn publish_n(gw: &TestGateway, service: &str, channel: &str, n: usize) -> Vec<String> {
    let mut client = gw.publisher(service).await;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            publish(&mut client, req(channel, &json!({"i": i})))
                .await
                .id,
        );
    }
    ids
}

#[tokio::test]
async fn reconnect_replays_exactly_the_missed_events_while_publishing_continues() {
    // A queue large enough that the replay of a reconnect never trips the slow-consumer rule:
    // this test is about resume, not back-pressure.
    let gw = Arc::new(TestGateway::spawn(|c| c.sse.queue_events = 200_000).await);
    let (a, b, c) = ("logs:ws1:wf1", "metrics:ws1", "metrics:other");
    // Request k: every fifth on a channel the reader does not subscribe to, the others
    // alternate between a and b carrying {"n": n}, n counting them.
    let request = |k: usize| {
        if k % 5 == 4 {
            req(c, &json!({"other": k}))
        } else {
            let n = k - k / 5;
            req(if n.is_multiple_of(2) { a } else { b }, &json!({"n": n}))
        }
    };
    // n → id of the n-th event on a or b, as acknowledged to the publisher.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let (count_tx, mut count_rx) = watch::channel(0_usize);
    let stop = CancellationToken::new();
    let mut client = gw.publisher("l5-etl-service").await;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut responses = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // One PublishStream, paced (10 events every 2 ms) so the reader can catch up with it.
    let sender = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            for k in 0.. {
                if k % 10 == 0 {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = stop.cancelled() => break,
                    }
                }
                if tx.send(request(k)).await.is_err() {
                    break;
                }
            }
        })
    };
    let acker = {
        let acked = acked.clone();
        tokio::spawn(async move {
            for k in 0.. {
                let Some(resp) = responses.message().await.unwrap() else {
                    break;
                };
                if k % 5 != 4 {
                    let mut acked = acked.lock().unwrap();
                    acked.push(resp.id);
                    count_tx.send_replace(acked.len());
                }
            }
        })
    };

    let token = gw.token("alice", &["logs:**", "metrics:*"], &[], 600);
    let path = format!("/api/sse?channels={a},{b}");
    let mut received: Vec<(usize, String)> = Vec::new();
    let mut cursor: Option<String> = None;
    const MISSED: usize = 500;
    const LIVE: usize = 100;
    let deadline = Instant::now() + Duration::from_secs(40);
    for round in 0..20 {
        let (mut stream, _) = gw.open(&path, &token, cursor.as_deref()).await;
        // Events acknowledged after this point were appended after the stream registered:
        // reading LIVE of them means the replay handed over to live delivery.
        let live_from = *count_rx.borrow() + LIVE;
        let mut prev_id = received.last().map(|(_, id)| id.clone());
        loop {
            let env = stream.next_data(deadline).await;
            assert_ne!(
                env.channel, c,
                "round {round}: an unsubscribed channel arrived"
            );
            let n = usize::try_from(env.payload["n"].as_u64().unwrap()).unwrap();
            if let Some((last_n, _)) = received.last() {
                assert_eq!(
                    n,
                    last_n + 1,
                    "round {round}: events arrive exactly once and in order"
                );
            }
            assert_eq!(env.channel, if n.is_multiple_of(2) { a } else { b });
            if let Some(prev) = &prev_id {
                assert!(
                    env.id.as_str() > prev.as_str(),
                    "round {round}: cursors increase"
                );
            }
            prev_id = Some(env.id.clone());
            received.push((n, env.id));
            if n >= live_from {
                break;
            }
        }
        drop(stream);
        let (last_n, last_id) = received.last().cloned().unwrap();
        cursor = Some(last_id);
        // Miss at least MISSED events before reconnecting.
        tokio::time::timeout_at(deadline, count_rx.wait_for(|c| *c > last_n + MISSED))
            .await
            .expect("the publisher keeps publishing")
            .unwrap();
    }
    stop.cancel();
    tokio::time::timeout(WAIT, sender).await.unwrap().unwrap();
    tokio::time::timeout(WAIT, acker).await.unwrap().unwrap();
    let acked = acked.lock().unwrap();
    assert!(received.len() >= 19 * (MISSED + LIVE));
    for (n, id) in &received {
        assert_eq!(&acked[*n], id, "event {n} carries the id its publisher got");
    }
}

#[tokio::test]
async fn last_event_id_query_parameter_resumes_and_the_header_wins() {
    let gw = TestGateway::spawn(|_| {}).await;
    let ids = publish_n(&gw, "l5-etl-service", "metrics:ws1", 6).await;
    let token = gw.token("alice", &["metrics:*"], &[], 600);

    let (mut stream, _) = gw
        .open(
            &format!("/api/sse?channels=metrics:ws1&last_event_id={}", ids[1]),
            &token,
            None,
        )
        .await;
    for (i, id) in ids.iter().enumerate().skip(2) {
        let env = stream.next_data(WAIT).await;
        assert_eq!(&env.id, id);
        assert_eq!(env.payload, json!({"i": i}));
    }

    // EventSource reconnects with the header while the URL keeps its first query: the
    // header is the newer cursor.
    let (mut stream, _) = gw
        .open(
            &format!("/api/sse?channels=metrics:ws1&last_event_id={}", ids[1]),
            &token,
            Some(&ids[3]),
        )
        .await;
    assert_eq!(stream.next_data(WAIT).await.id, ids[4]);
    assert_eq!(stream.next_data(WAIT).await.id, ids[5]);

    // Resuming from the newest event replays nothing, then continues live.
    let (mut stream, _) = gw
        .open("/api/sse?channels=metrics:ws1", &token, Some(&ids[5]))
        .await;
    let more = publish_n(&gw, "l5-etl-service", "metrics:ws1", 1).await;
    assert_eq!(stream.next_data(WAIT).await.id, more[0]);
}

#[tokio::test]
async fn replay_covers_only_granted_channels_and_respects_audience() {
    let gw = TestGateway::spawn(|_| {}).await;
    let token = gw.token("bob", &["metrics:*"], &[], 600);
    let mut client = gw.publisher("l5-etl-service").await;
    let start = publish(&mut client, req("metrics:ws1", &json!("start"))).await;
    publish(&mut client, req("metrics:ws2", &json!("other channel"))).await;
    publish(
        &mut client,
        req_for("metrics:ws1", &json!("for alice"), &["alice"], &[]),
    )
    .await;
    publish(
        &mut client,
        req_for("metrics:ws1", &json!("for ops"), &[], &["ops"]),
    )
    .await;
    let mine = publish(
        &mut client,
        req_for("metrics:ws1", &json!("for bob"), &["bob"], &[]),
    )
    .await;
    let all = publish(&mut client, req("metrics:ws1", &json!("for all"))).await;
    let (mut stream, _) = gw
        .open("/api/sse?channels=metrics:ws1", &token, Some(&start.id))
        .await;
    assert_eq!(stream.next_data(WAIT).await.id, mine.id);
    assert_eq!(stream.next_data(WAIT).await.id, all.id);
    let live = publish(&mut client, req("metrics:ws1", &json!("live"))).await;
    assert_eq!(stream.next_data(WAIT).await.id, live.id);
}

#[tokio::test]
async fn cursor_older_than_retention_sends_gap_then_the_retained_events() {
    let gw = TestGateway::spawn(|c| c.history.max_events = 10).await;
    let ids = publish_n(&gw, "l5-etl-service", "metrics:ws1", 50).await;
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let (mut stream, _) = gw
        .open("/api/sse?channels=metrics:ws1", &token, Some(&ids[0]))
        .await;
    let gap = stream.next_control("gap", WAIT).await;
    assert_eq!(gap, json!({"channels": ["metrics:ws1"]}));
    for id in &ids[40..] {
        assert_eq!(
            &stream.next_data(WAIT).await.id,
            id,
            "retained events follow the gap"
        );
    }
    let live = publish_n(&gw, "l5-etl-service", "metrics:ws1", 1).await;
    assert_eq!(stream.next_data(WAIT).await.id, live[0]);

    // A cursor still inside retention resumes without a gap.
    let (mut stream, _) = gw
        .open("/api/sse?channels=metrics:ws1", &token, Some(&ids[45]))
        .await;
    let frame = stream.next_event(WAIT).await;
    assert!(frame.is_message(), "no gap: {:?}", frame.raw);
    assert_eq!(frame.envelope().id, ids[46]);
}

#[tokio::test]
async fn foreign_or_malformed_cursor_sends_gap_then_live_events() {
    let gw1 = TestGateway::spawn(|_| {}).await;
    let gw2 = TestGateway::spawn(|_| {}).await;
    let foreign = publish_n(&gw1, "l5-etl-service", "metrics:ws1", 3).await;
    let local = publish_n(&gw2, "l5-etl-service", "metrics:ws1", 1).await;
    let token = gw2.token("alice", &["metrics:*", "logs:**"], &[], 600);
    for cursor in [
        foreign[2].as_str(),
        "garbage",
        "0-0",
        "m00000000-000000000001",
    ] {
        let (mut stream, ready) = gw2
            .open(
                "/api/sse?channels=metrics:ws1,logs:ws1",
                &token,
                Some(cursor),
            )
            .await;
        let gap = stream.next_control("gap", WAIT).await;
        let mut channels: Vec<&str> = gap["channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        channels.sort_unstable();
        let mut granted: Vec<&str> = ready.channels.iter().map(String::as_str).collect();
        granted.sort_unstable();
        assert_eq!(channels, granted, "cursor {cursor}");
        let live = publish_n(&gw2, "l5-etl-service", "metrics:ws1", 1).await;
        let env = stream.next_data(WAIT).await;
        assert_eq!(
            env.id, live[0],
            "cursor {cursor}: live events follow the gap"
        );
        assert_ne!(env.id, local[0]);
    }
}

#[tokio::test]
async fn duplicate_idempotency_key_is_delivered_once() {
    let gw = TestGateway::spawn(|_| {}).await;
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let (mut stream, _) = gw.open("/api/sse?channels=metrics:ws1", &token, None).await;
    let mut client = gw.publisher("l5-etl-service").await;
    let keyed = |data: Value| PublishRequest {
        idempotency_key: "order-42".into(),
        ..req("metrics:ws1", &data)
    };
    let first = publish(&mut client, keyed(json!({"try": 1}))).await;
    assert!(!first.duplicate);
    assert_eq!(first.delivered, 1);
    let second = publish(&mut client, keyed(json!({"try": 2}))).await;
    assert!(second.duplicate);
    assert_eq!(
        second.id, first.id,
        "a duplicate answers with the original id"
    );
    let batch = client
        .publish_batch(PublishBatchRequest {
            events: vec![
                keyed(json!({"try": 3})),
                req("metrics:ws1", &json!("marker")),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(batch[0].duplicate);
    assert_eq!(batch[0].id, first.id);
    assert!(!batch[1].duplicate);

    let env = stream.next_data(WAIT).await;
    assert_eq!(env.id, first.id);
    assert_eq!(env.payload, json!({"try": 1}));
    let env = stream.next_data(WAIT).await;
    assert_eq!(env.id, batch[1].id, "the duplicates were not delivered");
    assert_eq!(env.payload, json!("marker"));

    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "sse_gateway_events_published_total{result=\"duplicate\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn token_expiry_sends_expired_and_ends_the_stream() {
    let gw = TestGateway::spawn(|_| {}).await;
    let token = gw.token("alice", &["metrics:*"], &[], 3);
    let (mut stream, _) = gw.open("/api/sse?channels=metrics:ws1", &token, None).await;
    let ids = publish_n(&gw, "l5-etl-service", "metrics:ws1", 1).await;
    assert_eq!(stream.next_data(WAIT).await.id, ids[0]);
    let expired = stream.next_control("expired", WAIT).await;
    assert!(expired.is_object(), "{expired}");
    // The token is still within its 30 s verification leeway: the stream ends at `exp` itself.
    stream.expect_end(WAIT).await;
}

#[tokio::test]
async fn subscriptions_change_live_without_reconnecting() {
    let gw = TestGateway::spawn(|_| {}).await;
    let alice = gw.token("alice", &["metrics:*", "logs:**"], &[], 600);
    let (mut stream, ready) = gw.open("/api/sse?channels=metrics:a", &alice, None).await;
    let change = |token: &str, body: Value| {
        gw.http
            .post(gw.url("/api/sse/subscriptions"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let resp = change(
        &alice,
        json!({
            "connection_id": ready.connection_id,
            "add": ["logs:ws1", "alerts:bob", "alerts:alice"],
            "remove": ["metrics:a"],
        }),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let outcome: Value = resp.json().await.unwrap();
    let mut channels: Vec<&str> = outcome["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    channels.sort_unstable();
    assert_eq!(channels, ["alerts:alice", "logs:ws1"]);
    let denied = outcome["denied"].as_array().unwrap();
    assert_eq!(denied.len(), 1, "{outcome}");
    assert_eq!(denied[0]["channel"], "alerts:bob");
    assert!(denied[0]["reason"].as_str().is_some_and(|r| !r.is_empty()));

    let event = stream.next_control("subscriptions", WAIT).await;
    assert_eq!(event, outcome, "the stream announces the new list");

    let mut l5 = gw.publisher("l5-etl-service").await;
    publish(&mut l5, req("metrics:a", &json!("removed"))).await;
    let added = publish(&mut l5, req("logs:ws1", &json!("added"))).await;
    assert_eq!(added.delivered, 1);
    let env = stream.next_data(WAIT).await;
    assert_eq!(env.id, added.id, "the removed channel's events stopped");
    assert_eq!(env.channel, "logs:ws1");

    // Another user's connection, an unknown one, no token, bad input.
    let bob = gw.token("bob", &["metrics:*", "logs:**"], &[], 600);
    let body = json!({"connection_id": ready.connection_id, "add": ["logs:ws2"]});
    let resp = change(&bob, body.clone()).await.unwrap();
    assert_eq!(resp.status(), 403);
    error_body(resp).await;
    let resp = change(
        &alice,
        json!({"connection_id": "no-such-connection", "add": ["logs:ws2"]}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 404);
    error_body(resp).await;
    let resp = gw
        .http
        .post(gw.url("/api/sse/subscriptions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = change(
        &alice,
        json!({"connection_id": ready.connection_id, "add": ["logs:*"]}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 400);
    error_body(resp).await;
    let resp = gw
        .http
        .post(gw.url("/api/sse/subscriptions"))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // None of the refused changes reached the stream.
    let marker = publish(&mut l5, req("logs:ws1", &json!("marker"))).await;
    let frame = stream.next_event(WAIT).await;
    assert!(frame.is_message(), "{:?}", frame.raw);
    assert_eq!(frame.envelope().id, marker.id);
}

#[tokio::test]
async fn a_stream_opened_without_channels_can_subscribe_later() {
    let gw = TestGateway::spawn(|_| {}).await;
    let alice = gw.token("alice", &["metrics:*"], &[], 600);
    let (mut stream, ready) = gw.open("/api/sse", &alice, None).await;
    assert!(ready.channels.is_empty());
    let resp = gw
        .http
        .post(gw.url("/api/sse/subscriptions"))
        .bearer_auth(&alice)
        .json(&json!({"connection_id": ready.connection_id, "add": ["metrics:ws1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    stream.next_control("subscriptions", WAIT).await;
    let ids = publish_n(&gw, "analytics-service", "metrics:ws1", 1).await;
    assert_eq!(stream.next_data(WAIT).await.id, ids[0]);
}

#[tokio::test]
async fn stalled_reader_is_closed_others_get_everything_and_it_resumes() {
    const READERS: usize = 100;
    const EVENTS: usize = 10_000;
    const ROUND: usize = 32;
    let gw = TestGateway::spawn(|c| {
        c.sse.queue_events = 64;
        c.limits.max_event_bytes = 65536;
    })
    .await;
    let shared = "metrics:shared";
    let pad = "logs:pad";
    let mut client = gw.publisher("l5-etl-service").await;

    // Frames received by all readers together, and the count the publisher waits for.
    let progress = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(AtomicUsize::new(usize::MAX));
    let notify = Arc::new(Notify::new());
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut readers = Vec::new();
    for r in 0..READERS {
        let token = gw.token(&format!("reader{r}"), &["metrics:*"], &[], 600);
        let (mut stream, _) = gw
            .open(&format!("/api/sse?channels={shared}"), &token, None)
            .await;
        let progress = progress.clone();
        let target = target.clone();
        let notify = notify.clone();
        readers.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(EVENTS + 1);
            while ids.len() < EVENTS + 1 {
                let frame = stream.next_frame(deadline).await;
                if frame.is_comment() {
                    continue;
                }
                assert!(frame.is_message(), "reader {r}: {:?}", frame.raw);
                ids.push(frame.id.unwrap());
                if progress.fetch_add(1, Ordering::SeqCst) + 1 >= target.load(Ordering::SeqCst) {
                    notify.notify_one();
                }
            }
            ids
        }));
    }
    let staller_token = gw.token("staller", &["metrics:*", "logs:**"], &[], 600);
    let (mut staller, _) = gw
        .open(
            &format!("/api/sse?channels={shared},{pad}"),
            &staller_token,
            None,
        )
        .await;

    // Everyone receives a first event; then the staller stops reading.
    let mut published: Vec<(String, &str)> = Vec::new();
    let first = publish(&mut client, req(shared, &json!({"i": "warmup"}))).await;
    assert_eq!(first.delivered, u32::try_from(READERS + 1).unwrap());
    published.push((first.id.clone(), shared));
    assert_eq!(staller.next_data(WAIT).await.id, first.id);

    let wait_for = |want: usize| {
        let progress = progress.clone();
        let target = target.clone();
        let notify = notify.clone();
        async move {
            target.store(want, Ordering::SeqCst);
            while progress.load(Ordering::SeqCst) < want {
                tokio::time::timeout_at(deadline, notify.notified())
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "readers stuck at {} of {want}",
                            progress.load(Ordering::SeqCst)
                        )
                    });
            }
        }
    };
    let padding = Value::String("p".repeat(60_000));
    let kicked = || gw.gateway().state.metrics.slow_consumer_disconnects.get();
    let mut sent = 0;
    while sent < EVENTS {
        wait_for(READERS * (sent + 1)).await;
        let n = ROUND.min(EVENTS - sent);
        let mut events: Vec<PublishRequest> = (sent..sent + n)
            .map(|i| req(shared, &json!({"i": i})))
            .collect();
        // Fill the staller's socket buffers quickly, until the gateway gives up on it.
        let padded = kicked() == 0;
        if padded {
            events.push(req(pad, &padding));
        }
        let results = tokio::time::timeout_at(
            deadline,
            client.publish_batch(PublishBatchRequest { events }),
        )
        .await
        .expect("batch answered before the deadline")
        .unwrap()
        .into_inner()
        .results;
        for (k, r) in results.iter().enumerate() {
            published.push((r.id.clone(), if k < n { shared } else { pad }));
        }
        sent += n;
    }
    wait_for(READERS * (EVENTS + 1)).await;
    let shared_ids: Vec<&String> = published
        .iter()
        .filter(|(_, c)| *c == shared)
        .map(|(id, _)| id)
        .collect();
    for reader in readers {
        let ids = reader.await.unwrap();
        assert_eq!(ids.len(), shared_ids.len());
        assert!(
            ids.iter().zip(&shared_ids).all(|(a, b)| a == *b),
            "every reader got every event, in order"
        );
    }
    assert_eq!(kicked(), 1, "only the stalled reader was closed");
    assert!(
        gw.metric("sse_gateway_slow_consumer_disconnects_total")
            .await
            >= 1.0
    );

    // The stalled stream was closed: reading it now ends (cleanly or not) after what the
    // socket held.
    let (frames, _how) = staller.drain(deadline).await;
    let mut prev = first.id.clone();
    for f in frames.iter().filter(|f| !f.is_comment()) {
        assert!(f.is_message(), "{:?}", &f.raw[..f.raw.len().min(200)]);
        let id = f.id.clone().unwrap();
        assert!(id > prev);
        prev = id;
    }
    let last = staller.last_id.clone().unwrap();
    assert_eq!(last, prev);
    let pos = published.iter().position(|(id, _)| *id == last).unwrap();
    assert!(pos + 1 < published.len(), "the staller missed events");

    // It resumes from its last cursor and gets everything after it, in order.
    let (mut resumed, _) = gw
        .open(
            &format!("/api/sse?channels={shared},{pad}"),
            &staller_token,
            Some(&last),
        )
        .await;
    for (id, channel) in &published[pos + 1..] {
        let frame = resumed.next_event(deadline).await;
        assert!(frame.is_message(), "no gap: {:?}", frame.raw);
        assert_eq!(frame.id.as_ref(), Some(id));
        assert!(frame.data.as_ref().unwrap().contains(channel));
    }
    let live = publish(&mut client, req(shared, &json!("live"))).await;
    assert_eq!(resumed.next_data(WAIT).await.id, live.id);
}

#[tokio::test]
async fn shutdown_ends_open_streams_cleanly_after_delivering_everything() {
    let mut gw = TestGateway::spawn(|_| {}).await;
    let token = gw.token("alice", &["metrics:*", "logs:**"], &[], 600);
    let mut streams = Vec::new();
    for channels in ["metrics:ws1", "logs:ws1", "metrics:ws1,logs:ws1"] {
        streams.push(
            gw.open(&format!("/api/sse?channels={channels}"), &token, None)
                .await
                .0,
        );
    }
    let mut client = gw.publisher("l5-etl-service").await;
    let mut published = Vec::new();
    for i in 0..200 {
        let channel = if i % 2 == 0 {
            "metrics:ws1"
        } else {
            "logs:ws1"
        };
        published.push((
            publish(&mut client, req(channel, &json!({"i": i})))
                .await
                .id,
            channel,
        ));
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| tokio::spawn(async move { (s.read_to_end(Duration::from_secs(20)).await, s) }))
        .collect();
    gw.shutdown(Duration::from_secs(20)).await;
    let mut last_cursor = None;
    for (k, reader) in readers.into_iter().enumerate() {
        let (frames, stream) = reader.await.unwrap();
        let got: Vec<String> = frames
            .iter()
            .filter(|f| !f.is_comment())
            .map(|f| f.envelope().id)
            .collect();
        let want: Vec<String> = published
            .iter()
            .filter(|(_, c)| k == 2 || *c == ["metrics:ws1", "logs:ws1"][k])
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(
            got, want,
            "stream {k} received every event before its clean end"
        );
        last_cursor = stream.last_id;
    }

    // The gateway is gone: publishes and new streams fail.
    let publish_after = tokio::time::timeout(WAIT, client.publish(req("metrics:ws1", &json!(1))))
        .await
        .expect("publish answers before the deadline");
    assert!(publish_after.is_err());
    let sse_after = tokio::time::timeout(WAIT, gw.http.get(gw.url("/health")).send())
        .await
        .expect("request finishes before the deadline");
    assert!(sse_after.is_err(), "the HTTP listener is closed");

    // A new in-memory instance has a new log: the old cursor is foreign, so a gap is sent.
    let gw2 = TestGateway::spawn(|_| {}).await;
    let token = gw2.token("alice", &["metrics:*", "logs:**"], &[], 600);
    let (mut stream, _) = gw2
        .open(
            "/api/sse?channels=metrics:ws1",
            &token,
            last_cursor.as_deref(),
        )
        .await;
    stream.next_control("gap", WAIT).await;
}

/// Opens a stream for `staller` on `logs:pad`, stops reading it, publishes until the gateway
/// closes it as a slow consumer, then checks that the user's only slot is free again.
async fn slow_consumer_frees_its_slot(http2: bool) {
    let gw = TestGateway::spawn(|c| {
        c.sse.queue_events = 16;
        c.sse.heartbeat_secs = 1;
        c.limits.max_connections_per_user = 1;
    })
    .await;
    let client = if http2 {
        reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .build()
            .unwrap()
    } else {
        gw.http.clone()
    };
    let token = gw.token("staller", &["logs:**"], &[], 600);
    let resp = tokio::time::timeout(
        WAIT,
        client
            .get(gw.url("/api/sse?channels=logs:pad"))
            .bearer_auth(&token)
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    let version = if http2 {
        reqwest::Version::HTTP_2
    } else {
        reqwest::Version::HTTP_11
    };
    assert_eq!(resp.version(), version);
    let mut staller = SseReader::new(resp);
    staller.ready(WAIT).await;

    // Stop reading; publish until the gateway gives up on the stream.
    let mut publisher = gw.publisher("l5-etl-service").await;
    let padding = Value::String("p".repeat(60_000));
    let kicked = || gw.gateway().state.metrics.slow_consumer_disconnects.get();
    let mut published = 0;
    while kicked() == 0 {
        assert!(published < 1000, "the stalled stream was never closed");
        publish(&mut publisher, req("logs:pad", &padding)).await;
        published += 1;
    }

    // Its slot is freed: the same user can open a stream again (on HTTP/1.1 the transport is
    // dropped at once; anything else should take at most a heartbeat).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = gw
            .sse_response("/api/sse?channels=logs:pad", Some(&token), None)
            .await;
        if resp.status() == 200 {
            break;
        }
        assert_eq!(resp.status(), 429);
        assert!(
            Instant::now() < deadline,
            "the closed {version:?} stream still holds the user's only slot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And the stalled reader, reading again, finds its stream ended.
    let (_frames, how) = staller.drain(WAIT).await;
    assert!(!matches!(how, Err(ReadError::Timeout)), "the stream ended");
}

#[tokio::test]
async fn slow_consumer_over_http1_is_closed_and_frees_its_slot() {
    slow_consumer_frees_its_slot(false).await;
}

/// Browsers reach the gateway over HTTP/2 (TLS with ALPN h2). A slow consumer there cannot be
/// dropped with its TCP connection (other streams share it): its stream itself must end, so
/// that it stops counting against the per-user limit and the gateway's open streams.
#[tokio::test]
async fn slow_consumer_over_http2_is_closed_and_frees_its_slot() {
    slow_consumer_frees_its_slot(true).await;
}

#[tokio::test]
async fn live_additions_respect_the_channel_limit() {
    let gw = TestGateway::spawn(|c| c.limits.max_channels_per_connection = 2).await;
    let alice = gw.token("alice", &["metrics:*"], &[], 600);
    let (mut stream, ready) = gw.open("/api/sse?channels=metrics:a", &alice, None).await;
    let resp = gw
        .http
        .post(gw.url("/api/sse/subscriptions"))
        .bearer_auth(&alice)
        .json(&json!({
            "connection_id": ready.connection_id,
            "add": ["metrics:b", "metrics:c", "metrics:a"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let outcome: Value = resp.json().await.unwrap();
    assert_eq!(outcome["channels"], json!(["metrics:a", "metrics:b"]));
    assert_eq!(outcome["denied"][0]["channel"], "metrics:c", "{outcome}");
    assert!(
        outcome["denied"][0]["reason"]
            .as_str()
            .unwrap()
            .contains('2'),
        "{outcome}"
    );
    assert_eq!(stream.next_control("subscriptions", WAIT).await, outcome);
}

#[tokio::test]
async fn long_and_sparse_replays_span_several_pages() {
    let gw = TestGateway::spawn(|_| {}).await;
    let mut client = gw.publisher("l5-etl-service").await;
    let streamer = client.clone();
    let stream_publish = |requests: Vec<PublishRequest>| {
        let mut client = streamer.clone();
        async move {
            let mut inbound = client
                .publish_stream(tokio_stream::iter(requests))
                .await
                .unwrap()
                .into_inner();
            let mut ids = Vec::new();
            while let Some(r) = inbound.message().await.unwrap() {
                ids.push(r.id);
            }
            ids
        }
    };
    let start = publish(&mut client, req("metrics:dense", &json!("start"))).await;
    // 2,500 events on the subscribed channel (several replay pages)...
    let dense = tokio::time::timeout(
        Duration::from_secs(30),
        stream_publish(
            (0..2500)
                .map(|i| req("metrics:dense", &json!({"i": i})))
                .collect(),
        ),
    )
    .await
    .unwrap();
    // ...then one event on a sparse channel behind 25,000 events of another one.
    let sparse1 = publish(&mut client, req("metrics:sparse", &json!(1))).await;
    tokio::time::timeout(
        Duration::from_secs(30),
        stream_publish(
            (0..25_000)
                .map(|i| req("metrics:noise", &json!({"i": i})))
                .collect(),
        ),
    )
    .await
    .unwrap();
    let sparse2 = publish(&mut client, req("metrics:sparse", &json!(2))).await;

    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let (mut stream, _) = gw
        .open("/api/sse?channels=metrics:dense", &token, Some(&start.id))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, id) in dense.iter().enumerate() {
        let env = stream.next_data(deadline).await;
        assert_eq!(&env.id, id, "dense event {i}");
    }
    let (mut stream, _) = gw
        .open("/api/sse?channels=metrics:sparse", &token, Some(&start.id))
        .await;
    assert_eq!(stream.next_data(deadline).await.id, sparse1.id);
    assert_eq!(stream.next_data(deadline).await.id, sparse2.id);
    let live = publish(&mut client, req("metrics:sparse", &json!(3))).await;
    assert_eq!(stream.next_data(deadline).await.id, live.id);
}

#[tokio::test]
async fn age_based_retention_and_the_dedupe_window_expire() {
    let gw = TestGateway::spawn(|c| {
        c.history.max_age_secs = 1;
        c.history.dedupe_window_secs = 1;
    })
    .await;
    let mut client = gw.publisher("l5-etl-service").await;
    let keyed = || PublishRequest {
        idempotency_key: "k".into(),
        ..req("metrics:ws1", &json!("keyed"))
    };
    let old = publish(&mut client, req("metrics:ws1", &json!("old"))).await;
    let first = publish(&mut client, keyed()).await;
    assert!(publish(&mut client, keyed()).await.duplicate);
    // Retention by age is about time passing; nothing else to wait on.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let again = publish(&mut client, keyed()).await;
    assert!(
        !again.duplicate,
        "the key is forgotten after the dedupe window"
    );
    assert_ne!(again.id, first.id);
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let (mut stream, _) = gw
        .open("/api/sse?channels=metrics:ws1", &token, Some(&old.id))
        .await;
    stream.next_control("gap", WAIT).await;
    assert_eq!(stream.next_data(WAIT).await.id, again.id);
}

/// A replay much longer than the queue, with live traffic during it, completes without the
/// stream being closed as a slow consumer, and without gap or duplicate: live events that the
/// replay will read from the log anyway are not held in the queue meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_replay_under_live_traffic_is_not_a_slow_consumer() {
    let gw = TestGateway::spawn(|c| c.sse.queue_events = 256).await;
    let token = gw.token("alice", &["logs:**"], &[], 600);
    let mut client = gw.publisher("l5-etl-service").await;
    let first = common::publish(&mut client, common::req("logs:ws1", &json!({"n": 0}))).await;
    let mut expected = Vec::new();
    for chunk in 0..40 {
        let events = (0..1000)
            .map(|i| common::req("logs:ws1", &json!({"n": 1 + chunk * 1000 + i})))
            .collect();
        let resp = client
            .publish_batch(sse_gateway::ingest::pb::PublishBatchRequest { events })
            .await
            .unwrap()
            .into_inner();
        expected.extend(resp.results.into_iter().map(|r| r.id));
    }
    const BURSTS: usize = 100;
    const BURST: usize = 20;
    // Live traffic starts before the resume and goes on during the replay.
    let live = tokio::spawn({
        let mut client = client.clone();
        async move {
            let mut ids = Vec::new();
            for b in 0..BURSTS {
                let events = (0..BURST)
                    .map(|i| common::req("logs:ws1", &json!({"live": b * BURST + i})))
                    .collect();
                let resp = client
                    .publish_batch(sse_gateway::ingest::pb::PublishBatchRequest { events })
                    .await
                    .unwrap()
                    .into_inner();
                ids.extend(resp.results.into_iter().map(|r| r.id));
                tokio::task::yield_now().await;
            }
            ids
        }
    });
    let (mut stream, _) = gw
        .open("/api/sse?channels=logs:ws1", &token, Some(&first.id))
        .await;
    let mut got = Vec::new();
    while got.len() < expected.len() + BURSTS * BURST {
        got.push(stream.next_data(WAIT).await.id);
    }
    expected.extend(live.await.unwrap());
    assert_eq!(got, expected);
    assert_eq!(
        gw.metric("sse_gateway_slow_consumer_disconnects_total")
            .await,
        0.0
    );
}
