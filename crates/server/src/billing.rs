//! End-users (`/v1/end-users`, and acting for one with `Paddock-End-User`), cost budgets
//! (`/v1/budgets`) and usage (`/v1/usage`).
//!
//! An API key acts for an end-user by sending `Paddock-End-User: eu_…` (or the end-user's
//! external id): the request's scope narrows to that end-user, so its runs, approvals, secrets
//! and usage are the end-user's own and other end-users' are missing (404). Only routes whose
//! permission [`Permission::acts_for_end_user`] may do so; login sessions never may.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, TenantScope};
use crate::{AppState, audit};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use paddock_store::UsageQuery;
use paddock_types::billing::{
    Budget, BudgetSubject, CreateBudget, CreateEndUser, EndUser, UsageReport, UsageRow,
};
use paddock_types::manifest::validate_agent_name;
use paddock_types::time::{now_ms, utc_day};
use paddock_types::{BudgetId, EndUserId, Permission, Role};
use serde::Deserialize;

/// The header an API key sends to act for one of its workspace's end-users.
pub const END_USER_HEADER: &str = "paddock-end-user";
/// Longest external id.
const MAX_EXTERNAL_ID: usize = 200;
/// Largest end-user metadata, serialized.
const MAX_METADATA: usize = 8 * 1024;
/// Largest budget limit, in dollars.
const MAX_LIMIT_USD: f64 = 1e9;
/// Longest range of days a usage report covers.
const MAX_USAGE_DAYS: i64 = 400;

fn end_user_refused(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, detail)
}

/// The end-user the request acts for, from `Paddock-End-User`, or `None` without the header.
pub(crate) async fn acting_for(
    st: &AppState,
    principal: &Principal,
    permission: Permission,
    headers: &HeaderMap,
) -> Result<Option<EndUserId>, ApiError> {
    let Some(value) = headers.get(END_USER_HEADER) else {
        return Ok(None);
    };
    if principal.is_session() {
        return Err(end_user_refused(
            "end_user_not_allowed",
            "a login session cannot act for an end-user; use an API key",
        ));
    }
    if !permission.acts_for_end_user() {
        return Err(end_user_refused(
            "end_user_not_allowed",
            format!("{permission} does not act for an end-user; drop the Paddock-End-User header"),
        ));
    }
    let value = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|v| valid_external_id(v))
        .ok_or_else(|| {
            end_user_refused(
                "invalid_end_user",
                format!(
                    "Paddock-End-User must be an end-user id (eu_…) or external id of 1 to \
                     {MAX_EXTERNAL_ID} printable characters"
                ),
            )
        })?;
    let found = st
        .engine
        .store()
        .find_end_user(&principal.scope, value)
        .await?;
    match found {
        Some(u) => Ok(Some(u.id)),
        None => Err(end_user_refused(
            "unknown_end_user",
            "the workspace has no such end-user; create it with POST /v1/end-users",
        )),
    }
}

fn valid_external_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_EXTERNAL_ID && s.chars().all(|c| !c.is_control())
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        detail,
    )
}

fn parse_end_user_id(id: &str) -> Result<EndUserId, ApiError> {
    EndUserId::parse(id).map_err(|_| ApiError::not_found("end-user"))
}

pub(crate) async fn create_end_user(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
    ApiJson(req): ApiJson<CreateEndUser>,
) -> Result<Response, ApiError> {
    if !valid_external_id(&req.external_id) || req.external_id.trim() != req.external_id {
        return Err(invalid(format!(
            "external_id must be 1 to {MAX_EXTERNAL_ID} bytes without control characters or \
             surrounding spaces"
        )));
    }
    if EndUserId::parse(&req.external_id).is_ok() {
        return Err(invalid(
            "external_id must not look like an end-user id (eu_…)",
        ));
    }
    let metadata = match req.metadata {
        None => serde_json::json!({}),
        Some(m @ serde_json::Value::Object(_)) => m,
        Some(_) => return Err(invalid("metadata must be a JSON object")),
    };
    if serde_json::to_vec(&metadata).map_or(usize::MAX, |v| v.len()) > MAX_METADATA {
        return Err(invalid(format!(
            "metadata must be at most {MAX_METADATA} bytes of JSON"
        )));
    }
    let user = EndUser {
        id: EndUserId::new(),
        external_id: req.external_id,
        metadata,
        created_at: now_ms(),
    };
    let user = st.engine.store().create_end_user(&scope, user).await?;
    let mut response = (
        StatusCode::CREATED,
        [(
            axum::http::header::LOCATION,
            format!("/v1/end-users/{}", user.id),
        )],
        Json(&user),
    )
        .into_response();
    response.extensions_mut().insert(audit::AuditNote {
        resource: Some(format!("end_user/{}", user.id)),
        detail: Some(serde_json::json!({ "external_id": user.external_id })),
    });
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    cursor: Option<String>,
    limit: Option<u32>,
}

pub(crate) async fn list_end_users(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let page = st
        .engine
        .store()
        .list_end_users(&scope, q.cursor.as_deref(), q.limit.unwrap_or(50))
        .await?;
    Ok(Json(page).into_response())
}

pub(crate) async fn get_end_user(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_end_user_id(&id)?;
    let user = st
        .engine
        .store()
        .find_end_user(&scope, id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("end-user"))?;
    Ok(Json(user).into_response())
}

pub(crate) async fn delete_end_user(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_end_user_id(&id)?;
    if st.engine.store().delete_end_user(&scope, &id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("end-user"))
    }
}

pub(crate) async fn create_budget(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
    ApiJson(req): ApiJson<CreateBudget>,
) -> Result<Response, ApiError> {
    if !req.limit_usd.is_finite() || req.limit_usd < 0.0 || req.limit_usd > MAX_LIMIT_USD {
        return Err(invalid(format!(
            "limit_usd must be a number from 0 to {MAX_LIMIT_USD}"
        )));
    }
    let store = st.engine.store();
    match req.subject {
        BudgetSubject::Workspace if req.agent.is_some() || req.end_user.is_some() => {
            return Err(invalid(
                "a workspace budget takes neither agent nor end_user",
            ));
        }
        BudgetSubject::Agent if req.end_user.is_some() => {
            return Err(invalid("an agent budget takes no end_user"));
        }
        BudgetSubject::EndUser if req.agent.is_some() => {
            return Err(invalid("an end-user budget takes no agent"));
        }
        _ => {}
    }
    if let Some(agent) = &req.agent {
        validate_agent_name(agent).map_err(|e| invalid(format!("agent: {e}")))?;
    }
    if let Some(eu) = &req.end_user
        && store.find_end_user(&scope, eu.as_str()).await?.is_none()
    {
        return Err(invalid("end_user: the workspace has no such end-user"));
    }
    let budget = Budget {
        id: BudgetId::new(),
        subject: req.subject,
        agent: req.agent,
        end_user: req.end_user,
        period: req.period,
        limit_usd: req.limit_usd,
        created_at: now_ms(),
    };
    let budget = store.create_budget(&scope, budget).await?;
    let mut response = (StatusCode::CREATED, Json(&budget)).into_response();
    response.extensions_mut().insert(audit::AuditNote {
        resource: Some(format!("budget/{}", budget.id)),
        detail: Some(serde_json::json!({
            "subject": budget.subject,
            "agent": budget.agent,
            "end_user": budget.end_user,
            "period": budget.period,
            "limit_usd": budget.limit_usd,
        })),
    });
    Ok(response)
}

pub(crate) async fn list_budgets(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
) -> Result<Response, ApiError> {
    let data = st.engine.store().list_budgets(&scope).await?;
    Ok(Json(serde_json::json!({ "data": data })).into_response())
}

pub(crate) async fn delete_budget(
    State(st): State<AppState>,
    TenantScope(scope): TenantScope,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = BudgetId::parse(&id).map_err(|_| ApiError::not_found("budget"))?;
    if st.engine.store().delete_budget(&scope, &id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("budget"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageParams {
    /// First UTC day, `YYYY-MM-DD` (default: 30 days before `to`).
    from: Option<String>,
    /// Last UTC day (default: today).
    to: Option<String>,
    /// Comma-separated: `agent`, `end_user`, `model`, `day` (default: all four).
    group_by: Option<String>,
    /// `org`: every workspace of the org, grouped by workspace (owners only).
    scope: Option<String>,
}

/// Days since 1970-01-01 of a `YYYY-MM-DD`, if it is a real date.
fn day_number(day: &str) -> Option<i64> {
    let b = day.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| day.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > days_in[(m - 1) as usize] {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

pub(crate) async fn usage(
    State(st): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<UsageParams>,
) -> Result<Response, ApiError> {
    let bad = |detail: String| ApiError::bad_request("invalid_query", detail);
    let to = q.to.unwrap_or_else(|| utc_day(now_ms()));
    let to_n = day_number(&to).ok_or_else(|| bad(format!("to: {to:?} is not a YYYY-MM-DD day")))?;
    let from = match q.from {
        Some(f) => f,
        None => utc_day((to_n - 29) * 86_400_000),
    };
    let from_n =
        day_number(&from).ok_or_else(|| bad(format!("from: {from:?} is not a YYYY-MM-DD day")))?;
    if from_n > to_n || to_n - from_n >= MAX_USAGE_DAYS {
        return Err(bad(format!(
            "from must not be after to, and the range at most {MAX_USAGE_DAYS} days"
        )));
    }
    let mut query = UsageQuery {
        from: from.clone(),
        to: to.clone(),
        ..UsageQuery::default()
    };
    match q.scope.as_deref() {
        None | Some("workspace") => {}
        Some("org") if p.role == Role::Owner && p.scope.end_user.is_none() => {
            query.all_workspaces = true;
        }
        Some("org") => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only an owner (not acting for an end-user) may read the whole org's usage",
            ));
        }
        Some(other) => return Err(bad(format!("scope: {other:?} is not workspace or org"))),
    }
    let groups = q
        .group_by
        .unwrap_or_else(|| "agent,end_user,model,day".to_owned());
    for g in groups.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        match g {
            "agent" => query.by_agent = true,
            "end_user" => query.by_end_user = true,
            "model" => query.by_model = true,
            "day" => query.by_day = true,
            other => {
                return Err(bad(format!(
                    "group_by: {other:?} is not one of agent, end_user, model, day"
                )));
            }
        }
    }
    let data = st.engine.store().usage(&p.scope, &query).await?;
    let mut total = UsageRow {
        workspace: None,
        agent: None,
        end_user: None,
        model: None,
        day: None,
        input_tokens: 0,
        output_tokens: 0,
        model_calls: 0,
        cost_usd: 0.0,
    };
    let mut micros = 0i64;
    for r in &data {
        total.input_tokens += r.input_tokens;
        total.output_tokens += r.output_tokens;
        total.model_calls += r.model_calls;
        micros += paddock_types::billing::usd_to_micros(r.cost_usd);
    }
    total.cost_usd = paddock_types::billing::micros_to_usd(micros);
    Ok(Json(UsageReport {
        from,
        to,
        data,
        total,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::day_number;

    #[test]
    fn days_are_counted_from_the_epoch_and_checked() {
        assert_eq!(day_number("1970-01-01"), Some(0));
        assert_eq!(day_number("2026-11-23"), Some(20_780));
        assert_eq!(day_number("2024-02-29"), Some(19_782));
        for bad in [
            "2023-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-1-01",
            "x",
            "2026-11-31",
        ] {
            assert_eq!(day_number(bad), None, "{bad}");
        }
    }
}
