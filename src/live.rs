//! A value a reload replaces while readers keep the one they already hold.

use std::sync::{Arc, PoisonError, RwLock};

/// A shared, replaceable value. Readers take a cheap [`Arc`] snapshot per request or per TLS
/// handshake ([`Live::load`]); a reload swaps in a new value ([`Live::store`]) without touching
/// what is in use. The lock is held only to clone or replace the `Arc`, never across `.await`.
pub struct Live<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Live<T> {
    /// A handle holding `value`.
    pub fn new(value: impl Into<Arc<T>>) -> Self {
        Self(Arc::new(RwLock::new(value.into())))
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        // A writer cannot panic while holding the lock (it only assigns an `Arc`), so a
        // poisoned lock still holds a whole value.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the value for every later [`Live::load`].
    pub fn store(&self, value: impl Into<Arc<T>>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = value.into();
    }
}
