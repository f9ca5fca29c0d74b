//! Callers blocked in [`Engine::wait`](crate::Engine::wait), woken only when *their* run ends.
//!
//! Every waiter subscribing to the store's commit stream would wake every waiter on every commit
//! of every run (200 waiting clients × thousands of commits); one router task reads the stream
//! instead and wakes just the waiters of a run that reached a terminal state.

use paddock_store::DynStore;
use paddock_types::RunId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::Notify;
use tokio::sync::broadcast::error::RecvError;

type Map = Arc<Mutex<HashMap<RunId, (Arc<Notify>, usize)>>>;

#[derive(Default)]
pub(crate) struct Waiters {
    map: Map,
    router: OnceLock<()>,
}

/// A registration; dropping it unregisters.
pub(crate) struct Waiter {
    pub notify: Arc<Notify>,
    map: Map,
    run_id: RunId,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get_mut(&self.run_id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.run_id);
            }
        }
    }
}

impl Waiters {
    pub(crate) fn register(&self, store: &DynStore, run_id: &RunId) -> Waiter {
        self.router.get_or_init(|| {
            let mut rx = store.subscribe();
            let map = Arc::clone(&self.map);
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(c) if c.status.is_terminal() => {
                            let map = map.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some((n, _)) = map.get(&c.run_id) {
                                n.notify_waiters();
                            }
                        }
                        Ok(_) => {}
                        // Some ends may have been missed: everyone re-reads.
                        Err(RecvError::Lagged(_)) => {
                            let map = map.lock().unwrap_or_else(|p| p.into_inner());
                            for (n, _) in map.values() {
                                n.notify_waiters();
                            }
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
            });
        });
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry(run_id.clone())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        Waiter {
            notify: Arc::clone(&entry.0),
            map: Arc::clone(&self.map),
            run_id: run_id.clone(),
        }
    }
}
