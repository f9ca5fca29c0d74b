//! Shared helpers for the sandbox suite. Every attack test runs real code in a real process-tier
//! sandbox and asserts the specific way it fails.

mod basics;
mod filesystem;
mod limits;
mod network;
mod none_tier;
mod syscalls;
mod unprivileged;

use std::path::Path;
use std::sync::OnceLock;

use paddock_sandbox::{ExecOutput, ExecSpec, HelperCommand, ProcessDriver, SandboxDriver};

pub fn helper() -> HelperCommand {
    HelperCommand::new(env!("CARGO_BIN_EXE_paddock-sandbox-helper"), vec![])
}

/// One process-tier driver for the whole suite (creating it probes the host and runs `true`).
pub fn driver() -> &'static ProcessDriver {
    static DRIVER: OnceLock<ProcessDriver> = OnceLock::new();
    DRIVER.get_or_init(|| {
        ProcessDriver::new(helper()).expect("process tier available on the test host")
    })
}

pub fn spec(ws: &Path, script: &str) -> ExecSpec {
    ExecSpec::new(ws, ["bash", "-c", script])
}

/// Runs a bash script in a fresh sandbox on `ws`.
pub async fn sh(ws: &Path, script: &str) -> ExecOutput {
    driver().exec(spec(ws, script)).await.expect("exec")
}

/// Runs a Python snippet; `None` (after saying so) when the host has no python3.
pub async fn py(ws: &Path, code: &str) -> Option<ExecOutput> {
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("SKIPPED: /usr/bin/python3 is not installed on this host");
        return None;
    }
    Some(
        driver()
            .exec(ExecSpec::new(ws, ["python3", "-c", code]))
            .await
            .expect("exec"),
    )
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn out(o: &ExecOutput) -> String {
    text(&o.stdout)
}

pub fn err(o: &ExecOutput) -> String {
    text(&o.stderr)
}

/// Host processes whose command line contains `needle`.
pub fn host_processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let cmdline = text(&cmdline).replace('\0', " ");
                if cmdline.contains(needle) {
                    found.push(format!(
                        "{}: {cmdline}",
                        entry.file_name().to_string_lossy()
                    ));
                }
            }
        }
    }
    found
}
