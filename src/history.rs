//! Fifteen minutes of the gateway's vital signs, kept by the gateway itself for the admin
//! dashboard (`GET /admin/history`): a sampler reads the metrics every few seconds and keeps a
//! bounded ring of points. Rates and the p99 are over each interval (counter and histogram
//! bucket deltas), so a point says what happened since the one before.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::metrics::{LatencyHistogram, Metrics};

/// How often the sampler takes a point.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Points kept: 15 minutes at [`SAMPLE_EVERY`].
pub const CAPACITY: usize = 180;

/// One sample: rates and quantiles over the interval that ends at `t_ms`.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// When the interval ended, Unix milliseconds.
    pub t_ms: u64,
    /// Events accepted per second (`events_published{result="ok"}`).
    pub published_per_s: f64,
    /// Events handed to subscriber queues per second.
    pub delivered_per_s: f64,
    /// Open SSE streams at `t_ms`.
    pub open_streams: i64,
    /// 99th percentile of publish-to-write, milliseconds; `None` without writes.
    pub publish_to_write_p99_ms: Option<f64>,
    /// 99th percentile of authorizer calls, milliseconds; `None` without calls.
    pub authz_p99_ms: Option<f64>,
    /// Failed authorizer calls per second.
    pub authz_failures_per_s: f64,
}

/// The cumulative figures a point is the difference of.
struct Totals {
    at: Instant,
    published: u64,
    delivered: u64,
    publish_to_write: Vec<u64>,
    authz: Vec<u64>,
    authz_failures: u64,
}

impl Totals {
    fn read(metrics: &Metrics) -> Self {
        Self {
            at: Instant::now(),
            published: metrics.published_count("ok"),
            delivered: metrics.events_delivered.get(),
            publish_to_write: metrics.publish_to_write_seconds.buckets(),
            authz: metrics.authz.latency.buckets(),
            authz_failures: metrics.authz.failures(),
        }
    }
}

struct Ring {
    points: VecDeque<Point>,
    last: Totals,
}

/// The sampled history of one gateway.
pub struct History {
    metrics: Arc<Metrics>,
    ring: Mutex<Ring>,
}

fn deltas(now: &[u64], before: &[u64]) -> Vec<u64> {
    now.iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect()
}

impl History {
    /// An empty history; the first point covers the time from now to the first sample.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let last = Totals::read(&metrics);
        Self {
            metrics,
            ring: Mutex::new(Ring {
                points: VecDeque::with_capacity(CAPACITY),
                last,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Each critical section leaves the ring whole: recover a poisoned lock.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one point now (the sampler calls this every [`SAMPLE_EVERY`]; tests call it
    /// directly), dropping the oldest past [`CAPACITY`].
    pub fn sample(&self) {
        let now = Totals::read(&self.metrics);
        let mut ring = self.lock();
        let secs = now
            .at
            .saturating_duration_since(ring.last.at)
            .as_secs_f64()
            .max(0.001);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        let ms = |s: Option<f64>| s.map(|s| (s * 1e6).round() / 1e3);
        let point = Point {
            t_ms: crate::event::now_ms(),
            published_per_s: rate(now.published, ring.last.published),
            delivered_per_s: rate(now.delivered, ring.last.delivered),
            open_streams: self.metrics.connections.get(),
            publish_to_write_p99_ms: ms(LatencyHistogram::quantile(
                &deltas(&now.publish_to_write, &ring.last.publish_to_write),
                0.99,
            )),
            authz_p99_ms: ms(LatencyHistogram::quantile(
                &deltas(&now.authz, &ring.last.authz),
                0.99,
            )),
            authz_failures_per_s: rate(now.authz_failures, ring.last.authz_failures),
        };
        if ring.points.len() == CAPACITY {
            ring.points.pop_front();
        }
        ring.points.push_back(point);
        ring.last = now;
    }

    /// The points kept, oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.lock().points.iter().cloned().collect()
    }

    /// Samples every `every` until `shutdown`.
    pub async fn run(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => self.sample(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_rates_over_the_interval_and_the_ring_is_bounded() {
        let metrics = Arc::new(Metrics::new());
        let history = History::new(metrics.clone());
        metrics.published("ok", 10);
        metrics.events_delivered.inc_by(30);
        metrics.connections.set(2);
        metrics.publish_to_write_seconds.observe(0.002);
        metrics.authz.failed();
        history.sample();
        let p = history.points().pop().expect("one point");
        assert!(p.published_per_s > 0.0 && p.delivered_per_s >= 3.0 * p.published_per_s * 0.99);
        assert_eq!(p.open_streams, 2);
        let p99 = p.publish_to_write_p99_ms.expect("one write");
        assert!(p99 > 1.0 && p99 <= 2.5, "{p99}");
        assert_eq!(p.authz_p99_ms, None);
        assert!(p.authz_failures_per_s > 0.0);

        history.sample();
        let p = history.points().pop().expect("two points");
        assert_eq!(p.published_per_s, 0.0, "nothing since the last point");
        assert_eq!(p.publish_to_write_p99_ms, None);

        for _ in 0..CAPACITY + 5 {
            history.sample();
        }
        assert_eq!(history.points().len(), CAPACITY);
    }

    #[tokio::test]
    async fn the_sampler_ticks_and_stops_on_shutdown() {
        let history = Arc::new(History::new(Arc::new(Metrics::new())));
        let shutdown = CancellationToken::new();
        let every = Duration::from_millis(10);
        let task = tokio::spawn(history.clone().run(every, shutdown.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while history.points().len() < 3 {
            assert!(Instant::now() < deadline, "the sampler takes points");
            tokio::time::sleep(every).await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the sampler ends on shutdown")
            .expect("no panic");
        let n = history.points().len();
        tokio::time::sleep(every * 3).await;
        assert_eq!(history.points().len(), n, "no point after shutdown");
    }
}
