//! What the host and the helper tell each other, over the `SOCK_SEQPACKET` control socket on
//! the helper's fd [`CONTROL_FD`]. The helper starts (and pre-builds a sandbox) before it has
//! a request; the host then sends one datagram with the spec as JSON in a memfd attached
//! (SCM_RIGHTS, so its size is not bounded by the socket buffer). Messages back are one JSON
//! datagram each, some with a file descriptor attached.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Limits;

/// The helper's control socket (inherited).
pub(crate) const CONTROL_FD: i32 = 3;
/// Largest control message (they are all small).
pub(crate) const MAX_MESSAGE: usize = 16 << 10;

/// Everything the helper needs; computed by the host (probe results cached in the driver).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HelperSpec {
    /// The server's pid: the helper dies with it (checked after `PR_SET_PDEATHSIG`).
    pub host_pid: u32,
    /// Canonical host path of the workspace.
    pub workspace: PathBuf,
    pub argv: Vec<String>,
    /// Final environment (defaults and proxy variables already applied).
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    pub proxy_port: Option<u16>,
    /// Extra read-only files; their bytes follow the JSON in the memfd (see [`encode`]).
    pub extra_ro_files: Vec<ExtraFile>,
    /// Host uid/gid the sandbox user maps to when the helper runs as root.
    pub host_ids: (u32, u32),
    /// Use `RLIMIT_AS` for memory (no memory cgroup).
    pub rlimit_as: bool,
    /// Use `RLIMIT_NPROC` for processes (no pids cgroup). It counts every process of the host
    /// uid, which all sandboxes share, so with a pids cgroup it would let one sandbox's fork bomb
    /// starve the others.
    pub rlimit_nproc: bool,
    pub cgroup: Option<CgroupPlan>,
}

/// An extra file: `len` bytes at `offset` in the memfd's file area.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExtraFile {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// The memfd's layout: the JSON's length (u64, little-endian), the JSON, then the file area
/// with the extra files' bytes, so bulky files (a CA bundle) are never parsed as JSON.
pub(crate) fn encode(
    mut spec: HelperSpec,
    files: Vec<(PathBuf, Vec<u8>)>,
) -> serde_json::Result<Vec<u8>> {
    let mut offset = 0u64;
    spec.extra_ro_files = files
        .iter()
        .map(|(path, content)| {
            let file = ExtraFile {
                path: path.clone(),
                offset,
                len: content.len() as u64,
            };
            offset += file.len;
            file
        })
        .collect();
    let json = serde_json::to_vec(&spec)?;
    let mut out = Vec::with_capacity(8 + json.len() + offset as usize);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, content) in &files {
        out.extend_from_slice(content);
    }
    Ok(out)
}

/// Limit values the outer helper writes into the execution's cgroups (created, and joined by
/// init, before the request).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct CgroupPlan {
    pub writes: Vec<(PathBuf, String)>,
}

/// The read-only part of the sandbox's root (probed by the host to validate requests, and by
/// each helper while it pre-builds its sandbox).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Layout {
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Host directory bound read-only (and nosuid, nodev) at the same path; `exec` grants
    /// Landlock execute rights beneath it.
    Dir { path: PathBuf, exec: bool },
    /// Host file bound read-only at the same path.
    File { path: PathBuf },
    /// Symlink recreated with the same target.
    Symlink { path: PathBuf, target: PathBuf },
    /// Host device node bound read-write at the same path.
    Device { path: PathBuf },
}

impl Entry {
    pub fn path(&self) -> &std::path::Path {
        match self {
            Entry::Dir { path, .. }
            | Entry::File { path }
            | Entry::Symlink { path, .. }
            | Entry::Device { path } => path,
        }
    }
}

/// Helper → host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Message {
    /// The sandbox's init process exists (`pid` on the host); its pidfd is attached.
    Started { pid: i32 },
    /// Fully set up, the command is about to start; the listener is attached when networked.
    Ready,
    /// Set-up failed; nothing of the command ran.
    SetupFailed { step: String, message: String },
    /// The command ended.
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// The sandbox's init ended (sent by the outer helper; decisive only without `Exit`).
    InitGone {
        code: Option<i32>,
        signal: Option<i32>,
    },
}
