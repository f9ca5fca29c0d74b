//! Paddock's per-run sandbox: the [`SandboxDriver`] trait, the Linux `process` tier
//! ([`ProcessDriver`]), the development-only `none` tier ([`NoneDriver`]) and the in-sandbox
//! [`helper`] that the `paddock` binary enters by its first argument.
//!
//! This crate owns *how* a command is confined (namespaces, mounts, Landlock, seccomp, limits)
//! and how its output, exit status and network listener come back to the caller. It must not
//! decide policy: which commands run, with which limits and which egress, is the caller's call.
//!
//! The process tier never unshares the calling (multi-threaded) server: every execution spawns
//! a fresh single-threaded helper process that builds the sandbox (see `README.md`).

pub mod disk;
mod error;
mod exec;
pub mod helper;
mod none;
mod process;
mod sys;
mod wire;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use error::SandboxError;
pub use exec::Execution;
pub use none::NoneDriver;
pub use process::{HelperCommand, ProcessDriver, ProcessOptions};

/// Where the workspace folder appears inside a process-tier sandbox.
pub const SANDBOX_WORKSPACE: &str = "/workspace";
/// The user and group id the command runs as inside a process-tier sandbox.
pub const SANDBOX_UID: u32 = 1000;
/// `PATH` given to the command when the caller does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Which isolation a driver provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Linux namespaces + Landlock + seccomp + limits (the default).
    Process,
    /// No isolation at all: development only, chosen explicitly by the operator.
    None,
}

impl Tier {
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Process => "process",
            Tier::None => "none",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = SandboxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "process" => Ok(Tier::Process),
            "none" => Ok(Tier::None),
            other => Err(SandboxError::InvalidSpec(format!(
                "unknown sandbox tier {other:?} (expected \"process\" or \"none\")"
            ))),
        }
    }
}

/// Resource limits for one execution. Which mechanism enforces each one on this host is in
/// [`SandboxDriver::report`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Memory for the whole sandbox (cgroup), or address space per process (`RLIMIT_AS`) when
    /// no memory cgroup is available.
    pub memory_bytes: u64,
    /// Processes/threads in the sandbox (cgroup `pids.max`, or `RLIMIT_NPROC` without one).
    pub pids: u32,
    /// CPU seconds per process (`RLIMIT_CPU`).
    pub cpu_secs: u64,
    /// CPU bandwidth for the whole sandbox in percent of one core (cgroup quota; 0 = no quota).
    pub cpu_percent: u32,
    /// Wall-clock time for the whole execution, set-up included; then everything is killed.
    pub wall: Duration,
    /// Bytes kept of stdout and (separately) of stderr; the rest is drained and dropped.
    pub output_bytes: usize,
    /// Size of the private `/tmp` tmpfs (and of `/dev/shm`).
    pub tmp_bytes: u64,
    /// Largest file a process may write (`RLIMIT_FSIZE`), in `/workspace` and everywhere else.
    /// The process tier lowers it to `workspace_bytes` when that is smaller.
    pub file_bytes: u64,
    /// Disk the workspace may use ([`disk::workspace_usage`]). The process tier checks it every
    /// [`DISK_CHECK_PERIOD`] (or ten times the last walk, if longer) during the execution and kills the sandbox when it is over
    /// ([`ExecOutput::disk_stop`]), then measures once more at the end
    /// ([`ExecOutput::workspace_usage`]). 0: no quota. A workspace the walk cannot measure
    /// counts as over its quota ([`DiskStop::Unmeasurable`]).
    pub workspace_bytes: u64,
    /// Files and folders the workspace may hold: the quota's walk visits each of them at every
    /// check, so this bounds its cost on the server. More counts as over quota
    /// ([`DiskStop::Entries`]). 0: no cap (the byte quota still bounds the walk).
    pub workspace_entries: u64,
    /// Free space to keep on the workspace's file system: the process tier kills the sandbox
    /// when a periodic check finds less. 0: no reserve.
    pub disk_reserve_bytes: u64,
}

/// How often, at least, the process tier checks a running execution's workspace and free disk
/// space; a walk that takes longer spaces the checks to ten times its duration, so the walk
/// costs the server at most a tenth of a core per running call.
pub const DISK_CHECK_PERIOD: Duration = Duration::from_millis(100);

/// Why an execution was killed for disk use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskStop {
    /// The workspace used `used` bytes (at least) of `quota`.
    Quota { used: u64, quota: u64 },
    /// The file system had `free` bytes left, under the `reserve`.
    Reserve { free: u64, reserve: u64 },
    /// The workspace held more than `max` files and folders.
    Entries { entries: u64, max: u64 },
    /// The walk failed with OS error `errno`: the usage is unknown, so it counts as over.
    Unmeasurable { errno: i32 },
}

impl fmt::Display for DiskStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use disk::megabytes as mb;
        match *self {
            DiskStop::Quota { used, quota } => write!(
                f,
                "workspace quota exceeded: {} MB used of {} MB; delete files to continue",
                mb(used),
                mb(quota)
            ),
            DiskStop::Reserve { free, reserve } => write!(
                f,
                "the server's disk is nearly full: {} MB free, {} MB are kept for the database; an operator must free space",
                free >> 20,
                mb(reserve)
            ),
            DiskStop::Entries { entries, max } => write!(
                f,
                "workspace quota exceeded: more than {max} files and folders ({entries} seen); delete files to continue"
            ),
            DiskStop::Unmeasurable { errno } => write!(
                f,
                "workspace quota exceeded: the workspace cannot be measured ({}); delete what cannot be read to continue",
                std::io::Error::from_raw_os_error(errno)
            ),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 512 << 20,
            pids: 128,
            cpu_secs: 60,
            cpu_percent: 100,
            wall: Duration::from_secs(120),
            output_bytes: 64 << 10,
            tmp_bytes: 64 << 20,
            file_bytes: 256 << 20,
            workspace_bytes: 1 << 30,
            disk_reserve_bytes: 0,
            workspace_entries: 100_000,
        }
    }
}

/// Egress for one execution: the command may reach exactly one TCP port on its own loopback,
/// where the caller serves the egress proxy on the listener handed back by
/// [`Execution::take_listener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Port of the proxy on `127.0.0.1` inside the sandbox.
    pub proxy_port: u16,
}

/// One command to run in a fresh sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// Host folder mounted read-write at `/workspace`; created if missing. The only thing that
    /// persists between executions.
    pub workspace: PathBuf,
    /// Program and arguments; `argv[0]` is looked up in the `PATH` of `env` inside the sandbox.
    pub argv: Vec<String>,
    /// The command's whole environment (never the server's), plus `PATH`, `HOME=/workspace`
    /// and `TERM=dumb` when absent, plus the proxy variables when `network` is set.
    pub env: Vec<(String, String)>,
    /// Bytes written to the command's stdin, then closed (`None`: stdin is empty).
    pub stdin: Option<Vec<u8>>,
    pub limits: Limits,
    /// `None`: loopback only and nothing listens, so there is no network at all.
    pub network: Option<NetworkSpec>,
    /// Files placed read-only in the sandbox's private root, e.g. a CA certificate at
    /// `/etc/paddock/ca.pem`. Paths must be absolute and outside the mounted folders
    /// (`/usr`, `/workspace`, `/tmp`, `/proc`, `/dev`, the bound `/etc` entries, …).
    pub extra_ro_files: Vec<(PathBuf, Vec<u8>)>,
}

impl ExecSpec {
    /// A spec with default limits, no stdin, no environment and no network.
    pub fn new(
        workspace: impl Into<PathBuf>,
        argv: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        ExecSpec {
            workspace: workspace.into(),
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            stdin: None,
            limits: Limits::default(),
            network: None,
            extra_ro_files: Vec::new(),
        }
    }
}

/// What a finished execution produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code when the command exited (127: not found, 126: not executable).
    pub exit_code: Option<i32>,
    /// Signal number when the command was killed (e.g. 9 on timeout or out-of-memory).
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The wall-clock limit was reached and the whole sandbox was killed.
    pub timed_out: bool,
    /// From the start of `spawn` to the end of the command (set-up included).
    pub duration: Duration,
    /// The sandbox was killed because the workspace went over its quota or the disk under its
    /// reserve (process tier).
    pub disk_stop: Option<DiskStop>,
    /// The workspace's usage once the command ended, measured (and stripped of setuid/setgid
    /// bits) by the process tier; the walk stops just above `workspace_bytes`.
    pub workspace_usage: Option<disk::DiskUsage>,
}

impl ExecOutput {
    /// The command exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// A way to run commands confined. Each call gets a brand-new sandbox; nothing but the
/// workspace folder survives it.
#[async_trait]
pub trait SandboxDriver: Send + Sync + 'static {
    fn tier(&self) -> Tier;

    /// What this host enforces (for the start-up report): Landlock ABI, seccomp, and which
    /// limits are enforced by cgroups and which by rlimits.
    fn report(&self) -> String;

    /// Builds the sandbox and starts the command. Returns once the sandbox is set up (set-up
    /// failures are errors here) while the command runs; take the network listener from the
    /// returned [`Execution`], then [`Execution::wait`] for the output. Dropping the
    /// `Execution` kills the sandbox.
    async fn spawn(&self, spec: ExecSpec) -> Result<Execution, SandboxError>;

    /// Runs the command to completion. A network listener, if any, is dropped (so with
    /// `network` set, connections to the proxy port are refused): use [`SandboxDriver::spawn`]
    /// to serve it.
    async fn exec(&self, spec: ExecSpec) -> Result<ExecOutput, SandboxError> {
        let mut execution = self.spawn(spec).await?;
        // Nobody would accept on it: refuse connections instead of letting them hang. The
        // command is already starting, so a connection made in its first instant can still land
        // in the listener's backlog (and is reset here); callers that grant network serve it.
        drop(execution.take_listener());
        execution.wait().await
    }
}

/// Runs `true` `n` times in fresh sandboxes (in a temporary workspace) and returns how long each
/// spawn-and-wait took, in order. For `paddock bench` (`sandbox_spawn_ms_p50`).
pub async fn bench_spawn(
    driver: &dyn SandboxDriver,
    n: usize,
) -> Result<Vec<Duration>, SandboxError> {
    let dir = std::env::temp_dir().join(format!("paddock-bench-{}", std::process::id()));
    let result = async {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let spec = ExecSpec::new(&dir, ["true"]);
            let start = Instant::now();
            let out = driver.exec(spec).await?;
            times.push(start.elapsed());
            if !out.success() {
                return Err(SandboxError::Aborted(format!(
                    "benchmark command failed: exit {:?} signal {:?}: {}",
                    out.exit_code,
                    out.signal,
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        Ok(times)
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The `p`-th percentile (0.0–1.0, nearest rank) of `samples`; zero when empty.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = (p.clamp(0.0, 1.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The environment the command actually gets: `env` with defaults, proxy variables for
/// `proxy_port`, and `home` as the default `HOME`.
pub(crate) fn final_env(
    env: &[(String, String)],
    home: &str,
    proxy_port: Option<u16>,
) -> Result<Vec<(String, String)>, SandboxError> {
    const PROXY_VARS: [&str; 5] = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
    ];
    let mut out: Vec<(String, String)> = Vec::with_capacity(env.len() + 8);
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(SandboxError::InvalidSpec(format!(
                "invalid environment variable {k:?}"
            )));
        }
        if proxy_port.is_some()
            && (PROXY_VARS.contains(&k.as_str())
                || k == "NO_PROXY"
                || k == "no_proxy"
                || k == "all_proxy")
        {
            continue;
        }
        out.retain(|(existing, _)| existing != k);
        out.push((k.clone(), v.clone()));
    }
    let has = |out: &[(String, String)], key: &str| out.iter().any(|(k, _)| k == key);
    if !has(&out, "PATH") {
        out.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if !has(&out, "HOME") {
        out.push(("HOME".into(), home.into()));
    }
    if !has(&out, "TERM") {
        out.push(("TERM".into(), "dumb".into()));
    }
    if let Some(port) = proxy_port {
        let url = format!("http://127.0.0.1:{port}");
        for var in PROXY_VARS {
            out.push((var.into(), url.clone()));
        }
    }
    Ok(out)
}

pub(crate) fn validate_argv(argv: &[String]) -> Result<(), SandboxError> {
    match argv.first() {
        None => Err(SandboxError::InvalidSpec("argv is empty".into())),
        Some(a) if a.is_empty() => Err(SandboxError::InvalidSpec("argv[0] is empty".into())),
        Some(_) if argv.iter().any(|a| a.contains('\0')) => {
            Err(SandboxError::InvalidSpec("argv contains a NUL byte".into()))
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_defaults_and_proxy() {
        let env = vec![
            ("FOO".to_string(), "1".to_string()),
            ("NO_PROXY".to_string(), "*".to_string()),
            ("HTTP_PROXY".to_string(), "http://evil".to_string()),
        ];
        let out = final_env(&env, "/workspace", Some(3128)).unwrap();
        let get = |k: &str| {
            out.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("FOO"), Some("1"));
        assert_eq!(get("NO_PROXY"), None);
        assert_eq!(get("HTTP_PROXY"), Some("http://127.0.0.1:3128"));
        assert_eq!(get("HOME"), Some("/workspace"));
        assert_eq!(get("PATH"), Some(DEFAULT_PATH));
        assert_eq!(out.iter().filter(|(k, _)| k == "HTTP_PROXY").count(), 1);
    }

    #[test]
    fn env_rejects_bad_names() {
        assert!(final_env(&[("A=B".into(), "x".into())], "/w", None).is_err());
        assert!(final_env(&[(String::new(), "x".into())], "/w", None).is_err());
    }

    #[test]
    fn tier_round_trips() {
        assert_eq!("process".parse::<Tier>().unwrap(), Tier::Process);
        assert_eq!(Tier::None.to_string(), "none");
        assert_eq!(
            serde_json::to_string(&Tier::Process).unwrap(),
            "\"process\""
        );
        assert!("vm".parse::<Tier>().is_err());
    }

    #[test]
    fn percentile_nearest_rank() {
        let s: Vec<Duration> = (1..=5).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 0.5), Duration::from_millis(3));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
