//! `POST /api/sse/subscriptions`: add and remove channels of an open stream without reconnecting.
//! A channel added live starts from live events (no replay).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{authenticate, authorize, Denied};
use crate::app::AppState;
use crate::channel::ChannelName;
use crate::error::GatewayError;
use crate::event::render_control;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// From the stream's `ready` event.
    pub connection_id: String,
    /// Channels to add.
    #[serde(default)]
    pub add: Vec<String>,
    /// Channels to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The response body, also sent on the stream as `event: subscriptions`.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// Channels the stream now carries.
    pub channels: Vec<ChannelName>,
    /// Channels of `add` that were refused.
    pub denied: Vec<Denied>,
}

/// `POST /api/sse/subscriptions`.
///
/// # Errors
/// 400 bad body or channel, 401 bad token, 403 another user's connection, 404 unknown connection.
pub async fn change(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Outcome>, GatewayError> {
    let user = authenticate(&state, &headers, None)?;
    let change: Change = serde_json::from_slice(&body)
        .map_err(|e| GatewayError::InvalidArgument(format!("invalid JSON body: {e}")))?;
    let limit = state.config.raw.limits.max_channels_per_connection;
    // Channels over the per-connection limit are denied one by one below; this only bounds
    // the work one request can ask for.
    let max_list = limit.saturating_mul(4).max(256);
    if change.add.len() > max_list || change.remove.len() > max_list {
        return Err(GatewayError::InvalidArgument(format!(
            "add and remove hold at most {max_list} channels each"
        )));
    }
    let types = &state.config.channel_types;
    let add = change
        .add
        .iter()
        .map(|c| types.parse_name(c))
        .collect::<Result<Vec<_>, _>>()?;
    let remove = change
        .remove
        .iter()
        .map(|c| types.parse_name(c))
        .collect::<Result<Vec<_>, _>>()?;
    let conn = state
        .hub
        .connection(&change.connection_id)
        .ok_or_else(|| GatewayError::NotFound("unknown connection_id".into()))?;
    if conn.sub != user.sub {
        return Err(GatewayError::PermissionDenied(
            "the connection belongs to another user".into(),
        ));
    }
    let (granted, mut denied) = authorize(&state, &user, add);
    let current: std::collections::BTreeSet<ChannelName> = conn.channels().into_iter().collect();
    let mut room = limit.saturating_sub(current.iter().filter(|c| !remove.contains(c)).count());
    let mut accepted = Vec::new();
    for ch in granted {
        if current.contains(&ch) && !remove.contains(&ch) {
            continue;
        }
        if room == 0 {
            denied.push(Denied {
                channel: ch.to_string(),
                reason: format!("over the limit of {limit} channels per connection"),
            });
            continue;
        }
        room -= 1;
        accepted.push(ch);
    }
    let channels = state
        .hub
        .update_channels(&conn, &accepted, &remove)
        .ok_or_else(|| GatewayError::NotFound("unknown connection_id".into()))?;
    let outcome = Outcome { channels, denied };
    state
        .hub
        .send_control(&conn, render_control("subscriptions", &outcome));
    Ok(Json(outcome))
}
