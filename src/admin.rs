//! Health, readiness, Prometheus metrics (and the middleware that counts stream opens and times
//! gRPC calls), and the admin JSON endpoints and live page.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{bearer, set_cookie, Admin, TokenAuth, ADMIN_COOKIE};
use crate::broker::Broker;
use crate::control::{Command, Control};
use crate::error::GatewayError;
use crate::history::{History, CAPACITY, SAMPLE_EVERY};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// `GET /health`.
pub(crate) async fn health(
    State(hub): State<Arc<Hub>>,
    State(started): State<Instant>,
) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "connections": hub.connection_count(),
        "channels": hub.channel_count(),
        "uptime_s": started.elapsed().as_secs(),
    }))
}

/// `GET /ready`: 200 when the broker answers, else 503.
pub(crate) async fn ready(State(broker): State<Broker>) -> Response {
    if broker.ready().await {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "event log (broker) unreachable"})),
        )
            .into_response()
    }
}

/// `GET /metrics`: OpenMetrics text when the scraper asks for it, else the classic Prometheus
/// text content type (the exposition is compatible with both parsers).
pub(crate) async fn metrics(State(metrics): State<Arc<Metrics>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let mut response = metrics.render().into_response();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(if openmetrics {
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        } else {
            "text/plain; version=0.0.4; charset=utf-8"
        }),
    );
    response
}

/// `GET /admin/connections`.
///
/// # Errors
/// 401/403 as [`Admin`].
pub(crate) async fn connections(_: Admin, State(hub): State<Arc<Hub>>) -> Response {
    Json(hub.connections()).into_response()
}

/// `GET /admin/channels`.
///
/// # Errors
/// 401/403 as [`Admin`].
pub(crate) async fn channels(_: Admin, State(hub): State<Arc<Hub>>) -> Response {
    let list: Vec<_> = hub
        .channels()
        .into_iter()
        .map(|(channel, subscribers)| json!({"channel": channel, "subscribers": subscribers}))
        .collect();
    Json(list).into_response()
}

/// The body of `POST /admin/disconnect`: a user (every stream, on every node) or one
/// connection of this node (an id from `/admin/connections`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DisconnectBody {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    connection_id: Option<String>,
    #[serde(default)]
    reason: String,
}

/// `POST /admin/disconnect`: closes a user's streams (as `Control.Disconnect`, on every node)
/// or one connection of this node, with `event: revoked`. Answers `{"streams":N}`, the streams
/// closed on this node (0 for a connection that has closed already).
///
/// # Errors
/// 401/403 as [`Admin`]; 400 a body with neither or both of `user_id` and `connection_id`;
/// 503 when Redis did not take the command (no node applied it).
pub(crate) async fn disconnect(
    Admin(admin): Admin,
    State(control): State<Control>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, GatewayError> {
    let body: DisconnectBody = serde_json::from_slice(&body)
        .map_err(|e| GatewayError::InvalidArgument(format!("invalid JSON body: {e}")))?;
    let streams = match (body.user_id, body.connection_id) {
        (Some(user_id), None) => {
            tracing::info!(admin = %admin.sub, %user_id, "admin disconnect of a user");
            control
                .execute(Command::disconnect(user_id, body.reason, false)?)
                .await?
        }
        (None, Some(id)) => {
            tracing::info!(admin = %admin.sub, connection = %id, "admin disconnect of a connection");
            u32::from(control.disconnect_connection(&id, body.reason)?)
        }
        _ => {
            return Err(GatewayError::InvalidArgument(
                "give exactly one of user_id and connection_id".into(),
            ))
        }
    };
    Ok(Json(json!({ "streams": streams })))
}

/// `GET /admin/history`: the sampled last 15 minutes, oldest point first.
///
/// # Errors
/// 401/403 as [`Admin`].
pub(crate) async fn history(_: Admin, State(history): State<Arc<History>>) -> Response {
    Json(json!({
        "interval_s": SAMPLE_EVERY.as_secs(),
        "capacity": CAPACITY,
        "points": history.points(),
    }))
    .into_response()
}

/// Middleware of `GET /api/sse`: counts each answer by status (`stream_opens`), rejections by
/// the token extractor included.
pub(crate) async fn count_stream_opens(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    metrics.stream_opened(response.status().as_u16());
    response
}

/// Middleware of the gRPC services: times each call to its response headers
/// (`grpc_request_seconds`). Calls the server does not implement share one label.
pub(crate) async fn time_grpc_request(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let unimplemented = response.status() != StatusCode::OK
        || response
            .headers()
            .get("grpc-status")
            .is_some_and(|s| s.as_bytes() == b"12");
    metrics.grpc_request(
        (!unimplemented).then_some(path.as_str()),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// `GET /admin`: the live dashboard (or a sign-in form with 401/403).
pub(crate) async fn page(admin: Result<Admin, GatewayError>) -> Response {
    match admin {
        Ok(_) => Html(include_str!("admin.html")).into_response(),
        Err(e) => {
            let status = e.http_status();
            let body =
                include_str!("admin-login.html").replace("{{error}}", &html_escape(&e.to_string()));
            (status, Html(body)).into_response()
        }
    }
}

/// `POST /admin/session`: exchange a Bearer admin token for a cookie scoped to `/admin`.
///
/// # Errors
/// 401 without a Bearer token, else 401/403 as [`Admin`].
pub(crate) async fn session(
    State(auth): State<TokenAuth>,
    headers: HeaderMap,
    admin: Result<Admin, GatewayError>,
) -> Result<Response, GatewayError> {
    let token = bearer(&headers)
        .ok_or_else(|| GatewayError::Unauthenticated("missing Bearer token".into()))?;
    let Admin(user) = admin?;
    let remaining = user.exp.saturating_sub(crate::event::now_ms() / 1000);
    set_cookie(
        ADMIN_COOKIE,
        token,
        "/admin",
        "Strict",
        remaining,
        auth.secure_cookies,
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
