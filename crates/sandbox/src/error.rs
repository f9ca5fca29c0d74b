use std::path::PathBuf;

/// Why a sandbox could not be created or an execution could not complete. A command that ran
/// and failed (non-zero exit, killed, timed out) is not an error: see [`crate::ExecOutput`].
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// This host lacks something the tier requires (kernel feature, permission, helper). The
    /// tier cannot be used: refuse to run (fail closed), or let the operator choose another tier.
    #[error("process sandbox unavailable: {0}")]
    Unavailable(String),

    /// The helper process could not be started (missing binary, resource exhaustion). Fail the
    /// tool call with `sandbox_error`; retrying later may succeed.
    #[error("could not start the sandbox helper: {0}")]
    Spawn(#[source] std::io::Error),

    /// Building the sandbox failed at `step` (reported precisely by the helper). Fail the tool
    /// call with `sandbox_error`; a persistent failure means the host changed since start-up.
    #[error("sandbox setup failed at {step}: {message}")]
    Setup { step: String, message: String },

    /// The workspace folder could not be created or prepared. Check the data folder's
    /// permissions; fail the tool call.
    #[error("workspace {path}: {source}")]
    Workspace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The request is malformed (empty argv, NUL bytes, a reserved path). A caller bug: fix
    /// the request, do not retry.
    #[error("invalid sandbox request: {0}")]
    InvalidSpec(String),

    /// The sandbox ended without reporting how (helper crashed or protocol broken). Fail the
    /// tool call with `sandbox_error`; the outcome of the command is unknown.
    #[error("sandbox aborted: {0}")]
    Aborted(String),
}
