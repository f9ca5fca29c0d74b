//! `paddock secrets …` (over the API) and `paddock vault …` (offline, on the data folder).

use crate::Output;
use crate::client::send;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::io::{IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum SecretsAction {
    /// Create or replace a secret. The value is read from stdin unless --value is given (a value
    /// on the command line ends up in your shell history).
    Set {
        name: String,
        #[arg(long)]
        value: Option<String>,
    },
    /// List secret names (values are never shown)
    List,
    /// Delete a secret
    Delete { name: String },
}

pub async fn secrets(
    server: &str,
    api_key: Option<&str>,
    end_user: Option<&str>,
    action: SecretsAction,
    output: Output,
) -> Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let http = crate::client::http_client_as(api_key, end_user)?;
    let value = match action {
        SecretsAction::Set { name, value } => {
            let value = match value {
                Some(v) => v,
                None => read_stdin_value()?,
            };
            let v = send(
                base,
                http.put(format!("{base}/v1/secrets/{name}"))
                    .json(&serde_json::json!({ "value": value })),
            )
            .await?;
            eprintln!("secret {name} saved");
            v
        }
        SecretsAction::List => send(base, http.get(format!("{base}/v1/secrets"))).await?,
        SecretsAction::Delete { name } => {
            send(base, http.delete(format!("{base}/v1/secrets/{name}"))).await?;
            eprintln!("secret {name} deleted");
            return Ok(ExitCode::SUCCESS);
        }
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        Output::Text => {
            if let Some(list) = value["data"].as_array() {
                for s in list {
                    println!(
                        "{}\t{}",
                        s["name"].as_str().unwrap_or(""),
                        s["updated_at"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_stdin_value() -> Result<String> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("value (end with Ctrl-D): ");
    }
    let mut value = String::new();
    stdin
        .read_to_string(&mut value)
        .context("cannot read the secret value from stdin")?;
    // A trailing newline from `echo` or the terminal is not part of a token.
    let value = value.strip_suffix('\n').unwrap_or(&value);
    let value = value.strip_suffix('\r').unwrap_or(value).to_owned();
    if value.is_empty() {
        bail!(
            "empty secret value; pipe it in (`printf %s \"$TOKEN\" | paddock secrets set NAME`) or use --value"
        );
    }
    Ok(value)
}

#[derive(Subcommand)]
pub enum VaultAction {
    /// Generate a new master key and rewrap every workspace's data key with it (secrets
    /// themselves are not re-encrypted). With --server, the running server does it without
    /// downtime (owner key); without, it works on --data-dir with the server stopped.
    RotateMasterKey {
        /// A running server to rotate online, e.g. http://127.0.0.1:8420
        #[arg(long)]
        server: Option<String>,
        /// An owner API key for --server
        #[arg(long, env = "PADDOCK_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
}

pub async fn vault(data_dir: &Path, action: VaultAction, output: Output) -> Result<ExitCode> {
    let VaultAction::RotateMasterKey { server, api_key } = action;
    let report = match server {
        Some(server) => {
            let base = server.trim_end_matches('/');
            let http = crate::client::http_client(api_key.as_deref())?;
            send(base, http.post(format!("{base}/v1/vault/rotate"))).await?
        }
        None => {
            let store = paddock_store::SqliteStore::open(data_dir).with_context(|| {
                format!(
                    "cannot open the data folder {} (while `paddock serve` runs, use --server)",
                    data_dir.display()
                )
            })?;
            let vault = paddock_vault::Vault::open(store, data_dir).await?;
            let r = vault.rotate_master_key().await?;
            serde_json::json!({
                "old_master_key_id": r.old_master_key_id,
                "new_master_key_id": r.new_master_key_id,
                "workspaces": r.workspaces,
                "data_keys": r.data_keys,
            })
        }
    };
    match output {
        Output::Json => println!("{report}"),
        Output::Text => eprintln!(
            "master key rotated: {} -> {} ({} data keys in {} workspaces rewrapped)",
            report["old_master_key_id"].as_str().unwrap_or("?"),
            report["new_master_key_id"].as_str().unwrap_or("?"),
            report["data_keys"],
            report["workspaces"]
        ),
    }
    Ok(ExitCode::SUCCESS)
}
