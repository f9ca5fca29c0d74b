//! The sandbox's init (pid 1 of the new pid namespace). Before the request arrives it builds
//! everything that does not depend on it (network namespace, the read-only root); then it adds
//! the workspace and private folders, confines itself, forks the command, reaps, and reports
//! the command's exit status. When it exits, the kernel kills anything left in the namespace.

use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::CloneFlags;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid};

use super::{Control, Fail, Step, fail, lsm, mounts, seccomp};

use crate::sys;
use crate::wire::{HelperSpec, Message};
use crate::{SANDBOX_UID, SANDBOX_WORKSPACE};

pub(super) fn main(ctl: &Control, outer: OwnedFd, privileged: bool) -> i32 {
    match run(ctl, &outer, privileged) {
        Ok(code) => code,
        Err(f) => {
            ctl.report(&f);
            1
        }
    }
}

/// Blocks until the outer helper sends its go-ahead byte.
fn wait_outer(outer: &OwnedFd) -> Result<(), Fail> {
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(outer, &mut byte) {
            Ok(1) => return Ok(()),
            Ok(_) => return fail("id maps", "the outer helper exited"),
            Err(Errno::EINTR) => continue,
            Err(e) => return fail("id maps", e.to_string()),
        }
    }
}

/// Re-arms "die with the outer helper" (credential changes clear it) and checks it is alive.
fn tie_to_outer(outer: &OwnedFd) -> Result<(), Fail> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).step("pdeathsig")?;
    let mut fds = [PollFd::new(outer.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::ZERO).step("pdeathsig")?;
    let hung_up = fds[0]
        .revents()
        .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR));
    if n > 0 && hung_up {
        return fail("pdeathsig", "the outer helper exited");
    }
    Ok(())
}

fn run(ctl: &Control, outer: &OwnedFd, privileged: bool) -> Result<i32, Fail> {
    tie_to_outer(outer)?;
    // Before the request: everything that does not depend on it.
    if !privileged {
        wait_outer(outer)?;
    }
    let layout = crate::process::layout::probe();
    mounts::prepare(&layout)?;
    nix::unistd::sethostname("sandbox").step("hostname")?;
    sys::loopback_up().step("loopback up")?;
    let landlock = lsm::prepare(&layout).step("landlock")?;

    // The request (end-of-file: the outer helper is gone, so are we).
    let Some(spec_fd) = super::outer::receive_fd(outer.as_fd(), "receive spec")? else {
        return Ok(0);
    };
    let (spec, files_at) = super::outer::read_spec(&spec_fd)?;
    let spec = &spec;
    mounts::finish(spec, &spec_fd, files_at)?;
    drop(spec_fd);
    let listener = match spec.proxy_port {
        Some(port) => Some(
            TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
                .step_with(|| format!("listen on 127.0.0.1:{port}"))?,
        ),
        None => None,
    };

    if privileged {
        nix::unistd::setgroups(&[]).step("setgroups")?;
        nix::sched::unshare(CloneFlags::CLONE_NEWUSER).step("unshare user namespace")?;
        // The outer helper moves us into the cgroups (if any) before answering.
        nix::unistd::write(outer, b"m").step("id maps")?;
        wait_outer(outer)?;
    }
    // Rooted at our (possibly new) cgroup, so the host's hierarchy stays hidden.
    nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).step("unshare cgroup namespace")?;
    let (uid, gid) = (Uid::from_raw(SANDBOX_UID), Gid::from_raw(SANDBOX_UID));
    nix::unistd::setresgid(gid, gid, gid).step("setresgid")?;
    nix::unistd::setresuid(uid, uid, uid).step("setresuid")?;
    tie_to_outer(outer)?;

    set_limits(spec).step("rlimits")?;
    nix::unistd::chdir(SANDBOX_WORKSPACE).step("chdir /workspace")?;
    sys::drop_all_capabilities().step("drop capabilities")?;
    nix::sys::prctl::set_no_new_privs().step("no_new_privs")?;
    lsm::finish(landlock, spec).step("landlock")?;
    seccomp::apply().step("seccomp")?;

    // Only stdio crosses into the command.
    sys::cloexec_from(3).step("close descriptors")?;
    let command = Command::prepare(spec)?;

    ctl.send(&Message::Ready, listener.as_ref().map(|l| l.as_fd()));
    drop(listener);

    let child = match command.start() {
        Ok(pid) => pid,
        Err(code) => {
            let _ = sys::close_range(0, 2);
            ctl.send(
                &Message::Exit {
                    code: Some(code),
                    signal: None,
                },
                None,
            );
            return Ok(0);
        }
    };
    // The output pipes must reach end-of-file as soon as the command's processes are gone.
    let _ = sys::close_range(0, 2);
    let child = Pid::from_raw(child);
    let (code, signal) = loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => break (Some(code), None),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                break (None, Some(sig as i32));
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return fail("wait for command", e.to_string()),
        }
    };
    // The command is over: nothing it left behind may outlive the report (the kernel would
    // also do this when init exits, but only after a slow namespace teardown).
    let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
    while let Ok(_) | Err(Errno::EINTR) = waitpid(None::<Pid>, None) {}
    ctl.send(&Message::Exit { code, signal }, None);
    Ok(0)
}

fn set_limits(spec: &HelperSpec) -> nix::Result<()> {
    let l = &spec.limits;
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    setrlimit(Resource::RLIMIT_NOFILE, 1024, 1024)?;
    // SIGXCPU at the limit, SIGKILL a second later.
    setrlimit(
        Resource::RLIMIT_CPU,
        l.cpu_secs,
        l.cpu_secs.saturating_add(1),
    )?;
    // No single file may outgrow the whole workspace quota, whatever the periodic check sees.
    let file_bytes = match l.workspace_bytes {
        0 => l.file_bytes,
        quota => l.file_bytes.min(quota),
    };
    setrlimit(Resource::RLIMIT_FSIZE, file_bytes, file_bytes)?;
    if spec.rlimit_nproc {
        let pids = u64::from(l.pids.max(2));
        setrlimit(Resource::RLIMIT_NPROC, pids, pids)?;
    }
    if spec.rlimit_as {
        setrlimit(Resource::RLIMIT_AS, l.memory_bytes, l.memory_bytes)?;
    }
    Ok(())
}

/// The command, resolved and converted before the confinement is complete.
struct Command {
    argv: Vec<CString>,
    env: Vec<CString>,
    candidates: Vec<CString>,
}

impl Command {
    fn prepare(spec: &HelperSpec) -> Result<Command, Fail> {
        let argv = spec
            .argv
            .iter()
            .map(|a| CString::new(a.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .step("argv")?;
        let env = spec
            .env
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()
            .step("env")?;
        let name = spec.argv.first().map(String::as_str).unwrap_or_default();
        let candidates = if name.contains('/') {
            vec![CString::new(name).step("argv")?]
        } else {
            // PATH of the command's environment, not ours (which is empty).
            let path = spec
                .env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.as_str())
                .unwrap_or_default();
            path.split(':')
                .map(|dir| if dir.is_empty() { "." } else { dir })
                .filter_map(|dir| {
                    let mut full = std::path::PathBuf::from(dir);
                    full.push(name);
                    CString::new(full.as_os_str().as_bytes()).ok()
                })
                .collect()
        };
        Ok(Command {
            argv,
            env,
            candidates,
        })
    }

    /// Starts the command (`posix_spawn`: no copy of this process, default signal handling).
    /// When it cannot start, says why on stderr and returns the shell's exit code for it.
    fn start(&self) -> Result<libc::pid_t, i32> {
        let errno = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT));
        let mut error = Errno::ENOENT;
        for path in &self.candidates {
            let e = match sys::spawn(path, &self.argv, &self.env, &[]) {
                Ok(pid) => return Ok(pid),
                Err(e) => errno(e),
            };
            match e {
                Errno::ENOEXEC => {
                    // Like execvp: a script without a #! line runs with /bin/sh.
                    let mut argv = vec![c"sh".to_owned(), path.clone()];
                    argv.extend(self.argv.iter().skip(1).cloned());
                    match sys::spawn(c"/bin/sh", &argv, &self.env, &[]) {
                        Ok(pid) => return Ok(pid),
                        Err(e) => error = errno(e),
                    }
                    break;
                }
                Errno::EACCES => error = Errno::EACCES,
                Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::ENAMETOOLONG => {}
                other => {
                    error = other;
                    break;
                }
            }
        }
        let name = self
            .argv
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let what = if error == Errno::ENOENT {
            "command not found".to_string()
        } else {
            error.desc().to_lowercase()
        };
        let _ = nix::unistd::write(
            std::io::stderr(),
            format!("paddock-sandbox: {name}: {what}\n").as_bytes(),
        );
        Err(if error == Errno::ENOENT { 127 } else { 126 })
    }
}
