//! Which host paths the sandbox's root is made of, probed once when the driver is created.

use std::path::{Component, Path, PathBuf};

use crate::SandboxError;
use crate::wire::{Entry, Layout};

/// System folders bound read-only with execute rights (or recreated as symlinks, e.g. on
/// merged-/usr systems where `/bin` → `usr/bin`).
const SYSTEM: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// The only `/etc` entries the sandbox sees: loader, TLS trust, name-service switch, time zone
/// and MIME data. Never credentials, keys, or tool configs that may hold tokens (`/etc/shadow`,
/// `/etc/ssh`, `/etc/ssl/private`, `/etc/gitconfig`, `/etc/npmrc`, `/etc/pip.conf`, …).
///
/// Kept short on purpose (each entry is a mount per sandbox): `ld.so.conf(.d)` and the
/// `ca-certificates` configuration only matter to `ldconfig`/`update-ca-certificates`, which
/// cannot run in the sandbox; resolver tuning files are moot without a network.
const ETC: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/nsswitch.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/alternatives",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/pki/ca-trust",
    "/etc/pki/tls/certs",
    "/etc/pki/tls/cert.pem",
    "/etc/pki/tls/openssl.cnf",
];

/// Device nodes bound from the host.
const DEV: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// Paths the helper creates itself (reserved for extra files too).
pub(crate) const GENERATED: &[&str] = &[
    "/proc",
    "/dev",
    "/tmp",
    "/workspace",
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/.oldroot",
];

pub(crate) fn probe() -> Layout {
    use std::os::unix::fs::FileTypeExt;
    let mut entries = Vec::new();
    let mut add = |path: &str, exec: bool| {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        let path = PathBuf::from(path);
        let ft = meta.file_type();
        if ft.is_symlink() {
            if let Ok(target) = std::fs::read_link(&path) {
                entries.push(Entry::Symlink { path, target });
            }
        } else if ft.is_dir() {
            entries.push(Entry::Dir { path, exec });
        } else if ft.is_file() {
            entries.push(Entry::File { path });
        } else if ft.is_char_device() {
            entries.push(Entry::Device { path });
        }
    };
    for p in SYSTEM {
        add(p, true);
    }
    for p in ETC {
        add(p, false);
    }
    for p in DEV {
        add(p, false);
    }
    Layout { entries }
}

/// Checks an extra read-only file's path: absolute, plain components, and not in or above
/// anything mounted or generated.
pub(crate) fn check_extra_path(layout: &Layout, path: &Path) -> Result<(), SandboxError> {
    let bad = |why: &str| {
        Err(SandboxError::InvalidSpec(format!(
            "extra file {}: {why}",
            path.display()
        )))
    };
    if !path.is_absolute() {
        return bad("path must be absolute");
    }
    if path
        .components()
        .skip(1)
        .any(|c| !matches!(c, Component::Normal(_)))
        || path.components().count() < 2
    {
        return bad("path must be plain (no `.`, `..`, or root)");
    }
    let reserved = layout
        .entries
        .iter()
        .map(|e| e.path().to_path_buf())
        .chain(GENERATED.iter().map(PathBuf::from));
    for r in reserved {
        if path.starts_with(&r) || r.starts_with(path) {
            return bad(&format!("overlaps {}", r.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_finds_usr_and_never_shadow() {
        let layout = probe();
        assert!(layout.entries.iter().any(|e| e.path() == Path::new("/usr")));
        assert!(
            !layout
                .entries
                .iter()
                .any(|e| e.path().starts_with("/etc/shadow"))
        );
    }

    #[test]
    fn extra_paths() {
        let layout = Layout {
            entries: vec![Entry::Dir {
                path: "/etc/ssl/certs".into(),
                exec: false,
            }],
        };
        assert!(check_extra_path(&layout, Path::new("/etc/paddock/ca.pem")).is_ok());
        assert!(check_extra_path(&layout, Path::new("/etc/ssl/certs/x.pem")).is_err());
        assert!(check_extra_path(&layout, Path::new("/etc/ssl")).is_err());
        assert!(check_extra_path(&layout, Path::new("/workspace/x")).is_err());
        assert!(check_extra_path(&layout, Path::new("/etc/passwd")).is_err());
        assert!(check_extra_path(&layout, Path::new("relative")).is_err());
        assert!(check_extra_path(&layout, Path::new("/etc/../x")).is_err());
        assert!(check_extra_path(&layout, Path::new("/")).is_err());
    }
}
