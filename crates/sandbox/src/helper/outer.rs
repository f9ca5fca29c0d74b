//! The outer helper: still in the host's namespaces. Clones init into new namespaces (init then
//! pre-builds the sandbox), waits for the request, hands it to init, moves init into its
//! cgroups, writes init's uid/gid maps and reports how init ended.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitCode;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, getegid, geteuid, getppid};

use super::{Control, Fail, Step, fail, init};
use crate::sys;
use crate::wire::{CONTROL_FD, CgroupPlan, HelperSpec, Message};

const CAP_SYS_ADMIN: u32 = 21;

pub(super) fn main() -> ExitCode {
    let ctl = match sys::take_inherited_fd(CONTROL_FD) {
        Ok(fd) => Control(fd),
        Err(_) => {
            eprintln!(
                "paddock sandbox helper: this entry point is started by the paddock server only"
            );
            return ExitCode::from(2);
        }
    };
    match run(&ctl) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            ctl.report(&f);
            ExitCode::from(1)
        }
    }
}

/// Reads `len` bytes at `offset` of `fd`.
pub(super) fn read_at(fd: &OwnedFd, offset: u64, len: usize) -> Result<Vec<u8>, Fail> {
    let mut bytes = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match nix::sys::uio::pread(fd, &mut bytes[done..], (offset + done as u64) as i64) {
            Ok(0) => return fail("read spec", "truncated"),
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return fail("read spec", e.to_string()),
        }
    }
    Ok(bytes)
}

/// Reads the JSON spec from the memfd the host attached to its request (see `wire::encode`);
/// also returns where the file area starts.
pub(super) fn read_spec(fd: &OwnedFd) -> Result<(HelperSpec, u64), Fail> {
    let header = read_at(fd, 0, 8)?;
    let len = u64::from_le_bytes(header.try_into().unwrap_or([0; 8]));
    if len > 64 << 20 {
        return fail("read spec", "spec too large");
    }
    let spec = serde_json::from_slice(&read_at(fd, 8, len as usize)?).step("parse spec")?;
    Ok((spec, 8 + len))
}

/// Blocks for one datagram with a descriptor; `None` when the peer closed.
pub(super) fn receive_fd(sock: BorrowedFd<'_>, step: &str) -> Result<Option<OwnedFd>, Fail> {
    let mut buf = [0u8; 64];
    loop {
        match sys::recv_with_fds(sock, &mut buf, true) {
            Ok((0, _)) => return Ok(None),
            Ok((_, fds)) => match fds.into_iter().next() {
                Some(fd) => return Ok(Some(fd)),
                None => return fail(step, "request without a spec"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return fail(step, e.to_string()),
        }
    }
}

fn run(ctl: &Control) -> Result<(), Fail> {
    // Nothing but stdio and the control socket may cross into the sandbox, whatever the server
    // leaked into this process.
    sys::close_range((CONTROL_FD + 1) as u32, u32::MAX).step("close inherited descriptors")?;
    // Die with the server.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).step("pdeathsig")?;

    let privileged = geteuid().is_root();
    if privileged && !sys::has_effective_cap(CAP_SYS_ADMIN) {
        return fail(
            "privileges",
            "running as root without CAP_SYS_ADMIN is not supported",
        );
    }

    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .step("socketpair")?;
    // Init creates the cgroup namespace itself, once it is in its cgroups (see init.rs).
    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    if !privileged {
        // Unprivileged: the user namespace comes first so init owns the others. As root, init
        // builds the sandbox with real privileges and enters a user namespace only afterwards,
        // so the sandbox's mount and network namespaces stay owned by the host's.
        flags |= libc::CLONE_NEWUSER;
    }
    let pid = sys::clone_into_namespaces(flags).step("clone")?;
    if pid == 0 {
        drop(ours);
        let code = init::main(ctl, theirs, privileged);
        sys::exit_now(code);
    }
    drop(theirs);
    // Only the sandbox holds the command's stdio: output ends when the command does.
    let _ = sys::close_range(0, 2);
    let kill_init = || {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    };

    match sys::pidfd_open(pid) {
        Ok(pidfd) => ctl.send(&Message::Started { pid }, Some(pidfd.as_fd())),
        Err(e) => {
            kill_init();
            return fail("pidfd_open", e.to_string());
        }
    }
    if !privileged {
        let (uid, gid) = (geteuid().as_raw(), getegid().as_raw());
        if let Err(f) = write_maps(pid, uid, gid, true) {
            kill_init();
            return Err(f);
        }
        let _ = nix::unistd::write(&ours, b"g");
    }

    // Idle until the request (end-of-file: the server dropped us).
    let Some(spec_fd) = receive_fd(ctl.0.as_fd(), "receive spec")? else {
        kill_init();
        return Ok(());
    };
    // Init parses it too, in parallel with us. If it is gone (it reported why), reaping it
    // below says the rest.
    let _ = sys::send_with_fd(ours.as_fd(), b"s", Some(spec_fd.as_fd()));
    let (spec, _) = read_spec(&spec_fd)?;
    if getppid().as_raw() as u32 != spec.host_pid {
        kill_init();
        return fail("start", "the server exited");
    }

    if privileged {
        // While init finishes its root: set the limits of the cgroups it sits in (the host
        // moved it there before the request). Init waits for our answer below before it starts
        // the command.
        if let Some(plan) = &spec.cgroup
            && let Err(f) = set_cgroup_limits(plan)
        {
            kill_init();
            return Err(f);
        }
        // Init asks once it has entered its user namespace (or closes the socket on failure).
        let mut byte = [0u8; 1];
        if nix::unistd::read(&ours, &mut byte).unwrap_or(0) == 1 {
            if let Err(f) = write_maps(pid, spec.host_ids.0, spec.host_ids.1, false) {
                kill_init();
                return Err(f);
            }
            let _ = nix::unistd::write(&ours, b"g");
        }
    } else if spec.cgroup.is_some() {
        kill_init();
        return fail("cgroup", "cgroup limits need the helper to run as root");
    }

    // Keep `ours` open until init is gone: init polls it to know this process is alive.
    let (code, signal) = loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => break (Some(code), None),
            Ok(WaitStatus::Signaled(_, sig, _)) => break (None, Some(sig as i32)),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return fail("wait for init", e.to_string()),
        }
    };
    ctl.send(&Message::InitGone { code, signal }, None);
    drop(ours);
    Ok(())
}

/// Maps the sandbox user (1000) to `uid`/`gid` on the host.
fn write_maps(pid: libc::pid_t, uid: u32, gid: u32, deny_setgroups: bool) -> Result<(), Fail> {
    if deny_setgroups {
        write_proc(pid, "setgroups", "deny")?;
    }
    write_proc(pid, "uid_map", &format!("{} {uid} 1\n", crate::SANDBOX_UID))?;
    write_proc(pid, "gid_map", &format!("{} {gid} 1\n", crate::SANDBOX_UID))
}

fn write_proc(pid: libc::pid_t, name: &str, content: &str) -> Result<(), Fail> {
    let path = format!("/proc/{pid}/{name}");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .step_with(|| format!("write {name}"))?;
    // One write: the kernel rejects id maps written in pieces.
    f.write_all(content.as_bytes())
        .step_with(|| format!("write {name}"))
}

/// Writes the request's limits into the cgroups init already sits in.
fn set_cgroup_limits(plan: &CgroupPlan) -> Result<(), Fail> {
    for (file, value) in &plan.writes {
        std::fs::write(file, value).step_with(|| format!("cgroup write {}", file.display()))?;
    }
    Ok(())
}
