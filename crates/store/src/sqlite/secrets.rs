//! Sealed secrets of a workspace and of its end-users. A row's `owner` is `''` for the
//! workspace or the end-user's id; an end-user's secret shadows the workspace's of that name.

use super::read::key_id;
use super::scope_params;
use crate::{Result, SecretMeta, SecretRecord, StoreError};
use paddock_types::{EndUserId, Scope};
use rusqlite::{Connection, OptionalExtension, Row, params};

const COLUMNS: &str =
    "SELECT name, key_id, nonce, ciphertext, created_at, updated_at, owner FROM secrets";

/// The owner column for the scope: its end-user, or `''` (the workspace).
fn owner(scope: &Scope) -> &str {
    scope.end_user.as_ref().map_or("", |e| e.as_str())
}

fn secret(r: &Row<'_>) -> rusqlite::Result<SecretRecord> {
    let owner: String = r.get(6)?;
    let end_user = match owner.as_str() {
        "" => None,
        id => Some(EndUserId::parse(id).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, e.into())
        })?),
    };
    Ok(SecretRecord {
        name: r.get(0)?,
        end_user,
        key_id: key_id(r, 1)?,
        nonce: r.get(2)?,
        ciphertext: r.get(3)?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
    })
}

pub(super) fn put_secret(
    conn: &Connection,
    scope: &Scope,
    secret: &SecretRecord,
) -> Result<SecretMeta> {
    let (org, ws, _) = scope_params(scope);
    if secret.end_user != scope.end_user {
        return Err(StoreError::Backend(
            "a secret must be stored in its owner's scope".to_owned(),
        ));
    }
    // Checked here for a clear error; the foreign key backs it up.
    let has_key = conn
        .prepare_cached(
            "SELECT 1 FROM data_keys WHERE org = ?1 AND workspace = ?2 AND key_id = ?3",
        )?
        .exists(params![org, ws, i64::from(secret.key_id)])?;
    if !has_key {
        return Err(StoreError::NotFound("data key"));
    }
    let (created_at, updated_at) = conn
        .prepare_cached(
            "INSERT INTO secrets
               (org, workspace, owner, name, key_id, nonce, ciphertext, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (org, workspace, owner, name) DO UPDATE SET
               key_id = excluded.key_id, nonce = excluded.nonce,
               ciphertext = excluded.ciphertext, updated_at = excluded.updated_at
             RETURNING created_at, updated_at",
        )?
        .query_row(
            params![
                org,
                ws,
                owner(scope),
                secret.name,
                i64::from(secret.key_id),
                secret.nonce,
                secret.ciphertext,
                secret.created_at,
                secret.updated_at,
            ],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )?;
    Ok(SecretMeta {
        name: secret.name.clone(),
        created_at,
        updated_at,
    })
}

pub(super) fn delete_secret(conn: &Connection, scope: &Scope, name: &str) -> Result<bool> {
    let (org, ws, _) = scope_params(scope);
    let deleted = conn
        .prepare_cached(
            "DELETE FROM secrets WHERE org = ?1 AND workspace = ?2 AND owner = ?3 AND name = ?4",
        )?
        .execute(params![org, ws, owner(scope), name])?;
    Ok(deleted > 0)
}

/// The end-user's secret if it has one by this name, else the workspace's.
pub(super) fn get_secret(
    conn: &mut Connection,
    scope: &Scope,
    name: &str,
) -> Result<Option<SecretRecord>> {
    let (org, ws, _) = scope_params(scope);
    // An end-user id sorts after '' so the end-user's own row comes first.
    let row = conn
        .prepare_cached(&format!(
            "{COLUMNS} WHERE org = ?1 AND workspace = ?2 AND name = ?3 AND owner IN ('', ?4)
             ORDER BY owner DESC LIMIT 1"
        ))?
        .query_row(params![org, ws, name, owner(scope)], secret)
        .optional()?;
    Ok(row)
}

/// The scope owner's own secrets (the workspace's, or the end-user's), without values.
pub(super) fn list_secrets(conn: &mut Connection, scope: &Scope) -> Result<Vec<SecretMeta>> {
    let (org, ws, _) = scope_params(scope);
    // Values are not even read: a listing cannot leak what it never loads.
    let metas = conn
        .prepare_cached(
            "SELECT name, created_at, updated_at FROM secrets
             WHERE org = ?1 AND workspace = ?2 AND owner = ?3 ORDER BY name",
        )?
        .query_map(params![org, ws, owner(scope)], |r| {
            Ok(SecretMeta {
                name: r.get(0)?,
                created_at: r.get(1)?,
                updated_at: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(metas)
}

/// The workspace's secrets and, with an end-user, the end-user's as well.
pub(super) fn all_secrets(conn: &mut Connection, scope: &Scope) -> Result<Vec<SecretRecord>> {
    let (org, ws, _) = scope_params(scope);
    let secrets = conn
        .prepare_cached(&format!(
            "{COLUMNS} WHERE org = ?1 AND workspace = ?2 AND owner IN ('', ?3)
             ORDER BY name, owner"
        ))?
        .query_map(params![org, ws, owner(scope)], secret)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(secrets)
}
