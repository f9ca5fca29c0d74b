//! Agent manifests (`agent.toml`): parsing and the validation that does not need I/O.
//!
//! An agent is a folder with `agent.toml` and `prompt.md` (a minijinja template over the run
//! input), plus optional `input.schema.json` / `output.schema.json`. Loading the folder is the
//! harness's job; this module only turns text into a checked [`AgentManifest`].

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// A manifest problem: which field and why. `field` is a dotted path (`limits.max_steps`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ManifestError {
    pub field: String,
    pub message: String,
}

impl ManifestError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentManifest {
    pub name: String,
    /// Semantic version of the agent package.
    pub version: semver::Version,
    #[serde(default)]
    pub description: String,
    pub model: ModelSettings,
    #[serde(default)]
    pub limits: Limits,
    /// Enabled tools by name. A tool not listed here is not offered to the model.
    #[serde(default)]
    pub tools: BTreeMap<String, ToolRule>,
    /// JSON Schema the run input must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// JSON Schema the final answer must satisfy (then the answer must be JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// `[[egress]]`: where the agent's tools may reach over the network. None → no network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
    /// `[[credentials]]`: secrets the egress broker injects on the network side.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<CredentialBinding>,
}

/// One `[[egress]]` rule. A request is allowed when some allow rule matches it and no deny rule
/// does (deny wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    /// `https` (default) or `http`.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// An exact host name (`api.github.com`) or a `*.` wildcard (`*.example.com`, which matches
    /// subdomains but not `example.com` itself). Compared case-insensitively.
    pub host: String,
    /// Defaults to the scheme's port (443 or 80).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Only paths starting with this (default: every path).
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// Upper-case HTTP methods; empty means every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// A deny rule: matching requests are refused even if an allow rule matches too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deny: bool,
}

fn default_scheme() -> String {
    "https".to_owned()
}

fn default_path_prefix() -> String {
    "/".to_owned()
}

impl EgressRule {
    /// The port this rule applies to.
    pub fn effective_port(&self) -> u16 {
        self.port
            .unwrap_or(if self.scheme == "http" { 80 } else { 443 })
    }
}

/// One `[[credentials]]` binding: the broker adds the secret to requests to exactly this
/// `scheme://host:port` (nothing else of that host gets it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialBinding {
    /// The secret's name in the vault.
    pub secret: String,
    /// `https` (default) or `http`. The broker injects over plain `http` only to targets the
    /// operator lists in `[egress] plaintext_credentials`; the manifest alone cannot ask for it.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// Host pattern, as in [`EgressRule::host`].
    pub host: String,
    /// Defaults to the scheme's port (443 or 80).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// A header line template, e.g. `Authorization: Bearer {secret}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A query parameter name that receives the secret, e.g. `api_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// An environment variable the sandbox gets, holding a placeholder of the secret's shape that
    /// the broker swaps for the real value only on the bound host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placeholder_env: Option<String>,
}

impl CredentialBinding {
    /// The port this binding injects on.
    pub fn effective_port(&self) -> u16 {
        self.port
            .unwrap_or(if self.scheme == "http" { 80 } else { 443 })
    }

    /// True when a request to `scheme://host:port` gets this binding's secret: scheme and port
    /// equal, host matching the pattern.
    pub fn applies_to(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
            && self.effective_port() == port
            && host_matches(&self.host, host)
    }
}

/// Host patterns: a DNS name or `*.` followed by one.
pub fn validate_host_pattern(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.contains('*')
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{host:?} is not a host name or a `*.` wildcard of one"
        ))
    }
}

/// True if `host` (a request's host name, any case) matches `pattern`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    // Called per rule and per credential on every proxied request: compare without allocating.
    let host = host.trim_end_matches('.').as_bytes();
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            let suffix = suffix.as_bytes();
            host.len() > suffix.len() + 1
                && host[host.len() - suffix.len() - 1] == b'.'
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => host.eq_ignore_ascii_case(pattern.as_bytes()),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// A `[providers.<name>]` from the server config, or `scripted` (in-process).
    pub provider: String,
    /// The provider's model name.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default = "default_max_output_tokens")]
    pub max_output_tokens: u32,
}

fn default_max_output_tokens() -> u32 {
    4096
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Model calls plus tool calls.
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
    /// Input plus output tokens over all model calls.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u64,
    /// Active wall-clock time (time parked on an approval does not count), e.g. `"5m"`.
    #[serde(default = "default_timeout", with = "humantime_duration")]
    pub timeout: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
}

fn default_max_steps() -> u32 {
    100
}
fn default_max_tokens() -> u64 {
    1_000_000
}
fn default_timeout() -> Duration {
    Duration::from_secs(600)
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_steps: default_max_steps(),
            max_tokens: default_max_tokens(),
            timeout: default_timeout(),
            max_cost_usd: None,
        }
    }
}

/// Whether a tool call needs a human's approval before it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    #[default]
    Never,
    Always,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRule {
    #[serde(default)]
    pub approval: Approval,
    /// Overrides the tool's own idempotency declaration (decides re-run after a crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
}

mod humantime_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Secs(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Secs(s) => Ok(Duration::from_secs(s)),
            Repr::Text(t) => humantime::parse_duration(&t).map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {t:?}: {e} (use e.g. \"90s\", \"5m\" or a number of seconds)"
                ))
            }),
        }
    }
}

/// Secret names: letters, digits, `_`, `-` and `.`, starting with a letter, at most 128.
pub fn validate_secret_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid secret name (a letter, then letters, digits, '_', '-' or '.', at most 128)"
        ))
    }
}

/// Agent names: lowercase letters, digits, `-` and `_`, starting with a letter or digit, at most
/// 64 characters. They appear in URLs and folder names.
pub fn validate_agent_name(name: &str) -> Result<(), ManifestError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ManifestError::new(
            "name",
            format!(
                "{name:?} is not a valid agent name (lowercase letters, digits, '-' and '_', at most 64)"
            ),
        ))
    }
}

impl AgentManifest {
    /// Parses `agent.toml` text and checks what can be checked without I/O.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        let m: AgentManifest = toml::from_str(text).map_err(|e| {
            // toml's message names the key and the line; keep it on one line.
            let msg = e.message().trim().to_owned();
            let field = e
                .span()
                .map(|s| field_at(text, s.start))
                .unwrap_or_else(|| "(manifest)".to_owned());
            ManifestError::new(field, msg)
        })?;
        m.validate()?;
        Ok(m)
    }

    /// Checks value ranges and names.
    pub fn validate(&self) -> Result<(), ManifestError> {
        validate_agent_name(&self.name)?;
        if self.model.provider.trim().is_empty() {
            return Err(ManifestError::new("model.provider", "must not be empty"));
        }
        if self.model.name.trim().is_empty() {
            return Err(ManifestError::new("model.name", "must not be empty"));
        }
        if let Some(t) = self.model.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ManifestError::new(
                "model.temperature",
                format!("{t} is out of range 0.0..=2.0"),
            ));
        }
        if let Some(p) = self.model.top_p
            && !(0.0..=1.0).contains(&p)
        {
            return Err(ManifestError::new(
                "model.top_p",
                format!("{p} is out of range 0.0..=1.0"),
            ));
        }
        if self.model.max_output_tokens == 0 {
            return Err(ManifestError::new(
                "model.max_output_tokens",
                "must be at least 1",
            ));
        }
        if self.limits.max_steps == 0 {
            return Err(ManifestError::new("limits.max_steps", "must be at least 1"));
        }
        if self.limits.max_tokens == 0 {
            return Err(ManifestError::new(
                "limits.max_tokens",
                "must be at least 1",
            ));
        }
        if self.limits.timeout.is_zero() {
            return Err(ManifestError::new("limits.timeout", "must be positive"));
        }
        if let Some(c) = self.limits.max_cost_usd
            && !(c.is_finite() && c > 0.0)
        {
            return Err(ManifestError::new(
                "limits.max_cost_usd",
                "must be a positive number",
            ));
        }
        for (i, r) in self.egress.iter().enumerate() {
            let field = |f: &str| format!("egress[{i}].{f}");
            if r.scheme != "https" && r.scheme != "http" {
                return Err(ManifestError::new(
                    field("scheme"),
                    format!("{:?} is not https or http", r.scheme),
                ));
            }
            validate_host_pattern(&r.host).map_err(|m| ManifestError::new(field("host"), m))?;
            if r.port == Some(0) {
                return Err(ManifestError::new(field("port"), "must be 1 to 65535"));
            }
            if !r.path_prefix.starts_with('/') {
                return Err(ManifestError::new(
                    field("path_prefix"),
                    "must start with '/'",
                ));
            }
            if let Some(m) = r
                .methods
                .iter()
                .find(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()))
            {
                return Err(ManifestError::new(
                    field("methods"),
                    format!("{m:?} is not an upper-case HTTP method"),
                ));
            }
        }
        for (i, c) in self.credentials.iter().enumerate() {
            let field = |f: &str| format!("credentials[{i}].{f}");
            validate_secret_name(&c.secret).map_err(|m| ManifestError::new(field("secret"), m))?;
            if c.scheme != "https" && c.scheme != "http" {
                return Err(ManifestError::new(
                    field("scheme"),
                    format!("{:?} is not https or http", c.scheme),
                ));
            }
            validate_host_pattern(&c.host).map_err(|m| ManifestError::new(field("host"), m))?;
            if c.port == Some(0) {
                return Err(ManifestError::new(field("port"), "must be 1 to 65535"));
            }
            match (&c.header, &c.query) {
                (None, None) if c.placeholder_env.is_some() => {
                    // The placeholder is only accepted in the field the binding names: without
                    // one it could go nowhere.
                    return Err(ManifestError::new(
                        field("header"),
                        "a binding with `placeholder_env` must name where the secret goes: set \
                         `header` (e.g. \"Authorization: Bearer {secret}\") or `query`",
                    ));
                }
                (None, None) | (Some(_), Some(_)) => {
                    return Err(ManifestError::new(
                        field("header"),
                        "set exactly one of `header` (e.g. \"Authorization: Bearer {secret}\") or `query`",
                    ));
                }
                (Some(h), None) => {
                    let ok = h.split_once(':').is_some_and(|(name, value)| {
                        !name.trim().is_empty()
                            && name
                                .trim()
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                            && value.contains("{secret}")
                    });
                    if !ok {
                        return Err(ManifestError::new(
                            field("header"),
                            "must look like \"Header-Name: text with {secret}\"",
                        ));
                    }
                }
                (None, Some(q)) => {
                    if q.is_empty()
                        || !q
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    {
                        return Err(ManifestError::new(
                            field("query"),
                            "must be a parameter name",
                        ));
                    }
                }
            }
            if let Some(env) = &c.placeholder_env {
                let ok = !env.is_empty()
                    && env
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                    && !env.as_bytes()[0].is_ascii_digit();
                if !ok {
                    return Err(ManifestError::new(
                        field("placeholder_env"),
                        "must be an upper-case environment variable name",
                    ));
                }
            }
        }
        for (field, schema) in [
            ("input_schema", &self.input_schema),
            ("output_schema", &self.output_schema),
        ] {
            if let Some(s) = schema
                && !(s.is_object() || s.is_boolean())
            {
                return Err(ManifestError::new(
                    field,
                    "a JSON Schema must be an object or a boolean",
                ));
            }
        }
        Ok(())
    }
}

/// Best-effort dotted path of the TOML key at byte offset `pos`: the enclosing `[table]` plus
/// the key on that line.
fn field_at(text: &str, pos: usize) -> String {
    let before = &text[..pos.min(text.len())];
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[line_start..]
        .find('\n')
        .map(|i| line_start + i)
        .unwrap_or(text.len());
    let line = text[line_start..line_end].trim();
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let key = if line.starts_with('[') {
        None
    } else {
        line.split('=').next().map(|k| k.trim().to_owned())
    };
    match (table, key) {
        (Some(t), Some(k)) if !k.is_empty() => format!("{t}.{k}"),
        (Some(t), _) => t,
        (None, Some(k)) if !k.is_empty() => k,
        _ => "(manifest)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "notes"
version = "1.2.0"
description = "writes notes"

[model]
provider = "scripted"
name = "demo"
temperature = 0.2

[limits]
max_steps = 20
timeout = "2m"

[tools.write_file]
approval = "always"

[tools.read_file]
"#;

    #[test]
    fn parses_a_good_manifest() {
        let m = AgentManifest::from_toml(GOOD).unwrap();
        assert_eq!(m.name, "notes");
        assert_eq!(m.limits.max_steps, 20);
        assert_eq!(m.limits.timeout, Duration::from_secs(120));
        assert_eq!(m.limits.max_tokens, 1_000_000);
        assert_eq!(m.tools["write_file"].approval, Approval::Always);
        assert_eq!(m.tools["read_file"].approval, Approval::Never);
    }

    #[test]
    fn names_the_field_of_a_type_error() {
        let bad = GOOD.replace("max_steps = 20", "max_steps = \"many\"");
        let e = AgentManifest::from_toml(&bad).unwrap_err();
        assert_eq!(e.field, "limits.max_steps", "{e}");
    }

    #[test]
    fn names_the_field_of_a_range_error() {
        let bad = GOOD.replace("max_steps = 20", "max_steps = 0");
        let e = AgentManifest::from_toml(&bad).unwrap_err();
        assert_eq!(e.field, "limits.max_steps");
        let bad = GOOD.replace("version = \"1.2.0\"", "version = \"one\"");
        let e = AgentManifest::from_toml(&bad).unwrap_err();
        assert_eq!(e.field, "version", "{e}");
        let bad = GOOD.replace("approval = \"always\"", "approval = \"sometimes\"");
        let e = AgentManifest::from_toml(&bad).unwrap_err();
        assert_eq!(e.field, "tools.write_file.approval", "{e}");
        let bad = GOOD.replace("name = \"notes\"", "name = \"Bad Name\"");
        assert_eq!(AgentManifest::from_toml(&bad).unwrap_err().field, "name");
        let bad = GOOD.replace("timeout = \"2m\"", "timeout = \"soon\"");
        assert_eq!(
            AgentManifest::from_toml(&bad).unwrap_err().field,
            "limits.timeout"
        );
    }

    #[test]
    fn parses_and_checks_egress_rules_and_credentials() {
        let ok = format!(
            "{GOOD}\n[[egress]]\nhost = \"*.example.com\"\nmethods = [\"GET\"]\n\
             [[credentials]]\nsecret = \"gh_token\"\nhost = \"api.github.com\"\n\
             header = \"Authorization: Bearer {{secret}}\"\nplaceholder_env = \"GITHUB_TOKEN\"\n"
        );
        let m = AgentManifest::from_toml(&ok).unwrap();
        assert_eq!(m.egress[0].scheme, "https");
        assert_eq!(m.egress[0].effective_port(), 443);
        assert_eq!(m.egress[0].path_prefix, "/");
        assert_eq!(m.credentials[0].secret, "gh_token");
        for (bad, field) in [
            ("host = \"*.example.com\"", "egress[0].host"),
            ("methods = [\"GET\"]", "egress[0].methods"),
            (
                "header = \"Authorization: Bearer {secret}\"",
                "credentials[0].header",
            ),
            ("secret = \"gh_token\"", "credentials[0].secret"),
        ] {
            let replacement = match field {
                "egress[0].host" => "host = \"ex*ample.com\"",
                "egress[0].methods" => "methods = [\"get\"]",
                "credentials[0].header" => "header = \"Authorization Bearer\"",
                _ => "secret = \"9lives\"",
            };
            let e = AgentManifest::from_toml(&ok.replace(bad, replacement)).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn host_patterns_match_subdomains_only() {
        assert!(host_matches("*.example.com", "api.EXAMPLE.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "evilexample.com"));
        assert!(host_matches("api.github.com", "API.github.com."));
        assert!(!host_matches("api.github.com", "api.github.com.evil.io"));
    }

    #[test]
    fn a_credential_binding_names_scheme_host_and_port() {
        let base = format!(
            "{GOOD}\n[[credentials]]\nsecret = \"k\"\nhost = \"api.x.com\"\nquery = \"key\"\n"
        );
        let m = AgentManifest::from_toml(&base).unwrap();
        let c = &m.credentials[0];
        assert_eq!((c.scheme.as_str(), c.effective_port()), ("https", 443));
        assert!(c.applies_to("https", "API.x.com", 443));
        assert!(!c.applies_to("http", "api.x.com", 443));
        assert!(!c.applies_to("https", "api.x.com", 8443));
        assert!(!c.applies_to("https", "x.com", 443));
        let http = AgentManifest::from_toml(&format!("{base}scheme = \"http\"\n")).unwrap();
        assert_eq!(http.credentials[0].effective_port(), 80);
        let port = AgentManifest::from_toml(&format!("{base}port = 8443\n")).unwrap();
        assert!(port.credentials[0].applies_to("https", "api.x.com", 8443));
        for (extra, field) in [
            ("scheme = \"ftp\"\n", "credentials[0].scheme"),
            ("port = 0\n", "credentials[0].port"),
        ] {
            let e = AgentManifest::from_toml(&format!("{base}{extra}")).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn a_placeholder_without_a_field_to_go_in_is_refused() {
        let bad = format!(
            "{GOOD}\n[[credentials]]\nsecret = \"k\"\nhost = \"api.x.com\"\n\
             placeholder_env = \"API_KEY\"\n"
        );
        let e = AgentManifest::from_toml(&bad).unwrap_err();
        assert_eq!(e.field, "credentials[0].header", "{e}");
        assert!(e.message.contains("placeholder_env"), "{e}");
    }

    #[test]
    fn rejects_unknown_fields() {
        let bad = GOOD.replace("[limits]", "[limits]\nmax_stepz = 3");
        let e = AgentManifest::from_toml(&bad).unwrap_err();
        assert!(e.to_string().contains("max_stepz"), "{e}");
    }
}
