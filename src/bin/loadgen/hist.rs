//! Publish-to-receive latency: an HDR histogram in microseconds (3 significant digits, up to
//! two minutes), shipped from worker processes to the coordinator as sparse `(value, count)`
//! pairs and merged there.

use hdrhistogram::Histogram;

/// The largest latency tracked; larger samples are recorded as this value.
const MAX_US: u64 = 120_000_000;

pub struct Latency(Histogram<u64>);

impl Latency {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self(Histogram::new_with_bounds(1, MAX_US, 3)?))
    }

    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, MAX_US));
    }

    /// Non-empty buckets as `(highest equivalent value, count)`.
    pub fn sparse(&self) -> Vec<(u64, u64)> {
        self.0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    pub fn merge_sparse(&mut self, buckets: &[(u64, u64)]) {
        for &(value, count) in buckets {
            // Values come from a histogram with the same bounds: they always fit.
            let _ = self.0.record_n(value.clamp(1, MAX_US), count);
        }
    }

    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// The quantile `q` (0..=1) in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Wall-clock microseconds since the epoch: publisher and subscribers are separate processes
/// on one machine, so they share this clock.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
