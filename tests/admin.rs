//! Health, readiness, metrics and the admin endpoints (SPEC §6).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};

async fn json_of(resp: reqwest::Response) -> Value {
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn health_and_ready() {
    let gw = TestGateway::spawn(|_| {}).await;
    let resp = gw.get("/health", None).await;
    assert_eq!(resp.status(), 200);
    let health = json_of(resp).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["connections"], 0);
    assert_eq!(health["channels"], 0);
    assert!(health["uptime_s"].is_u64(), "{health}");

    let token = gw.token("alice", &["metrics:*", "logs:**"], &[], 600);
    let (_stream, _) = gw
        .open("/api/sse?channels=metrics:ws1,logs:ws1", &token, None)
        .await;
    let health = json_of(gw.get("/health", None).await).await;
    assert_eq!(health["connections"], 1, "{health}");
    assert_eq!(health["channels"], 2, "{health}");

    let resp = gw.get("/ready", None).await;
    assert_eq!(resp.status(), 200, "the in-memory broker always answers");
}

#[tokio::test]
async fn metrics_cover_the_pipeline() {
    let gw = TestGateway::spawn(|_| {}).await;
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let (mut stream, _) = gw.open("/api/sse?channels=metrics:ws1", &token, None).await;
    let mut client = gw.publisher("analytics-service").await;
    let resp = publish(&mut client, req("metrics:ws1", &json!({"v": 1}))).await;
    assert_eq!(stream.next_data(WAIT).await.id, resp.id);
    publish_err(&mut client, req("logs:ws1", &json!({"v": 2}))).await;
    publish_err(&mut client, req_raw("metrics:ws1", "nope")).await;

    let resp = gw.get("/metrics", None).await;
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain")
            || content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    for name in [
        "sse_gateway_connections",
        "sse_gateway_subscriptions",
        "sse_gateway_events_published",
        "sse_gateway_events_delivered",
        "sse_gateway_slow_consumer_disconnects",
        "sse_gateway_publish_to_write_seconds",
        "sse_gateway_broker_errors",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert_eq!(metric_value(&text, "sse_gateway_connections"), 1.0);
    assert_eq!(metric_value(&text, "sse_gateway_subscriptions"), 1.0);
    assert_eq!(
        metric_value(&text, "sse_gateway_events_published_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "sse_gateway_events_published_total{result=\"denied\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "sse_gateway_events_published_total{result=\"invalid\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(&text, "sse_gateway_events_delivered_total"),
        1.0
    );
    assert_eq!(
        metric_value(&text, "sse_gateway_publish_to_write_seconds_count"),
        1.0
    );
    assert_eq!(
        metric_value(&text, "sse_gateway_slow_consumer_disconnects_total"),
        0.0
    );
    assert_eq!(metric_value(&text, "sse_gateway_broker_errors_total"), 0.0);
}

#[tokio::test]
async fn admin_json_lists_open_streams() {
    let gw = TestGateway::spawn(|_| {}).await;
    let token = gw.token("alice", &["metrics:*", "logs:**"], &[], 600);
    let (_stream, ready) = gw
        .open("/api/sse?channels=metrics:ws1,logs:ws1:wf1", &token, None)
        .await;
    let admin = gw.token("root", &[], &["admin"], 600);
    let user = gw.token("mallory", &["**"], &["ops"], 600);

    for path in ["/admin/connections", "/admin/channels"] {
        let resp = gw.get(path, None).await;
        assert_eq!(resp.status(), 401, "{path}");
        error_body(resp).await;
        let resp = gw.get(path, Some(&user)).await;
        assert_eq!(resp.status(), 403, "{path}");
        let msg = error_body(resp).await;
        assert!(msg.contains("admin"), "{msg}");
        let resp = gw.get(path, Some("garbage")).await;
        assert_eq!(resp.status(), 401, "{path}");
    }

    let resp = gw.get("/admin/connections", Some(&admin)).await;
    assert_eq!(resp.status(), 200);
    let list = json_of(resp).await;
    let list = list.as_array().expect("a JSON array");
    assert_eq!(list.len(), 1, "{list:?}");
    let conn = &list[0];
    assert_eq!(conn["connection_id"], ready.connection_id.as_str());
    assert_eq!(conn["sub"], "alice");
    let mut channels: Vec<&str> = conn["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    channels.sort_unstable();
    assert_eq!(channels, ["logs:ws1:wf1", "metrics:ws1"]);
    assert!(
        !conn.to_string().contains(&token),
        "no token in admin output"
    );

    let resp = gw.get("/admin/channels", Some(&admin)).await;
    assert_eq!(resp.status(), 200);
    let mut list = json_of(resp).await.as_array().unwrap().clone();
    list.sort_by_key(|c| c["channel"].as_str().unwrap().to_owned());
    assert_eq!(
        Value::Array(list),
        json!([
            {"channel": "logs:ws1:wf1", "subscribers": 1},
            {"channel": "metrics:ws1", "subscribers": 1},
        ])
    );
}

#[tokio::test]
async fn admin_page_requires_the_admin_role() {
    let gw = TestGateway::spawn(|_| {}).await;
    let admin = gw.token("root", &[], &["admin"], 600);
    let user = gw.token("mallory", &[], &[], 600);
    for (token, status) in [
        (None, 401),
        (Some(user.as_str()), 403),
        (Some(admin.as_str()), 200),
    ] {
        let resp = gw.get("/admin", token).await;
        assert_eq!(resp.status(), status);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/html"), "{content_type}");
        let body = resp.text().await.unwrap();
        assert!(!body.is_empty());
        assert!(!body.contains(&admin) && !body.contains(&user));
    }
}

#[tokio::test]
async fn metrics_count_stream_opens_bytes_replays_gaps_and_grpc_latency() {
    let gw = TestGateway::spawn(|_| {}).await;
    let opens = |r: &str| format!("sse_gateway_stream_opens_total{{result=\"{r}\"}}");

    // Rejected opens are counted by status, the token extractor's 401 included.
    let resp = gw
        .sse_response("/api/sse?channels=metrics:ws1", None, None)
        .await;
    assert_eq!(resp.status(), 401);
    let nobody = gw.token("bob", &["logs:*"], &[], 600);
    let resp = gw
        .sse_response("/api/sse?channels=metrics:ws1", Some(&nobody), None)
        .await;
    assert_eq!(resp.status(), 403);
    let text = gw.metrics().await;
    assert_eq!(metric_value(&text, &opens("401")), 1.0);
    assert_eq!(metric_value(&text, &opens("403")), 1.0);
    assert!(
        !text.contains(&opens("200")),
        "no stream opened yet:\n{text}"
    );

    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let (mut stream, _) = gw.open("/api/sse?channels=metrics:ws1", &token, None).await;
    assert_eq!(gw.metric(&opens("200")).await, 1.0);
    let before = gw.metric("sse_gateway_sse_bytes_written_total").await;
    assert!(before > 0.0, "retry and ready were written");

    let mut client = gw.publisher("analytics-service").await;
    let data = json!({"v": "x".repeat(500)});
    let resp = publish(&mut client, req("metrics:ws1", &data)).await;
    assert_eq!(stream.next_data(WAIT).await.id, resp.id);
    publish_err(&mut client, req("logs:ws1", &json!({"v": 2}))).await;

    let text = gw.metrics().await;
    let after = metric_value(&text, "sse_gateway_sse_bytes_written_total");
    assert!(after >= before + 500.0, "{before} → {after}");
    assert_eq!(
        metric_value(
            &text,
            "sse_gateway_publisher_events_total{publisher=\"analytics-service\",result=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "sse_gateway_publisher_events_total{publisher=\"analytics-service\",result=\"denied\"}"
        ),
        1.0
    );
    let publish_calls = metric_value(
        &text,
        "sse_gateway_grpc_request_seconds_count{method=\"/ssegateway.v1.Publisher/Publish\"}",
    );
    assert_eq!(publish_calls, 2.0, "both calls timed, the refused one too");
    assert!(
        metric_value(
            &text,
            "sse_gateway_grpc_request_seconds_sum{method=\"/ssegateway.v1.Publisher/Publish\"}"
        ) > 0.0
    );
    assert_eq!(
        metric_value(&text, "sse_gateway_redis_tail_lag_seconds"),
        0.0,
        "the memory broker has no tail"
    );
    assert!(metric_value(&text, "process_resident_memory_bytes") > 1e6);
    assert!(metric_value(&text, "process_open_fds") >= 3.0);
    assert!(metric_value(&text, "process_cpu_seconds_total") > 0.0);
    assert!(metric_value(&text, "process_start_time_seconds") > 1e9);

    // A resume from a cursor starts a replay; a cursor of another log gets `gap`.
    assert_eq!(
        metric_value(&text, "sse_gateway_replays_started_total"),
        0.0
    );
    assert_eq!(metric_value(&text, "sse_gateway_gaps_sent_total"), 0.0);
    let (_resumed, _) = gw
        .open("/api/sse?channels=metrics:ws1", &token, Some(&resp.id))
        .await;
    let (mut foreign, _) = gw
        .open(
            "/api/sse?channels=metrics:ws1",
            &token,
            Some("not-a-cursor"),
        )
        .await;
    foreign.next_control("gap", WAIT).await;
    let text = gw.metrics().await;
    assert_eq!(
        metric_value(&text, "sse_gateway_replays_started_total"),
        1.0
    );
    assert_eq!(metric_value(&text, "sse_gateway_gaps_sent_total"), 1.0);
    assert_eq!(metric_value(&text, &opens("200")), 3.0);
}

#[tokio::test]
async fn admin_history_needs_the_admin_role_and_holds_sampled_points() {
    let gw = TestGateway::spawn(|_| {}).await;
    let admin = gw.token("root", &[], &["admin"], 600);
    let user = gw.token("mallory", &["**"], &["ops"], 600);
    let resp = gw.get("/admin/history", None).await;
    assert_eq!(resp.status(), 401);
    error_body(resp).await;
    let resp = gw.get("/admin/history", Some(&user)).await;
    assert_eq!(resp.status(), 403);
    assert!(error_body(resp).await.contains("admin"));

    let resp = gw.get("/admin/history", Some(&admin)).await;
    assert_eq!(resp.status(), 200);
    let history = json_of(resp).await;
    assert_eq!(history["interval_s"], 5, "{history}");
    assert_eq!(history["capacity"], 180, "15 minutes at 5 s");
    assert!(history["points"].is_array(), "{history}");

    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let (mut stream, _) = gw.open("/api/sse?channels=metrics:ws1", &token, None).await;
    let mut client = gw.publisher("analytics-service").await;
    for i in 0..3 {
        let resp = publish(&mut client, req("metrics:ws1", &json!({"i": i}))).await;
        assert_eq!(stream.next_data(WAIT).await.id, resp.id);
    }
    // The sampler may also have taken a point meanwhile: the interval's figures are then in
    // that point, and this one comes after it.
    gw.gateway().state.history.sample();

    let history = json_of(gw.get("/admin/history", Some(&admin)).await).await;
    let points = history["points"].as_array().expect("points");
    assert!(!points.is_empty(), "{history}");
    let last = points.last().unwrap();
    for key in [
        "t_ms",
        "published_per_s",
        "delivered_per_s",
        "open_streams",
        "publish_to_write_p99_ms",
        "authz_p99_ms",
        "authz_failures_per_s",
    ] {
        assert!(last.get(key).is_some(), "{key} missing: {last}");
    }
    assert_eq!(last["open_streams"], 1, "{last}");
    assert!(last["t_ms"].as_u64().unwrap() > 1_600_000_000_000);
    let any = |f: &dyn Fn(&Value) -> bool| points.iter().any(f);
    assert!(
        any(&|p| p["published_per_s"].as_f64().unwrap() > 0.0),
        "{history}"
    );
    assert!(
        any(&|p| p["delivered_per_s"].as_f64().unwrap() > 0.0),
        "{history}"
    );
    assert!(
        any(&|p| p["publish_to_write_p99_ms"]
            .as_f64()
            .is_some_and(|v| v > 0.0)),
        "{history}"
    );
    assert!(
        points
            .iter()
            .all(|p| p["authz_p99_ms"].is_null() && p["authz_failures_per_s"] == 0.0),
        "no authorizer here: {history}"
    );
}

#[tokio::test]
async fn redis_tail_lag_returns_to_zero_once_the_tail_dispatched_this_nodes_appends() {
    let prefix = format!("test-taillag-{}", sse_gateway::hub::random_id());
    let gw = TestGateway::spawn(move |raw| {
        raw.broker.kind = sse_gateway::config::BrokerKind::Redis;
        raw.broker.url = "redis://127.0.0.1:6379".to_owned();
        raw.broker.key_prefix = prefix;
    })
    .await;
    let lag = "sse_gateway_redis_tail_lag_seconds";
    assert_eq!(gw.metric(lag).await, 0.0);
    let token = gw.token("alice", &["logs:**"], &[], 600);
    let (mut stream, _) = gw.open("/api/sse?channels=logs:ws1", &token, None).await;
    let mut client = gw.publisher("l5-etl-service").await;
    for i in 0..20 {
        let resp = publish(&mut client, req("logs:ws1", &json!({"i": i}))).await;
        assert_eq!(stream.next_data(WAIT).await.id, resp.id);
    }
    // The ids an append returns and the ones the tail dispatches are compared: a mismatch
    // would leave an append pending and the lag growing.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let v = gw.metric(lag).await;
        if v == 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "lag stays at {v}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
