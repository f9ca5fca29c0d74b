//! Members (people who log in with a password), their login sessions, and orgs.
//!
//! - `POST /v1/sessions` (public): email + password → a session token `pds_…` shown once, kept
//!   only as its SHA-256, valid for [`SessionSettings::ttl`]. A wrong password and an unknown
//!   email get the same 401, and an unknown email is verified against a dummy argon2 hash so the
//!   time taken does not tell them apart. Failures slow down the address that makes them, per
//!   email, with exponential backoff, whether or not the email exists (429 with `Retry-After`;
//!   [`crate::login_throttle`]): nobody can lock a member out.
//! - `DELETE /v1/sessions/current` (public route, authenticated here): ends the caller's session.
//! - [`authenticate_session`]: what [`crate::auth::authenticate`] does with `Bearer pds_…`.
//! - `/v1/members`: list, add, remove. A role may never grant above its own. A principal reaches
//!   the whole org (an owner, or a member not narrowed to a workspace) or only its workspace (any
//!   other API key, a narrowed member): it sees and manages only members within that reach.
//! - `/v1/orgs`: owners of the installation's first org (`org_default`) create orgs, each with
//!   its first workspace and an owner key shown once.
//!
//! Passwords are hashed with argon2id (default parameters) on the blocking pool, never on the
//! async runtime's threads. A password is never returned, logged or audited.

use crate::auth::{Actor, Principal, Refused};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::login_throttle::{LoginThrottle, ThrottleSettings, source_key};
use crate::{AppState, audit};
use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use paddock_store::{KeyRecord, MemberRecord, SessionRecord};
use paddock_types::api::{
    ApiKeyInfo, CreateMember, CreateOrg, CreateSession, CreatedKey, CreatedOrg, CreatedSession,
    MemberInfo,
};
use paddock_types::time::{Millis, now_ms};
use paddock_types::{KeyId, MemberId, OrgId, Role, Scope, WorkspaceId};
use serde_json::{Value, json};
use std::sync::OnceLock;
use std::time::Duration;

/// Session tokens start with this; API keys with `pdk_`.
pub const SESSION_PREFIX: &str = "pds_";
/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest accepted password, in bytes (argon2 hashes whatever it is given: bound the work).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest accepted email (RFC 5321's path limit).
pub const MAX_EMAIL_BYTES: usize = 254;
/// The installation's first org: only its owners create orgs.
pub const BOOTSTRAP_ORG: &str = "org_default";
/// Longest org and workspace names (as for workspaces in `auth`).
const MAX_NAME: usize = 100;

/// How sessions and login throttling behave.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// How long a session works after login.
    pub ttl: Duration,
    /// How failed logins slow down their source ([`crate::login_throttle`]).
    pub throttle: ThrottleSettings,
}

impl Default for SessionSettings {
    /// 12 h sessions and the default throttle.
    fn default() -> Self {
        Self {
            ttl: DEFAULT_SESSION_TTL,
            throttle: ThrottleSettings::default(),
        }
    }
}

/// Session settings and the login throttle's memory (per process).
#[derive(Debug)]
pub struct Sessions {
    settings: SessionSettings,
    throttle: LoginThrottle,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(SessionSettings::default())
    }
}

/// How long a session works when nobody says otherwise.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

impl Sessions {
    pub fn new(settings: SessionSettings) -> Self {
        Self {
            throttle: LoginThrottle::new(settings.throttle),
            settings,
        }
    }

    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }
}

fn unprocessable(detail: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        detail,
    )
}

fn forbidden(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
}

fn unauthenticated(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
}

/// The one answer to a failed login, whatever failed.
fn bad_login() -> ApiError {
    unauthenticated("invalid email or password")
}

/// The case-insensitive form emails are compared and throttled in.
fn norm_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// A plausible address: one `@` with something on each side, no spaces or control characters.
/// (Deliverability is not our business; this keeps garbage and ambiguity out.)
fn check_email(email: &str) -> Result<(), ApiError> {
    let ok = email.len() <= MAX_EMAIL_BYTES
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(unprocessable(format!(
            "email must look like name@example.com (at most {MAX_EMAIL_BYTES} bytes, no spaces)"
        )))
    }
}

fn check_password(password: &str) -> Result<(), ApiError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(unprocessable(format!(
            "password must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(unprocessable(format!(
            "password must be at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    let ok =
        !name.trim().is_empty() && name.len() <= MAX_NAME && name.chars().all(|c| !c.is_control());
    if ok {
        Ok(())
    } else {
        Err(unprocessable(format!(
            "{what} name must be 1 to {MAX_NAME} bytes without control characters"
        )))
    }
}

/// Checks a new member's email and password as `POST /v1/members` does (for the bootstrap
/// owner of `paddock serve`); the error says what is wrong, never the password.
pub fn check_credentials(email: &str, password: &str) -> Result<(), String> {
    check_email(email.trim())
        .and_then(|()| check_password(password))
        .map_err(|e| e.detail)
}

// ---------------------------------------------------------------------------------------------
// Passwords (argon2id, on the blocking pool)

fn internal(what: &str) -> ApiError {
    tracing::error!(what, "password hashing failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; retry later",
    )
}

/// Argon2 runs at most this many at once (each takes ~19 MiB and a core for tens of
/// milliseconds): a flood of logins queues here instead of exhausting memory and the blocking
/// pool the store's reads share. A login that waits longer than [`HASHING_WAIT`] gets 503.
fn hashing() -> &'static tokio::sync::Semaphore {
    static HASHING: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    HASHING.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

const HASHING_WAIT: Duration = Duration::from_secs(10);

async fn hashing_permit() -> Result<tokio::sync::SemaphorePermit<'static>, ApiError> {
    match tokio::time::timeout(HASHING_WAIT, hashing().acquire()).await {
        Ok(Ok(p)) => Ok(p),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many password checks at once; retry shortly",
        )),
    }
}

/// The PHC string of `password` with a fresh salt and argon2id's default parameters.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    let _permit = hashing_permit().await?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
    })
    .await
    .map_err(|_| internal("join"))?
    .map_err(|_| internal("hash"))
}

/// A hash of a random password, made once, that unknown emails are verified against so a
/// login takes as long whether or not the email exists.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(salt.as_str().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Which of `hashes` `password` matches (a malformed stored hash matches nothing). With no
/// hashes, verifies against the dummy so the time spent is the same.
async fn verify_passwords(password: String, hashes: Vec<String>) -> Result<Vec<bool>, ApiError> {
    let _permit = hashing_permit().await?;
    tokio::task::spawn_blocking(move || {
        let verify = |stored: &str| {
            PasswordHash::new(stored)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        };
        if hashes.is_empty() {
            let _ = verify(dummy_hash());
            return Vec::new();
        }
        hashes.iter().map(|h| verify(h)).collect()
    })
    .await
    .map_err(|_| internal("join"))
}

// ---------------------------------------------------------------------------------------------
// Session tokens

fn new_token() -> Result<String, ApiError> {
    // 256 random bits in base64url, like an API key, with our own prefix.
    let key = paddock_vault::new_api_key_secret()?;
    let random = key.split_once('_').map(|(_, r)| r).unwrap_or(&key);
    Ok(format!("{SESSION_PREFIX}{random}"))
}

fn is_token(s: &str) -> bool {
    s.strip_prefix(SESSION_PREFIX).is_some_and(|rest| {
        (32..=256).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

fn hash_token(token: &str) -> String {
    paddock_vault::hash_api_key(token)
}

/// Resolves a `pds_…` token to its member's principal; refuses unknown, revoked and expired
/// sessions and removed members (401), naming the member when there is one.
pub(crate) async fn authenticate_session(
    st: &AppState,
    token: &str,
) -> Result<Principal, (ApiError, Option<Refused>)> {
    let plain = |e: ApiError| (e, None);
    if !is_token(token) {
        return Err(plain(unauthenticated("malformed session token")));
    }
    let (scope, session, member) = st
        .engine
        .store()
        .session_by_hash(&hash_token(token))
        .await
        .map_err(|e| plain(e.into()))?
        .ok_or_else(|| plain(unauthenticated("unknown session; log in again")))?;
    let refused = |why: &'static str| {
        (
            unauthenticated(why),
            Some(Refused {
                scope: scope.clone(),
                actor: Actor::Member(member.id.clone()),
                role: member.role,
                why,
            }),
        )
    };
    if member.removed_at.is_some() {
        return Err(refused("member removed"));
    }
    if session.revoked_at.is_some() {
        return Err(refused("session ended; log in again"));
    }
    if session.expires_at <= now_ms() {
        return Err(refused("session expired; log in again"));
    }
    // Sessions are only made in the member's workspace; a row saying otherwise is refused.
    if member
        .workspace
        .as_ref()
        .is_some_and(|w| *w != scope.workspace)
    {
        return Err(refused("session outside the member's workspace"));
    }
    Ok(Principal {
        actor: Actor::Member(member.id),
        role: member.role,
        scope,
        scopes: None,
    })
}

// ---------------------------------------------------------------------------------------------
// POST /v1/sessions, DELETE /v1/sessions/current

fn member_info(m: MemberRecord) -> MemberInfo {
    MemberInfo {
        id: m.id,
        email: m.email,
        role: m.role,
        workspace: m.workspace,
        created_at: m.created_at,
    }
}

/// Where a failed login of a known member is recorded: the workspace asked for if it is the
/// member's org's, else the member's own, else the org's first.
async fn failure_scope(
    st: &AppState,
    org: &OrgId,
    member: &MemberRecord,
    asked: Option<&WorkspaceId>,
) -> Option<Scope> {
    let workspaces = st
        .engine
        .store()
        .list_workspaces(&org_scope(org))
        .await
        .ok()?;
    let ws = asked
        .filter(|a| workspaces.iter().any(|w| &w.id == *a))
        .or(member.workspace.as_ref())
        .or(workspaces.first().map(|w| &w.id))?
        .clone();
    Some(Scope {
        org: org.clone(),
        workspace: ws,
        end_user: None,
    })
}

/// A scope naming only an org (members and workspace listings ignore the workspace part).
fn org_scope(org: &OrgId) -> Scope {
    Scope {
        org: org.clone(),
        workspace: WorkspaceId::parse("ws_none").unwrap_or_default(),
        end_user: None,
    }
}

pub(crate) async fn create_session(State(st): State<AppState>, req: Request) -> Response {
    match login(&st, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn login(st: &AppState, req: Request) -> Result<Response, ApiError> {
    let origin = audit::Origin::of(&req);
    let source = source_key(
        req.extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip()),
    );
    let ApiJson(body) = ApiJson::<CreateSession>::from_request(req, st).await?;
    if body.email.len() > MAX_EMAIL_BYTES || body.password.len() > MAX_PASSWORD_BYTES {
        return Err(unprocessable(format!(
            "email is at most {MAX_EMAIL_BYTES} bytes and password at most {MAX_PASSWORD_BYTES}"
        )));
    }
    let email = norm_email(&body.email);
    let sessions = &st.sessions;
    let attempt = match sessions.throttle.attempt(&email, &source) {
        Ok(a) => a,
        Err(wait) => {
            // Rounded up: a client that honours Retry-After is not refused again.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            tracing::info!(source = %source, retry_after_secs = secs, "login throttled");
            let mut r = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                format!(
                    "too many failed logins from this address; retry after {secs} s (other \
                     addresses are not affected)"
                ),
            )
            .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            return Ok(r);
        }
    };
    let store = st.engine.store();
    let mut candidates = store.members_by_email(&email).await?;
    if let Some(org) = &body.org {
        candidates.retain(|(o, _)| o == org);
    }
    // Bounded work per attempt, whatever the store holds.
    candidates.truncate(8);
    let hashes = candidates
        .iter()
        .map(|(_, m)| m.password_hash.clone())
        .collect();
    let verdicts = verify_passwords(body.password, hashes).await?;
    let mut matched: Vec<(OrgId, MemberRecord)> = Vec::new();
    for ((org, m), ok) in candidates.iter().zip(&verdicts) {
        if *ok {
            matched.push((org.clone(), m.clone()));
        }
    }
    let Some((org, member)) = matched.first().cloned() else {
        tracing::info!("login failed");
        // Recorded off the answer's path: waiting for these writes would make a known email's
        // failure slower than an unknown one's.
        let (st, asked) = (st.clone(), body.workspace.clone());
        tokio::spawn(async move {
            for (org, m) in &candidates {
                if let Some(scope) = failure_scope(&st, org, m, asked.as_ref()).await {
                    audit::record_auth_failed(
                        &st,
                        &scope,
                        &Actor::Member(m.id.clone()),
                        m.role,
                        origin.clone(),
                        "wrong password",
                    )
                    .await;
                }
            }
        });
        return Err(bad_login());
    };
    if matched.len() > 1 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ambiguous_login",
            "this email is a member of several orgs; pass `org` to choose one",
        ));
    }
    sessions.throttle.succeeded(attempt);
    let workspaces = store.list_workspaces(&org_scope(&org)).await?;
    let workspace = match (&body.workspace, &member.workspace) {
        (Some(asked), Some(own)) if asked != own => None,
        (Some(asked), _) => workspaces
            .iter()
            .find(|w| &w.id == asked)
            .map(|w| w.id.clone()),
        (None, Some(own)) => Some(own.clone()),
        (None, None) => workspaces.first().map(|w| w.id.clone()),
    }
    .ok_or_else(|| forbidden("this member may not act in that workspace"))?;
    let scope = Scope {
        org: org.clone(),
        workspace,
        end_user: None,
    };
    let token = new_token()?;
    let now = now_ms();
    let ttl = Millis::try_from(sessions.settings.ttl.as_millis()).unwrap_or(Millis::MAX);
    let record = SessionRecord {
        token_hash: hash_token(&token),
        member: member.id.clone(),
        created_at: now,
        expires_at: now.saturating_add(ttl),
        revoked_at: None,
    };
    store.create_session(&scope, record.clone()).await?;
    tracing::info!(member = %member.id, workspace = %scope.workspace, "member logged in");
    audit::record_event(
        st,
        &scope,
        &Actor::Member(member.id.clone()),
        member.role,
        origin,
        "session.created",
        "ok",
        json!({ "expires_at": paddock_types::time::rfc3339(record.expires_at) }),
    )
    .await;
    let body = CreatedSession {
        token,
        expires_at: record.expires_at,
        role: member.role,
        org: scope.org.clone(),
        workspace: scope.workspace.clone(),
        member: member_info(member),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub(crate) async fn end_session(State(st): State<AppState>, req: Request) -> Response {
    let origin = audit::Origin::of(&req);
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned());
    let Some(token) = token.filter(|t| t.starts_with(SESSION_PREFIX)) else {
        return unauthenticated(
            "send the session to end as `Authorization: Bearer pds_…` (API keys are revoked \
             with DELETE /v1/keys/{id})",
        )
        .into_response();
    };
    let p = match authenticate_session(&st, &token).await {
        Ok(p) => p,
        Err((e, _)) => return e.into_response(),
    };
    match st
        .engine
        .store()
        .revoke_session(&p.scope, &hash_token(&token), now_ms())
        .await
    {
        Ok(_) => {}
        Err(e) => return ApiError::from(e).into_response(),
    }
    tracing::info!(member = %p.actor, "member logged out");
    audit::record_event(
        &st,
        &p.scope,
        &p.actor,
        p.role,
        origin,
        "session.ended",
        "ok",
        json!({}),
    )
    .await;
    StatusCode::NO_CONTENT.into_response()
}

// ---------------------------------------------------------------------------------------------
// /v1/members

/// Whether `p` reaches every workspace of its org: owners, and members not narrowed to one.
async fn org_wide(st: &AppState, p: &Principal) -> Result<bool, ApiError> {
    if p.role == Role::Owner {
        return Ok(true);
    }
    Ok(match &p.actor {
        Actor::Key(_) => false,
        Actor::Member(id) => st
            .engine
            .store()
            .get_member(&p.scope, id)
            .await?
            .is_some_and(|m| m.workspace.is_none()),
    })
}

/// Whether a member narrowed to `ws` (or org-wide when `None`) is visible to `p`.
fn visible(p: &Principal, org_wide: bool, ws: Option<&WorkspaceId>) -> bool {
    org_wide || ws.is_none() || ws == Some(&p.scope.workspace)
}

pub(crate) async fn list_members(
    State(st): State<AppState>,
    p: Principal,
) -> Result<Response, ApiError> {
    let wide = org_wide(&st, &p).await?;
    let data: Vec<MemberInfo> = st
        .engine
        .store()
        .list_members(&p.scope)
        .await?
        .into_iter()
        .filter(|m| visible(&p, wide, m.workspace.as_ref()))
        .map(member_info)
        .collect();
    Ok(Json(json!({ "data": data })).into_response())
}

pub(crate) async fn add_member(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateMember>,
) -> Result<Response, ApiError> {
    let email = req.email.trim().to_owned();
    check_email(&email)?;
    check_password(&req.password)?;
    if req.role > p.role {
        return Err(forbidden(format!(
            "a {} {} cannot add a {} member (above its own role)",
            p.role,
            p.kind(),
            req.role
        )));
    }
    if req.role == Role::Owner && req.workspace.is_some() {
        return Err(unprocessable(
            "an owner holds the whole org and cannot be narrowed to a workspace",
        ));
    }
    if !org_wide(&st, &p).await? {
        match &req.workspace {
            None => {
                return Err(forbidden(format!(
                    "a {} {} acting in one workspace can only add members narrowed to it; pass \
                     \"workspace\": \"{}\"",
                    p.role,
                    p.kind(),
                    p.scope.workspace
                )));
            }
            Some(ws) if *ws != p.scope.workspace => {
                return Err(forbidden("cannot add members to another workspace"));
            }
            Some(_) => {}
        }
    }
    let record = MemberRecord {
        id: MemberId::new(),
        email,
        password_hash: hash_password(req.password).await?,
        role: req.role,
        workspace: req.workspace,
        created_at: now_ms(),
        removed_at: None,
    };
    // The store checks the org has the workspace and the email is free, in its transaction.
    st.engine
        .store()
        .create_member(&p.scope, record.clone())
        .await?;
    tracing::info!(member = %record.id, role = %record.role, by = %p.actor, "member added");
    let note = audit::AuditNote {
        resource: Some(format!("member/{}", record.id)),
        detail: Some(json!({
            "email": record.email,
            "role": record.role,
            "workspace": record.workspace,
        })),
    };
    let mut response = (StatusCode::CREATED, Json(member_info(record))).into_response();
    response.extensions_mut().insert(note);
    Ok(response)
}

pub(crate) async fn remove_member(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = MemberId::parse(&id).map_err(|_| ApiError::not_found("member"))?;
    let wide = org_wide(&st, &p).await?;
    let target = st
        .engine
        .store()
        .get_member(&p.scope, &id)
        .await?
        .filter(|m| m.removed_at.is_none() && visible(&p, wide, m.workspace.as_ref()))
        .ok_or_else(|| ApiError::not_found("member"))?;
    if target.workspace.is_none() && !wide {
        return Err(forbidden(
            "only an owner or an org-wide member may remove an org-wide member",
        ));
    }
    // Removing is as strong as adding: an admin must not lock the owner out.
    if target.role > p.role {
        return Err(forbidden(format!(
            "a {} {} cannot remove a {} member",
            p.role,
            p.kind(),
            target.role
        )));
    }
    if !st
        .engine
        .store()
        .remove_member(&p.scope, &id, now_ms())
        .await?
    {
        return Err(ApiError::not_found("member"));
    }
    tracing::info!(member = %id, by = %p.actor, "member removed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------------------------------------
// /v1/orgs

fn check_bootstrap_org(p: &Principal) -> Result<(), ApiError> {
    if p.scope.org.as_str() == BOOTSTRAP_ORG {
        Ok(())
    } else {
        Err(forbidden(
            "only owners of the installation's first org may manage orgs",
        ))
    }
}

pub(crate) async fn list_orgs(
    State(st): State<AppState>,
    p: Principal,
) -> Result<Response, ApiError> {
    check_bootstrap_org(&p)?;
    let data = st.engine.store().list_orgs().await?;
    Ok(Json(json!({ "data": data })).into_response())
}

pub(crate) async fn create_org(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateOrg>,
) -> Result<Response, ApiError> {
    check_bootstrap_org(&p)?;
    check_name("org", &req.name)?;
    let ws_name = req.workspace_name.unwrap_or_else(|| "default".to_owned());
    check_name("workspace", &ws_name)?;
    let secret = paddock_vault::new_api_key_secret()?;
    let key = KeyRecord {
        id: KeyId::new(),
        name: "owner (org created)".to_owned(),
        role: Role::Owner,
        prefix: paddock_vault::api_key_display_prefix(&secret),
        secret_hash: paddock_vault::hash_api_key(&secret),
        created_at: now_ms(),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        scopes: None,
    };
    let (org, workspace) = st
        .engine
        .store()
        .create_org(req.name.trim(), &ws_name, key.clone())
        .await?;
    tracing::info!(org = %org.id, by = %p.actor, "org created");
    let note = audit::AuditNote {
        resource: Some(format!("org/{}", org.id)),
        detail: Some(json!({ "name": org.name, "workspace": workspace.id, "key": key.id })),
    };
    let body = CreatedOrg {
        key: CreatedKey {
            key: ApiKeyInfo {
                id: key.id,
                name: key.name,
                role: key.role,
                workspace: workspace.id.clone(),
                prefix: key.prefix,
                created_at: key.created_at,
                expires_at: None,
                revoked_at: None,
                last_used_at: None,
                scopes: None,
            },
            secret,
        },
        org,
        workspace,
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response.extensions_mut().insert(note);
    response
        .extensions_mut()
        .insert(crate::idempotency::ShownOnce);
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// OpenAPI

fn problems(codes: &[u16]) -> serde_json::Map<String, Value> {
    codes
        .iter()
        .map(|c| {
            (
                c.to_string(),
                json!({"description": "error", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}),
            )
        })
        .collect()
}

fn ok(status: &str, description: &str, schema: Value, errors: &[u16]) -> Value {
    let mut m = problems(errors);
    m.insert(
        status.to_owned(),
        json!({"description": description, "content": {"application/json": {"schema": schema}}}),
    );
    Value::Object(m)
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn list_of(name: &str) -> Value {
    json!({"type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": schema(name)}}})
}

fn body(name: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema(name)}}})
}

/// Adds this module's paths and schemas to the OpenAPI document.
pub(crate) fn add_openapi(doc: &mut Value) {
    let no_content = |errors: &[u16]| {
        let mut m = problems(errors);
        m.insert("204".to_owned(), json!({"description": "done"}));
        Value::Object(m)
    };
    let paths = json!({
        "/v1/sessions": {"post": {
            "summary": "Log in with an email and password (public). The token is in this answer only; send it as `Authorization: Bearer pds_…` like an API key. A wrong password and an unknown email get the same 401; repeated failures for an email get 429 with Retry-After",
            "requestBody": body("CreateSession"),
            "responses": ok("201", "the session (token shown once)", schema("CreatedSession"), &[400, 401, 403, 409, 415, 422, 429])}},
        "/v1/sessions/current": {"delete": {
            "summary": "Log out: ends the session whose token is sent as `Authorization: Bearer pds_…` (effective at once)",
            "responses": no_content(&[401])}},
        "/v1/members": {
            "get": {"summary": "List the org's members within the caller's reach (all of them for owners and org-wide members; otherwise org-wide members and those narrowed to the caller's workspace). Never passwords",
                "responses": ok("200", "members", list_of("MemberInfo"), &[])},
            "post": {"summary": "Add a member with a password (12 characters to 1024 bytes). The role may not be above the caller's; a caller acting in one workspace only adds members narrowed to it",
                "requestBody": body("CreateMember"),
                "responses": ok("201", "the member", schema("MemberInfo"), &[400, 404, 409, 415, 422])}},
        "/v1/members/{id}": {"delete": {
            "summary": "Remove a member: its sessions stop working at once",
            "parameters": [{"name": "id", "in": "path", "required": true, "description": "member id (`usr_…`)", "schema": {"type": "string"}}],
            "responses": no_content(&[404])}},
        "/v1/orgs": {
            "get": {"summary": "List the installation's orgs (owners of the first org only)",
                "responses": ok("200", "orgs", list_of("OrgInfo"), &[])},
            "post": {"summary": "Create an org with its first workspace and an owner API key, whose secret is in this answer only (owners of the first org only)",
                "requestBody": body("CreateOrg"),
                "responses": ok("201", "the org, its workspace and its owner key", schema("CreatedOrg"), &[400, 409, 415, 422])}}
    });
    let date = json!({"type": "string", "format": "date-time"});
    let schemas = json!({
        "CreateSession": {"type": "object", "required": ["email", "password"], "additionalProperties": false, "properties": {
            "email": {"type": "string"}, "password": {"type": "string", "writeOnly": true, "maxLength": MAX_PASSWORD_BYTES},
            "workspace": {"type": "string", "description": "workspace to act in (default: the member's, or the org's first)"},
            "org": {"type": "string", "description": "only when the email is a member of several orgs"}}},
        "CreatedSession": {"type": "object", "required": ["token", "expires_at", "member", "org", "workspace", "role"], "properties": {
            "token": {"type": "string", "description": "`pds_…`: shown once, stored only hashed"},
            "expires_at": date, "member": schema("MemberInfo"), "org": {"type": "string"},
            "workspace": {"type": "string"}, "role": schema("Role")}},
        "CreateMember": {"type": "object", "required": ["email", "password", "role"], "additionalProperties": false, "properties": {
            "email": {"type": "string", "maxLength": MAX_EMAIL_BYTES},
            "password": {"type": "string", "writeOnly": true, "minLength": MIN_PASSWORD_CHARS, "maxLength": MAX_PASSWORD_BYTES},
            "role": schema("Role"),
            "workspace": {"type": "string", "description": "narrow the member to this workspace (not for owners)"}}},
        "MemberInfo": {"type": "object", "required": ["id", "email", "role", "created_at"], "properties": {
            "id": {"type": "string"}, "email": {"type": "string"}, "role": schema("Role"),
            "workspace": {"type": ["string", "null"], "description": "null: every workspace of the org"},
            "created_at": date}},
        "CreateOrg": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
            "name": {"type": "string"}, "workspace_name": {"type": "string", "description": "default `default`"}}},
        "OrgInfo": {"type": "object", "required": ["id", "created_at"], "properties": {
            "id": {"type": "string"}, "name": {"type": ["string", "null"]}, "created_at": date}},
        "CreatedOrg": {"type": "object", "required": ["org", "workspace", "key"], "properties": {
            "org": schema("OrgInfo"), "workspace": schema("WorkspaceInfo"), "key": schema("CreatedKey")}}
    });
    for (key, add) in [("paths", paths), ("components/schemas", schemas)] {
        if let (Some(Value::Object(target)), Value::Object(add)) =
            (doc.pointer_mut(&format!("/{key}")), add)
        {
            target.extend(add);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_passwords_are_checked() {
        for ok in ["a@b.c", "Ann.Lee+x@example.com", "x@localhost"] {
            assert!(check_email(ok).is_ok(), "{ok}");
        }
        let long = format!("{}@x.io", "a".repeat(MAX_EMAIL_BYTES));
        for bad in [
            "",
            "a",
            "@b.c",
            "a@",
            "a b@c.d",
            "a@b@c",
            "a@b\n",
            long.as_str(),
        ] {
            assert!(check_email(bad).is_err(), "{bad:?}");
        }
        assert!(check_password("correct horse").is_ok());
        assert!(check_password("short").is_err());
        assert!(check_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        // Characters, not bytes, for the minimum.
        assert!(check_password(&"é".repeat(MIN_PASSWORD_CHARS)).is_ok());
    }

    #[test]
    fn tokens_have_their_own_shape() {
        let t = new_token().unwrap_or_default();
        assert!(t.starts_with(SESSION_PREFIX) && is_token(&t), "{t}");
        assert!(!is_token("pds_short"));
        assert!(!is_token(&t.replace(SESSION_PREFIX, "pdk_")));
    }
}
