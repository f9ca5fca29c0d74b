//! Error and denial types. Denial reasons and upstream failure reasons are stable,
//! machine-readable tokens: they travel in the `paddock-egress-denied` / `paddock-egress-error`
//! headers, in [`paddock_types::event::EgressRecord::reason`] and in tool results.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why the broker refused a request. `as_str` is the stable token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// No allow rule names this host.
    NoRule,
    /// A deny rule matched (deny wins over allow).
    DeniedByRule,
    /// Rules name the host, but not with this scheme.
    SchemeNotAllowed,
    /// Rules name the host and scheme, but not this port.
    PortNotAllowed,
    /// Rules name the host, but no allowed path prefix matches.
    PathNotAllowed,
    /// The path has a `..` segment (raw or percent-encoded) that could escape a path prefix.
    PathTraversal,
    /// Rules allow the path, but not this method.
    MethodNotAllowed,
    /// The host resolved to (or is) a loopback, private, link-local, metadata or otherwise
    /// non-public address that `allow_private` does not list.
    PrivateAddress,
    /// The host name did not resolve.
    DnsFailure,
    /// The request could not be understood (origin-form request to the proxy, bad authority,
    /// unparsable URL, unsupported scheme).
    BadRequest,
    /// `request()` met more redirects than it follows.
    TooManyRedirects,
    /// A credential's placeholder is somewhere other than the header or query parameter its
    /// binding names (another header, the path, another parameter). Put it in the named field,
    /// or leave it out: the broker sets that field itself.
    PlaceholderMisplaced,
    /// The request would get a credential over plain `http`, and the operator did not list the
    /// target in `[egress] plaintext_credentials`. Use https, or ask the operator.
    PlaintextCredential,
    /// The TLS ClientHello inside a `CONNECT` names another server (or none, for a host name)
    /// than the `CONNECT` target.
    SniMismatch,
    /// The bytes inside a `CONNECT` tunnel are not a TLS ClientHello (or not a complete one
    /// within the size and time limits).
    NotTls,
    /// The request line, a header or the body carries one of the workspace's secrets (in any
    /// form the redactor knows). Sending it again will be refused again; use the credential
    /// binding (the placeholder) instead of the value.
    SecretInRequest,
    /// The run could not record the request before it would leave (the run has ended, or it
    /// reached its cap of forwarded requests), so it is not forwarded.
    NotRecorded,
    /// The run's secrets could not be compiled into the redactor, so nothing an upstream sends
    /// back could be redacted: the run sends nothing. Check the run's secret values (the
    /// server log names the error) and start the run again.
    RedactorUnavailable,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::NoRule => "no_rule",
            DenyReason::DeniedByRule => "denied_by_rule",
            DenyReason::SchemeNotAllowed => "scheme_not_allowed",
            DenyReason::PortNotAllowed => "port_not_allowed",
            DenyReason::PathNotAllowed => "path_not_allowed",
            DenyReason::PathTraversal => "path_traversal",
            DenyReason::MethodNotAllowed => "method_not_allowed",
            DenyReason::PrivateAddress => "private_address",
            DenyReason::DnsFailure => "dns_failure",
            DenyReason::BadRequest => "bad_request",
            DenyReason::TooManyRedirects => "too_many_redirects",
            DenyReason::PlaceholderMisplaced => "placeholder_misplaced",
            DenyReason::PlaintextCredential => "plaintext_credential",
            DenyReason::SniMismatch => "sni_mismatch",
            DenyReason::NotTls => "not_tls",
            DenyReason::SecretInRequest => "secret_in_request",
            DenyReason::NotRecorded => "not_recorded",
            DenyReason::RedactorUnavailable => "redactor_unavailable",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an allowed request did not get an answer from the upstream. `as_str` is the stable token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamFailure {
    /// TCP connect refused or failed on every resolved address.
    ConnectFailed,
    /// Connecting (TCP + TLS) took longer than `connect_timeout`.
    ConnectTimeout,
    /// The upstream's TLS handshake or certificate verification failed.
    TlsFailed,
    /// The upstream broke the HTTP exchange (closed early, malformed response).
    ProtocolError,
    /// The whole exchange took longer than `request_timeout` (`request()` only).
    Timeout,
    /// A resolved secret cannot be put in a header (e.g. it contains a line break).
    CredentialInvalid,
    /// The client sent its request body too slowly: a small body is read whole (to scan it)
    /// before it is forwarded, within `body_read_timeout`. Nothing was forwarded; send the body
    /// without pausing, or retry.
    BodyTimeout,
}

impl UpstreamFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::ConnectFailed => "connect_failed",
            UpstreamFailure::ConnectTimeout => "connect_timeout",
            UpstreamFailure::TlsFailed => "tls_failed",
            UpstreamFailure::ProtocolError => "protocol_error",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::CredentialInvalid => "credential_invalid",
            UpstreamFailure::BodyTimeout => "body_timeout",
        }
    }
}

impl fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The run's policy refused the request. Report `reason` to the model as the tool result;
    /// retrying the same request will be refused again. Already recorded in the run log.
    #[error("egress denied: {reason}")]
    Denied { reason: DenyReason },
    /// The request was allowed but the upstream could not be reached or broke the exchange.
    /// May be retried (it is a network fault, not a policy decision). Already recorded.
    #[error("upstream {reason}: {detail}")]
    Upstream {
        reason: UpstreamFailure,
        detail: String,
    },
    /// The broker configuration is unusable (bad CA, bad root PEM, bad `allow_private` entry).
    /// Fix the configuration; the broker cannot start.
    #[error("invalid egress configuration: {0}")]
    Config(String),
    /// Local I/O failed (e.g. binding a listener in `bench_overhead`).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl EgressError {
    /// The denial reason, when this is a policy refusal.
    pub fn deny_reason(&self) -> Option<DenyReason> {
        match self {
            EgressError::Denied { reason } => Some(*reason),
            _ => None,
        }
    }
}
