//! Publishers that retry with the same idempotency key until acknowledged, and the ledger of
//! what was acknowledged (the truth the checker compares every stream with).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sse_gateway::ingest::pb::publisher_client::PublisherClient;
use sse_gateway::ingest::pb::PublishRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// A position in the log, parsed from a cursor `MS-SEQ`.
pub type Id = (u64, u64);

/// Parses a cursor.
pub fn parse_id(s: &str) -> Option<Id> {
    let (a, b) = s.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// One acknowledged event.
#[derive(Clone, Copy, Debug)]
pub struct Acked {
    pub channel: usize,
    pub publisher: u32,
    pub seq: u64,
}

/// What was published, by outcome.
#[derive(Default)]
pub struct Ledger {
    /// Acknowledged events by id.
    pub acked: HashMap<Id, Acked>,
    /// Acknowledged ids per channel, in log order.
    pub by_channel: Vec<BTreeSet<Id>>,
    /// (publisher, seq) → id, to catch one logical event acknowledged under two ids.
    pub logical: HashMap<(u32, u64), Id>,
    /// Acknowledged twice under different ids (the idempotency key failed).
    pub double_acked: u64,
    /// Publishes abandoned after the gateway answered `UNAVAILABLE` (never acknowledged).
    pub refused: BTreeSet<(u32, u64)>,
    /// Publishes abandoned after the client's own deadline (outcome unknown to the client).
    pub abandoned: BTreeSet<(u32, u64)>,
    /// Retries that the gateway answered with `duplicate = true`.
    pub duplicate_answers: u64,
    /// Attempts that failed and were retried, by cause.
    pub retries: std::collections::BTreeMap<String, u64>,
}

impl Ledger {
    /// A ledger for `channels` channels.
    pub fn new(channels: usize) -> Self {
        Self {
            by_channel: vec![BTreeSet::new(); channels],
            ..Self::default()
        }
    }

    fn record(&mut self, id: Id, a: Acked) {
        if let Some(prev) = self.logical.insert((a.publisher, a.seq), id) {
            if prev != id {
                self.double_acked += 1;
            }
        }
        self.acked.insert(id, a);
        self.by_channel[a.channel].insert(id);
    }
}

/// Where the publishers connect: the nodes' gRPC addresses (fixed across restarts) and the PKI.
#[derive(Clone)]
pub struct Target {
    pub grpc: Vec<SocketAddr>,
    pub pki: PathBuf,
    pub service: String,
    pub channels: Arc<Vec<String>>,
    pub ledger: Arc<Mutex<Ledger>>,
}

/// The outcome of one attempt.
pub enum Attempt {
    Acked {
        id: Id,
        duplicate: bool,
    },
    /// The gateway answered `UNAVAILABLE`.
    Unavailable,
    /// Transport failure, reset or client deadline.
    Failed(String),
}

/// Whether an `UNAVAILABLE` message is the gateway's (event log down) rather than the transport's.
fn gateway_answer(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("event log") || m.contains("broker") || m.contains("redis")
}

/// One publisher task's connection state.
pub struct Publisher {
    pub id: u32,
    target: Target,
    node: usize,
    client: Option<PublisherClient<Channel>>,
    pub pad: String,
}

impl Publisher {
    /// A publisher preferring node `id % nodes`.
    pub fn new(target: &Target, id: u32) -> Self {
        Self {
            id,
            node: id as usize % target.grpc.len(),
            target: target.clone(),
            client: None,
            pad: String::new(),
        }
    }

    async fn connect(&mut self) -> Result<PublisherClient<Channel>, String> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let read = |f: &str| std::fs::read(self.target.pki.join(f)).expect("pki file");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")))
            .identity(Identity::from_pem(
                read(&format!("{}.pem", self.target.service)),
                read(&format!("{}-key.pem", self.target.service)),
            ))
            .domain_name("localhost");
        let addr = self.target.grpc[self.node];
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| e.to_string())?
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let client = PublisherClient::new(channel);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Drops the connection and prefers the next node.
    fn fail_over(&mut self) {
        self.client = None;
        self.node = (self.node + 1) % self.target.grpc.len();
    }

    fn request(&self, channel: usize, seq: u64, key: &str) -> PublishRequest {
        PublishRequest {
            channel: self.target.channels[channel].clone(),
            data: json!({"p": self.id, "n": seq, "pad": self.pad}).to_string(),
            event: "chaos".into(),
            idempotency_key: key.to_owned(),
            audience: None,
        }
    }

    /// The idempotency key of (this publisher, seq).
    pub fn key(&self, seq: u64) -> String {
        format!("chaos-p{}-n{seq}", self.id)
    }

    /// One attempt with a client deadline.
    pub async fn attempt(&mut self, channel: usize, seq: u64, deadline: Duration) -> Attempt {
        let mut client = match self.connect().await {
            Ok(c) => c,
            Err(e) => {
                self.fail_over();
                return Attempt::Failed(e);
            }
        };
        let req = self.request(channel, seq, &self.key(seq));
        match tokio::time::timeout(deadline, client.publish(req)).await {
            Err(_) => Attempt::Failed("client deadline".into()),
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                let id = parse_id(&resp.id).unwrap_or_else(|| panic!("bad id {:?}", resp.id));
                Attempt::Acked {
                    id,
                    duplicate: resp.duplicate,
                }
            }
            Ok(Err(status)) => match status.code() {
                // The gateway's own answer: the event log is unreachable (keep the node).
                Code::Unavailable if gateway_answer(status.message()) => Attempt::Unavailable,
                Code::Unavailable
                | Code::Unknown
                | Code::Cancelled
                | Code::Internal
                | Code::DeadlineExceeded => {
                    self.fail_over();
                    Attempt::Failed(format!("{:?}: {}", status.code(), status.message()))
                }
                other => panic!(
                    "publish failed with a non-retryable status {other:?}: {}",
                    status.message()
                ),
            },
        }
    }

    /// Records an acknowledgement in the ledger.
    pub fn record(&self, channel: usize, seq: u64, id: Id, duplicate: bool) {
        let mut l = self.target.ledger.lock().unwrap();
        if duplicate {
            l.duplicate_answers += 1;
        }
        l.record(
            id,
            Acked {
                channel,
                publisher: self.id,
                seq,
            },
        );
    }

    /// Publishes (channel, seq) and retries with the same idempotency key until acknowledged;
    /// returns the id and whether the acknowledgement said `duplicate`.
    pub async fn publish_until_acked(&mut self, channel: usize, seq: u64) -> (Id, bool) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.attempt(channel, seq, Duration::from_secs(5)).await {
                Attempt::Acked { id, duplicate } => {
                    self.record(channel, seq, id, duplicate);
                    return (id, duplicate);
                }
                outcome @ (Attempt::Unavailable | Attempt::Failed(_)) => {
                    let cause = match outcome {
                        Attempt::Failed(why) if why == "client deadline" => "client deadline",
                        Attempt::Failed(_) => "transport error (node down)",
                        _ => "answered UNAVAILABLE",
                    };
                    *self
                        .target
                        .ledger
                        .lock()
                        .unwrap()
                        .retries
                        .entry(cause.to_owned())
                        .or_default() += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }
}
