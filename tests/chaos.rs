//! Fault injection against real processes: two gateway nodes (the built binary) sharing a private
//! Redis (AOF, `appendfsync always`), SSE subscribers that record every frame and resume with
//! `Last-Event-ID`, and publishers that retry with the same idempotency key until acknowledged.
//!
//! Faults: `kill -9` of a node; Redis `SIGSTOP` for 5 s (with publishes that time out and are
//! retried with the same key, and publishes answered `UNAVAILABLE` and abandoned); Redis
//! `kill -9` and restart from its AOF; a reconnect storm after a node restart; slow consumers
//! amid fast ones. After each fault a checkpoint publishes a marker on every channel, waits
//! until every stream has it, and checks each stream: every acknowledged event of its channels
//! exactly once, in log order, or an explicit `gap` before it.
//!
//! Short profile (CI): `cargo test --test chaos`. Long profile: `scripts/chaos.sh --minutes 15`
//! (sets `CHAOS_MINUTES`; `CHAOS_STORM` sets the storm size).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "chaos/checker.rs"]
mod checker;
#[path = "chaos/cluster.rs"]
mod cluster;
#[path = "chaos/publisher.rs"]
mod publisher;
#[path = "chaos/sse.rs"]
mod sse;
#[path = "chaos/subscriber.rs"]
mod subscriber;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use checker::{check_window, unacked_received, CheckState, Tally};
use cluster::{http_get, Node, NodeSpec, Redis, SERVICE};
use publisher::{Attempt, Id, Ledger, Publisher, Target};
use serde_json::json;
use subscriber::{Env, Policy, Sub, SubSpec};
use tokio::time::Instant;

/// Core channels carry the steady load; storm and slow channels their own phase's events.
const CORE: usize = 8;
const STORM_CHANNELS: usize = 10;
const STORM0: usize = CORE;
const SLOW: usize = CORE + STORM_CHANNELS;
const CHANNELS: usize = SLOW + 1;

/// Publisher ids (each publisher task owns its idempotency keys).
const MARKER_PUB: u32 = 900;
const STORM_PUB: u32 = 800;
const FLOOD_PUB: u32 = 700;
const REFUSED_PUB: u32 = 950;
const RETRY_PUB: u32 = 960;

const SLOW_CLIENTS: usize = 3;
const FAST_CLIENTS: usize = 5;

/// The longest `/health` may take during the reconnect storm. The gateway under test is built
/// in the test's profile: a release build must answer within 1 s. A debug build needs ~3 ms of
/// CPU per resume (10-20x a release build), so on a shared 2-core machine the storm's first
/// seconds saturate it; there the bound only catches a stall, and the measured maximum is
/// printed (`scripts/chaos.sh` runs the release build, where 1 s is enforced).
const HEALTH_LIMIT: Duration = if cfg!(debug_assertions) {
    Duration::from_secs(5)
} else {
    Duration::from_secs(1)
};

/// How long the run may take for one condition to come true.
const WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    NodeKill,
    RedisPause,
    RedisKill,
    Storm,
    Slow,
}

struct Profile {
    /// `None`: the short profile (each fault once).
    minutes: Option<f64>,
    storm: usize,
    core_subs: usize,
    publishers: u32,
    publish_every: Duration,
    faults: Vec<Fault>,
    /// Fail on any `gap` (the log retained everything, so none is due).
    strict_gaps: bool,
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The profile from the environment: `CHAOS_MINUTES` (long profile: cycle the faults for that
/// long), `CHAOS_STORM` (streams in the storm), `CHAOS_RATE` (events per second of the steady
/// load).
fn profile() -> Profile {
    let minutes = env_num::<f64>("CHAOS_MINUTES").filter(|m| *m > 0.0);
    let long = minutes.is_some();
    let storm = env_num("CHAOS_STORM").unwrap_or(if long { 5000 } else { 1000 });
    let publishers = 3;
    let rate: f64 = env_num("CHAOS_RATE").unwrap_or(if long { 100.0 } else { 30.0 });
    Profile {
        minutes,
        storm,
        core_subs: 16,
        publishers,
        publish_every: Duration::from_secs_f64(f64::from(publishers) / rate.max(1.0)),
        faults: if long {
            vec![
                Fault::NodeKill,
                Fault::RedisPause,
                Fault::NodeKill,
                Fault::RedisKill,
                Fault::Storm,
                Fault::Slow,
            ]
        } else {
            vec![
                Fault::NodeKill,
                Fault::RedisPause,
                Fault::RedisKill,
                Fault::Storm,
                Fault::Slow,
            ]
        },
        strict_gaps: false,
    }
}

fn cursor(id: Id) -> String {
    format!("{:013}-{:06}", id.0, id.1)
}

fn token(secret: &str, sub: &str) -> String {
    let exp = sse_gateway::event::now_ms() / 1000 + 2 * 86400;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp, "channels": ["logs:**"]}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Polls `cond` until it holds or `within` passes.
async fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// /health prober: plain threads, a fresh connection per probe.

#[derive(Clone, Copy, Default)]
struct HealthStat {
    max: Duration,
    probes: u64,
    failures: u64,
    /// The same probe against a trivial server on a thread of this process: how much of the
    /// latency the machine's load alone explains.
    control_max: Duration,
}

/// A trivial HTTP server (one thread, one response per connection) for the control probe.
fn control_server() -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ =
                c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    addr
}

struct ProbeTarget {
    addr: SocketAddr,
    up: bool,
    epoch: u64,
}

struct Prober {
    targets: Arc<Mutex<Vec<ProbeTarget>>>,
    phase: Arc<Mutex<String>>,
    stats: Arc<Mutex<BTreeMap<String, HealthStat>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(addrs: &[SocketAddr]) -> Self {
        let targets = Arc::new(Mutex::new(
            addrs
                .iter()
                .map(|&addr| ProbeTarget {
                    addr,
                    up: true,
                    epoch: 0,
                })
                .collect::<Vec<_>>(),
        ));
        let phase = Arc::new(Mutex::new("start".to_owned()));
        let stats = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let control = control_server();
        let thread = {
            let (targets, phase, stats, stop) =
                (targets.clone(), phase.clone(), stats.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let snapshot: Vec<(usize, SocketAddr, u64)> = targets
                        .lock()
                        .unwrap()
                        .iter()
                        .enumerate()
                        .filter(|(_, t)| t.up)
                        .map(|(i, t)| (i, t.addr, t.epoch))
                        .collect();
                    for (i, addr, epoch) in snapshot {
                        let phase_now = phase.lock().unwrap().clone();
                        let r = http_get(addr, "/health", Duration::from_secs(3));
                        // A node taken down meanwhile is not a failed probe.
                        let still = {
                            let t = targets.lock().unwrap();
                            t[i].up && t[i].epoch == epoch
                        };
                        if !still {
                            continue;
                        }
                        let mut s = stats.lock().unwrap();
                        let stat = s.entry(phase_now).or_insert_with(HealthStat::default);
                        stat.probes += 1;
                        match r {
                            Ok((200, _, elapsed)) => stat.max = stat.max.max(elapsed),
                            _ => stat.failures += 1,
                        }
                    }
                    let phase_now = phase.lock().unwrap().clone();
                    if let Ok((200, _, elapsed)) = http_get(control, "/", Duration::from_secs(3)) {
                        let mut s = stats.lock().unwrap();
                        let stat = s.entry(phase_now).or_insert_with(HealthStat::default);
                        stat.control_max = stat.control_max.max(elapsed);
                    }
                    // Sampling interval of the probe, not a wait for a condition.
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Self {
            targets,
            phase,
            stats,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, node: usize, up: bool) {
        let mut t = self.targets.lock().unwrap();
        t[node].up = up;
        t[node].epoch += 1;
    }

    fn phase(&self, name: &str) {
        *self.phase.lock().unwrap() = name.to_owned();
    }

    fn reset(&self, name: &str) {
        self.stats.lock().unwrap().remove(name);
    }

    fn stat(&self, name: &str) -> HealthStat {
        self.stats
            .lock()
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or_default()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

/// A subscriber and what the checker remembers of it.
struct Tracked {
    sub: Sub,
    st: CheckState,
}

#[derive(Default, Clone, Copy)]
struct Row {
    survived: u64,
    acked: u64,
    tally: Tally,
}

#[derive(Default)]
struct Notes {
    refused_probes: u64,
    abandoned_probes: u64,
    /// Events (id, publisher, seq) some stream received that were not acknowledged when it was
    /// checked (re-checked at the end: a publish may have been in flight then).
    unacked_delivered: BTreeSet<(Id, u32, u64)>,
    retry_probes: u64,
    retry_duplicate_answers: u64,
    retry_delivered: u64,
    retry_expected: u64,
    retry_duplicated: u64,
    outage_stream_closes: u64,
    storm: StormStats,
    slow: SlowStats,
    audits: u64,
    audit_largest: u64,
}

/// All reconnect storms of the run.
#[derive(Default)]
struct StormStats {
    runs: u64,
    streams: usize,
    resumed_max: Duration,
    caught_up_max: Duration,
    health_max: Duration,
    probes: u64,
    probe_failures: u64,
    node_cpu_max: f64,
    opens_retried: u64,
}

/// All slow-consumer rounds of the run.
#[derive(Default)]
struct SlowStats {
    runs: u64,
    events: u64,
    /// Rounds in which the node counted exactly the slow streams.
    exact: u64,
    fast_closed: u64,
    resumed: u64,
}

struct World {
    profile: Profile,
    _dir: tempfile::TempDir,
    redis: Redis,
    nodes: Vec<Node>,
    secret: String,
    channels: Arc<Vec<String>>,
    env: Env,
    target: Target,
    ledger: Arc<Mutex<Ledger>>,
    prober: Prober,
    core: Vec<Tracked>,
    marker: Publisher,
    marker_seq: u64,
    probe_seq: u64,
    run_start: Option<Id>,
    rows: BTreeMap<&'static str, Row>,
    order: Vec<&'static str>,
    problems: Vec<String>,
    notes: Notes,
    /// (publisher, seq, channel) of the publishes retried after a client deadline.
    retry_probes: Vec<(u32, u64, usize)>,
    storm_victim: usize,
    started: Instant,
}

impl World {
    async fn start(profile: Profile) -> Self {
        let fds = cluster::raise_fd_limit();
        let needed = u64::try_from(profile.storm).unwrap() + 500;
        assert!(
            fds >= needed,
            "open-files limit {fds} is below the {needed} this run needs"
        );
        sse_gateway::app::install_crypto_provider();
        let dir = tempfile::Builder::new()
            .prefix("sse-gateway-chaos-")
            .tempdir()
            .unwrap();
        eprintln!("chaos: processes and logs in {}", dir.path().display());
        sse_gateway::pki::ensure_dev_pki(dir.path(), &[SERVICE]).unwrap();
        let redis_dir = dir.path().join("redis");
        std::fs::create_dir_all(&redis_dir).unwrap();
        let redis = Redis::start(&redis_dir);
        let secret = format!("chaos-{}", sse_gateway::hub::random_id());
        let spec = NodeSpec {
            dir: dir.path().to_owned(),
            secret: secret.clone(),
            redis_url: redis.url(),
            key_prefix: format!("chaos-{}", sse_gateway::hub::random_id()),
        };
        let nodes = vec![Node::start(&spec, "node-a"), Node::start(&spec, "node-b")];
        let mut channels = Vec::new();
        for i in 0..CORE {
            channels.push(format!("logs:core:c{i}"));
        }
        for i in 0..STORM_CHANNELS {
            channels.push(format!("logs:storm:s{i}"));
        }
        channels.push("logs:slow:x".to_owned());
        assert_eq!(channels.len(), CHANNELS);
        let channels = Arc::new(channels);
        let env = Env {
            http: nodes.iter().map(|n| n.http).collect(),
            channel_index: Arc::new(
                channels
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.clone(), i))
                    .collect::<HashMap<_, _>>(),
            ),
        };
        let ledger = Arc::new(Mutex::new(Ledger::new(CHANNELS)));
        let target = Target {
            grpc: nodes.iter().map(|n| n.grpc).collect(),
            pki: dir.path().to_owned(),
            service: SERVICE.to_owned(),
            channels: channels.clone(),
            ledger: ledger.clone(),
        };
        let prober = Prober::start(&env.http);
        let marker = Publisher::new(&target, MARKER_PUB);
        let world = Self {
            profile,
            _dir: dir,
            redis,
            nodes,
            secret,
            channels,
            env,
            target,
            ledger,
            prober,
            core: Vec::new(),
            marker,
            marker_seq: 0,
            probe_seq: 0,
            run_start: None,
            rows: BTreeMap::new(),
            order: Vec::new(),
            problems: Vec::new(),
            notes: Notes::default(),
            retry_probes: Vec::new(),
            storm_victim: 0,
            started: Instant::now(),
        };
        for n in 0..world.nodes.len() {
            world.wait_ready(n, true).await;
        }
        world
    }

    fn node_ok(&self, node: usize, ready: bool) -> bool {
        let want = if ready { 200 } else { 503 };
        matches!(http_get(self.nodes[node].http, "/ready", Duration::from_secs(2)), Ok((s, _, _)) if s == want)
    }

    async fn wait_ready(&self, node: usize, ready: bool) {
        let ok = wait_until(WAIT, || self.node_ok(node, ready)).await;
        assert!(
            ok,
            "{}: /ready did not become {} (log tail:\n{})",
            self.nodes[node].name,
            if ready { 200 } else { 503 },
            self.nodes[node].log_tail()
        );
    }

    fn spawn_sub(&self, spec: SubSpec) -> Tracked {
        Tracked {
            sub: Sub::spawn(&self.env, spec, &self.channels),
            st: CheckState::default(),
        }
    }

    fn core_spec(&self, i: usize) -> SubSpec {
        SubSpec {
            name: format!("core-{i}"),
            channels: vec![i % CORE, (i + 3) % CORE, (i + 5) % CORE],
            token: token(&self.secret, &format!("core-{i}")),
            node: i % self.nodes.len(),
            policy: Policy::FailOver,
            source: None,
            recv_buffer: None,
            jitter: Duration::ZERO,
            resume_from: None,
        }
    }

    /// Waits until every subscriber in `subs` has an open stream.
    async fn wait_connected(&self, what: &str, subs: &[Tracked], min_opens: u32) {
        let ok = wait_until(WAIT * 2, || {
            subs.iter().all(|t| {
                let l = t.sub.log.lock().unwrap();
                l.connected && l.opens >= min_opens && l.start.is_some()
            })
        })
        .await;
        if !ok {
            let missing: Vec<String> = subs
                .iter()
                .filter_map(|t| {
                    let l = t.sub.log.lock().unwrap();
                    (!(l.connected && l.opens >= min_opens)).then(|| {
                        format!(
                            "{} (opens {}, open errors {}, last {:?}, anomalies {:?})",
                            t.sub.name, l.opens, l.open_errors, l.last_open_error, l.anomalies
                        )
                    })
                })
                .take(5)
                .collect();
            panic!("{what}: streams not open: {missing:?}");
        }
    }

    fn core_disconnects(&self) -> u64 {
        self.core
            .iter()
            .map(|t| u64::from(t.sub.log.lock().unwrap().disconnects))
            .sum()
    }

    /// Publishes a marker on every channel of `groups`, waits until every stream has the
    /// markers of its channels, and checks each group's window. Returns one tally per group.
    async fn checkpoint(&mut self, groups: &mut [&mut Vec<Tracked>]) -> Vec<Tally> {
        let channels: BTreeSet<usize> = groups
            .iter()
            .flat_map(|g| g.iter().flat_map(|t| t.sub.channels.iter().copied()))
            .collect();
        let mut markers = HashMap::new();
        for ch in channels {
            self.marker_seq += 1;
            let (id, _) = self.marker.publish_until_acked(ch, self.marker_seq).await;
            markers.insert(ch, id);
        }
        let upto = |t: &Tracked| -> Id { t.sub.channels.iter().map(|c| markers[c]).max().unwrap() };
        let within = WAIT * 2 + Duration::from_millis(20 * self.profile.storm as u64);
        let reached = wait_until(within, || {
            groups.iter().all(|g| {
                g.iter()
                    .all(|t| t.sub.last_id().is_some_and(|l| l >= upto(t)))
            })
        })
        .await;
        if !reached {
            for g in groups.iter() {
                for t in g
                    .iter()
                    .filter(|t| t.sub.last_id().is_none_or(|l| l < upto(t)))
                    .take(3)
                {
                    let l = t.sub.log.lock().unwrap();
                    self.problems.push(format!(
                        "{}: did not reach {:?} within {within:?}: last {:?}, connected {}, node {}, opens {}, open errors {}, anomalies {:?}",
                        t.sub.name, upto(t), l.last_id, l.connected, l.node, l.opens, l.open_errors, l.anomalies
                    ));
                }
            }
        }
        let ledger = self.ledger.lock().unwrap();
        let mut out = Vec::new();
        for g in groups.iter_mut() {
            let mut tally = Tally::default();
            for t in g.iter_mut() {
                let u = upto(t);
                let log = t.sub.log.lock().unwrap();
                for a in &log.anomalies {
                    self.problems.push(format!("{}: {a}", t.sub.name));
                }
                tally += check_window(
                    &t.sub.name,
                    &log,
                    &t.sub.channels,
                    &ledger,
                    &mut t.st,
                    u,
                    &mut self.problems,
                );
            }
            for t in g.iter_mut() {
                t.sub.log.lock().unwrap().anomalies.clear();
            }
            out.push(tally);
        }
        out
    }

    /// Records a fault's row.
    fn row(&mut self, name: &'static str, acked_before: usize, tally: Tally) {
        let acked = self.ledger.lock().unwrap().acked.len() - acked_before;
        if !self.rows.contains_key(name) {
            self.order.push(name);
        }
        let row = self.rows.entry(name).or_default();
        row.survived += 1;
        row.acked += acked as u64;
        row.tally += tally;
    }

    fn acked_now(&self) -> usize {
        self.ledger.lock().unwrap().acked.len()
    }

    /// Checks the core streams (and, when `audit`, a fresh stream replaying the whole log).
    async fn check_core(&mut self, row: &'static str, acked_before: usize, audit: bool) {
        let mut core = std::mem::take(&mut self.core);
        let mut auditor = Vec::new();
        if audit {
            let start = self.run_start.expect("run start");
            auditor.push(self.spawn_sub(SubSpec {
                name: "auditor".into(),
                channels: (0..CHANNELS).collect(),
                token: token(&self.secret, "auditor"),
                node: 0,
                policy: Policy::FailOver,
                source: None,
                recv_buffer: None,
                jitter: Duration::ZERO,
                resume_from: Some(cursor(start)),
            }));
        }
        let tallies = self.checkpoint(&mut [&mut core, &mut auditor]).await;
        self.core = core;
        self.row(row, acked_before, tallies[0]);
        if audit {
            let t = tallies[1];
            eprintln!(
                "chaos: log audit after {row}: replayed {} events from the start of the run, lost {}, duplicated {}, out of order {}, gaps {}",
                t.delivered, t.lost, t.duplicated, t.out_of_order, t.gaps
            );
            self.notes.audits += 1;
            self.notes.audit_largest = self.notes.audit_largest.max(t.delivered);
            let mut row_audit = Row {
                survived: 1,
                acked: 0,
                tally: t,
            };
            if let Some(prev) = self.rows.get("log audit (full replay)") {
                row_audit.survived += prev.survived;
                row_audit.tally += prev.tally;
            } else {
                self.order.push("log audit (full replay)");
            }
            self.rows.insert("log audit (full replay)", row_audit);
            self.retire(&mut auditor).await;
        }
    }

    /// Stops subscribers for good, counting what they received without an acknowledgement.
    async fn retire(&mut self, subs: &mut Vec<Tracked>) {
        for t in subs.iter_mut() {
            t.sub.stop().await;
        }
        self.scan_unacked(subs);
        subs.clear();
    }

    fn scan_unacked(&mut self, subs: &[Tracked]) {
        let ledger = self.ledger.lock().unwrap();
        for t in subs {
            let log = t.sub.log.lock().unwrap();
            for e in unacked_received(&log, &ledger) {
                self.notes.unacked_delivered.insert(e);
            }
        }
    }

    /// Deliveries of events never acknowledged (by the end of the run), by cause: answered
    /// UNAVAILABLE, abandoned after the client's own deadline, and unexplained (with examples:
    /// no attempt left them unacknowledged, or they were acknowledged under another id).
    fn unacked_counts(&self) -> (u64, u64, Vec<String>) {
        let ledger = self.ledger.lock().unwrap();
        let (mut refused, mut abandoned, mut other) = (0, 0, Vec::new());
        for &(id, p, n) in &self.notes.unacked_delivered {
            if ledger.acked.contains_key(&id) {
                continue;
            }
            if ledger.refused.contains(&(p, n)) {
                refused += 1;
            } else if ledger.abandoned.contains(&(p, n)) {
                abandoned += 1;
            } else {
                other.push(match ledger.logical.get(&(p, n)) {
                    Some(acked) => format!(
                        "{id:?} (publisher {p} seq {n}) delivered, but acknowledged as {acked:?}"
                    ),
                    None => format!("{id:?} (publisher {p} seq {n}) delivered, never acknowledged"),
                });
            }
        }
        (refused, abandoned, other)
    }

    // -----------------------------------------------------------------------------------------
    // Faults.

    /// `kill -9` of the node most core streams are on; they resume on the other node.
    async fn node_kill(&mut self) {
        let acked_before = self.acked_now();
        self.prober.phase("node-kill");
        let count = |n: usize| {
            self.core
                .iter()
                .filter(|t| {
                    let l = t.sub.log.lock().unwrap();
                    l.connected && l.node == n
                })
                .count()
        };
        let victim = if count(0) >= count(1) { 0 } else { 1 };
        let moved: Vec<(usize, u32)> = self
            .core
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let l = t.sub.log.lock().unwrap();
                (l.connected && l.node == victim).then_some((i, l.opens))
            })
            .collect();
        self.prober.set(victim, false);
        self.nodes[victim].kill();
        let ok = wait_until(WAIT, || {
            moved.iter().all(|&(i, opens)| {
                let l = self.core[i].sub.log.lock().unwrap();
                l.connected && l.opens > opens && l.node != victim
            })
        })
        .await;
        if !ok {
            self.problems.push(format!(
                "node-kill: the streams of {} did not all resume on the other node",
                self.nodes[victim].name
            ));
        }
        for &(i, opens) in &moved {
            let l = self.core[i].sub.log.lock().unwrap();
            let resumed_with_cursor = l
                .items
                .iter()
                .filter_map(|r| match r {
                    subscriber::Rx::Open { node, resume } => Some((*node, *resume)),
                    _ => None,
                })
                .nth(opens as usize)
                .is_some_and(|(node, resume)| node != victim && resume.is_some());
            if !resumed_with_cursor {
                self.problems.push(format!(
                    "node-kill: {} did not resume on the other node with Last-Event-ID",
                    self.core[i].sub.name
                ));
            }
        }
        self.nodes[victim].restart();
        self.prober.set(victim, true);
        self.wait_ready(victim, true).await;
        self.check_core("gateway node kill -9", acked_before, false)
            .await;
    }

    /// Redis `SIGSTOP` for 5 s. Meanwhile: publishes answered `UNAVAILABLE` and abandoned
    /// (they must never appear), and publishes cut by a short client deadline, retried with the
    /// same key after `SIGCONT` (they must appear exactly once).
    async fn redis_pause(&mut self) {
        let acked_before = self.acked_now();
        self.prober.phase("redis-sigstop");
        let closes_before = self.core_disconnects();
        self.redis.pause();
        let t0 = Instant::now();
        let mut refused = Vec::new();
        let mut retried = Vec::new();
        for k in 0..3u32 {
            self.probe_seq += 1;
            let seq = self.probe_seq;
            let ch = (seq as usize + k as usize) % CORE;
            let mut p = Publisher::new(&self.target, REFUSED_PUB + k);
            refused.push(tokio::spawn(async move {
                let outcome = p.attempt(ch, seq, Duration::from_secs(10)).await;
                (p, ch, seq, outcome)
            }));
            let mut p = Publisher::new(&self.target, RETRY_PUB + k);
            retried.push(tokio::spawn(async move {
                let outcome = p.attempt(ch, seq, Duration::from_millis(300)).await;
                (p, ch, seq, outcome)
            }));
        }
        let mut retry_list = Vec::new();
        for r in retried {
            let (p, ch, seq, outcome) = r.await.unwrap();
            if let Attempt::Acked { .. } = outcome {
                self.problems
                    .push("a publish was acknowledged while Redis was stopped".into());
            }
            retry_list.push((p, ch, seq));
        }
        // The fault itself: Redis stays frozen for 5 s.
        tokio::time::sleep_until(t0 + Duration::from_secs(5)).await;
        self.redis.resume();
        for n in 0..self.nodes.len() {
            self.wait_ready(n, true).await;
        }
        for (mut p, ch, seq) in retry_list {
            let (_, duplicate) = p.publish_until_acked(ch, seq).await;
            self.notes.retry_probes += 1;
            if duplicate {
                self.notes.retry_duplicate_answers += 1;
            }
            self.retry_probes.push((p.id, seq, ch));
        }
        for r in refused {
            let (p, ch, seq, outcome) = r.await.unwrap();
            let mut l = self.ledger.lock().unwrap();
            match outcome {
                Attempt::Acked { id, duplicate } => {
                    drop(l);
                    p.record(ch, seq, id, duplicate);
                }
                Attempt::Unavailable => {
                    self.notes.refused_probes += 1;
                    l.refused.insert((p.id, seq));
                }
                Attempt::Failed(_) => {
                    self.notes.abandoned_probes += 1;
                    l.abandoned.insert((p.id, seq));
                }
            }
        }
        self.notes.outage_stream_closes += self.core_disconnects() - closes_before;
        self.check_core("Redis SIGSTOP 5 s", acked_before, false)
            .await;
    }

    /// Redis `kill -9`, restarted from its AOF on the same port; then a fresh stream replays
    /// the whole log: every acknowledged event must still be there.
    async fn redis_kill(&mut self) {
        let acked_before = self.acked_now();
        self.prober.phase("redis-kill");
        let closes_before = self.core_disconnects();
        self.redis.kill();
        for n in 0..self.nodes.len() {
            self.wait_ready(n, false).await;
        }
        self.redis.restart();
        for n in 0..self.nodes.len() {
            self.wait_ready(n, true).await;
        }
        self.notes.outage_stream_closes += self.core_disconnects() - closes_before;
        self.check_core("Redis kill -9 + AOF restart", acked_before, true)
            .await;
    }

    /// `n` streams on one node; the node is killed, events are published meanwhile, the node
    /// restarts on the same ports and every stream reconnects with `Last-Event-ID` within one
    /// second. All must resume and have everything; `/health` must answer within 1 s.
    async fn storm(&mut self) {
        let n = self.profile.storm;
        let acked_before = self.acked_now();
        self.prober.phase("storm-setup");
        let victim = self.storm_victim;
        self.storm_victim = (victim + 1) % self.nodes.len();
        let mut storm: Vec<Tracked> = Vec::with_capacity(n);
        let batch = 250;
        for i in 0..n {
            storm.push(self.spawn_sub(SubSpec {
                name: format!("storm-{i}"),
                channels: vec![STORM0 + i % STORM_CHANNELS],
                token: token(&self.secret, &format!("storm-{}", i % 100)),
                node: victim,
                policy: Policy::Hold,
                source: Some(IpAddr::V4(Ipv4Addr::new(
                    127,
                    0,
                    0,
                    2 + u8::try_from(i % 8).unwrap(),
                ))),
                recv_buffer: None,
                jitter: Duration::from_micros((i as u64 * 1_000_000) / n as u64),
                resume_from: None,
            }));
            if (i + 1) % batch == 0 || i + 1 == n {
                self.wait_connected("storm setup", &storm, 1).await;
            }
        }
        let mut storm_pub = Publisher::new(&self.target, STORM_PUB);
        storm_pub.pad = "s".repeat(64);
        let storm_seq = Arc::new(Mutex::new(self.probe_seq * 1000));
        storm_pub = publish_round(storm_pub, storm_seq.clone()).await;
        // Kill the node under all those streams, publish while it is down.
        self.prober.set(victim, false);
        self.nodes[victim].kill();
        let all_down = wait_until(WAIT, || {
            storm.iter().all(|t| !t.sub.log.lock().unwrap().connected)
        })
        .await;
        assert!(all_down, "storm: streams did not notice the node's death");
        storm_pub = publish_round(storm_pub, storm_seq.clone()).await;
        // Restart on the same ports and let every stream reconnect within one second.
        self.prober.phase("storm");
        let self_cpu = cluster::cpu_seconds(std::process::id());
        let redis_cpu = self.redis.cpu();
        self.nodes[victim].restart();
        self.prober.set(victim, true);
        let t0 = Instant::now();
        for t in &storm {
            t.sub.ctl.send_modify(|c| {
                c.go += 1;
                c.node = victim;
            });
        }
        let during = tokio::spawn(publish_round(storm_pub, storm_seq.clone()));
        let resumed = wait_until(WAIT * 2, || {
            storm.iter().all(|t| {
                let l = t.sub.log.lock().unwrap();
                l.connected && l.opens >= 2
            })
        })
        .await;
        let resumed_in = t0.elapsed();
        let not_resumed = storm
            .iter()
            .filter(|t| t.sub.log.lock().unwrap().opens < 2)
            .count();
        if !resumed {
            self.problems.push(format!(
                "storm: {not_resumed} of {n} streams did not resume within {:?}",
                WAIT * 2
            ));
        }
        let _ = during.await.unwrap();
        let open_errors: u64 = storm
            .iter()
            .map(|t| u64::from(t.sub.log.lock().unwrap().open_errors))
            .sum();
        let mut core = std::mem::take(&mut self.core);
        let tallies = self.checkpoint(&mut [&mut storm, &mut core]).await;
        self.core = core;
        let caught_up_in = t0.elapsed();
        let node_cpu = self.nodes[victim].cpu();
        let self_cpu = cluster::cpu_seconds(std::process::id()) - self_cpu;
        let redis_cpu = self.redis.cpu() - redis_cpu;
        let health = self.prober.stat("storm");
        // Closing the storm's streams is measured apart (reported, not bounded).
        self.prober.phase("storm-teardown");
        self.prober.reset("storm");
        if health.max > HEALTH_LIMIT || health.failures > 0 {
            self.problems.push(format!(
                "storm: /health max {:?} over {} probes, {} failed (limit {HEALTH_LIMIT:?})",
                health.max, health.probes, health.failures
            ));
        } else if health.max > Duration::from_secs(1) {
            eprintln!(
                "chaos: NOTE /health took {:?} during the storm (over 1 s; a debug build of the gateway)",
                health.max
            );
        }
        eprintln!(
            "chaos: storm of {n} streams on {}: all resumed {:.1} s after the restart (reconnects spread over 1 s; {open_errors} opens retried), all caught up after {:.1} s (CPU-s meanwhile: the node {node_cpu:.1}, Redis {redis_cpu:.1}, the test's clients {self_cpu:.1}); /health max {} ms over {} probes ({} failed; the control server's max {} ms)",
            self.nodes[victim].name,
            resumed_in.as_secs_f64(),
            caught_up_in.as_secs_f64(),
            health.max.as_millis(),
            health.probes,
            health.failures,
            health.control_max.as_millis()
        );
        let st = &mut self.notes.storm;
        st.runs += 1;
        st.streams = n;
        st.resumed_max = st.resumed_max.max(resumed_in);
        st.caught_up_max = st.caught_up_max.max(caught_up_in);
        st.health_max = st.health_max.max(health.max);
        st.probes += health.probes;
        st.probe_failures += health.failures;
        st.node_cpu_max = st.node_cpu_max.max(node_cpu);
        st.opens_retried += open_errors;
        let mut tally = tallies[0];
        tally += tallies[1];
        self.row("reconnect storm", acked_before, tally);
        self.retire(&mut storm).await;
    }

    /// Slow consumers (stop reading) amid fast ones on one node and channel: only the slow
    /// ones are closed, and they resume from their cursor.
    async fn slow_consumers(&mut self) {
        let acked_before = self.acked_now();
        self.prober.phase("slow-consumers");
        let node = 1;
        let mut group: Vec<Tracked> = Vec::new();
        for i in 0..SLOW_CLIENTS + FAST_CLIENTS {
            let slow = i < SLOW_CLIENTS;
            group.push(self.spawn_sub(SubSpec {
                name: format!("{}-{i}", if slow { "slow" } else { "fast" }),
                channels: vec![SLOW],
                token: token(&self.secret, &format!("slowfast-{i}")),
                node,
                policy: if slow { Policy::Slow } else { Policy::FailOver },
                source: None,
                recv_buffer: slow.then_some(4096),
                jitter: Duration::ZERO,
                resume_from: None,
            }));
        }
        self.wait_connected("slow-consumer setup", &group, 1).await;
        let metric = |w: &World| slow_metric(w.nodes[node].http);
        let before = metric(self);
        let core_closes = self.core_disconnects();
        for t in &group[..SLOW_CLIENTS] {
            t.sub.ctl.send_modify(|c| c.paused = true);
        }
        // Flood the channel until the node has closed every slow stream.
        let stop = Arc::new(AtomicBool::new(false));
        let mut flooders = Vec::new();
        let base = self.probe_seq * 1_000_000;
        for k in 0..4u32 {
            let mut p = Publisher::new(&self.target, FLOOD_PUB + k);
            p.pad = "x".repeat(2000);
            let stop = stop.clone();
            flooders.push(tokio::spawn(async move {
                let mut seq = base;
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) && sent < 20_000 {
                    seq += 1;
                    sent += 1;
                    p.publish_until_acked(SLOW, seq).await;
                    // At most ~800 events/s from the four: a stream that keeps up with that is
                    // fast; the bound on the queue is what makes a stalled one slow.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                sent
            }));
        }
        let kicked = wait_until(WAIT * 2, || metric(self) - before >= SLOW_CLIENTS as f64).await;
        stop.store(true, Ordering::Relaxed);
        let mut sent = 0;
        for f in flooders {
            sent += f.await.unwrap();
        }
        let delta = metric(self) - before;
        if !kicked || delta != SLOW_CLIENTS as f64 {
            self.problems.push(format!(
                "slow consumers: the node counted {delta} slow-consumer disconnects, expected exactly {SLOW_CLIENTS}"
            ));
        }
        let fast_closes: u32 = group[SLOW_CLIENTS..]
            .iter()
            .map(|t| t.sub.log.lock().unwrap().disconnects)
            .sum();
        let core_closed = self.core_disconnects() - core_closes;
        if fast_closes > 0 || core_closed > 0 {
            self.problems.push(format!(
                "slow consumers: fast streams were disconnected too ({fast_closes} fast, {core_closed} core)"
            ));
        }
        for t in &group[..SLOW_CLIENTS] {
            t.sub.ctl.send_modify(|c| c.paused = false);
        }
        let resumed = wait_until(WAIT, || {
            group[..SLOW_CLIENTS]
                .iter()
                .all(|t| t.sub.log.lock().unwrap().opens >= 2)
        })
        .await;
        if !resumed {
            self.problems
                .push("slow consumers: a closed slow stream did not resume".into());
        }
        let mut core = std::mem::take(&mut self.core);
        let tallies = self.checkpoint(&mut [&mut group, &mut core]).await;
        self.core = core;
        eprintln!(
            "chaos: {SLOW_CLIENTS} slow + {FAST_CLIENTS} fast streams, {sent} events of 2 KB: slow-consumer metric +{delta}, fast streams closed {fast_closes}, slow streams resumed by cursor: {resumed}"
        );
        let sl = &mut self.notes.slow;
        sl.runs += 1;
        sl.events += sent;
        sl.exact += u64::from(delta == SLOW_CLIENTS as f64);
        sl.fast_closed += u64::from(fast_closes);
        sl.resumed += u64::from(resumed);
        let mut tally = tallies[0];
        tally += tallies[1];
        self.row("slow consumers", acked_before, tally);
        self.retire(&mut group).await;
    }

    // -----------------------------------------------------------------------------------------
    // Report.

    fn retry_tally(&mut self) {
        for &(p, seq, ch) in &self.retry_probes {
            for t in self.core.iter().filter(|t| t.sub.channels.contains(&ch)) {
                let l = t.sub.log.lock().unwrap();
                let got = l
                    .items
                    .iter()
                    .filter(|i| matches!(i, subscriber::Rx::Event { publisher, seq: s, .. } if *publisher == p && *s == seq))
                    .count() as u64;
                self.notes.retry_expected += 1;
                self.notes.retry_delivered += got.min(1);
                self.notes.retry_duplicated += got.saturating_sub(1);
            }
        }
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let minutes = self.started.elapsed().as_secs_f64() / 60.0;
        let (refused_delivered, abandoned_delivered, unexplained) = self.unacked_counts();
        let ledger = self.ledger.lock().unwrap();
        let _ = writeln!(
            out,
            "chaos profile: {}, {} build — {:.1} min, 2 nodes + Redis (AOF, appendfsync always), {} core streams, storm {} streams, {} publishers",
            match self.profile.minutes {
                Some(m) => format!("long ({m} min)"),
                None => "short".into(),
            },
            if cfg!(debug_assertions) { "debug" } else { "release" },
            minutes,
            self.profile.core_subs,
            self.profile.storm,
            self.profile.publishers
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| fault | survived | events acked | delivered | lost | duplicated | out of order | gaps | excused by gap |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut total = Row::default();
        for name in &self.order {
            let r = self.rows[name];
            // Rows that are checks, not faults.
            let check = matches!(
                *name,
                "steady load (baseline)" | "log audit (full replay)" | "final"
            );
            let dash = |v: u64| {
                if check {
                    "—".to_owned()
                } else {
                    v.to_string()
                }
            };
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
                dash(r.survived),
                if *name == "log audit (full replay)" {
                    "—".to_owned()
                } else {
                    r.acked.to_string()
                },
                r.tally.delivered,
                r.tally.lost,
                r.tally.duplicated,
                r.tally.out_of_order,
                r.tally.gaps,
                r.tally.excused
            );
            if !check {
                total.survived += r.survived;
            }
            total.tally += r.tally;
        }
        let _ = writeln!(
            out,
            "| publisher retry after a client deadline (same key) | {} | {} | {} | {} | {} | — | — | — |",
            self.notes.retry_probes,
            self.notes.retry_probes,
            self.notes.retry_delivered,
            self.notes.retry_expected - self.notes.retry_delivered,
            self.notes.retry_duplicated
        );
        let _ = writeln!(
            out,
            "| **total** | {} | {} | {} | {} | {} | {} | {} | {} |",
            total.survived,
            ledger.acked.len(),
            total.tally.delivered,
            total.tally.lost,
            total.tally.duplicated,
            total.tally.out_of_order,
            total.tally.gaps,
            total.tally.excused
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "- delivered without ack: {} of {} publishes answered UNAVAILABLE (and abandoned); {} of {} abandoned after the client's own deadline; {} other",
            refused_delivered,
            self.notes.refused_probes,
            abandoned_delivered,
            self.notes.abandoned_probes,
            unexplained.len()
        );
        let _ = writeln!(
            out,
            "- publisher retries with the same key: {} ({}); {} acks said duplicate; same event acked under two ids: {}; retried after a client deadline: {} ({} answered duplicate)",
            ledger.retries.values().sum::<u64>(),
            ledger
                .retries
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            ledger.duplicate_answers,
            ledger.double_acked,
            self.notes.retry_probes,
            self.notes.retry_duplicate_answers
        );
        let _ = writeln!(
            out,
            "- streams closed during Redis outages: {}",
            self.notes.outage_stream_closes
        );
        let st = &self.notes.storm;
        if st.runs > 0 {
            let _ = writeln!(
                out,
                "- reconnect storms: {} × {} streams, each reconnecting within 1 s of the node's restart: all resumed within {:.1} s, all caught up within {:.1} s ({} opens retried); /health max {} ms over {} probes, {} failed (limit {} ms); node CPU per storm at most {:.1} s",
                st.runs,
                st.streams,
                st.resumed_max.as_secs_f64(),
                st.caught_up_max.as_secs_f64(),
                st.opens_retried,
                st.health_max.as_millis(),
                st.probes,
                st.probe_failures,
                HEALTH_LIMIT.as_millis(),
                st.node_cpu_max
            );
        }
        let sl = &self.notes.slow;
        if sl.runs > 0 {
            let _ = writeln!(
                out,
                "- slow consumers: {} rounds of {SLOW_CLIENTS} stalled + {FAST_CLIENTS} fast streams ({} events of 2 KB in all): the node counted exactly the stalled ones in {} rounds; fast streams closed: {}; stalled streams resumed by cursor in {} rounds",
                sl.runs, sl.events, sl.exact, sl.fast_closed, sl.resumed
            );
        }
        if self.notes.audits > 0 {
            let _ = writeln!(
                out,
                "- log audits: {} fresh streams replayed the whole log from the run's first cursor (after each Redis restart and at the end; the largest {} events)",
                self.notes.audits, self.notes.audit_largest
            );
        }
        let stats = self.prober.stats.lock().unwrap();
        let health: Vec<String> = stats
            .iter()
            .map(|(phase, s)| {
                format!(
                    "{phase} {} ms ({} probes, {} failed; control {} ms)",
                    s.max.as_millis(),
                    s.probes,
                    s.failures,
                    s.control_max.as_millis()
                )
            })
            .collect();
        let _ = writeln!(out, "- /health max latency by phase: {}", health.join("; "));
        out
    }
}

/// Publishes three events on every storm channel.
async fn publish_round(mut p: Publisher, seq: Arc<Mutex<u64>>) -> Publisher {
    for _ in 0..3 {
        for ch in STORM0..STORM0 + STORM_CHANNELS {
            let s = {
                let mut g = seq.lock().unwrap();
                *g += 1;
                *g
            };
            p.publish_until_acked(ch, s).await;
        }
    }
    p
}

fn slow_metric(addr: SocketAddr) -> f64 {
    let Ok((200, body, _)) = http_get(addr, "/metrics", Duration::from_secs(5)) else {
        return f64::NAN;
    };
    body.lines()
        .find_map(|l| l.strip_prefix("sse_gateway_slow_consumer_disconnects_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

async fn run(profile: Profile) {
    let mut w = World::start(profile).await;
    w.prober.phase("steady");
    for i in 0..w.profile.core_subs {
        let spec = w.core_spec(i);
        let t = w.spawn_sub(spec);
        w.core.push(t);
    }
    w.wait_connected("core", &w.core, 1).await;
    w.run_start = w
        .core
        .iter()
        .filter_map(|t| t.sub.log.lock().unwrap().start)
        .min();
    // The steady load: publishers streaming numbered events over the core channels.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for id in 0..w.profile.publishers {
        let mut p = Publisher::new(&w.target, id);
        let stop = stop.clone();
        let every = w.profile.publish_every;
        load.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let ch = (seq as usize * 5 + id as usize) % CORE;
                p.publish_until_acked(ch, seq).await;
                // Pacing of the load, not a wait for a condition.
                tokio::time::sleep(every).await;
            }
            seq
        }));
    }
    let acked_before = w.acked_now();
    w.check_core("steady load (baseline)", acked_before, false)
        .await;
    let deadline = w
        .profile
        .minutes
        .map(|m| w.started + Duration::from_secs_f64(m * 60.0));
    let mut cycle = 0;
    loop {
        cycle += 1;
        for fault in w.profile.faults.clone() {
            let known = w.problems.len();
            match fault {
                Fault::NodeKill => w.node_kill().await,
                Fault::RedisPause => w.redis_pause().await,
                Fault::RedisKill => w.redis_kill().await,
                Fault::Storm => w.storm().await,
                Fault::Slow => w.slow_consumers().await,
            }
            w.prober.phase("steady");
            for p in &w.problems[known..] {
                eprintln!("chaos: cycle {cycle}, {fault:?}: {p}");
            }
        }
        eprintln!(
            "chaos: cycle {cycle} done after {:.1} min, {} problems",
            w.started.elapsed().as_secs_f64() / 60.0,
            w.problems.len()
        );
        match deadline {
            Some(d) if Instant::now() < d => {}
            _ => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    w.prober.phase("final");
    let acked_before = w.acked_now();
    w.check_core("final", acked_before, true).await;
    let core = std::mem::take(&mut w.core);
    w.scan_unacked(&core);
    w.core = core;
    w.retry_tally();
    if w.notes.retry_expected != w.notes.retry_delivered || w.notes.retry_duplicated > 0 {
        w.problems.push(format!(
            "publisher retry: {} of {} expected deliveries, {} duplicated",
            w.notes.retry_delivered, w.notes.retry_expected, w.notes.retry_duplicated
        ));
    }
    if w.ledger.lock().unwrap().double_acked > 0 {
        w.problems
            .push("an event was acknowledged under two ids".into());
    }
    let table = w.table();
    println!("\n{table}");
    let (refused_delivered, _, unexplained) = w.unacked_counts();
    if refused_delivered > 0 {
        w.problems.push(format!(
            "{refused_delivered} publishes answered UNAVAILABLE were appended later and delivered"
        ));
    }
    let gaps: u64 = w.rows.values().map(|r| r.tally.gaps).sum();
    if w.profile.strict_gaps && gaps > 0 {
        w.problems.push(format!(
            "{gaps} gap frames although the log retained every event"
        ));
    }
    for u in unexplained.iter().take(10) {
        w.problems.push(format!("unacknowledged event: {u}"));
    }
    if !w.problems.is_empty() || std::env::var_os("CHAOS_KEEP").is_some() {
        let dir = std::mem::replace(&mut w._dir, tempfile::tempdir().unwrap());
        eprintln!("chaos: logs kept in {}", dir.keep().display());
    }
    if !w.problems.is_empty() {
        let mut msg = format!("{} problems:\n", w.problems.len());
        for p in w.problems.iter().take(40) {
            let _ = writeln!(msg, "  {p}");
        }
        for n in &w.nodes {
            let _ = writeln!(msg, "--- {} log tail:\n{}", n.name, n.log_tail());
        }
        panic!("{msg}\n{table}");
    }
    for mut t in std::mem::take(&mut w.core) {
        t.sub.stop().await;
    }
}

/// One chaos run at a time in this process (each holds thousands of sockets and two nodes).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run_profile(profile: Profile) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The orchestration runs on this thread (it spawns the processes, which die with it);
    // subscribers and publishers run on the workers.
    runtime.block_on(run(profile));
}

/// Every fault once (or, with `CHAOS_MINUTES`, cycled for that long): every acknowledged event
/// reaches every stream of its channel exactly once, in order, or after an explicit `gap`.
#[test]
fn chaos_nothing_acknowledged_is_lost() {
    run_profile(profile());
}

/// Under a reconnect storm, a resume whose history read timed out in Redis (`broker.timeout_ms`)
/// used to get `event: gap` although its cursor was retained (85-97 % of 1,000 streams on a debug
/// build). The stream now retries the read with back-off instead. Still ignored: the storm is
/// heavy for the CI profile, and this run has not yet been repeated often enough after the fix
/// to be counted on.
#[test]
#[ignore = "heavy: run with --ignored (a replay timeout in a storm used to become a gap)"]
fn chaos_storm_resumes_without_gap() {
    let mut p = profile();
    p.faults = vec![Fault::Storm];
    p.strict_gaps = true;
    run_profile(p);
}
