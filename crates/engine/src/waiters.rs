//! Callers blocked on a run — [`Engine::wait`](crate::Engine::wait) until it ends, event streams
//! until it commits — woken only by *their* run.
//!
//! Every waiter subscribing to the store's commit stream would wake every waiter on every commit
//! of every run (1,000 open event streams × thousands of commits); one router task reads the
//! stream instead and wakes just the waiters of the run that committed: its stream watchers on
//! every commit, its end waiters when it reached a terminal state.

use paddock_store::DynStore;
use paddock_types::RunId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::Notify;
use tokio::sync::broadcast::error::RecvError;

/// The waiters of one run.
#[derive(Default)]
struct Entry {
    /// Notified when the run reaches a terminal state.
    ended: Arc<Notify>,
    /// Notified on every commit of the run.
    committed: Arc<Notify>,
    /// Live registrations of either kind.
    end_waiters: usize,
    watchers: usize,
}

type Map = Arc<Mutex<HashMap<RunId, Entry>>>;

#[derive(Default)]
pub(crate) struct Waiters {
    map: Map,
    router: OnceLock<()>,
    /// Registrations woken so far (a watcher or end waiter per notification), for measurement.
    wakeups: Arc<AtomicU64>,
}

/// What a registration waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    End,
    Commit,
}

/// A registration; dropping it unregisters.
pub(crate) struct Waiter {
    pub notify: Arc<Notify>,
    map: Map,
    run_id: RunId,
    kind: Kind,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get_mut(&self.run_id) {
            match self.kind {
                Kind::End => entry.end_waiters = entry.end_waiters.saturating_sub(1),
                Kind::Commit => entry.watchers = entry.watchers.saturating_sub(1),
            }
            if entry.end_waiters == 0 && entry.watchers == 0 {
                map.remove(&self.run_id);
            }
        }
    }
}

impl Waiters {
    pub(crate) fn register(&self, store: &DynStore, run_id: &RunId, kind: Kind) -> Waiter {
        self.router.get_or_init(|| {
            let mut rx = store.subscribe();
            let map = Arc::clone(&self.map);
            let wakeups = Arc::clone(&self.wakeups);
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(c) => {
                            let map = map.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some(e) = map.get(&c.run_id) {
                                let mut woken = e.watchers;
                                e.committed.notify_waiters();
                                if c.status.is_terminal() {
                                    e.ended.notify_waiters();
                                    woken += e.end_waiters;
                                }
                                wakeups.fetch_add(woken as u64, Ordering::Relaxed);
                            }
                        }
                        // Some commits may have been missed: everyone re-reads.
                        Err(RecvError::Lagged(_)) => {
                            let map = map.lock().unwrap_or_else(|p| p.into_inner());
                            for e in map.values() {
                                e.committed.notify_waiters();
                                e.ended.notify_waiters();
                            }
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
            });
        });
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(run_id.clone()).or_default();
        let notify = match kind {
            Kind::End => {
                entry.end_waiters += 1;
                Arc::clone(&entry.ended)
            }
            Kind::Commit => {
                entry.watchers += 1;
                Arc::clone(&entry.committed)
            }
        };
        Waiter {
            notify,
            map: Arc::clone(&self.map),
            run_id: run_id.clone(),
            kind,
        }
    }

    pub(crate) fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }
}
