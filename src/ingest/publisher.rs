//! The `ssegateway.v1.Publisher` service: identify the publisher by its client certificate,
//! validate each event once, append to the log.

use std::pin::Pin;

use futures_util::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use tokio_util::task::TaskTracker;

use super::pb::{self, PublishBatchRequest, PublishBatchResponse, PublishRequest, PublishResponse};
use super::pipeline::Pipeline;
use crate::auth::mtls::publisher_name;
use crate::broker::AppendOutcome;
use crate::error::GatewayError;

/// Most events in one `PublishBatch`.
pub const MAX_BATCH: usize = 1000;

/// The Publisher service.
pub struct PublisherService {
    pipeline: Pipeline,
    /// Publish streams run as tasks here, so a graceful shutdown waits for them.
    tasks: TaskTracker,
}

impl PublisherService {
    /// A service appending through `pipeline`; stream tasks are tracked by `tasks`.
    pub fn new(pipeline: Pipeline, tasks: TaskTracker) -> Self {
        Self { pipeline, tasks }
    }

    /// The generated server wrapper, with a message limit that fits a full batch of
    /// maximum-size events (anything larger is refused by the transport with `OUT_OF_RANGE`
    /// before it is buffered).
    pub fn into_server(self) -> pb::publisher_server::PublisherServer<Self> {
        let per_event = self
            .pipeline
            .config
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
            .pipeline
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
        let outcomes = self.pipeline.publish_many(&publisher, events).await?;
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
        let pipeline = self.pipeline.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<PublishResponse, Status>>(256);
        // Tracked, so a graceful shutdown waits for the request in progress to be answered.
        self.tasks.spawn(async move {
            loop {
                let msg = tokio::select! {
                    biased;
                    // No new request is taken after shutdown; the stream ends with UNAVAILABLE.
                    () = pipeline.shutdown.cancelled() => Some(Err(GatewayError::ShuttingDown.into())),
                    msg = inbound.next() => msg,
                };
                let Some(msg) = msg else { break };
                let result = match msg {
                    Ok(req) => pipeline
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
