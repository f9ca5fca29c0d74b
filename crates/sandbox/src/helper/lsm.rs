//! Landlock: what the command may touch in its (already minimal) root, and which TCP ports it
//! may bind or connect to (none, or only the proxy port). Applied with hard requirements: a
//! kernel that cannot enforce a requested right is an error, never a silent downgrade.

use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    PathFd, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetError, RulesetStatus,
    Scope,
};

use crate::SANDBOX_WORKSPACE;
use crate::wire::{Entry, HelperSpec, Layout};

/// The newest ABI whose rights this crate requests (tested); newer kernels are used at this level.
pub(crate) const MAX_ABI: i32 = 7;
/// TCP rules need ABI 4.
pub(crate) const MIN_ABI: i32 = 4;

#[derive(Debug, thiserror::Error)]
pub(crate) enum LandlockError {
    #[error(transparent)]
    Ruleset(#[from] RulesetError),
    #[error("{0}: {1}")]
    Path(String, String),
    #[error("not fully enforced ({0:?})")]
    NotEnforced(RulesetStatus),
}

fn rule(
    rs: RulesetCreated,
    path: impl AsRef<Path>,
    access: BitFlags<AccessFs>,
) -> Result<RulesetCreated, LandlockError> {
    let path = path.as_ref();
    let fd = PathFd::new(path)
        .map_err(|e| LandlockError::Path(path.display().to_string(), e.to_string()))?;
    Ok(rs.add_rule(PathBeneath::new(fd, access))?)
}

/// The ruleset with the rules that do not depend on the request (built while the helper waits).
pub(super) fn prepare(layout: &Layout) -> Result<RulesetCreated, LandlockError> {
    let kernel_abi = crate::sys::landlock_abi();
    let abi = ABI::from(kernel_abi.clamp(MIN_ABI, MAX_ABI));
    let read_exec = AccessFs::from_read(abi);
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let file_rw = AccessFs::from_file(abi) & !AccessFs::Execute;

    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?;
    if kernel_abi >= 6 {
        // No connecting to abstract Unix sockets or signalling processes outside the sandbox.
        ruleset = ruleset.scope(Scope::from_all(abi))?;
    }
    let mut rs = ruleset.create()?;

    // Listing directories anywhere in the (curated) root is harmless; reading files is not
    // granted by this.
    rs = rule(rs, "/", BitFlags::from(AccessFs::ReadDir))?;
    for entry in &layout.entries {
        match entry {
            Entry::Dir { path, exec: true } => rs = rule(rs, path, read_exec)?,
            Entry::Device { path } => {
                let random = path.ends_with("random") || path.ends_with("urandom");
                rs = rule(
                    rs,
                    path,
                    if random {
                        BitFlags::from(AccessFs::ReadFile)
                    } else {
                        file_rw
                    },
                )?;
            }
            Entry::Dir { exec: false, .. } | Entry::File { .. } | Entry::Symlink { .. } => {}
        }
    }
    rs = rule(rs, "/etc", read)?;
    rule(rs, "/proc", read)
}

/// Adds the request's rules (its folders, extra files, proxy port) and enforces the ruleset on
/// the calling process.
pub(super) fn finish(mut rs: RulesetCreated, spec: &HelperSpec) -> Result<(), LandlockError> {
    let abi = ABI::from(crate::sys::landlock_abi().clamp(MIN_ABI, MAX_ABI));
    let all = AccessFs::from_all(abi);
    for file in &spec.extra_ro_files {
        rs = rule(rs, &file.path, BitFlags::from(AccessFs::ReadFile))?;
    }
    for dir in [SANDBOX_WORKSPACE, "/tmp", "/dev/shm"] {
        rs = rule(rs, dir, all)?;
    }
    if let Some(port) = spec.proxy_port {
        rs = rs.add_rule(NetPort::new(port, AccessNet::ConnectTcp))?;
    }
    let status = rs.restrict_self()?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(LandlockError::NotEnforced(status.ruleset));
    }
    Ok(())
}
