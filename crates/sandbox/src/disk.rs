//! Disk accounting of a workspace folder on the host: what it uses (a bounded walk that never
//! follows symlinks and charges every file and folder at least one block, so many empty files
//! count too), the free space of its file system, and the removal of setuid/setgid bits a
//! sandbox may have left. The process tier calls these during and after every execution; the
//! caller uses them to refuse a call before it starts.
//!
//! This module measures; whether a run may continue is the caller's decision.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

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
    /// The walk stopped early because `bytes` went over the bound it was given: the real usage
    /// is at least `bytes`.
    pub partial: bool,
}

/// Measures `dir` without following symlinks, stopping once the charge exceeds `stop_above`
/// (so a hostile workspace of millions of entries costs a bounded walk). With `strip`, removes
/// setuid and setgid bits from every file and folder it sees (only safe once no sandbox runs
/// on `dir`: the path could otherwise be swapped for a symlink in between). Entries that vanish
/// during the walk are skipped; a missing `dir` uses nothing.
pub fn workspace_usage(dir: &Path, stop_above: u64, strip: bool) -> io::Result<DiskUsage> {
    let mut usage = DiskUsage::default();
    let mut linked: HashSet<(u64, u64)> = HashSet::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    let root = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(usage),
        Err(e) => return Err(e),
    };
    charge(&mut usage, &mut linked, &root);
    while let Some(folder) = stack.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let path = entry.path();
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            charge(&mut usage, &mut linked, &meta);
            let file_type = meta.file_type();
            if strip && !file_type.is_symlink() && meta.mode() & SET_ID_BITS != 0 {
                let mode = meta.mode() & 0o7777 & !SET_ID_BITS;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
                tracing::warn!(path = %path.display(), "removed a setuid/setgid bit left in a workspace");
            }
            if file_type.is_dir() {
                stack.push(path);
            }
            if usage.bytes > stop_above {
                usage.partial = true;
                return Ok(usage);
            }
        }
    }
    Ok(usage)
}

const SET_ID_BITS: u32 = libc::S_ISUID | libc::S_ISGID;

fn charge(usage: &mut DiskUsage, linked: &mut HashSet<(u64, u64)>, meta: &std::fs::Metadata) {
    usage.entries += 1;
    if !meta.is_dir() && meta.nlink() > 1 && !linked.insert((meta.dev(), meta.ino())) {
        return;
    }
    usage.bytes = usage
        .bytes
        .saturating_add((meta.blocks() * 512).max(MIN_ENTRY_BYTES));
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
        let u = workspace_usage(dir.path(), u64::MAX, false).unwrap();
        assert_eq!(u.entries, 1 + 10 + 1 + 5);
        assert!(u.bytes >= 11 * MIN_ENTRY_BYTES + 100_000, "{u:?}");
        assert!(u.bytes < 11 * MIN_ENTRY_BYTES + 2 * 100_000, "{u:?}");
        assert!(!u.partial);
        let bounded = workspace_usage(dir.path(), 3 * MIN_ENTRY_BYTES, false).unwrap();
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
        let u = workspace_usage(dir.path(), u64::MAX, true).unwrap();
        assert!(
            u.bytes < 50_000,
            "the symlink's target is not charged: {u:?}"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&file), 0o755);
        assert_eq!(mode(&target), 0o4755, "outside the workspace: untouched");
    }
}
