//! The audit trail: recording (one helper, [`record`], called from the auth middleware where
//! the principal, the route and the outcome are all known) and `/v1/audit`.
//!
//! What is recorded: every successful creating or changing request (`POST`, `PUT`, `DELETE`)
//! as outcome `ok`; every 403 (any method) as `denied`; 401s of a key that exists but is revoked
//! or expired as `auth.failed` in that key's workspace. A 401 for a missing, malformed or
//! unknown key is NOT recorded: it cannot be attributed to a workspace, and writing it anywhere
//! would let anyone on the network grow a trail without a key (it is logged instead). Read-only
//! `GET`s that succeed are not audited. If appending fails the request still succeeds (the action
//! already happened); the failure is logged at error level.

use crate::AppState;
use crate::auth::Actor;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use paddock_store::{AuditFilter, NewAuditEntry};
use paddock_types::api::AuditActor;
use paddock_types::time::now_ms;
use paddock_types::{Permission, Role, Scope};
use serde::Deserialize;

/// Set by a handler on its response to name the resource it created (when the path does not)
/// and add small, secret-free facts.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditNote {
    pub resource: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// Where a request came from.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Origin {
    pub(crate) fn of(req: &axum::extract::Request) -> Self {
        let ip = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        Self {
            ip,
            user_agent: user_agent(req.headers()),
        }
    }
}

fn user_agent(h: &HeaderMap) -> Option<String> {
    h.get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        // Bounded: the header is attacker-chosen.
        .map(|s| s.chars().take(256).collect())
}

/// The stable action name of a changing route.
fn action_of(method: &Method, template: &str) -> Option<&'static str> {
    Some(match (method.as_str(), template) {
        ("POST", "/v1/runs") => "run.created",
        ("POST", "/v1/runs/{id}/cancel") => "run.cancelled",
        ("POST", "/v1/runs/{id}/approvals/{approval_id}") => "approval.decided",
        ("PUT", "/v1/agents/{name}") => "agent.registered",
        ("PUT", "/v1/secrets/{name}") => "secret.written",
        ("DELETE", "/v1/secrets/{name}") => "secret.deleted",
        ("POST", "/v1/vault/rotate") => "vault.rotated",
        ("POST", "/v1/keys") => "key.created",
        ("DELETE", "/v1/keys/{id}") => "key.revoked",
        ("POST", "/v1/workspaces") => "workspace.created",
        ("POST", "/v1/members") => "member.added",
        ("DELETE", "/v1/members/{id}") => "member.removed",
        ("POST", "/v1/orgs") => "org.created",
        _ => return None,
    })
}

/// The resource a route acts on, from its path: `/v1/runs/{id}/cancel` → `run/run_…`.
fn resource_of(template: &str, path: &str) -> String {
    let t: Vec<&str> = template.trim_start_matches("/v1/").split('/').collect();
    let p: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    let mut out = Vec::new();
    for (i, seg) in t.iter().enumerate() {
        if seg.starts_with('{') {
            let kind = t.get(i.wrapping_sub(1)).copied().unwrap_or("");
            out.push(format!(
                "{}/{}",
                kind.trim_end_matches('s'),
                p.get(i).copied().unwrap_or("")
            ));
        }
    }
    if out.is_empty() {
        t.first().copied().unwrap_or("").to_owned()
    } else {
        out.join("/")
    }
}

/// Everything known about a request once it has been answered.
pub(crate) struct Outcome<'a> {
    pub method: &'a Method,
    pub template: &'a str,
    pub path: &'a str,
    pub permission: Permission,
    pub status: StatusCode,
    pub note: Option<AuditNote>,
}

/// THE recording helper: decides whether the request is audited and appends the entry.
pub(crate) async fn record(
    st: &AppState,
    scope: &Scope,
    actor: &Actor,
    role: Role,
    origin: Origin,
    o: Outcome<'_>,
) {
    let action = action_of(o.method, o.template);
    let (action, outcome) = if o.status == StatusCode::FORBIDDEN {
        // A denied read is named by the permission it lacked.
        (
            action
                .map(str::to_owned)
                .unwrap_or_else(|| o.permission.to_string()),
            "denied",
        )
    } else if o.status.is_success() && o.method != Method::GET {
        match action {
            Some(a) => (a.to_owned(), "ok"),
            None => return,
        }
    } else {
        return;
    };
    let note = o.note.unwrap_or_default();
    let entry = NewAuditEntry {
        at: now_ms(),
        // An API key acting for an end-user (impersonation) names it.
        actor: AuditActor {
            end_user: scope.end_user.clone(),
            ..audit_actor(actor, role)
        },
        action,
        resource: note
            .resource
            .unwrap_or_else(|| resource_of(o.template, o.path)),
        outcome: outcome.to_owned(),
        ip: origin.ip,
        user_agent: origin.user_agent,
        detail: note.detail.unwrap_or_else(|| serde_json::json!({})),
    };
    append(st, scope, entry).await;
}

/// Who did it, as the trail names it: the key, or the member of a login session.
pub(crate) fn audit_actor(actor: &Actor, role: Role) -> AuditActor {
    match actor {
        Actor::Key(k) => AuditActor {
            kind: "api_key".to_owned(),
            key_id: Some(k.clone()),
            role: Some(role),
            end_user: None,
            member_id: None,
        },
        Actor::Member(m) => AuditActor {
            kind: "member".to_owned(),
            key_id: None,
            role: Some(role),
            end_user: None,
            member_id: Some(m.clone()),
        },
    }
}

/// The resource naming an actor: `key/key_…` or `member/usr_…`.
pub(crate) fn actor_resource(actor: &Actor) -> String {
    match actor {
        Actor::Key(k) => format!("key/{k}"),
        Actor::Member(m) => format!("member/{m}"),
    }
}

/// An entry that no route's outcome describes (logins, logouts): appended as given.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn record_event(
    st: &AppState,
    scope: &Scope,
    actor: &Actor,
    role: Role,
    origin: Origin,
    action: &str,
    outcome: &str,
    detail: serde_json::Value,
) {
    let entry = NewAuditEntry {
        at: now_ms(),
        actor: audit_actor(actor, role),
        action: action.to_owned(),
        resource: actor_resource(actor),
        outcome: outcome.to_owned(),
        ip: origin.ip,
        user_agent: origin.user_agent,
        detail,
    };
    append(st, scope, entry).await;
}

/// `auth.failed` for a key or session that exists but may no longer be used.
pub(crate) async fn record_auth_failed(
    st: &AppState,
    scope: &Scope,
    actor: &Actor,
    role: Role,
    origin: Origin,
    why: &str,
) {
    let entry = NewAuditEntry {
        at: now_ms(),
        actor: audit_actor(actor, role),
        action: "auth.failed".to_owned(),
        resource: actor_resource(actor),
        outcome: "denied".to_owned(),
        ip: origin.ip,
        user_agent: origin.user_agent,
        detail: serde_json::json!({ "reason": why }),
    };
    append(st, scope, entry).await;
}

async fn append(st: &AppState, scope: &Scope, entry: NewAuditEntry) {
    let scope = Scope {
        end_user: None,
        ..scope.clone()
    };
    if let Err(e) = st.engine.store().append_audit(&scope, entry).await {
        tracing::error!(error = %e, workspace = %scope.workspace, "cannot append to the audit trail");
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListAuditQuery {
    from: Option<String>,
    to: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    resource: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

fn time_param(name: &str, v: Option<String>) -> Result<Option<i64>, ApiError> {
    v.map(|s| {
        humantime::parse_rfc3339_weak(&s)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("{name} must be an RFC 3339 time such as 2026-01-31T12:00:00Z"),
                )
            })
    })
    .transpose()
}

pub(crate) async fn list_audit(
    State(st): State<AppState>,
    p: crate::Principal,
    ApiQuery(q): ApiQuery<ListAuditQuery>,
) -> Result<Response, ApiError> {
    let filter = AuditFilter {
        from: time_param("from", q.from)?,
        to: time_param("to", q.to)?,
        actor: q.actor,
        action: q.action,
        resource_prefix: q.resource,
    };
    let page = st
        .engine
        .store()
        .list_audit(
            &p.scope,
            &filter,
            q.cursor.as_deref(),
            q.limit.unwrap_or(100),
        )
        .await?;
    Ok(Json(page).into_response())
}

/// `?seq=&hash=`: a checkpoint taken earlier (`GET /v1/audit/checkpoint`) to hold the chain to.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyQuery {
    seq: Option<u64>,
    hash: Option<String>,
}

pub(crate) async fn verify_audit(
    State(st): State<AppState>,
    p: crate::Principal,
    ApiQuery(q): ApiQuery<VerifyQuery>,
) -> Result<Response, ApiError> {
    let store = st.engine.store();
    let checkpoint = match (q.seq, q.hash) {
        (None, None) => None,
        (Some(seq), Some(hash))
            if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Some((seq, hash.to_ascii_lowercase()))
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "a checkpoint is seq (an integer) and hash (64 hex digits), both or neither",
            ));
        }
    };
    let mut v = store.verify_audit(&p.scope).await?;
    if let Some((seq, hash)) = checkpoint {
        let at = store.audit_hash_at(&p.scope, seq).await?;
        v = paddock_store::audit::against_checkpoint(v, seq, &hash, at.as_deref());
    }
    Ok(Json(v).into_response())
}

/// The workspace chain's newest entry, to keep outside Paddock and verify against later.
pub(crate) async fn audit_checkpoint(
    State(st): State<AppState>,
    p: crate::Principal,
) -> Result<Response, ApiError> {
    let store = st.engine.store();
    let v = store.verify_audit(&p.scope).await?;
    if !v.ok {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "audit_chain_broken",
            "the chain is broken; a checkpoint of it would anchor the tampering (see GET /v1/audit/verify)",
        ));
    }
    let seq = v.entries;
    let hash = match store.audit_hash_at(&p.scope, seq).await? {
        Some(h) => h,
        None => paddock_store::audit::GENESIS.to_owned(),
    };
    Ok(Json(paddock_types::api::AuditCheckpoint {
        org: p.scope.org.clone(),
        workspace: p.scope.workspace.clone(),
        seq,
        hash,
        at: now_ms(),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_come_from_the_path() {
        assert_eq!(
            resource_of("/v1/runs/{id}/cancel", "/v1/runs/run_1/cancel"),
            "run/run_1"
        );
        assert_eq!(
            resource_of("/v1/secrets/{name}", "/v1/secrets/TOKEN"),
            "secret/TOKEN"
        );
        assert_eq!(
            resource_of(
                "/v1/runs/{id}/approvals/{approval_id}",
                "/v1/runs/run_1/approvals/apr_2"
            ),
            "run/run_1/approval/apr_2"
        );
        assert_eq!(resource_of("/v1/vault/rotate", "/v1/vault/rotate"), "vault");
        assert_eq!(resource_of("/v1/runs", "/v1/runs"), "runs");
    }
}
