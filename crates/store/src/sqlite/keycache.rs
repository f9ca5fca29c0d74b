//! API keys by secret hash, kept in memory so authenticating a request costs no database read
//! (a read is a hop to a blocking thread: tens of microseconds on every API call).
//!
//! Exact, not eventually consistent, for the same reason as the store's budget counts: this
//! process is the database's only writer (the folder lock), and every write that changes a key
//! row goes through [`super::SqliteStore`], which updates or clears the cache once the write
//! has committed. Revoking therefore takes effect for every request that starts after
//! `revoke_api_key` returns. A read that raced with a revocation cannot put the stale row back:
//! entries are inserted only if no invalidation happened since the read began (`generation`).
//!
//! Only keys that exist are cached (a flood of unknown keys adds nothing); the cache is cleared
//! when it reaches [`MAX_KEYS`], so its memory stays bounded.

use crate::KeyRecord;
use paddock_types::time::Millis;
use paddock_types::{KeyId, Scope};
use std::collections::HashMap;
use std::sync::Mutex;

/// Most keys held; reaching it empties the cache (they come back on their next use).
const MAX_KEYS: usize = 10_000;

#[derive(Default)]
pub(super) struct KeyCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every invalidation.
    generation: u64,
    by_hash: HashMap<String, (Scope, KeyRecord)>,
}

impl KeyCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get(&self, secret_hash: &str) -> Option<(Scope, KeyRecord)> {
        self.lock().by_hash.get(secret_hash).cloned()
    }

    /// Take before reading the database; pass to [`Self::insert`].
    pub(super) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Caches what a read that began at `generation` found, unless the keys changed since.
    pub(super) fn insert(&self, generation: u64, secret_hash: &str, found: (Scope, KeyRecord)) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.by_hash.len() >= MAX_KEYS {
            inner.by_hash.clear();
        }
        inner.by_hash.insert(secret_hash.to_owned(), found);
    }

    /// After a committed `last_used_at` update (which never goes backwards, like the row's).
    pub(super) fn touched(&self, id: &KeyId, at: Millis) {
        for (_, key) in self.lock().by_hash.values_mut() {
            if key.id == *id && key.last_used_at.is_none_or(|t| t < at) {
                key.last_used_at = Some(at);
            }
        }
    }

    /// After any other committed change to a key row (revocation): forget everything, and keep
    /// reads that were in flight from caching what they saw.
    pub(super) fn invalidate(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.by_hash.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use paddock_types::Role;

    fn key() -> (Scope, KeyRecord) {
        (
            Scope::default_workspace(),
            KeyRecord {
                id: KeyId::new(),
                name: "k".to_owned(),
                role: Role::Viewer,
                prefix: "pdk_x".to_owned(),
                secret_hash: "h".to_owned(),
                created_at: 0,
                expires_at: None,
                revoked_at: None,
                last_used_at: None,
                scopes: None,
            },
        )
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_cached() {
        let c = KeyCache::default();
        let g = c.generation();
        c.invalidate();
        c.insert(g, "h", key());
        assert!(c.get("h").is_none());
        let g = c.generation();
        c.insert(g, "h", key());
        assert!(c.get("h").is_some());
        c.invalidate();
        assert!(c.get("h").is_none());
    }

    #[test]
    fn touches_update_and_size_is_bounded() {
        let c = KeyCache::default();
        let k = key();
        let id = k.1.id.clone();
        c.insert(0, "h", k);
        c.touched(&id, 42);
        c.touched(&id, 41);
        assert_eq!(c.get("h").unwrap().1.last_used_at, Some(42));
        for i in 0..(2 * MAX_KEYS) {
            c.insert(0, &format!("k{i}"), key());
        }
        assert!(c.lock().by_hash.len() <= MAX_KEYS);
    }
}
