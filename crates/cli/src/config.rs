//! `paddock serve` configuration, layered: defaults → `paddock.toml` → `PADDOCK_*` environment
//! variables (`__` separates nested keys, e.g. `PADDOCK_ENGINE__MAX_CONCURRENT_RUNS=64`) → flags.

use anyhow::{Context, Result};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use paddock_models::ProviderConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Every agent folder under this directory is registered at start.
    #[serde(default)]
    pub agents_dir: Option<PathBuf>,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default)]
    pub sandbox: SandboxSection,
    #[serde(default)]
    pub egress: EgressSection,
}

/// `[sandbox]`: where tools run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSection {
    /// `process` (Linux namespaces; the default) or `none` (no isolation: development only).
    #[serde(default = "default_tier")]
    pub tier: String,
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    #[serde(default = "default_pids")]
    pub pids: u32,
    #[serde(default = "default_cpu_secs")]
    pub cpu_secs: u64,
    /// Longest a single tool call may run.
    #[serde(default = "default_call_timeout_secs")]
    pub call_timeout_secs: u64,
    /// Per stream (stdout, stderr) returned to the model.
    #[serde(default = "default_output_kb")]
    pub output_kb: usize,
    #[serde(default = "default_tmp_mb")]
    pub tmp_mb: u64,
    /// Largest file a tool may write.
    #[serde(default = "default_file_mb")]
    pub file_mb: u64,
    /// Keep a run's workspace when it ends (under `<data_dir>/workspaces`) instead of deleting it.
    #[serde(default)]
    pub keep_workspaces: bool,
}

fn default_tier() -> String {
    "process".to_owned()
}
fn default_memory_mb() -> u64 {
    512
}
fn default_pids() -> u32 {
    128
}
fn default_cpu_secs() -> u64 {
    60
}
fn default_call_timeout_secs() -> u64 {
    120
}
fn default_output_kb() -> usize {
    64
}
fn default_tmp_mb() -> u64 {
    64
}
fn default_file_mb() -> u64 {
    256
}

impl Default for SandboxSection {
    fn default() -> Self {
        Self {
            tier: default_tier(),
            memory_mb: default_memory_mb(),
            pids: default_pids(),
            cpu_secs: default_cpu_secs(),
            call_timeout_secs: default_call_timeout_secs(),
            output_kb: default_output_kb(),
            tmp_mb: default_tmp_mb(),
            file_mb: default_file_mb(),
            keep_workspaces: false,
        }
    }
}

/// `[egress]`: the broker's operator settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSection {
    /// `host:port` targets on loopback/private addresses that agents may reach anyway (off by
    /// default: such addresses are refused even when an allow rule names the host).
    #[serde(default)]
    pub allow_private: Vec<String>,
    /// PEM files of extra root certificates trusted for upstream TLS.
    #[serde(default)]
    pub extra_root_certs: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_runs: usize,
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

fn default_max_concurrent() -> usize {
    512
}
fn default_lease_secs() -> u64 {
    30
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            max_concurrent_runs: default_max_concurrent(),
            lease_secs: default_lease_secs(),
        }
    }
}

/// Flags that override the file and the environment.
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub agents_dir: Option<PathBuf>,
}

pub fn load(file: Option<&Path>, o: &Overrides) -> Result<Config> {
    let mut fig = Figment::new()
        .merge(Serialized::default("listen", "127.0.0.1:8420"))
        .merge(Serialized::default("data_dir", "./paddock-data"));
    match file {
        Some(f) => {
            if !f.exists() {
                anyhow::bail!("config file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        // The default file is optional; `Toml::file` would also search parent folders, which
        // could pick up an unrelated project's config.
        None if Path::new("paddock.toml").is_file() => {
            fig = fig.merge(Toml::file_exact("paddock.toml"))
        }
        None => {}
    }
    fig = fig.merge(
        Env::prefixed("PADDOCK_")
            .filter(|k| {
                // Other PADDOCK_* variables (PADDOCK_LOG, secrets' env vars) are not config.
                let k = k.as_str().to_ascii_lowercase();
                ["listen", "data_dir", "agents_dir"].contains(&k.as_str())
                    || k.starts_with("engine__")
                    || k.starts_with("sandbox__")
                    || k.starts_with("egress__")
                    || k.starts_with("providers__")
            })
            .split("__"),
    );
    if let Some(l) = o.listen {
        fig = fig.merge(Serialized::default("listen", l.to_string()));
    }
    if let Some(d) = &o.data_dir {
        fig = fig.merge(Serialized::default("data_dir", d));
    }
    if let Some(a) = &o.agents_dir {
        fig = fig.merge(Serialized::default("agents_dir", a));
    }
    let cfg: Config = fig.extract().context("invalid configuration")?;
    if cfg.engine.max_concurrent_runs == 0 {
        anyhow::bail!("invalid configuration: engine.max_concurrent_runs must be at least 1");
    }
    if !["process", "none"].contains(&cfg.sandbox.tier.as_str()) {
        anyhow::bail!(
            "invalid configuration: sandbox.tier must be \"process\" or \"none\", not {:?}",
            cfg.sandbox.tier
        );
    }
    if cfg.engine.lease_secs < 3 {
        anyhow::bail!("invalid configuration: engine.lease_secs must be at least 3");
    }
    Ok(cfg)
}
