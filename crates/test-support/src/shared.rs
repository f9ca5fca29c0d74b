//! Sharing one expensive fixture (a server, an upstream) between the test functions of a group
//! that run at the same time, without leaking it when the test binary exits.
//!
//! A `static` would never be dropped (and a child process in it would outlive the tests).
//! [`Shared`] instead hands out `Arc`s and keeps only a `Weak`: the fixture lives while some test
//! holds it and is dropped (killing its processes) when the last one finishes; a test that comes
//! later starts a fresh one. Tests must therefore not rely on state left by another test.

use std::future::Future;
use std::sync::{Arc, Weak};

pub struct Shared<T> {
    slot: tokio::sync::Mutex<Weak<T>>,
}

impl<T> Shared<T> {
    pub const fn new() -> Self {
        Self {
            slot: tokio::sync::Mutex::const_new(Weak::new()),
        }
    }

    /// The fixture some running test already holds, or a new one made by `start`. Concurrent
    /// callers wait for a single start.
    pub async fn get_or_start<F, Fut>(&self, start: F) -> Arc<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(existing) = slot.upgrade() {
            return existing;
        }
        let fresh = Arc::new(start().await);
        *slot = Arc::downgrade(&fresh);
        fresh
    }
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Self::new()
    }
}
