//! Egress: the SSE stream, live subscription changes and the session-cookie exchange.

pub(crate) mod session;
pub(crate) mod sse;
pub(crate) mod subscriptions;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::auth::Subscriber;
use crate::channel::{ChannelName, ChannelTypes};

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

/// Splits requested channels into granted and denied for `user`.
pub(crate) fn authorize(
    types: &ChannelTypes,
    user: &Subscriber,
    requested: Vec<ChannelName>,
) -> (Vec<ChannelName>, Vec<Denied>) {
    let mut granted = Vec::new();
    let mut denied = Vec::new();
    for ch in requested {
        if user.claim_allows(&ch) || types.rule_allows(&ch, &user.sub) {
            granted.push(ch);
        } else {
            denied.push(Denied {
                channel: ch.to_string(),
                reason: "not permitted by the token's channels claim or a subscribe rule"
                    .to_owned(),
            });
        }
    }
    (granted, denied)
}
