//! Cost budgets, the reservations held against them while model calls are in flight, and the
//! usage ledger that completed calls are settled into.
//!
//! Reserving checks and records in one writer transaction, so concurrent runs can never both
//! take the last dollar; settling happens in the transaction that journals the call's answer.

use super::{scope_params, write::corrupt};
use crate::{BudgetRefusal, Reservation, Result, UsageQuery};
use paddock_types::api::Run;
use paddock_types::billing::{
    Budget, BudgetPeriod, BudgetSubject, UsageRow, micros_to_usd, usd_to_micros,
};
use paddock_types::time::utc_day;
use paddock_types::{BudgetId, EndUserId, Event, EventKind, Scope, WorkspaceId};
use rusqlite::types::Value;
use rusqlite::{Connection, Row, params, params_from_iter};
use std::collections::HashMap;

const COLUMNS: &str = "SELECT id, subject, target, period, limit_micros, created_at FROM budgets";

fn budget(r: &Row<'_>) -> rusqlite::Result<(String, String, Option<String>, String, i64, i64)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

type BudgetRow = (String, String, Option<String>, String, i64, i64);

fn decode((id, subject, target, period, limit, created_at): BudgetRow) -> Result<Budget> {
    let subject = BudgetSubject::parse(&subject).ok_or_else(|| corrupt("budget subject"))?;
    let end_user = match (subject, &target) {
        (BudgetSubject::EndUser, Some(t)) => Some(EndUserId::parse(t).map_err(corrupt)?),
        _ => None,
    };
    Ok(Budget {
        id: BudgetId::parse(&id).map_err(corrupt)?,
        subject,
        agent: target.filter(|_| subject == BudgetSubject::Agent),
        end_user,
        period: BudgetPeriod::parse(&period).ok_or_else(|| corrupt("budget period"))?,
        limit_usd: micros_to_usd(limit),
        created_at,
    })
}

fn target(b: &Budget) -> Option<&str> {
    match b.subject {
        BudgetSubject::Workspace => None,
        BudgetSubject::Agent => b.agent.as_deref(),
        BudgetSubject::EndUser => b.end_user.as_ref().map(|e| e.as_str()),
    }
}

/// How many budgets each (org, workspace) has.
pub(super) fn budget_counts(conn: &Connection) -> Result<HashMap<(String, String), i64>> {
    let rows = conn
        .prepare("SELECT org, workspace, COUNT(*) FROM budgets GROUP BY org, workspace")?
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?
        .collect::<rusqlite::Result<HashMap<_, _>>>()?;
    Ok(rows)
}

pub(super) fn create(conn: &Connection, scope: &Scope, b: &Budget) -> Result<Budget> {
    let (org, ws, _) = scope_params(scope);
    conn.prepare_cached(
        "INSERT INTO budgets (id, org, workspace, subject, target, period, limit_micros, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        b.id.as_str(),
        org,
        ws,
        b.subject.as_str(),
        target(b),
        b.period.as_str(),
        usd_to_micros(b.limit_usd),
        b.created_at
    ])?;
    Ok(b.clone())
}

pub(super) fn delete(conn: &Connection, scope: &Scope, id: &BudgetId) -> Result<bool> {
    let (org, ws, _) = scope_params(scope);
    let n = conn
        .prepare_cached("DELETE FROM budgets WHERE id = ?1 AND org = ?2 AND workspace = ?3")?
        .execute(params![id.as_str(), org, ws])?;
    Ok(n > 0)
}

pub(super) fn list(conn: &Connection, scope: &Scope) -> Result<Vec<Budget>> {
    let (org, ws, _) = scope_params(scope);
    let rows = conn
        .prepare_cached(&format!(
            "{COLUMNS} WHERE org = ?1 AND workspace = ?2 ORDER BY id"
        ))?
        .query_map(params![org, ws], budget)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(decode).collect()
}

/// Holds `r.micros` for the run's next model call if every budget that applies to the run
/// (its workspace, its agent, its end-user) has room for it beside what was spent in the
/// budget's period and what other runs hold; otherwise records nothing and names the budget.
pub(super) fn reserve(
    conn: &Connection,
    scope: &Scope,
    r: &Reservation,
) -> Result<Option<BudgetRefusal>> {
    let (org, ws, _) = scope_params(scope);
    let end_user = scope.end_user.as_ref().map(|e| e.as_str());
    let today = utc_day(r.at);
    for b in list(conn, scope)? {
        // The ledger and reservation column this budget counts by, and the value it matches.
        let (column, value) = match b.subject {
            BudgetSubject::Workspace => (None, None),
            BudgetSubject::Agent => match &b.agent {
                Some(a) if *a != r.agent => continue,
                _ => (Some("agent"), Some(r.agent.as_str())),
            },
            BudgetSubject::EndUser => match (&b.end_user, end_user) {
                (_, None) => continue,
                (Some(target), Some(eu)) if target.as_str() != eu => continue,
                (_, Some(eu)) => (Some("end_user"), Some(eu)),
            },
        };
        let filter = column.map_or(String::new(), |c| format!(" AND {c} = ?4"));
        let since = b.period.start_of(&today);
        let spent: i64 = conn
            .prepare_cached(&format!(
                "SELECT COALESCE(SUM(cost_micros), 0) FROM usage_ledger
                 WHERE org = ?1 AND workspace = ?2 AND day >= ?3{filter}"
            ))?
            .query_row(params_from_iter(args(org, ws, &since, value)), |row| {
                row.get(0)
            })?;
        let held: i64 = conn
            .prepare_cached(&format!(
                "SELECT COALESCE(SUM(micros), 0) FROM budget_reservations
                 WHERE org = ?1 AND workspace = ?2 AND run_id != ?3{filter}"
            ))?
            .query_row(
                params_from_iter(args(org, ws, r.run_id.as_str(), value)),
                |row| row.get(0),
            )?;
        let limit = usd_to_micros(b.limit_usd);
        if spent.saturating_add(held).saturating_add(r.micros) > limit {
            return Ok(Some(BudgetRefusal {
                budget: b,
                spent_usd: micros_to_usd(spent),
                held_usd: micros_to_usd(held),
                requested_usd: micros_to_usd(r.micros),
            }));
        }
    }
    conn.prepare_cached(
        "INSERT OR REPLACE INTO budget_reservations
           (run_id, org, workspace, agent, end_user, micros, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        r.run_id.as_str(),
        org,
        ws,
        r.agent,
        end_user.unwrap_or(""),
        r.micros,
        r.at
    ])?;
    Ok(None)
}

fn args(org: &str, ws: &str, third: &str, value: Option<&str>) -> Vec<Value> {
    let mut v = vec![
        Value::Text(org.to_owned()),
        Value::Text(ws.to_owned()),
        Value::Text(third.to_owned()),
    ];
    if let Some(value) = value {
        v.push(Value::Text(value.to_owned()));
    }
    v
}

/// Keeps the ledger and the reservations in step with one journaled event (called for every
/// appended event, inside the append's transaction): a model answer is settled into the ledger
/// (through `pending`, which writes it before the batch commits) and frees its reservation; a
/// run's end frees whatever it still held.
pub(super) fn on_event(
    conn: &Connection,
    pending: &mut PendingUsage,
    scope: &Scope,
    run: &Run,
    end_user: Option<&str>,
    ev: &Event,
) -> Result<()> {
    let free = |conn: &Connection| -> Result<()> {
        conn.prepare_cached("DELETE FROM budget_reservations WHERE run_id = ?1")?
            .execute(params![run.id.as_str()])?;
        Ok(())
    };
    match &ev.kind {
        EventKind::ModelResponded {
            response, cost_usd, ..
        } => {
            let model = if response.model.is_empty() {
                "unknown"
            } else {
                response.model.as_str()
            };
            pending.op.push((
                LedgerRow {
                    org: scope.org.as_str().to_owned(),
                    workspace: scope.workspace.as_str().to_owned(),
                    day: utc_day(ev.at),
                    agent: run.agent.clone(),
                    end_user: end_user.unwrap_or("").to_owned(),
                    model: model.to_owned(),
                },
                Totals {
                    input_tokens: i64::try_from(response.usage.input_tokens).unwrap_or(i64::MAX),
                    output_tokens: i64::try_from(response.usage.output_tokens).unwrap_or(i64::MAX),
                    model_calls: 1,
                    cost_micros: usd_to_micros(*cost_usd),
                },
            ));
            free(conn)
        }
        _ if run.status.is_terminal() => free(conn),
        _ => Ok(()),
    }
}

/// What the model answers of a write batch add to the usage ledger, summed per ledger row and
/// written once before the batch commits, or before an operation that might read the ledger
/// (reserving against a budget) runs: 30 concurrent runs' answers in one batch cost one upsert,
/// where each used to cost its own.
#[derive(Default)]
pub(super) struct PendingUsage {
    /// Added by the operations of the batch that succeeded.
    kept: HashMap<LedgerRow, Totals>,
    /// Added by the operation in progress.
    op: Vec<(LedgerRow, Totals)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LedgerRow {
    org: String,
    workspace: String,
    day: String,
    agent: String,
    end_user: String,
    model: String,
}

#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    input_tokens: i64,
    output_tokens: i64,
    model_calls: i64,
    cost_micros: i64,
}

impl PendingUsage {
    /// The operation in progress succeeded: its usage joins the batch's.
    pub(super) fn keep_op(&mut self) {
        for (row, t) in self.op.drain(..) {
            let sum = self.kept.entry(row).or_default();
            sum.input_tokens = sum.input_tokens.saturating_add(t.input_tokens);
            sum.output_tokens = sum.output_tokens.saturating_add(t.output_tokens);
            sum.model_calls = sum.model_calls.saturating_add(t.model_calls);
            sum.cost_micros = sum.cost_micros.saturating_add(t.cost_micros);
        }
    }

    /// The operation in progress failed: none of its usage happened.
    pub(super) fn forget_op(&mut self) {
        self.op.clear();
    }

    /// The batch failed: none of it happened.
    pub(super) fn forget_batch(&mut self) {
        self.op.clear();
        self.kept.clear();
    }

    /// Writes the kept usage into the ledger (inside the batch's transaction).
    pub(super) fn flush(&mut self, conn: &Connection) -> Result<()> {
        for (r, t) in self.kept.drain() {
            conn.prepare_cached(
                "INSERT INTO usage_ledger (org, workspace, day, agent, end_user, model,
                   input_tokens, output_tokens, model_calls, cost_micros)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (org, workspace, day, agent, end_user, model) DO UPDATE SET
                   input_tokens = input_tokens + excluded.input_tokens,
                   output_tokens = output_tokens + excluded.output_tokens,
                   model_calls = model_calls + excluded.model_calls,
                   cost_micros = cost_micros + excluded.cost_micros",
            )?
            .execute(params![
                r.org,
                r.workspace,
                r.day,
                r.agent,
                r.end_user,
                r.model,
                t.input_tokens,
                t.output_tokens,
                t.model_calls,
                t.cost_micros,
            ])?;
        }
        Ok(())
    }
}

/// Sums the ledger over `q`'s days, grouped as asked; narrowed to the scope's end-user if set.
pub(super) fn report(
    conn: &mut Connection,
    scope: &Scope,
    q: &UsageQuery,
) -> Result<Vec<UsageRow>> {
    let mut groups: Vec<&str> = Vec::new();
    if q.all_workspaces {
        groups.push("workspace");
    }
    for (on, column) in [
        (q.by_agent, "agent"),
        (q.by_end_user, "end_user"),
        (q.by_model, "model"),
        (q.by_day, "day"),
    ] {
        if on {
            groups.push(column);
        }
    }
    let mut sql = String::from("SELECT ");
    for g in &groups {
        sql.push_str(g);
        sql.push_str(", ");
    }
    sql.push_str(
        "SUM(input_tokens), SUM(output_tokens), SUM(model_calls), SUM(cost_micros)
         FROM usage_ledger WHERE org = ? AND day >= ? AND day <= ?",
    );
    let mut args = vec![
        Value::Text(scope.org.to_string()),
        Value::Text(q.from.clone()),
        Value::Text(q.to.clone()),
    ];
    if !q.all_workspaces {
        sql.push_str(" AND workspace = ?");
        args.push(Value::Text(scope.workspace.to_string()));
    }
    if let Some(eu) = &scope.end_user {
        sql.push_str(" AND end_user = ?");
        args.push(Value::Text(eu.to_string()));
    }
    if !groups.is_empty() {
        let list = groups.join(", ");
        sql.push_str(&format!(" GROUP BY {list} ORDER BY {list}"));
    }
    let mut stmt = conn.prepare(&sql)?;
    let n = groups.len();
    let rows = stmt
        .query_map(params_from_iter(args), |r| {
            let mut row = UsageRow {
                workspace: None,
                agent: None,
                end_user: None,
                model: None,
                day: None,
                input_tokens: r.get::<_, Option<i64>>(n)?.unwrap_or(0).max(0) as u64,
                output_tokens: r.get::<_, Option<i64>>(n + 1)?.unwrap_or(0).max(0) as u64,
                model_calls: r.get::<_, Option<i64>>(n + 2)?.unwrap_or(0).max(0) as u64,
                cost_usd: micros_to_usd(r.get::<_, Option<i64>>(n + 3)?.unwrap_or(0)),
            };
            for (i, g) in groups.iter().enumerate() {
                let v: String = r.get(i)?;
                match *g {
                    "workspace" => {
                        row.workspace = Some(WorkspaceId::parse(&v).map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(
                                i,
                                rusqlite::types::Type::Text,
                                e.into(),
                            )
                        })?);
                    }
                    "agent" => row.agent = Some(v),
                    // '' is "no end-user": absent.
                    "end_user" => row.end_user = Some(v).filter(|v| !v.is_empty()),
                    "model" => row.model = Some(v),
                    _ => row.day = Some(v),
                }
            }
            Ok(row)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // Without grouping, SUM over no rows is one row of NULLs: an empty report.
    Ok(rows
        .into_iter()
        .filter(|r| n > 0 || r.model_calls > 0)
        .collect())
}
