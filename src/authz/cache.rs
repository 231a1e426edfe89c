//! The answers of the permission callback, per (user, channel), until their ttl passes.
//!
//! Bounded: past `max_entries` expired answers are swept, and when that frees no room new
//! answers are simply not cached (the next open asks again). An `epoch` moves on every
//! forget or clear, so an answer that was in flight meanwhile is not cached: it may predate
//! the change that caused the forget (a user removed from a workspace).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Verdict;
use crate::channel::ChannelName;

struct Entry {
    verdict: Verdict,
    expires: Instant,
}

/// The cache itself; the authorizer holds it behind a std mutex, never across `.await`.
pub(super) struct Cache {
    by_user: HashMap<String, HashMap<ChannelName, Entry>>,
    entries: usize,
    max_entries: usize,
    epoch: u64,
}

impl Cache {
    pub(super) fn new(max_entries: usize) -> Self {
        Self {
            by_user: HashMap::new(),
            entries: 0,
            max_entries,
            epoch: 0,
        }
    }

    /// Changes only with a forget or a clear; compare before caching an answer.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The unexpired answer for (`sub`, `channel`).
    pub(super) fn get(&self, sub: &str, channel: &ChannelName, now: Instant) -> Option<Verdict> {
        self.by_user
            .get(sub)?
            .get(channel)
            .filter(|e| e.expires > now)
            .map(|e| e.verdict.clone())
    }

    /// Caches answers for `ttl` unless a forget or clear happened since `epoch`.
    pub(super) fn insert(
        &mut self,
        epoch: u64,
        sub: &str,
        answers: impl ExactSizeIterator<Item = (ChannelName, Verdict)>,
        ttl: Duration,
        now: Instant,
    ) {
        if epoch != self.epoch || ttl.is_zero() {
            return;
        }
        if self.entries.saturating_add(answers.len()) > self.max_entries {
            self.sweep(now);
            if self.entries.saturating_add(answers.len()) > self.max_entries {
                tracing::debug!(
                    entries = self.entries,
                    "authz cache full; answer not cached"
                );
                return;
            }
        }
        let expires = now + ttl;
        let user = self.by_user.entry(sub.to_owned()).or_default();
        for (channel, verdict) in answers {
            if user.insert(channel, Entry { verdict, expires }).is_none() {
                self.entries += 1;
            }
        }
    }

    /// Drops every answer about `sub`.
    pub(super) fn forget(&mut self, sub: &str) {
        self.epoch = self.epoch.wrapping_add(1);
        if let Some(user) = self.by_user.remove(sub) {
            self.entries -= user.len();
        }
    }

    /// Drops every answer and sets a new bound.
    pub(super) fn reset(&mut self, max_entries: usize) {
        self.epoch = self.epoch.wrapping_add(1);
        self.by_user.clear();
        self.entries = 0;
        self.max_entries = max_entries;
    }

    fn sweep(&mut self, now: Instant) {
        self.by_user.retain(|_, user| {
            user.retain(|_, e| e.expires > now);
            !user.is_empty()
        });
        self.entries = self.by_user.values().map(HashMap::len).sum();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse_syntax(name).unwrap()
    }

    fn allow(names: &[&str]) -> Vec<(ChannelName, Verdict)> {
        names.iter().map(|n| (ch(n), Verdict::Allow)).collect()
    }

    #[test]
    fn answers_expire_after_their_ttl() {
        let mut cache = Cache::new(10);
        let now = Instant::now();
        cache.insert(
            cache.epoch(),
            "u1",
            allow(&["logs:w1"]).into_iter(),
            Duration::from_secs(5),
            now,
        );
        assert!(cache.get("u1", &ch("logs:w1"), now).is_some());
        assert!(cache.get("u2", &ch("logs:w1"), now).is_none());
        let later = now + Duration::from_secs(5);
        assert!(cache.get("u1", &ch("logs:w1"), later).is_none());
    }

    #[test]
    fn a_forget_drops_the_user_and_voids_answers_in_flight() {
        let mut cache = Cache::new(10);
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        let before = cache.epoch();
        cache.insert(before, "u1", allow(&["logs:w1"]).into_iter(), ttl, now);
        cache.insert(before, "u2", allow(&["logs:w1"]).into_iter(), ttl, now);
        cache.forget("u1");
        assert!(cache.get("u1", &ch("logs:w1"), now).is_none());
        assert!(cache.get("u2", &ch("logs:w1"), now).is_some());
        // Asked before the forget: not cached.
        cache.insert(before, "u1", allow(&["logs:w2"]).into_iter(), ttl, now);
        assert!(cache.get("u1", &ch("logs:w2"), now).is_none());
        assert_eq!(cache.entries, 1);
    }

    #[test]
    fn a_full_cache_sweeps_then_stops_caching() {
        let mut cache = Cache::new(2);
        let now = Instant::now();
        let e = cache.epoch();
        cache.insert(
            e,
            "u1",
            allow(&["logs:a", "logs:b"]).into_iter(),
            Duration::from_secs(1),
            now,
        );
        cache.insert(
            e,
            "u2",
            allow(&["logs:c"]).into_iter(),
            Duration::from_secs(60),
            now,
        );
        assert!(cache.get("u2", &ch("logs:c"), now).is_none(), "no room");
        let later = now + Duration::from_secs(2);
        cache.insert(
            e,
            "u2",
            allow(&["logs:c"]).into_iter(),
            Duration::from_secs(60),
            later,
        );
        assert!(cache.get("u2", &ch("logs:c"), later).is_some(), "swept");
        assert_eq!(cache.entries, 1);
    }
}
