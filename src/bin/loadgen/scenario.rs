//! The scenarios (`fanout`, `idle`, `ingest`, `all`), each run against the gateway and/or Nchan
//! in turn, and the Markdown table they print.
//!
//! A **step** publishes at one offered rate for `--warmup` seconds (not measured), then a
//! `--window` of seconds in which deliveries are counted at the subscribers and the latency of
//! every delivery is recorded; then publishing stops and the backlog drains before the next
//! step. A step is **sustained** when, over the window: the subscribers received ≥ 95 % of the
//! offered deliveries, the publisher had ≥ 95 % of the offered events acknowledged, p99 ≤
//! `--knee-p99-ms`, and no stream was closed. A backlog that grows fails the first two tests or,
//! within a few seconds, the p99 bound. The **knee** is the highest sustained offered rate found
//! by stepping up from `--knee-from` by `--knee-factor` until a step fails, then bisecting
//! (geometrically) between the last sustained and the first failed rate `--knee-refine` times;
//! its figure is the delivery rate measured in that step.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::publish::{Mode, Plan, Publishing};
use crate::target::{Broker, Kind, Programs, Server};
use crate::worker::{Fleet, PER_WORKER};

/// Which servers a command measures.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Targets {
    Gateway,
    Nchan,
    Both,
}

impl Targets {
    fn kinds(self) -> Vec<Kind> {
        match self {
            Targets::Gateway => vec![Kind::Gateway],
            Targets::Nchan => vec![Kind::Nchan],
            Targets::Both => vec![Kind::Gateway, Kind::Nchan],
        }
    }
}

/// Options every scenario takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Servers to measure, in turn, in this run (default: both where Nchan applies).
    #[arg(long, value_enum)]
    pub target: Option<Targets>,
    /// The gateway's log.
    #[arg(long, value_enum, default_value = "memory")]
    pub broker: Broker,
    /// Bytes of `data` per event.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Subscriber worker processes (default: one per 2,500 subscribers, at least 2 from 500).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Source addresses the subscribers spread over (127.0.0.2, 127.0.0.3, …).
    #[arg(long, default_value_t = 4)]
    pub source_ips: usize,
    /// The `sse-gateway` binary (default: beside this one).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// The Nchan start/stop script (default: scripts/nchan.sh of this source tree).
    #[arg(long)]
    pub nchan_script: Option<PathBuf>,
    /// Redis for `--broker redis`.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Run the gateway under this command (e.g. `valgrind --tool=callgrind`), space-separated.
    #[arg(long, default_value = "")]
    pub gateway_wrap: String,
}

impl Common {
    fn programs(&self) -> anyhow::Result<Programs> {
        let mut programs = Programs::locate(
            self.gateway_bin.clone(),
            self.nchan_script.clone(),
            self.redis_url.clone(),
        )?;
        programs.wrap = self
            .gateway_wrap
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        Ok(programs)
    }

    fn workers(&self, subscribers: usize) -> usize {
        self.workers.unwrap_or_else(|| {
            let floor = if subscribers >= 500 { 2 } else { 1 };
            subscribers.div_ceil(PER_WORKER).max(floor)
        })
    }
}

/// One figure of one server.
#[derive(Clone, Debug)]
pub struct Fig {
    pub value: f64,
    pub text: String,
}

impl Fig {
    fn failed(e: &anyhow::Error) -> Self {
        let msg = format!("{e:#}").replace('|', "/").replace('\n', " ");
        Self {
            value: f64::NAN,
            text: format!("failed: {}", msg.chars().take(160).collect::<String>()),
        }
    }
}

/// One line of the results table.
#[derive(Clone, Debug)]
pub struct Row {
    pub what: String,
    pub target: String,
    pub gateway: Option<Fig>,
    pub nchan: Option<Fig>,
    pub higher_is_better: bool,
}

impl Row {
    fn new(what: impl Into<String>, target: &str, higher_is_better: bool) -> Self {
        Self {
            what: what.into(),
            target: target.to_owned(),
            gateway: None,
            nchan: None,
            higher_is_better,
        }
    }

    fn set(&mut self, kind: Kind, fig: Fig) {
        match kind {
            Kind::Gateway => self.gateway = Some(fig),
            Kind::Nchan => self.nchan = Some(fig),
        }
    }

    pub fn failed(&self) -> bool {
        [&self.gateway, &self.nchan]
            .into_iter()
            .flatten()
            .any(|f| f.text.starts_with("failed"))
    }
}

/// The results as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | target | sse-gateway | Nchan | comparison |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        let cell = |f: &Option<Fig>| f.as_ref().map_or("—".to_owned(), |f| f.text.clone());
        let ratio = match (&r.gateway, &r.nchan) {
            (Some(g), Some(n)) if g.value > 0.0 && n.value > 0.0 => {
                let x = if r.higher_is_better {
                    g.value / n.value
                } else {
                    n.value / g.value
                };
                if (0.95..=1.05).contains(&x) {
                    "about the same".to_owned()
                } else if x >= 1.0 {
                    format!("gateway {x:.1}× better")
                } else {
                    format!("Nchan {:.1}× better", 1.0 / x)
                }
            }
            _ => "—".to_owned(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.what,
            r.target,
            cell(&r.gateway),
            cell(&r.nchan),
            ratio
        ));
    }
    out
}

/// `1234567.0` → `1.23 M`, `45600.0` → `45.6 k`.
pub fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn log(msg: impl AsRef<str>) {
    eprintln!("loadgen: {}", msg.as_ref());
}

async fn sleep(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await;
}

// ---------------------------------------------------------------- fan-out

#[derive(clap::Args, Clone, Debug)]
pub struct FanoutArgs {
    /// SSE streams; subscriber j reads channel j % channels.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Distinct channels.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Offered delivery rates to measure latency at (deliveries/s at the subscribers), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Search for the knee (see `loadgen --help`).
    #[arg(long)]
    pub knee: bool,
    /// First offered delivery rate of the knee search.
    #[arg(long, default_value_t = 200_000.0)]
    pub knee_from: f64,
    /// Step-up factor of the knee search.
    #[arg(long, default_value_t = 1.5)]
    pub knee_factor: f64,
    /// Most step-ups.
    #[arg(long, default_value_t = 10)]
    pub knee_steps: usize,
    /// Bisections between the last sustained and the first failed rate.
    #[arg(long, default_value_t = 2)]
    pub knee_refine: usize,
    /// p99 bound (ms) of a sustained step.
    #[arg(long, default_value_t = 200.0)]
    pub knee_p99_ms: f64,
    /// How the gateway is published to.
    #[arg(long, value_enum, default_value = "stream")]
    pub mode: Mode,
    /// Streams / calls in flight to the gateway.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Keep-alive publishing connections to Nchan.
    #[arg(long, default_value_t = 32)]
    pub nchan_connections: usize,
    /// Events per PublishBatch (`--mode batch`).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Seconds of each step before the measured window.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds measured per step.
    #[arg(long, default_value_t = 2.0)]
    pub window: f64,
    #[command(flatten)]
    pub common: Common,
}

impl FanoutArgs {
    pub fn quick(mut self) -> Self {
        self.subscribers = self.subscribers.min(40);
        self.channels = self.channels.min(4);
        self.knee_from = 2_000.0;
        self.knee_steps = 1;
        self.knee_refine = 0;
        self.rates = self
            .rates
            .iter()
            .map(|r| (r / 100.0).clamp(100.0, 20_000.0))
            .collect();
        self.warmup = 0.1;
        self.window = 0.25;
        self.common.target.get_or_insert(Targets::Gateway);
        self
    }

    fn fanout(&self) -> f64 {
        (self.subscribers as f64 / self.channels.max(1) as f64).max(1.0)
    }

    fn label(&self) -> String {
        format!(
            "{} subscribers × {} channel{} ({} per channel)",
            thousands(self.subscribers),
            thousands(self.channels),
            if self.channels == 1 { "" } else { "s" },
            thousands(self.subscribers / self.channels.max(1))
        )
    }
}

pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One measured step.
#[derive(Clone, Debug)]
struct Step {
    offered: f64,
    delivered: f64,
    p50: f64,
    p99: f64,
    closed: u64,
    sustained: bool,
    why: String,
    cpu: f64,
    /// Of which in the kernel.
    sys: f64,
    /// Write system calls per second.
    writes: f64,
    /// CPU of the subscriber workers, cores.
    workers: f64,
}

impl Step {
    fn line(&self) -> String {
        format!(
            "offered {}/s → delivered {}/s, p50 {:.1} ms, p99 {:.1} ms, server CPU {:.2} cores ({:.2} kernel), {:.2} deliveries per write call; subscriber workers {:.2} cores{}{}",
            si(self.offered),
            si(self.delivered),
            self.p50,
            self.p99,
            self.cpu,
            self.sys,
            self.delivered / self.writes.max(1.0),
            self.workers,
            if self.sustained {
                ", sustained"
            } else {
                ", NOT sustained: "
            },
            self.why
        )
    }
}

struct Bench<'a> {
    server: &'a Server,
    fleet: Fleet,
    args: &'a FanoutArgs,
    received: u64,
    closed: u64,
}

impl Bench<'_> {
    async fn step(&mut self, deliveries: f64, p99_bound: f64) -> anyhow::Result<Step> {
        let a = self.args;
        let plan = Plan {
            mode: a.mode,
            concurrency: match self.server.kind {
                Kind::Gateway => a.concurrency,
                Kind::Nchan => a.nchan_connections,
            },
            batch: a.batch,
            payload: a.common.payload,
            channels: a.channels,
            rate: Some(deliveries / a.fanout()),
        };
        let publishing = Publishing::start(self.server, &plan).await?;
        sleep(a.warmup).await;
        let s0 = self.fleet.snap().await?;
        let (acked0, u0, w0, t0) = (
            publishing.acked(),
            self.server.usage(),
            self.fleet.cpu_secs(),
            Instant::now(),
        );
        sleep(a.window).await;
        let s1 = self.fleet.snap().await?;
        let dt = t0.elapsed().as_secs_f64();
        let (acked1, u1, w1) = (
            publishing.acked(),
            self.server.usage(),
            self.fleet.cpu_secs(),
        );
        let errors = publishing.errors();
        let counters = publishing.stop().await;
        // Drain: wait until nothing more arrives (bounded), so the next step starts clean.
        let mut last = s1.received;
        let drain_until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < drain_until {
            sleep((a.window / 2.0).min(0.25)).await;
            let s = self.fleet.snap().await?;
            if s.received == last {
                break;
            }
            last = s.received;
        }
        self.received = last;
        let delivered = (s1.received - s0.received) as f64 / dt;
        let published_ratio = (acked1 - acked0) as f64 / dt / plan.rate.unwrap_or(1.0);
        let closed = s1.closed.saturating_sub(self.closed);
        self.closed = s1.closed;
        let (p50, p99) = (s1.hist.ms(0.5), s1.hist.ms(0.99));
        let mut why = Vec::new();
        if delivered < 0.95 * deliveries {
            why.push(format!(
                "delivered {:.0} % of offered",
                100.0 * delivered / deliveries
            ));
        }
        if published_ratio < 0.95 {
            why.push(format!(
                "publisher acknowledged {:.0} % of offered",
                100.0 * published_ratio
            ));
        }
        if p99 > p99_bound {
            why.push(format!("p99 above {p99_bound} ms"));
        }
        if closed > 0 {
            why.push(format!("{closed} streams closed"));
        }
        if errors > 0 {
            why.push(format!(
                "{errors} publish errors ({})",
                counters.error().unwrap_or_default()
            ));
        }
        Ok(Step {
            offered: deliveries,
            delivered,
            p50,
            p99,
            closed,
            sustained: why.is_empty(),
            why: why.join("; "),
            cpu: (u1.user + u1.sys - u0.user - u0.sys) / dt,
            sys: (u1.sys - u0.sys) / dt,
            writes: (u1.writes - u0.writes) as f64 / dt,
            workers: (w1 - w0) / dt,
        })
    }

    /// Replaces the fleet after streams were closed (a slow-consumer close ends a stream).
    async fn heal(&mut self, step: &Step) -> anyhow::Result<()> {
        if step.closed > 0 {
            log("streams were closed: reconnecting every subscriber");
            let fresh = Fleet::start(
                self.server,
                self.args.subscribers,
                self.args.channels,
                self.args.common.workers(self.args.subscribers),
                self.args.common.source_ips,
            )
            .await?;
            std::mem::replace(&mut self.fleet, fresh).stop().await;
            self.closed = 0;
        }
        Ok(())
    }

    async fn knee(&mut self) -> anyhow::Result<Option<Step>> {
        let a = self.args;
        let (mut best, mut failed): (Option<Step>, Option<f64>) = (None, None);
        let mut rate = a.knee_from;
        for _ in 0..a.knee_steps.max(1) {
            let s = self.step(rate, a.knee_p99_ms).await?;
            log(format!("  knee step: {}", s.line()));
            self.heal(&s).await?;
            match (s.sustained, best.is_some()) {
                (true, _) if failed.is_some() => {
                    // Stepping down found a sustained rate below the failed one.
                    best = Some(s);
                    break;
                }
                (true, _) => {
                    best = Some(s);
                    rate *= a.knee_factor;
                }
                (false, true) => {
                    failed = Some(rate);
                    break;
                }
                (false, false) => {
                    // The first rate already fails: step down until one is sustained.
                    failed = Some(rate);
                    rate /= a.knee_factor;
                }
            }
        }
        if let (Some(mut hi), Some(_)) = (failed, best.as_ref()) {
            for _ in 0..a.knee_refine {
                let lo = best.as_ref().map_or(a.knee_from, |b| b.offered);
                let mid = (lo * hi).sqrt();
                let s = self.step(mid, a.knee_p99_ms).await?;
                log(format!("  knee bisect: {}", s.line()));
                self.heal(&s).await?;
                if s.sustained {
                    best = Some(s);
                } else {
                    hi = mid;
                }
            }
        }
        Ok(best)
    }
}

pub async fn fanout(args: &FanoutArgs) -> anyhow::Result<Vec<Row>> {
    let programs = args.common.programs()?;
    let label = args.label();
    let mut rows: Vec<Row> = args
        .rates
        .iter()
        .map(|r| {
            Row::new(
                format!("{label}: p99 publish→receive at {} deliveries/s", si(*r)),
                "",
                false,
            )
        })
        .collect();
    if args.knee {
        rows.push(Row::new(
            format!("{label}: sustained deliveries/s (the knee)"),
            "",
            true,
        ));
    }
    for kind in args.common.target.unwrap_or(Targets::Both).kinds() {
        log(format!("fanout, {}: {label}", kind.name()));
        match fanout_one(kind, &programs, args).await {
            Ok(figs) => {
                for (row, fig) in rows.iter_mut().zip(figs) {
                    row.set(kind, fig);
                }
            }
            Err(e) => {
                log(format!("fanout, {}: {e:#}", kind.name()));
                for row in &mut rows {
                    row.set(kind, Fig::failed(&e));
                }
            }
        }
    }
    Ok(rows)
}

async fn fanout_one(
    kind: Kind,
    programs: &Programs,
    args: &FanoutArgs,
) -> anyhow::Result<Vec<Fig>> {
    let server = Server::start(kind, programs, args.common.broker).await?;
    let result = async {
        let started = Instant::now();
        let fleet = Fleet::start(
            &server,
            args.subscribers,
            args.channels,
            args.common.workers(args.subscribers),
            args.common.source_ips,
        )
        .await?;
        log(format!(
            "  {} streams ready in {:.1} s; server RSS {:.1} MiB",
            args.subscribers,
            started.elapsed().as_secs_f64(),
            server.rss_kib() as f64 / 1024.0
        ));
        let mut bench = Bench {
            server: &server,
            fleet,
            args,
            received: 0,
            closed: 0,
        };
        let mut figs = Vec::new();
        let result = async {
            for &rate in &args.rates {
                let s = bench.step(rate, f64::INFINITY).await?;
                log(format!("  fixed rate: {}", s.line()));
                bench.heal(&s).await?;
                let note = if s.sustained {
                    String::new()
                } else {
                    format!("; not sustained: {}", s.why)
                };
                figs.push(Fig {
                    value: s.p99,
                    text: format!(
                        "p99 {:.1} ms (p50 {:.1} ms; {}/s delivered{note})",
                        s.p99,
                        s.p50,
                        si(s.delivered)
                    ),
                });
            }
            if args.knee {
                figs.push(match bench.knee().await? {
                    Some(s) => Fig {
                        value: s.delivered,
                        text: format!(
                            "{}/s (offered {}/s; p99 {:.1} ms; server {:.1} cores)",
                            si(s.delivered),
                            si(s.offered),
                            s.p99,
                            s.cpu
                        ),
                    },
                    None => Fig {
                        value: 0.0,
                        text: format!(
                            "none sustained from {}/s down to {}/s",
                            si(args.knee_from),
                            si(args.knee_from / args.knee_factor.powi(args.knee_steps as i32 - 1))
                        ),
                    },
                });
            }
            anyhow::Ok(())
        }
        .await;
        let _ = (bench.received, bench.fleet.stop().await);
        result.map(|()| figs)
    }
    .await;
    server.stop().await;
    result
}

// ---------------------------------------------------------------- idle

#[derive(clap::Args, Clone, Debug)]
pub struct IdleArgs {
    /// Idle SSE streams.
    #[arg(long, default_value_t = 10_000)]
    pub streams: usize,
    /// Channels they read (stream j reads channel j % channels).
    #[arg(long, default_value_t = 1000)]
    pub channels: usize,
    #[command(flatten)]
    pub common: Common,
}

impl IdleArgs {
    pub fn quick(mut self) -> Self {
        self.streams = self.streams.min(100);
        self.channels = self.channels.min(10);
        self.common.target.get_or_insert(Targets::Gateway);
        self
    }
}

/// RSS per idle stream: the server's RSS with a tenth of the streams open (runtime, buffers and
/// hub structures warmed), then with all of them; the difference over the streams added.
pub async fn idle(args: &IdleArgs) -> anyhow::Result<Vec<Row>> {
    let programs = args.common.programs()?;
    let mut row = Row::new(
        format!(
            "idle streams: server RSS per stream ({} idle)",
            thousands(args.streams)
        ),
        "",
        false,
    );
    for kind in args.common.target.unwrap_or(Targets::Both).kinds() {
        log(format!("idle, {}: {} streams", kind.name(), args.streams));
        let fig = match idle_one(kind, &programs, args).await {
            Ok(f) => f,
            Err(e) => {
                log(format!("idle, {}: {e:#}", kind.name()));
                Fig::failed(&e)
            }
        };
        row.set(kind, fig);
    }
    Ok(vec![row])
}

async fn idle_one(kind: Kind, programs: &Programs, args: &IdleArgs) -> anyhow::Result<Fig> {
    let server = Server::start(kind, programs, args.common.broker).await?;
    let result = async {
        let first = (args.streams / 10).max(1);
        let rest = args.streams - first;
        let rss_start = server.rss_kib();
        let warm = Fleet::start(&server, first, args.channels, 1, args.common.source_ips).await?;
        sleep(1.0).await;
        let rss_warm = server.rss_kib();
        let fleet = Fleet::start(
            &server,
            rest,
            args.channels,
            args.common.workers(rest),
            args.common.source_ips,
        )
        .await;
        let fleet = match fleet {
            Ok(f) => f,
            Err(e) => {
                warm.stop().await;
                return Err(e);
            }
        };
        sleep(1.0).await;
        let rss_all = server.rss_kib();
        fleet.stop().await;
        warm.stop().await;
        let per = rss_all.saturating_sub(rss_warm) as f64 / rest.max(1) as f64;
        log(format!(
            "  RSS {:.1} MiB at start, {:.1} MiB with {first} streams, {:.1} MiB with {}: {per:.2} KiB per stream",
            rss_start as f64 / 1024.0,
            rss_warm as f64 / 1024.0,
            rss_all as f64 / 1024.0,
            args.streams
        ));
        anyhow::Ok(Fig {
            value: per,
            text: format!(
                "{per:.2} KiB (RSS {:.0} → {:.0} MiB)",
                rss_warm as f64 / 1024.0,
                rss_all as f64 / 1024.0
            ),
        })
    }
    .await;
    server.stop().await;
    result
}

// ---------------------------------------------------------------- ingest

/// `max` or events/s.
#[derive(Clone, Copy, Debug)]
pub struct Rate(pub Option<f64>);

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "max" {
            return Ok(Rate(None));
        }
        s.parse::<f64>()
            .ok()
            .filter(|r| *r > 0.0)
            .map(|r| Rate(Some(r)))
            .ok_or_else(|| format!("{s:?}: `max` or events per second"))
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct IngestArgs {
    /// How the gateway is published to (Nchan: HTTP POSTs, `--concurrency` connections).
    #[arg(long, value_enum, default_value = "stream")]
    pub mode: Mode,
    /// Streams / calls in flight (one gRPC connection); Nchan: keep-alive connections.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Events per PublishBatch.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Offered events/s, or `max`.
    #[arg(long, default_value = "max")]
    pub rate: Rate,
    /// Channels published to, round robin (no subscribers).
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Seconds before the measured window.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 3.0)]
    pub window: f64,
    #[command(flatten)]
    pub common: Common,
}

impl IngestArgs {
    pub fn quick(mut self) -> Self {
        self.warmup = 0.1;
        self.window = 0.25;
        self.common.target.get_or_insert(Targets::Gateway);
        self
    }

    fn label(&self) -> String {
        let broker = match self.common.broker {
            Broker::Memory => "",
            Broker::Redis => " on Redis",
        };
        let how = match self.mode {
            Mode::Unary => format!("unary Publish, {} in flight", self.concurrency),
            Mode::Stream if self.concurrency == 1 => "one PublishStream".to_owned(),
            Mode::Stream => format!("{} PublishStreams on one connection", self.concurrency),
            Mode::Batch => format!(
                "PublishBatch of {}, {} in flight",
                self.batch, self.concurrency
            ),
        };
        format!("ingest{broker}: {how} (events/s acknowledged)")
    }
}

pub async fn ingest(args: &IngestArgs) -> anyhow::Result<Vec<Row>> {
    let programs = args.common.programs()?;
    let mut row = Row::new(args.label(), "", true);
    for kind in args.common.target.unwrap_or(Targets::Gateway).kinds() {
        log(format!("ingest, {}: {}", kind.name(), args.label()));
        let fig = match ingest_one(kind, &programs, args).await {
            Ok(f) => f,
            Err(e) => {
                log(format!("ingest, {}: {e:#}", kind.name()));
                Fig::failed(&e)
            }
        };
        row.set(kind, fig);
    }
    Ok(vec![row])
}

async fn ingest_one(kind: Kind, programs: &Programs, args: &IngestArgs) -> anyhow::Result<Fig> {
    let server = Server::start(kind, programs, args.common.broker).await?;
    let result = async {
        let plan = Plan {
            mode: args.mode,
            concurrency: args.concurrency,
            batch: args.batch,
            payload: args.common.payload,
            channels: args.channels,
            rate: args.rate.0,
        };
        let publishing = Publishing::start(&server, &plan).await?;
        sleep(args.warmup).await;
        let (a0, cpu0, t0) = (publishing.acked(), server.cpu_secs(), Instant::now());
        sleep(args.window).await;
        let dt = t0.elapsed().as_secs_f64();
        let (a1, cpu1) = (publishing.acked(), server.cpu_secs());
        let errors = publishing.errors();
        let counters = publishing.stop().await;
        // Any error, or nothing acknowledged at all, means publishing is broken (a slow window
        // is a figure, not a failure).
        if a1 == 0 || errors > 0 {
            anyhow::bail!(
                "{} acknowledged, {errors} errors: {}",
                a1 - a0,
                counters.error().unwrap_or_default()
            );
        }
        let rate = (a1 - a0) as f64 / dt;
        let cpu = (cpu1 - cpu0) / dt;
        log(format!(
            "  {}/s acknowledged, server CPU {cpu:.2} cores",
            si(rate)
        ));
        let how = match kind {
            Kind::Gateway => String::new(),
            Kind::Nchan => format!("HTTP POST, {} connections; ", args.concurrency),
        };
        anyhow::Ok(Fig {
            value: rate,
            text: format!("{}/s ({how}server {cpu:.1} cores)", si(rate)),
        })
    }
    .await;
    server.stop().await;
    result
}

// ---------------------------------------------------------------- all

#[derive(clap::Args, Clone, Debug)]
pub struct AllArgs {
    /// Measure the gateway only.
    #[arg(long)]
    pub no_nchan: bool,
    #[command(flatten)]
    pub common: Common,
}

impl AllArgs {
    /// The defaults, as `loadgen all` would have them.
    pub fn parse_default() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            args: AllArgs,
        }
        <Only as clap::Parser>::parse_from(["loadgen"]).args
    }
}

/// Every row of the README table, gateway and Nchan in turn, in one run.
///
/// Rows are appended to `rows` as they are measured, so a run stopped by `--max-secs` still
/// prints what it has.
pub async fn all(args: &AllArgs, quick: bool, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let mut common = args.common.clone();
    if common.target.is_none() {
        common.target = Some(if args.no_nchan || quick {
            Targets::Gateway
        } else {
            Targets::Both
        });
    }
    let fanout = |subscribers, channels, rates: Vec<f64>, knee_from| {
        let a = FanoutArgs {
            subscribers,
            channels,
            rates,
            knee: true,
            knee_from,
            knee_factor: 1.5,
            knee_steps: 10,
            knee_refine: 2,
            knee_p99_ms: 200.0,
            mode: Mode::Stream,
            concurrency: 1,
            nchan_connections: 32,
            batch: 100,
            warmup: 1.0,
            window: 2.0,
            common: common.clone(),
        };
        if quick {
            a.quick()
        } else {
            a
        }
    };
    let ingest = |mode, concurrency, broker, target: &str, nchan: bool| {
        let mut c = common.clone();
        c.broker = broker;
        if !nchan {
            c.target = Some(Targets::Gateway);
        }
        let a = IngestArgs {
            mode,
            concurrency,
            batch: 100,
            rate: Rate(None),
            channels: 100,
            warmup: 1.0,
            window: 3.0,
            common: c,
        };
        (if quick { a.quick() } else { a }, target.to_owned())
    };
    let one = fanout(1000, 1, vec![1_200_000.0], 300_000.0);
    let mut r = fanout_targets(&one, &["p99 ≤ 50 ms", "≥ 2.4 M/s"]).await?;
    rows.append(&mut r);

    let idle_args = IdleArgs {
        streams: 10_000,
        channels: 1000,
        common: common.clone(),
    };
    let idle_args = if quick { idle_args.quick() } else { idle_args };
    for mut r in idle(&idle_args).await? {
        r.target = "≤ 8 KiB".into();
        rows.push(r);
    }

    let many = fanout(
        10_000,
        1000,
        vec![50_000.0, 100_000.0, 200_000.0],
        100_000.0,
    );
    let mut r = fanout_targets(&many, &["", "", "≤ 50 ms", "≥ 400 k/s"]).await?;
    rows.append(&mut r);

    for (mode, concurrency, broker, target, nchan) in [
        (Mode::Stream, 1, Broker::Memory, "≥ 150 k/s", false),
        (Mode::Stream, 8, Broker::Memory, "≥ 150 k/s", false),
        (Mode::Unary, 64, Broker::Memory, "≥ 40 k/s", true),
        (Mode::Batch, 2, Broker::Redis, "≥ 50 k/s", false),
        (Mode::Stream, 1, Broker::Redis, "≥ 50 k/s", false),
        (Mode::Unary, 8, Broker::Redis, "≥ 50 k/s", false),
    ] {
        let (a, t) = ingest(mode, concurrency, broker, target, nchan);
        for mut r in crate::scenario::ingest(&a).await? {
            r.target = t.clone();
            rows.push(r);
        }
    }
    Ok(())
}

async fn fanout_targets(args: &FanoutArgs, targets: &[&str]) -> anyhow::Result<Vec<Row>> {
    let mut rows = fanout(args).await?;
    for (r, t) in rows.iter_mut().zip(targets) {
        r.target = (*t).to_owned();
    }
    Ok(rows)
}
