//! Authentication as extractors: a handler that takes a [`Subscriber`] or an [`Admin`] runs only
//! for a verified token. The token comes from `Authorization: Bearer`, else a cookie, else — only
//! when `[http] allow_query_token` is set — the `access_token` query parameter.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{JwtVerifier, Revocations, Subscriber};
use crate::error::GatewayError;
use crate::live::Live;

/// The subscriber session cookie (scoped to `/api/sse`).
pub const COOKIE: &str = "sse_token";

/// The admin page's cookie (scoped to `/admin`).
pub const ADMIN_COOKIE: &str = "sse_admin_token";

/// What the extractors need from the application state.
#[derive(Clone)]
pub struct TokenAuth {
    /// The current verifier (a reload replaces it).
    pub verifier: Live<JwtVerifier>,
    /// Whether `?access_token=` is accepted.
    pub allow_query_token: bool,
    /// Whether cookies get `Secure` (the HTTP listener speaks TLS).
    pub secure_cookies: bool,
    /// Users whose earlier tokens are refused (`Control.Disconnect` with `revoke_tokens`).
    pub revocations: Arc<Revocations>,
}

impl TokenAuth {
    /// Verifies a token with the current key.
    ///
    /// # Errors
    /// [`GatewayError::Unauthenticated`] when it does not verify, or was revoked.
    pub fn verify(&self, token: &str) -> Result<Subscriber, GatewayError> {
        let user = self.verifier.load().verify(token)?;
        if self
            .revocations
            .is_revoked(&user.sub, user.iat, crate::event::now_ms())
        {
            return Err(GatewayError::Unauthenticated("token revoked".to_owned()));
        }
        Ok(user)
    }

    /// Finds the request's token (bearer, then `cookies` in order, then the query when allowed)
    /// and verifies it.
    ///
    /// # Errors
    /// [`GatewayError::Unauthenticated`] when no token is found or it does not verify.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        cookies: &[&str],
        query: Option<&str>,
    ) -> Result<Subscriber, GatewayError> {
        let query_token = query.and_then(query_token);
        let token = bearer(headers)
            .or_else(|| cookies.iter().find_map(|name| cookie(headers, name)))
            .or_else(|| query_token.as_deref().filter(|_| self.allow_query_token))
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
        self.verify(token)
    }
}

impl<S> FromRequestParts<S> for Subscriber
where
    TokenAuth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = GatewayError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        TokenAuth::from_ref(state).authenticate(&parts.headers, &[COOKIE], parts.uri.query())
    }
}

/// A subscriber holding the `admin` role: 401 without a valid token, 403 without the role. The
/// admin page's own cookie is looked at first.
#[derive(Debug, Clone)]
pub struct Admin(pub Subscriber);

impl<S> FromRequestParts<S> for Admin
where
    TokenAuth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = GatewayError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let user = TokenAuth::from_ref(state).authenticate(
            &parts.headers,
            &[ADMIN_COOKIE, COOKIE],
            parts.uri.query(),
        )?;
        if user.has_role("admin") {
            Ok(Self(user))
        } else {
            Err(GatewayError::PermissionDenied(
                "the admin endpoints need a token with role \"admin\"".into(),
            ))
        }
    }
}

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
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
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

/// The `access_token` query parameter.
fn query_token(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
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
