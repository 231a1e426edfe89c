//! Prometheus metrics of one gateway instance (a registry per instance, so tests can run
//! several gateways in one process).
//!
//! Besides the `sse_gateway_*` registry, `/metrics` carries the standard `process_*` metrics
//! (read from `/proc/self` at scrape time, Linux only), and a few metrics keep their own bucket
//! counts ([`LatencyHistogram`]) so the in-process history can chart a p99 per interval.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label of `events_published`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok`, `duplicate`, `invalid`, `denied`, `too_large`, `unavailable`.
    pub result: &'static str,
}

/// Labels of `publisher_events`: the publisher's certificate name (publishers are issued
/// certificates by the operator's CA, so the set is bounded) and the result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublisherLabel {
    /// The publisher's certificate name.
    pub publisher: String,
    /// As [`ResultLabel::result`].
    pub result: &'static str,
}

/// Label of `grpc_request_seconds`: the full gRPC method path, or `unimplemented` for calls
/// the server does not know (so a client cannot grow the label set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// `/package.Service/Method`.
    pub method: String,
}

/// Upper bounds of the latency histograms, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Upper bounds of the gRPC request latency histogram, in seconds.
const GRPC_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn grpc_histogram() -> Histogram {
    Histogram::new(GRPC_BUCKETS)
}

/// A Prometheus histogram that also keeps its bucket counts readable, so the history sampler
/// can compute a quantile over the last interval from two snapshots.
#[derive(Debug)]
pub struct LatencyHistogram {
    histogram: Histogram,
    /// Per bucket (not cumulative), the last one past every bound.
    counts: Box<[AtomicU64]>,
}

impl LatencyHistogram {
    fn new() -> Self {
        Self {
            histogram: Histogram::new(LATENCY_BUCKETS.iter().copied()),
            counts: (0..=LATENCY_BUCKETS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// Records one observation, in seconds.
    pub fn observe(&self, seconds: f64) {
        self.histogram.observe(seconds);
        // `le` semantics: the first bucket whose bound is at least the value.
        let i = LATENCY_BUCKETS.partition_point(|b| *b < seconds);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The bucket counts now (not cumulative); subtract two to get an interval's.
    pub fn buckets(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// The `q` quantile (0..=1), in seconds, of the observations counted by `deltas` (as from
    /// [`LatencyHistogram::buckets`]), interpolated within its bucket as Prometheus'
    /// `histogram_quantile` does; `None` without observations. Past the last bound, the last
    /// bound.
    pub fn quantile(deltas: &[u64], q: f64) -> Option<f64> {
        let total: u64 = deltas.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &n) in deltas.iter().enumerate() {
            if n > 0 && (seen + n) as f64 >= rank {
                let Some(&upper) = LATENCY_BUCKETS.get(i) else {
                    return LATENCY_BUCKETS.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
                let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            seen += n;
        }
        LATENCY_BUCKETS.last().copied()
    }
}

/// Figures the subscription authorizer reports, for the admin history (its own Prometheus
/// metrics are separate): call latency and failures. Zero until an authorizer feeds it.
#[derive(Debug)]
pub struct AuthzStats {
    /// Seconds per authorizer call.
    pub latency: LatencyHistogram,
    failures: AtomicU64,
}

impl AuthzStats {
    /// Records one authorizer call that took `seconds`.
    pub fn observe(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    /// Counts one failed authorizer call (error or timeout).
    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Failed calls so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// How far this node's Redis tail is behind the entries this node appended: each append
/// records its newest id and when; each dispatch forgets those it reached. The lag is the age
/// of the oldest entry appended here and not yet dispatched by the tail (0 when caught up).
/// Entries appended by other nodes are not seen here.
#[derive(Debug, Default)]
pub struct TailLag {
    state: Mutex<TailState>,
}

#[derive(Debug, Default)]
struct TailState {
    /// Appended ids (`(ms, seq)`) not yet dispatched, oldest first, with when they were
    /// appended; bounded by [`TailLag::MAX_PENDING`].
    pending: VecDeque<((u64, u64), Instant)>,
    /// The newest id dispatched: the tail may read an entry before its append returns.
    dispatched: Option<(u64, u64)>,
}

impl TailLag {
    /// Most appended ids remembered; past it the newest are not recorded (the oldest pending
    /// one, which sets the lag, is kept).
    const MAX_PENDING: usize = 4096;

    fn lock(&self) -> std::sync::MutexGuard<'_, TailState> {
        // Plain data, no invariant spanning the critical section: recover a poisoned lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node appended entries up to `id` (`(ms, seq)` of the Redis stream id).
    pub fn appended(&self, id: (u64, u64)) {
        let mut s = self.lock();
        if s.dispatched.is_some_and(|d| d >= id) {
            return;
        }
        if s.pending.len() < Self::MAX_PENDING && s.pending.back().is_none_or(|(l, _)| *l < id) {
            s.pending.push_back((id, Instant::now()));
        }
    }

    /// The tail has dispatched every entry up to `id`.
    pub fn dispatched(&self, id: (u64, u64)) {
        let mut s = self.lock();
        s.dispatched = Some(id);
        while s.pending.front().is_some_and(|(first, _)| *first <= id) {
            s.pending.pop_front();
        }
    }

    /// Seconds the oldest undispatched entry appended here has waited.
    pub fn seconds(&self) -> f64 {
        self.lock()
            .pending
            .front()
            .map_or(0.0, |(_, at)| at.elapsed().as_secs_f64())
    }
}

/// `sse_gateway_redis_tail_lag_seconds`, computed at scrape time.
#[derive(Debug)]
struct TailLagCollector(std::sync::Arc<TailLag>);

impl Collector for TailLagCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(self.0.seconds());
        let metric = encoder.encode_descriptor(
            "redis_tail_lag_seconds",
            "Age of the oldest entry this node appended to Redis that its tail has not dispatched yet (0 when caught up)",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Open SSE streams.
    pub connections: Gauge,
    /// Channel subscriptions across open streams.
    pub subscriptions: Gauge,
    /// Publish attempts by result.
    pub events_published: Family<ResultLabel, Counter>,
    /// Events handed to subscriber queues.
    pub events_delivered: Counter,
    /// Streams closed because their queue overflowed.
    pub slow_consumer_disconnects: Counter,
    /// Seconds from accept to the frame being handed to the socket writer.
    pub publish_to_write_seconds: LatencyHistogram,
    /// Failed broker operations.
    pub broker_errors: Counter,
    /// Configuration reloads by result (`ok`, `error`).
    pub config_reloads: Family<ResultLabel, Counter>,
    /// `GET /api/sse` answers by status (`200`, `400`, `401`, `403`, `429`, `503`, `other`).
    pub stream_opens: Family<ResultLabel, Counter>,
    /// Publish attempts by publisher and result (the results of `events_published`).
    pub publisher_events: Family<PublisherLabel, Counter>,
    /// gRPC request latency by method (to the response headers: the whole call for unary
    /// methods, the set-up for streaming ones).
    pub grpc_request_seconds: Family<MethodLabel, Histogram, fn() -> Histogram>,
    /// Streams that started replaying history after a client's cursor.
    pub replays_started: Counter,
    /// `gap` events written to streams.
    pub gaps_sent: Counter,
    /// Bytes handed to SSE response bodies.
    pub sse_bytes_written: Counter,
    /// The Redis tail's lag behind this node's appends.
    pub redis_tail: std::sync::Arc<TailLag>,
    /// Fed by the subscription authorizer; read by the admin history.
    pub authz: AuthzStats,
    /// The unprefixed `process_*` metrics.
    process: Registry,
    /// `[authz]` callback requests by result (`ok`, `timeout`, `error`, `bad_status`,
    /// `malformed`).
    pub authz_requests: Family<ResultLabel, Counter>,
    /// Seconds one `[authz]` callback request took, whatever its result.
    pub authz_request_seconds: Histogram,
    /// (user, channel) `[authz]` answers found in the cache.
    pub authz_cache_hits: Counter,
    /// (user, channel) `[authz]` answers not in the cache (asked of the callback).
    pub authz_cache_misses: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers all metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sse_gateway");
        let connections = Gauge::default();
        registry.register("connections", "Open SSE streams", connections.clone());
        let subscriptions = Gauge::default();
        registry.register(
            "subscriptions",
            "Channel subscriptions across open streams",
            subscriptions.clone(),
        );
        let events_published = Family::<ResultLabel, Counter>::default();
        registry.register(
            "events_published",
            "Publish attempts by result",
            events_published.clone(),
        );
        let events_delivered = Counter::default();
        registry.register(
            "events_delivered",
            "Events handed to subscriber queues",
            events_delivered.clone(),
        );
        let slow_consumer_disconnects = Counter::default();
        registry.register(
            "slow_consumer_disconnects",
            "Streams closed because their queue overflowed",
            slow_consumer_disconnects.clone(),
        );
        let publish_to_write_seconds = LatencyHistogram::new();
        registry.register(
            "publish_to_write_seconds",
            "Seconds from accept to the frame being written to the stream",
            publish_to_write_seconds.histogram.clone(),
        );
        let broker_errors = Counter::default();
        registry.register(
            "broker_errors",
            "Failed broker operations",
            broker_errors.clone(),
        );
        let config_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads (certificates, keys, publishers) by result",
            config_reloads.clone(),
        );
        let stream_opens = Family::<ResultLabel, Counter>::default();
        registry.register(
            "stream_opens",
            "GET /api/sse answers by HTTP status",
            stream_opens.clone(),
        );
        let publisher_events = Family::<PublisherLabel, Counter>::default();
        registry.register(
            "publisher_events",
            "Publish attempts by publisher and result",
            publisher_events.clone(),
        );
        let grpc_request_seconds =
            Family::<MethodLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                grpc_histogram,
            );
        registry.register(
            "grpc_request_seconds",
            "gRPC request latency by method, to the response headers",
            grpc_request_seconds.clone(),
        );
        let replays_started = Counter::default();
        registry.register(
            "replays_started",
            "Streams that started replaying history after a client's cursor",
            replays_started.clone(),
        );
        let gaps_sent = Counter::default();
        registry.register(
            "gaps_sent",
            "gap events written to streams (history after a cursor was lost)",
            gaps_sent.clone(),
        );
        let sse_bytes_written = Counter::default();
        registry.register(
            "sse_bytes_written",
            "Bytes handed to SSE response bodies",
            sse_bytes_written.clone(),
        );
        let redis_tail = std::sync::Arc::new(TailLag::default());
        registry.register_collector(Box::new(TailLagCollector(redis_tail.clone())));
        let mut process = Registry::default();
        process.register_collector(Box::new(process::ProcessCollector));
        // [authz]
        let authz_requests = Family::<ResultLabel, Counter>::default();
        registry.register(
            "authz_requests",
            "Permission callback requests by result",
            authz_requests.clone(),
        );
        let authz_request_seconds = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        registry.register(
            "authz_request_seconds",
            "Seconds one permission callback request took",
            authz_request_seconds.clone(),
        );
        let authz_cache_hits = Counter::default();
        registry.register(
            "authz_cache_hits",
            "Permission answers (user, channel) found in the cache",
            authz_cache_hits.clone(),
        );
        let authz_cache_misses = Counter::default();
        registry.register(
            "authz_cache_misses",
            "Permission answers (user, channel) not in the cache",
            authz_cache_misses.clone(),
        );
        Self {
            registry,
            connections,
            subscriptions,
            events_published,
            events_delivered,
            slow_consumer_disconnects,
            publish_to_write_seconds,
            broker_errors,
            config_reloads,
            stream_opens,
            publisher_events,
            grpc_request_seconds,
            replays_started,
            gaps_sent,
            sse_bytes_written,
            redis_tail,
            authz: AuthzStats {
                latency: LatencyHistogram::new(),
                failures: AtomicU64::new(0),
            },
            process,
            authz_requests,
            authz_request_seconds,
            authz_cache_hits,
            authz_cache_misses,
        }
    }

    /// Counts publish attempts of `publisher`: in `events_published` and `publisher_events`.
    pub fn published_by(&self, publisher: &str, result: &'static str, n: u64) {
        self.published(result, n);
        self.publisher_events
            .get_or_create(&PublisherLabel {
                publisher: publisher.to_owned(),
                result,
            })
            .inc_by(n);
    }

    /// Counts one `GET /api/sse` answer by its status.
    pub fn stream_opened(&self, status: u16) {
        let result = match status {
            200 => "200",
            400 => "400",
            401 => "401",
            403 => "403",
            429 => "429",
            503 => "503",
            _ => "other",
        };
        self.stream_opens
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Records one gRPC call of `method` (a path the server knows, else pass `None`).
    pub fn grpc_request(&self, method: Option<&str>, seconds: f64) {
        self.grpc_request_seconds
            .get_or_create(&MethodLabel {
                method: method.unwrap_or("unimplemented").to_owned(),
            })
            .observe(seconds);
    }

    /// Publish attempts with `result` so far (`events_published`).
    pub fn published_count(&self, result: &'static str) -> u64 {
        self.events_published
            .get_or_create(&ResultLabel { result })
            .get()
    }

    /// Counts one publish attempt.
    pub fn published(&self, result: &'static str, n: u64) {
        self.events_published
            .get_or_create(&ResultLabel { result })
            .inc_by(n);
    }

    /// Counts one configuration reload.
    pub fn config_reload(&self, result: &'static str) {
        self.config_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts one `[authz]` callback request and its duration.
    pub fn authz_request(&self, result: &'static str, seconds: f64) {
        self.authz_requests
            .get_or_create(&ResultLabel { result })
            .inc();
        self.authz_request_seconds.observe(seconds);
        // The admin history's authorizer charts.
        self.authz.observe(seconds);
        if result != "ok" {
            self.authz.failed();
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        let encoded = encode_registry(&mut out, &self.process)
            .and_then(|()| encode_registry(&mut out, &self.registry))
            .and_then(|()| encode_eof(&mut out));
        if encoded.is_err() {
            out.clear();
        }
        out
    }
}

/// The standard `process_*` metrics, read from `/proc/self` at each scrape (a few small file
/// reads). Elsewhere than Linux there are none.
mod process {
    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;

    #[derive(Debug)]
    pub(super) struct ProcessCollector;

    fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
        let g = ConstGauge::new(v);
        g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
    }

    impl Collector for ProcessCollector {
        fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
            let Some(p) = read() else { return Ok(()) };
            let cpu = ConstCounter::new(p.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            let e = &mut encoder;
            gauge(
                e,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.rss_bytes,
            )?;
            gauge(
                e,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.vsize_bytes,
            )?;
            gauge(
                e,
                "process_open_fds",
                "Number of open file descriptors",
                p.open_fds,
            )?;
            if let Some(max) = p.max_fds {
                gauge(
                    e,
                    "process_max_fds",
                    "Maximum number of open file descriptors",
                    max,
                )?;
            }
            gauge(
                e,
                "process_threads",
                "Number of OS threads in the process",
                p.threads,
            )?;
            if let Some(start) = p.start_time_seconds {
                gauge(
                    e,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds",
                    start,
                )?;
            }
            Ok(())
        }
    }

    /// One reading of the process's figures.
    pub(super) struct Process {
        pub(super) cpu_seconds: f64,
        pub(super) rss_bytes: f64,
        pub(super) vsize_bytes: f64,
        pub(super) open_fds: f64,
        pub(super) max_fds: Option<f64>,
        pub(super) threads: f64,
        pub(super) start_time_seconds: Option<f64>,
    }

    #[cfg(target_os = "linux")]
    pub(super) fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) is in parentheses and may hold spaces: fields after it
        // are counted from its closing one. `state` is field 3, so field N is at N - 3.
        let fields: Vec<&str> = stat
            .get(stat.rfind(')')? + 1..)?
            .split_whitespace()
            .collect();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as f64;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3))
                    .and_then(|v| v.parse::<f64>().ok())
            });
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        Some(Process {
            cpu_seconds: (field(14)? + field(15)?) / ticks,
            threads: field(20)?,
            start_time_seconds: boot.zip(field(22)).map(|(b, t)| b + t / ticks),
            vsize_bytes: field(23)?,
            rss_bytes: field(24)? * page,
            open_fds,
            max_fds,
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn read() -> Option<Process> {
        None
    }

    #[cfg(all(test, target_os = "linux"))]
    mod tests {
        #[test]
        fn reads_this_process() {
            let p = super::read().expect("/proc/self is readable on Linux");
            assert!(p.rss_bytes > 1_000_000.0, "rss {}", p.rss_bytes);
            assert!(p.vsize_bytes >= p.rss_bytes);
            assert!(p.open_fds >= 3.0, "fds {}", p.open_fds);
            assert!(p.threads >= 1.0);
            assert!(p.cpu_seconds >= 0.0);
            let start = p.start_time_seconds.expect("btime and starttime");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after the epoch")
                .as_secs_f64();
            assert!(
                start <= now + 1.0 && start > now - 86_400.0 * 365.0,
                "{start} vs {now}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_within_the_bucket() {
        let h = LatencyHistogram::new();
        let before = h.buckets();
        for _ in 0..99 {
            h.observe(0.0004); // bucket (0.00025, 0.0005]
        }
        h.observe(2.0); // bucket (1.0, 2.5]
        let deltas: Vec<u64> = h
            .buckets()
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect();
        let p50 = LatencyHistogram::quantile(&deltas, 0.5).unwrap();
        assert!(p50 > 0.00025 && p50 <= 0.0005, "{p50}");
        let p99 = LatencyHistogram::quantile(&deltas, 0.99).unwrap();
        assert!(
            p99 <= 0.0005,
            "the 99th of 100 is still in the low bucket: {p99}"
        );
        let p100 = LatencyHistogram::quantile(&deltas, 1.0).unwrap();
        assert!(p100 > 1.0 && p100 <= 2.5, "{p100}");
        assert_eq!(LatencyHistogram::quantile(&[0; 15], 0.99), None);
        h.observe(100.0);
        assert_eq!(h.buckets().last(), Some(&1));
    }

    #[test]
    fn tail_lag_is_the_age_of_the_oldest_undispatched_append() {
        let lag = TailLag::default();
        assert_eq!(lag.seconds(), 0.0);
        lag.appended((10, 0));
        lag.appended((12, 3));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(lag.seconds() >= 0.02);
        lag.dispatched((12, 2));
        assert!(lag.seconds() > 0.0, "(12, 3) is still pending");
        lag.dispatched((12, 3));
        assert_eq!(lag.seconds(), 0.0);
        lag.appended((12, 1));
        assert_eq!(lag.seconds(), 0.0, "dispatched before its append returned");
    }

    #[test]
    fn render_has_process_and_gateway_metrics_and_one_eof() {
        let m = Metrics::new();
        m.stream_opened(401);
        m.published_by("svc", "ok", 2);
        m.grpc_request(Some("/x.Y/Z"), 0.01);
        let text = m.render();
        assert!(
            text.contains("sse_gateway_stream_opens_total{result=\"401\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sse_gateway_publisher_events_total{publisher=\"svc\",result=\"ok\"} 2"),
            "{text}"
        );
        assert!(text.contains("sse_gateway_events_published_total{result=\"ok\"} 2"));
        assert!(text.contains("sse_gateway_grpc_request_seconds_count{method=\"/x.Y/Z\"} 1"));
        assert!(
            text.contains("sse_gateway_redis_tail_lag_seconds 0"),
            "{text}"
        );
        assert_eq!(text.matches("# EOF").count(), 1);
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }
}
