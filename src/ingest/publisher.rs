//! The `ssegateway.v1.Publisher` service: identify the publisher by its client certificate,
//! validate each event once, append to the log.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::Stream;
use prost::Message;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use super::pb::{self, PublishBatchRequest, PublishBatchResponse, PublishRequest, PublishResponse};
use super::pipeline::{EachOutcome, Pipeline};
use crate::auth::mtls::publisher_name;
use crate::broker::AppendOutcome;
use crate::error::GatewayError;

/// Most events in one `PublishBatch`.
pub const MAX_BATCH: usize = 1000;

/// The Publisher service.
pub struct PublisherService {
    pipeline: Pipeline,
    /// Certificate names already parsed.
    names: NameCache,
    /// Publish streams run as tasks here, so a graceful shutdown waits for them.
    tasks: TaskTracker,
}

impl PublisherService {
    /// A service appending through `pipeline`; stream tasks are tracked by `tasks`.
    pub fn new(pipeline: Pipeline, tasks: TaskTracker) -> Self {
        Self {
            pipeline,
            names: NameCache::default(),
            tasks,
        }
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
fn identify<T>(names: &NameCache, req: &Request<T>) -> Result<String, GatewayError> {
    let certs = req.peer_certs().ok_or_else(|| {
        GatewayError::Unauthenticated("a client certificate is required".to_owned())
    })?;
    certs
        .first()
        .and_then(|c| names.name_of(c.as_ref()))
        .ok_or_else(|| {
            GatewayError::Unauthenticated("the client certificate carries no name".to_owned())
        })
}

/// Most certificates whose names are remembered; past it the cache starts over.
const NAME_CACHE_MAX: usize = 1024;

/// Publisher names by client certificate, so a certificate is parsed once, not per request
/// (X.509 parsing was the largest single cost of a small unary publish). Keyed by the
/// certificate's last 32 bytes (its signature: distinct for distinct certificates of a CA)
/// and confirmed on the whole DER, so a lookup costs one short hash and one comparison. A name
/// depends on the certificate alone, so nothing needs invalidating on reload.
#[derive(Default)]
struct NameCache {
    names: Mutex<HashMap<[u8; 32], CachedName>>,
}

/// A certificate (DER) and its publisher name.
type CachedName = (Vec<u8>, Option<String>);

impl NameCache {
    fn name_of(&self, der: &[u8]) -> Option<String> {
        let Some(tail) = der
            .len()
            .checked_sub(32)
            .and_then(|start| der.get(start..))
            .and_then(|t| <[u8; 32]>::try_from(t).ok())
        else {
            return publisher_name(der);
        };
        // Lock policy of the crate: a poisoned cache is still a valid cache (each entry is
        // inserted whole).
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((cached, name)) = names.get(&tail) {
            if cached.as_slice() == der {
                return name.clone();
            }
        }
        let name = publisher_name(der);
        if names.len() >= NAME_CACHE_MAX {
            names.clear();
        }
        names.insert(tail, (der.to_vec(), name.clone()));
        name
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
        let publisher = identify(&self.names, &request)?;
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
        let publisher = identify(&self.names, &request)?;
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
        let publisher = identify(&self.names, &request)?;
        let inbound = request.into_inner();
        let (queue, waiting) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(STREAM_QUEUE_BYTES));
        let (tx, rx) = mpsc::channel::<Vec<Result<PublishResponse, Status>>>(RESPONSE_BATCHES);
        let shutdown = self.pipeline.shutdown.clone();
        // Both tracked, so a graceful shutdown waits for the requests in progress to be answered.
        self.tasks
            .spawn(read_requests(inbound, queue, room, shutdown));
        self.tasks.spawn(answer_requests(
            self.pipeline.clone(),
            publisher,
            waiting,
            tx,
        ));
        let responses = futures_util::StreamExt::flat_map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            futures_util::stream::iter,
        );
        Ok(Response::new(Box::pin(responses)))
    }
}

/// Bytes of decoded requests one `PublishStream` may hold waiting to be appended (each counted
/// as its encoded size plus [`REQUEST_OVERHEAD`]). Past it, reading pauses and HTTP/2 flow
/// control holds the publisher back.
const STREAM_QUEUE_BYTES: usize = 1 << 20;

/// What a decoded request costs beyond its encoded bytes (its allocations), for the byte bound.
const REQUEST_OVERHEAD: usize = 128;

/// Batches of responses queued for the transport per `PublishStream`.
const RESPONSE_BATCHES: usize = 4;

/// A request read off a `PublishStream`, holding its share of the stream's queue.
type Queued = (Result<PublishRequest, Status>, Option<OwnedSemaphorePermit>);

/// Reads a `PublishStream` as fast as it arrives, into the stream's queue.
///
/// Why a reader of its own: HTTP/2 flow control counts payload bytes only, and h2 (the server's
/// HTTP/2) also bounds the small DATA frames it holds unread on a connection (half the
/// connection window of framing overhead, charged `256 − size` per frame under 256 bytes; past
/// it the connection gets `GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames"`). A publisher
/// sending one small event per frame on several streams outruns that quickly if every stream
/// is read only between appends. Read here, a frame is released at once; memory stays bounded
/// by [`STREAM_QUEUE_BYTES`], and once that is full, the stream windows (see `server::grpc`)
/// bound what h2 holds.
async fn read_requests(
    mut inbound: Streaming<PublishRequest>,
    queue: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            // The answering side stopped (an error ended the stream, or the client went away).
            () = queue.closed() => break,
            msg = inbound.next() => msg,
        };
        let Some(msg) = msg else { break };
        let failed = msg.is_err();
        let cost = msg
            .as_ref()
            .map_or(0, |r| r.encoded_len() + REQUEST_OVERHEAD)
            .min(STREAM_QUEUE_BYTES);
        // Waits while the queue is full; the permit goes with the request and is released when
        // it has been handled.
        let permit = if cost == 0 {
            None
        } else {
            let acquire = room
                .clone()
                .acquire_many_owned(u32::try_from(cost).unwrap_or(u32::MAX));
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = queue.closed() => break,
                p = acquire => match p {
                    Ok(p) => Some(p),
                    Err(_) => break,
                },
            }
        };
        if queue.send((msg, permit)).is_err() || failed {
            break;
        }
    }
}

/// Answers a `PublishStream`: takes every request waiting (up to [`MAX_BATCH`]) and publishes
/// them in one append, one response per request, in order. An error answers its request and
/// ends the stream; after shutdown no new request is taken and the stream ends `UNAVAILABLE`.
async fn answer_requests(
    pipeline: Pipeline,
    publisher: String,
    mut waiting: mpsc::UnboundedReceiver<Queued>,
    tx: mpsc::Sender<Vec<Result<PublishResponse, Status>>>,
) {
    let mut batch: Vec<Queued> = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = tokio::select! {
            biased;
            () = pipeline.shutdown.cancelled() => {
                let _ = tx.send(vec![Err(GatewayError::ShuttingDown.into())]).await;
                break;
            }
            n = waiting.recv_many(&mut batch, MAX_BATCH) => n,
        };
        if n == 0 {
            break;
        }
        let mut requests = Vec::with_capacity(n);
        let mut read_error = None;
        for (msg, _) in batch.drain(..) {
            match msg {
                Ok(req) => requests.push(req),
                Err(status) => {
                    // The reader stops after an error: nothing follows it.
                    read_error = Some(status);
                    break;
                }
            }
        }
        let each = if requests.is_empty() {
            EachOutcome {
                outcomes: Vec::new(),
                error: None,
            }
        } else {
            pipeline.publish_each(&publisher, requests).await
        };
        let error = each.error.map(Status::from).or(read_error);
        let failed = error.is_some();
        let mut responses: Vec<Result<PublishResponse, Status>> = each
            .outcomes
            .into_iter()
            .map(|o| Ok(to_response(o)))
            .collect();
        responses.extend(error.map(Err));
        // An error ends the stream: responses stay one-per-request, in order.
        if tx.send(responses).await.is_err() || failed {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
        rcgen::CertificateParams::new(vec![name.to_owned()])
            .and_then(|p| p.self_signed(&key))
            .unwrap_or_else(|e| panic!("cert: {e}"))
            .der()
            .to_vec()
    }

    #[test]
    fn the_name_cache_answers_each_certificate_with_its_own_name() {
        let cache = NameCache::default();
        let (a, b) = (cert("svc-a"), cert("svc-b"));
        for _ in 0..3 {
            assert_eq!(cache.name_of(&a).as_deref(), Some("svc-a"));
            assert_eq!(cache.name_of(&b).as_deref(), Some("svc-b"));
        }
        // Same last 32 bytes, different certificate: parsed, not taken from the cache.
        let mut forged = b.clone();
        forged[..a.len().min(b.len()) - 32].copy_from_slice(&a[..a.len().min(b.len()) - 32]);
        assert_ne!(cache.name_of(&forged).as_deref(), Some("svc-b"));
        assert_eq!(cache.name_of(&b).as_deref(), Some("svc-b"));
        assert_eq!(cache.name_of(b"short"), None);
    }
}
