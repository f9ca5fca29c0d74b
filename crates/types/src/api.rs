//! HTTP API wire types shared by the server, the engine and the CLI client.

use crate::event::ApprovalDecision;
use crate::ids::{ApprovalId, RunId};
use crate::manifest::AgentManifest;
use crate::message::ToolCall;
use crate::run::{RunError, RunStatus};
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1/runs`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    pub agent: String,
    #[serde(default)]
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// Totals over a run's model and tool calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub model_calls: u32,
    /// Transport retries plus calls re-issued after a crash.
    pub model_retries: u32,
    pub tool_calls: u32,
}

/// A run as the API shows it (the store's projection of the journal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: RunId,
    pub agent: String,
    pub agent_version: String,
    pub status: RunStatus,
    /// The sandbox tier the run's tools run in; `none` means no isolation.
    pub sandbox: String,
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    #[serde(default)]
    pub metadata: Value,
    pub usage: RunUsage,
    /// The end-user the run acts for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<crate::EndUserId>,
    /// The API key (`key_…`) or member (`usr_…`) that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Sequence number of the last journal event.
    pub last_seq: u64,
    #[serde(with = "crate::time::serde_rfc3339")]
    pub created_at: Millis,
    #[serde(with = "crate::time::serde_rfc3339")]
    pub updated_at: Millis,
}

/// A page of a listing. `next_cursor` is opaque; pass it back as `?cursor=`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    /// The run ended (cancelled, timed out) before anyone decided.
    Expired,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Approved, Self::Denied, Self::Expired]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// A human approval of one tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub id: ApprovalId,
    pub run_id: RunId,
    pub agent: String,
    pub call: ToolCall,
    pub status: ApprovalStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(with = "crate::time::serde_rfc3339")]
    pub created_at: Millis,
    #[serde(
        default,
        with = "crate::time::serde_rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub decided_at: Option<Millis>,
}

/// `POST /v1/runs/{id}/approvals/{approval_id}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideApproval {
    pub decision: ApprovalDecision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// An agent package: the manifest (with schemas inline) and the prompt template. This is the
/// body of `PUT /v1/agents/{name}` and what `GET /v1/agents/{name}` returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDefinition {
    pub manifest: AgentManifest,
    pub prompt: String,
}

/// RFC 9457 problem details, with Paddock's stable `code`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub code: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl Run {
    /// Starts the projection from a run's first event. `None` if `first` is not `run_created`.
    pub fn from_created(id: RunId, first: &crate::Event) -> Option<Self> {
        let crate::EventKind::RunCreated {
            agent,
            agent_version,
            input,
            metadata,
            sandbox,
            end_user,
            created_by,
            ..
        } = &first.kind
        else {
            return None;
        };
        Some(Self {
            id,
            agent: agent.clone(),
            agent_version: agent_version.clone(),
            status: RunStatus::Queued,
            sandbox: sandbox.clone(),
            input: input.clone(),
            output: None,
            error: None,
            metadata: metadata.clone(),
            usage: RunUsage::default(),
            end_user: end_user.clone(),
            created_by: created_by.clone(),
            last_seq: first.seq,
            created_at: first.at,
            updated_at: first.at,
        })
    }

    /// Folds one more journal event into the projection. Every store backend keeps its run rows
    /// with this function, so the API view is always a pure function of the journal.
    pub fn apply(&mut self, ev: &crate::Event) {
        use crate::EventKind as K;
        self.last_seq = ev.seq;
        self.updated_at = ev.at;
        match &ev.kind {
            K::RunCreated { .. } => {}
            K::RunStarted { .. } => self.status = RunStatus::Running,
            K::ModelRequested { reissue, .. } => {
                if *reissue {
                    self.usage.model_retries += 1;
                }
            }
            K::ModelResponded {
                response,
                cost_usd,
                retries,
                ..
            } => {
                self.usage.model_calls += 1;
                self.usage.model_retries += retries;
                self.usage.input_tokens += response.usage.input_tokens;
                self.usage.output_tokens += response.usage.output_tokens;
                self.usage.cost_usd += cost_usd;
            }
            K::ToolCallCompleted { .. } => self.usage.tool_calls += 1,
            K::ApprovalDecided { .. } => self.status = RunStatus::Queued,
            K::RunWaiting { .. } => self.status = RunStatus::Waiting,
            K::RunSucceeded { output } => {
                self.status = RunStatus::Succeeded;
                self.output = Some(output.clone());
            }
            K::RunFailed { error } => {
                self.status = RunStatus::Failed;
                self.error = Some(error.clone());
            }
            K::RunTimedOut { error } => {
                self.status = RunStatus::TimedOut;
                self.error = Some(error.clone());
            }
            K::RunCancelled { reason } => {
                self.status = RunStatus::Cancelled;
                self.error = Some(RunError::new(
                    crate::ErrorCode::Cancelled,
                    reason.clone().unwrap_or_else(|| "cancelled".to_owned()),
                ));
            }
            K::PolicyDecided { .. }
            | K::ApprovalRequested { .. }
            | K::ToolCallStarted { .. }
            | K::EgressStarted { .. }
            | K::EgressRequest { .. }
            | K::EgressOmitted { .. }
            | K::OutputValidated { .. } => {}
        }
    }
}

/// `PUT /v1/secrets/{name}`: the value is write-only; no API ever returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    pub value: String,
}

/// A secret as the API shows it: its name and times, never its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    #[serde(with = "crate::time::serde_rfc3339")]
    pub created_at: Millis,
    #[serde(with = "crate::time::serde_rfc3339")]
    pub updated_at: Millis,
}

/// `POST /v1/keys`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    pub role: crate::auth::Role,
    /// The key stops working this many seconds after creation; never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
    /// Create the key in another workspace of the caller's org (owners only). Default: the
    /// caller's workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<crate::ids::WorkspaceId>,
    /// Narrow the key to these permissions (each held by `role`). Default: all of the role's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<crate::Permission>>,
}

/// An API key as the API shows it: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    pub id: crate::ids::KeyId,
    pub name: String,
    pub role: crate::auth::Role,
    pub workspace: crate::ids::WorkspaceId,
    /// The secret's first characters, to recognise a key without revealing it.
    pub prefix: String,
    #[serde(with = "crate::time::serde_rfc3339")]
    pub created_at: Millis,
    #[serde(default, with = "crate::time::serde_rfc3339::option")]
    pub expires_at: Option<Millis>,
    #[serde(default, with = "crate::time::serde_rfc3339::option")]
    pub revoked_at: Option<Millis>,
    #[serde(default, with = "crate::time::serde_rfc3339::option")]
    pub last_used_at: Option<Millis>,
    /// The permissions the key is narrowed to; absent: all of its role's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<crate::Permission>>,
}

/// The answer to `POST /v1/keys`: the only time the secret is ever shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedKey {
    pub key: ApiKeyInfo,
    pub secret: String,
}

/// `POST /v1/workspaces`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    pub name: String,
}

/// A workspace of an org.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceInfo {
    pub id: crate::ids::WorkspaceId,
    pub name: String,
    #[serde(with = "crate::time::serde_rfc3339")]
    pub created_at: Millis,
}

/// Who did an audited action. `kind` is `api_key`, `member`, `system` or `anonymous`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditActor {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<crate::KeyId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<crate::ids::EndUserId>,
    /// The member whose login session made the request (`kind` is then `member`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<crate::ids::MemberId>,
}

impl AuditActor {
    /// Paddock itself (the engine ending a run, a trigger), not a request.
    pub fn system() -> Self {
        Self {
            kind: "system".to_owned(),
            key_id: None,
            role: None,
            end_user: None,
            member_id: None,
        }
    }
}

/// One entry of a workspace's audit trail (`GET /v1/audit`). `hash` is the SHA-256 of the
/// entry's canonical form (see `paddock_store::audit`), which includes `prev_hash`, so the
/// entries form a chain that [`AuditVerify`] checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Per workspace, from 1, without gaps.
    pub seq: u64,
    #[serde(with = "crate::time::serde_rfc3339")]
    pub at: Millis,
    pub actor: AuditActor,
    /// Stable dotted name, e.g. `run.created`, `secret.written`, `auth.failed`.
    pub action: String,
    /// What it was done to, e.g. `run/run_…`, `secret/NAME`. Never a secret value.
    pub resource: String,
    /// `ok`, `denied` or `error`.
    pub outcome: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// Small JSON object with action-specific facts; never a secret.
    pub detail: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// `GET /v1/audit/verify`: whether the workspace's chain is intact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerify {
    pub ok: bool,
    /// Entries checked (all of them when `ok`, those before the break otherwise).
    pub entries: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_broken: Option<AuditBreak>,
}

/// A workspace's audit chain at one moment: its newest entry's `seq` and `hash`
/// (`GET /v1/audit/checkpoint`). Kept outside Paddock (a ticket, a log system, a printout), it
/// anchors the chain: `GET /v1/audit/verify?seq=&hash=` then also fails if the chain was
/// truncated below `seq` or rewritten up to it, which the chain alone cannot show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    pub org: crate::OrgId,
    pub workspace: crate::WorkspaceId,
    /// 0 (with the genesis hash) for an empty trail.
    pub seq: u64,
    pub hash: String,
    #[serde(with = "crate::time::serde_rfc3339")]
    pub at: Millis,
}

/// The first entry where the chain breaks, and why: `hash mismatch`, `prev_hash does not link`
/// or `sequence gap` (then `seq` is the missing one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditBreak {
    pub seq: u64,
    pub reason: String,
}

// Members, sessions and orgs.

/// `POST /v1/sessions`: log in with a password.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    pub email: String,
    pub password: String,
    /// The workspace the session acts in. Default: the member's workspace if it is narrowed to
    /// one, else the org's first workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<crate::ids::WorkspaceId>,
    /// Only needed when the email is a member of several orgs with the same password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<crate::ids::OrgId>,
}

/// The answer to `POST /v1/sessions`: the only time the token is ever shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedSession {
    /// `pds_…`, sent as `Authorization: Bearer`; stored only hashed.
    pub token: String,
    #[serde(with = "crate::time::serde_rfc3339")]
    pub expires_at: Millis,
    pub member: MemberInfo,
    pub org: crate::ids::OrgId,
    pub workspace: crate::ids::WorkspaceId,
    pub role: crate::auth::Role,
}

/// `POST /v1/members`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateMember {
    pub email: String,
    pub password: String,
    pub role: crate::auth::Role,
    /// Narrow the member to this workspace of the org. Absent: every workspace of the org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<crate::ids::WorkspaceId>,
}

/// A member as the API shows it: never the password or its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: crate::ids::MemberId,
    pub email: String,
    pub role: crate::auth::Role,
    /// The one workspace the member may act in; `null` for every workspace of the org.
    #[serde(default)]
    pub workspace: Option<crate::ids::WorkspaceId>,
    #[serde(with = "crate::time::serde_rfc3339")]
    pub created_at: Millis,
}

/// `POST /v1/orgs`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    pub name: String,
    /// Name of the org's first workspace (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_name: Option<String>,
}

/// An organization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgInfo {
    pub id: crate::ids::OrgId,
    /// `null` for an org created before orgs had names (the bootstrap org).
    pub name: Option<String>,
    #[serde(with = "crate::time::serde_rfc3339")]
    pub created_at: Millis,
}

/// The answer to `POST /v1/orgs`: the org, its first workspace and an owner key of it whose
/// secret is shown only here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedOrg {
    pub org: OrgInfo,
    pub workspace: WorkspaceInfo,
    pub key: CreatedKey,
}
