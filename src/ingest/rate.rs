//! A token bucket per publisher (`limits.publisher_events_per_sec`; 0 disables it).
//!
//! The bucket holds one second's worth of events. A request takes as many tokens as it has
//! events; one larger than the whole bucket (a big `PublishBatch`) is admitted when the bucket
//! is full and leaves it in debt, so batching never makes a publish impossible and the rate
//! over time still stays at the limit: later requests wait until the debt is paid back.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Per-publisher event rate limiter.
pub struct RateLimiter {
    per_sec: f64,
    /// Publisher → (tokens, last refill). Tokens go negative after an oversized batch.
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

    /// Takes `n` events from `publisher`'s bucket; false when over the limit (nothing taken).
    pub fn take(&self, publisher: &str, n: usize) -> bool {
        self.take_at(publisher, n, Instant::now())
    }

    fn take_at(&self, publisher: &str, n: usize, now: Instant) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        // Lock policy of the crate: a panic elsewhere never leaves a bucket half-updated (each
        // update is two plain stores), so a poisoned lock is recovered, never bypassed.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, last) = buckets
            .entry(publisher.to_owned())
            .or_insert((self.per_sec, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * self.per_sec;
        *tokens = (*tokens + refill).min(self.per_sec);
        *last = now;
        let need = n as f64;
        // A request larger than the bucket needs a full bucket, then runs it into debt.
        if *tokens >= need.min(self.per_sec) {
            *tokens -= need;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_of_one_second_then_refill() {
        let limiter = RateLimiter::new(10);
        let t0 = Instant::now();
        assert!(limiter.take_at("a", 10, t0));
        assert!(!limiter.take_at("a", 1, t0));
        assert!(limiter.take_at("b", 1, t0), "buckets are per publisher");
        assert!(limiter.take_at("a", 1, t0 + Duration::from_millis(100)));
        assert!(!limiter.take_at("a", 1, t0 + Duration::from_millis(100)));
        assert!(limiter.take_at("a", 10, t0 + Duration::from_secs(5)));
        assert!(RateLimiter::new(0).take_at("a", 1_000_000, t0));
    }

    #[test]
    fn a_batch_over_the_bucket_is_admitted_when_full_and_paid_back() {
        let limiter = RateLimiter::new(10);
        let t0 = Instant::now();
        assert!(
            limiter.take_at("a", 25, t0),
            "a full bucket admits any batch"
        );
        // 15 tokens owed: 1.5 s to get back to zero, 1.6 s for the next event.
        assert!(!limiter.take_at("a", 1, t0 + Duration::from_millis(1500)));
        assert!(limiter.take_at("a", 1, t0 + Duration::from_millis(1600)));
        // Another oversized batch waits for a full bucket again.
        assert!(!limiter.take_at("a", 25, t0 + Duration::from_millis(2500)));
        assert!(limiter.take_at("a", 25, t0 + Duration::from_millis(2700)));
    }

    #[test]
    fn a_poisoned_lock_still_limits() {
        let limiter = std::sync::Arc::new(RateLimiter::new(10));
        let t0 = Instant::now();
        assert!(limiter.take_at("a", 10, t0));
        let poisoner = limiter.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.buckets.lock();
            panic!("poison the lock");
        })
        .join();
        assert!(limiter.buckets.is_poisoned());
        assert!(
            !limiter.take_at("a", 1, t0),
            "over the limit after a poisoning"
        );
        assert!(limiter.take_at("a", 1, t0 + Duration::from_millis(200)));
    }
}
