//! Reaps finished helpers and removes their cgroups off the request path, on one background
//! thread per process (independent of any tokio runtime, which may be gone by then).

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use crate::sys;

struct Job {
    /// `None`: already reaped, only the cgroups are left.
    pidfd: Option<OwnedFd>,
    cgroups: Vec<PathBuf>,
    since: Instant,
}

fn queue() -> Option<&'static std::sync::Mutex<Sender<Job>>> {
    static QUEUE: OnceLock<Option<std::sync::Mutex<Sender<Job>>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = channel();
            std::thread::Builder::new()
                .name("paddock-sandbox-reaper".into())
                .spawn(move || run(&rx))
                .map_err(|e| tracing::warn!(error = %e, "cannot start the sandbox reaper thread"))
                .ok()
                .map(|_| std::sync::Mutex::new(tx))
        })
        .as_ref()
}

/// Hands over a helper that has exited or was killed: it is reaped, then its cgroups removed.
pub(crate) fn retire(pidfd: Option<OwnedFd>, cgroups: Vec<PathBuf>) {
    let job = Job {
        pidfd,
        cgroups,
        since: Instant::now(),
    };
    let job = match queue().and_then(|q| q.lock().ok()) {
        Some(tx) => match tx.send(job) {
            Ok(()) => return,
            Err(e) => e.0,
        },
        None => job,
    };
    // No reaper: do it here (blocking, but the helper is already ending).
    if let Some(fd) = &job.pidfd {
        let _ = sys::wait_pidfd(fd.as_fd(), true);
    }
    super::cgroup::remove(&job.cgroups);
}

fn run(rx: &Receiver<Job>) {
    let mut pending: Vec<Job> = Vec::new();
    loop {
        let next = if pending.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(Duration::from_millis(5))
        };
        match next {
            Ok(job) => pending.push(job),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        pending.retain_mut(|job| {
            if let Some(fd) = &job.pidfd {
                match sys::wait_pidfd(fd.as_fd(), false) {
                    Ok(None) => return true,
                    Ok(Some(_)) | Err(_) => job.pidfd = None,
                }
            }
            // The helper is gone; its cgroups empty out as the kernel finishes the teardown.
            job.cgroups.retain(|dir| match std::fs::remove_dir(dir) {
                Ok(()) => false,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) if job.since.elapsed() > Duration::from_secs(30) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove sandbox cgroup");
                    false
                }
                Err(_) => true,
            });
            !job.cgroups.is_empty()
        });
    }
}
