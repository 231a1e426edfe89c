//! `sse-gateway demo`: the demo page (embedded, built from `web/`), its token endpoint, and
//! simulated services that publish through the real mTLS gRPC path.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::auth::jwt::{mint_hs256, Claims};
use crate::event::now_ms;
use crate::ingest::pb::PublishRequest;
use crate::state::{AppState, DemoState};

const INDEX: &str = include_str!("../web/demo-dist/index.html");
const SCRIPT: &str = include_str!("../web/demo-dist/demo.js");
const STYLE: &str = include_str!("../web/demo-dist/demo.css");

/// Lifetime of a demo page token; the page's token provider fetches a new one on expiry.
const DEMO_TOKEN_SECS: u64 = 600;

/// The demo routes (only mounted in demo mode).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/demo/") }))
        .route("/demo", get(|| async { Redirect::temporary("/demo/") }))
        .route(
            "/demo/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/demo/demo.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/demo/demo.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/demo/token", get(token))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r
}

async fn token(State(demo): State<Option<DemoState>>) -> Response {
    let Some(demo) = demo else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let claims = Claims {
        sub: "demo-user".into(),
        exp: now_ms() / 1000 + DEMO_TOKEN_SECS,
        channels: [
            "logs:demo:**",
            "workflow:demo:*",
            "metrics:demo",
            "dashboards:*",
        ]
        .map(str::to_owned)
        .to_vec(),
        roles: vec![],
    };
    match mint_hs256(demo.secret.as_bytes(), &claims) {
        Ok(token) => Json(serde_json::json!({ "token": token })).into_response(),
        Err(e) => crate::error::GatewayError::Internal(e.to_string()).into_response(),
    }
}

/// Runs the simulated services until `stop` is cancelled: an ETL job's logs, a workflow's
/// status, metrics and a dashboard — each with its own client certificate.
pub async fn simulate(grpc_addr: String, certs: std::path::PathBuf, stop: CancellationToken) {
    let ca = certs.join("ca.pem");
    let mut clients = Vec::new();
    for service in ["l5-etl-service", "faas-service", "analytics-service"] {
        let cert = certs.join(format!("{service}.pem"));
        let key = certs.join(format!("{service}-key.pem"));
        match crate::client::connect(&grpc_addr, &ca, &cert, &key).await {
            Ok(c) => clients.push(c),
            Err(e) => {
                tracing::error!(error = %e, %service, "demo publisher could not connect");
                return;
            }
        }
    }
    let [mut etl, mut faas, mut analytics] = match <[_; 3]>::try_from(clients) {
        Ok(c) => c,
        Err(_) => return,
    };
    let steps = [
        "extract",
        "validate",
        "transform",
        "enrich",
        "load",
        "verify",
    ];
    let states = ["queued", "running", "waiting", "running", "succeeded"];
    let mut tick: u64 = 0;
    let mut interval = tokio::time::interval(Duration::from_millis(700));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        tick += 1;
        let step = steps[(tick as usize) % steps.len()];
        let rows = (tick * 7919) % 5000;
        let mut requests = vec![(
            0,
            req(
                "logs:demo:etl-1",
                "log",
                serde_json::json!({"level": "info", "step": step, "message": format!("{step}: processed {rows} rows"), "seq": tick}),
            ),
        )];
        if tick.is_multiple_of(3) {
            let state = states[((tick / 3) as usize) % states.len()];
            requests.push((
                1,
                req(
                    "workflow:demo:wf-1",
                    "status",
                    serde_json::json!({"workflow": "wf-1", "state": state, "progress": (tick * 13) % 101}),
                ),
            ));
        }
        let cpu = 20.0 + ((tick as f64) * 0.7).sin().abs() * 60.0;
        requests.push((
            2,
            req(
                "metrics:demo",
                "metric",
                serde_json::json!({"cpu": (cpu * 10.0).round() / 10.0, "rps": 100 + (tick * 37) % 400}),
            ),
        ));
        if tick.is_multiple_of(5) {
            requests.push((
                2,
                req(
                    "dashboards:main",
                    "update",
                    serde_json::json!({"widget": "throughput", "value": (tick * 37) % 400, "at": now_ms()}),
                ),
            ));
        }
        for (who, request) in requests {
            let client = match who {
                0 => &mut etl,
                1 => &mut faas,
                _ => &mut analytics,
            };
            if let Err(status) = client.publish(request).await {
                tracing::warn!(%status, "demo publish failed");
            }
        }
    }
}

fn req(channel: &str, event: &str, data: serde_json::Value) -> PublishRequest {
    PublishRequest {
        channel: channel.to_owned(),
        data: data.to_string(),
        event: event.to_owned(),
        idempotency_key: String::new(),
        audience: None,
    }
}
