//! `paddock admin …`: orgs, workspaces, members and API keys of a running server, over the API
//! (with an API key or the session of `paddock login`).

use crate::Output;
use crate::client::{http_client, send};
use anyhow::{Context, Result};
use clap::Subcommand;
use paddock_types::Role;
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum AdminAction {
    /// Organizations (owners of the installation's first org)
    Orgs {
        #[command(subcommand)]
        action: OrgsAction,
    },
    /// Workspaces of your org (admin or owner)
    Workspaces {
        #[command(subcommand)]
        action: WorkspacesAction,
    },
    /// Members: people who log in with a password (admin or owner)
    Members {
        #[command(subcommand)]
        action: MembersAction,
    },
    /// API keys of your workspace (admin or owner)
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Subcommand)]
pub enum OrgsAction {
    /// Create an org with its first workspace; prints the org's owner API key once, on stdout
    Create {
        name: String,
        /// Name of its first workspace
        #[arg(long, default_value = "default")]
        workspace_name: String,
    },
    /// List the installation's orgs
    List,
}

/// Where `members add` reads the new member's password when there is no terminal.
pub const ENV_MEMBER_PASSWORD: &str = "PADDOCK_MEMBER_PASSWORD";

#[derive(Subcommand)]
pub enum MembersAction {
    /// Add a member; the password is asked twice on a terminal, or read from
    /// PADDOCK_MEMBER_PASSWORD (at least 12 characters)
    Add {
        email: String,
        /// viewer, operator, developer, admin or owner (not above your own)
        #[arg(long)]
        role: Role,
        /// Narrow the member to this workspace (default: every workspace of the org)
        #[arg(long)]
        workspace: Option<String>,
    },
    /// List the members you can see (never passwords)
    List,
    /// Remove a member; its sessions stop working at once
    Remove { id: String },
}

pub async fn admin(
    server: &str,
    token: Option<&str>,
    action: AdminAction,
    output: Output,
) -> Result<ExitCode> {
    match action {
        AdminAction::Orgs { action } => orgs(server, token, action, output).await,
        AdminAction::Workspaces { action } => workspaces(server, token, action, output).await,
        AdminAction::Members { action } => members(server, token, action, output).await,
        AdminAction::Keys { action } => keys(server, token, action, output).await,
    }
}

async fn orgs(
    server: &str,
    token: Option<&str>,
    action: OrgsAction,
    output: Output,
) -> Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let http = http_client(token)?;
    match action {
        OrgsAction::Create {
            name,
            workspace_name,
        } => {
            let v = send(
                base,
                http.post(format!("{base}/v1/orgs"))
                    .json(&json!({"name": name, "workspace_name": workspace_name})),
            )
            .await?;
            if output == Output::Json {
                print_json(&v)?;
            } else {
                let secret = v["key"]["secret"]
                    .as_str()
                    .context("the server sent no key")?;
                eprintln!(
                    "org {} ({}) created with workspace {}; its owner key is shown once, store \
                     it now:",
                    opt(&v["org"]["id"]),
                    opt(&v["org"]["name"]),
                    opt(&v["workspace"]["id"])
                );
                println!("{secret}");
            }
        }
        OrgsAction::List => {
            let v = send(base, http.get(format!("{base}/v1/orgs"))).await?;
            if output == Output::Json {
                print_json(&v)?;
            } else {
                for o in v["data"].as_array().into_iter().flatten() {
                    println!(
                        "{}\t{}\t{}",
                        opt(&o["id"]),
                        opt(&o["name"]),
                        opt(&o["created_at"])
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn members(
    server: &str,
    token: Option<&str>,
    action: MembersAction,
    output: Output,
) -> Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let http = http_client(token)?;
    let v = match action {
        MembersAction::Add {
            email,
            role,
            workspace,
        } => {
            let password = crate::login::read_new_password(ENV_MEMBER_PASSWORD)?;
            let mut body = json!({"email": email, "password": password, "role": role});
            if let Some(ws) = workspace {
                body["workspace"] = json!(ws);
            }
            let v = send(base, http.post(format!("{base}/v1/members")).json(&body)).await?;
            eprintln!("member {} ({}) added", opt(&v["id"]), opt(&v["role"]));
            json!({"data": [v]})
        }
        MembersAction::List => send(base, http.get(format!("{base}/v1/members"))).await?,
        MembersAction::Remove { id } => {
            send(base, http.delete(format!("{base}/v1/members/{id}"))).await?;
            eprintln!("member {id} removed");
            return Ok(ExitCode::SUCCESS);
        }
    };
    if output == Output::Json {
        print_json(&v)?;
    } else {
        for m in v["data"].as_array().into_iter().flatten() {
            let ws = m["workspace"].as_str().unwrap_or("(all workspaces)");
            println!(
                "{}\t{}\t{}\t{ws}\t{}",
                opt(&m["id"]),
                opt(&m["email"]),
                opt(&m["role"]),
                opt(&m["created_at"])
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

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
        /// Narrow the key to these permissions (repeat, or comma-separate), e.g.
        /// `--scope runs:create,runs:read`; default: all of its role's
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Vec<String>,
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

async fn keys(
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
            scopes,
        } => {
            let mut body = json!({"name": name, "role": role});
            if !scopes.is_empty() {
                body["scopes"] = json!(scopes);
            }
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

async fn workspaces(
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
