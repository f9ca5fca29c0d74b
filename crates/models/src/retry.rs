//! The retry loop shared by every provider, so backoff, `Retry-After`, cancellation and the
//! retry count mean the same thing whichever provider a run uses.

use crate::{CallError, ModelRequest};
use paddock_types::ModelResponse;
use std::future::Future;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// A server's `Retry-After` is honoured up to at least this long even when `retry_max_ms` is
/// shorter: retrying earlier than asked only earns another 429.
const RETRY_AFTER_FLOOR_CAP: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    pub max_retries: u32,
    pub base: Duration,
    pub max: Duration,
    /// Per attempt; `None` for in-process providers that cannot hang.
    pub timeout: Option<Duration>,
}

impl RetryPolicy {
    /// The sleep before retry number `retry` (0-based).
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max.max(RETRY_AFTER_FLOOR_CAP));
        }
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(retry.min(31)))
            .min(self.max);
        // Equal jitter: spreads clients that failed together without ever retrying at once.
        let half = exp / 2;
        let jitter_ms = fastrand::u64(0..=crate::duration_ms(exp - half));
        half + Duration::from_millis(jitter_ms)
    }
}

/// How one attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AttemptError {
    /// Worth another attempt (429, 408, 5xx, network trouble, a cut or garbled stream).
    Retryable {
        reason: String,
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help (most 4xx, a malformed mock directive).
    Fatal(String),
}

impl AttemptError {
    pub fn retryable(reason: impl Into<String>) -> Self {
        AttemptError::Retryable {
            reason: reason.into(),
            status: None,
            retry_after: None,
        }
    }
}

/// Whether an HTTP error status is transient.
pub(crate) fn retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

/// Parses `Retry-After`: delay-seconds (fractions tolerated) or an HTTP date.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Runs `attempt` until it succeeds, fails fatally, the budget is spent or `cancel` fires.
/// Returns the response and the number of retries made.
pub(crate) async fn run<F, Fut>(
    policy: &RetryPolicy,
    req: &ModelRequest<'_>,
    cancel: &CancellationToken,
    mut attempt: F,
) -> Result<(ModelResponse, u32), CallError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<ModelResponse, AttemptError>>,
{
    let mut retries = 0;
    loop {
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(cancelled(retries)),
            r = with_timeout(policy.timeout, attempt()) => r,
        };
        let (reason, status, retry_after) = match result {
            Ok(response) => return Ok((response, retries)),
            Err(AttemptError::Fatal(message)) => return Err(CallError { retries, message }),
            Err(AttemptError::Retryable {
                reason,
                status,
                retry_after,
            }) => (reason, status, retry_after),
        };
        if retries >= policy.max_retries {
            return Err(CallError {
                retries,
                message: format!("retry budget spent after {retries} retries: {reason}"),
            });
        }
        let delay = policy.delay(retries, retry_after);
        tracing::warn!(
            run_id = req.run_id,
            call_index = req.call_index,
            attempt = retries + 1,
            status,
            reason = %reason,
            delay_ms = crate::duration_ms(delay),
            "model call attempt failed, retrying"
        );
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(cancelled(retries)),
            () = tokio::time::sleep(delay) => {}
        }
        retries += 1;
    }
}

async fn with_timeout<Fut>(
    timeout: Option<Duration>,
    fut: Fut,
) -> Result<ModelResponse, AttemptError>
where
    Fut: Future<Output = Result<ModelResponse, AttemptError>>,
{
    let Some(limit) = timeout else {
        return fut.await;
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(AttemptError::retryable(format!(
            "no complete answer within {} s",
            limit.as_secs_f64()
        ))),
    }
}

fn cancelled(retries: u32) -> CallError {
    CallError {
        retries,
        message: "cancelled".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            timeout: None,
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let p = policy();
        for _ in 0..200 {
            let d0 = p.delay(0, None);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d2 = p.delay(2, None);
            assert!(d2 >= Duration::from_millis(200) && d2 <= Duration::from_millis(400));
            let d9 = p.delay(40, None);
            assert!(d9 >= Duration::from_millis(500) && d9 <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn retry_after_wins_over_a_short_cap_up_to_a_minute() {
        let p = policy();
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(3600))),
            Duration::from_secs(60)
        );
        let long = RetryPolicy {
            max: Duration::from_secs(120),
            ..policy()
        };
        assert_eq!(
            long.delay(0, Some(Duration::from_secs(90))),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
        let past = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH);
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(&future).unwrap();
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
    }

    #[test]
    fn status_classes() {
        for s in [408, 429, 500, 502, 503, 529] {
            assert!(retryable_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 422] {
            assert!(!retryable_status(s), "{s}");
        }
    }
}
