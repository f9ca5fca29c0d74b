//! Caps on long-lived requests: event streams (`GET /v1/runs/{id}/events` as SSE) and `?wait=`
//! long-polls each hold a connection, a file descriptor and a task for as long as they last, so
//! each takes a slot of its caller (API key or member session) and of its workspace. A request
//! over either cap gets 429 `too_many_streams` with `Retry-After`; the slot is a guard
//! ([`StreamSlot`]) that frees itself when the stream ends, however it ends (the run ended, the
//! client went away, the server dropped the response).
//!
//! Like the rate limiter, the counts live in this process's memory: per node, forgotten at
//! restart (when every stream is gone anyway).

use crate::error::ApiError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What `Retry-After` says on a refusal: a slot frees when some stream ends, which the server
/// cannot predict; this is a polite pace for retries, not a promise.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Concurrent long-lived requests allowed; `None` for no cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCaps {
    /// Per API key (or member session).
    pub per_key: Option<u32>,
    /// Per workspace, shared by every caller acting in it.
    pub per_workspace: Option<u32>,
}

impl Default for StreamCaps {
    /// 32 per key and 256 per workspace: far above what a console or a CI job holds open, far
    /// below the process's file descriptor limit.
    fn default() -> Self {
        Self {
            per_key: Some(32),
            per_workspace: Some(256),
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    keys: HashMap<String, u32>,
    workspaces: HashMap<String, u32>,
}

/// The slot tables shared by every request of a server.
#[derive(Default)]
pub struct StreamSlots {
    caps: StreamCaps,
    counts: Arc<Mutex<Counts>>,
}

impl std::fmt::Debug for StreamSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSlots")
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

/// A held slot; dropping it gives it back.
#[derive(Debug)]
pub struct StreamSlot {
    counts: Arc<Mutex<Counts>>,
    key: String,
    workspace: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        release(&mut c.keys, &self.key);
        release(&mut c.workspaces, &self.workspace);
    }
}

fn release(m: &mut HashMap<String, u32>, name: &str) {
    if let Some(n) = m.get_mut(name) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            // Only callers with a stream open keep an entry: the tables stay bounded by the
            // number of open streams.
            m.remove(name);
        }
    }
}

/// Which cap refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Key(u32),
    Workspace(u32),
}

impl StreamSlots {
    pub fn new(caps: StreamCaps) -> Self {
        Self {
            caps,
            counts: Arc::default(),
        }
    }

    pub fn caps(&self) -> StreamCaps {
        self.caps
    }

    /// Takes a slot of caller `key` and of `workspace`, or neither.
    pub fn acquire(&self, key: &str, workspace: &str) -> Result<StreamSlot, Over> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let held = |m: &HashMap<String, u32>, k: &str| m.get(k).copied().unwrap_or(0);
        if let Some(cap) = self.caps.per_key
            && held(&c.keys, key) >= cap
        {
            return Err(Over::Key(cap));
        }
        if let Some(cap) = self.caps.per_workspace
            && held(&c.workspaces, workspace) >= cap
        {
            return Err(Over::Workspace(cap));
        }
        *c.keys.entry(key.to_owned()).or_default() += 1;
        *c.workspaces.entry(workspace.to_owned()).or_default() += 1;
        Ok(StreamSlot {
            counts: Arc::clone(&self.counts),
            key: key.to_owned(),
            workspace: workspace.to_owned(),
        })
    }

    /// Slots held now, over all callers (for tests and the bench).
    pub fn held(&self) -> u32 {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.keys.values().sum()
    }
}

impl Over {
    /// The 429 answer: problem+json `too_many_streams` with `Retry-After`.
    pub fn refusal(self) -> Response {
        let detail = match self {
            Over::Key(cap) => format!(
                "this caller already holds {cap} open event streams or ?wait= requests; close one \
                 (or use another key) and retry"
            ),
            Over::Workspace(cap) => format!(
                "this workspace already holds {cap} open event streams or ?wait= requests; close \
                 one and retry"
            ),
        };
        let mut resp = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_streams", detail)
            .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        resp
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_held_until_dropped_and_caps_are_per_key_and_per_workspace() {
        let s = StreamSlots::new(StreamCaps {
            per_key: Some(2),
            per_workspace: Some(3),
        });
        let a1 = s.acquire("a", "w").unwrap();
        let _a2 = s.acquire("a", "w").unwrap();
        assert_eq!(s.acquire("a", "w").unwrap_err(), Over::Key(2));
        let _b1 = s.acquire("b", "w").unwrap();
        assert_eq!(s.acquire("b", "w").unwrap_err(), Over::Workspace(3));
        // A refusal charged nothing: another workspace is untouched, and b holds one slot.
        let _c = s.acquire("b", "v").unwrap();
        drop(a1);
        let _a3 = s.acquire("a", "w").unwrap();
        assert_eq!(s.held(), 4);
    }

    #[test]
    fn no_cap_means_no_refusal_and_tables_empty_when_all_streams_end() {
        let s = StreamSlots::new(StreamCaps {
            per_key: None,
            per_workspace: None,
        });
        let slots: Vec<_> = (0..1000).map(|_| s.acquire("k", "w").unwrap()).collect();
        assert_eq!(s.held(), 1000);
        drop(slots);
        let c = s.counts.lock().unwrap();
        assert!(c.keys.is_empty() && c.workspaces.is_empty());
    }
}
