//! Live revocation: the gRPC `Control` service and what it does to subscribers' streams.
//!
//! A command (`Disconnect`, `Unsubscribe`) takes effect on every node of the gateway:
//!
//! ```text
//! service   gRPC Control → control permission (`[[publishers]] control = true`) → validate
//! Control   memory broker: apply on this node
//!           redis broker:  carry through Redis first (a control stream, and the revocations
//!                          hash) → apply on this node; every other node's control tail
//!                          applies it from the stream within a second
//! Node      the local effect: close the user's streams (`event: revoked`), remember a
//!           token revocation, remove channels (`event: subscriptions`) and forget the
//!           user's cached `[authz]` answers
//! ```
//!
//! On Redis nothing is applied anywhere unless Redis accepted the command: a call that Redis
//! did not answer in time is `UNAVAILABLE` and Redis refuses it if it arrives later.

mod redis;
pub(crate) mod service;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Revocations;
use crate::authz::Authorizer;
use crate::channel::{ChannelName, ChannelPattern};
use crate::config::BrokerConfig;
use crate::error::GatewayError;
use crate::event::{now_ms, render_control};
use crate::hub::Hub;
use crate::metrics::Metrics;

use self::redis::RedisCarrier;

/// Most bytes in a `user_id` or a `reason`.
pub const MAX_FIELD_BYTES: usize = 1024;

/// The `revoked` reason when the caller gives none.
const DEFAULT_DISCONNECT_REASON: &str = "disconnected by the application";
/// The denial reason of a removed channel when the caller gives none.
const DEFAULT_UNSUBSCRIBE_REASON: &str = "access removed by the application";

/// A validated control command, as carried between nodes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Command {
    /// Close the user's streams; with `revoke_at_ms`, refuse their tokens issued before it.
    Disconnect {
        /// The user (`sub`).
        user_id: String,
        /// Sent in `event: revoked`.
        reason: String,
        /// Revocation time (ms since the epoch), set by whoever stamps the command (Redis's
        /// clock on the Redis broker, this node's on the memory broker).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revoke_at_ms: Option<u64>,
    },
    /// Remove the channels matching `pattern` from the user's streams.
    Unsubscribe {
        /// The user (`sub`).
        user_id: String,
        /// A channel pattern (parsed again where applied; validated by the caller).
        pattern: String,
        /// The removed channels' denial reason.
        reason: String,
    },
}

impl Command {
    /// A `Disconnect` after checking its fields; `revoke` asks for a token revocation (the
    /// time is stamped when it is carried).
    ///
    /// # Errors
    /// [`GatewayError::InvalidArgument`] for an empty or oversized field.
    pub(crate) fn disconnect(
        user_id: String,
        reason: String,
        revoke: bool,
    ) -> Result<Self, GatewayError> {
        check_user(&user_id)?;
        Ok(Self::Disconnect {
            user_id,
            reason: reason_or(reason, DEFAULT_DISCONNECT_REASON)?,
            revoke_at_ms: revoke.then_some(0),
        })
    }

    /// An `Unsubscribe` after checking its fields and parsing `pattern`.
    ///
    /// # Errors
    /// [`GatewayError::InvalidArgument`] for an empty or oversized field,
    /// [`GatewayError::InvalidChannel`] for a pattern that does not parse.
    pub(crate) fn unsubscribe(
        user_id: String,
        pattern: String,
        reason: String,
    ) -> Result<Self, GatewayError> {
        check_user(&user_id)?;
        if pattern.is_empty() {
            return Err(GatewayError::InvalidArgument("pattern is required".into()));
        }
        ChannelPattern::parse(&pattern)?;
        Ok(Self::Unsubscribe {
            user_id,
            pattern,
            reason: reason_or(reason, DEFAULT_UNSUBSCRIBE_REASON)?,
        })
    }

    /// Whether this command revokes tokens.
    fn revokes(&self) -> bool {
        matches!(
            self,
            Self::Disconnect {
                revoke_at_ms: Some(_),
                ..
            }
        )
    }

    /// The user it acts on.
    fn user_id(&self) -> &str {
        match self {
            Self::Disconnect { user_id, .. } | Self::Unsubscribe { user_id, .. } => user_id,
        }
    }

    /// The command with its revocation (if it asks for one) stamped at `at_ms`.
    fn stamped(mut self, at_ms: u64) -> Self {
        if let Self::Disconnect {
            revoke_at_ms: Some(t),
            ..
        } = &mut self
        {
            *t = at_ms;
        }
        self
    }
}

fn check_user(user_id: &str) -> Result<(), GatewayError> {
    if user_id.is_empty() {
        return Err(GatewayError::InvalidArgument("user_id is required".into()));
    }
    if user_id.len() > MAX_FIELD_BYTES {
        return Err(GatewayError::InvalidArgument(format!(
            "user_id is {} bytes, over {MAX_FIELD_BYTES}",
            user_id.len()
        )));
    }
    Ok(())
}

fn reason_or(reason: String, default: &str) -> Result<String, GatewayError> {
    if reason.len() > MAX_FIELD_BYTES {
        return Err(GatewayError::InvalidArgument(format!(
            "reason is {} bytes, over {MAX_FIELD_BYTES}",
            reason.len()
        )));
    }
    Ok(if reason.is_empty() {
        default.to_owned()
    } else {
        reason
    })
}

/// A channel removed from a stream, as the `subscriptions` event lists it.
#[derive(Serialize)]
struct Removed<'a> {
    channel: &'a ChannelName,
    reason: &'a str,
}

/// The `subscriptions` event of a stream that lost channels: the same shape as after
/// `POST /api/sse/subscriptions`, with the removed channels denied.
#[derive(Serialize)]
struct Subscriptions<'a> {
    channels: &'a [ChannelName],
    denied: &'a [Removed<'a>],
}

/// This node's side of a command: what it does to the streams, tokens and cached answers here.
pub(crate) struct Node {
    hub: Arc<Hub>,
    revocations: Arc<Revocations>,
    /// The `[authz]` answer cache, forgotten per user by `Unsubscribe`.
    authz: Authorizer,
    max_channels: usize,
}

impl Node {
    /// This node's hub, token revocations and authorizer cache; `max_channels` is the
    /// per-connection channel limit the hub enforces on changes.
    pub(crate) fn new(
        hub: Arc<Hub>,
        revocations: Arc<Revocations>,
        authz: Authorizer,
        max_channels: usize,
    ) -> Self {
        Self {
            hub,
            revocations,
            authz,
            max_channels,
        }
    }

    /// Applies `command` on this node; returns the streams it affected here.
    fn apply(&self, command: &Command) -> u32 {
        let n = match command {
            Command::Disconnect {
                user_id,
                reason,
                revoke_at_ms,
            } => self.apply_disconnect_locally(user_id, reason, *revoke_at_ms),
            Command::Unsubscribe {
                user_id,
                pattern,
                reason,
            } => match ChannelPattern::parse(pattern) {
                Ok(pattern) => self.apply_unsubscribe_locally(user_id, &pattern, reason),
                Err(e) => {
                    tracing::warn!(error = %e, "control command with a bad pattern ignored");
                    0
                }
            },
        };
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Remembers the revocation (if any), then closes each of the user's streams here with
    /// `event: revoked`.
    fn apply_disconnect_locally(
        &self,
        user_id: &str,
        reason: &str,
        revoke_at_ms: Option<u64>,
    ) -> usize {
        // Revoke first: a stream reopened right after its close must meet the revocation.
        if let Some(at) = revoke_at_ms {
            self.revocations.revoke(user_id, at, now_ms());
        }
        let frame = render_control("revoked", &serde_json::json!({ "reason": reason }));
        let closed = self
            .hub
            .user_connections(user_id)
            .iter()
            .filter(|c| self.hub.close_with(c, frame.clone()))
            .count();
        tracing::info!(%user_id, streams = closed, revoked_tokens = revoke_at_ms.is_some(), "user disconnected");
        closed
    }

    /// Drops the user's cached `[authz]` answers (the next stream open or subscription change
    /// asks the app again), then removes the channels matching `pattern` from each of the
    /// user's streams here (each that lost one gets `event: subscriptions`). Every node runs an
    /// `Unsubscribe` through here. Returns the streams that lost a channel.
    pub(crate) fn apply_unsubscribe_locally(
        &self,
        user_id: &str,
        pattern: &ChannelPattern,
        reason: &str,
    ) -> usize {
        // First: a subscription racing with this must not be granted from a stale answer.
        self.authz.forget_user(user_id);
        let mut affected = 0;
        for conn in self.hub.user_connections(user_id) {
            let remove: Vec<ChannelName> = conn
                .channels()
                .into_iter()
                .filter(|c| pattern.matches(c, Some(user_id)))
                .collect();
            if remove.is_empty() {
                continue;
            }
            // A stream that closed meanwhile is not counted.
            let Ok((channels, _)) =
                self.hub
                    .update_channels_bounded(&conn, &[], &remove, self.max_channels)
            else {
                continue;
            };
            let denied: Vec<Removed<'_>> = remove
                .iter()
                .map(|channel| Removed { channel, reason })
                .collect();
            let frame = render_control(
                "subscriptions",
                &Subscriptions {
                    channels: &channels,
                    denied: &denied,
                },
            );
            self.hub.send_control(&conn, frame);
            affected += 1;
        }
        tracing::info!(%user_id, %pattern, streams = affected, "channels removed from user's streams");
        affected
    }
}

/// How commands reach every node.
#[derive(Clone)]
enum Carrier {
    /// One node: apply here.
    Local,
    /// Through Redis to every node.
    Redis(Arc<RedisCarrier>),
}

/// The handle the `Control` service and the admin endpoint act through.
#[derive(Clone)]
pub(crate) struct Control {
    node: Arc<Node>,
    carrier: Carrier,
}

impl Control {
    /// Control for one node (the memory broker).
    pub(crate) fn local(node: Node) -> Self {
        Self {
            node: Arc::new(node),
            carrier: Carrier::Local,
        }
    }

    /// Control carried through the Redis broker at `broker` to every node; starts this node's
    /// control tail on `tasks`. Revocations Redis holds are loaded now when it answers (else
    /// by the tail once it does).
    ///
    /// # Errors
    /// When the URL is invalid.
    pub(crate) async fn redis(
        broker: &BrokerConfig,
        node: Node,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> anyhow::Result<Self> {
        let node = Arc::new(node);
        let carrier = RedisCarrier::connect(broker, node.clone(), metrics, shutdown, tasks).await?;
        Ok(Self {
            node,
            carrier: Carrier::Redis(carrier),
        })
    }

    /// Carries `command` to every node and applies it here; returns the streams it affected
    /// on this node.
    ///
    /// # Errors
    /// [`GatewayError::Unavailable`] when Redis did not accept it (then no node applies it).
    pub(crate) async fn execute(&self, command: Command) -> Result<u32, GatewayError> {
        let command = match &self.carrier {
            Carrier::Local => command.stamped(now_ms()),
            Carrier::Redis(redis) => redis.send(command).await?,
        };
        Ok(self.node.apply(&command))
    }

    /// The open connection `id` on this node, closed with `event: revoked`. Returns whether
    /// it was open.
    pub(crate) fn disconnect_connection(
        &self,
        id: &str,
        reason: String,
    ) -> Result<bool, GatewayError> {
        let reason = reason_or(reason, DEFAULT_DISCONNECT_REASON)?;
        let Some(conn) = self.node.hub.connection(id) else {
            return Ok(false);
        };
        let frame = render_control("revoked", &serde_json::json!({ "reason": reason }));
        Ok(self.node.hub.close_with(&conn, frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_checked_at_the_edge() {
        assert!(matches!(
            Command::disconnect(String::new(), String::new(), false),
            Err(GatewayError::InvalidArgument(_))
        ));
        assert!(matches!(
            Command::unsubscribe("u".into(), "logs:**:x".into(), String::new()),
            Err(GatewayError::InvalidChannel(_))
        ));
        assert!(matches!(
            Command::unsubscribe("u".into(), String::new(), String::new()),
            Err(GatewayError::InvalidArgument(_))
        ));
        let long = "x".repeat(MAX_FIELD_BYTES + 1);
        assert!(Command::disconnect("u".into(), long, false).is_err());
        let c = Command::disconnect("u".into(), String::new(), true).unwrap();
        assert!(c.revokes());
        assert_eq!(
            c.stamped(42),
            Command::Disconnect {
                user_id: "u".into(),
                reason: DEFAULT_DISCONNECT_REASON.into(),
                revoke_at_ms: Some(42)
            }
        );
    }

    #[test]
    fn commands_round_trip_through_their_wire_form() {
        let c = Command::unsubscribe("u".into(), "logs:ws1:**".into(), "bye".into()).unwrap();
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(
            text,
            r#"{"op":"unsubscribe","user_id":"u","pattern":"logs:ws1:**","reason":"bye"}"#
        );
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), c);
    }
}
