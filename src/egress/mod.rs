//! Egress: the SSE stream, live subscription changes and the session-cookie exchange.

pub mod session;
pub mod sse;
pub mod subscriptions;
mod token;

pub use token::{authenticate, authenticate_with, bearer as bearer_token, TransportKill, COOKIE};

use serde::Serialize;

use crate::app::AppState;
use crate::auth::Subscriber;
use crate::channel::ChannelName;

/// A channel the user asked for and may not read.
#[derive(Debug, Clone, Serialize)]
pub struct Denied {
    /// The channel.
    pub channel: String,
    /// Why.
    pub reason: String,
}

/// Splits requested channels into granted and denied for `user`.
pub fn authorize(
    state: &AppState,
    user: &Subscriber,
    requested: Vec<ChannelName>,
) -> (Vec<ChannelName>, Vec<Denied>) {
    let mut granted = Vec::new();
    let mut denied = Vec::new();
    for ch in requested {
        if user.claim_allows(&ch) || state.config.channel_types.rule_allows(&ch, &user.sub) {
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
