//! A token bucket per publisher (`limits.publisher_events_per_sec`; 0 disables it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Per-publisher event rate limiter.
pub struct RateLimiter {
    per_sec: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_sec` events per second with a burst of one second's worth; 0 = unlimited.
    pub fn new(per_sec: u32) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` events from `publisher`'s bucket; false when over the limit.
    pub fn take(&self, publisher: &str, n: usize) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        let (tokens, last) = buckets
            .entry(publisher.to_owned())
            .or_insert((self.per_sec, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_sec).min(self.per_sec);
        *last = now;
        let need = n as f64;
        if *tokens >= need {
            *tokens -= need;
            true
        } else {
            false
        }
    }
}
