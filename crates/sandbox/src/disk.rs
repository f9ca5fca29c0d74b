//! Disk accounting of a workspace folder on the host: what it uses (a bounded walk that never
//! follows symlinks and charges every file and folder at least one block, so many empty files
//! count too), the free space of its file system, and the removal of setuid/setgid bits a
//! sandbox may have left. The process tier calls these during and after every execution; the
//! caller uses them to refuse a call before it starts.
//!
//! The walk goes by file descriptor: each folder is opened relative to its parent's descriptor
//! with one name component and `O_NOFOLLOW`, so no host path is ever longer than one name (a
//! tree deeper than `PATH_MAX` is measured like any other) and a folder swapped for a symlink
//! during the walk is not followed. A folder the server owns but cannot read (a sandbox's
//! `chmod 000`) gets owner `rwx` back before the walk descends. Any other error is returned:
//! callers must treat an unmeasurable workspace as over its quota.
//!
//! This module measures; whether a run may continue is the caller's decision.

use std::collections::HashSet;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat};

/// The least a file or folder is charged: one block, so a million empty files are a
/// gigabyte-sized workspace rather than a free one.
pub const MIN_ENTRY_BYTES: u64 = 4096;

/// What a workspace uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes charged: allocated blocks, at least [`MIN_ENTRY_BYTES`] per entry, hard links once.
    pub bytes: u64,
    /// Files, folders and links seen.
    pub entries: u64,
    /// The walk stopped early because `bytes` went over the bound it was given, or `entries`
    /// over the entry bound: the real usage is at least this.
    pub partial: bool,
}

/// How far one walk goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkBounds {
    /// Stop once the charge exceeds this many bytes.
    pub bytes: u64,
    /// Stop once more than this many entries were seen (the walk's cost on the server).
    pub entries: u64,
}

impl WalkBounds {
    /// No bound at all (tests and workspace removal).
    pub const NONE: WalkBounds = WalkBounds {
        bytes: u64::MAX,
        entries: u64::MAX,
    };
}

/// Measures `dir` without following symlinks, stopping once the charge exceeds `bounds.bytes`
/// or the entries `bounds.entries` (so a hostile workspace of millions of entries costs a
/// bounded walk). With `strip`, removes setuid and setgid bits from every file and folder it
/// sees, through a descriptor opened without following symlinks. Entries that vanish during
/// the walk are skipped; a missing `dir` uses nothing.
pub fn workspace_usage(dir: &Path, bounds: WalkBounds, strip: bool) -> io::Result<DiskUsage> {
    let mut usage = DiskUsage::default();
    let mut linked: HashSet<(u64, u64)> = HashSet::new();
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let root = match nix::fcntl::open(dir, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(usage),
        Err(e) => return Err(e.into()),
    };
    let meta = fstat(&root)?;
    if strip {
        strip_fd(&root, &meta)?;
    }
    charge(&mut usage, &mut linked, &meta);
    // Folders still to read, each with its parent's descriptor: a folder's descriptor stays
    // open only while a child of it is pending, so a deep chain holds few descriptors.
    let mut stack: Vec<Rc<OwnedFd>> = vec![Rc::new(root)];
    while let Some(folder) = stack.pop() {
        for name in names(&folder)? {
            let meta = match fstatat(
                folder.as_fd(),
                name.as_c_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(meta) => meta,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            charge(&mut usage, &mut linked, &meta);
            if usage.bytes > bounds.bytes || usage.entries > bounds.entries {
                usage.partial = true;
                return Ok(usage);
            }
            let kind = meta.st_mode & libc::S_IFMT;
            if kind == libc::S_IFDIR {
                let Some(child) = open_folder(&folder, &name, &meta)? else {
                    continue;
                };
                if strip {
                    strip_fd(&child, &fstat(&child)?)?;
                }
                stack.push(Rc::new(child));
            } else if strip && kind == libc::S_IFREG && meta.st_mode & SET_ID_BITS != 0 {
                let file = OFlag::O_RDONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_NONBLOCK
                    | OFlag::O_NOCTTY
                    | OFlag::O_CLOEXEC;
                match openat(folder.as_fd(), name.as_c_str(), file, Mode::empty()) {
                    Ok(fd) => strip_fd(&fd, &fstat(&fd)?)?,
                    Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(usage)
}

/// The names in a folder, without `.` and `..`.
fn names(folder: &OwnedFd) -> io::Result<Vec<std::ffi::CString>> {
    // `Dir` takes its descriptor: give it a copy, keep ours for the children's `openat`.
    let mut dir = nix::dir::Dir::from_fd(folder.try_clone()?)?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Opens the folder `name` of `parent` without following a symlink; `None` when it vanished.
/// A folder the server owns but may not read gets owner `rwx` first, through a descriptor
/// that cannot be a symlink's target.
fn open_folder(parent: &OwnedFd, name: &CStr, meta: &FileStat) -> io::Result<Option<OwnedFd>> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(parent.as_fd(), name, flags, Mode::empty()) {
        Ok(fd) => return Ok(Some(fd)),
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::EACCES) if meta.st_uid == nix::unistd::geteuid().as_raw() => {}
        Err(e) => return Err(e.into()),
    }
    // O_PATH needs no permission on the folder itself; chmod through its /proc link acts on
    // exactly that inode (fchmod refuses O_PATH descriptors).
    let path_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let handle = match openat(parent.as_fd(), name, path_flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let current = fstat(&handle)?;
    if current.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(Errno::EACCES.into());
    }
    let link = format!("/proc/self/fd/{}", handle.as_raw_fd());
    let mode = Mode::from_bits_truncate((current.st_mode & 0o7777) | 0o700);
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        link.as_str(),
        mode,
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )?;
    tracing::warn!("gave the owner access back to an unreadable folder in a workspace");
    match openat(parent.as_fd(), name, flags, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes setuid/setgid bits from the open file or folder `fd` (described by `meta`).
fn strip_fd(fd: &OwnedFd, meta: &FileStat) -> io::Result<()> {
    if meta.st_mode & SET_ID_BITS == 0 {
        return Ok(());
    }
    let mode = Mode::from_bits_truncate(meta.st_mode & 0o7777 & !SET_ID_BITS);
    nix::sys::stat::fchmod(fd, mode)?;
    tracing::warn!("removed a setuid/setgid bit left in a workspace");
    Ok(())
}

/// Measures `dir` against `quota` bytes and `max_entries` entries (0: no cap), with `strip` as
/// in [`workspace_usage`]: the usage, or why it is over. A walk error is a stop: fail closed.
pub fn check_quota(
    dir: &Path,
    quota: u64,
    max_entries: u64,
    strip: bool,
) -> Result<DiskUsage, crate::DiskStop> {
    let bounds = WalkBounds {
        bytes: if quota == 0 { u64::MAX } else { quota },
        entries: if max_entries == 0 {
            u64::MAX
        } else {
            max_entries
        },
    };
    let usage = workspace_usage(dir, bounds, strip).map_err(|e| crate::DiskStop::Unmeasurable {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    })?;
    if usage.entries > bounds.entries {
        return Err(crate::DiskStop::Entries {
            entries: usage.entries,
            max: max_entries,
        });
    }
    if quota > 0 && usage.bytes > quota {
        return Err(crate::DiskStop::Quota {
            used: usage.bytes,
            quota,
        });
    }
    Ok(usage)
}

/// Gives the owner access back to every folder of `dir` it owns, so it can be removed.
pub fn make_removable(dir: &Path) -> io::Result<()> {
    workspace_usage(dir, WalkBounds::NONE, false).map(|_| ())
}

const SET_ID_BITS: u32 = libc::S_ISUID | libc::S_ISGID;

#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn charge(usage: &mut DiskUsage, linked: &mut HashSet<(u64, u64)>, meta: &FileStat) {
    usage.entries += 1;
    let is_dir = meta.st_mode & libc::S_IFMT == libc::S_IFDIR;
    if !is_dir && meta.st_nlink > 1 && !linked.insert((meta.st_dev as u64, meta.st_ino as u64)) {
        return;
    }
    let blocks = u64::try_from(meta.st_blocks).unwrap_or(0);
    usage.bytes = usage
        .bytes
        .saturating_add(blocks.saturating_mul(512).max(MIN_ENTRY_BYTES));
}

/// Bytes an unprivileged user may still write on the file system holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    #[allow(clippy::unnecessary_cast)]
    let free = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
    Ok(free)
}

/// `bytes` in whole megabytes, rounded up, for messages.
pub fn megabytes(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn empty_files_and_hard_links_are_charged_once_per_inode() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..10 {
            std::fs::write(dir.path().join(format!("f{i}")), b"").unwrap();
        }
        std::fs::write(dir.path().join("data"), vec![7u8; 100_000]).unwrap();
        for i in 0..5 {
            std::fs::hard_link(dir.path().join("data"), dir.path().join(format!("l{i}"))).unwrap();
        }
        let u = workspace_usage(dir.path(), WalkBounds::NONE, false).unwrap();
        assert_eq!(u.entries, 1 + 10 + 1 + 5);
        assert!(u.bytes >= 11 * MIN_ENTRY_BYTES + 100_000, "{u:?}");
        assert!(u.bytes < 11 * MIN_ENTRY_BYTES + 2 * 100_000, "{u:?}");
        assert!(!u.partial);
        let bounded = workspace_usage(
            dir.path(),
            WalkBounds {
                bytes: 3 * MIN_ENTRY_BYTES,
                entries: u64::MAX,
            },
            false,
        )
        .unwrap();
        assert!(
            bounded.partial && bounded.entries < u.entries,
            "{bounded:?}"
        );
    }

    #[test]
    fn set_id_bits_are_stripped_and_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("t");
        std::fs::write(&target, vec![1u8; 50_000]).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("link")).unwrap();
        let file = dir.path().join("suid");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o6755)).unwrap();
        let u = workspace_usage(dir.path(), WalkBounds::NONE, true).unwrap();
        assert!(
            u.bytes < 50_000,
            "the symlink's target is not charged: {u:?}"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&file), 0o755);
        assert_eq!(mode(&target), 0o4755, "outside the workspace: untouched");
    }

    #[test]
    fn a_tree_deeper_than_path_max_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let name = "a".repeat(250);
        let mut fd = nix::fcntl::open(
            dir.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        for _ in 0..20 {
            nix::sys::stat::mkdirat(fd.as_fd(), name.as_str(), Mode::from_bits_truncate(0o755))
                .unwrap();
            fd = openat(
                fd.as_fd(),
                name.as_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .unwrap();
        }
        let file = openat(
            fd.as_fd(),
            "data",
            OFlag::O_WRONLY | OFlag::O_CREAT,
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        nix::unistd::write(&file, &vec![1u8; 200_000]).unwrap();
        let u = workspace_usage(dir.path(), WalkBounds::NONE, false).unwrap();
        assert_eq!(u.entries, 1 + 20 + 1);
        assert!(u.bytes >= 200_000, "{u:?}");
        let bounded = workspace_usage(
            dir.path(),
            WalkBounds {
                bytes: u64::MAX,
                entries: 5,
            },
            false,
        )
        .unwrap();
        assert!(bounded.partial && bounded.entries == 6, "{bounded:?}");
        make_removable(dir.path()).unwrap();
    }

    /// Runs the test `name` of this binary again without the capabilities that let root
    /// read any folder, so a `chmod 000` folder is unreadable as it is for an unprivileged
    /// server. `false` when the test should run here (not root, or already re-run).
    fn rerun_without_dac_override(name: &str) -> bool {
        if std::env::var_os("PADDOCK_TEST_NO_DAC").is_some() || !nix::unistd::geteuid().is_root() {
            return false;
        }
        let out = std::process::Command::new("setpriv")
            .args(["--bounding-set", "-dac_override,-dac_read_search"])
            .arg(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture"])
            .env("PADDOCK_TEST_NO_DAC", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        true
    }

    #[test]
    fn an_unreadable_folder_is_opened_again_and_measured() {
        if rerun_without_dac_override(
            "disk::tests::an_unreadable_folder_is_opened_again_and_measured",
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::write(locked.join("data"), vec![1u8; 100_000]).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        assert!(
            std::fs::read_dir(&locked).is_err(),
            "the folder is unreadable to this process"
        );
        let u = workspace_usage(dir.path(), WalkBounds::NONE, false).unwrap();
        assert!(u.bytes >= 100_000 && u.entries == 3, "{u:?}");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        make_removable(dir.path()).unwrap();
        std::fs::remove_dir_all(dir.path()).unwrap();
    }
}
