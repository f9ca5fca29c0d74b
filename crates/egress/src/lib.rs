//! The egress broker: the only way out of a run's sandbox.
//!
//! Owns the allow-list check (scheme, host, port, path prefix, method; deny wins), DNS
//! resolution with the private-address policy and IP pinning, TLS interception for hosts that
//! need it (credential binding, or path/method rules), the TLS server name check inside `CONNECT`,
//! credential injection into the one field a binding names (placeholders are checked, never swapped),
//! redaction of echoed secrets, refusal of requests that carry one of the workspace's secrets
//! (`secret_in_request`), and one [`EgressRecord`](paddock_types::event::EgressRecord) per
//! request in the run's log.
//!
//! Must not store secrets: the caller resolves them from the vault per run and passes them in a
//! [`RunEgress`], which is dropped with the run. Must not decide tool policy (that is the
//! harness's and `policy`'s job); it only enforces the manifest's `[[egress]]` rules.
//!
//! Entry points: [`Broker::serve`] (the HTTP/1.1 forward proxy the sandbox uses through
//! `HTTP_PROXY`/`HTTPS_PROXY`) and [`Broker::request`] (a request the broker makes itself for
//! the `http_request` tool).

mod addr;
mod bench;
mod body;
mod broker;
mod ca;
mod credentials;
mod error;
mod policy;
mod proxy;
mod redact;
mod request;
mod run;
mod sni;

pub use addr::is_refused_address;
pub use bench::{
    BENCH_BOUND, BENCH_WORKSPACE_SECRETS, BenchReport, MatcherBench, bench_matcher, bench_overhead,
};
pub use broker::{Broker, BrokerConfig, SCAN_WHOLE_BYTES};
pub use ca::{CaPem, generate_ca};
pub use credentials::{ResolvedCredential, placeholder_for};
pub use error::{DenyReason, EgressError, UpstreamFailure};
pub use proxy::{DENIED_HEADER, ERROR_HEADER, MAX_CONNECTIONS_PER_RUN};
pub use request::{MAX_REDIRECTS, OutboundRequest, OutboundResponse};
pub use run::RunEgress;

/// Fills `buf` from the system CSPRNG (through ring, the workspace's crypto provider).
pub(crate) fn random_fill(buf: &mut [u8]) -> Result<(), EgressError> {
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(buf)
        .map_err(|_| EgressError::Config("system random source failed".into()))
}

/// Like [`random_fill`], for callers that cannot fail. If the system source ever fails, falls
/// back to SipHash under std's per-process random keys, which is still unpredictable from the
/// sandbox (placeholders only need to be unguessable, not to protect key material).
pub(crate) fn random_fill_infallible(buf: &mut [u8]) {
    if random_fill(buf).is_ok() {
        return;
    }
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let state = std::collections::hash_map::RandomState::new();
    for chunk in buf.chunks_mut(8) {
        let mut h = state.build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let bytes = h.finish().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}
