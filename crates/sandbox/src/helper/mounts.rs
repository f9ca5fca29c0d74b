//! The sandbox's root: a tmpfs with read-only binds of the system folders, a few `/etc` files,
//! a minimal `/dev`, a fresh `/proc`, private `/tmp` and the workspace. Built after
//! `pivot_root` with the host's root at `/.oldroot`, which is detached at the end; then the
//! tmpfs is made read-only.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag};

use super::{Fail, Step};
use crate::sys;
use crate::wire::{Entry, HelperSpec, Layout};
use crate::{SANDBOX_UID, SANDBOX_WORKSPACE};

/// Where the host's root is while the new root is built.
const OLD_ROOT: &str = "/.oldroot";

fn old(path: &Path) -> PathBuf {
    let mut p = PathBuf::from(OLD_ROOT);
    p.push(path.strip_prefix("/").unwrap_or(path));
    p
}

fn cpath(path: &Path) -> Result<CString, Fail> {
    CString::new(path.as_os_str().as_bytes()).step("path")
}

/// Directories already created in the new root (to skip repeated `mkdir -p`).
struct Dirs(Vec<PathBuf>);

impl Dirs {
    fn ensure(&mut self, dir: &Path) -> Result<(), Fail> {
        if dir == Path::new("/") || self.0.iter().any(|d| d == dir) {
            return Ok(());
        }
        std::fs::create_dir_all(dir).step_with(|| format!("mkdir {}", dir.display()))?;
        self.0.push(dir.to_path_buf());
        Ok(())
    }

    fn parent(&mut self, path: &Path) -> Result<(), Fail> {
        match path.parent() {
            Some(p) => self.ensure(p),
            None => Ok(()),
        }
    }
}

/// An empty regular file to mount over (one system call).
fn touch(path: &Path, mode: u32) -> Result<(), Fail> {
    nix::sys::stat::mknod(path, SFlag::S_IFREG, Mode::from_bits_truncate(mode), 0)
        .step_with(|| format!("create {}", path.display()))
}

fn bind(src: &Path, dst: &Path, recursive: bool) -> Result<(), Fail> {
    let flags = if recursive {
        MsFlags::MS_BIND | MsFlags::MS_REC
    } else {
        MsFlags::MS_BIND
    };
    mount(Some(src), dst, None::<&str>, flags, None::<&str>)
        .step_with(|| format!("bind {}", dst.display()))
}

fn harden(dst: &Path, read_only: bool, recursive: bool) -> Result<(), Fail> {
    sys::mount_harden(&cpath(dst)?, read_only, recursive)
        .step_with(|| format!("remount {}", dst.display()))
}

fn tmpfs(dst: &Path, flags: MsFlags, options: &str) -> Result<(), Fail> {
    mount(Some("tmpfs"), dst, Some("tmpfs"), flags, Some(options))
        .step_with(|| format!("mount tmpfs {}", dst.display()))
}

/// Size of the root tmpfs (it only holds mount points, generated files and the extra files;
/// read-only once built).
pub(crate) const ROOT_BYTES: u64 = 64 << 20;

/// Everything that does not depend on the request, done while the helper waits for it. The
/// host's root stays reachable at `/.oldroot` (only this trusted process runs here) until
/// [`finish`] has bound the workspace.
pub(super) fn prepare(layout: &Layout) -> Result<(), Fail> {
    // Nothing we mount may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .step("make mounts private")?;
    tmpfs(
        Path::new("/tmp"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        &format!("mode=0755,size={ROOT_BYTES}"),
    )?;
    std::fs::create_dir("/tmp/.oldroot").step("mkdir old root")?;
    nix::unistd::pivot_root("/tmp", "/tmp/.oldroot").step("pivot_root")?;
    nix::unistd::chdir("/").step("chdir /")?;

    let mut dirs = Dirs(Vec::with_capacity(16));
    for entry in &layout.entries {
        match entry {
            Entry::Dir { path, .. } => {
                dirs.ensure(path)?;
                bind(&old(path), path, true)?;
                harden(path, true, true)?;
            }
            Entry::File { path } => {
                dirs.parent(path)?;
                touch(path, 0o444)?;
                bind(&old(path), path, false)?;
                harden(path, true, false)?;
            }
            Entry::Symlink { path, target } => {
                dirs.parent(path)?;
                symlink(target, path).step_with(|| format!("symlink {}", path.display()))?;
            }
            Entry::Device { path } => {
                dirs.parent(path)?;
                touch(path, 0o666)?;
                bind(&old(path), path, false)?;
            }
        }
    }

    dirs.ensure(Path::new("/dev"))?;
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, link).step_with(|| format!("symlink {link}"))?;
    }
    for dir in ["/dev/shm", "/tmp", SANDBOX_WORKSPACE, "/proc"] {
        std::fs::create_dir(dir).step_with(|| format!("mkdir {dir}"))?;
    }

    // Generated identity files.
    dirs.ensure(Path::new("/etc"))?;
    let u = SANDBOX_UID;
    write_file(
        Path::new("/etc/passwd"),
        format!("root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{u}:{u}:sandbox:{SANDBOX_WORKSPACE}:/bin/sh\n")
            .as_bytes(),
    )?;
    write_file(
        Path::new("/etc/group"),
        format!("root:x:0:\nsandbox:x:{u}:\n").as_bytes(),
    )?;
    write_file(
        Path::new("/etc/hosts"),
        b"127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )?;

    // A /proc of the new pid namespace (mounting it needs the host's /proc still visible).
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .step("mount /proc")?;
    Ok(())
}

/// The request's part: extra files, private `/tmp` and `/dev/shm`, the workspace; then the
/// host's root is detached for good and the root made read-only.
pub(super) fn finish(spec: &HelperSpec, spec_fd: &OwnedFd, files_at: u64) -> Result<(), Fail> {
    let mut dirs = Dirs(Vec::new());
    for file in &spec.extra_ro_files {
        dirs.parent(&file.path)?;
        let content = super::outer::read_at(spec_fd, files_at + file.offset, file.len as usize)?;
        write_file(&file.path, &content)?;
    }
    let tmp_opts = format!("mode=1777,size={}", spec.limits.tmp_bytes.max(4096));
    tmpfs(
        Path::new("/dev/shm"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        &tmp_opts,
    )?;
    tmpfs(
        Path::new("/tmp"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        &tmp_opts,
    )?;
    let ws = Path::new(SANDBOX_WORKSPACE);
    bind(&old(&spec.workspace), ws, false)?;
    harden(ws, false, false)?;

    umount2(OLD_ROOT, MntFlags::MNT_DETACH).step("detach old root")?;
    std::fs::remove_dir(OLD_ROOT).step("remove old root")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .step("remount / read-only")?;
    Ok(())
}

fn write_file(path: &Path, content: &[u8]) -> Result<(), Fail> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .step_with(|| format!("write {}", path.display()))?;
    f.write_all(content)
        .step_with(|| format!("write {}", path.display()))
}
