//! Publishers: gRPC `Publish` (N in flight), `PublishStream` (N streams on one connection) or
//! `PublishBatch` (N batches in flight) to the gateway; HTTP `POST /pub/<ch>` over N keep-alive
//! connections to Nchan. Paced at a rate, or as fast as acknowledgements allow (`max`).
//!
//! Event i is due at start + i / rate and carries that due time as its `t`, so when publishing
//! falls behind, the delay shows up in the latency instead of being hidden (no coordinated
//! omission). With `max`, `t` is the time the event is built.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sse_gateway::ingest::pb::publisher_client::PublisherClient;
use sse_gateway::ingest::pb::{PublishBatchRequest, PublishRequest};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::hist::now_us;
use crate::target::{Kind, Server};

/// How the gateway is published to.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `Publish`, one event per call, `--concurrency` calls in flight.
    Unary,
    /// `PublishStream`, `--concurrency` streams on one HTTP/2 connection.
    Stream,
    /// `PublishBatch` of up to `--batch` events, `--concurrency` calls in flight.
    Batch,
}

/// What to publish.
#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: Mode,
    pub concurrency: usize,
    pub batch: usize,
    /// Bytes of `data` per event.
    pub payload: usize,
    pub channels: usize,
    /// Events/s, or `None` for as fast as acknowledgements allow.
    pub rate: Option<f64>,
}

/// Acknowledged and failed events so far.
#[derive(Default)]
pub struct Counters {
    pub acked: AtomicU64,
    pub errors: AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

impl Counters {
    fn fail(&self, n: u64, e: impl std::fmt::Display) {
        self.errors.fetch_add(n, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| e.to_string());
        }
    }

    pub fn error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|e| e.clone())
    }
}

/// The pacer all publishing tasks draw event numbers from.
struct Source {
    rate: Option<f64>,
    start: Instant,
    start_us: u64,
    issued: AtomicU64,
    stop: CancellationToken,
}

impl Source {
    /// Up to `max` due event numbers `(first, n)`; waits until one is due; `None` once stopped.
    async fn take(&self, max: u64) -> Option<(u64, u64)> {
        loop {
            if self.stop.is_cancelled() {
                return None;
            }
            let issued = self.issued.load(Ordering::Relaxed);
            let due = match self.rate {
                None => issued + max,
                Some(r) => (r * self.start.elapsed().as_secs_f64()) as u64,
            };
            if due > issued {
                let n = (due - issued).min(max);
                if self
                    .issued
                    .compare_exchange(issued, issued + n, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    return Some((issued, n));
                }
                continue;
            }
            let rate = self.rate.unwrap_or(1.0).max(1e-3);
            let at = self.start + Duration::from_secs_f64((issued + 1) as f64 / rate);
            tokio::select! {
                () = self.stop.cancelled() => return None,
                () = tokio::time::sleep_until(at.into()) => {}
            }
        }
    }

    /// The `t` of event `i`.
    fn stamp(&self, i: u64) -> u64 {
        match self.rate {
            None => now_us(),
            Some(r) => self.start_us + (i as f64 * 1e6 / r) as u64,
        }
    }
}

/// `{"t":<µs>,"p":"xxx…"}`, `payload` bytes long (at least the stamp).
pub fn data(t: u64, payload: usize) -> String {
    let mut s = format!("{{\"t\":{t},\"p\":\"");
    let pad = payload.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// Publishing in progress.
pub struct Publishing {
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    pub counters: Arc<Counters>,
}

impl Publishing {
    /// Starts publishing to `server` (a fresh gRPC connection for the gateway).
    pub async fn start(server: &Server, plan: &Plan) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let source = Arc::new(Source {
            rate: plan.rate,
            start: Instant::now(),
            start_us: now_us(),
            issued: AtomicU64::new(0),
            stop: stop.clone(),
        });
        let counters = Arc::new(Counters::default());
        let names: Arc<Vec<String>> = Arc::new(
            (0..plan.channels.max(1))
                .map(|i| server.kind.channel(i))
                .collect(),
        );
        let mut tasks = tokio::task::JoinSet::new();
        let n = plan.concurrency.max(1);
        match server.kind {
            Kind::Nchan => {
                for _ in 0..n {
                    let (source, counters, names) =
                        (source.clone(), counters.clone(), names.clone());
                    let (addr, payload) = (server.http, plan.payload);
                    tasks.spawn(async move {
                        if let Err(e) =
                            nchan_publisher(addr, &source, &counters, &names, payload).await
                        {
                            counters.fail(0, format!("{e:#}"));
                        }
                    });
                }
            }
            Kind::Gateway => {
                let client = server.grpc().await.context("connecting the publisher")?;
                for _ in 0..n {
                    let (source, counters, names) =
                        (source.clone(), counters.clone(), names.clone());
                    let (client, plan) = (client.clone(), plan.clone());
                    tasks.spawn(async move {
                        let result = match plan.mode {
                            Mode::Unary => {
                                unary(client, &source, &counters, &names, plan.payload).await
                            }
                            Mode::Batch => batch(client, &source, &counters, &names, &plan).await,
                            Mode::Stream => {
                                stream(client, &source, &counters, &names, plan.payload).await
                            }
                        };
                        if let Err(e) = result {
                            counters.fail(0, format!("{e:#}"));
                        }
                    });
                }
            }
        }
        Ok(Self {
            stop,
            tasks,
            counters,
        })
    }

    pub fn acked(&self) -> u64 {
        self.counters.acked.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.counters.errors.load(Ordering::Relaxed)
    }

    /// Stops issuing events and waits (bounded) for the tasks to end.
    pub async fn stop(mut self) -> Arc<Counters> {
        self.stop.cancel();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            self.tasks.abort_all();
        }
        self.counters
    }
}

fn request(names: &[String], source: &Source, i: u64, payload: usize) -> PublishRequest {
    PublishRequest {
        channel: names[(i % names.len() as u64) as usize].clone(),
        data: data(source.stamp(i), payload),
        event: "tick".into(),
        idempotency_key: String::new(),
        audience: None,
    }
}

async fn unary(
    mut client: PublisherClient<Channel>,
    source: &Source,
    counters: &Counters,
    names: &[String],
    payload: usize,
) -> anyhow::Result<()> {
    while let Some((i, _)) = source.take(1).await {
        match client.publish(request(names, source, i, payload)).await {
            Ok(_) => counters.acked.fetch_add(1, Ordering::Relaxed),
            Err(s) => {
                counters.fail(1, format!("{:?}: {}", s.code(), s.message()));
                0
            }
        };
    }
    Ok(())
}

async fn batch(
    mut client: PublisherClient<Channel>,
    source: &Source,
    counters: &Counters,
    names: &[String],
    plan: &Plan,
) -> anyhow::Result<()> {
    while let Some((first, n)) = source.take(plan.batch.clamp(1, 1000) as u64).await {
        let events = (first..first + n)
            .map(|i| request(names, source, i, plan.payload))
            .collect();
        match client.publish_batch(PublishBatchRequest { events }).await {
            Ok(_) => counters.acked.fetch_add(n, Ordering::Relaxed),
            Err(s) => {
                counters.fail(n, format!("{:?}: {}", s.code(), s.message()));
                0
            }
        };
    }
    Ok(())
}

async fn stream(
    mut client: PublisherClient<Channel>,
    source: &Source,
    counters: &Counters,
    names: &[String],
    payload: usize,
) -> anyhow::Result<()> {
    // The bound is the window of events handed to tonic but not yet on the wire.
    let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(1024);
    let mut responses = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("PublishStream: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let send = async {
        while let Some((first, n)) = source.take(256).await {
            for i in first..first + n {
                if tx.send(request(names, source, i, payload)).await.is_err() {
                    return;
                }
            }
        }
        drop(tx);
    };
    let receive = async {
        loop {
            match responses.message().await {
                Ok(Some(_)) => {
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) => break,
                Err(s) => {
                    counters.fail(1, format!("{:?}: {}", s.code(), s.message()));
                    break;
                }
            }
        }
    };
    tokio::join!(send, receive);
    Ok(())
}

/// One keep-alive connection: POST, read the response, repeat.
async fn nchan_publisher(
    addr: SocketAddr,
    source: &Source,
    counters: &Counters,
    names: &[String],
    payload: usize,
) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (read, mut write) = tcp.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    let mut body = Vec::new();
    while let Some((i, _)) = source.take(1).await {
        let data = data(source.stamp(i), payload);
        let channel = &names[(i % names.len() as u64) as usize];
        let req = format!(
            "POST /pub/{channel} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{data}",
            data.len()
        );
        write.write_all(req.as_bytes()).await?;
        line.clear();
        read.read_line(&mut line).await?;
        let ok = line.starts_with("HTTP/1.1 20");
        let status = line.trim().to_owned();
        let (mut length, mut chunked) = (0usize, false);
        loop {
            line.clear();
            if read.read_line(&mut line).await? == 0 {
                anyhow::bail!("Nchan closed the publishing connection");
            }
            let header = line.trim().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(v) = header.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            } else if header.starts_with("transfer-encoding:") && header.contains("chunked") {
                chunked = true;
            }
        }
        if chunked {
            loop {
                line.clear();
                read.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                body.resize(size + 2, 0);
                read.read_exact(&mut body).await?;
                if size == 0 {
                    break;
                }
            }
        } else {
            body.resize(length, 0);
            read.read_exact(&mut body).await?;
        }
        if ok {
            counters.acked.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.fail(1, format!("POST /pub/{channel}: {status}"));
        }
    }
    Ok(())
}
