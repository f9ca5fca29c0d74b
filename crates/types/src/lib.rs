//! Paddock's shared vocabulary: ids, the tenant [`Scope`], run statuses and error codes, journal
//! events, conversation messages, agent manifests and API wire types, and the [`redact`] matcher that
//! recognises a secret in its encoded forms (shared by the vault and the egress broker).
//!
//! This crate owns no behaviour beyond parsing and validation and must not do I/O: every other
//! crate depends on it, so it stays small and fast to compile.

pub mod api;
pub mod auth;
pub mod billing;
pub mod event;
pub mod ids;
pub mod manifest;
pub mod message;
pub mod redact;
pub mod run;
pub mod time;

pub use auth::{Permission, Role};
pub use event::{Event, EventKind, NewEvent};
pub use ids::{ApprovalId, BudgetId, EndUserId, KeyId, MemberId, OrgId, RunId, Scope, WorkspaceId};
pub use manifest::{AgentManifest, ManifestError};
pub use message::{Message, ModelResponse, ToolCall, ToolSpec, Usage};
pub use run::{ErrorCode, RunError, RunStatus};
