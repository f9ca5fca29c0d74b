//! `paddock runs …`: a thin HTTP client of a running server.

use crate::Output;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use paddock_types::api::{Page, Problem, Run};
use serde_json::json;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum RunsAction {
    /// Show one run
    Get {
        id: String,
        /// Wait up to this many seconds for the run to end
        #[arg(long)]
        wait: Option<u64>,
    },
    /// List runs, newest first
    List {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Start a run
    Create {
        agent: String,
        #[arg(long, default_value = "{}")]
        input: String,
        #[arg(long)]
        wait: Option<u64>,
    },
    /// Cancel a run
    Cancel {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Approve (or with --deny, deny) a pending tool call
    Approve {
        run_id: String,
        approval_id: String,
        #[arg(long)]
        deny: bool,
        #[arg(long)]
        comment: Option<String>,
    },
    /// List approvals waiting for a decision
    Pending,
}

/// Sends a request to the server and returns its JSON answer (`Null` for an empty one); a
/// problem+json answer becomes an error that shows its status, code and detail.
pub async fn send(base: &str, req: reqwest::RequestBuilder) -> Result<serde_json::Value> {
    let resp = req.send().await.with_context(|| {
        format!("cannot reach the server at {base} (is `paddock serve` running?)")
    })?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if status == reqwest::StatusCode::UNAUTHORIZED {
        let detail = serde_json::from_slice::<Problem>(&body)
            .map(|p| p.detail)
            .unwrap_or_default();
        bail!(
            "401 [unauthenticated]: {detail}; pass --api-key or set PADDOCK_API_KEY (the first \
             `paddock serve` printed an admin key), or run `paddock login`"
        );
    }
    if !status.is_success() {
        if let Ok(p) = serde_json::from_slice::<Problem>(&body) {
            bail!("{} [{}]: {}", status.as_u16(), p.code, p.detail);
        }
        bail!("{status}: {}", String::from_utf8_lossy(&body));
    }
    if body.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&body).context("server sent invalid JSON")
}

/// An HTTP client that sends `api_key` as a bearer token on every request.
pub fn http_client(api_key: Option<&str>) -> Result<reqwest::Client> {
    http_client_as(api_key, None)
}

/// [`http_client`] acting for an end-user of the key's workspace (`Paddock-End-User`).
pub fn http_client_as(api_key: Option<&str>, end_user: Option<&str>) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(eu) = end_user {
        let value = reqwest::header::HeaderValue::from_str(eu)
            .context("--end-user contains characters that cannot be sent in a header")?;
        headers.insert("paddock-end-user", value);
    }
    if let Some(key) = api_key.filter(|k| !k.is_empty()) {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .context("the API key contains characters that cannot be sent in a header")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .context("cannot build the HTTP client")
}

pub async fn runs(
    server: &str,
    api_key: Option<&str>,
    end_user: Option<&str>,
    action: RunsAction,
    output: Output,
) -> Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let http = http_client_as(api_key, end_user)?;
    let req = match &action {
        RunsAction::Get { id, wait } => {
            let mut r = http.get(format!("{base}/v1/runs/{id}"));
            if let Some(w) = wait {
                r = r.query(&[("wait", w)]);
            }
            r
        }
        RunsAction::List {
            agent,
            status,
            limit,
            cursor,
        } => {
            let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            if let Some(a) = agent {
                q.push(("agent", a.clone()));
            }
            if let Some(s) = status {
                q.push(("status", s.clone()));
            }
            if let Some(c) = cursor {
                q.push(("cursor", c.clone()));
            }
            http.get(format!("{base}/v1/runs")).query(&q)
        }
        RunsAction::Create { agent, input, wait } => {
            let input: serde_json::Value =
                serde_json::from_str(input).context("--input is not valid JSON")?;
            let mut r = http
                .post(format!("{base}/v1/runs"))
                .json(&json!({"agent": agent, "input": input}));
            if let Some(w) = wait {
                r = r.query(&[("wait", w)]);
            }
            r
        }
        RunsAction::Cancel { id, reason } => http
            .post(format!("{base}/v1/runs/{id}/cancel"))
            .json(&json!({"reason": reason})),
        RunsAction::Approve {
            run_id,
            approval_id,
            deny,
            comment,
        } => http
            .post(format!("{base}/v1/runs/{run_id}/approvals/{approval_id}"))
            .json(&json!({"decision": if *deny { "deny" } else { "approve" }, "comment": comment})),
        RunsAction::Pending => http
            .get(format!("{base}/v1/approvals"))
            .query(&[("status", "pending")]),
    };
    let value = send(base, req).await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    match action {
        RunsAction::List { .. } => {
            let page: Page<Run> = serde_json::from_value(value)?;
            for r in &page.data {
                println!(
                    "{}\t{}\t{}\t{}",
                    r.id,
                    r.agent,
                    r.status,
                    paddock_types::time::rfc3339(r.created_at)
                );
            }
            if let Some(c) = page.next_cursor {
                eprintln!("more: --cursor {c}");
            }
        }
        RunsAction::Pending => {
            let page: Page<paddock_types::api::Approval> = serde_json::from_value(value)?;
            for a in &page.data {
                println!(
                    "{}\t{}\t{}\t{}",
                    a.run_id, a.id, a.call.name, a.call.arguments
                );
            }
        }
        _ => {
            let run: Run = serde_json::from_value(value)?;
            println!("{}\t{}\t{}", run.id, run.agent, run.status);
            if let Some(o) = &run.output {
                println!("{}", serde_json::to_string_pretty(o)?);
            }
            if let Some(e) = &run.error {
                eprintln!("error [{}]: {}", e.code, e.message);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
