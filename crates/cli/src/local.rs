//! `paddock run AGENT_DIR --input JSON`: a one-off run on an embedded store, with each journal
//! event shown on stderr as it is committed.

use crate::Output;
use crate::serve::{Tools, open_runtime};
use anyhow::{Context, Result};
use paddock_engine::EngineConfig;
use paddock_types::api::CreateRun;
use paddock_types::event::ApprovalDecision;
use paddock_types::{Event, EventKind, RunStatus, Scope};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub async fn run(
    agent_dir: &Path,
    input: &str,
    config_file: Option<&Path>,
    data_dir: Option<PathBuf>,
    auto_approve: bool,
    output: Output,
) -> Result<ExitCode> {
    let input: serde_json::Value = serde_json::from_str(input)
        .context("--input is not valid JSON (quote it, e.g. --input '{\"topic\":\"otters\"}')")?;
    let def = paddock_harness::load_dir(agent_dir)?;
    let cfg = crate::config::load(config_file, &Default::default())?;
    let (_tmp, data_dir) = match data_dir {
        Some(d) => (None, d),
        None => {
            let t = tempfile::tempdir().context("cannot create a temporary data folder")?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let engine = open_runtime(
        &data_dir,
        &cfg.providers,
        EngineConfig::default(),
        Tools::Sandboxed(&cfg.sandbox, &cfg.egress),
    )
    .await?
    .engine;
    let scope = Scope::default_workspace();
    let agent = def.manifest.name.clone();
    engine.put_agent(&scope, def).await?;
    engine.start();
    let mut rx = engine.store().subscribe();
    let run = engine
        .create_run(
            &scope,
            CreateRun {
                agent,
                input,
                metadata: None,
            },
        )
        .await?;
    eprintln!("run {} started", run.id);
    let mut seen = 0u64;
    let final_run = loop {
        let events = engine.store().events(&scope, &run.id, seen, 1000).await?;
        for ev in &events {
            seen = ev.seq;
            eprintln!("{}", describe(ev));
            if let EventKind::ApprovalRequested { approval_id, call } = &ev.kind {
                let approve = auto_approve || ask(&call.name, &call.arguments)?;
                let decision = if approve {
                    ApprovalDecision::Approve
                } else {
                    ApprovalDecision::Deny
                };
                engine
                    .decide(&scope, &run.id, approval_id, decision, None)
                    .await?;
            }
        }
        let current = engine
            .store()
            .get_run(&scope, &run.id)
            .await?
            .context("run vanished")?;
        if current.status.is_terminal() && current.last_seq <= seen {
            break current;
        }
        if events.is_empty() {
            // Wait for the next commit of anything, then look again.
            let _ = rx.recv().await;
        }
    };
    engine.shutdown();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&final_run)?),
        Output::Text => {
            if let Some(out) = &final_run.output {
                println!("{}", serde_json::to_string_pretty(out)?);
            }
            let u = &final_run.usage;
            eprintln!(
                "run {} {}: {} model calls, {} tool calls, {} tokens, ${:.6}",
                final_run.id,
                final_run.status,
                u.model_calls,
                u.tool_calls,
                u.input_tokens + u.output_tokens,
                u.cost_usd
            );
            if let Some(e) = &final_run.error {
                eprintln!("error [{}]: {}", e.code, e.message);
            }
        }
    }
    Ok(if final_run.status == RunStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn ask(tool: &str, args: &serde_json::Value) -> Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        anyhow::bail!(
            "tool call {tool} needs approval and stdin is not a terminal; rerun with --auto-approve to approve every call"
        );
    }
    eprint!("approve {tool} {args}? [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// One line per journal event for humans.
pub fn describe(ev: &Event) -> String {
    let detail = match &ev.kind {
        EventKind::RunCreated {
            agent,
            agent_version,
            ..
        } => format!("{agent}@{agent_version}"),
        EventKind::RunStarted { recovered, .. } if *recovered => "recovered".to_owned(),
        EventKind::ModelRequested {
            call_index, model, ..
        } => format!("#{call_index} {model}"),
        EventKind::ModelResponded {
            response,
            latency_ms,
            ..
        } => {
            let calls: Vec<&str> = response
                .tool_calls
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            if calls.is_empty() {
                format!(
                    "answer ({} tokens, {latency_ms} ms)",
                    response.usage.total()
                )
            } else {
                format!("calls {} ({latency_ms} ms)", calls.join(", "))
            }
        }
        EventKind::PolicyDecided { tool, decision, .. } => format!("{tool}: {decision:?}"),
        EventKind::ApprovalRequested { call, approval_id } => {
            format!("{} needs approval ({approval_id})", call.name)
        }
        EventKind::ApprovalDecided { decision, .. } => format!("{decision:?}"),
        EventKind::ToolCallStarted { tool, .. } => tool.clone(),
        EventKind::ToolCallCompleted {
            tool,
            output,
            is_error,
            ..
        } => {
            let first: String = output
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(80)
                .collect();
            format!("{tool}{} {first}", if *is_error { " error:" } else { ":" })
        }
        EventKind::OutputValidated { valid, .. } => {
            if *valid { "valid" } else { "invalid" }.to_owned()
        }
        EventKind::RunFailed { error } | EventKind::RunTimedOut { error } => {
            format!("[{}] {}", error.code, error.message)
        }
        _ => String::new(),
    };
    format!("  {:>4} {:<20} {detail}", ev.seq, ev.kind.type_name())
}
