//! [`SandboxTools`]: the tool executor of `paddock serve`. Every call of a built-in tool runs in a
//! fresh sandbox over the run's workspace; the sandbox's only way out is the egress broker, served
//! for the call's duration on the listener the sandbox hands back, with the run's allow-list and
//! its credentials (resolved from the vault here, injected by the broker, never seen by the
//! sandbox). `http_request` is performed by the broker itself under the run's identity. Every
//! output is redacted with the workspace's secrets before the model, the journal or a log sees it.

use bytes::Bytes;
use paddock_egress::{Broker, OutboundRequest, ResolvedCredential, RunEgress};
use paddock_harness::tools::{MAX_READ, MAX_WRITE, resolve, str_arg};
use paddock_harness::{ToolContext, ToolExecutor, ToolOutput, WorkspaceTools};
use paddock_sandbox::{ExecOutput, ExecSpec, Limits, NetworkSpec, SandboxDriver, Tier};
use paddock_types::{RunId, ToolCall};
use paddock_vault::{Redactor, Vault};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Port of the egress proxy on the sandbox's own loopback.
pub const PROXY_PORT: u16 = 3128;
/// Where the CA bundle (system roots + the broker's interception CA) is mounted in the sandbox.
const CA_BUNDLE: &str = "/etc/paddock/ca-bundle.pem";

pub struct SandboxTools {
    driver: Arc<dyn SandboxDriver>,
    broker: Arc<Broker>,
    vault: Arc<Vault>,
    limits: Limits,
    keep_workspaces: bool,
    ca_bundle: Vec<u8>,
    /// The `none` tier has no isolation to keep file tools in: they run in-process.
    host_files: WorkspaceTools,
}

impl SandboxTools {
    pub fn new(
        driver: Arc<dyn SandboxDriver>,
        broker: Arc<Broker>,
        vault: Arc<Vault>,
        workspaces: PathBuf,
        limits: Limits,
        keep_workspaces: bool,
    ) -> Self {
        // The sandbox must trust both the public roots (tunnelled hosts) and our CA (intercepted
        // hosts); one bundle serves curl, Python, git and OpenSSL alike.
        let mut ca_bundle = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
        if !ca_bundle.is_empty() && !ca_bundle.ends_with(b"\n") {
            ca_bundle.push(b'\n');
        }
        ca_bundle.extend_from_slice(broker.ca_cert_pem().as_bytes());
        Self {
            host_files: WorkspaceTools::new(workspaces),
            driver,
            broker,
            vault,
            limits,
            keep_workspaces,
            ca_bundle,
        }
    }

    async fn egress_context(&self, ctx: ToolContext<'_>) -> Result<RunEgress, String> {
        let manifest = ctx.agent.manifest();
        let mut credentials = Vec::with_capacity(manifest.credentials.len());
        for binding in &manifest.credentials {
            let value = self
                .vault
                .get(ctx.scope, &binding.secret)
                .await
                .map_err(|e| format!("cannot read secret {}: {e}", binding.secret))?
                .ok_or_else(|| {
                    format!(
                        "secret {} (bound to {}) is not set; an operator must set it with `paddock secrets set {}`",
                        binding.secret, binding.host, binding.secret
                    )
                })?;
            credentials.push(ResolvedCredential::new(
                binding.clone(),
                value.expose().to_owned(),
            ));
        }
        let egress = RunEgress::new(ctx.run_id.to_string(), manifest.egress.clone(), credentials);
        Ok(match ctx.egress {
            Some(sink) => egress.with_sink(Arc::clone(sink)),
            None => egress,
        })
    }

    /// Runs `argv` in a fresh sandbox over the run's workspace, serving the egress proxy for it
    /// when `network` is asked for and the agent may reach anything.
    async fn sandboxed(
        &self,
        run_id: &RunId,
        egress: &Arc<RunEgress>,
        network: bool,
        argv: Vec<String>,
        stdin: Option<Vec<u8>>,
        limits: Limits,
    ) -> Result<ExecOutput, String> {
        let workspace = self.host_files.workspace(run_id);
        let mut spec = ExecSpec::new(&workspace, argv);
        spec.stdin = stdin;
        spec.limits = limits;
        if network && !egress.rules().is_empty() {
            spec.network = Some(NetworkSpec {
                proxy_port: PROXY_PORT,
            });
            spec.extra_ro_files = vec![(PathBuf::from(CA_BUNDLE), self.ca_bundle.clone())];
            for var in [
                "SSL_CERT_FILE",
                "CURL_CA_BUNDLE",
                "REQUESTS_CA_BUNDLE",
                "GIT_SSL_CAINFO",
                "NODE_EXTRA_CA_CERTS",
            ] {
                spec.env.push((var.to_owned(), CA_BUNDLE.to_owned()));
            }
            spec.env.extend(egress.placeholders());
        }
        let mut execution = self
            .driver
            .spawn(spec)
            .await
            .map_err(|e| format!("sandbox error: {e}"))?;
        let stop = CancellationToken::new();
        // A call dropped half-way (the run's deadline) must not leave the proxy serving: cut
        // its connections, which sends their records to the run's sink.
        let _stop_when_dropped = stop.clone().drop_guard();
        let serving = execution.take_listener().map(|listener| {
            let broker = Arc::clone(&self.broker);
            let egress = Arc::clone(egress);
            let stop = stop.clone();
            tokio::spawn(async move { broker.serve(listener, egress, stop).await })
        });
        let out = execution.wait().await;
        stop.cancel();
        if let Some(task) = serving {
            // `serve` returns once every request's record is in the log.
            let _ = task.await;
        }
        out.map_err(|e| format!("sandbox error: {e}"))
    }

    async fn run(
        &self,
        ctx: ToolContext<'_>,
        call: &ToolCall,
        egress: &Arc<RunEgress>,
    ) -> Result<String, String> {
        let args = &call.arguments;
        let in_process = self.driver.tier() == Tier::None;
        match call.name.as_str() {
            "shell" => {
                let command = str_arg(args, "command")?;
                let mut limits = self.limits.clone();
                if let Some(t) = args.get("timeout_secs").and_then(Value::as_u64) {
                    limits.wall = limits.wall.min(Duration::from_secs(t.max(1)));
                }
                let out = self
                    .sandboxed(
                        ctx.run_id,
                        egress,
                        true,
                        vec!["bash".into(), "-c".into(), command.to_owned()],
                        None,
                        limits,
                    )
                    .await?;
                let text = shell_report(&out);
                if out.success() { Ok(text) } else { Err(text) }
            }
            "read_file" | "write_file" | "list_files" if in_process => {
                self.host_files.run_async(ctx.run_id, call).await
            }
            "read_file" => {
                let rel = str_arg(args, "path")?;
                let path = relative(rel)?;
                let mut limits = self.limits.clone();
                limits.output_bytes = MAX_READ;
                let out = self
                    .sandboxed(
                        ctx.run_id,
                        egress,
                        false,
                        argv(&["cat", "--", &path]),
                        None,
                        limits,
                    )
                    .await?;
                if !out.success() {
                    return Err(format!("cannot read {rel}: {}", stderr_line(&out)));
                }
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                if out.stdout_truncated {
                    text.push_str(&format!("\n[truncated after {MAX_READ} bytes]"));
                }
                Ok(text)
            }
            "write_file" => {
                let rel = str_arg(args, "path")?;
                let content = str_arg(args, "content")?;
                if content.len() > MAX_WRITE {
                    return Err(format!("content is larger than {MAX_WRITE} bytes"));
                }
                let path = relative(rel)?;
                let script = "mkdir -p -- \"$(dirname -- \"$1\")\" && cat > \"$1\"";
                let out = self
                    .sandboxed(
                        ctx.run_id,
                        egress,
                        false,
                        argv(&["sh", "-c", script, "sh", &path]),
                        Some(content.as_bytes().to_vec()),
                        self.limits.clone(),
                    )
                    .await?;
                if !out.success() {
                    return Err(format!("cannot write {rel}: {}", stderr_line(&out)));
                }
                Ok(format!("wrote {} bytes to {rel}", content.len()))
            }
            "list_files" => {
                let rel = match args.get("path") {
                    None | Some(Value::Null) => ".",
                    Some(_) => str_arg(args, "path")?,
                };
                let path = relative(rel)?;
                let out = self
                    .sandboxed(
                        ctx.run_id,
                        egress,
                        false,
                        argv(&["ls", "-1Ap", "--", &path]),
                        None,
                        self.limits.clone(),
                    )
                    .await?;
                if !out.success() {
                    return Err(format!("cannot list {rel}: {}", stderr_line(&out)));
                }
                let mut text = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
                if out.stdout_truncated {
                    text.push_str("\n[more not shown]");
                }
                Ok(text)
            }
            "http_request" => self.http_request(args, egress).await,
            other => Err(format!("unknown tool {other}")),
        }
    }

    async fn http_request(&self, args: &Value, egress: &RunEgress) -> Result<String, String> {
        let url = str_arg(args, "url")?;
        let method = match args.get("method") {
            None | Some(Value::Null) => "GET",
            Some(_) => str_arg(args, "method")?,
        };
        let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("invalid method {method:?}"))?;
        let mut headers = http::HeaderMap::new();
        if let Some(h) = args.get("headers") {
            let obj = h
                .as_object()
                .ok_or("headers must be an object of strings")?;
            for (k, v) in obj {
                let v = v.as_str().ok_or("headers must be an object of strings")?;
                let name = http::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("invalid header name {k:?}"))?;
                let value = http::HeaderValue::from_str(v)
                    .map_err(|_| format!("invalid value for header {k}"))?;
                headers.append(name, value);
            }
        }
        let body = match args.get("body") {
            None | Some(Value::Null) => Bytes::new(),
            Some(_) => Bytes::copy_from_slice(str_arg(args, "body")?.as_bytes()),
        };
        let resp = self
            .broker
            .request(
                egress,
                OutboundRequest {
                    method,
                    url: url.to_owned(),
                    headers,
                    body,
                },
            )
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let mut text = format!("status: {}\n", resp.status.as_u16());
        for (k, v) in &resp.headers {
            text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        text.push('\n');
        let body = String::from_utf8_lossy(&resp.body);
        let mut cut = body.len().min(MAX_READ);
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        text.push_str(&body[..cut]);
        if resp.truncated || cut < body.len() {
            text.push_str("\n[body truncated]");
        }
        Ok(text)
    }
}

#[async_trait::async_trait]
impl ToolExecutor for SandboxTools {
    fn sandbox_tier(&self) -> &'static str {
        self.driver.tier().as_str()
    }

    async fn execute(&self, ctx: ToolContext<'_>, call: &ToolCall) -> ToolOutput {
        // Every output is redacted; a vault that cannot build the redactor must not let an
        // unredacted output through.
        let redactor = match self.vault.redactor(ctx.scope).await {
            Ok(r) => r,
            Err(e) => {
                return ToolOutput::error(format!(
                    "tool not run: cannot load secrets for redaction: {e}"
                ));
            }
        };
        let egress = match self.egress_context(ctx).await {
            Ok(e) => Arc::new(e),
            Err(e) => return ToolOutput::error(redact(&redactor, &e)),
        };
        let result = self.run(ctx, call, &egress).await;
        let mut out = match result {
            Ok(text) => ToolOutput::ok(redact(&redactor, &text)),
            Err(text) => ToolOutput::error(redact(&redactor, &text)),
        };
        out.egress = egress.take_log();
        out
    }

    async fn run_ended(&self, run_id: &RunId) {
        if self.keep_workspaces {
            return;
        }
        let ws = self.host_files.workspace(run_id);
        if let Err(e) = remove_workspace(&ws).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(run_id = %run_id, error = %e, "cannot delete the run's workspace");
        }
    }
}

async fn remove_workspace(ws: &Path) -> std::io::Result<()> {
    let ws = ws.to_owned();
    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(ws))
        .await
        .map_err(std::io::Error::other)?
}

fn redact(r: &Redactor, text: &str) -> String {
    r.redact(text).into_owned()
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// A model-given path as `./rel`, refusing anything that leaves the workspace lexically (the
/// sandbox contains symlink tricks; this keeps error messages clear).
fn relative(rel: &str) -> Result<String, String> {
    let joined = resolve(Path::new("."), rel)?;
    Ok(joined.to_string_lossy().into_owned())
}

fn stderr_line(out: &ExecOutput) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().last().unwrap_or("").trim();
    if line.is_empty() {
        format!("exit code {:?}", out.exit_code)
    } else {
        line.to_owned()
    }
}

/// What the model sees of a shell command.
fn shell_report(out: &ExecOutput) -> String {
    let mut s = match (out.timed_out, out.exit_code, out.signal) {
        (true, _, _) => "timed out (the sandbox was killed)\n".to_owned(),
        (false, Some(code), _) => format!("exit code: {code}\n"),
        (false, None, Some(sig)) => format!("killed by signal {sig}\n"),
        (false, None, None) => "ended\n".to_owned(),
    };
    for (name, bytes, truncated) in [
        ("stdout", &out.stdout, out.stdout_truncated),
        ("stderr", &out.stderr, out.stderr_truncated),
    ] {
        if bytes.is_empty() {
            continue;
        }
        s.push_str(&format!("{name}:\n{}", String::from_utf8_lossy(bytes)));
        if !s.ends_with('\n') {
            s.push('\n');
        }
        if truncated {
            s.push_str(&format!("[{name} truncated]\n"));
        }
    }
    s
}
