//! Egress: the SSE stream, live subscription changes and the session-cookie exchange.

pub(crate) mod session;
pub(crate) mod sse;
pub(crate) mod subscriptions;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::auth::Subscriber;
use crate::authz::{Authorizer, Verdict, UNAVAILABLE};
use crate::channel::{ChannelName, ChannelTypes};
use crate::config::AuthzMode;

/// Request extension set by the HTTP server: cancelling it drops the request's transport
/// connection (HTTP/1.1 only, where the connection is the stream's alone).
#[derive(Clone)]
pub(crate) struct TransportKill(pub(crate) CancellationToken);

/// A channel the user asked for and may not read, and why (sent in `ready` and `subscriptions`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Denied {
    pub(crate) channel: String,
    pub(crate) reason: String,
}

/// Why a channel no claim or rule grants is denied (without a callback, or in `always` mode).
const NOT_IN_TOKEN: &str = "not permitted by the token's channels claim or a subscribe rule";

/// Splits requested channels into granted and denied for `user`, in the order requested.
///
/// The token's `channels` claim and the subscribe rules decide first. With `[authz]`, the
/// app's callback is then asked once, for the channels they do not grant (`fallback`) or for
/// every channel they grant (`always`: both must allow); see [`crate::authz`].
pub(crate) async fn authorize(
    types: &ChannelTypes,
    authz: &Authorizer,
    user: &Subscriber,
    requested: Vec<ChannelName>,
) -> (Vec<ChannelName>, Vec<Denied>) {
    let by_token: Vec<bool> = requested
        .iter()
        .map(|ch| user.claim_allows(ch) || types.rule_allows(ch, &user.sub))
        .collect();
    let backend = authz.current();
    let mode = backend.as_ref().as_ref().map(|b| b.mode());
    // Whether the callback decides a channel the token does or does not grant.
    let asked = |granted_by_token: bool| match mode {
        None => false,
        Some(AuthzMode::Fallback) => !granted_by_token,
        Some(AuthzMode::Always) => granted_by_token,
    };
    let ask: Vec<ChannelName> = requested
        .iter()
        .zip(&by_token)
        .filter(|(_, &t)| asked(t))
        .map(|(ch, _)| ch.clone())
        .collect();
    let mut answers = match backend.as_ref() {
        Some(backend) if !ask.is_empty() => authz.check(backend, user, &ask).await,
        _ => Default::default(),
    };
    let mut granted = Vec::new();
    let mut denied = Vec::new();
    for (ch, by_token) in requested.into_iter().zip(by_token) {
        let verdict = if asked(by_token) {
            answers
                .remove(&ch)
                .unwrap_or_else(|| Verdict::Deny(UNAVAILABLE.into()))
        } else if by_token {
            Verdict::Allow
        } else {
            Verdict::Deny(NOT_IN_TOKEN.into())
        };
        match verdict {
            Verdict::Allow => granted.push(ch),
            Verdict::Deny(reason) => denied.push(Denied {
                channel: ch.to_string(),
                reason: reason.to_string(),
            }),
        }
    }
    (granted, denied)
}
