//! The `process` tier, host side: probing, a small pool of pre-started helpers, handing a
//! request to one, and collecting the result.

mod cgroup;
pub(crate) mod layout;
mod reaper;

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::fcntl::OFlag;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use self::cgroup::Cgroups;
use crate::exec::{AbortOnDrop, Capture, Execution, KILL_GRACE, read_capped, write_stdin};
use crate::helper::landlock_limits;
use crate::sys::{self, Status};
use crate::wire::{CONTROL_FD, HelperSpec, Layout, MAX_MESSAGE, Message};
use crate::{
    DISK_CHECK_PERIOD, DiskStop, ExecOutput, ExecSpec, Limits, SANDBOX_WORKSPACE, SandboxDriver,
    SandboxError, Tier, final_env, validate_argv,
};

/// How to start the helper: the `paddock` binary passes `(current_exe, ["__sandbox"])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperCommand {
    pub exe: PathBuf,
    pub args: Vec<String>,
    /// The helper's whole environment (the server's is never passed on).
    pub env: Vec<(String, String)>,
}

impl HelperCommand {
    /// Without a memory cgroup the sandbox caps memory with `RLIMIT_AS`, which counts address
    /// space the helper has only reserved: mimalloc (the `paddock` binary's allocator) reserves
    /// 1 GiB up front unless told not to, and the helper could then not even start the command
    /// under a 512 MiB cap.
    pub fn new(exe: impl Into<PathBuf>, args: Vec<String>) -> Self {
        HelperCommand {
            exe: exe.into(),
            args,
            env: vec![("MIMALLOC_ARENA_RESERVE".to_owned(), "0".to_owned())],
        }
    }

    /// The running executable with [`crate::helper::HELPER_ARG`] (for binaries that call
    /// [`crate::helper::maybe_run`] first thing in `main`).
    pub fn current_exe() -> Result<Self, SandboxError> {
        let exe = std::env::current_exe().map_err(|e| {
            SandboxError::Unavailable(format!("cannot locate the running executable: {e}"))
        })?;
        Ok(HelperCommand::new(
            exe,
            vec![crate::helper::HELPER_ARG.to_string()],
        ))
    }
}

/// Knobs of the process tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOptions {
    /// Host uid the sandbox user (uid 1000 inside) maps to when the server runs as root.
    /// Workspaces are chowned to it. Unprivileged servers always map to their own uid.
    pub host_uid: u32,
    /// Host gid of the sandbox group, as `host_uid`.
    pub host_gid: u32,
    /// Use cgroups for memory, pids and CPU quota when the server is root and a hierarchy is
    /// writable (otherwise rlimits only).
    pub cgroups: bool,
    /// Helpers kept started ahead of requests, each with a fresh, pre-built sandbox that runs
    /// exactly one command (0: start one per request, slower). Replacements are started when
    /// an execution ends; 2 lets back-to-back requests overlap with the refill.
    pub prestart: usize,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions {
            host_uid: 65534,
            host_gid: 65534,
            cgroups: true,
            prestart: 2,
        }
    }
}

/// What the driver knows about the host and how to start helpers (shared with the pool thread).
#[derive(Debug)]
struct Inner {
    exe: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    opts: ProcessOptions,
    root: bool,
    layout: Layout,
    cgroups: Option<Cgroups>,
    report: String,
}

/// The Linux `process` tier: each execution runs in fresh user, mount, pid, network, IPC, UTS
/// and cgroup namespaces with a private read-only root, Landlock, seccomp, no capabilities and
/// resource limits. See the crate README.
#[derive(Debug)]
pub struct ProcessDriver {
    inner: Arc<Inner>,
    pool: Option<Pool>,
}

impl ProcessDriver {
    /// Probes the host and creates the tier with default options. Refuses (with what is
    /// missing) rather than run with weaker isolation.
    pub fn new(helper: HelperCommand) -> Result<ProcessDriver, SandboxError> {
        Self::with_options(helper, ProcessOptions::default())
    }

    /// Like [`ProcessDriver::new`] with explicit options.
    pub fn with_options(
        helper: HelperCommand,
        opts: ProcessOptions,
    ) -> Result<ProcessDriver, SandboxError> {
        let unavailable = |s: String| SandboxError::Unavailable(s);
        let abi = sys::landlock_abi();
        let (min_abi, _) = landlock_limits();
        if abi < min_abi {
            return Err(unavailable(format!(
                "landlock ABI {min_abi} or newer is required (this kernel reports {abi}; Linux 6.7+ with landlock in the lsm= list)"
            )));
        }
        if !sys::seccomp_errno_available() {
            return Err(unavailable(
                "seccomp filters are not available in this kernel".into(),
            ));
        }
        crate::helper::seccomp::program()
            .map_err(|e| unavailable(format!("seccomp filter: {e}")))?;
        if !helper.exe.is_file() {
            return Err(unavailable(format!(
                "sandbox helper {} not found",
                helper.exe.display()
            )));
        }
        let exe = CString::new(helper.exe.as_os_str().as_bytes())
            .map_err(|_| unavailable("helper path contains a NUL byte".into()))?;
        let mut argv = vec![exe.clone()];
        for a in &helper.args {
            argv.push(
                CString::new(a.as_str())
                    .map_err(|_| unavailable("helper argument contains a NUL byte".into()))?,
            );
        }
        let env = helper
            .env
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| unavailable("helper environment contains a NUL byte".into()))?;

        let root = nix::unistd::geteuid().is_root();
        let (cgroups, cgroup_note) = if !opts.cgroups {
            (None, "disabled by configuration".to_string())
        } else if !root {
            (None, "not root".to_string())
        } else {
            match Cgroups::probe() {
                Ok(c) => (Some(c), String::new()),
                Err(e) => (None, e),
            }
        };
        let report = report_text(root, &opts, abi, cgroups.as_ref(), &cgroup_note);
        let inner = Arc::new(Inner {
            exe,
            argv,
            env,
            opts,
            root,
            layout: layout::probe(),
            cgroups,
            report,
        });
        let pool = (inner.opts.prestart > 0).then(|| Pool::start(inner.clone()));
        let driver = ProcessDriver { inner, pool };
        driver.smoke_test()?;
        Ok(driver)
    }

    /// Runs `true` once through the whole path (user namespaces, mounts, Landlock, seccomp…).
    fn smoke_test(&self) -> Result<(), SandboxError> {
        // Unique across drivers of this process (they may probe concurrently).
        static PROBES: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "paddock-probe-{}-{}",
            std::process::id(),
            PROBES.fetch_add(1, Ordering::Relaxed)
        ));
        let mut spec = ExecSpec::new(&dir, ["true"]);
        spec.limits.wall = Duration::from_secs(20);
        let outcome = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        SandboxError::Unavailable(format!("cannot start a probe runtime: {e}"))
                    })?;
                rt.block_on(self.exec(spec))
            })
            .join()
        });
        let _ = std::fs::remove_dir_all(&dir);
        let failed = |why: String| {
            Err(SandboxError::Unavailable(format!(
                "running `true` in a sandbox failed: {why}"
            )))
        };
        match outcome {
            Ok(Ok(out)) if out.success() => Ok(()),
            Ok(Ok(out)) => failed(format!(
                "exit {:?}, signal {:?}: {}",
                out.exit_code,
                out.signal,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Ok(Err(e)) => failed(e.to_string()),
            Err(_) => failed("the probe thread panicked".into()),
        }
    }

    /// Creates the workspace, resolves it, and (as root) hands it to the sandbox user.
    fn prepare_workspace(&self, path: &Path) -> Result<PathBuf, SandboxError> {
        let err = |source| SandboxError::Workspace {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(path).map_err(err)?;
        let canon = std::fs::canonicalize(path).map_err(err)?;
        const SYSTEM: &[&str] = &[
            "/proc", "/sys", "/dev", "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64",
            "/boot",
        ];
        // /dev/shm is an ordinary tmpfs (a common TMPDIR), not a device folder.
        let system = SYSTEM.iter().any(|s| canon.starts_with(s)) && !canon.starts_with("/dev/shm");
        if canon.components().count() < 3 || system {
            return Err(SandboxError::InvalidSpec(format!(
                "workspace {} is a system folder",
                canon.display()
            )));
        }
        if self.inner.root {
            let (uid, gid) = (self.inner.opts.host_uid, self.inner.opts.host_gid);
            let meta = std::fs::metadata(&canon).map_err(err)?;
            if meta.uid() != uid || meta.gid() != gid {
                chown_tree(&canon, uid, gid).map_err(err)?;
            }
        }
        Ok(canon)
    }

    /// A started helper: from the pool if one is ready, else a new one. The guard asks the
    /// pool for a replacement when dropped (at the end of the execution).
    fn helper(&self) -> Result<(Idle, RefillOnDrop), SandboxError> {
        let refill = RefillOnDrop(None);
        let Some(pool) = &self.pool else {
            return Ok((start_helper(&self.inner)?, refill));
        };
        let refill = pool.refill_guard();
        match pool.take() {
            Some(idle) => Ok((idle, refill)),
            None => Ok((start_helper(&self.inner)?, refill)),
        }
    }
}

/// Hands a tree to the sandbox user without following symlinks.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn report_text(
    root: bool,
    opts: &ProcessOptions,
    abi: i32,
    cgroups: Option<&Cgroups>,
    cgroup_note: &str,
) -> String {
    let ids = if root {
        format!(
            "sandbox uid 1000 = host uid {} (set up as root, then a user namespace)",
            opts.host_uid
        )
    } else {
        format!(
            "sandbox uid 1000 = host uid {} (unprivileged user namespace)",
            nix::unistd::geteuid()
        )
    };
    let scopes = if abi >= 6 {
        ", abstract-socket and signal scoping"
    } else {
        ""
    };
    let (memory, pids, cpu) = match cgroups {
        Some(c) => {
            let via = c.describe();
            (
                if c.memory.is_some() {
                    via.clone()
                } else {
                    "RLIMIT_AS (per process)".into()
                },
                if c.pids.is_some() {
                    via.clone()
                } else {
                    "RLIMIT_NPROC".into()
                },
                if c.cpu.is_some() {
                    "RLIMIT_CPU per process + cgroup quota".to_string()
                } else {
                    "RLIMIT_CPU per process".into()
                },
            )
        }
        None => (
            format!("RLIMIT_AS per process (no cgroups: {cgroup_note})"),
            "RLIMIT_NPROC".into(),
            "RLIMIT_CPU per process".into(),
        ),
    };
    format!(
        "sandbox tier process: user+mount+pid+net+ipc+uts+cgroup namespaces, {ids}; private read-only root; \
         landlock ABI {abi} (filesystem, TCP bind/connect{scopes}); seccomp deny-list (EPERM) + clone3/x32 ENOSYS; \
         no_new_privs, all capabilities dropped; network: loopback only (+ proxy port when granted); \
         limits: memory via {memory}, pids via {pids}, cpu via {cpu}, file size via RLIMIT_FSIZE, \
         /tmp via tmpfs size, wall clock and output size by the host; {} helper(s) pre-started",
        opts.prestart
    )
}

/// A helper process that has started (and is pre-building its sandbox), waiting for a request.
/// Plain descriptors: tokio objects are created by the runtime that uses it.
struct Idle {
    pidfd: OwnedFd,
    ctl: OwnedFd,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    /// Name and directories of its cgroups, created with it (init already moved in).
    cgroup: Option<(String, Vec<PathBuf>)>,
    /// The sandbox's init, when its `Started` report was read already.
    init: Option<OwnedFd>,
}

impl Idle {
    /// Ends an unused helper and hands it to the reaper.
    fn discard(self) {
        let _ = sys::pidfd_kill(self.pidfd.as_fd(), libc::SIGKILL);
        reaper::retire(
            Some(self.pidfd),
            self.cgroup.map(|(_, dirs)| dirs).unwrap_or_default(),
        );
    }
}

/// Starts a helper with fresh pipes and control socket (`posix_spawn`, no `fork` of the server).
/// With cgroups, also creates its cgroups and moves the sandbox's init into them as soon as it
/// exists: both are slow in cgroupfs, and done here they stay off the request path.
fn start_helper(inner: &Inner) -> Result<Idle, SandboxError> {
    let cgroup = match &inner.cgroups {
        Some(cgroups) => {
            // Unique per process, whatever the number of drivers.
            static EXECUTIONS: AtomicU64 = AtomicU64::new(0);
            let name = format!(
                "{}-{}",
                std::process::id(),
                EXECUTIONS.fetch_add(1, Ordering::Relaxed)
            );
            let dirs = cgroups.create(&name).map_err(SandboxError::Spawn)?;
            Some((name, dirs))
        }
        None => None,
    };
    let started = (|| -> std::io::Result<Idle> {
        let (ctl, child_ctl) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let (stdin_r, stdin) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (stdout, stdout_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (stderr, stderr_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let pid = sys::spawn(
            &inner.exe,
            &inner.argv,
            &inner.env,
            &[
                (stdin_r.as_fd(), 0),
                (stdout_w.as_fd(), 1),
                (stderr_w.as_fd(), 2),
                (child_ctl.as_fd(), CONTROL_FD),
            ],
        )?;
        drop((stdin_r, stdout_w, stderr_w, child_ctl));
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                return Err(e);
            }
        };
        Ok(Idle {
            pidfd,
            ctl,
            stdin,
            stdout,
            stderr,
            cgroup: None,
            init: None,
        })
    })();
    let mut idle = match started {
        Ok(idle) => idle,
        Err(e) => {
            if let Some((_, dirs)) = cgroup {
                cgroup::remove(&dirs);
            }
            return Err(SandboxError::Spawn(e));
        }
    };
    idle.cgroup = cgroup;
    if let Some((_, dirs)) = &idle.cgroup {
        match wait_started(&idle.ctl) {
            Ok((pid, init)) => {
                idle.init = Some(init);
                if let Err(e) = Cgroups::join(dirs, pid) {
                    idle.discard();
                    return Err(SandboxError::Setup {
                        step: "cgroup join".into(),
                        message: e.to_string(),
                    });
                }
            }
            Err(e) => {
                idle.discard();
                return Err(e);
            }
        }
    }
    Ok(idle)
}

/// Reads the helper's first report (init's host pid and pidfd), or why it failed.
fn wait_started(ctl: &OwnedFd) -> Result<(i32, OwnedFd), SandboxError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let aborted = |why: String| SandboxError::Aborted(format!("helper start-up: {why}"));
    let mut fds = [PollFd::new(ctl.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::from(10_000u16)).map_err(|e| aborted(e.to_string()))? == 0 {
        return Err(aborted("no report after 10 s".into()));
    }
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, fds) =
        sys::recv_with_fds(ctl.as_fd(), &mut buf, true).map_err(|e| aborted(e.to_string()))?;
    if n == 0 {
        return Err(aborted("the helper exited".into()));
    }
    match serde_json::from_slice(&buf[..n]) {
        Ok(Message::Started { pid }) => match fds.into_iter().next() {
            Some(init) => Ok((pid, init)),
            None => Err(aborted("no pidfd with the start report".into())),
        },
        Ok(Message::SetupFailed { step, message }) => Err(SandboxError::Setup { step, message }),
        Ok(other) => Err(aborted(format!("unexpected report {other:?}"))),
        Err(e) => Err(aborted(format!("bad report: {e}"))),
    }
}

/// Keeps up to `prestart` helpers started, on a background thread. Starting one costs about a
/// millisecond of exec and a few of namespace and root set-up that requests then do not wait
/// for. Refills happen when an execution ends (not when it starts), so that work never
/// competes with a starting command for the CPU.
#[derive(Debug)]
struct Pool {
    shared: Arc<PoolShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct PoolShared {
    state: Mutex<PoolState>,
    /// Wakes the pool thread (refill wanted, or stop).
    wake: Condvar,
    /// Wakes requests waiting for a helper that is being started.
    ready: Condvar,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Idle>,
    wanted: bool,
    filling: bool,
    stop: bool,
}

impl std::fmt::Debug for PoolState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolState")
            .field("idle", &self.idle.len())
            .field("wanted", &self.wanted)
            .field("filling", &self.filling)
            .field("stop", &self.stop)
            .finish()
    }
}

impl PoolShared {
    /// Asks the pool thread to top the pool up.
    fn refill(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.wanted = true;
        }
        self.wake.notify_one();
    }
}

/// Asks for a refill when dropped: when an execution that took a pre-started helper ends.
pub(crate) struct RefillOnDrop(Option<Arc<PoolShared>>);

impl Drop for RefillOnDrop {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.refill();
        }
    }
}

impl Pool {
    fn start(inner: Arc<Inner>) -> Pool {
        let shared = Arc::new(PoolShared::default());
        shared.refill();
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("paddock-sandbox-pool".into())
            .spawn(move || Pool::run(&inner, &worker))
            .map_err(|e| tracing::warn!(error = %e, "cannot start the sandbox helper pool; starting helpers on demand"))
            .ok();
        Pool { shared, thread }
    }

    fn run(inner: &Inner, shared: &PoolShared) {
        let target = inner.opts.prestart;
        loop {
            {
                let Ok(mut state) = shared.state.lock() else {
                    return;
                };
                let work = |s: &PoolState| s.stop || (s.wanted && s.idle.len() < target);
                while !work(&state) {
                    state = match shared.wake.wait(state) {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                }
                if state.stop {
                    for idle in state.idle.drain(..) {
                        idle.discard();
                    }
                    return;
                }
                state.filling = true;
            }
            let started = start_helper(inner);
            let failed = started.is_err();
            if let Ok(mut state) = shared.state.lock() {
                state.filling = false;
                match started {
                    Ok(idle) => state.idle.push(idle),
                    Err(e) => tracing::warn!(error = %e, "cannot pre-start a sandbox helper"),
                }
                if state.idle.len() >= target {
                    state.wanted = false;
                }
            }
            shared.ready.notify_all();
            if failed {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }

    /// A live pre-started helper, if one is ready or being started (waiting briefly for it).
    fn take(&self) -> Option<Idle> {
        let mut state = self.shared.state.lock().ok()?;
        let deadline = Instant::now() + Duration::from_millis(100);
        loop {
            while let Some(idle) = state.idle.pop() {
                match sys::wait_pidfd(idle.pidfd.as_fd(), false) {
                    Ok(None) => return Some(idle),
                    // It died while waiting (reaped just now): use another.
                    _ => {
                        reaper::retire(None, idle.cgroup.map(|(_, dirs)| dirs).unwrap_or_default())
                    }
                }
            }
            let now = Instant::now();
            if !state.filling || now >= deadline {
                return None;
            }
            state = self
                .shared
                .ready
                .wait_timeout(state, deadline - now)
                .ok()?
                .0;
        }
    }

    fn refill_guard(&self) -> RefillOnDrop {
        RefillOnDrop(Some(self.shared.clone()))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.stop = true;
        }
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[async_trait]
impl SandboxDriver for ProcessDriver {
    fn tier(&self) -> Tier {
        Tier::Process
    }

    fn report(&self) -> String {
        self.inner.report.clone()
    }

    async fn spawn(&self, spec: ExecSpec) -> Result<Execution, SandboxError> {
        let start = Instant::now();
        validate_argv(&spec.argv)?;
        let mut extra = 0u64;
        for (path, content) in &spec.extra_ro_files {
            layout::check_extra_path(&self.inner.layout, path)?;
            extra += content.len() as u64 + 4096;
        }
        if extra > crate::helper::ROOT_BYTES / 2 {
            return Err(SandboxError::InvalidSpec(format!(
                "extra files too large ({extra} bytes)"
            )));
        }
        let proxy_port = spec.network.map(|n| n.proxy_port);
        let env = final_env(&spec.env, SANDBOX_WORKSPACE, proxy_port)?;
        let workspace = self.prepare_workspace(&spec.workspace)?;
        let watched = workspace.clone();
        let (idle, refill) = self.helper()?;
        let Idle {
            pidfd,
            ctl,
            stdin,
            stdout,
            stderr,
            cgroup,
            init,
        } = idle;
        let (cgroup, cgroup_dirs) = match (&self.inner.cgroups, cgroup) {
            (Some(cgroups), Some((name, dirs))) => (Some(cgroups.plan(&name, &spec.limits)), dirs),
            _ => (None, Vec::new()),
        };
        // From here the helper is killed and reaped (and its cgroups removed) whatever happens.
        let sandbox = Sandbox::new(pidfd, init, cgroup_dirs);
        let cgroups = self.inner.cgroups.as_ref();
        let helper_spec = HelperSpec {
            host_pid: std::process::id(),
            workspace,
            argv: spec.argv,
            env,
            limits: spec.limits.clone(),
            proxy_port,
            extra_ro_files: Vec::new(),
            host_ids: (self.inner.opts.host_uid, self.inner.opts.host_gid),
            rlimit_as: cgroups.is_none_or(|c| c.memory.is_none()),
            rlimit_nproc: cgroups.is_none_or(|c| c.pids.is_none()),
            cgroup,
        };
        let json = crate::wire::encode(helper_spec, spec.extra_ro_files)
            .map_err(|e| SandboxError::InvalidSpec(e.to_string()))?;
        let memfd = sys::memfd_with(&json).map_err(SandboxError::Spawn)?;

        sys::send_with_fd(ctl.as_fd(), b"spec", Some(memfd.as_fd()))
            .map_err(SandboxError::Spawn)?;
        drop(memfd);
        let io = (|| -> std::io::Result<_> {
            Ok((
                pipe::Sender::from_owned_fd(stdin)?,
                pipe::Receiver::from_owned_fd(stdout)?,
                pipe::Receiver::from_owned_fd(stderr)?,
                sys::async_fd(ctl).map_err(|e| e.into_parts().1)?,
            ))
        })();
        let (stdin, stdout, stderr, ctl) = io.map_err(SandboxError::Spawn)?;
        let sandbox = sandbox.register().map_err(SandboxError::Spawn)?;

        let (ready_tx, ready_rx) = oneshot::channel();
        let io = Io {
            stdin,
            stdin_data: spec.stdin,
            stdout,
            stderr,
            ctl,
        };
        let mut task = AbortOnDrop(Some(tokio::spawn(async move {
            let _refill = refill;
            drive(sandbox, io, spec.limits, &watched, start, ready_tx).await
        })));
        match ready_rx.await {
            Ok(listener) => match task.into_inner() {
                Some(handle) => Ok(Execution::running(listener, handle)),
                None => Err(SandboxError::Aborted("execution task lost".into())),
            },
            Err(_) => task.join().await.map(Execution::finished),
        }
    }
}

/// The helper process (and, once known, the sandbox's init): killed and reaped on every path.
struct Sandbox {
    raw: Option<OwnedFd>,
    helper: Option<AsyncFd<OwnedFd>>,
    init: Mutex<Option<OwnedFd>>,
    reaped: AtomicBool,
    cgroups: Vec<PathBuf>,
}

impl Sandbox {
    fn new(pidfd: OwnedFd, init: Option<OwnedFd>, cgroups: Vec<PathBuf>) -> Sandbox {
        Sandbox {
            raw: Some(pidfd),
            helper: None,
            init: Mutex::new(init),
            reaped: AtomicBool::new(false),
            cgroups,
        }
    }

    fn register(mut self) -> std::io::Result<Sandbox> {
        if let Some(fd) = self.raw.take() {
            match sys::async_fd(fd) {
                Ok(fd) => self.helper = Some(fd),
                Err(e) => {
                    // Put the pidfd back so dropping `self` still kills and reaps.
                    let (fd, cause) = e.into_parts();
                    self.raw = Some(fd);
                    return Err(cause);
                }
            }
        }
        Ok(self)
    }

    fn pidfd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.helper
            .as_ref()
            .map(|h| h.get_ref().as_fd())
            .or_else(|| self.raw.as_ref().map(|f| f.as_fd()))
    }

    fn kill(&self) {
        if let Some(fd) = self.pidfd() {
            let _ = sys::pidfd_kill(fd, libc::SIGKILL);
        }
        if let Ok(init) = self.init.lock()
            && let Some(fd) = init.as_ref()
        {
            let _ = sys::pidfd_kill(fd.as_fd(), libc::SIGKILL);
        }
    }

    async fn wait(&self) -> std::io::Result<Status> {
        let Some(helper) = self.helper.as_ref() else {
            return Err(std::io::Error::other("helper not registered"));
        };
        loop {
            if let Some(status) = sys::wait_pidfd(helper.get_ref().as_fd(), false)? {
                self.reaped.store(true, Ordering::SeqCst);
                return Ok(status);
            }
            helper.readable().await?.clear_ready();
        }
    }
}

impl Sandbox {
    /// Hands the helper to the reaper (which also removes the cgroups), killing the sandbox
    /// first unless it is known to be ending by itself. Idempotent.
    fn retire(&mut self, kill: bool) {
        if kill {
            self.kill();
        }
        if let Ok(mut init) = self.init.lock() {
            init.take();
        }
        let dirs = std::mem::take(&mut self.cgroups);
        let fd = self
            .helper
            .take()
            .map(AsyncFd::into_inner)
            .or_else(|| self.raw.take());
        let fd = fd.filter(|_| !self.reaped.load(Ordering::SeqCst));
        if fd.is_some() || !dirs.is_empty() {
            reaper::retire(fd, dirs);
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Normal completion retires explicitly; anything else (aborted, failed) kills.
        self.retire(true);
    }
}

struct Io {
    stdin: pipe::Sender,
    stdin_data: Option<Vec<u8>>,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    ctl: AsyncFd<OwnedFd>,
}

/// What the helper reported over the control socket.
#[derive(Default)]
struct Reports {
    setup: Option<(String, String)>,
    exit: Option<(Option<i32>, Option<i32>)>,
    init: Option<(Option<i32>, Option<i32>)>,
}

async fn read_control(
    ctl: &AsyncFd<OwnedFd>,
    sandbox: &Sandbox,
    ready: oneshot::Sender<Option<TcpListener>>,
) -> Result<Reports, String> {
    let mut ready = Some(ready);
    let mut reports = Reports::default();
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let mut guard = ctl.readable().await.map_err(|e| e.to_string())?;
        let (n, fds) =
            match guard.try_io(|fd| sys::recv_with_fds(fd.get_ref().as_fd(), &mut buf, false)) {
                Ok(result) => result.map_err(|e| format!("control socket: {e}"))?,
                Err(_would_block) => continue,
            };
        if n == 0 {
            return Ok(reports);
        }
        let msg: Message =
            serde_json::from_slice(&buf[..n]).map_err(|e| format!("bad control message: {e}"))?;
        let mut fds = fds.into_iter();
        match msg {
            Message::Started { .. } => {
                if let (Some(fd), Ok(mut init)) = (fds.next(), sandbox.init.lock()) {
                    *init = Some(fd);
                }
            }
            Message::Ready => {
                let listener = match fds.next() {
                    Some(fd) => {
                        let std_listener = std::net::TcpListener::from(fd);
                        std_listener
                            .set_nonblocking(true)
                            .map_err(|e| format!("listener: {e}"))?;
                        Some(
                            TcpListener::from_std(std_listener)
                                .map_err(|e| format!("listener: {e}"))?,
                        )
                    }
                    None => None,
                };
                if let Some(tx) = ready.take() {
                    let _ = tx.send(listener);
                }
            }
            Message::SetupFailed { step, message } => {
                ready = None;
                reports.setup.get_or_insert((step, message));
            }
            Message::Exit { code, signal } => {
                // Init sends this after every process of the command is gone; the helper's own
                // exit (namespace teardown) is not worth waiting for.
                reports.exit = Some((code, signal));
                return Ok(reports);
            }
            Message::InitGone { code, signal } => reports.init = Some((code, signal)),
        }
    }
}

/// Checks the workspace's usage and the disk's free space every [`DISK_CHECK_PERIOD`], or ten
/// times the last check's duration when that is longer (the first check one period in, so
/// short commands pay nothing), and returns why the sandbox must be killed; pending forever
/// without a quota or a reserve. A check that fails counts as over (fail closed).
async fn watch_disk(workspace: &Path, limits: &Limits) -> DiskStop {
    let (quota, reserve) = (limits.workspace_bytes, limits.disk_reserve_bytes);
    let max_entries = limits.workspace_entries;
    if quota == 0 && reserve == 0 {
        return std::future::pending().await;
    }
    let mut period = DISK_CHECK_PERIOD;
    loop {
        tokio::time::sleep(period).await;
        let dir = workspace.to_path_buf();
        let started = Instant::now();
        let check = tokio::task::spawn_blocking(move || -> Option<DiskStop> {
            if reserve > 0 {
                match crate::disk::free_bytes(&dir) {
                    Ok(free) if free < reserve => return Some(DiskStop::Reserve { free, reserve }),
                    Ok(_) => {}
                    Err(e) => {
                        return Some(DiskStop::Unmeasurable {
                            errno: e.raw_os_error().unwrap_or(libc::EIO),
                        });
                    }
                }
            }
            if quota > 0 {
                return crate::disk::check_quota(&dir, quota, max_entries, false).err();
            }
            None
        })
        .await;
        match check {
            Ok(Some(stop)) => return stop,
            Ok(None) => {}
            Err(_) => return DiskStop::Unmeasurable { errno: libc::EIO },
        }
        period = DISK_CHECK_PERIOD.max(started.elapsed() * 10);
    }
}

async fn drive(
    mut sandbox: Sandbox,
    io: Io,
    limits: Limits,
    workspace: &Path,
    start: Instant,
    ready: oneshot::Sender<Option<TcpListener>>,
) -> Result<ExecOutput, SandboxError> {
    let deadline = tokio::time::Instant::from_std(start + limits.wall);
    let Io {
        stdin,
        stdin_data,
        stdout,
        stderr,
        ctl,
    } = io;
    let mut disk_stop = None;
    let (results, timed_out) = {
        let sb = &sandbox;
        let work = async {
            let ((), out, err, reports) = tokio::join!(
                write_stdin(Some(stdin), stdin_data),
                read_capped(stdout, limits.output_bytes),
                read_capped(stderr, limits.output_bytes),
                read_control(&ctl, sb, ready),
            );
            // Without a report from init (killed, crashed), the helper's status tells.
            let status = match &reports {
                Ok(r) if r.exit.is_some() || r.setup.is_some() => None,
                _ => Some(sb.wait().await),
            };
            (out, err, reports, status)
        };
        tokio::pin!(work);
        let watch = watch_disk(workspace, &limits);
        tokio::pin!(watch);
        tokio::select! {
            r = &mut work => (Some(r), false),
            () = tokio::time::sleep_until(deadline) => {
                sb.kill();
                (tokio::time::timeout(KILL_GRACE, &mut work).await.ok(), true)
            }
            stop = &mut watch => {
                sb.kill();
                disk_stop = Some(stop);
                (tokio::time::timeout(KILL_GRACE, &mut work).await.ok(), false)
            }
        }
    };
    let duration = start.elapsed();
    let Some((out, err, reports, status)) = results else {
        return Err(SandboxError::Aborted(
            "the sandbox did not end after being killed".into(),
        ));
    };
    // Reap the helper and remove the cgroups off the request path. Init reported the end of
    // the command, so the helper is exiting by itself (namespace teardown takes milliseconds).
    let ended = results_reported(&reports);
    sandbox.retire(!ended);
    let reports = reports.map_err(SandboxError::Aborted)?;
    if let Some((step, message)) = reports.setup {
        return Err(SandboxError::Setup { step, message });
    }
    let (exit_code, signal) = match (reports.exit, reports.init) {
        (Some(exit), _) => exit,
        (None, _) if timed_out || disk_stop.is_some() => (None, Some(libc::SIGKILL)),
        // Init itself was killed (e.g. by the out-of-memory killer): so was the command.
        (None, Some((_, Some(sig)))) => (None, Some(sig)),
        (None, init) => {
            let status = status.map(|s| s.map_err(|e| e.to_string()));
            return Err(SandboxError::Aborted(format!(
                "the sandbox ended without reporting the command (helper {status:?}, init {init:?})"
            )));
        }
    };
    let mut out = output(exit_code, signal, out, err, timed_out, duration);
    out.disk_stop = disk_stop;
    // Every process of the sandbox is gone (init reported the end, or it was killed and its
    // pipes closed), so nothing swaps entries while the walk strips bits (and it opens every
    // entry without following symlinks anyway).
    let dir = workspace.to_path_buf();
    let quota = limits.workspace_bytes;
    // Without a quota there is nothing to enforce, only bits to strip.
    let max_entries = if quota == 0 {
        0
    } else {
        limits.workspace_entries
    };
    let measured = tokio::task::spawn_blocking(move || {
        crate::disk::check_quota(&dir, quota, max_entries, true)
    })
    .await
    .unwrap_or(Err(DiskStop::Unmeasurable { errno: libc::EIO }));
    match measured {
        Ok(usage) => out.workspace_usage = Some(usage),
        // Over the byte quota: the engine measures again for a precise figure.
        Err(DiskStop::Quota { used, .. }) => {
            out.workspace_usage = Some(crate::disk::DiskUsage {
                bytes: used,
                entries: 0,
                partial: true,
            });
        }
        Err(stop) => {
            out.disk_stop.get_or_insert(stop);
        }
    }
    Ok(out)
}

fn results_reported(reports: &Result<Reports, String>) -> bool {
    matches!(reports, Ok(r) if r.exit.is_some() || r.setup.is_some() || r.init.is_some())
}

pub(crate) fn output(
    exit_code: Option<i32>,
    signal: Option<i32>,
    out: Capture,
    err: Capture,
    timed_out: bool,
    duration: Duration,
) -> ExecOutput {
    ExecOutput {
        exit_code,
        signal,
        stdout: out.bytes,
        stderr: err.bytes,
        stdout_truncated: out.truncated,
        stderr_truncated: err.truncated,
        timed_out,
        duration,
        disk_stop: None,
        workspace_usage: None,
    }
}
