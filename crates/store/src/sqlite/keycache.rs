//! Rows kept in memory so a hot lookup costs no database read (a read is a hop to a blocking
//! thread: tens of microseconds). Two use it: API keys by secret hash (every API call
//! authenticates) and each agent's latest version (every run creation resolves its agent).
//!
//! Exact, not eventually consistent, for the same reason as the store's budget counts: this
//! process is the database's only writer (the folder lock), and every write that changes a
//! cached row goes through [`super::SqliteStore`], which updates or clears the cache once the
//! write has committed. Revoking a key or putting an agent version therefore takes effect for
//! every request that starts after the call returns. A read that raced with a change cannot put
//! the stale row back: entries are inserted only if no invalidation happened since the read
//! began (`generation`).
//!
//! Only rows that exist are cached (a flood of unknown names adds nothing); each entry has a
//! weight (1 per key, its size for an agent) and the cache is cleared when the total would pass
//! its budget, so its memory stays bounded.

use crate::KeyRecord;
use paddock_types::time::Millis;
use paddock_types::{KeyId, Scope};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// Most API keys held; reaching it empties the cache (they come back on their next use).
const MAX_KEYS: usize = 10_000;

pub(super) struct ExactCache<K, V> {
    inner: Mutex<Inner<K, V>>,
    /// Most total weight held.
    budget: usize,
}

struct Inner<K, V> {
    /// Bumped by every invalidation.
    generation: u64,
    entries: HashMap<K, V>,
    /// Sum of the inserted entries' weights since the last clear (a replaced entry still
    /// counts, which only clears the cache a little early).
    weight: usize,
}

impl<K: Eq + Hash, V: Clone> ExactCache<K, V> {
    pub(super) fn new(budget: usize) -> Self {
        ExactCache {
            inner: Mutex::new(Inner {
                generation: 0,
                entries: HashMap::new(),
                weight: 0,
            }),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get<Q: Eq + Hash + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.lock().entries.get(key).cloned()
    }

    /// Take before reading the database; pass to [`Self::insert`].
    pub(super) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Caches what a read that began at `generation` found, unless the rows changed since or it
    /// alone outweighs the budget.
    pub(super) fn insert(&self, generation: u64, key: K, found: V, weight: usize) {
        let mut inner = self.lock();
        if inner.generation != generation || weight > self.budget {
            return;
        }
        if inner.weight + weight > self.budget {
            inner.entries.clear();
            inner.weight = 0;
        }
        inner.weight += weight;
        inner.entries.insert(key, found);
    }

    /// After a committed change to a cached kind of row: forget everything, and keep reads that
    /// were in flight from caching what they saw.
    pub(super) fn invalidate(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.clear();
        inner.weight = 0;
    }
}

/// API keys by secret hash, each of weight 1.
pub(super) type KeyCache = ExactCache<String, (Scope, KeyRecord)>;

impl KeyCache {
    pub(super) fn for_keys() -> Self {
        ExactCache::new(MAX_KEYS)
    }

    /// After a committed `last_used_at` update (which never goes backwards, like the row's).
    pub(super) fn touched(&self, id: &KeyId, at: Millis) {
        for (_, key) in self.lock().entries.values_mut() {
            if key.id == *id && key.last_used_at.is_none_or(|t| t < at) {
                key.last_used_at = Some(at);
            }
        }
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
        let c = KeyCache::for_keys();
        let g = c.generation();
        c.invalidate();
        c.insert(g, "h".to_owned(), key(), 1);
        assert!(c.get("h").is_none());
        let g = c.generation();
        c.insert(g, "h".to_owned(), key(), 1);
        assert!(c.get("h").is_some());
        c.invalidate();
        assert!(c.get("h").is_none());
    }

    #[test]
    fn touches_update_and_size_is_bounded() {
        let c = KeyCache::for_keys();
        let k = key();
        let id = k.1.id.clone();
        c.insert(0, "h".to_owned(), k, 1);
        c.touched(&id, 42);
        c.touched(&id, 41);
        assert_eq!(c.get("h").unwrap().1.last_used_at, Some(42));
        for i in 0..(2 * MAX_KEYS) {
            c.insert(0, format!("k{i}"), key(), 1);
        }
        assert!(c.lock().entries.len() <= MAX_KEYS);
    }

    #[test]
    fn weight_is_bounded_and_an_oversized_entry_is_not_kept() {
        let c: ExactCache<u32, u32> = ExactCache::new(100);
        c.insert(0, 1, 1, 101);
        assert!(c.get(&1).is_none(), "heavier than the whole budget");
        for i in 0..50 {
            c.insert(0, i, i, 30);
            let inner = c.lock();
            assert!(inner.weight <= 100 && inner.entries.len() <= 3);
        }
        assert_eq!(c.get(&49), Some(49), "the latest entry is kept");
    }
}
