//! Where a subscriber's token comes from: `Authorization: Bearer`, else the `sse_token` cookie,
//! else (only when allowed) the `access_token` query parameter.

use axum::http::HeaderMap;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::auth::Subscriber;
use crate::error::GatewayError;

/// Request extension: cancelling it drops the request's transport connection (HTTP/1.1).
#[derive(Clone)]
pub struct TransportKill(pub CancellationToken);

/// The name of the session cookie.
pub const COOKIE: &str = "sse_token";

/// The bearer token of the `Authorization` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A cookie's value.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Authenticates a request by header, cookie or (when allowed) query token.
///
/// # Errors
/// [`GatewayError::Unauthenticated`] when no token is found or it does not verify.
pub fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Subscriber, GatewayError> {
    authenticate_with(state, headers, &[COOKIE], query_token)
}

/// Like [`authenticate`], with the cookies to look in, in order (the admin page has its own).
///
/// # Errors
/// [`GatewayError::Unauthenticated`] when no token is found or it does not verify.
pub fn authenticate_with(
    state: &AppState,
    headers: &HeaderMap,
    cookies: &[&str],
    query_token: Option<&str>,
) -> Result<Subscriber, GatewayError> {
    let token = bearer(headers)
        .or_else(|| cookies.iter().find_map(|name| cookie(headers, name)))
        .or_else(|| query_token.filter(|_| state.config.raw.http.allow_query_token))
        .ok_or_else(|| {
            GatewayError::Unauthenticated(if query_token.is_some() {
                "missing token (access_token in the query is disabled; use the Authorization header or the session cookie)".to_owned()
            } else {
                format!(
                    "missing token: send Authorization: Bearer <jwt> or the {} cookie",
                    cookies.first().copied().unwrap_or(COOKIE)
                )
            })
        })?;
    state.verifier.verify(token)
}
