//! Tools: the built-in tool catalogue (names, descriptions, argument schemas, idempotency) and the
//! [`ToolExecutor`] seam through which the engine runs a call.
//!
//! [`WorkspaceTools`] runs the file tools over a per-run folder on the host. It confines paths to
//! that folder lexically (no absolute paths, no `..`), but it is not a sandbox: the sandboxed
//! executor implements the same trait.

use crate::agent::Agent;
use async_trait::async_trait;
use paddock_types::event::{EgressRecord, EgressSink};
use paddock_types::{RunId, Scope, ToolCall, ToolSpec};
use serde_json::{Value, json};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// What a tool call produced, as the model will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub content: String,
    /// The call failed; the model sees the content as an error and may try something else.
    pub is_error: bool,
    /// Requests the call made through the egress broker, to be journaled with its result, when
    /// the call had no [`ToolContext::egress`] sink (with one, records go to the sink).
    pub egress: Vec<EgressRecord>,
}

impl ToolOutput {
    pub fn ok(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            is_error: false,
            egress: Vec::new(),
        }
    }

    pub fn error(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            is_error: true,
            egress: Vec::new(),
        }
    }
}

/// Who a tool call runs for: the tenant, the run and its agent (whose manifest holds the egress
/// rules and credential bindings).
#[derive(Clone, Copy)]
pub struct ToolContext<'a> {
    pub scope: &'a Scope,
    pub run_id: &'a RunId,
    pub agent: &'a Agent,
    /// Where the call's egress records go, owned by the caller so that they outlive the call
    /// (a deadline drops the call's future half-way). Executors that make requests through the
    /// broker must hand it to the run's egress context.
    pub egress: Option<&'a Arc<dyn EgressSink>>,
}

/// Runs tool calls for runs. A failure of the tool is an error *output* (the model is told), never
/// a panic or a lost call.
#[async_trait]
pub trait ToolExecutor: Send + Sync + 'static {
    async fn execute(&self, ctx: ToolContext<'_>, call: &ToolCall) -> ToolOutput;

    /// The sandbox tier calls run in, recorded on every run (`none`: no isolation).
    fn sandbox_tier(&self) -> &'static str;

    /// The run ended: release what its tools held (its workspace, unless kept for inspection).
    async fn run_ended(&self, _run_id: &RunId) {}
}

struct Builtin {
    name: &'static str,
    description: &'static str,
    /// Safe to run again after a crash left its outcome unknown.
    idempotent: bool,
    parameters: fn() -> Value,
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "read_file",
        description: "Read a UTF-8 text file of the workspace.",
        idempotent: true,
        parameters: || {
            json!({"type": "object", "additionalProperties": false, "required": ["path"],
                   "properties": {"path": {"type": "string", "description": "path relative to the workspace"}}})
        },
    },
    Builtin {
        name: "write_file",
        description: "Create or replace a text file of the workspace.",
        // Writing the same content to the same path twice leaves the same result.
        idempotent: true,
        parameters: || {
            json!({"type": "object", "additionalProperties": false, "required": ["path", "content"],
                   "properties": {"path": {"type": "string", "description": "path relative to the workspace"},
                                  "content": {"type": "string"}}})
        },
    },
    Builtin {
        name: "shell",
        description: "Run a bash command in the run's sandbox, with /workspace as the working folder. \
                      Returns the exit code and the (possibly truncated) stdout and stderr. \
                      Network access goes through the egress proxy and only to allowed hosts.",
        idempotent: false,
        parameters: || {
            json!({"type": "object", "additionalProperties": false, "required": ["command"],
                   "properties": {"command": {"type": "string", "description": "passed to bash -c"},
                                  "timeout_secs": {"type": "integer", "minimum": 1, "maximum": 600}}})
        },
    },
    Builtin {
        name: "http_request",
        description: "Make an HTTP request to an allowed host, through the egress broker. \
                      Credentials configured for the host are added by the platform.",
        idempotent: false,
        parameters: || {
            json!({"type": "object", "additionalProperties": false, "required": ["url"],
                   "properties": {"method": {"type": "string", "default": "GET"},
                                  "url": {"type": "string"},
                                  "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                                  "body": {"type": "string"}}})
        },
    },
    Builtin {
        name: "list_files",
        description: "List the files of a workspace folder (default: the workspace root).",
        idempotent: true,
        parameters: || {
            json!({"type": "object", "additionalProperties": false,
                   "properties": {"path": {"type": "string", "description": "folder relative to the workspace"}}})
        },
    },
];

/// The spec of a built-in tool, or `None` if there is no such tool.
pub fn builtin_spec(name: &str) -> Option<ToolSpec> {
    BUILTINS.iter().find(|b| b.name == name).map(|b| ToolSpec {
        name: b.name.to_owned(),
        description: b.description.to_owned(),
        parameters: (b.parameters)(),
    })
}

pub fn builtin_names() -> Vec<&'static str> {
    BUILTINS.iter().map(|b| b.name).collect()
}

/// A tool's own idempotency declaration (unknown tools are not idempotent: never re-run blindly).
pub fn builtin_idempotent(name: &str) -> bool {
    BUILTINS.iter().any(|b| b.name == name && b.idempotent)
}

/// Largest file `read_file` returns whole; the rest is cut with a note.
pub const MAX_READ: usize = 64 * 1024;
/// Largest content `write_file` accepts.
pub const MAX_WRITE: usize = 1024 * 1024;
/// Most entries `list_files` returns.
pub const MAX_LIST: usize = 1000;
/// Most file tool calls running at once, whatever the number of CPUs.
const MAX_BLOCKING_CALLS: usize = 8;

/// The file tools over `<root>/<run_id>/`.
#[derive(Debug, Clone)]
pub struct WorkspaceTools {
    root: PathBuf,
    /// Calls running on the blocking pool at once (shared by clones); see
    /// [`WorkspaceTools::run_async`].
    slots: Arc<Semaphore>,
}

impl WorkspaceTools {
    /// File tools over workspaces under `root`, which is created (and, where the file system
    /// allows, marked as a top folder; see [`prepare_root`]) if it does not exist.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        prepare_root(&root);
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            root,
            slots: Arc::new(Semaphore::new(cpus.clamp(2, MAX_BLOCKING_CALLS))),
        }
    }

    /// The workspace folder of a run ([`workspace_dir`] under this root).
    pub fn workspace(&self, run_id: &RunId) -> PathBuf {
        workspace_dir(&self.root, run_id)
    }

    /// [`WorkspaceTools::run`] from async code. A small write runs right here: it is a handful of
    /// system calls on the page cache (tens of microseconds), bounded by its content, and handing
    /// it to the blocking pool cost more than the call itself (a quarter of the throughput of 200
    /// concurrent runs writing files). Reads and listings cost what the workspace holds, which
    /// the run controls, so they go to the blocking pool.
    ///
    /// About as many pool calls at once as there are CPUs; the rest wait their turn here.
    /// Unbounded, a few hundred concurrent runs kept a hundred blocking threads busy with calls of
    /// a few microseconds each, and the store's writer, which every step waits for, spent a third
    /// of its time queued behind them for a CPU.
    pub async fn run_async(&self, run_id: &RunId, call: &ToolCall) -> Result<String, String> {
        if is_small_write(call) {
            return self.run(run_id, call);
        }
        let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
            return Err("the file tools are shut down".to_owned());
        };
        let tools = self.clone();
        let run_id = run_id.clone();
        let call = call.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            tools.run(&run_id, &call)
        })
        .await
        .unwrap_or_else(|e| Err(format!("tool task failed: {e}")))
    }

    /// The file tools, run on the host. Only for the `none` tier and tests: a symlink the
    /// run's own code planted in the workspace would be followed.
    ///
    /// A run's workspace folder is created by its first write, not by every call: a folder that
    /// does not exist yet reads as empty, and checking for it on every call cost a `mkdir` (which
    /// locks the shared parent folder) per call.
    pub fn run(&self, run_id: &RunId, call: &ToolCall) -> Result<String, String> {
        let ws = self.workspace(run_id);
        let args = &call.arguments;
        match call.name.as_str() {
            "read_file" => {
                let path = resolve(&ws, str_arg(args, "path")?)?;
                let bytes = std::fs::read(&path).map_err(|e| io_error("read", e))?;
                let mut text = String::from_utf8_lossy(&bytes).into_owned();
                if text.len() > MAX_READ {
                    let mut cut = MAX_READ;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                    text.push_str(&format!("\n[truncated: file is {} bytes]", bytes.len()));
                }
                Ok(text)
            }
            "write_file" => {
                let rel = str_arg(args, "path")?;
                let content = str_arg(args, "content")?;
                if content.len() > MAX_WRITE {
                    return Err(format!("content is larger than {MAX_WRITE} bytes"));
                }
                let path = resolve(&ws, rel)?;
                match write_replacing(&path, content.as_bytes()) {
                    // The workspace or the file's folder does not exist yet.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        if let Some(parent) = path.parent() {
                            std::fs::create_dir_all(parent)
                                .map_err(|e| io_error("create folder", e))?;
                        }
                        write_replacing(&path, content.as_bytes())
                    }
                    written => written,
                }
                .map_err(|e| io_error("write", e))?;
                Ok(format!("wrote {} bytes to {rel}", content.len()))
            }
            "list_files" => {
                let rel = match args.get("path") {
                    None | Some(Value::Null) => ".",
                    Some(_) => str_arg(args, "path")?,
                };
                let dir = resolve(&ws, rel)?;
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    // Nothing written yet: the workspace is empty.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir == ws => {
                        return Ok(String::new());
                    }
                    Err(e) => return Err(io_error("list", e)),
                };
                let mut names: Vec<String> = entries
                    .flatten()
                    .map(|e| {
                        let mut n = e.file_name().to_string_lossy().into_owned();
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            n.push('/');
                        }
                        n
                    })
                    .collect();
                names.sort();
                let total = names.len();
                names.truncate(MAX_LIST);
                let mut out = names.join("\n");
                if total > MAX_LIST {
                    out.push_str(&format!("\n[{} more not shown]", total - MAX_LIST));
                }
                Ok(out)
            }
            other => Err(format!("tool {other} is not available without a sandbox")),
        }
    }
}

#[async_trait]
impl ToolExecutor for WorkspaceTools {
    fn sandbox_tier(&self) -> &'static str {
        "none"
    }

    async fn execute(&self, ctx: ToolContext<'_>, call: &ToolCall) -> ToolOutput {
        match self.run_async(ctx.run_id, call).await {
            Ok(out) => ToolOutput::ok(out),
            Err(e) => ToolOutput::error(e),
        }
    }
}

/// Largest `write_file` content run on the caller's thread ([`WorkspaceTools::run_async`]).
const SMALL_WRITE: usize = 16 * 1024;

fn is_small_write(call: &ToolCall) -> bool {
    call.name == "write_file"
        && call
            .arguments
            .get("content")
            .and_then(Value::as_str)
            .is_some_and(|c| c.len() <= SMALL_WRITE)
}

/// A string argument of a tool call, or a message for the model saying what is wrong.
pub fn str_arg<'a>(args: &'a Value, name: &str) -> Result<&'a str, String> {
    match args.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("argument {name} must be a string")),
        None => Err(format!("missing argument {name}")),
    }
}

/// The workspace folder of a run under `root`: `root/<shard>/<run_id>`, the shard being the
/// id's last two characters (random in a generated id), so 256 or so shards share the runs.
///
/// Why shards: on ext4, where a new folder's inode goes depends on its parent. Placed beside each
/// other in one folder, every new workspace (and its files) paid a linear scan past each recently
/// deleted inode of that folder's block group (ext4 without a journal will not reuse those for a
/// minute or more), about a millisecond per run once runs were being deleted; marking that folder
/// as a top of hierarchy instead (see [`prepare_root`]) made ext4 weigh every block group for each
/// new workspace, about 0.2 ms each. The shards are created once, spread over the groups by that
/// mark, and each holds a 256th of the churn.
pub fn workspace_dir(root: &Path, run_id: &RunId) -> PathBuf {
    let id = run_id.as_str();
    let mut cut = id.len().saturating_sub(2);
    while !id.is_char_boundary(cut) {
        cut -= 1;
    }
    root.join(&id[cut..]).join(id)
}

/// Creates the folder of the runs' workspaces and, on Linux file systems that support it (ext4),
/// gives it the "top of directory hierarchy" attribute (`chattr +T`), which spreads its shard
/// folders over the disk's block groups ([`workspace_dir`]), then creates the shards. Best
/// effort: where the attribute is not supported, the shards are placed as the file system likes,
/// and a shard that could not be made now is made by its first write.
fn prepare_root(root: &Path) {
    if let Err(e) = std::fs::create_dir_all(root).and_then(|()| mark_top_folder(root)) {
        tracing::debug!(root = %root.display(), error = %e, "workspace root not marked as a top folder");
    }
    // The shards of generated (hex) ids, made now: spreading each over the block groups costs
    // ext4 a few hundred microseconds, once per data folder rather than in some run's first write.
    for shard in 0..=0xffu8 {
        let dir = root.join(format!("{shard:02x}"));
        if let Err(e) = std::fs::create_dir(&dir)
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            tracing::debug!(dir = %dir.display(), error = %e, "workspace shard not created");
            break;
        }
    }
    move_unsharded(root);
}

/// Moves the workspaces of an earlier version, kept at `root/<run_id>`, into their shards, so a
/// run that was parked or interrupted across the upgrade finds its files.
fn move_unsharded(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| RunId::parse(n).ok()) else {
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let to = workspace_dir(root, &id);
        let moved = to
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                if to.exists() {
                    Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists))
                } else {
                    std::fs::rename(entry.path(), &to)
                }
            });
        match moved {
            Ok(()) => tracing::info!(run_id = %id, "workspace moved into its shard"),
            Err(e) => {
                tracing::warn!(run_id = %id, error = %e, "cannot move workspace into its shard")
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn mark_top_folder(dir: &Path) -> std::io::Result<()> {
    use rustix::fs::{IFlags, ioctl_getflags, ioctl_setflags};
    let folder = std::fs::File::open(dir)?;
    let flags = ioctl_getflags(&folder)?;
    if !flags.contains(IFlags::TOPDIR) {
        ioctl_setflags(&folder, flags | IFlags::TOPDIR)?;
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn mark_top_folder(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Replaces a file's content. Writing over the old bytes and then cutting to the new length
/// avoids truncating to zero first, which makes ext4 flush the file on close (its
/// replace-by-truncate heuristic) and costs a disk write per call. The cut is made only if the
/// old content was longer: even a truncate to the current length goes through the file
/// system's whole truncate path, several times the cost of asking for the length.
fn write_replacing(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let old_len = f.metadata()?.len();
    f.write_all(content)?;
    if old_len > content.len() as u64 {
        f.set_len(content.len() as u64)?;
    }
    Ok(())
}

fn io_error(what: &str, e: std::io::Error) -> String {
    format!("cannot {what}: {e}")
}

/// Joins a model-given relative path to the workspace, refusing anything that could leave it.
pub fn resolve(ws: &Path, rel: &str) -> Result<PathBuf, String> {
    if rel.is_empty() || rel.len() > 4096 || rel.contains('\0') {
        return Err("invalid path".to_owned());
    }
    let mut out = ws.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "path {rel:?} leaves the workspace; use a path relative to it without '..'"
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn test_agent() -> Agent {
        let toml =
            "name = \"t\"\nversion = \"1.0.0\"\n[model]\nprovider = \"scripted\"\nname = \"m\"\n";
        Agent::compile(paddock_types::api::AgentDefinition {
            manifest: paddock_types::AgentManifest::from_toml(toml).unwrap(),
            prompt: "p".into(),
        })
        .unwrap()
    }

    fn call(name: &str, args: Value) -> ToolCall {
        ToolCall {
            id: "c".into(),
            name: name.into(),
            arguments: args,
        }
    }

    #[test]
    fn workspaces_are_sharded_by_the_last_two_characters_of_the_run_id() {
        let root = Path::new("/data/workspaces");
        let id = RunId::parse("run_0190abcdef12").unwrap();
        assert_eq!(
            workspace_dir(root, &id),
            root.join("12").join("run_0190abcdef12")
        );
        let tools = WorkspaceTools {
            root: root.to_path_buf(),
            slots: Arc::new(Semaphore::new(1)),
        };
        assert_eq!(tools.workspace(&id), workspace_dir(root, &id));
    }

    #[test]
    fn workspaces_of_the_unsharded_layout_are_moved_into_their_shards() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("workspaces");
        let run = RunId::new();
        std::fs::create_dir_all(root.join(run.as_str()).join("sub")).unwrap();
        std::fs::write(root.join(run.as_str()).join("sub/a.txt"), "kept").unwrap();
        // Not a run's folder: left alone.
        std::fs::create_dir_all(root.join("notes")).unwrap();
        let tools = WorkspaceTools::new(&root);
        assert!(!root.join(run.as_str()).exists());
        let read = tools.run(&run, &call("read_file", json!({"path": "sub/a.txt"})));
        assert_eq!(read.unwrap(), "kept");
        assert!(root.join("notes").is_dir());
    }

    #[test]
    fn a_workspace_appears_with_its_first_write_and_writes_replace_content() {
        let dir = tempfile::tempdir().unwrap();
        let tools = WorkspaceTools::new(dir.path().join("workspaces"));
        let run = RunId::new();
        let read = |path: &str| tools.run(&run, &call("read_file", json!({"path": path})));
        let write = |content: &str| {
            tools
                .run(
                    &run,
                    &call("write_file", json!({"path": "a.txt", "content": content})),
                )
                .unwrap()
        };
        // Nothing written yet: the workspace lists as empty, and no folder is made for it.
        assert_eq!(
            tools.run(&run, &call("list_files", json!({}))),
            Ok(String::new())
        );
        assert!(read("a.txt").is_err());
        assert!(!tools.workspace(&run).exists());
        // The shards of generated ids exist from the start.
        let shards = std::fs::read_dir(dir.path().join("workspaces"))
            .unwrap()
            .count();
        assert_eq!(shards, 256);
        assert!(tools.workspace(&run).parent().unwrap().is_dir());
        write("hello world");
        write("hi");
        assert_eq!(read("a.txt"), Ok("hi".to_owned()));
        write("hey you");
        assert_eq!(read("a.txt"), Ok("hey you".to_owned()));
        write("");
        assert_eq!(read("a.txt"), Ok(String::new()));
    }

    #[tokio::test]
    async fn file_tools_work_inside_the_workspace_only() {
        let dir = tempfile::tempdir().unwrap();
        let tools = WorkspaceTools::new(dir.path());
        let run = RunId::new();
        let agent = test_agent();
        let scope = Scope::default_workspace();
        fn ctx<'a>(scope: &'a Scope, run_id: &'a RunId, agent: &'a Agent) -> ToolContext<'a> {
            ToolContext {
                scope,
                run_id,
                agent,
                egress: None,
            }
        }
        let w = tools
            .execute(
                ctx(&scope, &run, &agent),
                &call("write_file", json!({"path": "a/b.txt", "content": "hi"})),
            )
            .await;
        assert!(!w.is_error, "{w:?}");
        let r = tools
            .execute(
                ctx(&scope, &run, &agent),
                &call("read_file", json!({"path": "a/b.txt"})),
            )
            .await;
        assert_eq!(r, ToolOutput::ok("hi"));
        let l = tools
            .execute(ctx(&scope, &run, &agent), &call("list_files", json!({})))
            .await;
        assert_eq!(l, ToolOutput::ok("a/"));
        // Small writes run on the caller's thread, larger ones on the blocking pool: both land.
        for len in [SMALL_WRITE, SMALL_WRITE + 1] {
            let big = "y".repeat(len);
            let write = call("write_file", json!({"path": "big.txt", "content": big}));
            assert_eq!(is_small_write(&write), len == SMALL_WRITE);
            let w = tools.execute(ctx(&scope, &run, &agent), &write).await;
            assert!(!w.is_error, "{w:?}");
            let read = std::fs::read(tools.workspace(&run).join("big.txt")).unwrap();
            assert_eq!(read.len(), len);
        }
        for bad in ["../x", "/etc/passwd", "a/../../x", ""] {
            let r = tools
                .execute(
                    ctx(&scope, &run, &agent),
                    &call("read_file", json!({"path": bad})),
                )
                .await;
            assert!(r.is_error, "{bad}: {r:?}");
        }
        let other = RunId::new();
        let r = tools
            .execute(
                ctx(&scope, &other, &agent),
                &call("read_file", json!({"path": "a/b.txt"})),
            )
            .await;
        assert!(r.is_error, "another run's workspace is separate");
        let r = tools
            .execute(
                ctx(&scope, &run, &agent),
                &call("write_file", json!({"path": 1})),
            )
            .await;
        assert!(r.is_error && r.content.contains("path"), "{r:?}");
    }
}
