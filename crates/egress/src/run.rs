//! Per-run context: the run's policy and resolved credentials, and the log of what happened.

use crate::credentials::ResolvedCredential;
use crate::error::DenyReason;
use crate::redact::Redactor;
use paddock_types::event::{EgressDecision, EgressRecord, EgressSink};
use paddock_types::manifest::EgressRule;
use paddock_types::redact::SecretMatcher;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Most records kept by a run context without a sink (for [`RunEgress::take_log`]); later
/// ones are counted and dropped, so a sandbox cannot grow the log without bound.
pub const MAX_LOG_RECORDS: usize = 1_000;

/// The egress context of one run. Every connection and `request()` made for the run is
/// attributed to it. Holds the run's secrets in memory for the run's lifetime only; drop it when
/// the run ends.
pub struct RunEgress {
    pub run_id: String,
    rules: Vec<EgressRule>,
    credentials: Vec<ResolvedCredential>,
    redactor: Option<Redactor>,
    /// Why the bound secrets could not be compiled into a redactor: then every request of the
    /// run is refused (`redactor_unavailable`), since nothing echoed back could be redacted.
    broken: Option<String>,
    /// The workspace's secrets, looked for in everything the run sends out.
    scanner: Option<SecretMatcher>,
    sink: Option<Arc<dyn EgressSink>>,
    recorder: Arc<Recorder>,
}

impl RunEgress {
    pub fn new(
        run_id: impl Into<String>,
        rules: Vec<EgressRule>,
        credentials: Vec<ResolvedCredential>,
    ) -> Self {
        let run_id = run_id.into();
        let (redactor, broken) = match Redactor::new(&credentials) {
            Ok(r) => (r, None),
            Err(e) => {
                tracing::error!(run_id = %run_id, error = %e, "egress redactor cannot be built; the run's requests are refused");
                (None, Some(e.to_string()))
            }
        };
        let mut ctx = Self {
            recorder: Arc::new(Recorder::new(run_id.clone(), None, Vec::new())),
            run_id,
            rules,
            credentials,
            redactor,
            broken,
            scanner: None,
            sink: None,
        };
        ctx.rebuild_recorder();
        ctx
    }

    /// The recorder scrubs the run's secrets (bound and workspace) from every record; the
    /// builder calls may come in any order, so it is made again after each.
    fn rebuild_recorder(&mut self) {
        let secrets = self
            .scanner
            .iter()
            .chain(self.redactor.as_ref().map(Redactor::matcher))
            .cloned()
            .collect();
        self.recorder = Arc::new(Recorder::new(
            self.run_id.clone(),
            self.sink.clone(),
            secrets,
        ));
    }

    /// Refuses (`secret_in_request`) every request whose request line, header values or body
    /// carries one of these secrets in any form the matcher knows: hand it the whole
    /// workspace's secrets (e.g. the vault redactor's matcher), not only the bound ones. The
    /// scan runs before injection, so injected credentials never trip it; placeholders are
    /// random strings and do not either.
    pub fn with_secret_scan(mut self, matcher: SecretMatcher) -> Self {
        self.scanner = (!matcher.is_empty()).then_some(matcher);
        self.rebuild_recorder();
        self
    }

    /// Sends every record to `sink` instead of the log: an allowed request is forwarded only
    /// once [`EgressSink::forwarding`] has recorded it, and every outcome goes to
    /// [`EgressSink::finished`] (the sink outlives the tool call, so records made while the
    /// call is being torn down still arrive).
    pub fn with_sink(mut self, sink: Arc<dyn EgressSink>) -> Self {
        self.sink = Some(sink);
        self.rebuild_recorder();
        self
    }

    /// Takes the records made so far (allowed and denied), oldest first, when there is no sink
    /// (at most [`MAX_LOG_RECORDS`] between takes). A streamed response or an open tunnel is
    /// recorded when it ends (its byte counts are known only then).
    pub fn take_log(&self) -> Vec<EgressRecord> {
        self.recorder.take()
    }

    /// `(environment variable, placeholder)` pairs to put in the sandbox's environment.
    pub fn placeholders(&self) -> Vec<(String, String)> {
        self.credentials
            .iter()
            .filter_map(|c| Some((c.binding.placeholder_env.clone()?, c.placeholder.clone()?)))
            .collect()
    }

    pub fn rules(&self) -> &[EgressRule] {
        &self.rules
    }

    pub(crate) fn credentials(&self) -> &[ResolvedCredential] {
        &self.credentials
    }

    pub(crate) fn redactor(&self) -> Option<&Redactor> {
        self.redactor.as_ref()
    }

    /// Set when the run's requests must all be refused (see [`DenyReason::RedactorUnavailable`]).
    pub(crate) fn refuse_all(&self) -> Option<DenyReason> {
        self.broken
            .as_ref()
            .map(|_| DenyReason::RedactorUnavailable)
    }

    pub(crate) fn scanner(&self) -> Option<&SecretMatcher> {
        self.scanner.as_ref()
    }

    pub(crate) fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }
}

impl fmt::Debug for RunEgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunEgress")
            .field("run_id", &self.run_id)
            .field("rules", &self.rules)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// Where records go: the sink (or else the run's bounded log), and `tracing`. Every record is
/// scrubbed of the run's secrets and then bounded ([`EgressRecord::bound`]) before anything
/// keeps or logs it: the sandbox writes the host, path and method, and the journal, the audit
/// chain and the server log must never hold a secret (the audit chain cannot be edited later).
pub(crate) struct Recorder {
    run_id: String,
    log: Mutex<Vec<EgressRecord>>,
    /// Records dropped because the log was full.
    dropped: AtomicU64,
    sink: Option<Arc<dyn EgressSink>>,
    /// The workspace's and the bound secrets' matchers.
    secrets: Vec<SecretMatcher>,
}

/// What a `secret_in_request` denial records as its path: the scan saw a secret in the request,
/// and a cut or re-encoded piece of it in the path might escape the redactor.
pub(crate) const REDACTED_PATH: &str = "[REDACTED]";

impl Recorder {
    fn new(run_id: String, sink: Option<Arc<dyn EgressSink>>, secrets: Vec<SecretMatcher>) -> Self {
        Self {
            run_id,
            log: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
            sink,
            secrets,
        }
    }

    /// `s` with the run's secrets replaced (before any cut: a cut could leave a piece too short
    /// to be recognised).
    pub(crate) fn scrub(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for m in &self.secrets {
            if let Some(r) = m.redact(out.as_bytes()) {
                out = String::from_utf8_lossy(&r).into_owned();
            }
        }
        out
    }

    /// Scrubs and bounds every free-text field of a record.
    fn seal(&self, rec: &mut EgressRecord) {
        if rec.reason == DenyReason::SecretInRequest.as_str() && !rec.path.is_empty() {
            rec.path = REDACTED_PATH.to_owned();
        }
        for field in [
            &mut rec.method,
            &mut rec.scheme,
            &mut rec.host,
            &mut rec.path,
            &mut rec.reason,
        ] {
            if !self.secrets.is_empty() {
                *field = self.scrub(field);
            }
        }
        if let Some(c) = &mut rec.credential {
            *c = self.scrub(c);
        }
        rec.bound();
    }

    /// Records an allowed request before it is forwarded. `Ok(None)` when there is no sink to
    /// ask (the record is logged when it finishes); `Err` means it must not be forwarded.
    pub(crate) async fn forwarding(&self, rec: &EgressRecord) -> Result<Option<u64>, String> {
        let Some(sink) = &self.sink else {
            return Ok(None);
        };
        let mut rec = rec.clone();
        self.seal(&mut rec);
        sink.forwarding(rec).await.map(Some)
    }

    pub(crate) fn push(&self, rec: EgressRecord) {
        self.finish(None, rec);
    }

    fn finish(&self, started: Option<u64>, mut rec: EgressRecord) {
        self.seal(&mut rec);
        // Structured fields only: the path never carries the query (it may hold a secret), and
        // the credential is a name.
        tracing::info!(
            run_id = %self.run_id,
            method = %rec.method,
            scheme = %rec.scheme,
            host = %rec.host,
            port = rec.port,
            path = %rec.path,
            status = rec.status,
            bytes_sent = rec.bytes_sent,
            bytes_received = rec.bytes_received,
            decision = ?rec.decision,
            reason = %rec.reason,
            credential = rec.credential.as_deref(),
            "egress request"
        );
        if let Some(sink) = &self.sink {
            sink.finished(started, rec);
            return;
        }
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() < MAX_LOG_RECORDS {
            log.push(rec);
        } else if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(run_id = %self.run_id, max = MAX_LOG_RECORDS, "egress log full; dropping records");
        }
    }

    fn take(&self) -> Vec<EgressRecord> {
        match self.log.lock() {
            Ok(mut log) => std::mem::take(&mut *log),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

/// A record that is pushed when the exchange ends, however it ends (completed, failed, or the
/// future/body dropped because the client went away or the run shut down).
pub(crate) struct RecordGuard {
    recorder: Arc<Recorder>,
    record: Option<EgressRecord>,
    /// The sink's id for the record of this request made before it was forwarded.
    started: Option<u64>,
    pub(crate) sent: Arc<AtomicU64>,
    pub(crate) received: Arc<AtomicU64>,
}

impl RecordGuard {
    pub(crate) fn new(recorder: Arc<Recorder>, record: EgressRecord, sent: Arc<AtomicU64>) -> Self {
        Self {
            recorder,
            record: Some(record),
            started: None,
            sent,
            received: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records the request with the sink before it is forwarded; `false` means it must not be
    /// forwarded (the guard then records a `not_recorded` denial).
    pub(crate) async fn forwarding(&mut self) -> bool {
        let Some(rec) = &self.record else {
            return false;
        };
        match self.recorder.forwarding(rec).await {
            Ok(id) => {
                self.started = id;
                true
            }
            Err(e) => {
                tracing::warn!(run_id = %self.recorder.run_id, error = %e, "egress request not recorded; not forwarded");
                self.set_reason(crate::error::DenyReason::NotRecorded.as_str().to_owned());
                self.set_denied();
                false
            }
        }
    }

    pub(crate) fn set_reason(&mut self, reason: String) {
        if let Some(r) = &mut self.record {
            r.reason = reason;
        }
    }

    pub(crate) fn set_denied(&mut self) {
        if let Some(r) = &mut self.record {
            r.decision = EgressDecision::Denied;
        }
    }

    pub(crate) fn set_status(&mut self, status: u16) {
        if let Some(r) = &mut self.record {
            r.status = Some(status);
        }
    }

    pub(crate) fn set_credential(&mut self, credential: Option<String>) {
        if let Some(r) = &mut self.record {
            r.credential = credential;
        }
    }

    pub(crate) fn add_received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        if let Some(mut rec) = self.record.take() {
            rec.bytes_sent = self.sent.load(Ordering::Relaxed);
            rec.bytes_received = self.received.load(Ordering::Relaxed);
            self.recorder.finish(self.started, rec);
        }
    }
}

/// A record for a request that was decided without an exchange (denials).
pub(crate) fn denied_record(
    method: &str,
    scheme: &str,
    host: &str,
    port: u16,
    path: &str,
    reason: &str,
) -> EgressRecord {
    EgressRecord {
        method: method.to_owned(),
        scheme: scheme.to_owned(),
        host: host.to_owned(),
        port,
        path: path.to_owned(),
        status: None,
        bytes_sent: 0,
        bytes_received: 0,
        decision: EgressDecision::Denied,
        reason: reason.to_owned(),
        credential: None,
        host_len: None,
        path_len: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::broker::{Broker, BrokerConfig};
    use crate::ca::generate_ca;
    use crate::error::EgressError;
    use crate::request::OutboundRequest;

    #[tokio::test]
    async fn a_run_whose_redactor_could_not_be_built_sends_nothing() {
        // A build failure cannot be provoked with real values (the vault builds the same
        // matcher first), so the context is put in the state such a failure leaves.
        let rule = EgressRule {
            scheme: "http".into(),
            host: "127.0.0.1".into(),
            port: Some(9),
            path_prefix: "/".into(),
            methods: Vec::new(),
            deny: false,
        };
        let mut ctx = RunEgress::new("run_broken", vec![rule], Vec::new());
        ctx.broken = Some("too many patterns".into());
        let broker = Broker::new(BrokerConfig::new(generate_ca("test").unwrap())).unwrap();
        let req = OutboundRequest {
            method: http::Method::GET,
            url: "http://127.0.0.1:9/x".into(),
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::new(),
        };
        let err = broker.request(&ctx, req).await.unwrap_err();
        assert!(
            matches!(
                err,
                EgressError::Denied {
                    reason: DenyReason::RedactorUnavailable
                }
            ),
            "{err}"
        );
        let log = ctx.take_log();
        assert_eq!(log.len(), 1, "{log:#?}");
        assert_eq!(log[0].reason, "redactor_unavailable");
    }
}
