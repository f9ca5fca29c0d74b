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
use paddock_sandbox::disk::{self, DiskUsage};
use paddock_sandbox::{DiskStop, ExecOutput, ExecSpec, Limits, NetworkSpec, SandboxDriver, Tier};
use paddock_types::{RunId, Scope, ToolCall};
use paddock_vault::{Redactor, Vault};
use serde_json::Value;
use std::collections::HashMap;
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
    disk: DiskQuota,
    /// Each running run's share of its tenant's total, by tenant workspace: while a call runs,
    /// what it may grow to (reserved before the call); between calls, its last measured usage
    /// (settled after). Filled by each run's calls (after a restart, by its first call).
    usage: UsageTable,
}

/// Disk limits of tool calls, checked before each call, watched during it by the process tier
/// and measured after it. A limit of 0 is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskQuota {
    /// One run's workspace.
    pub workspace_bytes: u64,
    /// The workspaces of all running runs of one tenant workspace together.
    pub tenant_bytes: u64,
    /// Free space kept on the workspaces' file system (the data folder's, which holds the
    /// database), checked before each call and polled during it.
    pub reserve_bytes: u64,
    /// Files and folders one run's workspace may hold (0: no cap).
    pub workspace_entries: u64,
}

/// Each running run's share of its tenant's disk total, by tenant.
type UsageTable = Arc<std::sync::Mutex<HashMap<String, HashMap<RunId, Share>>>>;

/// A run's share of its tenant's total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Share {
    bytes: u64,
    /// `bytes` was measured after a call (or recorded as over budget); otherwise it is a
    /// reservation, and the run's next call measures its workspace again.
    measured: bool,
}

/// Reserves what a run's workspace may hold during a call, given it uses `used` now: its own
/// quota, or its usage plus half of what the tenant total leaves after the others' usage and
/// reservations, whichever is smaller (never below `used`: a run over it may only shrink). Taken under the
/// lock, so two calls of one tenant cannot both be granted the same room. Returns the budget
/// (`None` without either limit, or with the table poisoned).
fn reserve(
    table: &UsageTable,
    disk: &DiskQuota,
    tenant: String,
    run_id: &RunId,
    used: u64,
) -> Option<(u64, Reservation)> {
    let own = (disk.workspace_bytes > 0).then_some(disk.workspace_bytes);
    let mut usage = table.lock().ok()?;
    // Of what the tenant has left beyond this run's usage, a call takes at most half: the
    // grants of concurrent calls never add up past the total, and a later call still gets
    // room (less of it) instead of nothing.
    let total = (disk.tenant_bytes > 0).then(|| {
        let free = disk
            .tenant_bytes
            .saturating_sub(SandboxTools::others_usage(&usage, &tenant, run_id));
        match free.checked_sub(used) {
            Some(left) => used + left / 2,
            None => free,
        }
    });
    let budget = match (own, total) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    let reserved = budget.max(used);
    usage.entry(tenant.clone()).or_default().insert(
        run_id.clone(),
        Share {
            bytes: reserved,
            measured: false,
        },
    );
    Some((
        budget,
        Reservation {
            usage: Arc::clone(table),
            tenant,
            run_id: run_id.clone(),
            reserved,
            by_total: own.is_none_or(|own| budget < own),
            settled: false,
        },
    ))
}

/// A call's reservation of its tenant's disk total: settles to the measured usage, or, when
/// dropped unsettled (an error path, a dropped future), to the whole reservation, so what the
/// call may have written stays counted until a later call measures it.
struct Reservation {
    usage: UsageTable,
    tenant: String,
    run_id: RunId,
    reserved: u64,
    /// The budget came from the tenant total, not the run's own quota.
    by_total: bool,
    settled: bool,
}

impl Reservation {
    fn settle(mut self, bytes: u64) {
        self.set(Share {
            bytes,
            measured: true,
        });
        self.settled = true;
    }

    fn set(&self, share: Share) {
        if let Ok(mut usage) = self.usage.lock() {
            usage
                .entry(self.tenant.clone())
                .or_default()
                .insert(self.run_id.clone(), share);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.set(Share {
                bytes: self.reserved,
                measured: false,
            });
        }
    }
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
            disk: DiskQuota::default(),
            usage: Arc::new(std::sync::Mutex::new(HashMap::new())),
        }
    }

    /// Enforces `disk` on every call from now on.
    pub fn with_disk_quota(mut self, disk: DiskQuota) -> Self {
        self.disk = disk;
        self
    }

    fn tenant_key(scope: &Scope) -> String {
        format!("{}/{}", scope.org, scope.workspace)
    }

    /// What the tenant's other running runs use or have reserved.
    fn others_usage(
        usage: &HashMap<String, HashMap<RunId, Share>>,
        tenant: &str,
        run_id: &RunId,
    ) -> u64 {
        usage
            .get(tenant)
            .map(|runs| {
                runs.iter()
                    .filter(|(id, _)| *id != run_id)
                    .fold(0u64, |sum, (_, share)| sum.saturating_add(share.bytes))
            })
            .unwrap_or(0)
    }

    fn cached_usage(&self, scope: &Scope, run_id: &RunId) -> Option<u64> {
        let usage = self.usage.lock().ok()?;
        let share = usage.get(&Self::tenant_key(scope))?.get(run_id)?;
        share.measured.then_some(share.bytes)
    }

    /// [`reserve`] in this executor's table.
    fn reserve(&self, scope: &Scope, run_id: &RunId, used: u64) -> Option<(u64, Reservation)> {
        reserve(
            &self.usage,
            &self.disk,
            Self::tenant_key(scope),
            run_id,
            used,
        )
    }

    /// Before a call: refuses it when the disk is under the reserve, and sets the call's disk
    /// limits, reserving the call's room in the tenant total (settled by [`Self::disk_after`]).
    /// A run at or over its budget gets a call that can only shrink its workspace (no file may
    /// grow, growth kills the sandbox), so the model can still delete files.
    async fn disk_before(
        &self,
        scope: &Scope,
        run_id: &RunId,
        workspace: &Path,
        limits: &mut Limits,
    ) -> Result<Option<Reservation>, String> {
        let reserve = self.disk.reserve_bytes;
        if reserve > 0 {
            // The workspace may not exist yet; its root is on the same file system.
            let probe = workspace
                .ancestors()
                .find(|p| p.exists())
                .unwrap_or(workspace)
                .to_path_buf();
            let free = blocking(move || disk::free_bytes(&probe)).await?;
            if free < reserve {
                return Err(DiskStop::Reserve { free, reserve }.to_string());
            }
            limits.disk_reserve_bytes = reserve;
        }
        if self.disk.workspace_bytes == 0 && self.disk.tenant_bytes == 0 {
            limits.workspace_bytes = 0;
            return Ok(None);
        }
        let used = match self.cached_usage(scope, run_id) {
            Some(bytes) => bytes,
            None => {
                let ws = workspace.to_path_buf();
                let (quota, entries) = (self.disk.workspace_bytes, self.disk.workspace_entries);
                // A workspace that cannot be measured counts as full: the call may only shrink it.
                match blocking(move || Ok(disk::check_quota(&ws, quota, entries, false))).await? {
                    Ok(usage) => usage.bytes,
                    Err(DiskStop::Quota { used, .. }) => used,
                    Err(_) => u64::MAX,
                }
            }
        };
        let Some((budget, reservation)) = self.reserve(scope, run_id, used) else {
            return Err("disk check failed: the usage table is unavailable; retry the call".into());
        };
        if used >= budget {
            limits.workspace_bytes = used.max(1);
            limits.file_bytes = 0;
            // Only deletions may run: the byte bound keeps the walk bounded.
            limits.workspace_entries = 0;
        } else {
            limits.workspace_bytes = budget;
            limits.file_bytes = limits.file_bytes.min(budget - used);
            limits.workspace_entries = self.disk.workspace_entries;
        }
        Ok(Some(reservation))
    }

    /// After a call: settles its reservation to the workspace's measured usage and fails the
    /// call when it is over the run's quota or the tenant's total (or the sandbox was stopped
    /// for the disk). A workspace that cannot be measured, or holds too many entries, stays
    /// counted as over its budget so the next call may only shrink it.
    async fn disk_after(
        &self,
        scope: &Scope,
        run_id: &RunId,
        workspace: &Path,
        out: &ExecOutput,
        reservation: Option<Reservation>,
    ) -> Result<(), String> {
        let quota = self.disk.workspace_bytes;
        let tenant = self.disk.tenant_bytes;
        let Some(reservation) = reservation else {
            if let Some(stop) = out.disk_stop {
                return Err(stop.to_string());
            }
            return Ok(());
        };
        let over_budget = reservation.reserved.saturating_add(1);
        if let Some(stop @ (DiskStop::Entries { .. } | DiskStop::Unmeasurable { .. })) =
            out.disk_stop
        {
            reservation.settle(over_budget);
            return Err(stop.to_string());
        }
        // A precise figure for the message: walk again if the sandbox's walk stopped early.
        let cap = self.disk.workspace_entries;
        let (used, entries) = match out.workspace_usage {
            Some(DiskUsage {
                bytes,
                entries,
                partial: false,
            }) => (bytes, entries),
            _ => {
                let ws = workspace.to_path_buf();
                let bound = quota.max(tenant).saturating_mul(4);
                match blocking(move || Ok(disk::check_quota(&ws, bound, cap, false))).await? {
                    Ok(usage) => (usage.bytes, usage.entries),
                    Err(DiskStop::Quota { used, .. }) => (used, 0),
                    Err(stop) => {
                        reservation.settle(over_budget);
                        return Err(stop.to_string());
                    }
                }
            }
        };
        // A call that may only shrink the workspace is not walked with the cap: check it here.
        if cap > 0 && entries > cap {
            reservation.settle(over_budget);
            return Err(DiskStop::Entries { entries, max: cap }.to_string());
        }
        let (by_total, share) = (reservation.by_total, reservation.reserved);
        reservation.settle(used);
        let others = match self.usage.lock() {
            Ok(usage) => Self::others_usage(&usage, &Self::tenant_key(scope), run_id),
            Err(_) => 0,
        };
        // The tenant total set this call's limit: say so, not the run's own quota.
        if tenant > 0 && by_total && used > share {
            return Err(format!(
                "workspace disk total exceeded: this call's share of the tenant's {} MB was {} MB (its other running runs use or have reserved {} MB) and the workspace reached {} MB; delete files to continue",
                disk::megabytes(tenant),
                disk::megabytes(share),
                disk::megabytes(others),
                disk::megabytes(used)
            ));
        }
        if quota > 0 && used > quota {
            return Err(DiskStop::Quota { used, quota }.to_string());
        }
        if tenant > 0 && others.saturating_add(used) > tenant {
            return Err(format!(
                "workspace disk total exceeded: this tenant's running runs use or have reserved {} MB of {} MB ({} MB in this run); delete files to continue",
                disk::megabytes(others.saturating_add(used)),
                disk::megabytes(tenant),
                disk::megabytes(used)
            ));
        }
        if let Some(stop) = out.disk_stop {
            return Err(stop.to_string());
        }
        Ok(())
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
    #[allow(clippy::too_many_arguments)]
    async fn sandboxed(
        &self,
        scope: &Scope,
        run_id: &RunId,
        egress: &Arc<RunEgress>,
        network: bool,
        argv: Vec<String>,
        stdin: Option<Vec<u8>>,
        limits: Limits,
    ) -> Result<ExecOutput, String> {
        let workspace = self.host_files.workspace(run_id);
        let mut limits = limits;
        // Held across the call: if this future is dropped (the run's deadline), the reservation
        // stays counted until a later call measures the workspace.
        let reservation = self
            .disk_before(scope, run_id, &workspace, &mut limits)
            .await?;
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
        let out = out.map_err(|e| format!("sandbox error: {e}"))?;
        // The model sees what the call printed too, to know what it wrote.
        if let Err(e) = self
            .disk_after(scope, run_id, &workspace, &out, reservation)
            .await
        {
            return Err(format!("{e}\n{}", shell_report(&out)));
        }
        Ok(out)
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
                        ctx.scope,
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
                        ctx.scope,
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
                        ctx.scope,
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
                        ctx.scope,
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
            // The broker refuses requests that carry any of the workspace's secrets.
            Ok(e) => Arc::new(e.with_secret_scan(redactor.matcher().clone())),
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
        if let Ok(mut usage) = self.usage.lock() {
            for runs in usage.values_mut() {
                runs.remove(run_id);
            }
            usage.retain(|_, runs| !runs.is_empty());
        }
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
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&ws) {
        // A folder the sandbox made unreadable (`chmod 000`): give the owner access back.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            disk::make_removable(&ws)?;
            std::fs::remove_dir_all(&ws)
        }
        done => done,
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("disk check failed: {e}"))?
        .map_err(|e| format!("disk check failed: {e}"))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MB: u64 = 1 << 20;

    fn quota() -> DiskQuota {
        DiskQuota {
            workspace_bytes: 32 * MB,
            tenant_bytes: 64 * MB,
            reserve_bytes: 0,
            workspace_entries: 0,
        }
    }

    fn share(table: &UsageTable, id: &RunId) -> Option<u64> {
        table
            .lock()
            .unwrap()
            .get("t")
            .and_then(|runs| runs.get(id).map(|share| share.bytes))
    }

    #[test]
    fn concurrent_calls_of_one_tenant_cannot_be_granted_the_same_room() {
        let table = UsageTable::default();
        let disk = quota();
        let run: Vec<RunId> = (0..5).map(|_| RunId::new()).collect();
        // Three calls in flight at once, each starting from an empty workspace: each gets at
        // most half of what the tenant has left.
        let (a, held_a) = reserve(&table, &disk, "t".into(), &run[0], 0).unwrap();
        let (b, held_b) = reserve(&table, &disk, "t".into(), &run[1], 0).unwrap();
        let (c, _held_c) = reserve(&table, &disk, "t".into(), &run[2], 0).unwrap();
        assert_eq!((a, b, c), (32 * MB, 16 * MB, 8 * MB));
        assert!(a + b + c <= disk.tenant_bytes);
        // Settling replaces a reservation with the measurement, freeing the rest.
        held_a.settle(4 * MB);
        assert_eq!(share(&table, &run[0]), Some(4 * MB));
        drop(held_b);
        assert_eq!(
            share(&table, &run[1]),
            Some(16 * MB),
            "dropped unsettled: still counted"
        );
        let measured = |id: &RunId| table.lock().unwrap()["t"][id].measured;
        assert!(
            measured(&run[0]),
            "settled: the next call starts from the measurement"
        );
        assert!(!measured(&run[1]), "dropped: the next call measures again");
        let (again, _held) = reserve(&table, &disk, "t".into(), &run[3], 0).unwrap();
        assert_eq!(again, 18 * MB, "(64 - 4 - 16 - 8) / 2");
        // Another tenant is untouched.
        let (other, _held) = reserve(&table, &disk, "u".into(), &run[0], 0).unwrap();
        assert_eq!(other, 32 * MB);
    }

    #[test]
    fn many_concurrent_calls_all_get_room_and_never_more_than_the_total() {
        let table = UsageTable::default();
        let disk = DiskQuota {
            workspace_bytes: 1 << 30,
            tenant_bytes: 10 << 30,
            reserve_bytes: 0,
            workspace_entries: 0,
        };
        let mut held = Vec::new();
        let mut granted = 0u64;
        for _ in 0..20 {
            let (budget, reservation) =
                reserve(&table, &disk, "t".into(), &RunId::new(), 0).unwrap();
            // The 20th still has room for small files (512 KiB of a 10 GiB total).
            assert!(budget >= 512 << 10, "{budget}");
            granted += budget;
            held.push(reservation);
        }
        assert!(granted <= disk.tenant_bytes, "{granted}");
    }

    #[test]
    fn a_run_over_its_budget_reserves_what_it_uses() {
        let table = UsageTable::default();
        let run: Vec<RunId> = (0..3).map(|_| RunId::new()).collect();
        let (budget, held) = reserve(&table, &quota(), "t".into(), &run[0], 40 * MB).unwrap();
        assert_eq!(budget, 32 * MB);
        assert_eq!(held.reserved, 40 * MB);
        drop(held);
        let (other, _held) = reserve(&table, &quota(), "t".into(), &run[1], 0).unwrap();
        assert_eq!(other, 12 * MB);
    }
}
