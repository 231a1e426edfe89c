//! Ingest (SPEC §2, §3, §5): mTLS publishers, validation with named reasons, batches and
//! streams, and how a published event is framed on the SSE stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use sse_gateway::ingest::pb::publisher_client::PublisherClient;
use sse_gateway::ingest::pb::{PublishBatchRequest, PublishRequest};
use tonic::transport::Channel;
use tonic::Code;

async fn alice_on(gw: &TestGateway, channels: &[&str]) -> (SseReader, Ready) {
    let token = gw.token(
        "alice",
        &["logs:**", "metrics:*", "dashboards:*", "workflow:**"],
        &[],
        600,
    );
    let query = channels
        .iter()
        .map(|c| format!("channels={c}"))
        .collect::<Vec<_>>()
        .join("&");
    gw.open(&format!("/api/sse?{query}"), &token, None).await
}

/// Publishes a marker on `logs:ws1:wf1` and asserts it is the next data message: whatever was
/// (wrongly) delivered before it would show up first.
async fn assert_marker_is_next(
    gw: &TestGateway,
    stream: &mut SseReader,
    client: &mut PublisherClient<Channel>,
) {
    let _ = gw;
    let marker = json!({"marker": sse_gateway::hub::random_id()});
    let resp = publish(client, req("logs:ws1:wf1", &marker)).await;
    let env = stream.next_data(WAIT).await;
    assert_eq!(
        env.payload, marker,
        "nothing was delivered before the marker"
    );
    assert_eq!(env.id, resp.id);
}

#[tokio::test]
async fn published_event_arrives_framed_per_spec() {
    let gw = TestGateway::spawn(|_| {}).await;
    let (mut stream, ready) = alice_on(&gw, &["logs:ws1:wf1"]).await;
    assert_eq!(
        stream.headers["content-type"], "text/event-stream",
        "{:?}",
        stream.headers
    );
    assert_eq!(stream.headers["cache-control"], "no-cache");
    assert_eq!(stream.headers["x-accel-buffering"], "no");
    assert!(!ready.connection_id.is_empty());
    assert_eq!(ready.channels, vec!["logs:ws1:wf1"]);
    assert!(ready.denied.is_empty());

    let mut client = gw.publisher("l5-etl-service").await;
    let data = json!({"msg": "hello", "n": 1, "nested": {"ok": true}});
    let before = sse_gateway::event::now_ms();
    let resp = publish(
        &mut client,
        PublishRequest {
            event: "log".into(),
            ..req("logs:ws1:wf1", &data)
        },
    )
    .await;
    let after = sse_gateway::event::now_ms();
    assert_eq!(resp.delivered, 1);
    assert!(!resp.duplicate);
    assert!(!resp.id.is_empty());

    let frame = stream.next_frame(WAIT).await;
    let lines: Vec<&str> = frame.raw.split('\n').collect();
    assert_eq!(lines.len(), 4, "id, data, blank line: {:?}", frame.raw);
    assert_eq!(lines[0], format!("id: {}", resp.id));
    assert!(lines[1].starts_with("data: {"), "{:?}", frame.raw);
    assert_eq!(&lines[2..], ["", ""]);
    assert!(frame.event.is_none(), "no event: field on data messages");
    let env = frame.envelope();
    assert_eq!(env.id, resp.id);
    assert_eq!(env.channel, "logs:ws1:wf1");
    assert_eq!(env.event, "log");
    assert!(
        (before..=after).contains(&env.ts),
        "ts {} is the accept time",
        env.ts
    );
    assert_eq!(env.payload, data);
    let keys: Vec<String> = env
        .frame
        .json()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, ["channel", "event", "id", "payload", "ts"]);

    // Without an event type, the envelope says "message".
    let resp = publish(&mut client, req("logs:ws1:wf1", &json!([1, 2]))).await;
    let env = stream.next_data(WAIT).await;
    assert_eq!(env.event, "message");
    assert_eq!(env.id, resp.id);
    assert_eq!(env.payload, json!([1, 2]));
}

#[tokio::test]
async fn one_stream_carries_three_channels_in_cursor_order() {
    let gw = TestGateway::spawn(|_| {}).await;
    let channels = ["logs:ws1:wf1", "metrics:ws1", "dashboards:d1"];
    let (mut stream, ready) = alice_on(&gw, &channels).await;
    let mut granted = ready.channels.clone();
    granted.sort();
    let mut want: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
    want.sort();
    assert_eq!(granted, want);

    let mut l5 = gw.publisher("l5-etl-service").await;
    let mut analytics = gw.publisher("analytics-service").await;
    let mut sent = Vec::new();
    for i in 0..30 {
        let channel = channels[i % 3];
        let client = if channel.starts_with("dashboards") || i % 2 == 0 && channel == "metrics:ws1"
        {
            &mut analytics
        } else {
            &mut l5
        };
        let resp = publish(client, req(channel, &json!({"i": i}))).await;
        assert_eq!(resp.delivered, 1);
        sent.push((channel, resp.id));
    }
    let mut last: Option<String> = None;
    for (i, (channel, id)) in sent.iter().enumerate() {
        let env = stream.next_data(WAIT).await;
        assert_eq!(&env.channel, channel);
        assert_eq!(&env.id, id);
        assert_eq!(env.payload, json!({"i": i}));
        if let Some(prev) = &last {
            assert!(
                env.id.as_str() > prev.as_str(),
                "cursors increase as strings: {prev} then {}",
                env.id
            );
        }
        last = Some(env.id);
    }
}

async fn assert_rejected_client(gw: &TestGateway, tls: tonic::transport::ClientTlsConfig) {
    let endpoint = Channel::from_shared(gw.grpc_url())
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let connected = tokio::time::timeout(WAIT, endpoint.connect())
        .await
        .expect("connect finishes before the deadline");
    if let Ok(channel) = connected {
        // TLS 1.3: the client may finish its side of the handshake before the server's
        // rejection arrives; then the first call fails.
        let mut client = PublisherClient::new(channel);
        let result = tokio::time::timeout(
            WAIT,
            client.publish(req("logs:ws1:wf1", &json!({"sneaky": true}))),
        )
        .await
        .expect("call finishes before the deadline");
        let status = result.expect_err("a publish without a trusted client certificate fails");
        assert_ne!(status.code(), Code::Ok);
    }
}

#[tokio::test]
async fn client_without_certificate_is_rejected() {
    let gw = TestGateway::spawn(|_| {}).await;
    let (mut stream, _) = alice_on(&gw, &["logs:ws1:wf1"]).await;
    assert_rejected_client(&gw, gw.client_tls(None)).await;
    let mut client = gw.publisher("l5-etl-service").await;
    assert_marker_is_next(&gw, &mut stream, &mut client).await;
}

#[tokio::test]
async fn client_with_certificate_of_another_ca_is_rejected() {
    let gw = TestGateway::spawn(|_| {}).await;
    let (mut stream, _) = alice_on(&gw, &["logs:ws1:wf1"]).await;
    let cert = gw.foreign_pki.path().join("l5-etl-service.pem");
    let key = gw.foreign_pki.path().join("l5-etl-service-key.pem");
    assert_rejected_client(&gw, gw.client_tls(Some((&cert, &key)))).await;
    let mut client = gw.publisher("l5-etl-service").await;
    assert_marker_is_next(&gw, &mut stream, &mut client).await;
}

#[tokio::test]
async fn publisher_outside_its_patterns_is_denied_and_nothing_is_delivered() {
    let gw = TestGateway::spawn(|_| {}).await;
    let (mut stream, _) = alice_on(&gw, &["logs:ws1:wf1", "metrics:ws1", "workflow:ws1:wf1"]).await;
    let cases = [
        ("analytics-service", "logs:ws1:wf1"),
        ("faas-service", "metrics:ws1"),
        ("l5-etl-service", "workflow:ws1:wf1"),
        // A valid certificate whose name has no [[publishers]] entry.
        ("rogue-service", "logs:ws1:wf1"),
    ];
    for (service, channel) in cases {
        let mut client = gw.publisher(service).await;
        let status = publish_err(&mut client, req(channel, &json!({"x": 1}))).await;
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{service} → {channel}"
        );
        assert!(
            status.message().contains(service) && status.message().contains(channel),
            "the message names publisher and channel: {}",
            status.message()
        );
    }
    // A batch is checked whole as well.
    let mut analytics = gw.publisher("analytics-service").await;
    let status = analytics
        .publish_batch(PublishBatchRequest {
            events: vec![
                req("metrics:ws1", &json!(1)),
                req("logs:ws1:wf1", &json!(2)),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let mut client = gw.publisher("l5-etl-service").await;
    assert_marker_is_next(&gw, &mut stream, &mut client).await;
}

#[tokio::test]
async fn invalid_publishes_are_rejected_with_a_reason() {
    let gw = TestGateway::spawn(|_| {}).await;
    let (mut stream, _) = alice_on(&gw, &["logs:ws1:wf1", "logs:ws1"]).await;
    let mut client = gw.publisher("l5-etl-service").await;
    let ok = |channel: &str| req(channel, &json!({"ok": true}));
    let oversize = format!("\"{}\"", "a".repeat(65535));
    assert_eq!(oversize.len(), 65537);
    let long_channel = format!("logs:{}", "a".repeat(295));
    assert_eq!(long_channel.len(), 300);
    let cases: Vec<(PublishRequest, Code, &[&str])> = vec![
        (
            req_raw("logs:ws1", "not json"),
            Code::InvalidArgument,
            &["JSON"],
        ),
        (
            req_raw("logs:ws1", "{\"a\": 1"),
            Code::InvalidArgument,
            &["JSON"],
        ),
        (
            req_raw("logs:ws1", "{\"a\":1} x"),
            Code::InvalidArgument,
            &["JSON"],
        ),
        (
            req_raw("logs:ws1", ""),
            Code::InvalidArgument,
            &["JSON", "empty"],
        ),
        (
            req_raw("logs:ws1", "'single'"),
            Code::InvalidArgument,
            &["JSON"],
        ),
        (
            req_raw("logs:ws1", &oversize),
            Code::ResourceExhausted,
            &["65537", "65536"],
        ),
        (
            ok("logs:ws\n1"),
            Code::InvalidArgument,
            &["invalid channel", "segment"],
        ),
        (
            ok("logs:ws\r1"),
            Code::InvalidArgument,
            &["invalid channel", "segment"],
        ),
        (
            ok("logs:ws1\n"),
            Code::InvalidArgument,
            &["invalid channel"],
        ),
        (
            ok("logs::ws1"),
            Code::InvalidArgument,
            &["invalid channel", "empty segment"],
        ),
        (
            ok("logs:ws1:"),
            Code::InvalidArgument,
            &["invalid channel", "segment"],
        ),
        (
            ok("logs:*"),
            Code::InvalidArgument,
            &["invalid channel", "wildcard"],
        ),
        (
            ok("logs:ws1:*"),
            Code::InvalidArgument,
            &["invalid channel", "wildcard"],
        ),
        (
            ok("logs:**"),
            Code::InvalidArgument,
            &["invalid channel", "wildcard"],
        ),
        (
            ok(&long_channel),
            Code::InvalidArgument,
            &["invalid channel", "256"],
        ),
        (
            ok("nope:x"),
            Code::InvalidArgument,
            &["invalid channel", "unknown channel type"],
        ),
        (
            ok("Logs:ws1"),
            Code::InvalidArgument,
            &["invalid channel", "type"],
        ),
        (ok(""), Code::InvalidArgument, &["invalid channel", "empty"]),
        (
            ok("logs"),
            Code::InvalidArgument,
            &["invalid channel", "segment"],
        ),
        (
            ok("logs:a:b:c"),
            Code::InvalidArgument,
            &["invalid channel", "segment"],
        ),
        (
            ok("metrics:ws1:extra"),
            Code::InvalidArgument,
            &["invalid channel", "segment"],
        ),
        (ok("logs:a b"), Code::InvalidArgument, &["invalid channel"]),
        (
            PublishRequest {
                event: "bad name".into(),
                ..ok("logs:ws1")
            },
            Code::InvalidArgument,
            &["event name"],
        ),
        (
            PublishRequest {
                event: "a\nb".into(),
                ..ok("logs:ws1")
            },
            Code::InvalidArgument,
            &["event name"],
        ),
        (
            PublishRequest {
                event: "e".repeat(65),
                ..ok("logs:ws1")
            },
            Code::InvalidArgument,
            &["event name"],
        ),
        (
            PublishRequest {
                idempotency_key: "k".repeat(129),
                ..ok("logs:ws1")
            },
            Code::InvalidArgument,
            &["idempotency_key", "128"],
        ),
    ];
    for (request, code, needles) in cases {
        let what = format!(
            "{:?} / {} bytes of data",
            request.channel,
            request.data.len()
        );
        let status = publish_err(&mut client, request).await;
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        for needle in needles {
            assert!(
                status.message().contains(needle),
                "{what}: message {:?} should mention {needle:?}",
                status.message()
            );
        }
    }
    // The limit itself is accepted.
    let at_limit = format!("\"{}\"", "a".repeat(65534));
    assert_eq!(at_limit.len(), 65536);
    let resp = publish(&mut client, req_raw("logs:ws1", &at_limit)).await;
    let env = stream.next_data(WAIT).await;
    assert_eq!(env.id, resp.id);
    assert_eq!(env.payload, Value::String("a".repeat(65534)));
    assert_marker_is_next(&gw, &mut stream, &mut client).await;
}

#[tokio::test]
async fn payloads_with_newlines_arrive_intact_in_one_frame() {
    let gw = TestGateway::spawn(|_| {}).await;
    let (mut stream, _) = alice_on(&gw, &["logs:ws1:wf1"]).await;
    let mut client = gw.publisher("l5-etl-service").await;
    let tricky = json!({
        "text": "line1\n\nline2\r\n\r\nline3\rend",
        "sse": "data: fake\n\nid: 999\n\nevent: ready\n\n",
        "nested": {"a": ["\n\n", "\r", "\u{2028}\u{2029}"], "emoji": "héllo 🌍"},
        "quote": "\"}\n\n{\"",
        "n": 1.5,
        "big": 12_345_678_901_234_567_u64,
    });
    let pretty = serde_json::to_string_pretty(&json!({
        "a": 1,
        "b": {"c": [1, 2, {"d": "x\n\ny"}]},
        "e": "multi\nline",
    }))
    .unwrap();
    assert!(pretty.contains('\n'));
    let crlf_pretty = pretty.replace('\n', "\r\n");
    let inputs = vec![
        tricky.to_string(),
        pretty.clone(),
        crlf_pretty,
        "\n\n  [ 1 ,\n\n 2 ]\n\n".to_owned(),
        "\"\\n\\n\"".to_owned(),
        "42".to_owned(),
        "null".to_owned(),
        "true".to_owned(),
    ];
    let mut ids = Vec::new();
    for data in &inputs {
        ids.push(publish(&mut client, req_raw("logs:ws1:wf1", data)).await.id);
    }
    for (data, id) in inputs.iter().zip(&ids) {
        let frame = stream.next_frame(WAIT).await;
        assert!(
            !frame.raw.contains('\r'),
            "no raw CR on the wire: {:?}",
            frame.raw
        );
        assert_eq!(
            frame.raw.matches('\n').count(),
            3,
            "one id line, one data line, one blank line: {:?}",
            frame.raw
        );
        let env = frame.envelope();
        assert_eq!(&env.id, id);
        let want: Value = serde_json::from_str(data).unwrap();
        assert_eq!(env.payload, want, "payload of {data:?}");
    }
}

#[tokio::test]
async fn batch_is_validated_whole_and_published_in_order() {
    let gw = TestGateway::spawn(|_| {}).await;
    let (mut stream, _) = alice_on(&gw, &["logs:ws1:wf1", "metrics:ws1"]).await;
    let mut client = gw.publisher("l5-etl-service").await;
    let bad_batches: Vec<(Vec<PublishRequest>, Code, &str)> = vec![
        (
            vec![
                req("logs:ws1:wf1", &json!(1)),
                req("logs:ws1:*", &json!(2)),
                req("metrics:ws1", &json!(3)),
            ],
            Code::InvalidArgument,
            "events[1]",
        ),
        (
            vec![
                req("logs:ws1:wf1", &json!(1)),
                req("metrics:ws1", &json!(2)),
                req_raw("metrics:ws1", "{oops"),
            ],
            Code::InvalidArgument,
            "events[2]",
        ),
        (
            vec![
                req("logs:ws1:wf1", &json!(1)),
                req("workflow:ws1:wf1", &json!(2)),
            ],
            Code::PermissionDenied,
            "events[1]",
        ),
        (
            vec![
                req("logs:ws1:wf1", &json!(1)),
                req_raw("logs:ws1:wf1", &format!("\"{}\"", "x".repeat(70_000))),
            ],
            Code::ResourceExhausted,
            "65536",
        ),
    ];
    for (events, code, needle) in bad_batches {
        let status =
            tokio::time::timeout(WAIT, client.publish_batch(PublishBatchRequest { events }))
                .await
                .unwrap()
                .unwrap_err();
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().contains(needle),
            "{:?} should mention {needle}",
            status.message()
        );
    }
    for n in [0, 1001] {
        let events = (0..n).map(|i| req("logs:ws1:wf1", &json!(i))).collect();
        let status =
            tokio::time::timeout(WAIT, client.publish_batch(PublishBatchRequest { events }))
                .await
                .unwrap()
                .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{n} events");
        assert!(status.message().contains("1000"), "{}", status.message());
    }
    assert_marker_is_next(&gw, &mut stream, &mut client).await;

    // A full batch of 1000 is accepted, in order, each delivered once.
    let events: Vec<PublishRequest> = (0..1000)
        .map(|i| {
            req(
                if i % 2 == 0 {
                    "logs:ws1:wf1"
                } else {
                    "metrics:ws1"
                },
                &json!({"i": i}),
            )
        })
        .collect();
    let results = tokio::time::timeout(WAIT, client.publish_batch(PublishBatchRequest { events }))
        .await
        .unwrap()
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 1000);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.delivered, 1);
        let env = stream.next_data(WAIT).await;
        assert_eq!(env.id, r.id);
        assert_eq!(env.payload, json!({"i": i}));
    }
    assert!(results.windows(2).all(|w| w[0].id < w[1].id));
}

#[tokio::test]
async fn publish_stream_answers_every_request_in_order() {
    let gw = TestGateway::spawn(|_| {}).await;
    let mut client = gw.publisher("l5-etl-service").await;
    const N: usize = 10_000;
    let requests = (0..N).map(|i| req("metrics:ws1", &json!({"i": i})));
    let responses = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut inbound = client
            .publish_stream(tokio_stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::with_capacity(N);
        while let Some(r) = inbound.message().await.unwrap() {
            out.push(r);
        }
        out
    })
    .await
    .expect("all responses before the deadline");
    assert_eq!(responses.len(), N);
    for w in responses.windows(2) {
        assert!(w[0].id < w[1].id, "{} then {}", w[0].id, w[1].id);
        assert!(!w[1].duplicate);
    }
}

#[tokio::test]
async fn grpc_health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let gw = TestGateway::spawn(|_| {}).await;
    let cert = gw.pki_file("l5-etl-service.pem");
    let key = gw.pki_file("l5-etl-service-key.pem");
    let channel = Channel::from_shared(gw.grpc_url())
        .unwrap()
        .tls_config(gw.client_tls(Some((&cert, &key))))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "ssegateway.v1.Publisher"] {
        let status = tokio::time::timeout(
            WAIT,
            health.check(HealthCheckRequest {
                service: service.into(),
            }),
        )
        .await
        .unwrap()
        .unwrap()
        .into_inner()
        .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = tokio::time::timeout(
        WAIT,
        reflection.server_reflection_info(tokio_stream::iter([request])),
    )
    .await
    .unwrap()
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
        names.iter().any(|n| n == "ssegateway.v1.Publisher"),
        "{names:?}"
    );
}

#[tokio::test]
async fn configured_event_size_limit_is_enforced() {
    let gw = TestGateway::spawn(|c| c.limits.max_event_bytes = 1000).await;
    let (mut stream, _) = alice_on(&gw, &["logs:ws1:wf1"]).await;
    let mut client = gw.publisher("l5-etl-service").await;
    let over = format!("\"{}\"", "a".repeat(999));
    let status = publish_err(&mut client, req_raw("logs:ws1:wf1", &over)).await;
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("1000"), "{}", status.message());
    let at = format!("\"{}\"", "a".repeat(998));
    let resp = publish(&mut client, req_raw("logs:ws1:wf1", &at)).await;
    assert_eq!(stream.next_data(WAIT).await.id, resp.id);
}

#[tokio::test]
async fn publisher_rate_limit_is_resource_exhausted_and_per_publisher() {
    let gw = TestGateway::spawn(|c| c.limits.publisher_events_per_sec = 10).await;
    let (mut stream, _) = alice_on(&gw, &["logs:ws1:wf1", "metrics:ws1"]).await;
    let mut l5 = gw.publisher("l5-etl-service").await;
    let batch = |n: usize| PublishBatchRequest {
        events: (0..n)
            .map(|i| req("logs:ws1:wf1", &json!({"i": i})))
            .collect(),
    };
    // A burst of one second's worth passes; more right after it does not.
    let ok = l5
        .publish_batch(batch(10))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(ok.len(), 10);
    let status = l5.publish_batch(batch(10)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("rate"), "{}", status.message());
    // Another publisher has its own budget.
    let mut analytics = gw.publisher("analytics-service").await;
    let other = publish(&mut analytics, req("metrics:ws1", &json!("other"))).await;
    for r in &ok {
        assert_eq!(stream.next_data(WAIT).await.id, r.id);
    }
    assert_eq!(
        stream.next_data(WAIT).await.id,
        other.id,
        "nothing of the rejected batch was published"
    );
}

/// `depth` nested arrays around `1`.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn deeply_nested_json_is_refused_naming_the_limit() {
    let gw = TestGateway::spawn(|_| {}).await;
    let (mut stream, _) = alice_on(&gw, &["logs:ws1:wf1"]).await;
    let mut client = gw.publisher("l5-etl-service").await;
    // 65 levels; 100 (under serde_json's own recursion limit of 128); 30,000 levels in 60 KB.
    let objects = format!("{}1{}", "{\"a\":".repeat(65), "}".repeat(65));
    for data in [nested(65), objects, nested(100), nested(30_000)] {
        let status = publish_err(&mut client, req_raw("logs:ws1:wf1", &data)).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status.message().contains("64") && status.message().contains("deep"),
            "the message names the limit: {}",
            status.message()
        );
    }
    // In a batch, the event is named.
    let events = vec![
        req("logs:ws1:wf1", &json!(1)),
        req_raw("logs:ws1:wf1", &nested(30_000)),
    ];
    let status = client
        .publish_batch(PublishBatchRequest { events })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("events[1]"),
        "{}",
        status.message()
    );
    // 64 levels are accepted; brackets inside strings do not count.
    for data in [nested(64), format!("[\"{}\"]", "[{".repeat(500))] {
        let resp = publish(&mut client, req_raw("logs:ws1:wf1", &data)).await;
        let env = stream.next_data(WAIT).await;
        assert_eq!(env.id, resp.id);
        assert_eq!(env.payload, serde_json::from_str::<Value>(&data).unwrap());
    }
    assert_marker_is_next(&gw, &mut stream, &mut client).await;
}

/// `PublishRequest` with `bytes` in place of its `string` fields, to send invalid UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawPublishRequest {
    #[prost(bytes = "vec", tag = "1")]
    channel: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawPublishBatchRequest {
    #[prost(message, repeated, tag = "1")]
    events: Vec<RawPublishRequest>,
}

#[tokio::test]
async fn invalid_utf8_in_a_string_field_is_invalid_argument() {
    use sse_gateway::ingest::pb::{PublishBatchResponse, PublishResponse};
    use tonic::codegen::http::uri::PathAndQuery;
    use tonic_prost::ProstCodec;

    let gw = TestGateway::spawn(|_| {}).await;
    let (mut stream, _) = alice_on(&gw, &["logs:ws1:wf1"]).await;
    let tls = gw.client_tls(Some((
        &gw.pki_file("l5-etl-service.pem"),
        &gw.pki_file("l5-etl-service-key.pem"),
    )));
    let channel = Channel::from_shared(gw.grpc_url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let raw = |channel: &[u8], data: &[u8]| RawPublishRequest {
        channel: channel.to_vec(),
        data: data.to_vec(),
    };
    let bad = [
        raw(b"logs:ws1:\xff", b"{}"),
        raw(b"logs:ws1:wf1", b"\"\xc3\x28\""),
    ];
    for msg in bad.clone() {
        grpc.ready().await.unwrap();
        let status = tokio::time::timeout(
            WAIT,
            grpc.unary(
                tonic::Request::new(msg),
                PathAndQuery::from_static("/ssegateway.v1.Publisher/Publish"),
                ProstCodec::<RawPublishRequest, PublishResponse>::default(),
            ),
        )
        .await
        .unwrap()
        .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(status.message().contains("UTF-8"), "{}", status.message());
    }
    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            tonic::Request::new(RawPublishBatchRequest {
                events: vec![raw(b"logs:ws1:wf1", b"1"), bad[1].clone()],
            }),
            PathAndQuery::from_static("/ssegateway.v1.Publisher/PublishBatch"),
            ProstCodec::<RawPublishBatchRequest, PublishBatchResponse>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    grpc.ready().await.unwrap();
    let mut responses = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter([
                raw(b"logs:ws1:wf1", b"2"),
                bad[0].clone(),
            ])),
            PathAndQuery::from_static("/ssegateway.v1.Publisher/PublishStream"),
            ProstCodec::<RawPublishRequest, PublishResponse>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().expect("a response");
    let status = responses.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    // The valid event before the bad one on the stream was published; nothing else was.
    assert_eq!(stream.next_data(WAIT).await.id, first.id);
    let mut client = gw.publisher("l5-etl-service").await;
    assert_marker_is_next(&gw, &mut stream, &mut client).await;
}

#[tokio::test]
async fn a_batch_larger_than_the_rate_limit_is_admitted_and_paid_back() {
    let gw = TestGateway::spawn(|c| c.limits.publisher_events_per_sec = 10).await;
    let (mut stream, _) = alice_on(&gw, &["logs:ws1:wf1"]).await;
    let mut l5 = gw.publisher("l5-etl-service").await;
    let events: Vec<PublishRequest> = (0..25)
        .map(|i| req("logs:ws1:wf1", &json!({"i": i})))
        .collect();
    // The bucket is full: the whole batch goes through at once...
    let results = tokio::time::timeout(WAIT, l5.publish_batch(PublishBatchRequest { events }))
        .await
        .unwrap()
        .unwrap_or_else(|s| panic!("a batch over the per-second limit: {s:?}"))
        .into_inner()
        .results;
    assert_eq!(results.len(), 25);
    for r in &results {
        assert_eq!(stream.next_data(WAIT).await.id, r.id);
    }
    // ...and is paid back before the next event: 2.5 s of budget are owed.
    let status = publish_err(&mut l5, req("logs:ws1:wf1", &json!("next"))).await;
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("rate"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_publish_stream_ends_on_shutdown_and_is_drained() {
    let mut gw = TestGateway::spawn(|_| {}).await;
    let state = std::sync::Arc::downgrade(&gw.gateway().state.config);
    let mut client = gw.publisher("l5-etl-service").await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut responses = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(req("logs:ws1:wf1", &json!(1))).await.unwrap();
    let first = tokio::time::timeout(WAIT, responses.message())
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_some());
    // The client keeps its side open; shutdown must still end the stream and wait for its task.
    gw.shutdown(std::time::Duration::from_secs(30)).await;
    assert!(
        state.upgrade().is_none(),
        "a publish task outlived the drain"
    );
    match tokio::time::timeout(WAIT, responses.message())
        .await
        .unwrap()
    {
        Ok(None) => {}
        Ok(Some(r)) => panic!("unexpected response {r:?}"),
        Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
    }
    drop(tx);
}
