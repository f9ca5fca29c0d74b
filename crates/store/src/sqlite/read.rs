//! Reads, on a small pool of read-only connections used from blocking threads.

use super::write::corrupt;
use super::{BUSY_TIMEOUT, STATEMENT_CACHE, from_json, scope_params};
use crate::audit::{Canonical, Verifier};
use crate::{AgentRecord, AuditFilter, DataKeyRecord, KeyRecord, Result, RunFilter, StoreError};
use paddock_types::KeyId;
use paddock_types::Role;
use paddock_types::api::WorkspaceInfo;
use paddock_types::api::{AgentDefinition, Approval, ApprovalStatus, Page, Run};
use paddock_types::api::{AuditActor, AuditEntry, AuditVerify};
use paddock_types::ids::EndUserId;
use paddock_types::time::Millis;
use paddock_types::{ApprovalId, Event, OrgId, RunId, Scope, WorkspaceId};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params, params_from_iter};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Semaphore;

/// Read-only connections, opened on first use and reused. The semaphore bounds how many reads
/// run at once (and so how many connections exist).
pub(super) struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    closed: AtomicBool,
}

impl Pool {
    pub(super) fn new(path: PathBuf, size: usize) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Arc::new(Semaphore::new(size)),
            closed: AtomicBool::new(false),
        }
    }

    /// Runs `read` on a pooled connection on a blocking thread.
    pub(super) async fn with<T, F>(self: &Arc<Self>, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Backend("the store is closed".to_owned()))?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = match pool.lock().pop() {
                Some(conn) => conn,
                None => open_reader(&pool.path)?,
            };
            let out = read(&mut conn);
            if !pool.closed.load(Ordering::Acquire) {
                pool.lock().push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store read failed: {e}")))?
    }

    /// Closes the idle connections and refuses further reads.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.permits.close();
        self.lock().clear();
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Connection>> {
        // The vector stays valid even if a holder panicked.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn open_reader(path: &std::path::Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

pub(super) fn get_agent(
    conn: &mut Connection,
    scope: &Scope,
    name: &str,
    version: Option<&str>,
) -> Result<Option<AgentRecord>> {
    let (org, ws, _) = scope_params(scope);
    if let Some(version) = version {
        let row = conn
            .prepare_cached(
                "SELECT definition, created_at FROM agents
                 WHERE org = ?1 AND workspace = ?2 AND name = ?3 AND version = ?4",
            )?
            .query_row(params![org, ws, name, version], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()?;
        return row.map(|(d, at)| record(&d, at)).transpose();
    }
    let mut stmt = conn.prepare_cached(
        "SELECT version, definition, created_at FROM agents
         WHERE org = ?1 AND workspace = ?2 AND name = ?3",
    )?;
    let rows = stmt.query_map(params![org, ws, name], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    // Semver order, not string order (1.10.0 > 1.9.0), so pick the latest here.
    let mut best: Option<(semver::Version, String, Millis)> = None;
    for row in rows {
        let (version, def, at) = row?;
        let version = parse_version(&version)?;
        if best.as_ref().is_none_or(|(b, _, _)| version > *b) {
            best = Some((version, def, at));
        }
    }
    best.map(|(_, d, at)| record(&d, at)).transpose()
}

pub(super) fn list_agents(conn: &mut Connection, scope: &Scope) -> Result<Vec<AgentRecord>> {
    let (org, ws, _) = scope_params(scope);
    let mut stmt = conn.prepare_cached(
        "SELECT name, version, definition, created_at FROM agents
         WHERE org = ?1 AND workspace = ?2",
    )?;
    let rows = stmt.query_map(params![org, ws], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut latest: BTreeMap<String, (semver::Version, String, Millis)> = BTreeMap::new();
    for row in rows {
        let (name, version, def, at) = row?;
        let version = parse_version(&version)?;
        match latest.get(&name) {
            Some((v, _, _)) if *v >= version => {}
            _ => {
                latest.insert(name, (version, def, at));
            }
        }
    }
    latest
        .into_values()
        .map(|(_, d, at)| record(&d, at))
        .collect()
}

fn parse_version(v: &str) -> Result<semver::Version> {
    semver::Version::parse(v)
        .map_err(|e| StoreError::Backend(format!("corrupt stored agent version {v:?}: {e}")))
}

fn record(definition: &str, created_at: Millis) -> Result<AgentRecord> {
    Ok(AgentRecord {
        definition: from_json::<AgentDefinition>(definition)?,
        created_at,
    })
}

pub(super) fn get_run(conn: &mut Connection, scope: &Scope, id: &RunId) -> Result<Option<Run>> {
    let (org, ws, end_user) = scope_params(scope);
    let row = conn
        .prepare_cached(
            "SELECT run FROM runs
             WHERE id = ?1 AND org = ?2 AND workspace = ?3 AND (?4 IS NULL OR end_user = ?4)",
        )?
        .query_row(params![id.as_str(), org, ws, end_user], |r| {
            r.get::<_, String>(0)
        })
        .optional()?;
    row.map(|r| from_json(&r)).transpose()
}

/// A SQL filter built from optional parts, so each combination gets its own (cached) statement
/// that can use the matching index.
struct Query {
    sql: String,
    args: Vec<Value>,
}

impl Query {
    fn new(sql: &str, scope: &Scope) -> Self {
        let mut q = Query {
            sql: sql.to_owned(),
            args: vec![
                Value::Text(scope.org.to_string()),
                Value::Text(scope.workspace.to_string()),
            ],
        };
        q.sql.push_str(" WHERE org = ? AND workspace = ?");
        if let Some(eu) = &scope.end_user {
            q.and("end_user = ?", Value::Text(eu.to_string()));
        }
        q
    }

    fn and(&mut self, cond: &str, arg: Value) {
        self.sql.push_str(" AND ");
        self.sql.push_str(cond);
        self.args.push(arg);
    }
}

pub(super) fn list_runs(
    conn: &mut Connection,
    scope: &Scope,
    filter: &RunFilter,
    cursor: Option<&RunId>,
    limit: u32,
) -> Result<Page<Run>> {
    let mut q = Query::new("SELECT run FROM runs", scope);
    if let Some(agent) = &filter.agent {
        q.and("agent = ?", Value::Text(agent.clone()));
    }
    if let Some(status) = filter.status {
        q.and("status = ?", Value::Text(status.as_str().to_owned()));
    }
    if let Some(cursor) = cursor {
        q.and("id < ?", Value::Text(cursor.to_string()));
    }
    q.sql.push_str(" ORDER BY id DESC LIMIT ?");
    // One more than asked tells whether another page exists.
    q.args.push(Value::Integer(i64::from(limit) + 1));
    let mut stmt = conn.prepare_cached(&q.sql)?;
    let rows = stmt
        .query_map(params_from_iter(q.args), |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let runs = rows
        .iter()
        .map(|r| from_json::<Run>(r))
        .collect::<Result<Vec<_>>>()?;
    Ok(page(runs, limit, |r| r.id.to_string()))
}

pub(super) fn page<T>(mut data: Vec<T>, limit: u32, cursor_of: impl Fn(&T) -> String) -> Page<T> {
    let more = data.len() > limit as usize;
    data.truncate(limit as usize);
    let next_cursor = if more {
        data.last().map(cursor_of)
    } else {
        None
    };
    Page { data, next_cursor }
}

pub(super) fn events(
    conn: &mut Connection,
    scope: &Scope,
    run_id: &RunId,
    after: u64,
    limit: u32,
) -> Result<Vec<Event>> {
    let (org, ws, end_user) = scope_params(scope);
    // One snapshot for the scope check and the read.
    let tx = conn.transaction()?;
    let visible = tx
        .prepare_cached(
            "SELECT 1 FROM runs
             WHERE id = ?1 AND org = ?2 AND workspace = ?3 AND (?4 IS NULL OR end_user = ?4)",
        )?
        .exists(params![run_id.as_str(), org, ws, end_user])?;
    if !visible {
        return Err(StoreError::NotFound("run"));
    }
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let mut events = Vec::new();
    {
        // The limit is applied by stopping the scan, not by `LIMIT ?`: SQLite's planner reads a
        // bound LIMIT's value, so every new binding would make it prepare the statement again.
        let mut stmt = tx.prepare_cached(
            "SELECT first_seq, events FROM journal
             WHERE run_id = ?1 AND last_seq > ?2 ORDER BY last_seq",
        )?;
        let mut rows = stmt.query(params![run_id.as_str(), after])?;
        // One row per append (see migration 0010); the first row may start before `after`.
        'rows: while events.len() < limit as usize {
            let Some(row) = rows.next()? else { break };
            let first: i64 = row.get(0)?;
            let text = row.get_ref(1)?.as_str().map_err(|e| {
                StoreError::Backend(format!("corrupt journal row of run {run_id}: {e}"))
            })?;
            let appended: Vec<Stored> = from_json(text)?;
            for (seq, stored) in (first..).zip(appended) {
                if seq <= after {
                    continue;
                }
                if events.len() >= limit as usize {
                    break 'rows;
                }
                events.push(Event {
                    seq: seq as u64,
                    at: stored.at,
                    kind: stored.kind,
                });
            }
        }
    }
    tx.finish()?;
    Ok(events)
}

/// One event of a journal row, which holds the events of one append from its `first_seq` on.
#[derive(serde::Deserialize)]
struct Stored {
    at: Millis,
    kind: paddock_types::EventKind,
}

const APPROVAL_COLUMNS: &str =
    "SELECT id, run_id, agent, call, status, comment, created_at, decided_at FROM approvals";

fn approval(r: &Row<'_>) -> rusqlite::Result<ApprovalRow> {
    Ok(ApprovalRow {
        id: r.get(0)?,
        run_id: r.get(1)?,
        agent: r.get(2)?,
        call: r.get(3)?,
        status: r.get(4)?,
        comment: r.get(5)?,
        created_at: r.get(6)?,
        decided_at: r.get(7)?,
    })
}

struct ApprovalRow {
    id: String,
    run_id: String,
    agent: String,
    call: String,
    status: String,
    comment: Option<String>,
    created_at: Millis,
    decided_at: Option<Millis>,
}

impl ApprovalRow {
    fn decode(self) -> Result<Approval> {
        let corrupt = |what: &str| StoreError::Backend(format!("corrupt stored approval {what}"));
        Ok(Approval {
            id: ApprovalId::parse(&self.id).map_err(|_| corrupt("id"))?,
            run_id: RunId::parse(&self.run_id).map_err(|_| corrupt("run id"))?,
            agent: self.agent,
            call: from_json(&self.call)?,
            status: ApprovalStatus::parse(&self.status).ok_or_else(|| corrupt("status"))?,
            comment: self.comment,
            created_at: self.created_at,
            decided_at: self.decided_at,
        })
    }
}

pub(super) fn get_approval(
    conn: &mut Connection,
    scope: &Scope,
    run_id: &RunId,
    id: &ApprovalId,
) -> Result<Option<Approval>> {
    let mut q = Query::new(APPROVAL_COLUMNS, scope);
    q.and("id = ?", Value::Text(id.to_string()));
    q.and("run_id = ?", Value::Text(run_id.to_string()));
    let row = conn
        .prepare_cached(&q.sql)?
        .query_row(params_from_iter(q.args), approval)
        .optional()?;
    row.map(ApprovalRow::decode).transpose()
}

pub(super) fn list_approvals(
    conn: &mut Connection,
    scope: &Scope,
    status: Option<ApprovalStatus>,
    cursor: Option<&ApprovalId>,
    limit: u32,
) -> Result<Page<Approval>> {
    let mut q = Query::new(APPROVAL_COLUMNS, scope);
    if let Some(status) = status {
        q.and("status = ?", Value::Text(status.as_str().to_owned()));
    }
    if let Some(cursor) = cursor {
        q.and("id > ?", Value::Text(cursor.to_string()));
    }
    q.sql.push_str(" ORDER BY id LIMIT ?");
    q.args.push(Value::Integer(i64::from(limit) + 1));
    let rows = conn
        .prepare_cached(&q.sql)?
        .query_map(params_from_iter(q.args), approval)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let approvals = rows
        .into_iter()
        .map(ApprovalRow::decode)
        .collect::<Result<Vec<_>>>()?;
    Ok(page(approvals, limit, |a| a.id.to_string()))
}

pub(super) fn key_id(r: &Row<'_>, i: usize) -> rusqlite::Result<u32> {
    let id = r.get::<_, i64>(i)?;
    u32::try_from(id).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(i, id))
}

const DATA_KEY_COLUMNS: &str = "key_id, master_key_id, wrapped, nonce, created_at";

fn data_key(r: &Row<'_>, at: usize) -> rusqlite::Result<DataKeyRecord> {
    Ok(DataKeyRecord {
        key_id: key_id(r, at)?,
        master_key_id: r.get(at + 1)?,
        wrapped: r.get(at + 2)?,
        nonce: r.get(at + 3)?,
        created_at: r.get(at + 4)?,
    })
}

pub(super) fn data_keys(conn: &mut Connection, scope: &Scope) -> Result<Vec<DataKeyRecord>> {
    let (org, ws, _) = scope_params(scope);
    let keys = conn
        .prepare_cached(&format!(
            "SELECT {DATA_KEY_COLUMNS} FROM data_keys
             WHERE org = ?1 AND workspace = ?2 ORDER BY key_id"
        ))?
        .query_map(params![org, ws], |r| data_key(r, 0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(keys)
}

pub(super) fn all_data_keys(conn: &mut Connection) -> Result<Vec<(Scope, DataKeyRecord)>> {
    let rows = conn
        .prepare_cached(&format!(
            "SELECT org, workspace, {DATA_KEY_COLUMNS} FROM data_keys
             ORDER BY org, workspace, key_id"
        ))?
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                data_key(r, 2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(org, ws, key)| {
            let scope = Scope {
                org: OrgId::parse(&org).map_err(corrupt)?,
                workspace: WorkspaceId::parse(&ws).map_err(corrupt)?,
                end_user: None,
            };
            Ok((scope, key))
        })
        .collect()
}

pub(super) fn list_workspaces(conn: &mut Connection, org: &OrgId) -> Result<Vec<WorkspaceInfo>> {
    let rows = conn
        .prepare_cached(
            "SELECT id, name, created_at FROM workspaces WHERE org = ?1 ORDER BY created_at, id",
        )?
        .query_map(params![org.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(id, name, created_at)| {
            Ok(WorkspaceInfo {
                id: WorkspaceId::parse(&id).map_err(corrupt)?,
                name,
                created_at,
            })
        })
        .collect()
}

const KEY_COLUMNS: &str = "SELECT id, name, role, prefix, secret_hash, created_at, expires_at, \
     revoked_at, last_used_at, org, workspace, scopes FROM api_keys";

type KeyRow = (
    String,
    String,
    String,
    String,
    String,
    Millis,
    Option<Millis>,
    Option<Millis>,
    Option<Millis>,
    String,
    String,
    Option<String>,
);

fn key_row(r: &Row<'_>) -> rusqlite::Result<KeyRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
    ))
}

fn decode_key(row: KeyRow) -> Result<(Scope, KeyRecord)> {
    let (
        id,
        name,
        role,
        prefix,
        secret_hash,
        created_at,
        expires_at,
        revoked_at,
        last_used_at,
        org,
        ws,
        scopes,
    ) = row;
    let scope = Scope {
        org: OrgId::parse(&org).map_err(corrupt)?,
        workspace: WorkspaceId::parse(&ws).map_err(corrupt)?,
        end_user: None,
    };
    let record = KeyRecord {
        id: paddock_types::KeyId::parse(&id).map_err(corrupt)?,
        name,
        role: Role::parse(&role).ok_or_else(|| corrupt(format!("unknown role {role:?}")))?,
        prefix,
        secret_hash,
        created_at,
        expires_at,
        revoked_at,
        last_used_at,
        scopes: scopes.as_deref().map(from_json).transpose()?,
    };
    Ok((scope, record))
}

pub(super) fn api_key_by_hash(
    conn: &mut Connection,
    hash: &str,
) -> Result<Option<(Scope, KeyRecord)>> {
    let row = conn
        .prepare_cached(&format!("{KEY_COLUMNS} WHERE secret_hash = ?1"))?
        .query_row(params![hash], key_row)
        .optional()?;
    row.map(decode_key).transpose()
}

pub(super) fn list_api_keys(conn: &mut Connection, scope: &Scope) -> Result<Vec<KeyRecord>> {
    let rows = conn
        .prepare_cached(&format!(
            "{KEY_COLUMNS} WHERE org = ?1 AND workspace = ?2 ORDER BY id"
        ))?
        .query_map(
            params![scope.org.as_str(), scope.workspace.as_str()],
            key_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|r| decode_key(r).map(|(_, k)| k))
        .collect()
}

pub(super) fn count_api_keys(conn: &mut Connection) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM api_keys")?
        .query_row([], |r| r.get(0))?;
    Ok(n as u64)
}

const AUDIT_COLUMNS: &str = "SELECT seq, at, actor_kind, actor_key_id, actor_role, \
     actor_end_user, action, resource, outcome, ip, user_agent, detail, prev_hash, hash \
     FROM audit";

type AuditRow = (
    i64,
    Millis,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
);

fn audit_row(r: &Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
    ))
}

fn decode_audit(row: AuditRow) -> Result<AuditEntry> {
    let (
        seq,
        at,
        kind,
        key_id,
        role,
        end_user,
        action,
        resource,
        outcome,
        ip,
        ua,
        detail,
        prev,
        hash,
    ) = row;
    Ok(AuditEntry {
        seq: seq as u64,
        at,
        actor: AuditActor {
            kind,
            key_id: key_id
                .as_deref()
                .filter(|id| !id.starts_with("usr_"))
                .map(KeyId::parse)
                .transpose()
                .map_err(corrupt)?,
            member_id: key_id
                .as_deref()
                .filter(|id| id.starts_with("usr_"))
                .map(paddock_types::MemberId::parse)
                .transpose()
                .map_err(corrupt)?,
            role: role
                .as_deref()
                .map(|r| Role::parse(r).ok_or_else(|| corrupt(format!("unknown role {r}"))))
                .transpose()?,
            end_user: end_user
                .as_deref()
                .map(EndUserId::parse)
                .transpose()
                .map_err(corrupt)?,
        },
        action,
        resource,
        outcome,
        ip,
        user_agent: ua,
        detail: from_json(&detail)?,
        prev_hash: prev,
        hash,
    })
}

pub(super) fn list_audit(
    conn: &mut Connection,
    scope: &Scope,
    filter: &AuditFilter,
    cursor: Option<u64>,
    limit: u32,
) -> Result<Page<AuditEntry>> {
    // The trail is the workspace's: an end-user in the scope does not narrow it.
    let ws_scope = Scope {
        end_user: None,
        ..scope.clone()
    };
    let mut q = Query::new(AUDIT_COLUMNS, &ws_scope);
    if let Some(from) = filter.from {
        q.and("at >= ?", Value::Integer(from));
    }
    if let Some(to) = filter.to {
        q.and("at <= ?", Value::Integer(to));
    }
    if let Some(actor) = &filter.actor {
        q.and("actor_key_id = ?", Value::Text(actor.clone()));
    }
    if let Some(action) = &filter.action {
        q.and("action = ?", Value::Text(action.clone()));
    }
    if let Some(prefix) = &filter.resource_prefix {
        // Exact prefix match (LIKE would treat `_` and `%` in resource names as wildcards).
        q.and(
            "substr(resource, 1, ?) = ?",
            Value::Integer(prefix.chars().count() as i64),
        );
        q.args.push(Value::Text(prefix.clone()));
    }
    if let Some(cursor) = cursor {
        q.and("seq > ?", Value::Integer(cursor as i64));
    }
    q.sql.push_str(" ORDER BY seq LIMIT ?");
    q.args.push(Value::Integer(i64::from(limit) + 1));
    let rows = conn
        .prepare_cached(&q.sql)?
        .query_map(params_from_iter(q.args), audit_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let entries = rows
        .into_iter()
        .map(decode_audit)
        .collect::<Result<Vec<_>>>()?;
    Ok(page(entries, limit, |e| e.seq.to_string()))
}

pub(super) fn verify_audit(conn: &mut Connection, scope: &Scope) -> Result<AuditVerify> {
    verify_audit_tx(conn, scope)
}

pub(super) fn verify_audit_tx(conn: &Connection, scope: &Scope) -> Result<AuditVerify> {
    let (org, ws) = (scope.org.as_str(), scope.workspace.as_str());
    let mut stmt = conn.prepare_cached(&format!(
        "{AUDIT_COLUMNS} WHERE org = ?1 AND workspace = ?2 ORDER BY seq"
    ))?;
    let mut rows = stmt.query(params![org, ws])?;
    let mut verifier = Verifier::default();
    while let Some(r) = rows.next()? {
        // Borrow the row's text in place: no allocation per column on the hot path.
        let seq: i64 = r.get(0)?;
        let text = |i: usize| -> rusqlite::Result<&str> {
            r.get_ref(i)?.as_str().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
            })
        };
        let opt = |i: usize| -> rusqlite::Result<Option<&str>> {
            r.get_ref(i)?.as_str_or_null().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
            })
        };
        let entry = Canonical {
            v: 1,
            org,
            workspace: ws,
            seq: seq as u64,
            at: r.get(1)?,
            actor_kind: text(2)?,
            actor_key_id: opt(3)?,
            actor_role: opt(4)?,
            actor_end_user: opt(5)?,
            action: text(6)?,
            resource: text(7)?,
            outcome: text(8)?,
            ip: opt(9)?,
            user_agent: opt(10)?,
            detail: text(11)?,
            prev_hash: text(12)?,
        };
        if !verifier.push(&entry, text(13)?) {
            break;
        }
    }
    Ok(verifier.finish())
}

pub(super) fn audit_workspaces(conn: &mut Connection) -> Result<Vec<Scope>> {
    audit_workspaces_tx(conn)
}

pub(super) fn audit_workspaces_tx(conn: &Connection) -> Result<Vec<Scope>> {
    let rows = conn
        .prepare_cached("SELECT DISTINCT org, workspace FROM audit ORDER BY org, workspace")?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(org, ws)| {
            Ok(Scope {
                org: OrgId::parse(&org).map_err(corrupt)?,
                workspace: WorkspaceId::parse(&ws).map_err(corrupt)?,
                end_user: None,
            })
        })
        .collect()
}
