//! Agent folders and `paddock.toml` sections for tests.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// A prompt that hands the run's `input.mock` to the mock model as its script (a fenced
/// `mock` block in the system prompt, which `paddock mock-llm` and the `scripted` provider obey).
pub const MOCK_PROMPT: &str = "Test agent.\n```mock\n{{ input.mock | tojson }}\n```\n";

/// The run input that scripts the mock model with these turns.
pub fn mock_input(turns: Value) -> Value {
    json!({ "mock": { "turns": turns } })
}

/// A `[providers.<name>]` section pointing at a mock, with fast retries so fault tests stay short.
/// `base_url` is `MockLlm::openai_base_url()` for `kind = "openai"` and
/// `MockLlm::anthropic_base_url()` for `kind = "anthropic"`.
pub fn provider_toml(name: &str, kind: &str, base_url: &str) -> String {
    format!(
        "[providers.{name}]\nkind = \"{kind}\"\nbase_url = \"{base_url}\"\nmax_retries = 3\n\
         retry_base_ms = 10\nretry_max_ms = 200\nstream = true\n\n"
    )
}

/// One agent folder: `agent.toml`, `prompt.md` and any extra files.
#[derive(Debug, Clone)]
pub struct AgentFixture {
    pub name: String,
    pub provider: String,
    /// The `[tools.*]` tables of the manifest.
    pub tools: String,
    /// Appended to the manifest as is (e.g. an `[input_schema]` table).
    pub manifest_extra: String,
    /// Replaces the generated `agent.toml` entirely when set.
    pub manifest_override: Option<String>,
    pub prompt: String,
    pub extra_files: Vec<(String, String)>,
}

impl AgentFixture {
    /// An agent scripted by its input through [`MOCK_PROMPT`], with the file tools enabled and
    /// limits high enough for any test script.
    pub fn new(name: &str, provider: &str) -> Self {
        Self {
            name: name.to_owned(),
            provider: provider.to_owned(),
            tools: "[tools.write_file]\n[tools.read_file]\n[tools.list_files]\n".to_owned(),
            manifest_extra: String::new(),
            manifest_override: None,
            prompt: MOCK_PROMPT.to_owned(),
            extra_files: Vec::new(),
        }
    }

    /// The same agent, but every `write_file` call waits for a human approval.
    pub fn gated(mut self) -> Self {
        self.tools = "[tools.write_file]\napproval = \"always\"\n[tools.read_file]\n".to_owned();
        self
    }

    pub fn with_manifest_extra(mut self, toml: &str) -> Self {
        self.manifest_extra.push_str(toml);
        self
    }

    pub fn with_manifest(mut self, toml: &str) -> Self {
        self.manifest_override = Some(toml.to_owned());
        self
    }

    pub fn with_file(mut self, name: &str, content: &str) -> Self {
        self.extra_files.push((name.to_owned(), content.to_owned()));
        self
    }

    pub fn manifest(&self) -> String {
        if let Some(m) = &self.manifest_override {
            return m.clone();
        }
        format!(
            "name = \"{}\"\nversion = \"1.0.0\"\ndescription = \"test agent\"\n\n[model]\n\
             provider = \"{}\"\nname = \"mock-model\"\n\n[limits]\nmax_steps = 200\n\
             timeout = \"5m\"\n\n{}\n{}",
            self.name, self.provider, self.tools, self.manifest_extra
        )
    }

    /// Writes the folder as `<parent>/<name>` and returns its path.
    pub fn write_into(&self, parent: &Path) -> PathBuf {
        let dir = parent.join(&self.name);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create agent folder {}: {e}", dir.display()));
        let mut files = vec![
            ("agent.toml".to_owned(), self.manifest()),
            ("prompt.md".to_owned(), self.prompt.clone()),
        ];
        files.extend(self.extra_files.iter().cloned());
        for (name, content) in files {
            let path = dir.join(name);
            std::fs::write(&path, content)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        dir
    }
}
