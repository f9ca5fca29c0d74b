//! What the OpenAI and Anthropic clients share: headers, status classification, error bodies and
//! reading a server-sent event stream.

use crate::config::{Price, ProviderConfig, ProviderKind};
use crate::retry::{AttemptError, RetryPolicy, parse_retry_after, retryable_status};
use crate::{CallError, ModelRequest, ModelsError, anthropic, openai};
use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use futures::StreamExt;
use paddock_types::ModelResponse;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

/// How much of an error body goes into an error message.
const ERROR_BODY_CHARS: usize = 500;

/// Connecting should never take long; a dead host must not eat the whole attempt timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn build_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("paddock/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
}

pub(crate) struct HttpProvider {
    name: String,
    kind: ProviderKind,
    endpoint: reqwest::Url,
    /// Auth and version headers, fixed for the provider's life.
    headers: HeaderMap,
    client: reqwest::Client,
    stream: bool,
    policy: RetryPolicy,
    prices: BTreeMap<String, Price>,
}

/// A call's body and headers, built once and re-sent unchanged on every attempt.
pub(crate) struct Prepared {
    body: Bytes,
    headers: HeaderMap,
    model: String,
}

impl HttpProvider {
    pub fn new(
        name: &str,
        cfg: &ProviderConfig,
        client: reqwest::Client,
    ) -> Result<Self, ModelsError> {
        let base = cfg
            .base_url
            .as_deref()
            .unwrap_or(cfg.kind.default_base_url());
        let bad_url = |reason: String| ModelsError::BadBaseUrl {
            provider: name.to_owned(),
            url: base.to_owned(),
            reason,
        };
        let url = reqwest::Url::parse(base).map_err(|e| bad_url(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad_url("the scheme must be http or https".into()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad_url("it must not have a query or fragment".into()));
        }
        let endpoint = format!("{}{}", base.trim_end_matches('/'), cfg.kind.endpoint_path());
        let endpoint = reqwest::Url::parse(&endpoint).map_err(|e| bad_url(e.to_string()))?;

        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if cfg.kind == ProviderKind::Anthropic {
            headers.insert(
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static("2023-06-01"),
            );
        }
        if let Some(var) = &cfg.api_key_env {
            let key = std::env::var(var)
                .ok()
                .filter(|k| !k.trim().is_empty())
                .ok_or_else(|| ModelsError::MissingKey {
                    provider: name.to_owned(),
                    var: var.clone(),
                })?;
            let (header, value) = match cfg.kind {
                ProviderKind::Openai => (
                    reqwest::header::AUTHORIZATION,
                    format!("Bearer {}", key.trim()),
                ),
                ProviderKind::Anthropic => {
                    (HeaderName::from_static("x-api-key"), key.trim().to_owned())
                }
            };
            let mut value = HeaderValue::from_str(&value).map_err(|_| ModelsError::InvalidKey {
                provider: name.to_owned(),
                var: var.clone(),
            })?;
            value.set_sensitive(true);
            headers.insert(header, value);
        }

        if cfg.timeout_secs == 0 {
            return Err(ModelsError::InvalidSetting {
                provider: name.to_owned(),
                reason: "timeout_secs must be at least 1".into(),
            });
        }
        Ok(HttpProvider {
            name: name.to_owned(),
            kind: cfg.kind,
            endpoint,
            headers,
            client,
            stream: cfg.stream,
            policy: RetryPolicy {
                max_retries: cfg.max_retries,
                base: Duration::from_millis(cfg.retry_base_ms),
                max: Duration::from_millis(cfg.retry_max_ms.max(cfg.retry_base_ms)),
                timeout: Some(Duration::from_secs(cfg.timeout_secs)),
            },
            prices: cfg.prices.clone(),
        })
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    pub fn prepare(&self, req: &ModelRequest<'_>) -> Result<Prepared, CallError> {
        let body = match self.kind {
            ProviderKind::Openai => openai::request_body(req, self.stream),
            ProviderKind::Anthropic => anthropic::request_body(req, self.stream),
        };
        let body = serde_json::to_vec(&body).map_err(|e| CallError {
            retries: 0,
            message: format!("cannot encode the request: {e}"),
        })?;
        let mut headers = self.headers.clone();
        let header = |v: String| {
            HeaderValue::from_str(&v).map_err(|_| CallError {
                retries: 0,
                message: format!("run id {:?} cannot go into an HTTP header", req.run_id),
            })
        };
        headers.insert(
            HeaderName::from_static("idempotency-key"),
            header(req.idempotency_key())?,
        );
        headers.insert(
            HeaderName::from_static("paddock-run-id"),
            header(req.run_id.to_owned())?,
        );
        if self.stream {
            headers.insert(
                reqwest::header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
        }
        Ok(Prepared {
            body: Bytes::from(body),
            headers,
            model: req.model.to_owned(),
        })
    }

    pub async fn attempt(&self, p: &Prepared) -> Result<ModelResponse, AttemptError> {
        let resp = self
            .client
            .post(self.endpoint.clone())
            .headers(p.headers.clone())
            .body(p.body.clone())
            .send()
            .await
            .map_err(|e| {
                if e.is_builder() {
                    AttemptError::Fatal(format!("{} request: {}", self.label(), chain(&e)))
                } else {
                    AttemptError::retryable(format!(
                        "{} request failed: {}",
                        self.label(),
                        chain(&e)
                    ))
                }
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(self.status_error(resp).await);
        }
        let is_sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        // Decided by what came back, not what was asked: some compatible servers ignore
        // `stream`.
        if is_sse {
            match self.kind {
                ProviderKind::Openai => {
                    read_stream(
                        resp,
                        openai::StreamState::default(),
                        &p.model,
                        &self.label(),
                    )
                    .await
                }
                ProviderKind::Anthropic => {
                    read_stream(
                        resp,
                        anthropic::StreamState::default(),
                        &p.model,
                        &self.label(),
                    )
                    .await
                }
            }
        } else {
            let body = resp.bytes().await.map_err(|e| {
                AttemptError::retryable(format!("{} answer cut: {}", self.label(), chain(&e)))
            })?;
            let parsed = match self.kind {
                ProviderKind::Openai => openai::parse_body(&body, &p.model),
                ProviderKind::Anthropic => anthropic::parse_body(&body, &p.model),
            };
            parsed.map_err(|e| {
                AttemptError::retryable(format!("{} sent a malformed answer: {e}", self.label()))
            })
        }
    }

    /// The most a token of `model` can be billed: its configured price, or, when the requested
    /// name is not in the table but others are (a call billed under a dated variant the
    /// provider reports, see [`HttpProvider::cost`]), the dearest input and output prices of
    /// the table. None when the provider has no prices at all.
    pub fn max_price(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.prices.get(model) {
            return Some(*p);
        }
        self.prices.values().copied().reduce(|a, b| Price {
            input_per_mtok: a.input_per_mtok.max(b.input_per_mtok),
            output_per_mtok: a.output_per_mtok.max(b.output_per_mtok),
        })
    }

    /// Price by the requested name first, then by the name the provider reports (often a dated
    /// variant of it).
    pub fn cost(&self, requested: &str, response: &ModelResponse) -> f64 {
        self.prices
            .get(requested)
            .or_else(|| self.prices.get(&response.model))
            .map_or(0.0, |p| crate::cost_usd(p, &response.usage))
    }

    fn label(&self) -> String {
        format!("{} provider {:?}", self.kind, self.name)
    }

    async fn status_error(&self, resp: reqwest::Response) -> AttemptError {
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let body = resp.text().await.unwrap_or_default();
        let reason = format!(
            "{} answered {status}: {}",
            self.label(),
            truncate(&error_text(&body))
        );
        if retryable_status(status) {
            AttemptError::Retryable {
                reason,
                status: Some(status),
                retry_after,
            }
        } else {
            AttemptError::Fatal(reason)
        }
    }
}

/// `retry-after-ms` (OpenAI's finer variant) first, then the standard `Retry-After`.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    get("retry-after").and_then(parse_retry_after)
}

/// The `error.message` both vendors' error bodies carry, else the body itself.
fn error_text(body: &str) -> Cow<'_, str> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_owned))
        .map_or_else(|| Cow::Borrowed(body.trim()), Cow::Owned)
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(ERROR_BODY_CHARS) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// An error with its sources: reqwest's own text ("error sending request") says little alone.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// Folds a provider's stream events into one response.
pub(crate) trait StreamState {
    /// Takes one event; `Ok(true)` once the provider's end-of-stream marker arrived.
    fn feed(&mut self, event: &Event) -> Result<bool, AttemptError>;
    /// The response, once the end marker arrived; an error if the stream was incomplete.
    fn finish(self, requested_model: &str) -> Result<ModelResponse, AttemptError>;
}

async fn read_stream<S: StreamState>(
    resp: reqwest::Response,
    mut state: S,
    model: &str,
    label: &str,
) -> Result<ModelResponse, AttemptError> {
    let mut events = resp.bytes_stream().eventsource();
    while let Some(event) = events.next().await {
        let event = event
            .map_err(|e| AttemptError::retryable(format!("{label} stream cut: {}", chain(&e))))?;
        // Stop at the end marker rather than wait for the server to close the connection.
        if state.feed(&event)? {
            return state.finish(model);
        }
    }
    Err(AttemptError::retryable(format!(
        "{label} stream ended before its end event"
    )))
}

/// Tool call arguments as JSON; kept verbatim as a string when a model produced invalid JSON,
/// so the harness can show the model its mistake.
pub(crate) fn parse_arguments(raw: &str) -> serde_json::Value {
    // Some servers stream no argument text at all for a tool without parameters.
    if raw.trim().is_empty() {
        return serde_json::Value::Object(serde_json::Map::new());
    }
    serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arguments_parse_or_stay_verbatim() {
        assert_eq!(parse_arguments("{\"a\":1}"), json!({"a": 1}));
        assert_eq!(parse_arguments(""), json!({}));
        assert_eq!(parse_arguments("{\"a\":"), json!("{\"a\":"));
    }

    #[test]
    fn error_bodies_are_truncated_on_char_boundaries() {
        let s = "é".repeat(600);
        assert_eq!(truncate(&s).chars().count(), 500);
        assert_eq!(truncate("short"), "short");
    }

    #[test]
    fn error_messages_are_taken_from_json_bodies() {
        let openai = r#"{"error": {"message": "bad model", "type": "invalid_request_error"}}"#;
        assert_eq!(error_text(openai), "bad model");
        let anthropic = r#"{"type": "error", "error": {"type": "x", "message": "too long"}}"#;
        assert_eq!(error_text(anthropic), "too long");
        assert_eq!(error_text(" <html>502</html>\n"), "<html>502</html>");
    }

    #[test]
    fn retry_after_ms_wins() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
    }
}
