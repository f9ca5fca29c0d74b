//! `/v1/secrets`: write-only secret values, listable names. Values go straight to the vault and
//! are never returned, logged or echoed in errors.

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, TenantScope};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use paddock_store::SecretMeta;
use paddock_types::api::{PutSecret, SecretInfo};
use paddock_vault::VaultError;

fn info(m: SecretMeta) -> SecretInfo {
    SecretInfo {
        name: m.name,
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::InvalidName(_) | VaultError::TooLarge { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                e.to_string(),
            ),
            VaultError::Store(e) => e.into(),
            VaultError::EnvManagedKey => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            other => {
                tracing::error!(error = %other, "vault failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the vault failed; see the server log",
                )
            }
        }
    }
}

pub(crate) async fn put_secret(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PutSecret>,
) -> Result<Response, ApiError> {
    let meta = st.vault.put(&scope, &name, &body.value).await?;
    let status = if meta.created_at == meta.updated_at {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info(meta))).into_response())
}

pub(crate) async fn list_secrets(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
) -> Result<Response, ApiError> {
    let data: Vec<SecretInfo> = st.vault.list(&scope).await?.into_iter().map(info).collect();
    Ok(Json(serde_json::json!({ "data": data })).into_response())
}

pub(crate) async fn delete_secret(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if st.vault.delete(&scope, &name).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("secret"))
    }
}

/// Rotates the installation's master key without stopping: the vault holds its key behind a
/// lock, so concurrent reads wait for the rewrap and then use the new key.
pub(crate) async fn rotate_master_key(State(st): State<AppState>) -> Result<Response, ApiError> {
    let r = st.vault.rotate_master_key().await?;
    tracing::info!(
        old = %r.old_master_key_id,
        new = %r.new_master_key_id,
        data_keys = r.data_keys,
        "master key rotated"
    );
    Ok(Json(serde_json::json!({
        "old_master_key_id": r.old_master_key_id,
        "new_master_key_id": r.new_master_key_id,
        "workspaces": r.workspaces,
        "data_keys": r.data_keys,
    }))
    .into_response())
}
