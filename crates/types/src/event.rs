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
    /// A request a tool call made through the egress broker.
    EgressRequest {
        call_id: String,
        request: EgressRecord,
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
            EventKind::EgressRequest { .. } => "egress_request",
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
}
