//! Health, readiness, Prometheus metrics, and the admin JSON endpoints and live page.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::app::AppState;
use crate::auth::Subscriber;
use crate::egress::session::set_cookie;
use crate::egress::{authenticate_with, COOKIE};
use crate::error::GatewayError;

/// The cookie the admin page authenticates with (scoped to `/admin`).
pub const ADMIN_COOKIE: &str = "sse_admin_token";

/// `GET /health`.
pub async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "connections": state.hub.connection_count(),
        "channels": state.hub.channel_count(),
        "uptime_s": state.started.elapsed().as_secs(),
    }))
}

/// `GET /ready`: 200 when the broker answers, else 503.
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.broker.ready().await {
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
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let mut response = state.metrics.render().into_response();
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

fn query_token(raw: Option<&str>) -> Option<String> {
    form_urlencoded::parse(raw?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

/// Requires a token with role `admin`: 401 without a valid token, 403 without the role.
fn require_admin(
    state: &AppState,
    headers: &HeaderMap,
    raw_query: Option<&str>,
) -> Result<Subscriber, GatewayError> {
    let user = authenticate_with(
        state,
        headers,
        &[ADMIN_COOKIE, COOKIE],
        query_token(raw_query).as_deref(),
    )?;
    if user.has_role("admin") {
        Ok(user)
    } else {
        Err(GatewayError::PermissionDenied(
            "the admin endpoints need a token with role \"admin\"".into(),
        ))
    }
}

/// `GET /admin/connections`.
///
/// # Errors
/// 401/403 as [`require_admin`].
pub async fn connections(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, GatewayError> {
    require_admin(&state, &headers, q.as_deref())?;
    Ok(Json(state.hub.connections()).into_response())
}

/// `GET /admin/channels`.
///
/// # Errors
/// 401/403 as [`require_admin`].
pub async fn channels(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, GatewayError> {
    require_admin(&state, &headers, q.as_deref())?;
    let list: Vec<_> = state
        .hub
        .channels()
        .into_iter()
        .map(|(channel, subscribers)| json!({"channel": channel, "subscribers": subscribers}))
        .collect();
    Ok(Json(list).into_response())
}

/// `GET /admin`: the live dashboard (or a sign-in form with 401/403).
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    match require_admin(&state, &headers, q.as_deref()) {
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
/// 401/403 as [`require_admin`].
pub async fn session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    let token = crate::egress::bearer_token(&headers)
        .ok_or_else(|| GatewayError::Unauthenticated("missing Bearer token".into()))?;
    let user = require_admin(&state, &headers, None)?;
    let remaining = user.exp.saturating_sub(crate::event::now_ms() / 1000);
    set_cookie(
        ADMIN_COOKIE,
        token,
        "/admin",
        "Strict",
        remaining,
        state.tls,
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
