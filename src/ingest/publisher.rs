//! The `ssegateway.v1.Publisher` service: identify the publisher by its client certificate,
//! validate each event once, append to the log.

use std::pin::Pin;

use futures_util::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::pb::{self, PublishBatchRequest, PublishBatchResponse, PublishRequest, PublishResponse};
use crate::app::AppState;
use crate::auth::mtls::publisher_name;
use crate::broker::AppendOutcome;
use crate::error::GatewayError;
use crate::event::{compact_json, parse_event_name, Audience, NewEvent};

/// Most events in one `PublishBatch`.
pub const MAX_BATCH: usize = 1000;
/// Most bytes in an idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// The Publisher service.
pub struct PublisherService {
    state: AppState,
}

impl PublisherService {
    /// A service over the shared application state.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// The generated server wrapper, with a message limit that fits a full batch of
    /// maximum-size events (anything larger is refused by the transport with `OUT_OF_RANGE`
    /// before it is buffered).
    pub fn into_server(self) -> pb::publisher_server::PublisherServer<Self> {
        let per_event = self
            .state
            .config
            .raw
            .limits
            .max_event_bytes
            .saturating_add(1024);
        let max = per_event
            .saturating_mul(MAX_BATCH)
            .clamp(4 * 1024 * 1024, 256 * 1024 * 1024);
        pb::publisher_server::PublisherServer::new(self).max_decoding_message_size(max)
    }
}

/// The publisher's certificate name.
fn identify<T>(req: &Request<T>) -> Result<String, GatewayError> {
    let certs = req.peer_certs().ok_or_else(|| {
        GatewayError::Unauthenticated("a client certificate is required".to_owned())
    })?;
    certs
        .first()
        .and_then(|c| publisher_name(c.as_ref()))
        .ok_or_else(|| {
            GatewayError::Unauthenticated("the client certificate carries no name".to_owned())
        })
}

impl AppState {
    /// Validates one publish request from `publisher` into an event ready to append.
    ///
    /// # Errors
    /// The [`GatewayError`] of the first rule it breaks.
    pub fn validate_publish(
        &self,
        publisher: &str,
        req: PublishRequest,
    ) -> Result<NewEvent, GatewayError> {
        let channel = self.config.channel_types.parse_name(&req.channel)?;
        let allowed = self
            .config
            .publishers
            .get(publisher)
            .is_some_and(|p| p.channels.iter().any(|pat| pat.matches(&channel, None)));
        if !allowed {
            return Err(GatewayError::PermissionDenied(format!(
                "publisher {publisher:?} may not publish to {channel}"
            )));
        }
        let max = self.config.raw.limits.max_event_bytes;
        if req.data.len() > max {
            return Err(GatewayError::EventTooLarge {
                size: req.data.len(),
                max,
            });
        }
        let payload = compact_json(&req.data)?;
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
    pub async fn publish_many(
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
            match self.validate_publish(publisher, req) {
                Ok(ev) => events.push(ev),
                Err(e) => {
                    self.metrics.published(result_label(&e), 1);
                    tracing::debug!(%publisher, error = %e, "publish rejected");
                    return Err(if single { e } else { with_index(e, i) });
                }
            }
        }
        if !self.limiter.take(publisher, events.len()) {
            self.metrics.published("rate_limited", events.len() as u64);
            return Err(GatewayError::RateLimited(format!(
                "publisher {publisher:?} is over {} events/s",
                self.config.raw.limits.publisher_events_per_sec
            )));
        }
        let n = events.len() as u64;
        match self.broker.append(publisher, events).await {
            Ok(outcomes) => {
                let dups = outcomes.iter().filter(|o| o.duplicate).count() as u64;
                self.metrics.published("ok", n - dups);
                if dups > 0 {
                    self.metrics.published("duplicate", dups);
                }
                Ok(outcomes)
            }
            Err(e) => {
                self.metrics.published(result_label(&e), n);
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

fn to_response(o: AppendOutcome) -> PublishResponse {
    PublishResponse {
        id: o.cursor,
        delivered: o.delivered,
        duplicate: o.duplicate,
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<PublishResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::publisher_server::Publisher for PublisherService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let publisher = identify(&request)?;
        let outcome = self
            .state
            .publish_many(&publisher, vec![request.into_inner()])
            .await?
            .pop()
            .ok_or_else(|| GatewayError::Internal("append returned no outcome".into()))?;
        Ok(Response::new(to_response(outcome)))
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let publisher = identify(&request)?;
        let events = request.into_inner().events;
        if events.is_empty() || events.len() > MAX_BATCH {
            return Err(GatewayError::InvalidArgument(format!(
                "a batch holds 1 to {MAX_BATCH} events, got {}",
                events.len()
            ))
            .into());
        }
        let outcomes = self.state.publish_many(&publisher, events).await?;
        Ok(Response::new(PublishBatchResponse {
            results: outcomes.into_iter().map(to_response).collect(),
        }))
    }

    type PublishStreamStream = ResponseStream;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let publisher = identify(&request)?;
        let mut inbound = request.into_inner();
        let state = self.state.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<PublishResponse, Status>>(256);
        tokio::spawn(async move {
            while let Some(msg) = inbound.next().await {
                let result = match msg {
                    Ok(req) => state
                        .publish_many(&publisher, vec![req])
                        .await
                        .map_err(Status::from)
                        .and_then(|mut v| {
                            v.pop()
                                .map(to_response)
                                .ok_or_else(|| Status::internal("append returned no outcome"))
                        }),
                    Err(status) => Err(status),
                };
                let failed = result.is_err();
                // An error ends the stream: responses stay one-per-request, in order.
                if tx.send(result).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
