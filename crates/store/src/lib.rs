//! Persistence for Paddock: the [`Store`] trait, its embedded SQLite backend and a conformance
//! suite that every backend must pass (PostgreSQL joins later behind the same trait).
//!
//! The store owns durability: [`Store::append`] returns only once the events are durable, and
//! concurrent appends share one transaction and one fsync (group commit). The run rows and the
//! approvals are projections of the journal kept in the same transaction as the events, using
//! [`paddock_types::api::Run::apply`], so every backend shows the same thing.
//!
//! It also keeps the vault's rows: workspace data keys (wrapped by a master key) and sealed
//! secrets. It never sees a plaintext secret or an unwrapped key; encryption is `paddock-vault`'s.
//!
//! It keeps each workspace's audit trail as a hash chain ([`audit`]): entries are only ever
//! appended, `seq` and `prev_hash` are taken inside the write transaction.
//!
//! Every method takes a [`Scope`]; a resource of another scope is reported as missing. This crate
//! must not know HTTP.

pub mod audit;
pub mod conformance;
pub mod sqlite;

use async_trait::async_trait;
use paddock_types::api::OrgInfo;
use paddock_types::api::{
    AgentDefinition, Approval, ApprovalStatus, AuditActor, AuditEntry, AuditVerify, Page, Run,
    WorkspaceInfo,
};
use paddock_types::billing::{Budget, EndUser, UsageRow};
use paddock_types::event::ApprovalDecision;
use paddock_types::time::Millis;
use paddock_types::{
    ApprovalId, BudgetId, EndUserId, Event, KeyId, NewEvent, Role, RunId, RunStatus, Scope,
};
use paddock_types::{MemberId, OrgId, WorkspaceId};
use std::num::NonZeroU32;
use std::sync::Arc;
use tokio::sync::broadcast;

pub use sqlite::SqliteStore;

/// What went wrong, and what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The resource does not exist in this scope. Answer "not found".
    #[error("{0} not found")]
    NotFound(&'static str),
    /// `expected_seq` did not match: someone else appended. Reload the journal and re-decide.
    #[error("journal conflict: expected last seq {expected}, found {actual}")]
    Conflict { expected: u64, actual: u64 },
    /// The run already ended; nothing more may be appended.
    #[error("run is already {0}")]
    Terminal(RunStatus),
    /// An agent version already exists with different content. Bump the version.
    #[error("agent {name} version {version} already exists with different content")]
    AgentVersionExists { name: String, version: String },
    /// The approval was already decided.
    #[error("approval already decided")]
    AlreadyDecided,
    /// The cursor did not come from this listing. Drop it and start over.
    #[error("invalid cursor")]
    BadCursor,
    /// A resource with this name already exists in the scope. Pick another name.
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    /// The data folder is held by another process.
    #[error("data folder is locked by another paddock process: {0}")]
    Locked(String),
    /// Anything else from the database or the file system: retry later or report.
    #[error("storage failure: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A batch of events for one run, appended atomically.
#[derive(Debug, Clone)]
pub struct Append {
    pub run_id: RunId,
    /// The last seq the writer has seen; the append fails with [`StoreError::Conflict`] if the
    /// journal moved on. `None` appends regardless (API actions such as cancel).
    pub expected_seq: Option<u64>,
    pub events: Vec<NewEvent>,
}

/// A registered agent version.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub definition: AgentDefinition,
    pub created_at: Millis,
}

/// Filters for [`Store::list_runs`].
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub agent: Option<String>,
    pub status: Option<RunStatus>,
}

/// A run handed to a worker by [`Store::claim`].
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub scope: Scope,
    pub run_id: RunId,
    /// The last journal seq at the claim (1: nothing happened since the run was created).
    pub last_seq: u64,
}

/// A workspace's data key as stored: wrapped (encrypted) by a master key. The store only ever
/// holds it wrapped; the vault unwraps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKeyRecord {
    /// Per workspace, from 1; secrets name the key that sealed them.
    pub key_id: u32,
    /// Which master key wrapped it, so a half-finished rotation can tell the old key from the new.
    pub master_key_id: String,
    pub wrapped: Vec<u8>,
    pub nonce: Vec<u8>,
    pub created_at: Millis,
}

/// One data key to rewrap in [`Store::rewrap_data_keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrap {
    /// Only the org and workspace matter.
    pub scope: Scope,
    pub key_id: u32,
    /// The master key the row must still be wrapped by; anything else fails the whole rewrap, so
    /// two rotations can never interleave.
    pub from_master_key_id: String,
    pub master_key_id: String,
    pub wrapped: Vec<u8>,
    pub nonce: Vec<u8>,
}

/// A secret as stored: sealed by a data key of its workspace. Never plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRecord {
    pub name: String,
    /// Whose it is: the workspace's (`None`) or one end-user's, which shadows the workspace's
    /// secret of the same name in that end-user's runs.
    pub end_user: Option<EndUserId>,
    /// The workspace data key that sealed it.
    pub key_id: u32,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// What may be shown about a secret: never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    pub name: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// An API key as stored: the SHA-256 of its secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub name: String,
    pub role: Role,
    /// The secret's first characters (`pdk_` and a few more), to recognise it in listings.
    pub prefix: String,
    /// Lowercase hex SHA-256 of the whole secret.
    pub secret_hash: String,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
    pub last_used_at: Option<Millis>,
    /// The permissions the key is narrowed to, within its role; `None`: all of the role's.
    pub scopes: Option<Vec<paddock_types::Permission>>,
}

/// An audit entry to append; the store assigns `seq`, `prev_hash` and `hash`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEntry {
    pub at: Millis,
    pub actor: AuditActor,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// Small JSON; never a secret.
    pub detail: serde_json::Value,
}

/// Filters for [`Store::list_audit`]; all must match.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Inclusive bounds on `at`.
    pub from: Option<Millis>,
    pub to: Option<Millis>,
    /// The actor's key id.
    pub actor: Option<String>,
    pub action: Option<String>,
    /// `resource` starts with this.
    pub resource_prefix: Option<String>,
}

/// How long an `Idempotency-Key` record is kept: an older one is ignored (a new request with the
/// key runs again) and purged.
pub const IDEMPOTENCY_TTL_MS: Millis = 24 * 60 * 60 * 1000;
/// An in-flight idempotency claim older than this is taken as abandoned (its request died with
/// the process or its client went away) and may be claimed again. Longer than any request runs.
pub const IDEMPOTENCY_IN_FLIGHT_MS: Millis = 5 * 60 * 1000;

/// The response stored for an `Idempotency-Key`, replayed to a retry. The store treats it as
/// opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// What [`Store::claim_idempotency`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key was free (or expired, or abandoned): it is now claimed by this caller, who must
    /// complete or release it.
    New,
    /// Another request with the key and the same request hash has not finished yet.
    InFlight,
    /// A request with the key and the same hash finished with this response.
    Done(IdempotentResponse),
    /// The key was used for a different request (another hash).
    Mismatch,
}

/// The most a run's next model call can cost, to hold against the budgets while it is in flight
/// ([`Store::reserve_budget`]). The end-user comes from the scope.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub run_id: RunId,
    pub agent: String,
    /// Micro-dollars (see [`paddock_types::billing`]).
    pub micros: i64,
    pub at: Millis,
}

/// Why [`Store::reserve_budget`] refused: the first budget without room, and its numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRefusal {
    pub budget: Budget,
    /// Settled in the budget's current period.
    pub spent_usd: f64,
    /// Held by other runs' calls in flight.
    pub held_usd: f64,
    pub requested_usd: f64,
}

/// What [`Store::usage`] sums: inclusive UTC days (`YYYY-MM-DD`) and the dimensions to group
/// by (the workspace too when `all_workspaces`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageQuery {
    pub from: String,
    pub to: String,
    /// Every workspace of the scope's org, not just the scope's.
    pub all_workspaces: bool,
    pub by_agent: bool,
    pub by_end_user: bool,
    pub by_model: bool,
    pub by_day: bool,
}

/// Published after each commit so SSE streams and `?wait=` wake up without polling.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub run_id: RunId,
    pub last_seq: u64,
    pub status: RunStatus,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Registers an agent version. Re-registering identical content is a no-op.
    async fn put_agent(&self, scope: &Scope, def: &AgentDefinition) -> Result<AgentRecord>;
    /// The given version, or the highest semver version when `version` is `None`.
    async fn get_agent(
        &self,
        scope: &Scope,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<AgentRecord>>;
    /// The latest version of every agent, by name.
    async fn list_agents(&self, scope: &Scope) -> Result<Vec<AgentRecord>>;

    /// Creates a run whose journal starts with `first` (a `run_created` event). Durable on return.
    async fn create_run(&self, scope: &Scope, id: &RunId, first: NewEvent) -> Result<Run>;
    async fn get_run(&self, scope: &Scope, id: &RunId) -> Result<Option<Run>>;
    /// Newest first. `limit` is clamped to 1..=200.
    async fn list_runs(
        &self,
        scope: &Scope,
        filter: &RunFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Run>>;

    /// Appends events to a run; durable on return (group-committed with concurrent appends).
    /// Returns the run projection after the append.
    async fn append(&self, scope: &Scope, batch: Append) -> Result<Run>;
    /// [`Store::append`] for a caller that needs only the run's new last seq (the engine, at
    /// every step), sparing a backend that answers from shared memory a copy of the run.
    async fn append_seq(&self, scope: &Scope, batch: Append) -> Result<u64> {
        Ok(self.append(scope, batch).await?.last_seq)
    }
    /// Events with `seq > after`, oldest first, at most `limit`.
    async fn events(
        &self,
        scope: &Scope,
        run_id: &RunId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>>;

    async fn get_approval(
        &self,
        scope: &Scope,
        run_id: &RunId,
        id: &ApprovalId,
    ) -> Result<Option<Approval>>;
    /// Oldest first.
    async fn list_approvals(
        &self,
        scope: &Scope,
        status: Option<ApprovalStatus>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Approval>>;
    /// Records the decision as an `approval_decided` event (which puts the run back in `queued`).
    /// Fails with [`StoreError::AlreadyDecided`] if it is not pending.
    async fn decide_approval(
        &self,
        scope: &Scope,
        run_id: &RunId,
        id: &ApprovalId,
        decision: ApprovalDecision,
        comment: Option<String>,
    ) -> Result<Run>;

    /// Leases up to `limit` runs that are `queued`, or `running` with an expired lease, to
    /// `worker` until now + `lease_ms`, oldest first. With `max_running_per_workspace`, a run is
    /// skipped (it stays queued for a later claim) while its workspace already has that many
    /// `queued` or `running` runs under an unexpired lease, counting those this claim takes;
    /// other workspaces' runs are still claimed.
    async fn claim(
        &self,
        worker: &str,
        lease_ms: i64,
        limit: u32,
        max_running_per_workspace: Option<NonZeroU32>,
    ) -> Result<Vec<Claimed>>;
    /// Extends the leases `worker` holds; returns the runs whose lease it no longer holds.
    async fn renew(&self, worker: &str, runs: &[RunId], lease_ms: i64) -> Result<Vec<RunId>>;
    /// Gives a lease back (the worker stopped working on the run).
    async fn release(&self, worker: &str, run_id: &RunId) -> Result<()>;

    /// Commit notifications (run id, last seq, status) for every append and creation.
    fn subscribe(&self) -> broadcast::Receiver<Committed>;

    // Secrets. They belong to the workspace, or to one end-user of it when `scope.end_user` is
    // set: then writes, deletes and listings touch that end-user's own secrets, and
    // `get_secret` prefers the end-user's secret to the workspace's of the same name. Data keys
    // are per workspace. The store holds only wrapped data keys and sealed values; encryption
    // is the vault's job.

    /// Stores a new data key for the scope's workspace. Returns false, changing nothing, if the
    /// workspace already has a key with this `key_id` (two callers raced to create it: re-read).
    async fn put_data_key(&self, scope: &Scope, key: DataKeyRecord) -> Result<bool>;
    /// The workspace's data keys, by `key_id`.
    async fn data_keys(&self, scope: &Scope) -> Result<Vec<DataKeyRecord>>;
    /// Every data key of every workspace (for master-key rotation), with its workspace's scope
    /// (no end-user), ordered by org, workspace and `key_id`.
    async fn all_data_keys(&self) -> Result<Vec<(Scope, DataKeyRecord)>>;
    /// Replaces the wrapping of the given data keys, all in one transaction: either every row
    /// changes or none does. Fails with [`StoreError::NotFound`] (`"data key"`), changing nothing,
    /// if a key is missing or no longer wrapped by its `from_master_key_id`.
    async fn rewrap_data_keys(&self, rewraps: Vec<Rewrap>) -> Result<()>;

    /// Creates or replaces the secret `secret.name` of the workspace; on replace the stored
    /// `created_at` is kept. Fails with [`StoreError::NotFound`] (`"data key"`) if the workspace
    /// has no data key `secret.key_id`. Returns what was stored.
    async fn put_secret(&self, scope: &Scope, secret: SecretRecord) -> Result<SecretMeta>;
    async fn get_secret(&self, scope: &Scope, name: &str) -> Result<Option<SecretRecord>>;
    /// The workspace's secrets by name, without values.
    async fn list_secrets(&self, scope: &Scope) -> Result<Vec<SecretMeta>>;
    /// False if there was no such secret.
    async fn delete_secret(&self, scope: &Scope, name: &str) -> Result<bool>;
    /// Every sealed secret of the workspace by name, and with an end-user in the scope that
    /// end-user's too (both, to build a redactor).
    async fn all_secrets(&self, scope: &Scope) -> Result<Vec<SecretRecord>>;

    // Tenancy. Orgs and workspaces are rows so keys can point at them; the resources of a
    // workspace (runs, agents, secrets) do not need the row to exist.

    /// Creates the scope's org and workspace if missing (bootstrap of the default workspace);
    /// an existing workspace keeps its name.
    async fn ensure_workspace(&self, scope: &Scope, name: &str) -> Result<()>;
    /// Creates a workspace with a new id in `scope.org` (which must exist: [`StoreError::NotFound`]
    /// `"org"`). Fails with [`StoreError::AlreadyExists`] if the org has one of that name.
    async fn create_workspace(&self, scope: &Scope, name: &str) -> Result<WorkspaceInfo>;
    /// The workspaces of `scope.org`, by id (oldest first); the workspace part is ignored.
    async fn list_workspaces(&self, scope: &Scope) -> Result<Vec<WorkspaceInfo>>;

    /// Stores a new key in the scope's workspace ([`StoreError::NotFound`] `"workspace"` if it
    /// does not exist).
    async fn create_api_key(&self, scope: &Scope, key: KeyRecord) -> Result<()>;
    /// The key whose secret hashes to `secret_hash`, with the scope it acts in, revoked or
    /// expired ones included (the caller refuses them). This is the one lookup without a scope:
    /// authentication is what yields the scope.
    async fn api_key_by_hash(&self, secret_hash: &str) -> Result<Option<(Scope, KeyRecord)>>;
    /// Records that the key was used at `at` (callers throttle this; it is not a log).
    async fn touch_api_key(&self, id: &KeyId, at: Millis) -> Result<()>;
    /// The workspace's keys, oldest first, revoked ones included.
    async fn list_api_keys(&self, scope: &Scope) -> Result<Vec<KeyRecord>>;
    /// Marks the key revoked at `at`. False if the workspace has no such key or it was already
    /// revoked.
    async fn revoke_api_key(&self, scope: &Scope, id: &KeyId, at: Millis) -> Result<bool>;
    /// How many keys exist in the whole store (bootstrap: zero means create the first one).
    async fn count_api_keys(&self) -> Result<u64>;

    // Audit. The trail belongs to the workspace: `scope.end_user` is ignored.

    /// Appends an entry to the workspace's chain; `seq` and `prev_hash` are taken inside the
    /// write transaction, so concurrent appends chain without gaps. Durable on return.
    async fn append_audit(&self, scope: &Scope, entry: NewAuditEntry) -> Result<AuditEntry>;
    /// Oldest first; the cursor is the last `seq` seen. `limit` is clamped to 1..=1000.
    async fn list_audit(
        &self,
        scope: &Scope,
        filter: &AuditFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<AuditEntry>>;
    /// Recomputes every hash and link of the workspace's chain in one pass.
    async fn verify_audit(&self, scope: &Scope) -> Result<AuditVerify>;
    /// The hash of the workspace's entry `seq`, if the chain has it (to hold the chain against
    /// a checkpoint, [`audit::against_checkpoint`]).
    async fn audit_hash_at(&self, scope: &Scope, seq: u64) -> Result<Option<String>> {
        if seq == 0 {
            return Ok(None);
        }
        let cursor = (seq - 1).to_string();
        let page = self
            .list_audit(scope, &AuditFilter::default(), Some(&cursor), 1)
            .await?;
        Ok(page
            .data
            .into_iter()
            .next()
            .filter(|e| e.seq == seq)
            .map(|e| e.hash))
    }
    /// Every workspace that has audit entries (for the offline verify), no end-user.
    async fn audit_workspaces(&self) -> Result<Vec<Scope>>;

    // End-users of a workspace (`scope.end_user` is ignored).

    /// Fails with [`StoreError::AlreadyExists`] (`"end-user"`) if the workspace has one with
    /// this `external_id`.
    async fn create_end_user(&self, scope: &Scope, user: EndUser) -> Result<EndUser>;
    /// By id (`eu_…`) or, for anything else, by external id.
    async fn find_end_user(&self, scope: &Scope, id_or_external: &str) -> Result<Option<EndUser>>;
    /// Oldest first; the cursor is the last id seen. `limit` is clamped to 1..=200.
    async fn list_end_users(
        &self,
        scope: &Scope,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<EndUser>>;
    /// False if the workspace has no such end-user. Its runs and secrets stay.
    async fn delete_end_user(&self, scope: &Scope, id: &EndUserId) -> Result<bool>;

    // Budgets and usage, per workspace. Completed model calls are settled into a usage ledger
    // in the transaction that journals their `model_responded` event.

    async fn create_budget(&self, scope: &Scope, budget: Budget) -> Result<Budget>;
    /// Oldest first.
    async fn list_budgets(&self, scope: &Scope) -> Result<Vec<Budget>>;
    async fn delete_budget(&self, scope: &Scope, id: &BudgetId) -> Result<bool>;
    /// Atomically checks every budget that applies to the run (workspace, agent, the scope's
    /// end-user) and, if each has room for `r.micros` beside what its period spent and what
    /// other runs hold, holds it for the run (replacing the run's previous hold). Otherwise
    /// holds nothing and says which budget refused. The hold is released when the call's
    /// `model_responded` event or the run's end is appended.
    async fn reserve_budget(&self, scope: &Scope, r: Reservation) -> Result<Option<BudgetRefusal>>;
    /// Tokens, calls and cost of completed model calls over the query's days, grouped as asked,
    /// narrowed to the scope's end-user when set.
    async fn usage(&self, scope: &Scope, q: &UsageQuery) -> Result<Vec<UsageRow>>;

    // Idempotency keys, per workspace (`scope.end_user` is ignored), kept
    // [`IDEMPOTENCY_TTL_MS`].

    /// Claims `key` for a request hashing to `request_hash`, atomically (of many concurrent
    /// claims of a free key exactly one gets [`IdempotencyClaim::New`]). A record older than
    /// [`IDEMPOTENCY_TTL_MS`] at `now`, or still in flight after [`IDEMPOTENCY_IN_FLIGHT_MS`],
    /// counts as absent and is replaced; expired records are purged.
    async fn claim_idempotency(
        &self,
        scope: &Scope,
        key: &str,
        request_hash: &str,
        now: Millis,
    ) -> Result<IdempotencyClaim>;
    /// Stores the response of a claimed key; later claims with the same hash get it back. Does
    /// nothing if the claim is gone or was completed already.
    async fn complete_idempotency(
        &self,
        scope: &Scope,
        key: &str,
        request_hash: &str,
        response: IdempotentResponse,
    ) -> Result<()>;
    /// Gives an in-flight claim up (the request failed in a way worth retrying): the key is free
    /// again. A completed record is left alone.
    async fn release_idempotency(&self, scope: &Scope, key: &str, request_hash: &str)
    -> Result<()>;

    // ---------------------------------------------------------------------------------------
    // Members and sessions. Members belong to `scope.org` (the workspace part of the scope is
    // ignored unless said otherwise); a member may be narrowed to one workspace of its org.
    // Orgs are created here too, with their first workspace and owner key in one transaction.

    /// Adds a member to `scope.org` ([`StoreError::NotFound`] `"org"`, or `"workspace"` when it
    /// is narrowed to a workspace the org does not have). Fails with
    /// [`StoreError::AlreadyExists`] `"member"` if a member of the org that is not removed has
    /// the same email, compared case-insensitively.
    async fn create_member(&self, scope: &Scope, member: MemberRecord) -> Result<()>;
    /// The org's members that are not removed, oldest first.
    async fn list_members(&self, scope: &Scope) -> Result<Vec<MemberRecord>>;
    /// A member of `scope.org`, removed ones included.
    async fn get_member(&self, scope: &Scope, id: &MemberId) -> Result<Option<MemberRecord>>;
    /// Marks the member removed at `at` and revokes all its sessions, in one transaction. False
    /// if the org has no such member or it was already removed.
    async fn remove_member(&self, scope: &Scope, id: &MemberId, at: Millis) -> Result<bool>;
    /// Every member (of any org) that is not removed and whose email matches, case-insensitively,
    /// with its org. Like [`Store::api_key_by_hash`], a lookup without a scope: logging in is what
    /// yields the scope.
    async fn members_by_email(&self, email: &str) -> Result<Vec<(OrgId, MemberRecord)>>;
    /// How many members exist in the whole store, removed ones included (bootstrap).
    async fn count_members(&self) -> Result<u64>;
    /// Stores a session of `session.member` acting in `scope`'s workspace. Fails with
    /// [`StoreError::NotFound`] `"member"` if the member is not an active member of `scope.org`,
    /// or `"workspace"` if the org has no such workspace.
    async fn create_session(&self, scope: &Scope, session: SessionRecord) -> Result<()>;
    /// The session whose token hashes to `token_hash`, with the scope it acts in and its member
    /// (expired, revoked sessions and removed members included: the caller refuses them).
    async fn session_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<(Scope, SessionRecord, MemberRecord)>>;
    /// Marks the session revoked at `at`. False if there is no such session in `scope.org` or it
    /// was already revoked.
    async fn revoke_session(&self, scope: &Scope, token_hash: &str, at: Millis) -> Result<bool>;
    /// Creates an org named `name` with a new id, its first workspace `workspace_name` and
    /// `owner_key` in that workspace, all or nothing. Fails with [`StoreError::AlreadyExists`]
    /// `"org"` if an org has that name (case-insensitively).
    async fn create_org(
        &self,
        name: &str,
        workspace_name: &str,
        owner_key: KeyRecord,
    ) -> Result<(OrgInfo, WorkspaceInfo)>;
    /// Every org of the installation, oldest first.
    async fn list_orgs(&self) -> Result<Vec<OrgInfo>>;
}

/// A member as stored: the password only as an argon2id PHC string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: MemberId,
    /// As given when added; logins and uniqueness compare it case-insensitively.
    pub email: String,
    /// `$argon2id$…` (PHC string format), never the password.
    pub password_hash: String,
    pub role: Role,
    /// The one workspace of the org the member may act in; `None` for all of them.
    pub workspace: Option<WorkspaceId>,
    pub created_at: Millis,
    pub removed_at: Option<Millis>,
}

/// A login session as stored: the SHA-256 of its token, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Lowercase hex SHA-256 of the whole token.
    pub token_hash: String,
    pub member: MemberId,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub revoked_at: Option<Millis>,
}

pub type DynStore = Arc<dyn Store>;
