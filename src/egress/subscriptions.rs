//! `POST /api/sse/subscriptions`: add and remove channels of an open stream without reconnecting.
//! A channel added live starts from live events (no replay), preceded by its latest event when
//! its type keeps one (`snapshot`).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{authorize, Denied};
use crate::auth::Subscriber;
use crate::authz::Authorizer;
use crate::broker::Broker;
use crate::channel::ChannelName;
use crate::config::Config;
use crate::error::GatewayError;
use crate::event::render_control;
use crate::hub::Hub;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Change {
    /// From the stream's `ready` event.
    pub(crate) connection_id: String,
    /// Channels to add.
    #[serde(default)]
    pub(crate) add: Vec<String>,
    /// Channels to remove.
    #[serde(default)]
    pub(crate) remove: Vec<String>,
}

/// The response body, also sent on the stream as `event: subscriptions`.
#[derive(Debug, Serialize)]
pub(crate) struct Outcome {
    /// Channels the stream now carries.
    pub(crate) channels: Vec<ChannelName>,
    /// Channels of `add` that were refused.
    pub(crate) denied: Vec<Denied>,
}

/// `POST /api/sse/subscriptions`.
///
/// # Errors
/// 400 bad body or channel, 401 bad token, 403 another user's connection, 404 unknown connection.
pub(crate) async fn change(
    user: Subscriber,
    State(config): State<Arc<Config>>,
    State(hub): State<Arc<Hub>>,
    State(broker): State<Broker>,
    State(authz): State<Authorizer>,
    body: axum::body::Bytes,
) -> Result<Json<Outcome>, GatewayError> {
    let change: Change = serde_json::from_slice(&body)
        .map_err(|e| GatewayError::InvalidArgument(format!("invalid JSON body: {e}")))?;
    let limit = config.limits.max_channels_per_connection;
    // Channels over the per-connection limit are denied one by one below; this only bounds
    // the work one request can ask for.
    let max_list = limit.saturating_mul(4).max(256);
    if change.add.len() > max_list || change.remove.len() > max_list {
        return Err(GatewayError::InvalidArgument(format!(
            "add and remove hold at most {max_list} channels each"
        )));
    }
    let types = &config.channel_types;
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
    let conn = hub
        .connection(&change.connection_id)
        .ok_or_else(|| GatewayError::NotFound("unknown connection_id".into()))?;
    if conn.sub != user.sub {
        return Err(GatewayError::PermissionDenied(
            "the connection belongs to another user".into(),
        ));
    }
    let (granted, mut denied) = authorize(&config.channel_types, &authz, &user, add).await;
    let before = conn.channels();
    // The room is checked by the hub under its lock: concurrent changes cannot overshoot it.
    let (channels, refused) = hub.update_channels_bounded(&conn, &granted, &remove, limit)?;
    denied.extend(refused.into_iter().map(|ch| Denied {
        channel: ch.to_string(),
        reason: format!("over the limit of {limit} channels per connection"),
    }));
    let outcome = Outcome { channels, denied };
    hub.send_control(&conn, render_control("subscriptions", &outcome));
    // The latest values of the channels just added, read after the add: the stream writes one
    // only when it has sent that channel nothing as new meanwhile, and skips live events no
    // newer than it (see `sse`), so this read may race with live events freely.
    let added: Vec<ChannelName> = outcome
        .channels
        .iter()
        .filter(|c| !before.contains(c) && config.channel_types.snapshot_ttl(c).is_some())
        .cloned()
        .collect();
    if !added.is_empty() {
        match broker.latest(&added).await {
            Ok(latest) => {
                for ev in latest {
                    if ev.admits(&conn.sub, &conn.roles) {
                        hub.send_snapshot(&conn, ev);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read latest events; none sent"),
        }
    }
    Ok(Json(outcome))
}
