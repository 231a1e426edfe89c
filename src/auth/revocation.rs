//! Token revocations: per user, the time before which the user's tokens are refused.
//!
//! One entry per user (a later revocation replaces an earlier one), kept for the longest life a
//! token may have (`[jwt] max_token_lifetime_secs`): past that, every token issued before the
//! revocation has expired on its own, so the entry can go. Memory is bounded by the users
//! revoked within one token lifetime.

use std::collections::HashMap;
use std::sync::Mutex;

/// Revoked users and when, shared by every request that verifies a token.
pub struct Revocations {
    /// User → revocation time (ms since the Unix epoch).
    by_user: Mutex<HashMap<String, u64>>,
    /// How long an entry is kept, in ms.
    keep_ms: u64,
}

impl Revocations {
    /// An empty set keeping each revocation for `keep_secs`.
    pub fn new(keep_secs: u64) -> Self {
        Self {
            by_user: Mutex::new(HashMap::new()),
            keep_ms: keep_secs.saturating_mul(1000),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // Each critical section is one map operation: a poisoned lock still holds a whole map.
        self.by_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long an entry is kept, in ms.
    pub fn keep_ms(&self) -> u64 {
        self.keep_ms
    }

    /// Refuses `sub`'s tokens issued before `at_ms` (ms since the Unix epoch); an earlier
    /// revocation of the same user is superseded. Entries past their keep time are dropped
    /// meanwhile. Returns false when the revocation itself is already past its keep time.
    pub fn revoke(&self, sub: &str, at_ms: u64, now_ms: u64) -> bool {
        if at_ms.saturating_add(self.keep_ms) <= now_ms {
            return false;
        }
        let keep = self.keep_ms;
        let mut map = self.lock();
        // Revocations are rare: a sweep on each keeps the map to the live entries.
        map.retain(|_, at| at.saturating_add(keep) > now_ms);
        let entry = map.entry(sub.to_owned()).or_insert(at_ms);
        *entry = (*entry).max(at_ms);
        true
    }

    /// Whether a token of `sub` issued at `iat` (seconds; `None` = unknown, counted as before
    /// any revocation) is revoked at `now_ms`. `iat` has whole seconds only, so a token issued
    /// in the same second as the revocation is refused too (the safe side).
    pub fn is_revoked(&self, sub: &str, iat: Option<u64>, now_ms: u64) -> bool {
        let Some(at) = self.lock().get(sub).copied() else {
            return false;
        };
        if at.saturating_add(self.keep_ms) <= now_ms {
            return false;
        }
        iat.is_none_or(|iat| iat.saturating_mul(1000) <= at)
    }

    /// Revoked users held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no user is revoked.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_issued_before_the_revocation_are_refused_later_ones_accepted() {
        let r = Revocations::new(3600);
        let at = 1_000_000_500;
        assert!(r.revoke("alice", at, at));
        assert!(r.is_revoked("alice", None, at), "no iat counts as before");
        assert!(r.is_revoked("alice", Some(999_999), at));
        assert!(r.is_revoked("alice", Some(1_000_000), at), "same second");
        assert!(!r.is_revoked("alice", Some(1_000_001), at));
        assert!(!r.is_revoked("bob", None, at));
    }

    #[test]
    fn a_revocation_expires_after_the_longest_token_life_and_is_swept() {
        let r = Revocations::new(10);
        assert!(r.revoke("alice", 1_000, 1_000));
        assert!(r.is_revoked("alice", None, 10_999));
        assert!(!r.is_revoked("alice", None, 11_000));
        // The next revocation sweeps the expired entry: one entry per live revocation.
        assert!(r.revoke("bob", 20_000, 20_000));
        assert_eq!(r.len(), 1);
        assert!(
            !r.revoke("carol", 1_000, 20_000),
            "already past its keep time"
        );
    }

    #[test]
    fn a_later_revocation_supersedes_an_earlier_one_never_the_reverse() {
        let r = Revocations::new(3600);
        r.revoke("alice", 5_000_000, 5_000_000);
        r.revoke("alice", 4_000_000, 5_000_000);
        assert!(r.is_revoked("alice", Some(4_500), 5_000_000));
        assert_eq!(r.len(), 1);
    }
}
