//! `paddock audit …`: the workspace's audit trail over the API, and `verify --data-dir`, which
//! checks every workspace's chain offline, straight from the data folder (read-only, without
//! the folder lock, so it works beside a running server).

use crate::Output;
use crate::client::{http_client, send};
use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum AuditAction {
    /// List entries, oldest first
    List {
        /// Only entries at or after this RFC 3339 time
        #[arg(long)]
        from: Option<String>,
        /// Only entries at or before this RFC 3339 time
        #[arg(long)]
        to: Option<String>,
        /// Only entries by this key id
        #[arg(long)]
        actor: Option<String>,
        /// Only this action (e.g. run.created)
        #[arg(long)]
        action: Option<String>,
        /// Only resources starting with this (e.g. secret/)
        #[arg(long)]
        resource: Option<String>,
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Check the hash chain; exits non-zero naming the first broken entry
    Verify {
        /// Verify every workspace offline from this data folder instead of asking a server
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Also hold the chain to a checkpoint saved earlier by `paddock audit checkpoint`:
        /// catches a truncated or rewritten chain
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Print the chain's newest entry (seq, hash) as JSON; keep it outside Paddock and pass it
    /// to `verify --checkpoint` later
    Checkpoint,
}

fn read_checkpoint(path: &std::path::Path) -> Result<paddock_types::api::AuditCheckpoint> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the checkpoint {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a checkpoint printed by `paddock audit checkpoint`",
            path.display()
        )
    })
}

pub async fn audit(
    server: &str,
    api_key: Option<&str>,
    action: AuditAction,
    output: Output,
) -> Result<ExitCode> {
    match action {
        AuditAction::Verify {
            data_dir: Some(dir),
            checkpoint,
        } => {
            let checkpoints = checkpoint
                .as_deref()
                .map(read_checkpoint)
                .transpose()?
                .into_iter()
                .collect::<Vec<_>>();
            verify_offline(&dir, &checkpoints, output)
        }
        AuditAction::Checkpoint => {
            let base = server.trim_end_matches('/');
            let http = http_client(api_key)?;
            let v = send(base, http.get(format!("{base}/v1/audit/checkpoint"))).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        AuditAction::Verify {
            data_dir: None,
            checkpoint,
        } => {
            let base = server.trim_end_matches('/');
            let http = http_client(api_key)?;
            let mut req = http.get(format!("{base}/v1/audit/verify"));
            if let Some(cp) = checkpoint.as_deref().map(read_checkpoint).transpose()? {
                req = req.query(&[("seq", cp.seq.to_string()), ("hash", cp.hash)]);
            }
            let v = send(base, req).await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_verdict(None, &v);
            }
            Ok(exit(v["ok"].as_bool() == Some(true)))
        }
        AuditAction::List {
            from,
            to,
            actor,
            action,
            resource,
            cursor,
            limit,
        } => {
            let base = server.trim_end_matches('/');
            let http = http_client(api_key)?;
            let mut query: Vec<(&str, String)> = Vec::new();
            for (k, v) in [
                ("from", from),
                ("to", to),
                ("actor", actor),
                ("action", action),
                ("resource", resource),
                ("cursor", cursor),
                ("limit", limit.map(|l| l.to_string())),
            ] {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            let v = send(base, http.get(format!("{base}/v1/audit")).query(&query)).await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for e in v["data"].as_array().into_iter().flatten() {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        e["seq"],
                        e["at"].as_str().unwrap_or("-"),
                        e["actor"]["key_id"].as_str().unwrap_or("-"),
                        e["action"].as_str().unwrap_or("-"),
                        e["resource"].as_str().unwrap_or("-"),
                        e["outcome"].as_str().unwrap_or("-"),
                    );
                }
                if let Some(c) = v["next_cursor"].as_str() {
                    eprintln!("more: --cursor {c}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_verdict(workspace: Option<&str>, v: &Value) {
    let prefix = workspace.map(|w| format!("{w}: ")).unwrap_or_default();
    if v["ok"].as_bool() == Some(true) {
        println!("{prefix}ok ({} entries)", v["entries"]);
    } else {
        println!(
            "{prefix}BROKEN at seq {}: {} ({} entries verified before it)",
            v["first_broken"]["seq"],
            v["first_broken"]["reason"].as_str().unwrap_or("?"),
            v["entries"]
        );
    }
}

fn verify_offline(
    dir: &std::path::Path,
    checkpoints: &[paddock_types::api::AuditCheckpoint],
    output: Output,
) -> Result<ExitCode> {
    let results = paddock_store::sqlite::verify_audit_offline(dir, checkpoints)?;
    let all_ok = results.iter().all(|(_, v)| v.ok);
    if output == Output::Json {
        let list: Vec<Value> = results
            .iter()
            .map(|(scope, v)| {
                let mut o = serde_json::to_value(v).unwrap_or(Value::Null);
                o["org"] = Value::from(scope.org.as_str());
                o["workspace"] = Value::from(scope.workspace.as_str());
                o
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"ok": all_ok, "workspaces": list}))?
        );
    } else {
        if results.is_empty() {
            println!("ok (no audit entries)");
        }
        for (scope, v) in &results {
            let name = format!("{}/{}", scope.org, scope.workspace);
            print_verdict(Some(&name), &serde_json::to_value(v)?);
        }
    }
    Ok(exit(all_ok))
}
