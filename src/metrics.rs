//! Prometheus metrics of one gateway instance (a registry per instance, so tests can run
//! several gateways in one process).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label of `events_published`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok`, `duplicate`, `invalid`, `denied`, `too_large`, `unavailable`.
    pub result: &'static str,
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
    pub publish_to_write_seconds: Histogram,
    /// Failed broker operations.
    pub broker_errors: Counter,
    /// Configuration reloads by result (`ok`, `error`).
    pub config_reloads: Family<ResultLabel, Counter>,
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
        let publish_to_write_seconds = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ]);
        registry.register(
            "publish_to_write_seconds",
            "Seconds from accept to the frame being written to the stream",
            publish_to_write_seconds.clone(),
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
            authz_requests,
            authz_request_seconds,
            authz_cache_hits,
            authz_cache_misses,
        }
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
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
