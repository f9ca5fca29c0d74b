//! Authentication and authorization, in one place.
//!
//! Every `/v1` route names a [`Permission`] in [`crate::routes`]; [`require`] runs in front of
//! its handler: it reads `Authorization: Bearer pdk_…`, looks the key up by the SHA-256 of the
//! secret, refuses revoked and expired keys (401), checks the permission against the one table
//! ([`paddock_types::auth::allowed`]; 403) and hands the handler a [`Principal`] whose scope
//! comes from the key. The store may keep keys in memory (SQLite does, exactly: see its key
//! cache), but a revocation takes effect on the next request.
//! A member's login session (`Bearer pds_…`, see [`crate::members`]) is accepted the same way:
//! its role is the member's, its scope the workspace the session acts in.
//! `/v1/keys` and `/v1/workspaces` live here too.

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::{AppState, audit};
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use paddock_store::KeyRecord;
use paddock_types::api::{ApiKeyInfo, CreateKey, CreateWorkspace, CreatedKey};
use paddock_types::auth::allowed;
use paddock_types::time::{Millis, now_ms};
use paddock_types::{KeyId, MemberId, Permission, Role, Scope};

/// Who is calling: the key or the member (through a login session), its role, and the tenant it
/// acts in.
#[derive(Debug, Clone)]
pub struct Principal {
    pub actor: Actor,
    pub role: Role,
    pub scope: Scope,
    /// A key narrowed to these permissions (within its role); `None` for every permission of
    /// the role (and for sessions).
    pub scopes: Option<Vec<Permission>>,
}

/// What authenticated a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An API key (`pdk_…`).
    Key(KeyId),
    /// A member's login session (`pds_…`).
    Member(MemberId),
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Key(k) => k.fmt(f),
            Actor::Member(m) => m.fmt(f),
        }
    }
}

impl Principal {
    /// An API key's principal.
    pub fn key(key_id: KeyId, role: Role, scope: Scope) -> Self {
        Self {
            actor: Actor::Key(key_id),
            role,
            scope,
            scopes: None,
        }
    }

    /// Whether the caller may use `permission`: its role holds it (the one table) and, for a
    /// key narrowed to scopes, the scopes name it.
    pub fn may(&self, permission: Permission) -> bool {
        allowed(self.role, permission)
            && self.scopes.as_ref().is_none_or(|s| s.contains(&permission))
    }

    /// Whether the caller is a member's login session rather than an API key.
    pub fn is_session(&self) -> bool {
        matches!(self.actor, Actor::Member(_))
    }

    /// The key or member id: what quotas and logs name the caller by.
    pub fn actor_id(&self) -> &str {
        match &self.actor {
            Actor::Key(k) => k.as_str(),
            Actor::Member(m) => m.as_str(),
        }
    }

    /// `key` or `member`, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        if self.is_session() { "member" } else { "key" }
    }
}

/// `last_used_at` is written at most this often per key: it is a hint, not a log.
const TOUCH_EVERY_MS: Millis = 60_000;
/// Longest key and workspace names.
const MAX_NAME: usize = 100;

fn unauthenticated(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
}

fn forbidden(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
}

/// A key or session that exists but was refused (revoked, expired): attributable, so audited.
pub(crate) struct Refused {
    pub scope: Scope,
    pub actor: Actor,
    pub role: Role,
    pub why: &'static str,
}

/// Resolves the request's key to a principal, or says why not (always 401, or 503 when the
/// store is down), with the refused key when there is one.
pub(crate) async fn authenticate(
    st: &AppState,
    headers: &HeaderMap,
) -> Result<Principal, (ApiError, Option<Refused>)> {
    let plain = |e: ApiError| (e, None);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthenticated("missing API key; send `Authorization: Bearer pdk_…`"))
        .map_err(plain)?;
    let value = value
        .to_str()
        .map_err(|_| unauthenticated("malformed Authorization header"))
        .map_err(plain)?;
    let secret = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, s)| s.trim())
        .ok_or_else(|| unauthenticated("malformed Authorization header; use `Bearer pdk_…`"))
        .map_err(plain)?;
    if secret.starts_with(crate::members::SESSION_PREFIX) {
        return crate::members::authenticate_session(st, secret).await;
    }
    if !paddock_vault::is_api_key_secret(secret) {
        return Err(plain(unauthenticated("malformed API key")));
    }
    let hash = paddock_vault::hash_api_key(secret);
    let store = st.engine.store();
    let (scope, key) = store
        .api_key_by_hash(&hash)
        .await
        .map_err(|e| plain(e.into()))?
        .ok_or_else(|| plain(unauthenticated("unknown API key")))?;
    let now = now_ms();
    let refused = |why: &'static str| {
        (
            unauthenticated(why),
            Some(Refused {
                scope: scope.clone(),
                actor: Actor::Key(key.id.clone()),
                role: key.role,
                why,
            }),
        )
    };
    if key.revoked_at.is_some() {
        return Err(refused("API key revoked"));
    }
    if key.expires_at.is_some_and(|t| t <= now) {
        return Err(refused("API key expired"));
    }
    if key.last_used_at.is_none_or(|t| now - t >= TOUCH_EVERY_MS) {
        let (store, id) = (std::sync::Arc::clone(store), key.id.clone());
        // Off the request path: a lost touch costs nothing.
        tokio::spawn(async move {
            if let Err(e) = store.touch_api_key(&id, now).await {
                tracing::warn!(error = %e, "cannot record API key use");
            }
        });
    }
    Ok(Principal {
        scopes: key.scopes,
        ..Principal::key(key.id, key.role, scope)
    })
}

/// What the middleware of one route knows about it.
#[derive(Clone)]
pub(crate) struct Guard {
    pub state: AppState,
    pub permission: Permission,
    pub method: Method,
    pub template: &'static str,
}

/// The middleware every authenticated route runs: authenticate, check `permission`, run the
/// handler, then record the outcome in the audit trail (see [`crate::audit`]).
pub(crate) async fn require(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    let st = &g.state;
    let origin = audit::Origin::of(&req);
    let path = req.uri().path().to_owned();
    let principal = match authenticate(st, req.headers()).await {
        Ok(p) => p,
        Err((e, refused)) => {
            if let Some(r) = refused {
                audit::record_auth_failed(st, &r.scope, &r.actor, r.role, origin, r.why).await;
            }
            return e.into_response();
        }
    };
    // Only an authenticated request counts against a quota (a 401 costs nothing). A 429 is not
    // audited: recording each refusal would turn a flood into audit writes, the very load the
    // limit sheds; the start of each throttling episode is logged instead.
    let limit = st
        .rate_limiter
        .check(principal.actor_id(), principal.scope.workspace.as_str());
    if !limit.allowed {
        if limit.first_refusal {
            tracing::warn!(actor = %principal.actor, workspace = %principal.scope.workspace, "rate limit reached; answering 429");
        }
        return limit.refusal();
    }
    let mut outcome = audit::Outcome {
        method: &g.method,
        template: g.template,
        path: &path,
        permission: g.permission,
        status: StatusCode::FORBIDDEN,
        note: None,
    };
    let mut principal = principal;
    let response = if principal.may(g.permission) {
        match crate::billing::acting_for(st, &principal, g.permission, req.headers()).await {
            Ok(end_user) => {
                principal.scope.end_user = end_user;
                req.extensions_mut().insert(principal.clone());
                let mut response = next.run(req).await;
                outcome.status = response.status();
                outcome.note = response.extensions_mut().remove::<audit::AuditNote>();
                response
            }
            Err(e) => {
                let response = e.into_response();
                outcome.status = response.status();
                response
            }
        }
    } else {
        forbidden(format!(
            "a {} {} may not {}",
            principal.role,
            principal.kind(),
            g.permission
        ))
        .into_response()
    };
    audit::record(
        st,
        &principal.scope,
        &principal.actor,
        principal.role,
        origin,
        outcome,
    )
    .await;
    let mut response = response;
    limit.write_headers(response.headers_mut());
    response
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        // Absent only on a route wired without a permission: fail closed.
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| unauthenticated("this route requires an API key"))
    }
}

fn info(scope: &Scope, k: KeyRecord) -> ApiKeyInfo {
    ApiKeyInfo {
        id: k.id,
        name: k.name,
        role: k.role,
        workspace: scope.workspace.clone(),
        prefix: k.prefix,
        created_at: k.created_at,
        expires_at: k.expires_at,
        revoked_at: k.revoked_at,
        last_used_at: k.last_used_at,
        scopes: k.scopes,
    }
}

fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    let ok =
        !name.trim().is_empty() && name.len() <= MAX_NAME && name.chars().all(|c| !c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("{what} name must be 1 to {MAX_NAME} bytes without control characters"),
        ))
    }
}

pub(crate) async fn list_keys(
    State(st): State<AppState>,
    p: Principal,
) -> Result<Response, ApiError> {
    let data: Vec<ApiKeyInfo> = st
        .engine
        .store()
        .list_api_keys(&p.scope)
        .await?
        .into_iter()
        .map(|k| info(&p.scope, k))
        .collect();
    Ok(Json(serde_json::json!({ "data": data })).into_response())
}

pub(crate) async fn create_key(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateKey>,
) -> Result<Response, ApiError> {
    check_name("key", &req.name)?;
    if req.role > p.role {
        return Err(forbidden(format!(
            "a {} key cannot create a {} key (above its own role)",
            p.role, req.role
        )));
    }
    let mut scope = Scope {
        end_user: None,
        ..p.scope.clone()
    };
    if let Some(ws) = req.workspace.filter(|ws| *ws != p.scope.workspace) {
        if p.role != Role::Owner {
            return Err(forbidden(
                "only an owner key may create keys in another workspace",
            ));
        }
        // The store refuses a workspace outside the org (404) in the insert's own transaction.
        scope.workspace = ws;
    }
    // Scopes narrow within the new key's role, and a key never mints wider than itself: a
    // scoped key's keys are scoped, to a subset of its own scopes.
    if let Some(scopes) = &req.scopes {
        if scopes.is_empty() || scopes.len() > Permission::ALL.len() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "scopes must list 1 or more permissions (or be left out for the whole role)",
            ));
        }
        if let Some(p) = scopes.iter().find(|p| !allowed(req.role, **p)) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("a {} key cannot hold {p}", req.role),
            ));
        }
    }
    if let Some(own) = &p.scopes {
        let within = req
            .scopes
            .as_ref()
            .is_some_and(|s| s.iter().all(|x| own.contains(x)));
        if !within {
            return Err(forbidden(
                "a scoped key can only create keys scoped to a subset of its own scopes",
            ));
        }
    }
    let scopes = req.scopes.map(|mut s| {
        s.sort();
        s.dedup();
        s
    });
    let now = now_ms();
    let expires_at = match req.expires_in_secs {
        None => None,
        Some(0) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "expires_in_secs must be at least 1",
            ));
        }
        Some(s) => {
            Some(now.saturating_add(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)))
        }
    };
    let secret = paddock_vault::new_api_key_secret()?;
    let record = KeyRecord {
        id: KeyId::new(),
        name: req.name,
        role: req.role,
        prefix: paddock_vault::api_key_display_prefix(&secret),
        secret_hash: paddock_vault::hash_api_key(&secret),
        created_at: now,
        expires_at,
        revoked_at: None,
        last_used_at: None,
        scopes,
    };
    st.engine
        .store()
        .create_api_key(&scope, record.clone())
        .await?;
    tracing::info!(key = %record.id, role = %record.role, by = %p.actor, "api key created");
    let note = audit::AuditNote {
        resource: Some(format!("key/{}", record.id)),
        detail: Some(serde_json::json!({
            "name": record.name,
            "role": record.role,
            "workspace": scope.workspace,
        })),
    };
    let body = CreatedKey {
        key: info(&scope, record),
        secret,
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response.extensions_mut().insert(note);
    response
        .extensions_mut()
        .insert(crate::idempotency::ShownOnce);
    Ok(response)
}

pub(crate) async fn revoke_key(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = KeyId::parse(&id).map_err(|_| ApiError::not_found("key"))?;
    // Revoking is as strong as minting: an admin must not lock the owner out.
    let target = st
        .engine
        .store()
        .list_api_keys(&p.scope)
        .await?
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| ApiError::not_found("key"))?;
    if target.role > p.role {
        return Err(forbidden(format!(
            "a {} key cannot revoke a {} key",
            p.role, target.role
        )));
    }
    if st
        .engine
        .store()
        .revoke_api_key(&p.scope, &id, now_ms())
        .await?
    {
        tracing::info!(key = %id, by = %p.actor, "api key revoked");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("key"))
    }
}

pub(crate) async fn list_workspaces(
    State(st): State<AppState>,
    p: Principal,
) -> Result<Response, ApiError> {
    let data = st.engine.store().list_workspaces(&p.scope).await?;
    Ok(Json(serde_json::json!({ "data": data })).into_response())
}

pub(crate) async fn create_workspace(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateWorkspace>,
) -> Result<Response, ApiError> {
    check_name("workspace", &req.name)?;
    let ws = st
        .engine
        .store()
        .create_workspace(&p.scope, &req.name)
        .await?;
    tracing::info!(workspace = %ws.id, by = %p.actor, "workspace created");
    let note = audit::AuditNote {
        resource: Some(format!("workspace/{}", ws.id)),
        detail: Some(serde_json::json!({ "name": ws.name })),
    };
    let mut response = (StatusCode::CREATED, Json(ws)).into_response();
    response.extensions_mut().insert(note);
    Ok(response)
}
