//! Paddock's model providers: the OpenAI-compatible and Anthropic HTTP clients, the one retry
//! loop every provider goes through (backoff, `Retry-After`, idempotency keys, cancellation),
//! cost from a configured price table, the in-process `scripted` provider and the mock LLM
//! server (`paddock mock-llm`), which both obey the same `mock` directive in the system prompt.
//!
//! This crate turns one provider-neutral request into one normalized [`ModelResponse`]. It must
//! not know tenants, runs' journals or tools' side effects: the run id it receives is only an
//! opaque string for idempotency keys and logs.
//!
//! The HTTP clients use rustls without a bundled crypto provider, so a process that configures
//! an HTTP provider must install one (e.g. `rustls::crypto::ring::default_provider()`) before
//! [`Models::new`].

mod anthropic;
mod config;
mod http;
pub mod mock_server;
mod openai;
mod retry;
mod script;
mod scripted;

pub use config::{Price, ProviderConfig, ProviderKind};

use crate::http::HttpProvider;
use crate::scripted::Scripted;
use paddock_types::{Message, ModelResponse, ToolSpec};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The name of the built-in in-process provider.
const SCRIPTED: &str = "scripted";

/// Why the provider configuration cannot be used. Every variant is a configuration mistake:
/// report it to the operator and do not start.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// The name is taken by the built-in provider; rename the `[providers.scripted]` section.
    #[error("provider name \"scripted\" is reserved for the built-in scripted model")]
    ReservedName,
    /// Fix `base_url`: it must be an absolute http(s) URL.
    #[error("provider {provider:?}: invalid base_url {url:?}: {reason}")]
    BadBaseUrl {
        provider: String,
        url: String,
        reason: String,
    },
    /// Set the variable named by `api_key_env`, or remove `api_key_env` for a keyless server.
    #[error("provider {provider:?}: environment variable {var} (api_key_env) is not set or empty")]
    MissingKey { provider: String, var: String },
    /// The key holds characters that cannot go into an HTTP header (often a stray newline).
    #[error("provider {provider:?}: the key in {var} is not a valid HTTP header value")]
    InvalidKey { provider: String, var: String },
    /// A numeric setting is out of range.
    #[error("provider {provider:?}: {reason}")]
    InvalidSetting { provider: String, reason: String },
    /// The HTTP client could not be built (TLS setup); nothing the configuration can fix.
    #[error("cannot build the http client: {0}")]
    Client(#[source] reqwest::Error),
}

/// One model call, provider-neutral.
#[derive(Debug, Clone, Copy)]
pub struct ModelRequest<'a> {
    pub model: &'a str,
    pub messages: &'a [Message],
    pub tools: &'a [ToolSpec],
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_output_tokens: u32,
    /// With `call_index`, forms the `Idempotency-Key` sent on every attempt of this call.
    pub run_id: &'a str,
    pub call_index: u32,
}

impl ModelRequest<'_> {
    fn idempotency_key(&self) -> String {
        format!("{}/{}", self.run_id, self.call_index)
    }
}

/// A successful model call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOutcome {
    pub response: ModelResponse,
    /// From the provider's price table; 0 when the model has no price.
    pub cost_usd: f64,
    /// Attempts beyond the first.
    pub retries: u32,
    /// Wall time of the whole call, retries and backoff included.
    pub latency_ms: u64,
}

/// The call failed for good: a non-retryable answer (most 4xx), the retry budget spent, an
/// unknown provider, or cancellation. Retrying the same call later is the caller's decision.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    /// Attempts beyond the first that were made before giving up.
    pub retries: u32,
    pub message: String,
}

/// Every configured provider plus the built-in `scripted` one.
pub struct Models {
    providers: BTreeMap<String, HttpProvider>,
    scripted: Scripted,
    /// Prices for the `scripted` provider's model names (none by default: it is free), so
    /// budgets can be tried offline.
    scripted_prices: BTreeMap<String, Price>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Models {
    /// Builds clients for every configured provider. "scripted" is always available (in-process).
    pub fn new(providers: &BTreeMap<String, ProviderConfig>) -> Result<Models, ModelsError> {
        if providers.contains_key(SCRIPTED) {
            return Err(ModelsError::ReservedName);
        }
        let mut built = BTreeMap::new();
        // Built only when needed: with no HTTP provider (tests, the demo) no TLS crypto provider
        // has to be installed.
        if !providers.is_empty() {
            let client = http::build_client().map_err(ModelsError::Client)?;
            for (name, cfg) in providers {
                let p = HttpProvider::new(name, cfg, client.clone())?;
                built.insert(name.clone(), p);
            }
        }
        Ok(Models {
            providers: built,
            scripted: Scripted::new(),
            scripted_prices: BTreeMap::new(),
        })
    }

    /// Prices the `scripted` provider's calls by model name, like an HTTP provider's `prices`.
    pub fn with_scripted_prices(mut self, prices: BTreeMap<String, Price>) -> Self {
        self.scripted_prices = prices;
        self
    }

    fn max_price(&self, provider: &str, model: &str) -> Option<Price> {
        if provider == SCRIPTED {
            self.scripted_prices.get(model).copied()
        } else {
            self.providers.get(provider)?.max_price(model)
        }
    }

    /// The most `req` can cost on `provider`, to reserve against budgets before calling: every
    /// byte of the conversation and the tool definitions counted as an input token (a token of
    /// a byte-level tokenizer covers at least one byte), plus per-message framing, plus
    /// `max_output_tokens` of output. 0 when the model has no price.
    pub fn max_cost_usd(&self, provider: &str, req: &ModelRequest<'_>) -> f64 {
        /// Tokens a provider may add around each message and for the request's framing.
        const FRAMING_TOKENS: u64 = 16;
        let Some(price) = self.max_price(provider, req.model) else {
            return 0.0;
        };
        let bytes = |v: Result<Vec<u8>, serde_json::Error>| v.map_or(0, |v| v.len() as u64);
        let input = bytes(serde_json::to_vec(req.messages))
            + bytes(serde_json::to_vec(req.tools))
            + FRAMING_TOKENS * (req.messages.len() as u64 + 1);
        cost_usd(
            &price,
            &paddock_types::Usage {
                input_tokens: input,
                output_tokens: u64::from(req.max_output_tokens),
            },
        )
    }

    /// Whether `call` knows `provider`.
    pub fn has(&self, provider: &str) -> bool {
        provider == SCRIPTED || self.providers.contains_key(provider)
    }

    /// Calls `provider`, retrying transient failures. Cancelling `cancel` aborts the attempt or
    /// the backoff sleep in progress and returns a "cancelled" error.
    pub async fn call(
        &self,
        provider: &str,
        req: &ModelRequest<'_>,
        cancel: &CancellationToken,
    ) -> Result<CallOutcome, CallError> {
        let started = Instant::now();
        let (response, retries, cost_usd) = if provider == SCRIPTED {
            let (response, retries) = retry::run(&scripted::POLICY, req, cancel, || {
                self.scripted.attempt(req)
            })
            .await?;
            let cost = self
                .scripted_prices
                .get(req.model)
                .map_or(0.0, |p| cost_usd(p, &response.usage));
            (response, retries, cost)
        } else {
            let Some(p) = self.providers.get(provider) else {
                return Err(CallError {
                    retries: 0,
                    message: format!("unknown model provider {provider:?}"),
                });
            };
            let prepared = p.prepare(req)?;
            let (response, retries) =
                retry::run(p.policy(), req, cancel, || p.attempt(&prepared)).await?;
            let cost = p.cost(req.model, &response);
            (response, retries, cost)
        };
        Ok(CallOutcome {
            response,
            cost_usd,
            retries,
            latency_ms: duration_ms(started.elapsed()),
        })
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `Usage` priced per million tokens.
fn cost_usd(price: &Price, usage: &paddock_types::Usage) -> f64 {
    // u64 -> f64 loses precision only beyond 2^53 tokens.
    (usage.input_tokens as f64 * price.input_per_mtok
        + usage.output_tokens as f64 * price.output_per_mtok)
        / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn the_call_future_is_send() {
        let models = Models::new(&BTreeMap::new()).unwrap();
        let req = ModelRequest {
            model: "m",
            messages: &[],
            tools: &[],
            temperature: None,
            top_p: None,
            max_output_tokens: 10,
            run_id: "r",
            call_index: 0,
        };
        let cancel = CancellationToken::new();
        let fut = models.call("scripted", &req, &cancel);
        assert_send(&fut);
    }

    #[test]
    fn cost_is_per_million_tokens() {
        let p = Price {
            input_per_mtok: 0.15,
            output_per_mtok: 0.60,
        };
        let u = paddock_types::Usage {
            input_tokens: 1_000_000,
            output_tokens: 500_000,
        };
        assert!((cost_usd(&p, &u) - 0.45).abs() < 1e-12);
    }
}
