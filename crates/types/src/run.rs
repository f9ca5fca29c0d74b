//! Run lifecycle: statuses and the stable error codes of terminal failures.

use serde::{Deserialize, Serialize};
use std::fmt;

/// `queued → running → (waiting ⇄ running)* → succeeded | failed | cancelled | timed_out`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Accepted, not yet picked up by a worker (or put back after an approval).
    Queued,
    /// A worker holds the run's lease and is advancing it.
    Running,
    /// Parked on an approval; holds no worker and survives restarts.
    Waiting,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl RunStatus {
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Waiting,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::TimedOut,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled | RunStatus::TimedOut
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::TimedOut => "timed_out",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stable codes for terminal run failures. They separate *model* failure (the model could not
/// produce what was asked) from *workflow* failure (the platform, a tool or a limit stopped it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The provider failed for good: a non-retryable 4xx, or the retry budget was spent.
    ModelError,
    /// A tool failed in a way the run cannot continue from.
    ToolError,
    /// Policy refused an action the run could not do without.
    PolicyDenied,
    /// A cost budget would be exceeded by the next model call.
    BudgetExceeded,
    /// A manifest limit (`max_steps`, `max_tokens`, `timeout`, `max_cost_usd`) was reached.
    LimitExceeded,
    /// The final answer did not match the output schema, even after one repair turn.
    OutputInvalid,
    /// A non-idempotent tool call was started before a crash and its outcome is unknown.
    ToolOutcomeUnknown,
    /// The sandbox could not be created or broke.
    SandboxError,
    /// The agent the run refers to is gone or no longer loads.
    AgentError,
    /// An operator or API client cancelled the run.
    Cancelled,
    /// A bug or an unexpected store failure.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ModelError => "model_error",
            ErrorCode::ToolError => "tool_error",
            ErrorCode::PolicyDenied => "policy_denied",
            ErrorCode::BudgetExceeded => "budget_exceeded",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::OutputInvalid => "output_invalid",
            ErrorCode::ToolOutcomeUnknown => "tool_outcome_unknown",
            ErrorCode::SandboxError => "sandbox_error",
            ErrorCode::AgentError => "agent_error",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A terminal failure as recorded on the run and in its journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunError {
    pub code: ErrorCode,
    pub message: String,
}

impl RunError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
