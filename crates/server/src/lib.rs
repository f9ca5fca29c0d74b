//! Paddock's HTTP API. [`router`] builds the axum router from an [`AppState`]; serving it is the
//! binary's job, so tests drive the same router in-process. Handlers translate HTTP to engine
//! calls and back; they hold no business logic.

mod audit;
mod auth;
mod billing;
mod error;
mod events;
mod extract;
mod idempotency;
mod login_throttle;
mod members;
mod openapi;
mod ratelimit;
mod secrets;
mod streams;

pub use auth::{Actor, Principal};
pub use error::ApiError;
pub use login_throttle::ThrottleSettings;
pub use members::{SessionSettings, Sessions, check_credentials, hash_password};
pub use ratelimit::{Quota, RateLimiter, RateLimits};
pub use streams::{StreamCaps, StreamSlots};

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use axum::{Json, Router};
use extract::{ApiJson, ApiQuery, TenantScope};
use paddock_engine::Engine;
use paddock_store::RunFilter;
use paddock_types::api::{AgentDefinition, ApprovalStatus, CreateRun, DecideApproval};
use paddock_types::manifest::validate_agent_name;
use paddock_types::{ApprovalId, Permission, RunId, RunStatus};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 1024 * 1024;
/// Longest `?wait=` a request may block.
pub const MAX_WAIT_SECS: u64 = 60;

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub vault: Arc<paddock_vault::Vault>,
    /// Request rate limits, checked right after authentication ([`RateLimiter::new`] with
    /// [`RateLimits::default`] for none).
    pub rate_limiter: Arc<RateLimiter>,
    /// Login sessions: their lifetime and the failed-login throttle ([`Sessions::default`]:
    /// 12 h sessions).
    pub sessions: Arc<Sessions>,
}

/// One route of the API: what [`router`] serves, what the OpenAPI document lists, and what the
/// isolation and permission tests walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    /// axum path template (`/v1/runs/{id}`), the same as in the OpenAPI document.
    pub path: &'static str,
    /// The permission the caller's key must hold; `None` for the public routes.
    pub permission: Option<Permission>,
    /// A creating POST that honours `Idempotency-Key` (the `idempotency` module).
    pub idempotent: bool,
}

/// THE route table. A route exists only if it is here, and every `/v1` route but the OpenAPI
/// document names its permission.
fn table() -> Vec<(RouteSpec, MethodRouter<AppState>)> {
    use Permission as P;
    let r = |method: Method, path: &'static str, permission: Option<Permission>, h| {
        (
            RouteSpec {
                method,
                path,
                permission,
                idempotent: false,
            },
            h,
        )
    };
    // A creating POST: `Idempotency-Key` is honoured.
    let creating = |(spec, h): (RouteSpec, MethodRouter<AppState>)| {
        (
            RouteSpec {
                idempotent: true,
                ..spec
            },
            h,
        )
    };
    vec![
        r(Method::GET, "/healthz", None, get(healthz)),
        r(Method::GET, "/docs", None, get(docs)),
        r(Method::GET, "/v1/openapi.json", None, get(openapi_json)),
        creating(r(
            Method::POST,
            "/v1/runs",
            Some(P::RunsCreate),
            post(create_run),
        )),
        r(Method::GET, "/v1/runs", Some(P::RunsRead), get(list_runs)),
        r(
            Method::GET,
            "/v1/runs/{id}",
            Some(P::RunsRead),
            get(get_run),
        ),
        r(
            Method::POST,
            "/v1/runs/{id}/cancel",
            Some(P::RunsCancel),
            post(cancel_run),
        ),
        r(
            Method::GET,
            "/v1/runs/{id}/events",
            Some(P::RunsRead),
            get(events::run_events),
        ),
        r(
            Method::GET,
            "/v1/runs/{id}/approvals/{approval_id}",
            Some(P::ApprovalsRead),
            get(get_approval),
        ),
        r(
            Method::POST,
            "/v1/runs/{id}/approvals/{approval_id}",
            Some(P::ApprovalsDecide),
            post(decide_approval),
        ),
        r(
            Method::GET,
            "/v1/approvals",
            Some(P::ApprovalsRead),
            get(list_approvals),
        ),
        r(
            Method::GET,
            "/v1/agents",
            Some(P::AgentsRead),
            get(list_agents),
        ),
        r(
            Method::GET,
            "/v1/agents/{name}",
            Some(P::AgentsRead),
            get(get_agent),
        ),
        r(
            Method::PUT,
            "/v1/agents/{name}",
            Some(P::AgentsWrite),
            put(put_agent),
        ),
        r(
            Method::GET,
            "/v1/secrets",
            Some(P::SecretsRead),
            get(secrets::list_secrets),
        ),
        r(
            Method::PUT,
            "/v1/secrets/{name}",
            Some(P::SecretsWrite),
            put(secrets::put_secret),
        ),
        r(
            Method::DELETE,
            "/v1/secrets/{name}",
            Some(P::SecretsWrite),
            delete(secrets::delete_secret),
        ),
        r(
            Method::POST,
            "/v1/vault/rotate",
            Some(P::VaultRotate),
            post(secrets::rotate_master_key),
        ),
        r(
            Method::GET,
            "/v1/keys",
            Some(P::KeysRead),
            get(auth::list_keys),
        ),
        creating(r(
            Method::POST,
            "/v1/keys",
            Some(P::KeysWrite),
            post(auth::create_key),
        )),
        r(
            Method::DELETE,
            "/v1/keys/{id}",
            Some(P::KeysWrite),
            delete(auth::revoke_key),
        ),
        r(
            Method::GET,
            "/v1/workspaces",
            Some(P::WorkspacesRead),
            get(auth::list_workspaces),
        ),
        creating(r(
            Method::POST,
            "/v1/workspaces",
            Some(P::WorkspacesWrite),
            post(auth::create_workspace),
        )),
        r(
            Method::GET,
            "/v1/audit",
            Some(P::AuditRead),
            get(audit::list_audit),
        ),
        r(
            Method::GET,
            "/v1/audit/verify",
            Some(P::AuditRead),
            get(audit::verify_audit),
        ),
        r(
            Method::GET,
            "/v1/audit/checkpoint",
            Some(P::AuditRead),
            get(audit::audit_checkpoint),
        ),
        // Members, login sessions and orgs (`members`). The session routes are public: logging
        // in needs no key, and logging out authenticates the session it ends.
        r(
            Method::POST,
            "/v1/sessions",
            None,
            post(members::create_session),
        ),
        r(
            Method::DELETE,
            "/v1/sessions/current",
            None,
            delete(members::end_session),
        ),
        r(
            Method::GET,
            "/v1/members",
            Some(P::MembersRead),
            get(members::list_members),
        ),
        creating(r(
            Method::POST,
            "/v1/members",
            Some(P::MembersWrite),
            post(members::add_member),
        )),
        r(
            Method::DELETE,
            "/v1/members/{id}",
            Some(P::MembersWrite),
            delete(members::remove_member),
        ),
        r(
            Method::GET,
            "/v1/orgs",
            Some(P::OrgsWrite),
            get(members::list_orgs),
        ),
        creating(r(
            Method::POST,
            "/v1/orgs",
            Some(P::OrgsWrite),
            post(members::create_org),
        )),
        // End-users, budgets and usage (`billing`).
        r(
            Method::GET,
            "/v1/end-users",
            Some(P::EndUsersRead),
            get(billing::list_end_users),
        ),
        creating(r(
            Method::POST,
            "/v1/end-users",
            Some(P::EndUsersWrite),
            post(billing::create_end_user),
        )),
        r(
            Method::GET,
            "/v1/end-users/{id}",
            Some(P::EndUsersRead),
            get(billing::get_end_user),
        ),
        r(
            Method::DELETE,
            "/v1/end-users/{id}",
            Some(P::EndUsersWrite),
            delete(billing::delete_end_user),
        ),
        r(
            Method::GET,
            "/v1/budgets",
            Some(P::BudgetsRead),
            get(billing::list_budgets),
        ),
        creating(r(
            Method::POST,
            "/v1/budgets",
            Some(P::BudgetsWrite),
            post(billing::create_budget),
        )),
        r(
            Method::DELETE,
            "/v1/budgets/{id}",
            Some(P::BudgetsWrite),
            delete(billing::delete_budget),
        ),
        r(
            Method::GET,
            "/v1/usage",
            Some(P::UsageRead),
            get(billing::usage),
        ),
    ]
}

/// Every route the router answers, with its permission.
pub fn routes() -> Vec<RouteSpec> {
    table().into_iter().map(|(spec, _)| spec).collect()
}

pub fn router(state: AppState) -> Router {
    build(state, None)
}

/// FOR BENCHMARKS ONLY (`paddock bench` measures what authentication costs with it): the same
/// router, except that every authenticated route skips authentication, the permission check,
/// rate limits and the audit trail and acts as `principal`. Nothing in `paddock serve` or its
/// configuration reaches this.
#[doc(hidden)]
pub fn router_with_principal(state: AppState, principal: Principal) -> Router {
    build(state, Some(principal))
}

/// The bypass of [`router_with_principal`]: hands every request `principal`, unchecked.
async fn fixed_principal(
    State(principal): State<Principal>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    req.extensions_mut().insert(principal);
    next.run(req).await
}

fn build(state: AppState, fixed: Option<Principal>) -> Router {
    let mut router = Router::new();
    for (spec, handler) in table() {
        // Inside the auth layer: it needs the principal's workspace.
        let handler = if spec.idempotent {
            handler.route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                idempotency::layer,
            ))
        } else {
            handler
        };
        if let (Some(_), Some(p)) = (spec.permission, &fixed) {
            let layer = axum::middleware::from_fn_with_state(p.clone(), fixed_principal);
            router = router.route(spec.path, handler.route_layer(layer));
            continue;
        }
        let handler = match spec.permission {
            Some(permission) => handler.route_layer(axum::middleware::from_fn_with_state(
                auth::Guard {
                    state: state.clone(),
                    permission,
                    method: spec.method.clone(),
                    template: spec.path,
                },
                auth::require,
            )),
            None => handler,
        };
        router = router.route(spec.path, handler);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not support that method",
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi::document())
}

async fn docs() -> Html<&'static str> {
    Html(openapi::DOCS_HTML)
}

/// A path id that cannot be valid names nothing: answer as for a missing resource.
pub(crate) fn parse_run_id(s: &str) -> Result<RunId, ApiError> {
    RunId::parse(s).map_err(|_| ApiError::not_found("run"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    wait: Option<u64>,
}

fn wait_duration(q: &WaitQuery) -> Option<Duration> {
    q.wait
        .filter(|w| *w > 0)
        .map(|w| Duration::from_secs(w.min(MAX_WAIT_SECS)))
}

async fn create_run(
    State(st): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<WaitQuery>,
    ApiJson(req): ApiJson<CreateRun>,
) -> Result<Response, ApiError> {
    // Taken before creating: a refused `?wait=` must not leave a run behind.
    let _slot = match wait_duration(&q) {
        Some(_) => match long_poll_slot(&st, &p) {
            Ok(slot) => Some(slot),
            Err(over) => return Ok(over.refusal()),
        },
        None => None,
    };
    let scope = p.scope;
    let created_by = Some(p.actor.to_string());
    let mut run = st.engine.create_run_by(&scope, req, created_by).await?;
    if let Some(wait) = wait_duration(&q) {
        run = st.engine.wait(&scope, &run.id, wait).await?;
    }
    let location = format!("/v1/runs/{}", run.id);
    let note = audit::AuditNote {
        resource: Some(format!("run/{}", run.id)),
        detail: Some(serde_json::json!({ "agent": run.agent, "agent_version": run.agent_version })),
    };
    let mut response = (
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, location)],
        Json(run),
    )
        .into_response();
    response.extensions_mut().insert(note);
    Ok(response)
}

/// A slot for a `?wait=` request, or the 429 to answer: a long-poll holds a connection as long
/// as an event stream does.
fn long_poll_slot(st: &AppState, p: &Principal) -> Result<streams::StreamSlot, streams::Over> {
    st.rate_limiter
        .streams()
        .acquire(p.actor_id(), p.scope.workspace.as_str())
}

async fn get_run(
    State(st): State<AppState>,
    p: Principal,
    TenantScope(scope): TenantScope,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let run = match wait_duration(&q) {
        Some(wait) => {
            let _slot = match long_poll_slot(&st, &p) {
                Ok(slot) => slot,
                Err(over) => return Ok(over.refusal()),
            };
            st.engine.wait(&scope, &id, wait).await?
        }
        None => st
            .engine
            .store()
            .get_run(&scope, &id)
            .await?
            .ok_or_else(|| ApiError::not_found("run"))?,
    };
    Ok(Json(run).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListRunsQuery {
    agent: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

async fn list_runs(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
    ApiQuery(q): ApiQuery<ListRunsQuery>,
) -> Result<Response, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!(
                    "unknown status {s:?}; use one of queued, running, waiting, succeeded, failed, cancelled, timed_out"
                ),
            )
        })?),
    };
    let filter = RunFilter {
        agent: q.agent,
        status,
    };
    let page = st
        .engine
        .store()
        .list_runs(&scope, &filter, q.cursor.as_deref(), q.limit.unwrap_or(50))
        .await?;
    Ok(Json(page).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: Option<String>,
}

async fn cancel_run(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
    Path(id): Path<String>,
    body: Option<ApiJson<CancelBody>>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let reason = body.and_then(|b| b.0.reason);
    let run = st.engine.cancel(&scope, &id, reason).await?;
    Ok(Json(run).into_response())
}

async fn get_approval(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
    Path((id, approval_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let approval_id =
        ApprovalId::parse(&approval_id).map_err(|_| ApiError::not_found("approval"))?;
    let approval = st
        .engine
        .store()
        .get_approval(&scope, &id, &approval_id)
        .await?
        .ok_or_else(|| ApiError::not_found("approval"))?;
    Ok(Json(approval).into_response())
}

async fn decide_approval(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
    Path((id, approval_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<DecideApproval>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let approval_id =
        ApprovalId::parse(&approval_id).map_err(|_| ApiError::not_found("approval"))?;
    if body.comment.as_ref().is_some_and(|c| c.len() > 4096) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "comment is longer than 4096 bytes",
        ));
    }
    let decision = body.decision;
    let run = st
        .engine
        .decide(&scope, &id, &approval_id, decision, body.comment)
        .await?;
    let mut response = Json(run).into_response();
    response.extensions_mut().insert(audit::AuditNote {
        resource: None,
        detail: Some(serde_json::json!({ "decision": decision })),
    });
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListApprovalsQuery {
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

async fn list_approvals(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
    ApiQuery(q): ApiQuery<ListApprovalsQuery>,
) -> Result<Response, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(ApprovalStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("unknown approval status {s:?}; use pending, approved or denied"),
            )
        })?),
    };
    let page = st
        .engine
        .store()
        .list_approvals(&scope, status, q.cursor.as_deref(), q.limit.unwrap_or(50))
        .await?;
    Ok(Json(page).into_response())
}

async fn list_agents(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
) -> Result<Response, ApiError> {
    let agents: Vec<AgentDefinition> = st
        .engine
        .store()
        .list_agents(&scope)
        .await?
        .into_iter()
        .map(|r| r.definition)
        .collect();
    Ok(Json(serde_json::json!({ "data": agents })).into_response())
}

async fn get_agent(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let record = st
        .engine
        .store()
        .get_agent(&scope, &name, None)
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    Ok(Json(record.definition).into_response())
}

async fn put_agent(
    State(st): State<AppState>,
    p: Principal,
    TenantScope(scope): TenantScope,
    Path(name): Path<String>,
    ApiJson(def): ApiJson<AgentDefinition>,
) -> Result<Response, ApiError> {
    validate_agent_name(&name).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            e.to_string(),
        )
    })?;
    if def.manifest.name != name {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!(
                "manifest.name {:?} does not match the agent name {name:?} in the path",
                def.manifest.name
            ),
        ));
    }
    def.manifest.validate().map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "agent_invalid",
            format!("manifest.{e}"),
        )
    })?;
    may_bind_secrets(&p, &def)?;
    let record = st.engine.put_agent(&scope, def).await?;
    let mut response = (StatusCode::OK, Json(&record.definition)).into_response();
    response.extensions_mut().insert(audit::AuditNote {
        resource: None,
        detail: Some(serde_json::json!({ "version": record.definition.manifest.version })),
    });
    Ok(response)
}

/// A version whose `[[credentials]]` bind secrets needs `secrets:bind` on top of `agents:write`:
/// the binding chooses the host that receives the secret's value, so whoever writes it can read
/// any secret of the workspace. This is the one check for agents registered over the API; agent
/// folders loaded by `paddock serve` at start come from the operator and are not checked.
fn may_bind_secrets(p: &Principal, def: &AgentDefinition) -> Result<(), ApiError> {
    let Some(first) = def.manifest.credentials.first() else {
        return Ok(());
    };
    if p.may(Permission::SecretsBind) {
        return Ok(());
    }
    let mut names: Vec<&str> = def
        .manifest
        .credentials
        .iter()
        .map(|c| c.secret.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "a {} {} may not {}: this agent binds secret {:?} in [[credentials]] (all: {}); \
             ask an admin or owner to register it, or remove the credentials",
            p.role,
            p.kind(),
            Permission::SecretsBind,
            first.secret,
            names.join(", ")
        ),
    ))
}
