//! `POST`/`DELETE /api/sse/session`: exchange a Bearer token for an HttpOnly cookie, so a page's
//! `EventSource` authenticates without a token in its URL.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use crate::auth::{bearer, set_cookie, TokenAuth, COOKIE};
use crate::error::GatewayError;

/// `POST /api/sse/session`.
///
/// # Errors
/// 401 when the Bearer token is missing or invalid.
pub(crate) async fn create(
    State(auth): State<TokenAuth>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    let token = bearer(&headers).ok_or_else(|| {
        GatewayError::Unauthenticated("missing token: send Authorization: Bearer <jwt>".into())
    })?;
    let user = auth.verify(token)?;
    let remaining = user.exp.saturating_sub(crate::event::now_ms() / 1000);
    if remaining == 0 {
        return Err(GatewayError::Unauthenticated("token expired".into()));
    }
    set_cookie(
        COOKIE,
        token,
        "/api/sse",
        "Lax",
        remaining,
        auth.secure_cookies,
    )
}

/// `DELETE /api/sse/session`: clears the cookie.
///
/// # Errors
/// Never in practice.
pub(crate) async fn delete(State(auth): State<TokenAuth>) -> Result<Response, GatewayError> {
    set_cookie(COOKIE, "", "/api/sse", "Lax", 0, auth.secure_cookies)
}
