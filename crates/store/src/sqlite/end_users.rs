//! End-users of a workspace: a SaaS builder's customers, on whose behalf an API key acts.

use super::read::page;
use super::{from_json, scope_params, to_json};
use crate::{Result, StoreError};
use paddock_types::api::Page;
use paddock_types::billing::EndUser;
use paddock_types::{EndUserId, Scope};
use rusqlite::{Connection, OptionalExtension, Row, params};

const COLUMNS: &str = "SELECT id, external_id, metadata, created_at FROM end_users";

fn end_user(r: &Row<'_>) -> rusqlite::Result<(String, String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn decode(
    (id, external_id, metadata, created_at): (String, String, String, i64),
) -> Result<EndUser> {
    Ok(EndUser {
        id: EndUserId::parse(&id)
            .map_err(|e| StoreError::Backend(format!("corrupt stored end-user id: {e}")))?,
        external_id,
        metadata: from_json(&metadata)?,
        created_at,
    })
}

pub(super) fn create(conn: &Connection, scope: &Scope, user: &EndUser) -> Result<EndUser> {
    let (org, ws, _) = scope_params(scope);
    let taken = conn
        .prepare_cached(
            "SELECT 1 FROM end_users WHERE org = ?1 AND workspace = ?2 AND external_id = ?3",
        )?
        .exists(params![org, ws, user.external_id])?;
    if taken {
        return Err(StoreError::AlreadyExists("end-user"));
    }
    conn.prepare_cached(
        "INSERT INTO end_users (id, org, workspace, external_id, metadata, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        user.id.as_str(),
        org,
        ws,
        user.external_id,
        to_json(&user.metadata)?,
        user.created_at
    ])?;
    Ok(user.clone())
}

pub(super) fn delete(conn: &Connection, scope: &Scope, id: &EndUserId) -> Result<bool> {
    let (org, ws, _) = scope_params(scope);
    let n = conn
        .prepare_cached("DELETE FROM end_users WHERE id = ?1 AND org = ?2 AND workspace = ?3")?
        .execute(params![id.as_str(), org, ws])?;
    Ok(n > 0)
}

/// By id (`eu_…`) or, when `key` is not an end-user id, by external id.
pub(super) fn find(conn: &mut Connection, scope: &Scope, key: &str) -> Result<Option<EndUser>> {
    let (org, ws, _) = scope_params(scope);
    let column = if EndUserId::parse(key).is_ok() {
        "id"
    } else {
        "external_id"
    };
    let row = conn
        .prepare_cached(&format!(
            "{COLUMNS} WHERE {column} = ?1 AND org = ?2 AND workspace = ?3"
        ))?
        .query_row(params![key, org, ws], end_user)
        .optional()?;
    row.map(decode).transpose()
}

pub(super) fn list(
    conn: &mut Connection,
    scope: &Scope,
    cursor: Option<&EndUserId>,
    limit: u32,
) -> Result<Page<EndUser>> {
    let (org, ws, _) = scope_params(scope);
    let rows = conn
        .prepare_cached(&format!(
            "{COLUMNS} WHERE org = ?1 AND workspace = ?2 AND (?3 IS NULL OR id > ?3)
             ORDER BY id LIMIT ?4"
        ))?
        .query_map(
            params![org, ws, cursor.map(|c| c.as_str()), i64::from(limit) + 1],
            end_user,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let users = rows.into_iter().map(decode).collect::<Result<Vec<_>>>()?;
    Ok(page(users, limit, |u| u.id.to_string()))
}
