//! Load generator and benchmark: starts a gateway in this process on loopback, opens SSE
//! subscribers, publishes over mTLS gRPC, and prints throughput, latency and memory figures.
//!
//! ```text
//! cargo run --release --bin loadgen -- --subscribers 1000 --channels 10 --events 50000
//! ```
//! Bounded by `--events` and `--max-secs`; it stops by itself.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use sse_gateway::app::Gateway;
use sse_gateway::auth::jwt::{mint_hs256, Claims};
use sse_gateway::config::{BrokerKind, Config, PublisherConfig, RawConfig};
use sse_gateway::ingest::pb::{PublishBatchRequest, PublishRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(about = "sse-gateway load generator (loopback only, bounded)")]
struct Args {
    /// SSE connections.
    #[arg(long, default_value_t = 500)]
    subscribers: usize,
    /// Distinct channels; subscriber i reads channel i % channels.
    #[arg(long, default_value_t = 10)]
    channels: usize,
    /// Events to publish.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Events per PublishBatch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Payload padding in bytes.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// `memory` or `redis` (Redis at 127.0.0.1:6379).
    #[arg(long, default_value = "memory")]
    broker: String,
    /// Hard stop.
    #[arg(long, default_value_t = 60)]
    max_secs: u64,
}

/// Latency samples in microseconds, bucketed for percentiles without storing every sample.
struct Latency {
    buckets: Vec<AtomicU64>,
}

impl Latency {
    const WIDTH_US: u64 = 50;
    fn new() -> Self {
        Self {
            buckets: (0..20_000).map(|_| AtomicU64::new(0)).collect(),
        }
    }
    fn record(&self, us: u64) {
        let i = ((us / Self::WIDTH_US) as usize).min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }
    fn percentile(&self, p: f64) -> f64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let target = (total as f64 * p).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target && total > 0 {
                return ((i as u64 + 1) * Self::WIDTH_US) as f64 / 1000.0;
            }
        }
        0.0
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(max) = open_files_limit() {
        // Both ends of every subscriber socket live in this process.
        let need = args.subscribers as u64 * 2 + 256;
        if need > max {
            anyhow::bail!(
                "{} subscribers need about {need} open files; the limit here is {max} (ulimit -n)",
                args.subscribers
            );
        }
    }
    sse_gateway::app::install_crypto_provider();
    let dir = std::env::temp_dir().join(format!("sse-gateway-loadgen-{}", std::process::id()));
    sse_gateway::pki::ensure_dev_pki(&dir, &["loadgen"])?;
    let secret = format!("loadgen-secret-{}", sse_gateway::hub::random_id());
    let p = |f: &str| Some(dir.join(f));
    let mut raw = RawConfig::default();
    raw.http.addr = "127.0.0.1:0".parse()?;
    raw.grpc.addr = "127.0.0.1:0".parse()?;
    raw.grpc.tls_cert = p("server.pem");
    raw.grpc.tls_key = p("server-key.pem");
    raw.grpc.client_ca = p("ca.pem");
    raw.jwt.secret = Some(secret.clone().into());
    raw.limits.max_connections_per_user = args.subscribers + 1;
    raw.sse.queue_events = 4096;
    raw.broker.kind = match args.broker.as_str() {
        "memory" => BrokerKind::Memory,
        "redis" => BrokerKind::Redis,
        other => anyhow::bail!("--broker {other:?}: memory or redis"),
    };
    raw.broker.key_prefix = format!("loadgen-{}", std::process::id());
    raw.publishers = vec![PublisherConfig {
        name: "loadgen".into(),
        channels: vec!["**".into()],
        control: false,
    }];
    let config = Config::from_raw(raw, Path::new(""))?;
    let gateway = Gateway::start(config, None).await?;
    let http = gateway.http_addr;
    let token = mint_hs256(
        secret.as_bytes(),
        &Claims {
            sub: "loadgen".into(),
            exp: sse_gateway::event::now_ms() / 1000 + 3600,
            channels: vec!["metrics:**".into()],
            roles: vec![],
        },
    )?;
    let rss_before = rss_kib();
    let start = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Latency::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut readers = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(args.subscribers.max(1));
    for i in 0..args.subscribers {
        let channel = format!("metrics:ch{}", i % args.channels);
        let token = token.clone();
        let received = received.clone();
        let latency = latency.clone();
        let stop = stop.clone();
        let ready_tx = ready_tx.clone();
        readers.push(tokio::spawn(async move {
            let mut tcp = tokio::net::TcpStream::connect(http).await.context("connect")?;
            let request = format!(
                "GET /api/sse?channels={channel} HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
            );
            tcp.write_all(request.as_bytes()).await?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut carry: Vec<u8> = Vec::new();
            let mut announced = false;
            loop {
                let n = tokio::select! {
                    () = stop.cancelled() => break,
                    n = tcp.read(&mut buf) => n?,
                };
                if n == 0 {
                    break;
                }
                carry.extend_from_slice(&buf[..n]);
                if !announced && carry.windows(12).any(|w| w == b"event: ready") {
                    announced = true;
                    let _ = ready_tx.send(()).await;
                }
                // Count and time every complete event in the buffer.
                let now = start.elapsed().as_micros() as u64;
                let mut consumed = 0;
                let needle = b"\"payload\":{\"t\":";
                while let Some(pos) = find(&carry[consumed..], needle) {
                    let from = consumed + pos + needle.len();
                    let Some(end) = carry[from..].iter().position(|b| !b.is_ascii_digit()) else {
                        break;
                    };
                    if let Ok(t) = std::str::from_utf8(&carry[from..from + end]).unwrap_or("x").parse::<u64>() {
                        latency.record(now.saturating_sub(t));
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    consumed = from + end;
                }
                carry.drain(..consumed.min(carry.len()));
                if carry.len() > 1 << 20 {
                    carry.clear();
                }
            }
            anyhow::Ok(())
        }));
    }
    drop(ready_tx);
    let connect_deadline = Instant::now() + Duration::from_secs(args.max_secs);
    for _ in 0..args.subscribers {
        if tokio::time::timeout_at(connect_deadline.into(), ready_rx.recv())
            .await
            .ok()
            .flatten()
            .is_none()
        {
            anyhow::bail!("subscribers did not all connect in time");
        }
    }
    let connected_in = start.elapsed();
    let rss_connected = rss_kib();

    let mut client = sse_gateway::client::connect(
        &format!("localhost:{}", gateway.grpc_addr.port()),
        &dir.join("ca.pem"),
        &dir.join("loadgen.pem"),
        &dir.join("loadgen-key.pem"),
    )
    .await?;
    let pad = "x".repeat(args.payload_bytes);
    let per_channel = args.subscribers / args.channels.max(1);
    let expected = (args.events * per_channel) as u64;
    let publish_start = Instant::now();
    let hard_stop = Instant::now() + Duration::from_secs(args.max_secs);
    let mut sent = 0;
    while sent < args.events && Instant::now() < hard_stop {
        let n = args.batch.min(args.events - sent);
        let events = (0..n)
            .map(|i| PublishRequest {
                channel: format!("metrics:ch{}", (sent + i) % args.channels),
                data: format!(
                    "{{\"t\":{},\"pad\":\"{pad}\"}}",
                    start.elapsed().as_micros()
                ),
                event: "tick".into(),
                idempotency_key: String::new(),
                audience: None,
            })
            .collect();
        client.publish_batch(PublishBatchRequest { events }).await?;
        sent += n;
    }
    let publish_secs = publish_start.elapsed().as_secs_f64();
    while received.load(Ordering::Relaxed) < expected && Instant::now() < hard_stop {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deliver_secs = publish_start.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed);
    let slow = gateway.state.metrics.slow_consumer_disconnects.get();
    let rss_peak = rss_kib();
    stop.cancel();
    gateway.shutdown();
    for r in readers {
        let _ = r.await;
    }
    gateway.wait().await;
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "sse-gateway loadgen ({} broker, {} cores)",
        args.broker,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  subscribers            {} on {} channels ({} per channel), connected in {:.2} s",
        args.subscribers,
        args.channels,
        per_channel,
        connected_in.as_secs_f64()
    );
    println!(
        "  events published       {sent} x {} B payload in batches of {}: {:.0} events/s",
        args.payload_bytes,
        args.batch,
        sent as f64 / publish_secs
    );
    println!(
        "  frames delivered       {got} of {expected} expected: {:.0} frames/s",
        got as f64 / deliver_secs
    );
    println!(
        "  publish->receive       p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        latency.percentile(0.5),
        latency.percentile(0.99),
        latency.percentile(0.999)
    );
    println!("  slow-consumer closes   {slow}");
    println!("  process RSS            {:.1} MiB idle, {:.1} MiB with subscribers ({:.1} KiB each), {:.1} MiB after the run", rss_before as f64 / 1024.0, rss_connected as f64 / 1024.0, (rss_connected.saturating_sub(rss_before)) as f64 / args.subscribers.max(1) as f64, rss_peak as f64 / 1024.0);
    if got < expected {
        anyhow::bail!("only {got} of {expected} frames arrived before the time limit");
    }
    Ok(())
}

fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
