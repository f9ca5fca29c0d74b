//! cgroup limits (memory, pids, CPU quota) when the server runs as root and a hierarchy is
//! writable: v2 (unified) or v1 (per-controller). Each execution gets `paddock/<server pid>-<n>`
//! directories. The host creates them when it starts the helper and moves the sandbox's init
//! in as soon as it exists (both slow in cgroupfs, so ahead of the request). The outer helper
//! writes the request's limits before the command starts, and the host's reaper removes the
//! directories afterwards.

use std::path::{Path, PathBuf};

use crate::Limits;
use crate::wire::CgroupPlan;

const ROOT: &str = "/sys/fs/cgroup";
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

/// Usable controllers: each is the `paddock` parent directory to create children in.
#[derive(Debug, Clone)]
pub(crate) struct Cgroups {
    pub version: Version,
    pub memory: Option<PathBuf>,
    /// The memory controller can also cap swap (v1 `memsw`, v2 `swap.max`).
    pub swap: bool,
    pub pids: Option<PathBuf>,
    pub cpu: Option<PathBuf>,
}

impl Cgroups {
    /// Finds writable controllers; `Err` says why none can be used.
    pub fn probe() -> Result<Cgroups, String> {
        let found = if Path::new(ROOT).join("cgroup.controllers").exists() {
            probe_v2()
        } else {
            probe_v1()
        }?;
        if found.memory.is_none() && found.pids.is_none() && found.cpu.is_none() {
            return Err("no writable memory, pids or cpu controller".into());
        }
        for parent in [&found.memory, &found.pids, &found.cpu]
            .into_iter()
            .flatten()
        {
            remove_stale(parent);
        }
        Ok(found)
    }

    /// One execution's directories (one per hierarchy in v1, one in v2).
    pub fn dirs(&self, name: &str) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for parent in [&self.memory, &self.pids, &self.cpu].into_iter().flatten() {
            let dir = parent.join(name);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }

    /// Creates an execution's directories ahead of its request (`mkdir` in cgroupfs is slow).
    pub fn create(&self, name: &str) -> std::io::Result<Vec<PathBuf>> {
        let dirs = self.dirs(name);
        for (i, dir) in dirs.iter().enumerate() {
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    remove(&dirs[..i]);
                    return Err(e);
                }
            }
        }
        Ok(dirs)
    }

    /// The limit files of one execution (directories made by [`Cgroups::create`]).
    pub fn plan(&self, name: &str, limits: &Limits) -> CgroupPlan {
        let mut writes = Vec::new();
        if let Some(parent) = &self.memory {
            let dir = parent.join(name);
            let bytes = limits.memory_bytes.to_string();
            match self.version {
                Version::V1 => {
                    writes.push((dir.join("memory.limit_in_bytes"), bytes.clone()));
                    if self.swap {
                        writes.push((dir.join("memory.memsw.limit_in_bytes"), bytes));
                    }
                }
                Version::V2 => {
                    writes.push((dir.join("memory.max"), bytes));
                    if self.swap {
                        writes.push((dir.join("memory.swap.max"), "0".into()));
                    }
                }
            }
        }
        if let Some(parent) = &self.pids {
            // +1: the sandbox's init sits in the cgroup too.
            writes.push((
                parent.join(name).join("pids.max"),
                (u64::from(limits.pids) + 1).to_string(),
            ));
        }
        if let Some(parent) = &self.cpu
            && limits.cpu_percent > 0
        {
            let dir = parent.join(name);
            let quota = CPU_PERIOD_US * u64::from(limits.cpu_percent) / 100;
            match self.version {
                Version::V1 => {
                    writes.push((dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string()));
                    writes.push((dir.join("cpu.cfs_quota_us"), quota.to_string()));
                }
                Version::V2 => {
                    writes.push((dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}")))
                }
            }
        }
        CgroupPlan { writes }
    }

    /// Moves a process into an execution's cgroups. Slow (a cgroup migration waits for an RCU
    /// grace period), so it is done ahead of the request.
    pub fn join(dirs: &[PathBuf], pid: i32) -> std::io::Result<()> {
        let pid = pid.to_string();
        for dir in dirs {
            std::fs::write(dir.join("cgroup.procs"), &pid)?;
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        let v = match self.version {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        };
        let mut parts = Vec::new();
        if self.memory.is_some() {
            parts.push(if self.swap { "memory+swap" } else { "memory" });
        }
        if self.pids.is_some() {
            parts.push("pids");
        }
        if self.cpu.is_some() {
            parts.push("cpu quota");
        }
        format!("{v} ({})", parts.join(", "))
    }
}

fn make_parent(dir: &Path) -> bool {
    match std::fs::create_dir(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => true,
        Err(_) => false,
    }
}

fn probe_v1() -> Result<Cgroups, String> {
    let usable = |controller: &str, file: &str| -> Option<PathBuf> {
        let parent = Path::new(ROOT).join(controller).join("paddock");
        (make_parent(&parent) && parent.join(file).exists()).then_some(parent)
    };
    let memory = usable("memory", "memory.limit_in_bytes");
    let swap = memory
        .as_ref()
        .is_some_and(|m| m.join("memory.memsw.limit_in_bytes").exists());
    Ok(Cgroups {
        version: Version::V1,
        memory,
        swap,
        pids: usable("pids", "pids.max"),
        cpu: usable("cpu", "cpu.cfs_quota_us"),
    })
}

fn probe_v2() -> Result<Cgroups, String> {
    let root = Path::new(ROOT);
    let available =
        std::fs::read_to_string(root.join("cgroup.controllers")).map_err(|e| e.to_string())?;
    let wanted: Vec<&str> = ["memory", "pids", "cpu"]
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect();
    let parent = root.join("paddock");
    if !make_parent(&parent) {
        return Err(format!("cannot create {}", parent.display()));
    }
    for dir in [root, parent.as_path()] {
        for c in &wanted {
            // Already enabled is fine; failures show up in the check below.
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
        }
    }
    let enabled =
        std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    let on = |c: &str| {
        enabled
            .split_whitespace()
            .any(|e| e == c)
            .then(|| parent.clone())
    };
    let memory = on("memory");
    Ok(Cgroups {
        version: Version::V2,
        swap: memory.is_some(),
        memory,
        pids: on("pids"),
        cpu: on("cpu"),
    })
}

/// Removes leftovers of servers that are gone (children are named `<server pid>-<n>`; those
/// of live servers, this one included, may be in use).
fn remove_stale(parent: &Path) {
    let Ok(dir) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            // Only empty cgroups can be removed; busy ones stay.
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// Removes an execution's cgroups once its processes are gone (retrying while the kernel
/// finishes tearing them down).
pub(crate) fn remove(dirs: &[PathBuf]) {
    for dir in dirs {
        for attempt in 0..200 {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) if attempt < 199 => std::thread::sleep(std::time::Duration::from_millis(5)),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove sandbox cgroup")
                }
            }
        }
    }
}
