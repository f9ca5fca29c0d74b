//! A store that fails the rotation's rewrap, before or after committing it.

use super::{key_files, open};
use async_trait::async_trait;
use paddock_store::{
    AgentRecord, Append, Claimed, Committed, DataKeyRecord, DynStore, Result, Rewrap, RunFilter,
    SecretMeta, SecretRecord, SqliteStore, Store, StoreError,
};
use paddock_store::{
    BudgetRefusal, KeyRecord, MemberRecord, Reservation, SessionRecord, UsageQuery,
};
use paddock_types::api::{AgentDefinition, Approval, ApprovalStatus, Page, Run};
use paddock_types::api::{OrgInfo, WorkspaceInfo};
use paddock_types::billing::{Budget, EndUser, UsageRow};
use paddock_types::event::ApprovalDecision;
use paddock_types::time::Millis;
use paddock_types::{ApprovalId, Event, NewEvent, RunId, Scope};
use paddock_types::{BudgetId, EndUserId};
use paddock_types::{MemberId, OrgId};
use paddock_vault::{KeySource, Vault, VaultError};
use std::sync::Arc;
use tokio::sync::broadcast;

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// The rewrap fails without changing anything.
    Before,
    /// The rewrap commits, then the caller is told it failed.
    AfterCommit,
}

struct Faulty {
    inner: DynStore,
    fault: Fault,
}

fn injected() -> StoreError {
    StoreError::Backend("injected fault".into())
}

#[async_trait]
impl Store for Faulty {
    async fn rewrap_data_keys(&self, rewraps: Vec<Rewrap>) -> Result<()> {
        if self.fault == Fault::AfterCommit {
            self.inner.rewrap_data_keys(rewraps).await?;
        }
        Err(injected())
    }

    async fn put_agent(&self, scope: &Scope, def: &AgentDefinition) -> Result<AgentRecord> {
        self.inner.put_agent(scope, def).await
    }
    async fn get_agent(
        &self,
        scope: &Scope,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<AgentRecord>> {
        self.inner.get_agent(scope, name, version).await
    }
    async fn list_agents(&self, scope: &Scope) -> Result<Vec<AgentRecord>> {
        self.inner.list_agents(scope).await
    }
    async fn create_run(&self, scope: &Scope, id: &RunId, first: NewEvent) -> Result<Run> {
        self.inner.create_run(scope, id, first).await
    }
    async fn get_run(&self, scope: &Scope, id: &RunId) -> Result<Option<Run>> {
        self.inner.get_run(scope, id).await
    }
    async fn list_runs(
        &self,
        scope: &Scope,
        filter: &RunFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Run>> {
        self.inner.list_runs(scope, filter, cursor, limit).await
    }
    async fn append(&self, scope: &Scope, batch: Append) -> Result<Run> {
        self.inner.append(scope, batch).await
    }
    async fn events(
        &self,
        scope: &Scope,
        run_id: &RunId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        self.inner.events(scope, run_id, after, limit).await
    }
    async fn get_approval(
        &self,
        scope: &Scope,
        run_id: &RunId,
        id: &ApprovalId,
    ) -> Result<Option<Approval>> {
        self.inner.get_approval(scope, run_id, id).await
    }
    async fn list_approvals(
        &self,
        scope: &Scope,
        status: Option<ApprovalStatus>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Approval>> {
        self.inner
            .list_approvals(scope, status, cursor, limit)
            .await
    }
    async fn decide_approval(
        &self,
        scope: &Scope,
        run_id: &RunId,
        id: &ApprovalId,
        decision: ApprovalDecision,
        comment: Option<String>,
    ) -> Result<Run> {
        self.inner
            .decide_approval(scope, run_id, id, decision, comment)
            .await
    }
    async fn claim(
        &self,
        worker: &str,
        lease_ms: i64,
        limit: u32,
        cap: Option<std::num::NonZeroU32>,
    ) -> Result<Vec<Claimed>> {
        self.inner.claim(worker, lease_ms, limit, cap).await
    }
    async fn renew(&self, worker: &str, runs: &[RunId], lease_ms: i64) -> Result<Vec<RunId>> {
        self.inner.renew(worker, runs, lease_ms).await
    }
    async fn release(&self, worker: &str, run_id: &RunId) -> Result<()> {
        self.inner.release(worker, run_id).await
    }
    fn subscribe(&self) -> broadcast::Receiver<Committed> {
        self.inner.subscribe()
    }
    async fn put_data_key(&self, scope: &Scope, key: DataKeyRecord) -> Result<bool> {
        self.inner.put_data_key(scope, key).await
    }
    async fn data_keys(&self, scope: &Scope) -> Result<Vec<DataKeyRecord>> {
        self.inner.data_keys(scope).await
    }
    async fn all_data_keys(&self) -> Result<Vec<(Scope, DataKeyRecord)>> {
        self.inner.all_data_keys().await
    }
    async fn put_secret(&self, scope: &Scope, secret: SecretRecord) -> Result<SecretMeta> {
        self.inner.put_secret(scope, secret).await
    }
    async fn get_secret(&self, scope: &Scope, name: &str) -> Result<Option<SecretRecord>> {
        self.inner.get_secret(scope, name).await
    }
    async fn list_secrets(&self, scope: &Scope) -> Result<Vec<SecretMeta>> {
        self.inner.list_secrets(scope).await
    }
    async fn delete_secret(&self, scope: &Scope, name: &str) -> Result<bool> {
        self.inner.delete_secret(scope, name).await
    }
    async fn all_secrets(&self, scope: &Scope) -> Result<Vec<SecretRecord>> {
        self.inner.all_secrets(scope).await
    }
    async fn ensure_workspace(&self, scope: &Scope, name: &str) -> Result<()> {
        self.inner.ensure_workspace(scope, name).await
    }
    async fn create_workspace(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<paddock_types::api::WorkspaceInfo> {
        self.inner.create_workspace(scope, name).await
    }
    async fn list_workspaces(
        &self,
        scope: &Scope,
    ) -> Result<Vec<paddock_types::api::WorkspaceInfo>> {
        self.inner.list_workspaces(scope).await
    }
    async fn create_api_key(&self, scope: &Scope, key: paddock_store::KeyRecord) -> Result<()> {
        self.inner.create_api_key(scope, key).await
    }
    async fn api_key_by_hash(
        &self,
        hash: &str,
    ) -> Result<Option<(Scope, paddock_store::KeyRecord)>> {
        self.inner.api_key_by_hash(hash).await
    }
    async fn touch_api_key(&self, id: &paddock_types::KeyId, at: i64) -> Result<()> {
        self.inner.touch_api_key(id, at).await
    }
    async fn list_api_keys(&self, scope: &Scope) -> Result<Vec<paddock_store::KeyRecord>> {
        self.inner.list_api_keys(scope).await
    }
    async fn revoke_api_key(
        &self,
        scope: &Scope,
        id: &paddock_types::KeyId,
        at: i64,
    ) -> Result<bool> {
        self.inner.revoke_api_key(scope, id, at).await
    }
    async fn count_api_keys(&self) -> Result<u64> {
        self.inner.count_api_keys().await
    }

    async fn append_audit(
        &self,
        scope: &Scope,
        entry: paddock_store::NewAuditEntry,
    ) -> Result<paddock_types::api::AuditEntry> {
        self.inner.append_audit(scope, entry).await
    }

    async fn list_audit(
        &self,
        scope: &Scope,
        filter: &paddock_store::AuditFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<paddock_types::api::AuditEntry>> {
        self.inner.list_audit(scope, filter, cursor, limit).await
    }

    async fn verify_audit(&self, scope: &Scope) -> Result<paddock_types::api::AuditVerify> {
        self.inner.verify_audit(scope).await
    }

    async fn audit_workspaces(&self) -> Result<Vec<Scope>> {
        self.inner.audit_workspaces().await
    }

    async fn claim_idempotency(
        &self,
        scope: &Scope,
        key: &str,
        request_hash: &str,
        now: i64,
    ) -> Result<paddock_store::IdempotencyClaim> {
        self.inner
            .claim_idempotency(scope, key, request_hash, now)
            .await
    }
    async fn complete_idempotency(
        &self,
        scope: &Scope,
        key: &str,
        request_hash: &str,
        response: paddock_store::IdempotentResponse,
    ) -> Result<()> {
        self.inner
            .complete_idempotency(scope, key, request_hash, response)
            .await
    }
    async fn release_idempotency(
        &self,
        scope: &Scope,
        key: &str,
        request_hash: &str,
    ) -> Result<()> {
        self.inner
            .release_idempotency(scope, key, request_hash)
            .await
    }
    async fn create_end_user(&self, scope: &Scope, user: EndUser) -> Result<EndUser> {
        self.inner.create_end_user(scope, user).await
    }
    async fn find_end_user(&self, scope: &Scope, key: &str) -> Result<Option<EndUser>> {
        self.inner.find_end_user(scope, key).await
    }
    async fn list_end_users(
        &self,
        scope: &Scope,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<EndUser>> {
        self.inner.list_end_users(scope, cursor, limit).await
    }
    async fn delete_end_user(&self, scope: &Scope, id: &EndUserId) -> Result<bool> {
        self.inner.delete_end_user(scope, id).await
    }
    async fn create_budget(&self, scope: &Scope, budget: Budget) -> Result<Budget> {
        self.inner.create_budget(scope, budget).await
    }
    async fn list_budgets(&self, scope: &Scope) -> Result<Vec<Budget>> {
        self.inner.list_budgets(scope).await
    }
    async fn delete_budget(&self, scope: &Scope, id: &BudgetId) -> Result<bool> {
        self.inner.delete_budget(scope, id).await
    }
    async fn reserve_budget(&self, scope: &Scope, r: Reservation) -> Result<Option<BudgetRefusal>> {
        self.inner.reserve_budget(scope, r).await
    }
    async fn usage(&self, scope: &Scope, q: &UsageQuery) -> Result<Vec<UsageRow>> {
        self.inner.usage(scope, q).await
    }
    async fn create_member(&self, scope: &Scope, member: MemberRecord) -> Result<()> {
        self.inner.create_member(scope, member).await
    }
    async fn list_members(&self, scope: &Scope) -> Result<Vec<MemberRecord>> {
        self.inner.list_members(scope).await
    }
    async fn get_member(&self, scope: &Scope, id: &MemberId) -> Result<Option<MemberRecord>> {
        self.inner.get_member(scope, id).await
    }
    async fn remove_member(&self, scope: &Scope, id: &MemberId, at: Millis) -> Result<bool> {
        self.inner.remove_member(scope, id, at).await
    }
    async fn members_by_email(&self, email: &str) -> Result<Vec<(OrgId, MemberRecord)>> {
        self.inner.members_by_email(email).await
    }
    async fn count_members(&self) -> Result<u64> {
        self.inner.count_members().await
    }
    async fn create_session(&self, scope: &Scope, session: SessionRecord) -> Result<()> {
        self.inner.create_session(scope, session).await
    }
    async fn session_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<(Scope, SessionRecord, MemberRecord)>> {
        self.inner.session_by_hash(token_hash).await
    }
    async fn revoke_session(&self, scope: &Scope, token_hash: &str, at: Millis) -> Result<bool> {
        self.inner.revoke_session(scope, token_hash, at).await
    }
    async fn create_org(
        &self,
        name: &str,
        workspace_name: &str,
        owner_key: KeyRecord,
    ) -> Result<(OrgInfo, WorkspaceInfo)> {
        self.inner.create_org(name, workspace_name, owner_key).await
    }
    async fn list_orgs(&self) -> Result<Vec<OrgInfo>> {
        self.inner.list_orgs().await
    }
}

async fn faulty_vault(dir: &std::path::Path, fault: Fault) -> (DynStore, Vault) {
    let inner: DynStore = SqliteStore::open(dir).unwrap();
    let store: DynStore = Arc::new(Faulty {
        inner: Arc::clone(&inner),
        fault,
    });
    let vault = Vault::open_with(store, dir, KeySource::File).await.unwrap();
    (inner, vault)
}

#[tokio::test]
async fn a_rewrap_that_fails_leaves_the_old_key_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scope::default_workspace();
    {
        let (_store, vault) = open(dir.path()).await;
        vault.put(&s, "token", "value-1234").await.unwrap();
    }
    let key_text = std::fs::read_to_string(dir.path().join("master.key")).unwrap();

    let (_inner, vault) = faulty_vault(dir.path(), Fault::Before).await;
    let old_id = vault.master_key_id().await;
    let err = vault.rotate_master_key().await.unwrap_err();
    assert!(matches!(err, VaultError::Store(_)), "{err}");
    // Files and memory agree with the database again: the old key.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("master.key")).unwrap(),
        key_text
    );
    assert_eq!(key_files(dir.path()), ["master.key"]);
    assert_eq!(vault.master_key_id().await, old_id);
    assert_eq!(
        vault.get(&s, "token").await.unwrap().unwrap().expose(),
        "value-1234"
    );
    drop((_inner, vault));
    let (_store, vault) = open(dir.path()).await;
    assert_eq!(vault.master_key_id().await, old_id);
    assert_eq!(
        vault.get(&s, "token").await.unwrap().unwrap().expose(),
        "value-1234"
    );
}

#[tokio::test]
async fn a_rewrap_that_committed_despite_an_error_completes_the_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scope::default_workspace();
    {
        let (_store, vault) = open(dir.path()).await;
        vault.put(&s, "token", "value-1234").await.unwrap();
    }

    let (inner, vault) = faulty_vault(dir.path(), Fault::AfterCommit).await;
    let report = vault.rotate_master_key().await.unwrap();
    assert_eq!(vault.master_key_id().await, report.new_master_key_id);
    for (_, k) in inner.all_data_keys().await.unwrap() {
        assert_eq!(k.master_key_id, report.new_master_key_id);
    }
    assert_eq!(key_files(dir.path()), ["master.key"]);
    assert_eq!(
        vault.get(&s, "token").await.unwrap().unwrap().expose(),
        "value-1234"
    );
    drop((inner, vault));
    let (_store, vault) = open(dir.path()).await;
    assert_eq!(vault.master_key_id().await, report.new_master_key_id);
}
