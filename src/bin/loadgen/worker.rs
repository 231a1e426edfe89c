//! Subscribers, in worker processes of their own (`loadgen worker`, spawned by [`Fleet`]): each
//! worker is one thread holding a slice of the SSE connections, so the open-files limit is per
//! worker and the sockets spread over several `127.0.0.x` source addresses.
//!
//! A worker counts every data frame carrying `{"t":<µs>` (the publish time the publisher put in
//! the payload) and records now − t in its histogram. It talks to the coordinator over
//! stdin/stdout, one JSON line per exchange: it prints [`Ready`] once every connection is ready
//! (the gateway's `event: ready`, Nchan's response headers) or failed, then answers each
//! `snap` line with a [`Snap`] (the histogram is reset by each snap; counters are cumulative).

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{ExitCode, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use memchr::memmem;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::hist::{now_us, Latency};
use crate::target::{Kind, Server};

/// Marks the publish time in a payload: `{"t":1733030400000000,"p":"xxx"}`.
const STAMP: &[u8] = b"{\"t\":";
/// Connection attempts in flight per worker (the accept backlog stays short).
const CONNECTING: usize = 64;
/// Subscribers per worker process by default.
pub const PER_WORKER: usize = 2500;

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    #[arg(long, value_enum)]
    kind: Kind,
    /// Server HTTP address.
    #[arg(long)]
    addr: SocketAddr,
    /// Channels in the scenario: subscriber j reads channel j % channels.
    #[arg(long)]
    channels: usize,
    /// First subscriber index of this worker.
    #[arg(long)]
    from: usize,
    /// One past the last subscriber index.
    #[arg(long)]
    to: usize,
    /// Source addresses used: 127.0.0.2 … 127.0.0.(1+n), subscriber j on 127.0.0.(2 + j % n).
    #[arg(long, default_value_t = 4)]
    source_ips: usize,
    /// Seconds to wait for every connection to be ready.
    #[arg(long, default_value_t = 60)]
    connect_secs: u64,
    /// Bearer token (the gateway), from the environment so it stays out of `ps`.
    #[arg(
        long,
        env = "LOADGEN_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    token: String,
}

/// The worker's first line.
#[derive(Serialize, Deserialize)]
pub struct Ready {
    pub ready: usize,
    pub failed: usize,
    pub error: Option<String>,
}

/// The answer to `snap`.
#[derive(Serialize, Deserialize, Default)]
pub struct Snap {
    /// Frames received since the start (cumulative).
    pub received: u64,
    /// Connections that ended after being ready (cumulative).
    pub closed: u64,
    /// Latency samples since the previous snap.
    pub hist: Vec<(u64, u64)>,
}

struct Stats {
    received: u64,
    closed: u64,
    ready: usize,
    failed: usize,
    error: Option<String>,
    hist: Latency,
}

struct State {
    stats: RefCell<Stats>,
    /// One read buffer for every connection of this (single-threaded) worker: an idle stream
    /// holds no buffer of its own.
    scratch: RefCell<Vec<u8>>,
    stamp: memmem::Finder<'static>,
}

pub fn main(args: WorkerArgs) -> ExitCode {
    crate::raise_open_files();
    let run = || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        tokio::task::LocalSet::new().block_on(&rt, run(args))
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn request(args: &WorkerArgs, channel: usize) -> String {
    let name = args.kind.channel(channel);
    match args.kind {
        Kind::Gateway => format!(
            "GET /api/sse?channels={name} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
            args.addr, args.token
        ),
        Kind::Nchan => format!(
            "GET /sub/{name} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            args.addr
        ),
    }
}

async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let state = Rc::new(State {
        stats: RefCell::new(Stats {
            received: 0,
            closed: 0,
            ready: 0,
            failed: 0,
            error: None,
            hist: Latency::new()?,
        }),
        scratch: RefCell::new(vec![0; 256 * 1024]),
        stamp: memmem::Finder::new(STAMP),
    });
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let ips = args.source_ips.clamp(1, 200);
    for j in args.from..args.to {
        let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (j % ips) as u8));
        let (state, gate, request) = (
            state.clone(),
            gate.clone(),
            request(&args, j % args.channels),
        );
        let (addr, kind) = (args.addr, args.kind);
        tokio::task::spawn_local(async move {
            let Ok(permit) = gate.acquire_owned().await else {
                return;
            };
            let result = subscribe(&state, permit, kind, addr, src, &request).await;
            let mut stats = state.stats.borrow_mut();
            match result {
                Ok(true) => stats.closed += 1,
                Ok(false) => stats.failed += 1,
                Err((ready, e)) => {
                    if ready {
                        stats.closed += 1;
                    } else {
                        stats.failed += 1;
                    }
                    stats.error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        });
    }
    let total = args.to - args.from;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.connect_secs);
    loop {
        let (ready, failed) = {
            let s = state.stats.borrow();
            (s.ready, s.failed)
        };
        if ready + failed >= total || tokio::time::Instant::now() >= deadline {
            let error = state.stats.borrow().error.clone().or_else(|| {
                (ready + failed < total).then(|| {
                    format!(
                        "{} not ready in {} s",
                        total - ready - failed,
                        args.connect_secs
                    )
                })
            });
            let failed = total - ready;
            println!(
                "{}",
                serde_json::to_string(&Ready {
                    ready,
                    failed,
                    error
                })?
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim() != "snap" {
            break;
        }
        let snap = {
            let mut s = state.stats.borrow_mut();
            let snap = Snap {
                received: s.received,
                closed: s.closed,
                hist: s.hist.sparse(),
            };
            s.hist.reset();
            snap
        };
        println!("{}", serde_json::to_string(&snap)?);
    }
    Ok(())
}

/// One SSE stream until it ends: `Ok(true)` when it ended after being ready, `Ok(false)` when
/// it never was; the error says whether it had been ready.
async fn subscribe(
    state: &State,
    permit: OwnedSemaphorePermit,
    kind: Kind,
    addr: SocketAddr,
    src: IpAddr,
    request: &str,
) -> Result<bool, (bool, anyhow::Error)> {
    let mut permit = Some(permit);
    let not_ready = |e: anyhow::Error| (false, e);
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| not_ready(e.into()))?;
    socket
        .bind(SocketAddr::new(src, 0))
        .with_context(|| format!("binding {src}"))
        .map_err(not_ready)?;
    let mut tcp = socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))
        .map_err(not_ready)?;
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| not_ready(e.into()))?;
    let marker: &[u8] = match kind {
        Kind::Gateway => b"event: ready\n",
        Kind::Nchan => b"\r\n\r\n",
    };
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let ready = permit.is_none();
        tcp.readable().await.map_err(|e| (ready, e.into()))?;
        let mut scratch = state.scratch.borrow_mut();
        let n = match tcp.try_read(&mut scratch) {
            Ok(0) => return Ok(ready),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err((ready, e.into())),
        };
        if ready {
            process(state, &mut carry, &scratch[..n]);
            continue;
        }
        carry.extend_from_slice(&scratch[..n]);
        drop(scratch);
        if carry.len() >= 12 && !carry.starts_with(b"HTTP/1.1 200") {
            let status = String::from_utf8_lossy(&carry[..carry.len().min(200)]).into_owned();
            return Err((false, anyhow::anyhow!("subscribe refused: {status}")));
        }
        if let Some(at) = memmem::find(&carry, marker) {
            carry.drain(..at + marker.len());
            permit = None;
            state.stats.borrow_mut().ready += 1;
            let rest = std::mem::take(&mut carry);
            process(state, &mut carry, &rest);
        }
    }
}

/// Counts and times the complete frames of `carry` + `fresh`; keeps an incomplete tail.
fn process(state: &State, carry: &mut Vec<u8>, fresh: &[u8]) {
    if carry.is_empty() {
        let used = scan(state, fresh);
        carry.extend_from_slice(&fresh[used..]);
    } else {
        carry.extend_from_slice(fresh);
        let used = scan(state, carry);
        carry.drain(..used);
    }
    if carry.len() > 4 << 20 {
        // No frame is this long: the stream is not what we expect; drop it rather than grow.
        carry.clear();
    }
}

/// Scans up to the last `\n\n` (the end of the last complete frame); returns the bytes used.
fn scan(state: &State, data: &[u8]) -> usize {
    let Some(end) = memmem::rfind(data, b"\n\n") else {
        return 0;
    };
    let complete = &data[..end + 2];
    let now = now_us();
    let mut stats = state.stats.borrow_mut();
    for at in state.stamp.find_iter(complete) {
        let mut t: u64 = 0;
        let mut digits = 0;
        for &b in complete[at + STAMP.len()..].iter().take(20) {
            if !b.is_ascii_digit() {
                break;
            }
            t = t.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
            digits += 1;
        }
        if digits > 0 {
            stats.received += 1;
            stats.hist.record(now.saturating_sub(t));
        }
    }
    end + 2
}

/// The coordinator's side: worker processes holding `subscribers` streams.
pub struct Fleet {
    procs: Vec<Proc>,
}

struct Proc {
    child: Child,
    stdin: ChildStdin,
    out: Lines<BufReader<ChildStdout>>,
}

/// Merged snapshot of every worker.
pub struct Merged {
    pub received: u64,
    pub closed: u64,
    pub hist: Latency,
}

impl Fleet {
    /// Starts the workers and waits until every stream is ready; fails when one is not.
    pub async fn start(
        server: &Server,
        subscribers: usize,
        channels: usize,
        workers: usize,
        source_ips: usize,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the loadgen binary")?;
        let workers = workers.clamp(1, subscribers.max(1));
        let mut procs = Vec::new();
        for w in 0..workers {
            let (from, to) = (subscribers * w / workers, subscribers * (w + 1) / workers);
            let mut child = tokio::process::Command::new(&exe)
                .arg("worker")
                .args(["--kind", server.kind.name()])
                .args(["--addr", &server.http.to_string()])
                .args(["--channels", &channels.to_string()])
                .args(["--from", &from.to_string(), "--to", &to.to_string()])
                .args(["--source-ips", &source_ips.to_string()])
                .env("LOADGEN_TOKEN", server.token())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("spawning a loadgen worker")?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                anyhow::bail!("worker pipes missing");
            };
            procs.push(Proc {
                child,
                stdin,
                out: BufReader::new(stdout).lines(),
            });
        }
        let mut fleet = Self { procs };
        let (mut ready, mut failed, mut error) = (0, 0, None);
        for p in &mut fleet.procs {
            let line = p
                .out
                .next_line()
                .await?
                .context("a worker exited before its streams were ready")?;
            let r: Ready = serde_json::from_str(&line)?;
            ready += r.ready;
            failed += r.failed;
            error = error.or(r.error);
        }
        if failed > 0 {
            anyhow::bail!(
                "{failed} of {subscribers} subscribers failed ({ready} ready): {}",
                error.unwrap_or_default()
            );
        }
        Ok(fleet)
    }

    /// Counters and the latency histogram since the previous snap, merged over the workers.
    pub async fn snap(&mut self) -> anyhow::Result<Merged> {
        for p in &mut self.procs {
            p.stdin.write_all(b"snap\n").await?;
            p.stdin.flush().await?;
        }
        let mut merged = Merged {
            received: 0,
            closed: 0,
            hist: Latency::new()?,
        };
        for p in &mut self.procs {
            let line = p.out.next_line().await?.context("a worker exited")?;
            let snap: Snap = serde_json::from_str(&line)?;
            merged.received += snap.received;
            merged.closed += snap.closed;
            merged.hist.merge_sparse(&snap.hist);
        }
        Ok(merged)
    }

    /// CPU seconds the workers used so far.
    pub fn cpu_secs(&self) -> f64 {
        self.procs
            .iter()
            .filter_map(|p| p.child.id())
            .map(|pid| {
                let (user, sys) = crate::target::cpu_of(pid);
                user + sys
            })
            .sum()
    }

    pub async fn stop(self) {
        for mut p in self.procs {
            let _ = p.stdin.write_all(b"quit\n").await;
            drop(p.stdin);
            if tokio::time::timeout(Duration::from_secs(2), p.child.wait())
                .await
                .is_err()
            {
                let _ = p.child.kill().await;
            }
        }
    }
}
