//! `paddock login` / `paddock logout`, and the stored sessions other remote commands use.
//!
//! A session token is kept per server URL in `sessions.json` under `$PADDOCK_CONFIG_DIR` (or
//! `~/.config/paddock/`), a file only its owner can read (0600, in a 0700 folder). It is written
//! to a temporary file and renamed into place, so a crash never leaves half a file.

use crate::Output;
use crate::client::{http_client, send};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Where the password comes from when there is no terminal to ask on.
pub const ENV_PASSWORD: &str = "PADDOCK_PASSWORD";
/// Overrides `~/.config/paddock` as the folder of `sessions.json`.
pub const ENV_CONFIG_DIR: &str = "PADDOCK_CONFIG_DIR";

/// One stored session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub token: String,
    pub email: String,
    pub workspace: String,
    pub role: String,
    pub expires_at: String,
}

fn config_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os(ENV_CONFIG_DIR).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("cannot find the home folder (HOME is not set); set PADDOCK_CONFIG_DIR")?;
    Ok(PathBuf::from(home).join(".config").join("paddock"))
}

fn sessions_file() -> Result<PathBuf> {
    Ok(config_dir()?.join("sessions.json"))
}

/// The key a server's session is stored under.
fn server_key(server: &str) -> String {
    server.trim().trim_end_matches('/').to_owned()
}

fn load_all() -> Result<BTreeMap<String, Stored>> {
    let path = sessions_file()?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a valid sessions file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn save_all(all: &BTreeMap<String, Stored>) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let path = sessions_file()?;
    let dir = path
        .parent()
        .context("the sessions file has no folder")?
        .to_owned();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".sessions.json.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    // `mode` applies only to a new file: make sure a leftover one is private too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(&serde_json::to_vec_pretty(all)?)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// The stored session token for `server`, if any. A missing or unreadable file means none
/// (the server then answers 401 with what to do).
pub fn stored_token(server: &str) -> Option<String> {
    load_all()
        .ok()?
        .remove(&server_key(server))
        .map(|s| s.token)
}

fn read_password(prompt: &str, env: &str) -> Result<String> {
    if let Ok(p) = std::env::var(env)
        && !p.is_empty()
    {
        return Ok(p);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("no password: set {env} or run on a terminal to be asked");
    }
    rpassword::prompt_password(prompt).context("cannot read the password")
}

/// Reads a new password twice on a terminal (or once from `env`).
pub fn read_new_password(env: &str) -> Result<String> {
    if let Ok(p) = std::env::var(env)
        && !p.is_empty()
    {
        return Ok(p);
    }
    let first = read_password("New password: ", env)?;
    let again = rpassword::prompt_password("Repeat it: ").context("cannot read the password")?;
    if first != again {
        bail!("the passwords differ");
    }
    Ok(first)
}

pub async fn login(
    server: &str,
    email: &str,
    workspace: Option<String>,
    org: Option<String>,
    output: Output,
) -> Result<ExitCode> {
    let base = server_key(server);
    let password = read_password(&format!("Password for {email}: "), ENV_PASSWORD)?;
    let mut body = json!({"email": email, "password": password});
    if let Some(ws) = workspace {
        body["workspace"] = json!(ws);
    }
    if let Some(org) = org {
        body["org"] = json!(org);
    }
    let http = http_client(None)?;
    let v: Value = send(&base, http.post(format!("{base}/v1/sessions")).json(&body)).await?;
    let token = v["token"]
        .as_str()
        .context("the server sent no session token")?
        .to_owned();
    let text = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    let stored = Stored {
        token,
        email: v["member"]["email"].as_str().unwrap_or(email).to_owned(),
        workspace: text("workspace"),
        role: text("role"),
        expires_at: text("expires_at"),
    };
    let mut all = load_all()?;
    all.insert(base.clone(), stored.clone());
    save_all(&all)?;
    if output == Output::Json {
        let mut shown = v.clone();
        if let Some(o) = shown.as_object_mut() {
            o.remove("token");
        }
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        eprintln!(
            "logged in to {base} as {} ({}) in workspace {}; the session expires at {}",
            stored.email, stored.role, stored.workspace, stored.expires_at
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn logout(server: &str) -> Result<ExitCode> {
    let base = server_key(server);
    let mut all = load_all()?;
    let Some(stored) = all.remove(&base) else {
        eprintln!("not logged in to {base}");
        return Ok(ExitCode::SUCCESS);
    };
    // Forget it locally whatever the server says: a dead session is no use either.
    save_all(&all)?;
    let http = http_client(Some(&stored.token))?;
    match send(&base, http.delete(format!("{base}/v1/sessions/current"))).await {
        Ok(_) => eprintln!("logged out of {base}"),
        Err(e) => eprintln!("forgot the session of {base}; the server said: {e:#}"),
    }
    Ok(ExitCode::SUCCESS)
}
