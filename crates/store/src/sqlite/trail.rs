//! Audit entries the journal implies, written in the transaction that appends the event, so the
//! trail cannot miss one however the process dies: a run's end (`run.succeeded`, `run.failed`,
//! `run.cancelled`, `run.timed_out`), a tool call the manifest refused (`policy.denied`) and a
//! request the egress broker refused (`egress.denied`). Their actor is `system`, naming the
//! run's end-user.

use super::write::{append_audit, corrupt};
use crate::{NewAuditEntry, Result};
use paddock_types::api::{AuditActor, Run};
use paddock_types::event::{EgressDecision, PolicyDecision};
use paddock_types::{EndUserId, Event, EventKind, RunStatus, Scope};
use rusqlite::Connection;
use serde_json::json;

pub(super) fn on_event(
    conn: &Connection,
    scope: &Scope,
    run: &Run,
    end_user: Option<&str>,
    ev: &Event,
) -> Result<()> {
    let (action, outcome, resource, detail) = match &ev.kind {
        EventKind::PolicyDecided {
            call_id,
            tool,
            decision: PolicyDecision::Deny,
            reason,
        } => (
            "policy.denied".to_owned(),
            "denied",
            format!("run/{}/call/{call_id}", run.id),
            json!({"agent": run.agent, "tool": tool, "reason": reason}),
        ),
        EventKind::EgressRequest {
            call_id, request, ..
        } if request.decision == EgressDecision::Denied => (
            "egress.denied".to_owned(),
            "denied",
            format!("run/{}/call/{call_id}", run.id),
            json!({
                "agent": run.agent,
                "method": request.method,
                "scheme": request.scheme,
                "host": request.host,
                "port": request.port,
                "path": request.path,
                "reason": request.reason,
            }),
        ),
        _ if run.status.is_terminal() => (
            format!("run.{}", run.status.as_str()),
            match run.status {
                RunStatus::Failed | RunStatus::TimedOut => "error",
                _ => "ok",
            },
            format!("run/{}", run.id),
            json!({
                "agent": run.agent,
                "agent_version": run.agent_version,
                "error": run.error.as_ref().map(|e| e.code.as_str()),
                "cost_usd": run.usage.cost_usd,
                "model_calls": run.usage.model_calls,
                "tool_calls": run.usage.tool_calls,
                "created_by": run.created_by,
            }),
        ),
        _ => return Ok(()),
    };
    let end_user = end_user
        .map(EndUserId::parse)
        .transpose()
        .map_err(corrupt)?;
    append_audit(
        conn,
        &Scope {
            end_user: None,
            ..scope.clone()
        },
        NewAuditEntry {
            at: ev.at,
            actor: AuditActor {
                end_user,
                ..AuditActor::system()
            },
            action,
            resource,
            outcome: outcome.to_owned(),
            ip: None,
            user_agent: None,
            detail,
        },
    )?;
    Ok(())
}
