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
use std::time::Duration;

#[derive(Debug, Deserialize)]
pub struct Config {
    /// Everything above as the layers merged it (defaults, file, environment, flags), for the
    /// audit trail's record of configuration changes. Holds no secret: keys are named by their
    /// environment variables, never held.
    #[serde(skip)]
    pub effective: serde_json::Value,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Start even if `data_dir` is readable or writable by group or others (off: such a folder
    /// is refused, since it holds every tenant's journal and the master key).
    #[serde(default)]
    pub allow_shared_data_dir: bool,
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
    #[serde(default)]
    pub rate_limits: RateLimitsSection,
    #[serde(default)]
    pub auth: AuthSection,
}

/// `[auth]`: members' login sessions and the login throttle (`paddock_server::ThrottleSettings`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// How long a session from `POST /v1/sessions` (`paddock login`) works (default 12 h).
    #[serde(default = "default_session_ttl_secs")]
    pub session_ttl_secs: u64,
    /// Failed logins for one email from one address before that address backs off (1, 2, 4 … s).
    #[serde(default = "default_login_free_failures")]
    pub login_free_failures: u32,
    /// The longest backoff: the most a member waits after their own mistakes.
    #[serde(default = "default_login_backoff_max_secs")]
    pub login_backoff_max_secs: u64,
    /// Failed logins for one email from all addresses after which no address gets free failures.
    #[serde(default = "default_login_email_budget")]
    pub login_email_budget: u32,
    /// Login attempts one address may make per minute, sustained (0 turns the bucket off)…
    #[serde(default = "default_login_per_source_per_minute")]
    pub login_per_source_per_minute: f64,
    /// …and back to back from idle.
    #[serde(default = "default_login_per_source_burst")]
    pub login_per_source_burst: u32,
}

fn default_login_free_failures() -> u32 {
    paddock_server::ThrottleSettings::default().free_failures
}
fn default_login_backoff_max_secs() -> u64 {
    paddock_server::ThrottleSettings::default()
        .backoff_max
        .as_secs()
}
fn default_login_email_budget() -> u32 {
    paddock_server::ThrottleSettings::default().email_budget
}
fn default_login_per_source_per_minute() -> f64 {
    paddock_server::ThrottleSettings::default()
        .per_source
        .map_or(0.0, |q| q.per_second * 60.0)
}
fn default_login_per_source_burst() -> u32 {
    paddock_server::ThrottleSettings::default()
        .per_source
        .map_or(1, |q| q.burst)
}

impl AuthSection {
    /// The login throttle; fails on a setting that would lock out or never throttle.
    pub fn throttle(&self) -> Result<paddock_server::ThrottleSettings> {
        if self.login_free_failures == 0 {
            anyhow::bail!("invalid configuration: auth.login_free_failures must be at least 1");
        }
        if self.login_backoff_max_secs == 0 || self.login_backoff_max_secs > 3600 {
            anyhow::bail!(
                "invalid configuration: auth.login_backoff_max_secs must be 1 to 3600 (a longer wait is a lockout)"
            );
        }
        let rate = self.login_per_source_per_minute;
        if !rate.is_finite() || rate < 0.0 {
            anyhow::bail!(
                "invalid configuration: auth.login_per_source_per_minute must be 0 (off) or a positive number"
            );
        }
        if rate > 0.0 && self.login_per_source_burst == 0 {
            anyhow::bail!("invalid configuration: auth.login_per_source_burst must be at least 1");
        }
        Ok(paddock_server::ThrottleSettings {
            free_failures: self.login_free_failures,
            backoff_max: Duration::from_secs(self.login_backoff_max_secs),
            email_budget: self.login_email_budget,
            per_source: (rate > 0.0).then_some(paddock_server::Quota {
                per_second: rate / 60.0,
                burst: self.login_per_source_burst,
            }),
            ..paddock_server::ThrottleSettings::default()
        })
    }
}

fn default_session_ttl_secs() -> u64 {
    12 * 3600
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            session_ttl_secs: default_session_ttl_secs(),
            login_free_failures: default_login_free_failures(),
            login_backoff_max_secs: default_login_backoff_max_secs(),
            login_email_budget: default_login_email_budget(),
            login_per_source_per_minute: default_login_per_source_per_minute(),
            login_per_source_burst: default_login_per_source_burst(),
        }
    }
}

/// `[rate_limits]`: API request rates (GCRA, in this process's memory), per API key and per
/// workspace. A `*_per_second` of 0 turns that limit off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsSection {
    /// Sustained requests per second of one API key.
    #[serde(default = "default_key_rate")]
    pub per_key_per_second: f64,
    /// Requests one key may send back to back from idle.
    #[serde(default = "default_key_burst")]
    pub per_key_burst: u32,
    /// Sustained requests per second of a whole workspace (all its keys together).
    #[serde(default = "default_workspace_rate")]
    pub per_workspace_per_second: f64,
    #[serde(default = "default_workspace_burst")]
    pub per_workspace_burst: u32,
    /// Concurrent event streams (SSE) and `?wait=` requests one key (or session) may hold open;
    /// 0 for no cap.
    #[serde(default = "default_key_streams")]
    pub streams_per_key: u32,
    /// The same for a whole workspace (all its keys together); 0 for no cap.
    #[serde(default = "default_workspace_streams")]
    pub streams_per_workspace: u32,
}

fn default_key_streams() -> u32 {
    paddock_server::StreamCaps::default().per_key.unwrap_or(0)
}
fn default_workspace_streams() -> u32 {
    paddock_server::StreamCaps::default()
        .per_workspace
        .unwrap_or(0)
}

fn default_key_rate() -> f64 {
    100.0
}
fn default_key_burst() -> u32 {
    200
}
fn default_workspace_rate() -> f64 {
    500.0
}
fn default_workspace_burst() -> u32 {
    1000
}

impl Default for RateLimitsSection {
    fn default() -> Self {
        Self {
            per_key_per_second: default_key_rate(),
            per_key_burst: default_key_burst(),
            per_workspace_per_second: default_workspace_rate(),
            per_workspace_burst: default_workspace_burst(),
            streams_per_key: default_key_streams(),
            streams_per_workspace: default_workspace_streams(),
        }
    }
}

impl RateLimitsSection {
    /// The caps on concurrent event streams and `?wait=` requests (0 turns one off).
    pub fn stream_caps(&self) -> paddock_server::StreamCaps {
        let cap = |n: u32| (n > 0).then_some(n);
        paddock_server::StreamCaps {
            per_key: cap(self.streams_per_key),
            per_workspace: cap(self.streams_per_workspace),
        }
    }

    /// The server's limits; fails on a negative rate or a zero burst under a rate.
    pub fn limits(&self) -> Result<paddock_server::RateLimits> {
        let quota = |name: &str, per_second: f64, burst: u32| {
            if !per_second.is_finite() || per_second < 0.0 {
                anyhow::bail!(
                    "invalid configuration: rate_limits.{name}_per_second must be 0 (off) or a positive number"
                );
            }
            if per_second == 0.0 {
                return Ok(None);
            }
            if per_second < 0.001 {
                anyhow::bail!(
                    "invalid configuration: rate_limits.{name}_per_second must be at least 0.001 (or 0 for off)"
                );
            }
            if burst == 0 {
                anyhow::bail!("invalid configuration: rate_limits.{name}_burst must be at least 1");
            }
            Ok(Some(paddock_server::Quota { per_second, burst }))
        };
        Ok(paddock_server::RateLimits {
            per_key: quota("per_key", self.per_key_per_second, self.per_key_burst)?,
            per_workspace: quota(
                "per_workspace",
                self.per_workspace_per_second,
                self.per_workspace_burst,
            )?,
        })
    }
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
    /// Disk one run's workspace may use (bytes in blocks, each file or folder counting at least
    /// 4 KiB), enforced around and during every tool call (0 = no quota).
    #[serde(default = "default_workspace_mb")]
    pub workspace_mb: u64,
    /// Disk the workspaces of all running runs of one tenant workspace may use together
    /// (0 = no total).
    #[serde(default = "default_tenant_workspace_mb")]
    pub tenant_workspace_mb: u64,
    /// Files and folders one run's workspace may hold: the quota's walk visits each at every
    /// check, so this bounds its cost on the server; more counts as over quota (0 = no cap).
    #[serde(default = "default_workspace_files")]
    pub workspace_files: u64,
    /// Free space kept on the data folder's file system (workspaces and database share it) for
    /// the database: below it, tool calls are refused and a running one is stopped at the next
    /// check. A polled check, not a kernel guarantee (0 = no reserve).
    #[serde(default = "default_disk_reserve_mb")]
    pub disk_reserve_mb: u64,
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
fn default_workspace_mb() -> u64 {
    1024
}
fn default_tenant_workspace_mb() -> u64 {
    10 * 1024
}
fn default_workspace_files() -> u64 {
    100_000
}
fn default_disk_reserve_mb() -> u64 {
    512
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
            workspace_mb: default_workspace_mb(),
            tenant_workspace_mb: default_tenant_workspace_mb(),
            workspace_files: default_workspace_files(),
            disk_reserve_mb: default_disk_reserve_mb(),
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
    /// `host:port` targets where `[[credentials]]` bindings with `scheme = "http"` may inject
    /// secrets in clear text (off by default: such requests are refused with
    /// `plaintext_credential`). An operator decision; an agent manifest cannot ask for it alone.
    #[serde(default)]
    pub plaintext_credentials: Vec<String>,
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
    /// Runs of one workspace running at once; more wait in `queued` (0 = no cap).
    #[serde(default = "default_max_running_per_workspace")]
    pub max_running_per_workspace: usize,
}

fn default_max_concurrent() -> usize {
    512
}
fn default_lease_secs() -> u64 {
    30
}
fn default_max_running_per_workspace() -> usize {
    20
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            max_concurrent_runs: default_max_concurrent(),
            lease_secs: default_lease_secs(),
            max_running_per_workspace: default_max_running_per_workspace(),
        }
    }
}

/// Flags that override the file and the environment.
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub agents_dir: Option<PathBuf>,
    /// `--allow-shared-data-dir` (only turns the setting on).
    pub allow_shared_data_dir: bool,
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
                ["listen", "data_dir", "agents_dir", "allow_shared_data_dir"].contains(&k.as_str())
                    || k.starts_with("engine__")
                    || k.starts_with("sandbox__")
                    || k.starts_with("egress__")
                    || k.starts_with("rate_limits__")
                    || k.starts_with("auth__")
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
    if o.allow_shared_data_dir {
        fig = fig.merge(Serialized::default("allow_shared_data_dir", true));
    }
    let mut cfg: Config = fig.extract().context("invalid configuration")?;
    cfg.effective = fig.extract().context("invalid configuration")?;
    if cfg.engine.max_concurrent_runs == 0 {
        anyhow::bail!("invalid configuration: engine.max_concurrent_runs must be at least 1");
    }
    if !["process", "none"].contains(&cfg.sandbox.tier.as_str()) {
        anyhow::bail!(
            "invalid configuration: sandbox.tier must be \"process\" or \"none\", not {:?}",
            cfg.sandbox.tier
        );
    }
    if !(60..=30 * 24 * 3600).contains(&cfg.auth.session_ttl_secs) {
        anyhow::bail!(
            "invalid configuration: auth.session_ttl_secs must be between 60 and 2592000 (30 days)"
        );
    }
    // The sandbox helper maps about 32 MiB itself, and without cgroups it lives under the same
    // address-space cap as the command until it starts it.
    if !(64..=1 << 24).contains(&cfg.sandbox.memory_mb) {
        anyhow::bail!(
            "invalid configuration: sandbox.memory_mb must be between 64 and 16777216, not {}",
            cfg.sandbox.memory_mb
        );
    }
    if cfg.sandbox.workspace_mb > 0
        && cfg.sandbox.workspace_mb > cfg.sandbox.tenant_workspace_mb
        && cfg.sandbox.tenant_workspace_mb > 0
    {
        anyhow::bail!(
            "invalid configuration: sandbox.workspace_mb ({}) is larger than sandbox.tenant_workspace_mb ({}); raise the total or lower the per-run quota",
            cfg.sandbox.workspace_mb,
            cfg.sandbox.tenant_workspace_mb
        );
    }
    for (key, mb) in [
        ("sandbox.workspace_mb", cfg.sandbox.workspace_mb),
        (
            "sandbox.tenant_workspace_mb",
            cfg.sandbox.tenant_workspace_mb,
        ),
        ("sandbox.disk_reserve_mb", cfg.sandbox.disk_reserve_mb),
    ] {
        if mb > 1 << 30 {
            anyhow::bail!("invalid configuration: {key} must be at most 1073741824 (MB), not {mb}");
        }
    }
    if cfg.engine.lease_secs < 3 {
        anyhow::bail!("invalid configuration: engine.lease_secs must be at least 3");
    }
    cfg.rate_limits.limits()?;
    cfg.auth.throttle()?;
    Ok(cfg)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn load_toml(toml: &str) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("paddock.toml");
        std::fs::write(&file, toml).unwrap();
        load(Some(&file), &Overrides::default())
    }

    #[test]
    fn rate_limits_and_the_workspace_cap_have_generous_defaults() {
        let cfg = load_toml("").unwrap();
        assert_eq!(cfg.engine.max_running_per_workspace, 20);
        let limits = cfg.rate_limits.limits().unwrap();
        let key = limits.per_key.unwrap();
        assert_eq!((key.per_second, key.burst), (100.0, 200));
        let ws = limits.per_workspace.unwrap();
        assert_eq!((ws.per_second, ws.burst), (500.0, 1000));
    }

    #[test]
    fn a_zero_rate_turns_a_limit_off_and_bad_values_are_refused() {
        let cfg = load_toml(
            "[engine]\nmax_running_per_workspace = 0\n\
             [rate_limits]\nper_key_per_second = 0\nper_workspace_per_second = 2.5\n\
             per_workspace_burst = 5\n",
        )
        .unwrap();
        assert_eq!(cfg.engine.max_running_per_workspace, 0);
        let limits = cfg.rate_limits.limits().unwrap();
        assert!(limits.per_key.is_none());
        let ws = limits.per_workspace.unwrap();
        assert_eq!((ws.per_second, ws.burst), (2.5, 5));
        for bad in [
            "[rate_limits]\nper_key_per_second = -1\n",
            "[rate_limits]\nper_key_burst = 0\n",
            "[rate_limits]\nper_workspace_per_second = 0.0001\n",
            "[rate_limits]\nper_minute = 3\n",
        ] {
            let e = load_toml(bad).unwrap_err();
            assert!(
                format!("{e:#}").contains("rate_limits") || format!("{e:#}").contains("per_minute"),
                "{bad}: {e:#}"
            );
        }
    }

    #[test]
    fn stream_caps_and_the_login_throttle_have_defaults_and_checked_values() {
        let cfg = load_toml("").unwrap();
        let caps = cfg.rate_limits.stream_caps();
        assert_eq!((caps.per_key, caps.per_workspace), (Some(32), Some(256)));
        let t = cfg.auth.throttle().unwrap();
        assert_eq!(t, paddock_server::ThrottleSettings::default());
        let cfg = load_toml(
            "[rate_limits]\nstreams_per_key = 0\nstreams_per_workspace = 4\n\
             [auth]\nlogin_backoff_max_secs = 5\nlogin_per_source_per_minute = 0\n",
        )
        .unwrap();
        let caps = cfg.rate_limits.stream_caps();
        assert_eq!((caps.per_key, caps.per_workspace), (None, Some(4)));
        let t = cfg.auth.throttle().unwrap();
        assert_eq!(t.backoff_max, Duration::from_secs(5));
        assert!(t.per_source.is_none());
        for bad in [
            "[auth]\nlogin_free_failures = 0\n",
            "[auth]\nlogin_backoff_max_secs = 86400\n",
            "[auth]\nlogin_per_source_per_minute = -1\n",
            "[auth]\nlogin_per_source_burst = 0\n",
        ] {
            let e = format!("{:#}", load_toml(bad).unwrap_err());
            assert!(e.contains("auth.login_"), "{bad}: {e}");
        }
    }

    #[test]
    fn disk_limits_have_sane_defaults_and_a_per_run_quota_above_the_total_is_refused() {
        let cfg = load_toml("").unwrap();
        assert_eq!(cfg.sandbox.workspace_mb, 1024);
        assert_eq!(cfg.sandbox.tenant_workspace_mb, 10 * 1024);
        assert_eq!(cfg.sandbox.disk_reserve_mb, 512);
        assert!(!cfg.allow_shared_data_dir);
        let cfg = load_toml(
            "allow_shared_data_dir = true
[sandbox]
workspace_mb = 0
disk_reserve_mb = 0
",
        )
        .unwrap();
        assert!(cfg.allow_shared_data_dir);
        assert_eq!(cfg.sandbox.workspace_mb, 0);
        let e = format!(
            "{:#}",
            load_toml(
                "[sandbox]
workspace_mb = 64
tenant_workspace_mb = 32
"
            )
            .unwrap_err()
        );
        assert!(
            e.contains("sandbox.workspace_mb (64) is larger than sandbox.tenant_workspace_mb (32)"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            load_toml(
                "[sandbox]
disk_reserve_mb = 99999999999
"
            )
            .unwrap_err()
        );
        assert!(e.contains("sandbox.disk_reserve_mb must be at most"), "{e}");
    }

    #[test]
    fn a_sandbox_memory_cap_too_small_for_the_helper_is_refused() {
        assert_eq!(load_toml("").unwrap().sandbox.memory_mb, 512);
        assert!(load_toml("[sandbox]\nmemory_mb = 64\n").is_ok());
        for bad in [
            "[sandbox]\nmemory_mb = 16\n",
            "[sandbox]\nmemory_mb = 99999999999\n",
        ] {
            let e = format!("{:#}", load_toml(bad).unwrap_err());
            assert!(
                e.contains("sandbox.memory_mb must be between 64"),
                "{bad}: {e}"
            );
        }
    }
}
