//! The publish pipeline: validate each event once (channel, permission, size, JSON, event name,
//! idempotency key) → publisher rate limit → append to the log. Owned by the gRPC `Publisher`
//! service; nothing else appends.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::pb::PublishRequest;
use super::RateLimiter;
use crate::broker::{AppendOutcome, Broker};
use crate::config::{Config, Publisher};
use crate::error::GatewayError;
use crate::event::{compact_json, parse_event_name, Audience, NewEvent, DEFAULT_MAX_JSON_DEPTH};
use crate::live::Live;
use crate::metrics::Metrics;

/// Most bytes in an idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Publisher permissions by certificate name; a reload replaces them.
pub type Publishers = Live<BTreeMap<String, Publisher>>;

/// Validate → rate limit → append, with the handles that takes.
#[derive(Clone)]
pub struct Pipeline {
    /// Channel types and limits (the start-up configuration).
    pub(crate) config: Arc<Config>,
    /// Who may publish where, read per request.
    pub(crate) publishers: Publishers,
    /// Per-publisher rate limit.
    pub(crate) limiter: Arc<RateLimiter>,
    /// The log events are appended to.
    pub(crate) broker: Broker,
    /// Publish counters.
    pub(crate) metrics: Arc<Metrics>,
    /// Once cancelled, nothing more is accepted.
    pub(crate) shutdown: CancellationToken,
}

impl Pipeline {
    /// Validates one publish request from `publisher` into an event ready to append.
    ///
    /// # Errors
    /// The [`GatewayError`] of the first rule it breaks.
    fn validate(&self, publisher: &str, req: PublishRequest) -> Result<NewEvent, GatewayError> {
        let channel = self.config.channel_types.parse_name(&req.channel)?;
        // Read per request: a reload replaces the permissions for the next publish.
        let allowed = self
            .publishers
            .load()
            .get(publisher)
            .is_some_and(|p| p.channels.iter().any(|pat| pat.matches(&channel, None)));
        if !allowed {
            return Err(GatewayError::PermissionDenied(format!(
                "publisher {publisher:?} may not publish to {channel}"
            )));
        }
        let max = self.config.limits.max_event_bytes;
        if req.data.len() > max {
            return Err(GatewayError::EventTooLarge {
                size: req.data.len(),
                max,
            });
        }
        let payload = compact_json(&req.data, DEFAULT_MAX_JSON_DEPTH)?;
        let event = parse_event_name(&req.event)?;
        let idempotency_key = if req.idempotency_key.is_empty() {
            None
        } else if req.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(GatewayError::InvalidArgument(format!(
                "idempotency_key is {} bytes, over {MAX_IDEMPOTENCY_KEY}",
                req.idempotency_key.len()
            )));
        } else {
            Some(req.idempotency_key)
        };
        let audience = req
            .audience
            .map(|a| Audience {
                user_ids: a.user_ids,
                roles: a.roles,
            })
            .filter(|a| !a.user_ids.is_empty() || !a.roles.is_empty());
        Ok(NewEvent {
            channel,
            event,
            payload,
            idempotency_key,
            audience,
        })
    }

    /// Validates a whole batch, then appends it; nothing is appended when any event is bad.
    ///
    /// # Errors
    /// The first validation error (prefixed with the event's index), rate limit, or
    /// [`GatewayError::Unavailable`].
    pub(crate) async fn publish_many(
        &self,
        publisher: &str,
        requests: Vec<PublishRequest>,
    ) -> Result<Vec<AppendOutcome>, GatewayError> {
        if self.shutdown.is_cancelled() {
            return Err(GatewayError::ShuttingDown);
        }
        let single = requests.len() == 1;
        let mut events = Vec::with_capacity(requests.len());
        for (i, req) in requests.into_iter().enumerate() {
            match self.validate(publisher, req) {
                Ok(ev) => events.push(ev),
                Err(e) => {
                    self.metrics.published_by(publisher, result_label(&e), 1);
                    tracing::debug!(%publisher, error = %e, "publish rejected");
                    return Err(if single { e } else { with_index(e, i) });
                }
            }
        }
        if !self.limiter.take(publisher, events.len()) {
            self.metrics
                .published_by(publisher, "rate_limited", events.len() as u64);
            return Err(GatewayError::RateLimited(format!(
                "publisher {publisher:?} is over {} events/s",
                self.config.limits.publisher_events_per_sec
            )));
        }
        self.append(publisher, events).await
    }
}

/// What became of the requests of one [`Pipeline::publish_each`] call.
pub(crate) struct EachOutcome {
    /// The outcomes of the leading requests that were appended, in order.
    pub(crate) outcomes: Vec<AppendOutcome>,
    /// Why the request after them was not appended (the rest were not looked at).
    pub(crate) error: Option<GatewayError>,
}

impl Pipeline {
    /// Publishes requests that each stand alone (the requests of a `PublishStream` waiting to be
    /// read), with exactly the result each would get on its own, in order, but in one append:
    /// the leading requests that pass validation and the rate limit are appended as one batch;
    /// the first that does not ends it with its own error (no index: it is one request).
    ///
    /// When the append fails, `outcomes` is empty and `error` is the append's error: it answers
    /// the first of them, as it would have alone.
    pub(crate) async fn publish_each(
        &self,
        publisher: &str,
        requests: Vec<PublishRequest>,
    ) -> EachOutcome {
        if self.shutdown.is_cancelled() {
            return EachOutcome {
                outcomes: Vec::new(),
                error: Some(GatewayError::ShuttingDown),
            };
        }
        let mut events = Vec::with_capacity(requests.len());
        let mut error = None;
        for req in requests {
            match self.validate(publisher, req) {
                Ok(ev) => events.push(ev),
                Err(e) => {
                    self.metrics.published_by(publisher, result_label(&e), 1);
                    tracing::debug!(%publisher, error = %e, "publish rejected");
                    error = Some(e);
                    break;
                }
            }
        }
        let admitted = self.limiter.take_up_to(publisher, events.len());
        if admitted < events.len() {
            // Only the first one over the limit is answered; the stream ends with it.
            events.truncate(admitted);
            self.metrics.published_by(publisher, "rate_limited", 1);
            error = Some(GatewayError::RateLimited(format!(
                "publisher {publisher:?} is over {} events/s",
                self.config.limits.publisher_events_per_sec
            )));
        }
        if events.is_empty() {
            return EachOutcome {
                outcomes: Vec::new(),
                error,
            };
        }
        match self.append(publisher, events).await {
            Ok(outcomes) => EachOutcome { outcomes, error },
            Err(e) => EachOutcome {
                outcomes: Vec::new(),
                error: Some(e),
            },
        }
    }

    /// Appends validated events, counting the results.
    async fn append(
        &self,
        publisher: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<AppendOutcome>, GatewayError> {
        let n = events.len() as u64;
        match self.broker.append(publisher, events).await {
            Ok(outcomes) => {
                let dups = outcomes.iter().filter(|o| o.duplicate).count() as u64;
                self.metrics.published_by(publisher, "ok", n - dups);
                if dups > 0 {
                    self.metrics.published_by(publisher, "duplicate", dups);
                }
                Ok(outcomes)
            }
            Err(e) => {
                self.metrics.published_by(publisher, result_label(&e), n);
                self.metrics.broker_errors.inc();
                tracing::warn!(%publisher, error = %e, "publish failed");
                Err(e)
            }
        }
    }
}

fn with_index(err: GatewayError, i: usize) -> GatewayError {
    match err {
        GatewayError::InvalidChannel(m) => {
            GatewayError::InvalidChannel(format!("events[{i}]: {m}"))
        }
        GatewayError::InvalidData(m) => GatewayError::InvalidData(format!("events[{i}]: {m}")),
        GatewayError::InvalidArgument(m) => {
            GatewayError::InvalidArgument(format!("events[{i}]: {m}"))
        }
        GatewayError::PermissionDenied(m) => {
            GatewayError::PermissionDenied(format!("events[{i}]: {m}"))
        }
        other => other,
    }
}

fn result_label(err: &GatewayError) -> &'static str {
    match err {
        GatewayError::PermissionDenied(_) => "denied",
        GatewayError::EventTooLarge { .. } => "too_large",
        GatewayError::Unavailable(_) | GatewayError::ShuttingDown => "unavailable",
        GatewayError::RateLimited(_) => "rate_limited",
        _ => "invalid",
    }
}
