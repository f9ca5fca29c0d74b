//! The only module with `unsafe`: thin wrappers over system calls that neither `std` nor `nix`
//! offer (or offer with unwanted allocation/semantics). Each wrapper is safe to call.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn check_int(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The kernel's Landlock ABI version, 0 when Landlock is unsupported or disabled.
pub(crate) fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute, size 0 and the VERSION flag the kernel reads no memory
    // and only returns the ABI version (or an error).
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        0
    } else {
        i32::try_from(r).unwrap_or(0)
    }
}

/// Whether seccomp filters that return an errno are supported.
pub(crate) fn seccomp_errno_available() -> bool {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_uint = 2;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let action: u32 = SECCOMP_RET_ERRNO;
    // SAFETY: the kernel reads one u32 from a valid pointer to a local.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_GET_ACTION_AVAIL,
            0u32,
            &action as *const u32,
        )
    };
    r == 0
}

/// Whether this process has `cap` in its effective set (in its own user namespace).
pub(crate) fn has_effective_cap(cap: u32) -> bool {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and data are valid, properly sized (version 3 uses two data structs).
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if r != 0 {
        return false;
    }
    let (word, bit) = ((cap / 32) as usize, cap % 32);
    word < 2 && data[word].effective & (1 << bit) != 0
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Empties the bounding, ambient, effective, permitted and inheritable capability sets.
pub(crate) fn drop_all_capabilities() -> io::Result<()> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                break; // past the last capability this kernel knows
            }
            return Err(err);
        }
    }
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(io::Error::last_os_error());
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and data are valid and sized for version 3.
    check(unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    })?;
    Ok(())
}

/// Clones this (single-threaded) process like `fork`, with the child in new namespaces.
/// Returns 0 in the child and the child's pid in the parent.
pub(crate) fn clone_into_namespaces(flags: libc::c_int) -> io::Result<libc::pid_t> {
    // SAFETY: a fork-like clone: no CLONE_VM and a null stack, so the child runs on a copy of
    // this process's memory. Callers are single-threaded (the helper), so no lock can be held
    // by another thread at this point.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    Ok(check(r)? as libc::pid_t)
}

/// Ends the process now, without running destructors or atexit handlers (for forked children).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no shared state.
    unsafe { libc::_exit(code) }
}

/// Takes ownership of an inherited descriptor, checking it is open, and marks it close-on-exec.
pub(crate) fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on an integer fd has no memory effects.
    check_int(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    // SAFETY: the descriptor is open (checked above) and nothing else in this process owns it:
    // it was placed by our parent at a fixed number before exec.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Closes descriptors `first..=last`.
pub(crate) fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: callers pass ranges whose descriptors nothing in this process uses any more
    // (no OwnedFd in the range is used afterwards).
    check(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) }).map(drop)
}

/// Marks every descriptor from `first` up close-on-exec.
pub(crate) fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: only sets a flag on descriptors.
    check(unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    })
    .map(drop)
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Makes the mount at `path` (and, if `recursive`, those beneath) nosuid, nodev and optionally
/// read-only, keeping its other flags (which may be locked in a user namespace).
pub(crate) fn mount_harden(path: &CStr, read_only: bool, recursive: bool) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID
            | MOUNT_ATTR_NODEV
            | if read_only { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: path is a valid C string and attr a valid struct of the size passed.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// Brings the loopback interface of the current network namespace up.
pub(crate) fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket creation; the result is checked and owned immediately.
    let raw = check_int(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: raw is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq.
    check_int(unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFFLAGS,
            &ifr as *const libc::ifreq,
        )
    })?;
    Ok(())
}

/// An anonymous in-memory file holding `data`, positioned at 0.
pub(crate) fn memfd_with(data: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: the name is a valid C string; the result is checked and owned immediately.
    let raw =
        check_int(unsafe { libc::memfd_create(c"paddock-spec".as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: raw is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut file = std::fs::File::from(fd);
    file.write_all(data)?;
    Ok(OwnedFd::from(file))
}

/// `pidfd_open(pid, 0)`.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments; the result is checked and owned immediately.
    let r = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) })?;
    // SAFETY: r is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Sends `signal` to the process behind a pidfd (no pid-reuse race).
pub(crate) fn pidfd_kill(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: integer arguments and a null siginfo.
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    })
    .map(drop)
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Exited(i32),
    Signaled(i32),
}

/// Reaps the child behind `pidfd`; `None` if it is still running and `block` is false.
pub(crate) fn wait_pidfd(pidfd: BorrowedFd<'_>, block: bool) -> io::Result<Option<Status>> {
    // SAFETY: siginfo_t is plain old data; zeroed is valid (si_pid 0 means "no child").
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: info is a valid siginfo_t to fill.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                flags,
            )
        };
        if r == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    // SAFETY: waitid filled info for a SIGCHLD (or left it zeroed).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(if info.si_code == libc::CLD_EXITED {
        Status::Exited(status)
    } else {
        Status::Signaled(status)
    }))
}

/// Starts `exe` with `argv`, the environment `env` (`KEY=value` strings), default signal
/// dispositions and mask, and exactly the descriptors in `fds` (`(source, target)` pairs) on
/// top of those not close-on-exec. Uses `posix_spawn` (vfork-like), never `fork`: cheap, and
/// safe in a multi-threaded server.
pub(crate) fn spawn(
    exe: &CStr,
    argv: &[CString],
    env: &[CString],
    fds: &[(BorrowedFd<'_>, RawFd)],
) -> io::Result<libc::pid_t> {
    // Sources must not be overwritten by an earlier dup2 onto a target number: move any low
    // source out of the way first.
    let top = fds.iter().map(|(_, t)| *t).max().unwrap_or(0);
    let mut keep = Vec::new();
    let mut sources = Vec::with_capacity(fds.len());
    for (src, target) in fds {
        if src.as_raw_fd() <= top {
            // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we own immediately.
            let raw =
                check_int(unsafe { libc::fcntl(src.as_raw_fd(), libc::F_DUPFD_CLOEXEC, top + 1) })?;
            // SAFETY: raw is fresh and owned by nothing else.
            let dup = unsafe { OwnedFd::from_raw_fd(raw) };
            sources.push((raw, *target));
            keep.push(dup);
        } else {
            sources.push((src.as_raw_fd(), *target));
        }
    }

    let mut argv_ptrs: Vec<*mut libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr() as *mut libc::c_char)
        .collect();
    argv_ptrs.push(std::ptr::null_mut());
    let mut envp: Vec<*mut libc::c_char> = env
        .iter()
        .map(|e| e.as_ptr() as *mut libc::c_char)
        .collect();
    envp.push(std::ptr::null_mut());

    // SAFETY: the posix_spawn objects are initialised before use and destroyed on every path;
    // all pointers passed point to live, NUL-terminated data owned by this frame.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        let r = libc::posix_spawn_file_actions_init(&mut actions);
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        let r = libc::posix_spawnattr_init(&mut attr);
        if r != 0 {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(io::Error::from_raw_os_error(r));
        }
        let result = (|| {
            for (src, target) in &sources {
                let r = libc::posix_spawn_file_actions_adddup2(&mut actions, *src, *target);
                if r != 0 {
                    return Err(io::Error::from_raw_os_error(r));
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            let mut defaults: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut defaults);
            // Rust ignores SIGPIPE (and ignored signals survive exec): the helper and the
            // command get default dispositions.
            for sig in [
                libc::SIGPIPE,
                libc::SIGXFSZ,
                libc::SIGXCPU,
                libc::SIGHUP,
                libc::SIGINT,
                libc::SIGQUIT,
                libc::SIGTERM,
            ] {
                libc::sigaddset(&mut defaults, sig);
            }
            let r = libc::posix_spawnattr_setsigmask(&mut attr, &empty);
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
            let r = libc::posix_spawnattr_setsigdefault(&mut attr, &defaults);
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
            let r = libc::posix_spawnattr_setflags(
                &mut attr,
                (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short,
            );
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
            let mut pid: libc::pid_t = 0;
            let r = libc::posix_spawn(
                &mut pid,
                exe.as_ptr(),
                &actions,
                &attr,
                argv_ptrs.as_ptr(),
                envp.as_ptr(),
            );
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
            Ok(pid)
        })();
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        drop(keep);
        result
    }
}

/// Sends one datagram, optionally with a descriptor attached (SCM_RIGHTS).
pub(crate) fn send_with_fd(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let fds;
    let cmsgs: &[ControlMessage<'_>] = match fd {
        Some(fd) => {
            fds = [fd.as_raw_fd()];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(data)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Receives one datagram (without blocking unless `block`) and takes ownership of attached
/// descriptors. `Ok((0, []))` means the peer closed.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    block: bool,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        if block {
            MsgFlags::MSG_CMSG_CLOEXEC
        } else {
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC
        },
    )?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            for raw in received {
                // SAFETY: the kernel just installed this descriptor for us; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
    }
    if msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "truncated control message",
        ));
    }
    Ok((msg.bytes, fds))
}

/// Registers an owned descriptor with the tokio reactor (for read readiness). On failure the
/// descriptor comes back with the cause.
pub(crate) fn async_fd(
    fd: OwnedFd,
) -> Result<tokio::io::unix::AsyncFd<OwnedFd>, tokio::io::unix::AsyncFdRegisterError<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open descriptor, it stays open and refers to the same file
    // description for as long as the AsyncFd owns it, and as_raw_fd always returns it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
}
