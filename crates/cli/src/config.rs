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
    if cfg.engine.lease_secs < 3 {
        anyhow::bail!("invalid configuration: engine.lease_secs must be at least 3");
    }
    Ok(cfg)
}
