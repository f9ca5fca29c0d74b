//! The login throttle of `POST /v1/sessions`: slows password guessing down without letting
//! anyone lock a member out.
//!
//! A hard lockout per email (N failures → refuse everyone for 15 minutes) hands the lock to
//! whoever knows the email. Here failures count against the *pair* of email and source address:
//!
//! - **Per (email, source): exponential backoff.** The first `free_failures − 1` failures cost
//!   nothing; after the `free_failures`-th the pair waits `backoff_base`, and each further
//!   failure doubles the wait, up to `backoff_max`, before its next attempt is even checked
//!   (429 `too_many_attempts` with `Retry-After`). Refused attempts do not count and do not
//!   extend the wait. A success clears the pair; a pair is forgotten `forget_after` its last
//!   failure.
//! - **Per email, across sources: a slowly spent budget.** Once an email has had
//!   `email_budget` failures (from all sources, within `forget_after` of each other), every source
//!   loses its free failures for it: each new address still gets one attempt at once, then backs
//!   off from its first failure. A botnet pays an address per guess instead of five.
//! - **Per source: a token bucket** over all login attempts (GCRA, as the API rate limits), so
//!   one address cannot spray many emails.
//!
//! What this guarantees: the real member, from an address the attacker does not share, is never
//! refused before their password is checked because of someone else's failures — their first
//! attempt from an address is always checked, and after their own mistakes they wait at most
//! `backoff_max`. An attempt is counted *before* its password is checked, so parallel guesses
//! cannot all slip in before the first failure is recorded; a success takes it back.
//!
//! The source is the connection's peer address (IPv6 by /64, which one host typically holds
//! whole). `paddock serve` trusts no `X-Forwarded-For`: behind a reverse proxy every login comes
//! from the proxy's address and shares its bucket and pairs (see the README's limitations).
//! State is in this process's memory and is forgotten at restart.

use crate::ratelimit::{Quota, RateLimiter, RateLimits};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tracked pairs and emails before idle entries are swept (amortised, as the rate limiter).
const SWEEP_AT: usize = 10_000;
/// Most (email, source) pairs and emails remembered at once (roughly 100 bytes each). A flood
/// from more sources than this within `forget_after` (many IPv6 prefixes) would otherwise grow
/// the tables without bound; while they are full, a pair not yet known waits like a throttled
/// one, and pairs already known (members logging in from where they did before) go on.
const MAX_ENTRIES: usize = 500_000;
/// What a pair not yet known is told to wait while the tables are full.
const FULL_RETRY: Duration = Duration::from_secs(60);

/// How the throttle behaves (part of [`crate::SessionSettings`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleSettings {
    /// Failures of one email from one source address before backoff starts.
    pub free_failures: u32,
    /// The first backoff; each further failure doubles it.
    pub backoff_base: Duration,
    /// The longest backoff: the most a member ever waits after their own mistakes.
    pub backoff_max: Duration,
    /// A pair (and an email's budget) is forgotten this long after its last failure.
    pub forget_after: Duration,
    /// Failures of one email from all sources after which no source gets free failures for it.
    pub email_budget: u32,
    /// Login attempts per source address; `None` for no bucket.
    pub per_source: Option<Quota>,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            free_failures: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            forget_after: Duration::from_secs(15 * 60),
            email_budget: 50,
            per_source: Some(Quota {
                per_second: 0.5,
                burst: 30,
            }),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pair {
    failures: u32,
    last: Instant,
    /// No attempt is checked before this.
    until: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    failures: u32,
    last: Instant,
}

#[derive(Default)]
struct Tables {
    pairs: HashMap<(String, String), Pair>,
    emails: HashMap<String, Budget>,
    sweep_at: usize,
}

/// The throttle's memory, shared by every login of a server.
pub struct LoginThrottle {
    settings: ThrottleSettings,
    sources: RateLimiter,
    tables: Mutex<Tables>,
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginThrottle")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self::new(ThrottleSettings::default())
    }
}

/// An attempt that may go on to the password check; give it back with
/// [`LoginThrottle::succeeded`] if the password was right.
#[derive(Debug)]
pub struct Attempt {
    email: String,
    source: String,
}

/// The key a source address is throttled under.
pub fn source_key(ip: Option<IpAddr>) -> String {
    match ip {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        None => "unknown".to_owned(),
    }
}

impl LoginThrottle {
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            sources: RateLimiter::new(RateLimits {
                per_key: settings.per_source,
                per_workspace: None,
            }),
            tables: Mutex::new(Tables::default()),
        }
    }

    /// Counts an attempt for `email` from `source` before its password is checked, or answers
    /// `Err(retry after)` while the source or the pair must wait.
    pub fn attempt(&self, email: &str, source: &str) -> Result<Attempt, Duration> {
        let s = &self.settings;
        let now = Instant::now();
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let key = (email.to_owned(), source.to_owned());
        // A pair still waiting is refused before the source's bucket is charged: its refusals
        // cost nothing.
        if let Some(p) = t.pairs.get(&key)
            && let Some(until) = p.until
            && until > now
        {
            return Err(until - now);
        }
        let bucket = self.sources.check(source, "");
        if !bucket.allowed {
            return Err(Duration::from_secs(bucket.retry_after_secs().max(1)));
        }
        if t.pairs.len() + t.emails.len() >= t.sweep_at.max(SWEEP_AT) {
            let forget = s.forget_after;
            t.pairs
                .retain(|_, p| now.duration_since(p.last) < forget || p.until > Some(now));
            t.emails.retain(|_, b| now.duration_since(b.last) < forget);
            t.sweep_at = 2 * (t.pairs.len() + t.emails.len());
        }
        if t.pairs.len() + t.emails.len() >= MAX_ENTRIES && !t.pairs.contains_key(&key) {
            return Err(FULL_RETRY);
        }
        let budget = t.emails.entry(email.to_owned()).or_insert(Budget {
            failures: 0,
            last: now,
        });
        if now.duration_since(budget.last) >= s.forget_after {
            budget.failures = 0;
        }
        budget.failures = budget.failures.saturating_add(1);
        budget.last = now;
        let free = if budget.failures > s.email_budget {
            1
        } else {
            s.free_failures.max(1)
        };
        let pair = t.pairs.entry(key).or_insert(Pair {
            failures: 0,
            last: now,
            until: None,
        });
        if now.duration_since(pair.last) >= s.forget_after {
            pair.failures = 0;
        }
        pair.failures = pair.failures.saturating_add(1);
        pair.last = now;
        pair.until = (pair.failures >= free).then(|| {
            let doublings = (pair.failures - free).min(30);
            now + s
                .backoff_base
                .saturating_mul(1u32 << doublings)
                .min(s.backoff_max)
        });
        Ok(Attempt {
            email: email.to_owned(),
            source: source.to_owned(),
        })
    }

    /// The attempt's password was right: it was no failure, and the pair starts afresh.
    pub fn succeeded(&self, attempt: Attempt) {
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        t.pairs.remove(&(attempt.email.clone(), attempt.source));
        if let Some(b) = t.emails.get_mut(&attempt.email) {
            b.failures = b.failures.saturating_sub(1);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn throttle(free: u32, budget: u32) -> LoginThrottle {
        LoginThrottle::new(ThrottleSettings {
            free_failures: free,
            email_budget: budget,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
            per_source: None,
            ..ThrottleSettings::default()
        })
    }

    #[test]
    fn full_tables_stop_new_pairs_but_not_known_ones() {
        let t = throttle(3, 1000);
        // Each attempt from a new email and source adds a pair and an email.
        for i in 0..MAX_ENTRIES / 2 {
            assert!(t.attempt(&format!("e{i}"), &format!("s{i}")).is_ok());
        }
        assert_eq!(t.attempt("new", "elsewhere").unwrap_err(), FULL_RETRY);
        assert!(t.attempt("e7", "s7").is_ok());
    }

    #[test]
    fn backoff_starts_after_the_free_failures() {
        let t = throttle(3, 1000);
        assert!(t.attempt("e", "a").is_ok());
        assert!(t.attempt("e", "a").is_ok());
        // The third failure starts the backoff: the fourth attempt waits 1 s…
        assert!(t.attempt("e", "a").is_ok());
        let wait = t.attempt("e", "a").unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // …and other addresses and emails are not affected.
        assert!(t.attempt("e", "b").is_ok());
        assert!(t.attempt("f", "a").is_ok());
    }

    #[test]
    fn the_backoff_doubles_up_to_the_cap() {
        let s = ThrottleSettings {
            free_failures: 0,
            backoff_max: Duration::from_secs(8),
            per_source: None,
            ..ThrottleSettings::default()
        };
        let t = LoginThrottle::new(s);
        let mut waits = Vec::new();
        for _ in 0..6 {
            assert!(t.attempt("e", "a").is_ok());
            let until = t.tables.lock().unwrap().pairs[&("e".into(), "a".into())].until;
            waits.push((until.unwrap() - Instant::now()).as_secs_f64().round() as u64);
            // Let the next attempt through (the test moves time by rewriting the deadline).
            t.tables
                .lock()
                .unwrap()
                .pairs
                .get_mut(&("e".into(), "a".into()))
                .unwrap()
                .until = None;
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 8, 8]);
    }

    #[test]
    fn a_success_clears_the_pair() {
        let t = throttle(2, 1000);
        t.attempt("e", "a").unwrap();
        let ok = t.attempt("e", "a").unwrap();
        assert!(
            t.attempt("e", "a").is_err(),
            "the right password waits like a guess"
        );
        t.succeeded(ok);
        assert!(t.attempt("e", "a").is_ok());
    }

    #[test]
    fn a_spent_email_budget_leaves_new_addresses_one_attempt_each() {
        let t = throttle(5, 3);
        for i in 0..3 {
            t.attempt("e", &format!("bot{i}")).unwrap();
        }
        // The budget is spent: a new address is still checked once, then backs off at once.
        assert!(t.attempt("e", "member").is_ok());
        assert!(t.attempt("e", "member").is_err());
        // Another email keeps its free failures (within its own budget).
        for _ in 0..3 {
            assert!(t.attempt("f", "a").is_ok());
        }
    }

    #[test]
    fn a_source_has_a_bucket_of_attempts_over_all_emails() {
        let t = LoginThrottle::new(ThrottleSettings {
            per_source: Some(Quota {
                per_second: 0.001,
                burst: 3,
            }),
            ..ThrottleSettings::default()
        });
        for i in 0..3 {
            assert!(t.attempt(&format!("e{i}"), "a").is_ok());
        }
        assert!(t.attempt("e9", "a").unwrap_err() >= Duration::from_secs(1));
        assert!(t.attempt("e9", "b").is_ok());
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64_and_mapped_v4_is_v4() {
        let a = source_key(Some("2001:db8:1:2:aaaa::1".parse().unwrap()));
        let b = source_key(Some("2001:db8:1:2:bbbb::9".parse().unwrap()));
        assert_eq!(a, b);
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_eq!(
            source_key(Some("::ffff:192.0.2.1".parse().unwrap())),
            "192.0.2.1"
        );
        assert_eq!(source_key(None), "unknown");
    }
}
