//! Shared setup for the end-to-end tests: the binary's path, a mock model and a server wired to
//! it, and small readers over journals and data folders.

mod approvals;
mod audit;
mod bad_input;
mod billing;
mod crash;
mod egress;
mod host;
mod hostile;
mod inject;
mod local_run;
mod members;
mod provider_faults;
mod records;
mod run_stream;
mod sandbox_helper;
mod secret_leaks;
mod tenant_guards;
mod vault;
mod workspace_cap;

use paddock_test_support::{AgentFixture, MockLlm, Server, ServerOptions, provider_toml};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// The `paddock` binary cargo built for these tests.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_paddock"))
}

/// Provider names in every test server's `paddock.toml`.
pub const OPENAI: &str = "mock";
pub const ANTHROPIC: &str = "mock_anthropic";

/// `paddock.toml` providers pointing at `mock`: `mock` (OpenAI wire format) and
/// `mock_anthropic` (Anthropic wire format), both streaming, with fast retries.
pub fn providers(mock: &MockLlm) -> String {
    provider_toml(OPENAI, "openai", &mock.openai_base_url())
        + &provider_toml(ANTHROPIC, "anthropic", &mock.anthropic_base_url())
}

/// Server options wired to `mock`, with the given agents. Workspaces are kept after runs end so
/// tests can look at what the tools wrote.
pub fn options(mock: &MockLlm, agents: Vec<AgentFixture>) -> ServerOptions {
    let mut o = ServerOptions::new(bin())
        .config(&providers(mock))
        .config("[sandbox]\nkeep_workspaces = true\n\n");
    for a in agents {
        o = o.agent(a);
    }
    o
}

pub async fn start(mock: &MockLlm, agents: Vec<AgentFixture>) -> Server {
    Server::start(options(mock, agents)).await
}

/// A mock turn writing `content` to `path`.
pub fn write(path: &str, content: &str) -> Value {
    json!({"tool": "write_file", "args": {"path": path, "content": content}})
}

/// A mock turn ending the run with `output` as the final answer.
pub fn final_answer(output: Value) -> Value {
    json!({"final": output})
}

/// Journal events of type `ty`.
pub fn of_type<'a>(events: &'a [Value], ty: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == ty).collect()
}

/// Every file named `name` under `root`, at any depth (the workspace layout under the data
/// folder is the tool executor's business, not these tests').
pub fn find_files(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == name) {
                found.push(p);
            }
        }
    }
    found
}

/// Asserts `r` is an `application/problem+json` answer with this status and code.
#[track_caller]
pub fn assert_problem(r: &paddock_test_support::Resp, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    assert!(
        r.content_type().starts_with("application/problem+json"),
        "{what}: content type {:?}: {r:?}",
        r.content_type()
    );
    assert_eq!(r.body["code"], code, "{what}: {r:?}");
    assert_eq!(r.body["status"], status, "{what}: {r:?}");
}
