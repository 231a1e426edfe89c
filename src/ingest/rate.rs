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

    /// Takes as many of `n` single events as `publisher`'s bucket admits, in order, and returns
    /// how many: the same as `n` calls of `take(publisher, 1)` at one instant, under one lock.
    pub fn take_up_to(&self, publisher: &str, n: usize) -> usize {
        self.take_up_to_at(publisher, n, Instant::now())
    }

    fn take_up_to_at(&self, publisher: &str, n: usize, now: Instant) -> usize {
        if self.per_sec <= 0.0 {
            return n;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let tokens = Self::refill(&mut buckets, publisher, self.per_sec, now);
        // Whole tokens only: one event needs one (a limit under 1/s admits when the bucket is
        // full, like `take`).
        let whole = if self.per_sec < 1.0 {
            usize::from(*tokens >= self.per_sec)
        } else {
            // Truncation is the point: a fraction of a token admits nothing.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let whole = tokens.max(0.0).floor() as usize;
            whole
        };
        let admitted = whole.min(n);
        *tokens -= admitted as f64;
        admitted
    }

    /// Refills `publisher`'s bucket up to `now` and returns its tokens.
    fn refill<'a>(
        buckets: &'a mut HashMap<String, (f64, Instant)>,
        publisher: &str,
        per_sec: f64,
        now: Instant,
    ) -> &'a mut f64 {
        let (tokens, last) = buckets
            .entry(publisher.to_owned())
            .or_insert((per_sec, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * per_sec;
        *tokens = (*tokens + refill).min(per_sec);
        *last = now;
        tokens
    }

    fn take_at(&self, publisher: &str, n: usize, now: Instant) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        // Lock policy of the crate: a panic elsewhere never leaves a bucket half-updated (each
        // update is two plain stores), so a poisoned lock is recovered, never bypassed.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let tokens = Self::refill(&mut buckets, publisher, self.per_sec, now);
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
    fn take_up_to_admits_what_single_takes_would() {
        let limiter = RateLimiter::new(10);
        let t0 = Instant::now();
        assert_eq!(limiter.take_up_to_at("a", 4, t0), 4);
        assert_eq!(
            limiter.take_up_to_at("a", 100, t0),
            6,
            "the rest of the bucket"
        );
        assert_eq!(limiter.take_up_to_at("a", 3, t0), 0);
        assert!(!limiter.take_at("a", 1, t0));
        // 0.25 s refills 2.5 tokens: two whole events, half a token left.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(limiter.take_up_to_at("a", 5, t1), 2);
        assert_eq!(limiter.take_up_to_at("a", 5, t1), 0);
        let t2 = t1 + Duration::from_millis(50);
        assert_eq!(limiter.take_up_to_at("a", 5, t2), 1, "the half plus a half");
        assert_eq!(
            RateLimiter::new(0).take_up_to_at("a", 1_000_000, t0),
            1_000_000
        );
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
