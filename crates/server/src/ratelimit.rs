//! Request rate limits per caller (API key or member session) and per workspace, with GCRA (the
//! generic cell rate algorithm), answered with 429 and the headers of
//! draft-ietf-httpapi-ratelimit-headers-10.
//!
//! GCRA keeps one number per bucket: the theoretical arrival time (TAT) of the next request if
//! the caller sent at exactly the sustained rate. A request at `now` is accepted when
//! `max(TAT, now) + interval - now <= burst × interval`, and then moves TAT on by one interval.
//! This is a token bucket without a refill timer: `burst` requests pass at once from idle, then
//! one per `interval` (`1 / per_second`).
//!
//! A request is charged to both its caller's bucket and its workspace's, or to neither: a
//! request refused by one limit does not use up the other.
//!
//! Limitations: the buckets live in this process's memory. With one `paddock serve` (the SQLite
//! deployment) that is the whole truth; several nodes sharing a database would each enforce the
//! full quota, and a restart forgets the buckets (everyone starts with a full burst).
//!
//! Memory stays bounded: a bucket whose TAT is in the past is exactly a fresh bucket, so such
//! entries are swept (amortised, when the tables have doubled since the last sweep). What is left
//! are the callers and workspaces seen in the last `burst / per_second` seconds, and only
//! authenticated callers get a bucket at all.

use crate::error::ApiError;
use crate::streams::{StreamCaps, StreamSlots};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

const NANOS_PER_SEC: u64 = 1_000_000_000;
/// The tables are never swept below this many entries (a sweep is a full pass).
const MIN_SWEEP: usize = 1024;

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-10): the policies that apply.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (the same draft): what is left of each policy now.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// One limit: a sustained rate and the burst allowed from idle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Requests per second, sustained; greater than 0.
    pub per_second: f64,
    /// Requests accepted back to back from idle; at least 1.
    pub burst: u32,
}

/// The limits of a server. The default has none (`paddock serve` sets them from
/// `[rate_limits]` in `paddock.toml`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateLimits {
    /// Per API key (or member session).
    pub per_key: Option<Quota>,
    /// Per workspace, shared by every caller acting in it.
    pub per_workspace: Option<Quota>,
}

/// GCRA over integer nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    /// Nanoseconds per request at the sustained rate (at least 1).
    interval: u64,
    /// `burst × interval`: how far ahead of `now` the TAT may run.
    tolerance: u64,
    /// `q` and `w` of the policy as advertised.
    quota: u64,
    window_secs: u64,
}

impl Gcra {
    fn new(q: Quota) -> Self {
        let burst = u64::from(q.burst.max(1));
        let interval = if q.per_second.is_finite() && q.per_second > 0.0 {
            // Saturating float-to-int cast: an absurdly low rate is one request per ~584 years.
            ((NANOS_PER_SEC as f64 / q.per_second).round() as u64).max(1)
        } else {
            u64::MAX
        };
        let tolerance = interval.saturating_mul(burst);
        Self {
            interval,
            tolerance,
            quota: burst,
            window_secs: ceil_secs(tolerance).max(1),
        }
    }

    /// What this limit says about a request at `now` to a bucket whose TAT is `tat`.
    fn check(&self, tat: u64, now: u64) -> Verdict {
        // How far ahead of now the bucket already is (0 for an idle bucket).
        let ahead = tat.saturating_sub(now);
        Verdict {
            allowed: ahead.saturating_add(self.interval) <= self.tolerance,
            ahead,
        }
    }

    /// The state of the bucket after the request, charged or not.
    fn report(&self, v: Verdict, charged: bool) -> Report {
        let ahead = if charged {
            v.ahead.saturating_add(self.interval)
        } else {
            v.ahead
        };
        Report {
            remaining: self.tolerance.saturating_sub(ahead) / self.interval,
            reset_secs: ceil_secs(ahead),
            retry_after_secs: if v.allowed {
                0
            } else {
                // Until the bucket is one interval below full again.
                ceil_secs(
                    v.ahead
                        .saturating_add(self.interval)
                        .saturating_sub(self.tolerance),
                )
                .max(1)
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Verdict {
    allowed: bool,
    ahead: u64,
}

/// What one policy reports on a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Requests still accepted right now (`r`).
    pub remaining: u64,
    /// Seconds until the full burst is available again (`t`).
    pub reset_secs: u64,
    /// Seconds until one more request is accepted; 0 when it was.
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Nanoseconds since the limiter's epoch.
    tat: u64,
    /// The last request to this bucket was refused (to log once per episode, not per request).
    refusing: bool,
}

#[derive(Default)]
struct Tables {
    keys: HashMap<String, Bucket>,
    workspaces: HashMap<String, Bucket>,
    /// Sweep when the tables hold this many entries.
    sweep_at: usize,
}

impl Tables {
    fn sweep(&mut self, now: u64) {
        if self.keys.len() + self.workspaces.len() < self.sweep_at.max(MIN_SWEEP) {
            return;
        }
        // A bucket whose TAT has passed is indistinguishable from an absent one.
        self.keys.retain(|_, b| b.tat > now);
        self.workspaces.retain(|_, b| b.tat > now);
        self.sweep_at = (2 * (self.keys.len() + self.workspaces.len())).max(MIN_SWEEP);
    }
}

/// The in-memory limiter shared by every request of a server.
pub struct RateLimiter {
    key: Option<Gcra>,
    workspace: Option<Gcra>,
    /// `RateLimit-Policy`, the same on every response.
    policy: Option<HeaderValue>,
    epoch: Instant,
    tables: Mutex<Tables>,
    /// Concurrent event streams and `?wait=` requests ([`crate::streams`]).
    streams: StreamSlots,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("key", &self.key)
            .field("workspace", &self.workspace)
            .finish_non_exhaustive()
    }
}

/// The limiter's answer for one request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Per-key and per-workspace reports, for the limits that are on.
    pub key: Option<Report>,
    pub workspace: Option<Report>,
    pub allowed: bool,
    /// The request was refused and the previous one of the same bucket was not: the start of a
    /// throttling episode, worth one log line.
    pub first_refusal: bool,
    policy: Option<HeaderValue>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        let key = limits.per_key.map(Gcra::new);
        let workspace = limits.per_workspace.map(Gcra::new);
        Self {
            key,
            workspace,
            policy: policy_header(key, workspace),
            epoch: Instant::now(),
            tables: Mutex::new(Tables::default()),
            streams: StreamSlots::default(),
        }
    }

    /// The same limiter with these caps on concurrent event streams and `?wait=` requests
    /// (default: [`StreamCaps::default`]).
    pub fn with_stream_caps(mut self, caps: StreamCaps) -> Self {
        self.streams = StreamSlots::new(caps);
        self
    }

    /// The slots of long-lived requests.
    pub fn streams(&self) -> &StreamSlots {
        &self.streams
    }

    /// Whether any limit is on.
    pub fn enabled(&self) -> bool {
        self.key.is_some() || self.workspace.is_some()
    }

    /// Decides on (and, if accepted, charges) a request of caller `identity` in `workspace`.
    pub fn check(&self, identity: &str, workspace: &str) -> Decision {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.check_at(now, identity, workspace)
    }

    /// [`Self::check`] at `now` nanoseconds after the limiter's creation (tests inject the clock
    /// here).
    pub fn check_at(&self, now: u64, identity: &str, workspace: &str) -> Decision {
        if !self.enabled() {
            return Decision {
                key: None,
                workspace: None,
                allowed: true,
                first_refusal: false,
                policy: None,
            };
        }
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let tat = |m: &HashMap<String, Bucket>, k: &str| m.get(k).map_or(0, |b| b.tat);
        let kv = self.key.map(|g| g.check(tat(&t.keys, identity), now));
        let wv = self
            .workspace
            .map(|g| g.check(tat(&t.workspaces, workspace), now));
        let allowed = kv.is_none_or(|v| v.allowed) && wv.is_none_or(|v| v.allowed);
        let mut first_refusal = false;
        let mut settle =
            |m: &mut HashMap<String, Bucket>, name: &str, g: &Gcra, v: Verdict| -> Report {
                if allowed {
                    let new_tat = now.saturating_add(v.ahead).saturating_add(g.interval);
                    match m.get_mut(name) {
                        Some(b) => {
                            b.tat = new_tat;
                            b.refusing = false;
                        }
                        None => {
                            m.insert(
                                name.to_owned(),
                                Bucket {
                                    tat: new_tat,
                                    refusing: false,
                                },
                            );
                        }
                    }
                } else if !v.allowed
                    && let Some(b) = m.get_mut(name)
                {
                    first_refusal |= !b.refusing;
                    b.refusing = true;
                }
                g.report(v, allowed)
            };
        let key = match (self.key, kv) {
            (Some(g), Some(v)) => Some(settle(&mut t.keys, identity, &g, v)),
            _ => None,
        };
        let ws = match (self.workspace, wv) {
            (Some(g), Some(v)) => Some(settle(&mut t.workspaces, workspace, &g, v)),
            _ => None,
        };
        if allowed {
            t.sweep(now);
        }
        drop(t);
        Decision {
            key,
            workspace: ws,
            allowed,
            first_refusal,
            policy: self.policy.clone(),
        }
    }

    /// Live buckets (for tests of the sweep).
    pub fn buckets(&self) -> usize {
        let t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        t.keys.len() + t.workspaces.len()
    }
}

impl Decision {
    fn reports(&self) -> impl Iterator<Item = (&'static str, Report)> {
        [("key", self.key), ("workspace", self.workspace)]
            .into_iter()
            .filter_map(|(n, r)| r.map(|r| (n, r)))
    }

    /// Seconds until the request would be accepted (the largest wait over the refusing limits).
    pub fn retry_after_secs(&self) -> u64 {
        self.reports()
            .map(|(_, r)| r.retry_after_secs)
            .max()
            .unwrap_or(0)
    }

    /// Adds `RateLimit-Policy` and `RateLimit` (nothing when no limit is on).
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let Some(policy) = &self.policy else {
            return;
        };
        let live: Vec<String> = self
            .reports()
            .map(|(n, r)| format!("\"{n}\";r={};t={}", r.remaining, r.reset_secs))
            .collect();
        if let Ok(v) = HeaderValue::from_str(&live.join(", ")) {
            headers.insert(RATELIMIT_POLICY.clone(), policy.clone());
            headers.insert(RATELIMIT.clone(), v);
        }
    }

    /// The 429 answer: problem+json `rate_limited`, `Retry-After` and the rate-limit headers.
    pub fn refusal(&self) -> Response {
        let wait = self.retry_after_secs().max(1);
        let which: Vec<&str> = self
            .reports()
            .filter(|(_, r)| r.retry_after_secs > 0)
            .map(|(n, _)| if n == "key" { "caller" } else { "workspace" })
            .collect();
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "request rate limit of this {} exceeded; retry after {wait} s",
                which.join(" and ")
            ),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        self.write_headers(resp.headers_mut());
        resp
    }
}

/// `RateLimit-Policy`: `"key";q=<burst>;w=<seconds to refill it>`, then `"workspace";…`; `None`
/// when no limit is on.
fn policy_header(key: Option<Gcra>, workspace: Option<Gcra>) -> Option<HeaderValue> {
    let items: Vec<String> = [("key", key), ("workspace", workspace)]
        .into_iter()
        .filter_map(|(name, g)| g.map(|g| format!("\"{name}\";q={};w={}", g.quota, g.window_secs)))
        .collect();
    if items.is_empty() {
        return None;
    }
    HeaderValue::from_str(&items.join(", ")).ok()
}

fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS_PER_SEC)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const S: u64 = NANOS_PER_SEC;
    const MS: u64 = S / 1000;

    fn limiter(key: Option<(f64, u32)>, ws: Option<(f64, u32)>) -> RateLimiter {
        let q = |(per_second, burst)| Quota { per_second, burst };
        RateLimiter::new(RateLimits {
            per_key: key.map(q),
            per_workspace: ws.map(q),
        })
    }

    #[test]
    fn a_burst_passes_then_one_per_interval() {
        let l = limiter(Some((1.0, 3)), None);
        let remaining: Vec<u64> = (0..3)
            .map(|_| {
                let d = l.check_at(0, "k", "w");
                assert!(d.allowed);
                d.key.unwrap().remaining
            })
            .collect();
        assert_eq!(remaining, vec![2, 1, 0]);
        let d = l.check_at(0, "k", "w");
        assert!(!d.allowed);
        assert!(d.first_refusal);
        assert_eq!(d.key.unwrap().retry_after_secs, 1);
        assert_eq!(d.key.unwrap().reset_secs, 3);
        // Refusals are not charged: the wait does not grow.
        let d = l.check_at(500 * MS, "k", "w");
        assert!(!d.allowed && !d.first_refusal);
        assert_eq!(d.retry_after_secs(), 1);
        // One interval later exactly one more passes.
        assert!(l.check_at(S, "k", "w").allowed);
        assert!(!l.check_at(S, "k", "w").allowed);
        // After a full refill the whole burst is back.
        for _ in 0..3 {
            assert!(l.check_at(10 * S, "k", "w").allowed);
        }
        assert!(!l.check_at(10 * S, "k", "w").allowed);
    }

    #[test]
    fn the_sustained_rate_is_kept_exactly() {
        // 10 per second, burst 1: a request every 100 ms passes, one at 99 ms does not.
        let l = limiter(Some((10.0, 1)), None);
        for i in 0..100 {
            assert!(l.check_at(i * 100 * MS, "k", "w").allowed, "request {i}");
        }
        assert!(!l.check_at(9_999 * MS, "k", "w").allowed);
        let d = l.check_at(9_950 * MS, "k", "w");
        assert_eq!(d.retry_after_secs(), 1, "rounded up to whole seconds");
    }

    #[test]
    fn keys_are_independent_and_workspaces_shared() {
        let l = limiter(Some((1.0, 2)), Some((1.0, 3)));
        assert!(l.check_at(0, "a", "w1").allowed);
        assert!(l.check_at(0, "a", "w1").allowed);
        // Key a is spent; key b of the same workspace still has its own quota…
        let d = l.check_at(0, "a", "w1");
        assert!(!d.allowed);
        assert!(d.key.unwrap().retry_after_secs > 0);
        assert_eq!(d.workspace.unwrap().retry_after_secs, 0);
        assert_eq!(d.workspace.unwrap().remaining, 1, "not charged");
        let d = l.check_at(0, "b", "w1");
        assert!(d.allowed);
        // …until the workspace's is spent too.
        let d = l.check_at(0, "b", "w1");
        assert!(!d.allowed);
        assert!(d.workspace.unwrap().retry_after_secs > 0);
        assert_eq!(d.key.unwrap().remaining, 1, "the key was not charged");
        // Another workspace is untouched.
        assert!(l.check_at(0, "c", "w2").allowed);
    }

    #[test]
    fn headers_follow_the_draft() {
        let l = limiter(Some((50.0, 100)), Some((0.5, 3)));
        let d = l.check_at(0, "k", "w");
        let mut h = HeaderMap::new();
        d.write_headers(&mut h);
        assert_eq!(
            h[&RATELIMIT_POLICY],
            "\"key\";q=100;w=2, \"workspace\";q=3;w=6"
        );
        assert_eq!(h[&RATELIMIT], "\"key\";r=99;t=1, \"workspace\";r=2;t=2");
        let off = limiter(None, None).check_at(0, "k", "w");
        let mut h = HeaderMap::new();
        off.write_headers(&mut h);
        assert!(h.is_empty());
        assert!(off.allowed);
    }

    #[test]
    fn refusal_is_a_problem_with_retry_after() {
        let l = limiter(None, Some((0.1, 1)));
        assert!(l.check_at(0, "k", "w").allowed);
        let r = l.check_at(S, "k", "w").refusal();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "9");
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(r.headers()[&RATELIMIT], "\"workspace\";r=0;t=9");
    }

    #[test]
    fn idle_buckets_are_swept() {
        // 100,000 callers one after the other, each idle again a millisecond later: the tables
        // never hold more than the sweep threshold.
        let l = limiter(Some((1000.0, 1)), Some((1e6, 1000)));
        let mut most = 0;
        for i in 0..100_000u64 {
            assert!(
                l.check_at(i * MS, &format!("k{i}"), &format!("w{i}"))
                    .allowed
            );
            most = most.max(l.buckets());
        }
        assert!(most <= MIN_SWEEP, "{most} buckets");
        // Live buckets survive sweeps: 3,000 callers at one instant are all remembered (and
        // each is refused a second request).
        let now = 200 * S;
        for i in 0..3000 {
            assert!(l.check_at(now, &format!("c{i}"), &format!("cw{i}")).allowed);
        }
        assert!(l.buckets() >= 6000);
        for i in 0..3000 {
            assert!(!l.check_at(now, &format!("c{i}"), "other").allowed);
        }
    }

    #[test]
    fn odd_rates_do_not_overflow() {
        let l = limiter(Some((1e-300, u32::MAX)), Some((1e12, 1)));
        assert!(l.check_at(u64::MAX - 1, "k", "w").allowed);
        assert!(l.check_at(u64::MAX, "k", "w").allowed);
    }
}
