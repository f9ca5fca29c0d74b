//! `paddock end-users …`, `paddock budgets …` and `paddock usage`: a workspace's customers, its
//! cost caps and what its runs spent, over the API.

use crate::Output;
use crate::client::{http_client, send};
use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum EndUsersAction {
    /// Create an end-user; API keys then act for it with `Paddock-End-User: <id or external id>`
    Create {
        /// Your own id for the customer, unique in the workspace
        external_id: String,
        /// Metadata as a JSON object
        #[arg(long)]
        metadata: Option<String>,
    },
    /// List the workspace's end-users
    List,
    /// Delete an end-user (its runs and secrets stay)
    Delete { id: String },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Subject {
    Workspace,
    Agent,
    EndUser,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Period {
    Day,
    Month,
}

#[derive(Subcommand)]
pub enum BudgetsAction {
    /// Add a hard cost cap: a model call that would exceed it is not made and the run fails
    /// with budget_exceeded
    Add {
        #[arg(long, value_enum)]
        subject: Subject,
        /// For --subject agent: the agent capped (default: each agent separately)
        #[arg(long)]
        agent: Option<String>,
        /// For --subject end-user: the end-user id capped (default: each one separately)
        #[arg(long)]
        end_user: Option<String>,
        #[arg(long, value_enum)]
        period: Period,
        /// Dollars per period
        #[arg(long)]
        limit_usd: f64,
    },
    /// List the workspace's budgets
    List,
    /// Remove a budget
    Delete { id: String },
}

pub async fn end_users(
    server: &str,
    token: Option<&str>,
    action: EndUsersAction,
    output: Output,
) -> Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let http = http_client(token)?;
    let v = match action {
        EndUsersAction::Create {
            external_id,
            metadata,
        } => {
            let metadata: Option<Value> = metadata
                .map(|m| serde_json::from_str(&m))
                .transpose()
                .context("--metadata must be a JSON object")?;
            send(
                base,
                http.post(format!("{base}/v1/end-users"))
                    .json(&json!({"external_id": external_id, "metadata": metadata})),
            )
            .await?
        }
        EndUsersAction::List => send(base, http.get(format!("{base}/v1/end-users"))).await?,
        EndUsersAction::Delete { id } => {
            send(base, http.delete(format!("{base}/v1/end-users/{id}"))).await?;
            eprintln!("end-user {id} deleted");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let Some(rows) = rows(v, output)? else {
        return Ok(ExitCode::SUCCESS);
    };
    for u in rows {
        println!(
            "{}\t{}\t{}",
            text(&u["id"]),
            text(&u["external_id"]),
            text(&u["created_at"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn budgets(
    server: &str,
    token: Option<&str>,
    action: BudgetsAction,
    output: Output,
) -> Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let http = http_client(token)?;
    let v = match action {
        BudgetsAction::Add {
            subject,
            agent,
            end_user,
            period,
            limit_usd,
        } => {
            let subject = match subject {
                Subject::Workspace => "workspace",
                Subject::Agent => "agent",
                Subject::EndUser => "end_user",
            };
            let period = match period {
                Period::Day => "day",
                Period::Month => "month",
            };
            send(
                base,
                http.post(format!("{base}/v1/budgets")).json(&json!({
                    "subject": subject, "agent": agent, "end_user": end_user,
                    "period": period, "limit_usd": limit_usd,
                })),
            )
            .await?
        }
        BudgetsAction::List => send(base, http.get(format!("{base}/v1/budgets"))).await?,
        BudgetsAction::Delete { id } => {
            send(base, http.delete(format!("{base}/v1/budgets/{id}"))).await?;
            eprintln!("budget {id} removed");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let Some(rows) = rows(v, output)? else {
        return Ok(ExitCode::SUCCESS);
    };
    for b in rows {
        let whom = b["agent"]
            .as_str()
            .or(b["end_user"].as_str())
            .unwrap_or("each");
        let whom = if b["subject"] == "workspace" {
            ""
        } else {
            whom
        };
        println!(
            "{}\t{} {}\t${} per {}",
            text(&b["id"]),
            text(&b["subject"]),
            whom,
            b["limit_usd"],
            text(&b["period"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn usage(
    server: &str,
    token: Option<&str>,
    end_user: Option<&str>,
    query: &[(&str, Option<String>)],
    output: Output,
) -> Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let http = crate::client::http_client_as(token, end_user)?;
    let params: Vec<(&str, String)> = query
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
        .collect();
    let v = send(base, http.get(format!("{base}/v1/usage")).query(&params)).await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("usage from {} to {}", text(&v["from"]), text(&v["to"]));
    let row = |r: &Value| {
        let labels: Vec<&str> = ["workspace", "day", "agent", "end_user", "model"]
            .iter()
            .filter_map(|k| r[*k].as_str())
            .collect();
        format!(
            "{:<48} {:>6} calls {:>10} in {:>9} out  ${:.6}",
            labels.join(" "),
            r["model_calls"],
            r["input_tokens"],
            r["output_tokens"],
            r["cost_usd"].as_f64().unwrap_or(0.0)
        )
    };
    for r in v["data"].as_array().into_iter().flatten() {
        println!("{}", row(r));
    }
    let mut total = v["total"].clone();
    total["agent"] = json!("total");
    println!("{}", row(&total));
    Ok(ExitCode::SUCCESS)
}

/// With `--output json`, prints the answer and returns `None`; else the listed rows (a
/// listing's `data`, or the one object created).
fn rows(v: Value, output: Output) -> Result<Option<Vec<Value>>> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(None);
    }
    Ok(Some(match v["data"].as_array() {
        Some(rows) => rows.clone(),
        None => vec![v],
    }))
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}
