//! `paddock keys …` and `paddock workspaces …`: API keys and workspaces over the API.

use crate::Output;
use crate::client::{http_client, send};
use anyhow::{Context, Result};
use clap::Subcommand;
use paddock_types::Role;
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum KeysAction {
    /// Create a key; its secret is printed once, on stdout
    Create {
        name: String,
        /// viewer, operator, developer, admin or owner (not above your own key's)
        #[arg(long)]
        role: Role,
        /// The key stops working after this long (e.g. 30d, 12h)
        #[arg(long)]
        expires_in: Option<humantime::Duration>,
        /// Create it in another workspace of your org (owner keys only)
        #[arg(long)]
        workspace: Option<String>,
    },
    /// List the workspace's keys (never their secrets)
    List,
    /// Revoke a key; it stops working at once
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum WorkspacesAction {
    /// Create a workspace in your org
    Create { name: String },
    /// List your org's workspaces
    List,
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn opt(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

pub async fn keys(
    server: &str,
    api_key: Option<&str>,
    action: KeysAction,
    output: Output,
) -> Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let http = http_client(api_key)?;
    match action {
        KeysAction::Create {
            name,
            role,
            expires_in,
            workspace,
        } => {
            let mut body = json!({"name": name, "role": role});
            if let Some(d) = expires_in {
                body["expires_in_secs"] = json!(d.as_secs().max(1));
            }
            if let Some(ws) = workspace {
                body["workspace"] = json!(ws);
            }
            let v = send(base, http.post(format!("{base}/v1/keys")).json(&body)).await?;
            if output == Output::Json {
                print_json(&v)?;
            } else {
                let secret = v["secret"].as_str().context("the server sent no secret")?;
                eprintln!(
                    "key {} ({}) created; its secret is shown once, store it now:",
                    opt(&v["key"]["id"]),
                    opt(&v["key"]["role"])
                );
                println!("{secret}");
            }
        }
        KeysAction::List => {
            let v = send(base, http.get(format!("{base}/v1/keys"))).await?;
            if output == Output::Json {
                print_json(&v)?;
            } else {
                for k in v["data"].as_array().into_iter().flatten() {
                    let state = if k["revoked_at"].is_string() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{}\t{}\t{}\t{}…\t{state}\texpires {}\tlast used {}",
                        opt(&k["id"]),
                        opt(&k["name"]),
                        opt(&k["role"]),
                        opt(&k["prefix"]),
                        opt(&k["expires_at"]),
                        opt(&k["last_used_at"])
                    );
                }
            }
        }
        KeysAction::Revoke { id } => {
            send(base, http.delete(format!("{base}/v1/keys/{id}"))).await?;
            eprintln!("key {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn workspaces(
    server: &str,
    api_key: Option<&str>,
    action: WorkspacesAction,
    output: Output,
) -> Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let http = http_client(api_key)?;
    let v = match action {
        WorkspacesAction::Create { name } => {
            let v = send(
                base,
                http.post(format!("{base}/v1/workspaces"))
                    .json(&json!({ "name": name })),
            )
            .await?;
            eprintln!("workspace {} created", opt(&v["id"]));
            json!({"data": [v]})
        }
        WorkspacesAction::List => send(base, http.get(format!("{base}/v1/workspaces"))).await?,
    };
    if output == Output::Json {
        print_json(&v)?;
    } else {
        for w in v["data"].as_array().into_iter().flatten() {
            println!(
                "{}\t{}\t{}",
                opt(&w["id"]),
                opt(&w["name"]),
                opt(&w["created_at"])
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
