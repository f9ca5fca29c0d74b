//! Members, login sessions and org creation. Writes run in the writer's batch transaction (see
//! [`super::write`]); reads on the read pool.

use super::write::corrupt;
use crate::{KeyRecord, MemberRecord, Result, SessionRecord, StoreError};
use paddock_types::api::{OrgInfo, WorkspaceInfo};
use paddock_types::time::{Millis, now_ms};
use paddock_types::{MemberId, OrgId, Role, Scope, WorkspaceId};
use rusqlite::{Connection, OptionalExtension, Row, params};

/// The case-insensitive form emails are compared in.
fn norm(email: &str) -> String {
    email.trim().to_lowercase()
}

const MEMBER_COLUMNS: &str = "SELECT m.id, m.email, m.password_hash, m.role, m.workspace, \
     m.created_at, m.removed_at, m.org FROM members m";

type MemberRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Millis,
    Option<Millis>,
    String,
);

fn member_row(r: &Row<'_>) -> rusqlite::Result<MemberRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn decode_member(row: MemberRow) -> Result<(OrgId, MemberRecord)> {
    let (id, email, password_hash, role, ws, created_at, removed_at, org) = row;
    let record = MemberRecord {
        id: MemberId::parse(&id).map_err(corrupt)?,
        email,
        password_hash,
        role: Role::parse(&role).ok_or_else(|| corrupt(format!("unknown role {role:?}")))?,
        workspace: ws
            .as_deref()
            .map(WorkspaceId::parse)
            .transpose()
            .map_err(corrupt)?,
        created_at,
        removed_at,
    };
    Ok((OrgId::parse(&org).map_err(corrupt)?, record))
}

fn workspace_exists(conn: &Connection, org: &str, ws: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM workspaces WHERE org = ?1 AND id = ?2")?
        .exists(params![org, ws])?)
}

// ---------------------------------------------------------------------------------------------
// Writes

pub(super) fn create_member(conn: &Connection, scope: &Scope, m: &MemberRecord) -> Result<()> {
    let org = scope.org.as_str();
    let org_exists = conn
        .prepare_cached("SELECT 1 FROM orgs WHERE id = ?1")?
        .exists(params![org])?;
    if !org_exists {
        return Err(StoreError::NotFound("org"));
    }
    if let Some(ws) = &m.workspace
        && !workspace_exists(conn, org, ws.as_str())?
    {
        return Err(StoreError::NotFound("workspace"));
    }
    let email_norm = norm(&m.email);
    let taken = conn
        .prepare_cached(
            "SELECT 1 FROM members WHERE org = ?1 AND email_norm = ?2 AND removed_at IS NULL",
        )?
        .exists(params![org, email_norm])?;
    if taken {
        return Err(StoreError::AlreadyExists("member"));
    }
    conn.prepare_cached(
        "INSERT INTO members (id, org, email, email_norm, password_hash, role, workspace,
                              created_at, removed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        m.id.as_str(),
        org,
        m.email,
        email_norm,
        m.password_hash,
        m.role.as_str(),
        m.workspace.as_ref().map(|w| w.as_str()),
        m.created_at,
        m.removed_at,
    ])?;
    Ok(())
}

pub(super) fn remove_member(
    conn: &Connection,
    scope: &Scope,
    id: &MemberId,
    at: Millis,
) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE members SET removed_at = ?3
             WHERE org = ?1 AND id = ?2 AND removed_at IS NULL",
        )?
        .execute(params![scope.org.as_str(), id.as_str(), at])?;
    if n == 0 {
        return Ok(false);
    }
    // In the same transaction: no request can see the member removed but its session alive.
    conn.prepare_cached(
        "UPDATE sessions SET revoked_at = ?2 WHERE member = ?1 AND revoked_at IS NULL",
    )?
    .execute(params![id.as_str(), at])?;
    Ok(true)
}

pub(super) fn create_session(conn: &Connection, scope: &Scope, s: &SessionRecord) -> Result<()> {
    let (org, ws) = (scope.org.as_str(), scope.workspace.as_str());
    let active = conn
        .prepare_cached("SELECT 1 FROM members WHERE id = ?1 AND org = ?2 AND removed_at IS NULL")?
        .exists(params![s.member.as_str(), org])?;
    if !active {
        return Err(StoreError::NotFound("member"));
    }
    if !workspace_exists(conn, org, ws)? {
        return Err(StoreError::NotFound("workspace"));
    }
    conn.prepare_cached(
        "INSERT INTO sessions (token_hash, member, org, workspace, created_at, expires_at,
                               revoked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        s.token_hash,
        s.member.as_str(),
        org,
        ws,
        s.created_at,
        s.expires_at,
        s.revoked_at,
    ])?;
    Ok(())
}

pub(super) fn revoke_session(
    conn: &Connection,
    scope: &Scope,
    token_hash: &str,
    at: Millis,
) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE sessions SET revoked_at = ?3
             WHERE token_hash = ?1 AND org = ?2 AND revoked_at IS NULL",
        )?
        .execute(params![token_hash, scope.org.as_str(), at])?;
    Ok(n > 0)
}

pub(super) fn create_org(
    conn: &Connection,
    name: &str,
    workspace_name: &str,
    key: &KeyRecord,
) -> Result<(OrgInfo, WorkspaceInfo)> {
    let taken = conn
        .prepare_cached("SELECT 1 FROM orgs WHERE name IS NOT NULL AND lower(name) = lower(?1)")?
        .exists(params![name])?;
    if taken {
        return Err(StoreError::AlreadyExists("org"));
    }
    let now = now_ms();
    let org = OrgInfo {
        id: OrgId::new(),
        name: Some(name.to_owned()),
        created_at: now,
    };
    conn.prepare_cached("INSERT INTO orgs (id, created_at, name) VALUES (?1, ?2, ?3)")?
        .execute(params![org.id.as_str(), now, name])?;
    let ws = super::write::create_workspace(conn, &org.id, workspace_name)?;
    let scope = Scope {
        org: org.id.clone(),
        workspace: ws.id.clone(),
        end_user: None,
    };
    super::write::create_api_key(conn, &scope, key)?;
    Ok((org, ws))
}

// ---------------------------------------------------------------------------------------------
// Reads

pub(super) fn list_members(conn: &mut Connection, org: &OrgId) -> Result<Vec<MemberRecord>> {
    let rows = conn
        .prepare_cached(&format!(
            "{MEMBER_COLUMNS} WHERE m.org = ?1 AND m.removed_at IS NULL ORDER BY m.created_at, m.id"
        ))?
        .query_map(params![org.as_str()], member_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|r| decode_member(r).map(|(_, m)| m))
        .collect()
}

pub(super) fn get_member(
    conn: &mut Connection,
    org: &OrgId,
    id: &MemberId,
) -> Result<Option<MemberRecord>> {
    let row = conn
        .prepare_cached(&format!("{MEMBER_COLUMNS} WHERE m.id = ?1 AND m.org = ?2"))?
        .query_row(params![id.as_str(), org.as_str()], member_row)
        .optional()?;
    row.map(|r| decode_member(r).map(|(_, m)| m)).transpose()
}

pub(super) fn members_by_email(
    conn: &mut Connection,
    email: &str,
) -> Result<Vec<(OrgId, MemberRecord)>> {
    let rows = conn
        .prepare_cached(&format!(
            "{MEMBER_COLUMNS} WHERE m.email_norm = ?1 AND m.removed_at IS NULL \
             ORDER BY m.created_at, m.id"
        ))?
        .query_map(params![norm(email)], member_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(decode_member).collect()
}

pub(super) fn count_members(conn: &mut Connection) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM members")?
        .query_row([], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

pub(super) fn session_by_hash(
    conn: &mut Connection,
    token_hash: &str,
) -> Result<Option<(Scope, SessionRecord, MemberRecord)>> {
    type Row = (String, String, String, Millis, Millis, Option<Millis>);
    let row: Option<(Row, MemberRow)> = conn
        .prepare_cached(
            "SELECT s.member, s.org, s.workspace, s.created_at, s.expires_at, s.revoked_at,
                    m.id, m.email, m.password_hash, m.role, m.workspace, m.created_at,
                    m.removed_at, m.org
             FROM sessions s JOIN members m ON m.id = s.member
             WHERE s.token_hash = ?1",
        )?
        .query_row(params![token_hash], |r| {
            Ok((
                (
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ),
                (
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                    r.get(11)?,
                    r.get(12)?,
                    r.get(13)?,
                ),
            ))
        })
        .optional()?;
    let Some(((member, org, ws, created_at, expires_at, revoked_at), m)) = row else {
        return Ok(None);
    };
    let (_, member_record) = decode_member(m)?;
    let scope = Scope {
        org: OrgId::parse(&org).map_err(corrupt)?,
        workspace: WorkspaceId::parse(&ws).map_err(corrupt)?,
        end_user: None,
    };
    let session = SessionRecord {
        token_hash: token_hash.to_owned(),
        member: MemberId::parse(&member).map_err(corrupt)?,
        created_at,
        expires_at,
        revoked_at,
    };
    Ok(Some((scope, session, member_record)))
}

pub(super) fn list_orgs(conn: &mut Connection) -> Result<Vec<OrgInfo>> {
    let rows = conn
        .prepare_cached("SELECT id, name, created_at FROM orgs ORDER BY created_at, id")?
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Millis>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(id, name, created_at)| {
            Ok(OrgInfo {
                id: OrgId::parse(&id).map_err(corrupt)?,
                name,
                created_at,
            })
        })
        .collect()
}
