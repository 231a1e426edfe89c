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
