//! A running execution, and the I/O plumbing both tiers share.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::{ExecOutput, SandboxError};

/// How long to wait for output to end after the sandbox was killed.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(5);

/// A command running in a sandbox. Take the network listener (if the spec asked for network)
/// and serve the egress proxy on it, then [`wait`](Execution::wait). Dropping an `Execution`
/// (or the `wait` future) kills the sandbox.
#[derive(Debug)]
pub struct Execution {
    listener: Option<TcpListener>,
    task: Option<JoinHandle<Result<ExecOutput, SandboxError>>>,
    done: Option<ExecOutput>,
}

impl Execution {
    pub(crate) fn running(
        listener: Option<TcpListener>,
        task: JoinHandle<Result<ExecOutput, SandboxError>>,
    ) -> Self {
        Execution {
            listener,
            task: Some(task),
            done: None,
        }
    }

    pub(crate) fn finished(output: ExecOutput) -> Self {
        Execution {
            listener: None,
            task: None,
            done: Some(output),
        }
    }

    /// The listening socket for `127.0.0.1:<proxy_port>` inside the sandbox (process tier), or
    /// on the host's loopback at the port given to the command (none tier). Every connection
    /// accepted on it comes from this execution. `None` without network or once taken.
    pub fn take_listener(&mut self) -> Option<TcpListener> {
        self.listener.take()
    }

    /// Waits for the command to end and returns its output.
    pub async fn wait(mut self) -> Result<ExecOutput, SandboxError> {
        if let Some(out) = self.done.take() {
            return Ok(out);
        }
        let Some(task) = self.task.take() else {
            return Err(SandboxError::Aborted("execution already waited for".into()));
        };
        AbortOnDrop(Some(task)).join().await
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Aborts the task (which kills its sandbox) if the awaiting future is dropped.
pub(crate) struct AbortOnDrop(pub Option<JoinHandle<Result<ExecOutput, SandboxError>>>);

impl AbortOnDrop {
    /// Gives the task up without aborting it.
    pub fn into_inner(mut self) -> Option<JoinHandle<Result<ExecOutput, SandboxError>>> {
        self.0.take()
    }

    /// Waits for the task's result.
    pub async fn join(&mut self) -> Result<ExecOutput, SandboxError> {
        let Some(task) = self.0.as_mut() else {
            return Err(SandboxError::Aborted("execution already waited for".into()));
        };
        let result = match task.await {
            Ok(result) => result,
            Err(e) => Err(SandboxError::Aborted(format!("sandbox task failed: {e}"))),
        };
        self.0 = None;
        result
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Captured output of one stream.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

/// Reads `r` to its end, keeping the first `cap` bytes and draining the rest so the writer
/// never blocks on a full pipe.
pub(crate) async fn read_capped<R: AsyncRead + Unpin>(mut r: R, cap: usize) -> Capture {
    let mut out = Capture {
        bytes: Vec::with_capacity(cap.min(8192)),
        truncated: false,
    };
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let room = cap.saturating_sub(out.bytes.len());
                if n > room {
                    out.truncated = true;
                }
                out.bytes.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    out
}

/// Writes `data` then closes; a command that does not read its stdin is not an error.
pub(crate) async fn write_stdin<W: AsyncWrite + Unpin>(w: Option<W>, data: Option<Vec<u8>>) {
    if let Some(mut w) = w {
        if let Some(data) = data {
            let _ = w.write_all(&data).await;
        }
        let _ = w.shutdown().await;
    }
}
