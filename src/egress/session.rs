//! `POST`/`DELETE /api/sse/session`: exchange a Bearer token for an HttpOnly cookie, so a page's
//! `EventSource` authenticates without a token in its URL.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::token::{bearer, COOKIE};
use crate::app::AppState;
use crate::error::GatewayError;

/// `POST /api/sse/session`.
///
/// # Errors
/// 401 when the Bearer token is missing or invalid.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    let token = bearer(&headers).ok_or_else(|| {
        GatewayError::Unauthenticated("missing token: send Authorization: Bearer <jwt>".into())
    })?;
    let user = state.verifier.verify(token)?;
    let remaining = user.exp.saturating_sub(crate::event::now_ms() / 1000);
    if remaining == 0 {
        return Err(GatewayError::Unauthenticated("token expired".into()));
    }
    set_cookie(COOKIE, token, "/api/sse", "Lax", remaining, state.tls)
}

/// `DELETE /api/sse/session`: clears the cookie.
///
/// # Errors
/// Never in practice.
pub async fn delete(State(state): State<AppState>) -> Result<Response, GatewayError> {
    set_cookie(COOKIE, "", "/api/sse", "Lax", 0, state.tls)
}

/// A 204 that sets an HttpOnly cookie (`Secure` behind TLS); an empty value with `max_age`
/// 0 clears it.
///
/// # Errors
/// [`GatewayError::InvalidArgument`] when the value cannot be a cookie.
pub fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    same_site: &str,
    max_age: u64,
    tls: bool,
) -> Result<Response, GatewayError> {
    let cookie = format!(
        "{name}={value}; HttpOnly; Path={path}; SameSite={same_site}; Max-Age={max_age}{}",
        if tls { "; Secure" } else { "" }
    );
    let value = HeaderValue::from_str(&cookie)
        .map_err(|_| GatewayError::InvalidArgument("token is not a valid cookie value".into()))?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(http::header::SET_COOKIE, value);
    Ok(response)
}
