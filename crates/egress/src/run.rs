//! Per-run context: the run's policy and resolved credentials, and the log of what happened.

use crate::credentials::ResolvedCredential;
use crate::redact::Redactor;
use paddock_types::event::{EgressDecision, EgressRecord};
use paddock_types::manifest::EgressRule;
use paddock_types::redact::SecretMatcher;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::UnboundedSender;

/// The egress context of one run. Every connection and `request()` made for the run is
/// attributed to it. Holds the run's secrets in memory for the run's lifetime only; drop it when
/// the run ends.
pub struct RunEgress {
    pub run_id: String,
    rules: Vec<EgressRule>,
    credentials: Vec<ResolvedCredential>,
    redactor: Option<Redactor>,
    /// The workspace's secrets, looked for in everything the run sends out.
    scanner: Option<SecretMatcher>,
    recorder: Arc<Recorder>,
}

impl RunEgress {
    pub fn new(
        run_id: impl Into<String>,
        rules: Vec<EgressRule>,
        credentials: Vec<ResolvedCredential>,
    ) -> Self {
        let run_id = run_id.into();
        let redactor = Redactor::new(&credentials);
        Self {
            recorder: Arc::new(Recorder::new(run_id.clone(), None)),
            run_id,
            rules,
            credentials,
            redactor,
            scanner: None,
        }
    }

    /// Refuses (`secret_in_request`) every request whose request line, header values or body
    /// carries one of these secrets in any form the matcher knows: hand it the whole
    /// workspace's secrets (e.g. the vault redactor's matcher), not only the bound ones. The
    /// scan runs before injection, so injected credentials never trip it; placeholders are
    /// random strings and do not either.
    pub fn with_secret_scan(mut self, matcher: SecretMatcher) -> Self {
        self.scanner = (!matcher.is_empty()).then_some(matcher);
        self
    }

    /// Also sends every record to `sink` as it is made (e.g. to journal `egress_request` events
    /// live). Records are still kept for [`RunEgress::take_log`].
    pub fn with_sink(mut self, sink: UnboundedSender<EgressRecord>) -> Self {
        self.recorder = Arc::new(Recorder::new(self.run_id.clone(), Some(sink)));
        self
    }

    /// Takes the records made so far (allowed and denied), oldest first. A streamed response or
    /// an open tunnel is recorded when it ends (its byte counts are known only then).
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

/// Where records go: the run's log, the optional sink, and `tracing`.
pub(crate) struct Recorder {
    run_id: String,
    log: Mutex<Vec<EgressRecord>>,
    sink: Option<UnboundedSender<EgressRecord>>,
}

impl Recorder {
    fn new(run_id: String, sink: Option<UnboundedSender<EgressRecord>>) -> Self {
        Self {
            run_id,
            log: Mutex::new(Vec::new()),
            sink,
        }
    }

    pub(crate) fn push(&self, rec: EgressRecord) {
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
            // A closed sink means the consumer is gone; the log below still has the record.
            let _ = sink.send(rec.clone());
        }
        match self.log.lock() {
            Ok(mut log) => log.push(rec),
            Err(poisoned) => poisoned.into_inner().push(rec),
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
    pub(crate) sent: Arc<AtomicU64>,
    pub(crate) received: Arc<AtomicU64>,
}

impl RecordGuard {
    pub(crate) fn new(recorder: Arc<Recorder>, record: EgressRecord, sent: Arc<AtomicU64>) -> Self {
        Self {
            recorder,
            record: Some(record),
            sent,
            received: Arc::new(AtomicU64::new(0)),
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
            self.recorder.push(rec);
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
    }
}
