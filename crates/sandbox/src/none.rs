//! The `none` tier: no isolation at all. The command runs as the server's user, directly in the
//! workspace folder. Development only; the operator must choose it explicitly.

use std::process::Stdio;
use std::time::Instant;

use async_trait::async_trait;
use tokio::net::TcpListener;
use tokio::process::Command;

use crate::exec::{Capture, Execution, KILL_GRACE, read_capped, write_stdin};
use crate::process::output;
use crate::{ExecOutput, ExecSpec, SandboxDriver, SandboxError, Tier, final_env, validate_argv};

/// Runs commands with no isolation (development only). Limits other than the wall clock and
/// output size are not enforced; `extra_ro_files` are ignored; with `network` set, the listener
/// is on the host's loopback at an ephemeral port that the proxy variables point to.
#[derive(Debug)]
pub struct NoneDriver(());

impl NoneDriver {
    pub fn new() -> Self {
        tracing::warn!(
            "SANDBOX TIER \"none\": commands run WITHOUT ANY ISOLATION, as the server's user, with \
             access to everything the server can reach; use for development only"
        );
        NoneDriver(())
    }
}

impl Default for NoneDriver {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl SandboxDriver for NoneDriver {
    fn tier(&self) -> Tier {
        Tier::None
    }

    fn report(&self) -> String {
        "sandbox tier none: NO ISOLATION (development only): commands run as the server's user in \
         the workspace folder; limits: wall clock and output size only"
            .to_string()
    }

    async fn spawn(&self, spec: ExecSpec) -> Result<Execution, SandboxError> {
        let start = Instant::now();
        validate_argv(&spec.argv)?;
        let ws_err = |source| SandboxError::Workspace {
            path: spec.workspace.clone(),
            source,
        };
        std::fs::create_dir_all(&spec.workspace).map_err(ws_err)?;
        let workspace = std::fs::canonicalize(&spec.workspace).map_err(ws_err)?;
        let listener = match spec.network {
            Some(_) => Some(
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(SandboxError::Spawn)?,
            ),
            None => None,
        };
        let port = match &listener {
            Some(l) => Some(l.local_addr().map_err(SandboxError::Spawn)?.port()),
            None => None,
        };
        let env = final_env(&spec.env, &workspace.to_string_lossy(), port)?;
        let mut cmd = Command::new(&spec.argv[0]);
        cmd.args(&spec.argv[1..])
            .env_clear()
            .envs(env)
            .current_dir(&workspace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let (code, what) = if e.kind() == std::io::ErrorKind::NotFound {
                    (127, "command not found".to_string())
                } else {
                    (126, e.to_string().to_lowercase())
                };
                let stderr = format!("paddock-sandbox: {}: {what}\n", spec.argv[0]).into_bytes();
                return Ok(Execution::finished(ExecOutput {
                    exit_code: Some(code),
                    stderr,
                    duration: start.elapsed(),
                    ..ExecOutput::default()
                }));
            }
        };
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let limits = spec.limits;
        let stdin_data = spec.stdin;
        let task = tokio::spawn(async move {
            let deadline = tokio::time::Instant::from_std(start + limits.wall);
            let pgid = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
            let cap = limits.output_bytes;
            let (results, timed_out) = {
                let work = async {
                    tokio::join!(
                        write_stdin(stdin, stdin_data),
                        async {
                            match stdout {
                                Some(r) => read_capped(r, cap).await,
                                None => Capture::default(),
                            }
                        },
                        async {
                            match stderr {
                                Some(r) => read_capped(r, cap).await,
                                None => Capture::default(),
                            }
                        },
                        child.wait(),
                    )
                };
                tokio::pin!(work);
                tokio::select! {
                    r = &mut work => (Some(r), false),
                    () = tokio::time::sleep_until(deadline) => {
                        if let Some(pgid) = pgid {
                            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::SIGKILL);
                        }
                        (tokio::time::timeout(KILL_GRACE, &mut work).await.ok(), true)
                    }
                }
            };
            let Some(((), out, err, status)) = results else {
                return Err(SandboxError::Aborted(
                    "the command did not end after being killed".into(),
                ));
            };
            let status = status
                .map_err(|e| SandboxError::Aborted(format!("waiting for the command: {e}")))?;
            use std::os::unix::process::ExitStatusExt;
            Ok(output(
                status.code(),
                status.signal(),
                out,
                err,
                timed_out,
                start.elapsed(),
            ))
        });
        Ok(Execution::running(listener, task))
    }
}
