//! The in-sandbox helper: a fresh, single-threaded process that builds one sandbox and runs one
//! command in it. The server never enters namespaces itself (it is multi-threaded).
//!
//! The `paddock` binary calls [`maybe_run`] as the very first thing in `main`, before any
//! thread exists:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     if let Some(code) = paddock_sandbox::helper::maybe_run() {
//!         return code;
//!     }
//!     // … the real main …
//!     std::process::ExitCode::SUCCESS
//! }
//! ```
//!
//! and creates the driver with [`crate::HelperCommand::current_exe`]. The helper expects its
//! control socket on fd 3 and its spec on fd 4 (placed by the driver); run by hand it refuses.
//!
//! Processes: the *outer helper* (spawned by the server, still in the host's namespaces)
//! clones the sandbox's *init* into new namespaces and waits for a request; init pre-builds the
//! request-independent part of the sandbox meanwhile. When the request arrives the outer helper
//! hands it to init, moves init into its cgroups, writes its id maps and relays how it ended;
//! init finishes the root, confines itself, forks the command and reaps.

mod init;
mod lsm;
mod mounts;
pub(crate) use mounts::ROOT_BYTES;
mod outer;
pub(crate) mod seccomp;

use std::ffi::OsStr;
use std::fmt::Display;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitCode;

use crate::sys;
use crate::wire::Message;

/// The first argument that makes [`maybe_run`] run the helper.
pub const HELPER_ARG: &str = "__sandbox";

/// Runs the helper if the first argument is [`HELPER_ARG`] and returns its exit code;
/// `None` otherwise (carry on with the normal `main`). Must run before any thread is started.
pub fn maybe_run() -> Option<ExitCode> {
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new(HELPER_ARG)) {
        Some(run())
    } else {
        None
    }
}

/// Runs the helper unconditionally (for a dedicated helper binary). Must run before any thread
/// is started.
pub fn run() -> ExitCode {
    outer::main()
}

/// The Landlock ABI range this crate works with: (required minimum, highest used).
pub(crate) fn landlock_limits() -> (i32, i32) {
    (lsm::MIN_ABI, lsm::MAX_ABI)
}

/// A set-up step that failed, reported to the host as `sandbox setup failed at <step>: <message>`.
#[derive(Debug)]
pub(crate) struct Fail {
    pub step: String,
    pub message: String,
}

pub(crate) trait Step<T> {
    /// Names the step a failure happened at.
    fn step(self, step: &str) -> Result<T, Fail>;
    /// Like `step`, for names that need formatting (only built on failure).
    fn step_with(self, step: impl FnOnce() -> String) -> Result<T, Fail>;
}

impl<T, E: Display> Step<T> for Result<T, E> {
    fn step(self, step: &str) -> Result<T, Fail> {
        self.map_err(|e| Fail {
            step: step.to_string(),
            message: e.to_string(),
        })
    }

    fn step_with(self, step: impl FnOnce() -> String) -> Result<T, Fail> {
        self.map_err(|e| Fail {
            step: step(),
            message: e.to_string(),
        })
    }
}

pub(crate) fn fail<T>(step: &str, message: impl Into<String>) -> Result<T, Fail> {
    Err(Fail {
        step: step.to_string(),
        message: message.into(),
    })
}

/// The control socket back to the host (a `SOCK_SEQPACKET` end).
pub(crate) struct Control(OwnedFd);

impl Control {
    pub fn send(&self, msg: &Message, fd: Option<BorrowedFd<'_>>) {
        // Best effort: if the host is gone there is nobody to tell.
        if let Ok(bytes) = serde_json::to_vec(msg) {
            let _ = sys::send_with_fd(self.0.as_fd(), &bytes, fd);
        }
    }

    pub fn report(&self, fail: &Fail) {
        self.send(
            &Message::SetupFailed {
                step: fail.step.clone(),
                message: fail.message.clone(),
            },
            None,
        );
    }
}
