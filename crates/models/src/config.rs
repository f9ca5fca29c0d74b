//! The `[providers.<name>]` configuration sections.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI chat completions, and every server that imitates it (vLLM, Ollama, llama.cpp, …).
    Openai,
    /// Anthropic Messages.
    Anthropic,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
    }

    pub(crate) fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::Openai => "https://api.openai.com/v1",
            ProviderKind::Anthropic => "https://api.anthropic.com",
        }
    }

    pub(crate) fn endpoint_path(self) -> &'static str {
        match self {
            ProviderKind::Openai => "/chat/completions",
            ProviderKind::Anthropic => "/v1/messages",
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[providers.<name>]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// Defaults to the vendor's public API. `/chat/completions` (openai) or `/v1/messages`
    /// (anthropic) is appended.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The name of the environment variable holding the API key, read once at start. Without
    /// it no auth header is sent, which suits local servers.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Retries after the first attempt, for 429, 408, 5xx, network errors and cut streams.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Per attempt, streaming included.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default = "default_stream")]
    pub stream: bool,
    /// Model name -> price. A model without a price costs 0.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

fn default_max_retries() -> u32 {
    4
}
fn default_retry_base_ms() -> u64 {
    500
}
fn default_retry_max_ms() -> u64 {
    30_000
}
fn default_timeout_secs() -> u64 {
    120
}
fn default_stream() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_a_minimal_section() {
        let c: ProviderConfig = serde_json::from_str(r#"{"kind": "anthropic"}"#).unwrap();
        assert_eq!(c.kind, ProviderKind::Anthropic);
        assert_eq!(c.max_retries, 4);
        assert_eq!(c.retry_base_ms, 500);
        assert_eq!(c.retry_max_ms, 30_000);
        assert_eq!(c.timeout_secs, 120);
        assert!(c.stream);
        assert!(c.prices.is_empty());
    }

    #[test]
    fn unknown_fields_and_kinds_are_rejected() {
        let e = serde_json::from_str::<ProviderConfig>(r#"{"kind": "openai", "retries": 1}"#)
            .unwrap_err();
        assert!(e.to_string().contains("retries"), "{e}");
        let e = serde_json::from_str::<ProviderConfig>(r#"{"kind": "gemini"}"#).unwrap_err();
        assert!(e.to_string().contains("gemini"), "{e}");
    }

    #[test]
    fn prices_parse() {
        let c: ProviderConfig = serde_json::from_str(
            r#"{"kind": "openai", "prices": {"gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}}"#,
        )
        .unwrap();
        assert_eq!(c.prices["gpt-4o-mini"].output_per_mtok, 0.6);
    }
}
