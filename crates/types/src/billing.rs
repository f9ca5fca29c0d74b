//! End-users, cost budgets and usage: the wire types of `/v1/end-users`, `/v1/budgets` and
//! `/v1/usage`, and the money arithmetic the store and the engine share.
//!
//! Money is counted in whole micro-dollars (`i64`) wherever it is summed or compared, so a cap
//! holds exactly; the API shows dollars as numbers.

use crate::ids::{BudgetId, EndUserId};
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One US dollar in micro-dollars.
pub const MICROS_PER_USD: i64 = 1_000_000;

/// Dollars to micro-dollars, rounded up: a cost is never under-counted.
pub fn usd_to_micros(usd: f64) -> i64 {
    if !usd.is_finite() || usd <= 0.0 {
        return 0;
    }
    let m = (usd * MICROS_PER_USD as f64).ceil();
    if m >= i64::MAX as f64 {
        i64::MAX
    } else {
        m as i64
    }
}

pub fn micros_to_usd(micros: i64) -> f64 {
    micros as f64 / MICROS_PER_USD as f64
}

/// A customer of a SaaS builder, inside one workspace. An API key acts for one by sending
/// `Paddock-End-User: eu_…` (or the external id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndUser {
    pub id: EndUserId,
    /// The builder's own id for the customer; unique in the workspace.
    pub external_id: String,
    #[serde(default)]
    pub metadata: Value,
    #[serde(with = "crate::time::serde_rfc3339")]
    pub created_at: Millis,
}

/// `POST /v1/end-users`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndUser {
    pub external_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// The calendar period a budget caps, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Day,
    Month,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" => Some(BudgetPeriod::Day),
            "month" => Some(BudgetPeriod::Month),
            _ => None,
        }
    }

    /// The first UTC day (`YYYY-MM-DD`) of the period holding `day` (`YYYY-MM-DD`).
    pub fn start_of(self, day: &str) -> String {
        match self {
            BudgetPeriod::Day => day.to_owned(),
            BudgetPeriod::Month => format!("{}-01", day.get(..7).unwrap_or(day)),
        }
    }
}

/// What a budget counts the spending of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetSubject {
    /// Every run of the workspace together.
    Workspace,
    /// The runs of one agent (`agent`), or of each agent separately when `agent` is absent.
    Agent,
    /// The runs of one end-user (`end_user`), or of each end-user separately when absent.
    EndUser,
}

impl BudgetSubject {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetSubject::Workspace => "workspace",
            BudgetSubject::Agent => "agent",
            BudgetSubject::EndUser => "end_user",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "workspace" => Some(BudgetSubject::Workspace),
            "agent" => Some(BudgetSubject::Agent),
            "end_user" => Some(BudgetSubject::EndUser),
            _ => None,
        }
    }
}

/// A hard cost cap. Before each model call the engine reserves the call's most expensive
/// outcome against every budget that applies; a call that would exceed one is not made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub id: BudgetId,
    pub subject: BudgetSubject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<EndUserId>,
    pub period: BudgetPeriod,
    pub limit_usd: f64,
    #[serde(with = "crate::time::serde_rfc3339")]
    pub created_at: Millis,
}

/// `POST /v1/budgets`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBudget {
    pub subject: BudgetSubject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<EndUserId>,
    pub period: BudgetPeriod,
    pub limit_usd: f64,
}

/// One row of `GET /v1/usage`: the model calls that completed, grouped by the dimensions asked
/// for (a dimension not grouped by is absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<crate::ids::WorkspaceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Absent also for runs that acted for no end-user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// UTC day, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub model_calls: u64,
    pub cost_usd: f64,
}

/// The answer to `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    /// Inclusive UTC days.
    pub from: String,
    pub to: String,
    pub data: Vec<UsageRow>,
    pub total: UsageRow,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_rounds_up_to_the_micro_dollar() {
        assert_eq!(usd_to_micros(1.0), 1_000_000);
        assert_eq!(usd_to_micros(0.000_000_1), 1);
        assert_eq!(usd_to_micros(0.0), 0);
        assert_eq!(usd_to_micros(-3.0), 0);
        assert_eq!(usd_to_micros(f64::NAN), 0);
        assert_eq!(usd_to_micros(f64::INFINITY), 0);
        assert_eq!(micros_to_usd(2_500_000), 2.5);
    }

    #[test]
    fn periods_start_on_their_first_day() {
        assert_eq!(BudgetPeriod::Day.start_of("2026-11-23"), "2026-11-23");
        assert_eq!(BudgetPeriod::Month.start_of("2026-11-23"), "2026-11-01");
    }
}
