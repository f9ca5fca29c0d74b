//! Journal events. A run *is* its journal: an append-only list of these, numbered by a per-run
//! sequence (from 1) that SSE uses as the event id. Run state is a pure fold over them.

use crate::ApprovalId;
use crate::message::{ModelResponse, ToolCall};
use crate::run::RunError;
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn unknown_tier() -> String {
    "unknown".to_owned()
}

/// A journaled event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Per-run sequence number, from 1, without gaps.
    pub seq: u64,
    /// When it was appended.
    #[serde(with = "crate::time::serde_rfc3339")]
    pub at: Millis,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// An event about to be appended: the store assigns `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub at: Millis,
    pub kind: EventKind,
}

impl NewEvent {
    pub fn now(kind: EventKind) -> Self {
        Self {
            at: crate::time::now_ms(),
            kind,
        }
    }
}

/// How a tool call was judged by the static (manifest) check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyDecision {
    Allow,
    ApprovalRequired,
    Deny,
}

/// A human's answer to an approval request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalDecision {
    Approve,
    Deny,
}

/// Whether the egress broker let a request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressDecision {
    Allowed,
    Denied,
}

/// One request a tool made through the egress broker (allowed or not). Never holds a secret: the
/// broker records which credential it injected by name only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRecord {
    pub method: String,
    pub scheme: String,
    pub host: String,
    pub port: u16,
    pub path: String,
    /// The upstream's status (absent when denied or when the upstream could not be reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub decision: EgressDecision,
    /// Why: the rule that allowed it, or the machine-readable denial reason.
    pub reason: String,
    /// Name of the secret injected, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The host's length in bytes when `host` was cut to [`EgressRecord::MAX_HOST`] (it then
    /// ends with [`EgressRecord::CUT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_len: Option<u64>,
    /// The path's length in bytes when `path` was cut to [`EgressRecord::MAX_PATH`] (it then
    /// ends with [`EgressRecord::CUT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_len: Option<u64>,
}

impl EgressRecord {
    /// Longest host kept in a record (a DNS name is at most 253 bytes).
    pub const MAX_HOST: usize = 256;
    /// Longest path kept in a record: a sandbox picks its paths, and a record must stay small
    /// however long they are.
    pub const MAX_PATH: usize = 512;
    /// Longest method, scheme or reason kept (they have no length field).
    pub const MAX_WORD: usize = 64;
    /// Marks a cut field.
    pub const CUT: &'static str = "…[cut]";

    /// Cuts every field the sandbox controls to its bound, keeping the original length of the
    /// host and path, so that one record stays under about 1 KiB however it was made.
    pub fn bound(&mut self) {
        if let Some(len) = cut(&mut self.host, Self::MAX_HOST) {
            self.host_len = Some(len);
        }
        if let Some(len) = cut(&mut self.path, Self::MAX_PATH) {
            self.path_len = Some(len);
        }
        cut(&mut self.method, Self::MAX_WORD);
        cut(&mut self.scheme, Self::MAX_WORD);
        cut(&mut self.reason, Self::MAX_PATH);
        if let Some(c) = &mut self.credential {
            cut(c, Self::MAX_HOST);
        }
    }
}

/// Cuts `s` to at most `max` bytes (on a character boundary, marker included); the original
/// length when it was cut.
fn cut(s: &mut String, max: usize) -> Option<u64> {
    if s.len() <= max {
        return None;
    }
    let len = s.len() as u64;
    let mut at = max.saturating_sub(EgressRecord::CUT.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s.truncate(at);
    s.push_str(EgressRecord::CUT);
    Some(len)
}

/// How many egress records of one tool call were not journaled one by one (over the caps), by
/// host and decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressCount {
    /// The host (bounded like a record's), or `*` for every host past the distinct-host cap.
    pub host: String,
    pub decision: EgressDecision,
    pub count: u64,
}

/// Where the egress broker sends a tool call's records: owned by the engine, so the records
/// outlive the tool call however it ends (finished, timed out, cancelled, its sandbox crashed).
pub trait EgressSink: Send + Sync {
    /// Durably records an allowed request about to be forwarded, before it leaves; the request
    /// must not leave unless this answers `Ok`, with an id to pass to [`EgressSink::finished`].
    fn forwarding(
        &self,
        record: EgressRecord,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + '_>>;

    /// Takes a finished record: a denial (`started` is `None`), or the outcome of a request
    /// that [`EgressSink::forwarding`] recorded. Must not block, and must hold a bounded amount
    /// however many records arrive.
    fn finished(&self, started: Option<u64>, record: EgressRecord);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The run was accepted. Carries everything needed to rebuild the conversation's start.
    RunCreated {
        agent: String,
        agent_version: String,
        input: Value,
        #[serde(default)]
        metadata: Value,
        system_prompt: String,
        user_message: String,
        /// The sandbox tier its tools run in (`process`, or `none` when isolation is off).
        #[serde(default = "unknown_tier")]
        sandbox: String,
        /// The end-user the run acts for, when an API key sent `Paddock-End-User`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        end_user: Option<crate::EndUserId>,
        /// Who started it: an API key id (`key_…`) or a member id (`usr_…`); absent for runs
        /// started by the system (local runs, triggers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        created_by: Option<String>,
    },
    /// A worker took the run (first start, after an approval, or recovering after a crash).
    RunStarted {
        worker: String,
        /// True when the worker found work a previous worker left unfinished.
        recovered: bool,
    },
    /// A model call is about to be made. `reissue` marks a call repeated after a crash.
    ModelRequested {
        call_index: u32,
        provider: String,
        model: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reissue: bool,
    },
    ModelResponded {
        call_index: u32,
        response: ModelResponse,
        cost_usd: f64,
        /// Transport retries inside this call (429, 5xx, timeouts, cut streams).
        retries: u32,
        latency_ms: u64,
    },
    PolicyDecided {
        call_id: String,
        tool: String,
        decision: PolicyDecision,
        reason: String,
    },
    ApprovalRequested {
        approval_id: ApprovalId,
        call: ToolCall,
    },
    ApprovalDecided {
        approval_id: ApprovalId,
        call_id: String,
        decision: ApprovalDecision,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    ToolCallStarted {
        call_id: String,
        tool: String,
        idempotent: bool,
        /// True when this is a re-run of an idempotent call interrupted by a crash.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rerun: bool,
    },
    ToolCallCompleted {
        call_id: String,
        tool: String,
        output: String,
        is_error: bool,
        duration_ms: u64,
    },
    /// An allowed request the egress broker is about to forward, journaled before it leaves so
    /// that a request that reached the upstream is on record however the call ends.
    EgressStarted {
        call_id: String,
        request: EgressRecord,
    },
    /// A request a tool call made through the egress broker (its outcome, for a forwarded one).
    EgressRequest {
        call_id: String,
        request: EgressRecord,
        /// The seq of this request's `egress_started` event, for a forwarded request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started: Option<u64>,
    },
    /// Egress records of one tool call over the per-call or per-run cap, counted instead of
    /// journaled one by one.
    EgressOmitted {
        call_id: String,
        counts: Vec<EgressCount>,
    },
    /// The final answer was checked against the output schema.
    OutputValidated {
        valid: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        errors: Vec<String>,
    },
    /// The run parked (no worker held) until an approval is decided.
    RunWaiting {
        approval_id: ApprovalId,
    },
    RunSucceeded {
        output: Value,
    },
    RunFailed {
        error: RunError,
    },
    RunTimedOut {
        error: RunError,
    },
    RunCancelled {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl EventKind {
    /// The snake_case event type, as used for the SSE `event:` field.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::RunCreated { .. } => "run_created",
            EventKind::RunStarted { .. } => "run_started",
            EventKind::ModelRequested { .. } => "model_requested",
            EventKind::ModelResponded { .. } => "model_responded",
            EventKind::PolicyDecided { .. } => "policy_decided",
            EventKind::ApprovalRequested { .. } => "approval_requested",
            EventKind::ApprovalDecided { .. } => "approval_decided",
            EventKind::ToolCallStarted { .. } => "tool_call_started",
            EventKind::ToolCallCompleted { .. } => "tool_call_completed",
            EventKind::EgressStarted { .. } => "egress_started",
            EventKind::EgressRequest { .. } => "egress_request",
            EventKind::EgressOmitted { .. } => "egress_omitted",
            EventKind::OutputValidated { .. } => "output_validated",
            EventKind::RunWaiting { .. } => "run_waiting",
            EventKind::RunSucceeded { .. } => "run_succeeded",
            EventKind::RunFailed { .. } => "run_failed",
            EventKind::RunTimedOut { .. } => "run_timed_out",
            EventKind::RunCancelled { .. } => "run_cancelled",
        }
    }

    /// True for the events that end a run.
    pub fn is_terminal(&self) -> bool {
        self.final_status().is_some()
    }

    /// The status a run ends in with this event, for the events that end a run.
    pub fn final_status(&self) -> Option<crate::RunStatus> {
        use crate::RunStatus;
        match self {
            EventKind::RunSucceeded { .. } => Some(RunStatus::Succeeded),
            EventKind::RunFailed { .. } => Some(RunStatus::Failed),
            EventKind::RunTimedOut { .. } => Some(RunStatus::TimedOut),
            EventKind::RunCancelled { .. } => Some(RunStatus::Cancelled),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_serializes_flat_with_type_tag() {
        let ev = Event {
            seq: 3,
            at: 1_700_000_000_000,
            kind: EventKind::RunCancelled { reason: None },
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"seq":3,"at":"2023-11-14T22:13:20.000Z","type":"run_cancelled"})
        );
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
        assert_eq!(ev.kind.type_name(), "run_cancelled");
    }

    #[test]
    fn a_long_path_and_host_are_cut_with_a_marker_and_their_length() {
        let mut rec = EgressRecord {
            method: "GET".into(),
            scheme: "http".into(),
            host: "h".repeat(300),
            port: 80,
            path: format!("/{}", "é".repeat(30_000)),
            status: None,
            bytes_sent: 0,
            bytes_received: 0,
            decision: EgressDecision::Denied,
            reason: "no_rule".into(),
            credential: None,
            host_len: None,
            path_len: None,
        };
        rec.bound();
        assert!(rec.path.len() <= EgressRecord::MAX_PATH);
        assert!(rec.path.ends_with(EgressRecord::CUT));
        assert_eq!(rec.path_len, Some(60_001));
        assert!(rec.host.len() <= EgressRecord::MAX_HOST);
        assert_eq!(rec.host_len, Some(300));
        let small = rec.clone();
        rec.bound();
        assert_eq!(rec, small, "bounding twice changes nothing");
    }
}
