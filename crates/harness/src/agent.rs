//! Agent packages: loading an agent folder into an [`AgentDefinition`], and compiling a
//! definition into an [`Agent`] (prompt template parsed, JSON Schemas compiled, tools resolved)
//! so that a broken package is refused when it is registered, not when a run reaches it.

use crate::tools;
use paddock_types::api::AgentDefinition;
use paddock_types::manifest::ToolRule;
use paddock_types::{AgentManifest, ManifestError, ToolSpec};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A definition that cannot be compiled. `field` names what is wrong (`prompt`,
/// `output_schema`, `tools.foo`, …).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The manifest or a part of the package is invalid: fix the named field.
    #[error("{0}")]
    Invalid(#[from] ManifestError),
    /// The prompt template does not render with this input (e.g. a filter failed).
    #[error("prompt: cannot render the template: {0}")]
    Render(String),
}

/// An agent folder that cannot be loaded: which file, and why.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Fix or create the file.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// The file parsed but a field is wrong.
    #[error("{path}: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
}

/// What a run starts with: the system prompt rendered from the template, and the user message.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub system_prompt: String,
    pub user_message: String,
}

/// A compiled agent version. Cheap to share (`Arc<Agent>`); immutable.
pub struct Agent {
    definition: AgentDefinition,
    env: minijinja::Environment<'static>,
    input_schema: Option<jsonschema::Validator>,
    output_schema: Option<jsonschema::Validator>,
    tool_specs: Vec<ToolSpec>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.definition.manifest.name)
            .field("version", &self.definition.manifest.version)
            .finish_non_exhaustive()
    }
}

const TEMPLATE: &str = "prompt";

fn compile_schema(
    field: &str,
    schema: &Option<Value>,
) -> Result<Option<jsonschema::Validator>, AgentError> {
    let Some(schema) = schema else {
        return Ok(None);
    };
    jsonschema::validator_for(schema)
        .map(Some)
        .map_err(|e| ManifestError::new(field, format!("not a valid JSON Schema: {e}")).into())
}

impl Agent {
    /// Checks everything that can be checked before a run: the manifest's fields, the prompt
    /// template's syntax, both schemas, and that every enabled tool exists.
    pub fn compile(definition: AgentDefinition) -> Result<Self, AgentError> {
        definition.manifest.validate()?;
        let mut env = minijinja::Environment::new();
        // Unknown variables are an error, so `{{ input.topc }}` is caught by the first run
        // instead of silently rendering an empty string into the prompt.
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_template_owned(TEMPLATE, definition.prompt.clone())
            .map_err(|e| ManifestError::new("prompt", format!("invalid template: {e}")))?;
        let input_schema = compile_schema("input_schema", &definition.manifest.input_schema)?;
        let output_schema = compile_schema("output_schema", &definition.manifest.output_schema)?;
        let mut tool_specs = Vec::new();
        for name in definition.manifest.tools.keys() {
            let spec = tools::builtin_spec(name).ok_or_else(|| {
                ManifestError::new(
                    format!("tools.{name}"),
                    format!(
                        "unknown tool (available: {})",
                        tools::builtin_names().join(", ")
                    ),
                )
            })?;
            tool_specs.push(spec);
        }
        Ok(Self {
            definition,
            env,
            input_schema,
            output_schema,
            tool_specs,
        })
    }

    pub fn manifest(&self) -> &AgentManifest {
        &self.definition.manifest
    }

    pub fn definition(&self) -> &AgentDefinition {
        &self.definition
    }

    /// The tools offered to the model.
    pub fn tool_specs(&self) -> &[ToolSpec] {
        &self.tool_specs
    }

    /// The manifest rule of an enabled tool; `None` means the tool is not enabled.
    pub fn tool_rule(&self, name: &str) -> Option<&ToolRule> {
        self.definition.manifest.tools.get(name)
    }

    /// Whether a call of this tool may be re-run after a crash: the manifest's override, else the
    /// tool's own declaration.
    pub fn tool_idempotent(&self, name: &str) -> bool {
        self.tool_rule(name)
            .and_then(|r| r.idempotent)
            .unwrap_or_else(|| tools::builtin_idempotent(name))
    }

    pub fn has_output_schema(&self) -> bool {
        self.output_schema.is_some()
    }

    /// Checks a run input against the input schema; the errors name the offending location.
    pub fn validate_input(&self, input: &Value) -> Result<(), Vec<String>> {
        validate(self.input_schema.as_ref(), input, "input")
    }

    /// Checks a final answer against the output schema.
    pub fn validate_output(&self, output: &Value) -> Result<(), Vec<String>> {
        validate(self.output_schema.as_ref(), output, "output")
    }

    /// The system prompt (the template rendered over `input`) and the user message (the input:
    /// a string as-is, anything else as JSON).
    pub fn render(&self, input: &Value) -> Result<Rendered, AgentError> {
        let system_prompt = self
            .env
            .get_template(TEMPLATE)
            .and_then(|t| t.render(minijinja::context! { input => input }))
            .map_err(|e| AgentError::Render(e.to_string()))?;
        let user_message = match input {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Ok(Rendered {
            system_prompt,
            user_message,
        })
    }
}

fn validate(
    schema: Option<&jsonschema::Validator>,
    value: &Value,
    what: &str,
) -> Result<(), Vec<String>> {
    let Some(schema) = schema else {
        return Ok(());
    };
    let errors: Vec<String> = schema
        .iter_errors(value)
        .take(20)
        .map(|e| {
            let path = e.instance_path().as_str().to_owned();
            let at = if path.is_empty() {
                what.to_owned()
            } else {
                format!("{what}{path}")
            };
            format!("{at}: {e}")
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

const MANIFEST: &str = "agent.toml";
const PROMPT: &str = "prompt.md";
const INPUT_SCHEMA: &str = "input.schema.json";
const OUTPUT_SCHEMA: &str = "output.schema.json";
/// Agent files are small; a bigger one is a mistake (or an attack on the loader).
const MAX_FILE: u64 = 1024 * 1024;

fn read(path: &Path) -> Result<Option<String>, LoadError> {
    let err = |message: String| LoadError::File {
        path: path.to_owned(),
        message,
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
        Ok(m) if m.len() > MAX_FILE => {
            return Err(err(format!("larger than {MAX_FILE} bytes")));
        }
        Ok(_) => {}
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| err(e.to_string()))
}

fn read_schema(dir: &Path, file: &str) -> Result<Option<Value>, LoadError> {
    let path = dir.join(file);
    let Some(text) = read(&path)? else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| LoadError::File {
            path,
            message: format!("invalid JSON: {e}"),
        })
}

/// Loads one agent folder: `agent.toml`, `prompt.md`, and the optional `input.schema.json` and
/// `output.schema.json` (a schema file and an inline `[input_schema]` table together are an
/// error: which one wins would be a guess). The result is compiled to catch template and schema
/// errors, naming the file.
pub fn load_dir(dir: &Path) -> Result<AgentDefinition, LoadError> {
    let manifest_path = dir.join(MANIFEST);
    let text = read(&manifest_path)?.ok_or_else(|| LoadError::File {
        path: manifest_path.clone(),
        message: "not found (an agent folder needs agent.toml and prompt.md)".to_owned(),
    })?;
    let mut manifest = AgentManifest::from_toml(&text).map_err(|source| LoadError::Manifest {
        path: manifest_path.clone(),
        source,
    })?;
    let prompt_path = dir.join(PROMPT);
    let prompt = read(&prompt_path)?.ok_or_else(|| LoadError::File {
        path: prompt_path.clone(),
        message: "not found (the system prompt template)".to_owned(),
    })?;
    for (file, field, slot) in [
        (INPUT_SCHEMA, "input_schema", &mut manifest.input_schema),
        (OUTPUT_SCHEMA, "output_schema", &mut manifest.output_schema),
    ] {
        if let Some(schema) = read_schema(dir, file)? {
            if slot.is_some() {
                return Err(LoadError::Manifest {
                    path: manifest_path.clone(),
                    source: ManifestError::new(
                        field,
                        format!("given both inline and in {file}; keep one"),
                    ),
                });
            }
            *slot = Some(schema);
        }
    }
    let def = AgentDefinition { manifest, prompt };
    match Agent::compile(def.clone()) {
        Ok(_) => Ok(def),
        Err(AgentError::Invalid(e)) => {
            let path = match e.field.as_str() {
                "prompt" => prompt_path,
                "input_schema" if dir.join(INPUT_SCHEMA).exists() => dir.join(INPUT_SCHEMA),
                "output_schema" if dir.join(OUTPUT_SCHEMA).exists() => dir.join(OUTPUT_SCHEMA),
                _ => manifest_path,
            };
            Err(LoadError::Manifest { path, source: e })
        }
        Err(e @ AgentError::Render(_)) => Err(LoadError::File {
            path: prompt_path,
            message: e.to_string(),
        }),
    }
}

/// Loads every agent folder (a subfolder with an `agent.toml`) under `dir`, sorted by folder
/// name. Two folders declaring the same agent name and version are an error.
pub fn load_all(dir: &Path) -> Result<Vec<AgentDefinition>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LoadError::File {
        path: dir.to_owned(),
        message: e.to_string(),
    })?;
    let mut folders: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.join(MANIFEST).is_file())
        .collect();
    folders.sort();
    let mut defs: Vec<AgentDefinition> = Vec::with_capacity(folders.len());
    for folder in folders {
        let def = load_dir(&folder)?;
        if defs.iter().any(|d| {
            d.manifest.name == def.manifest.name && d.manifest.version == def.manifest.version
        }) {
            return Err(LoadError::Manifest {
                path: folder.join(MANIFEST),
                source: ManifestError::new(
                    "name",
                    format!(
                        "agent {} {} is defined by another folder too",
                        def.manifest.name, def.manifest.version
                    ),
                ),
            });
        }
        defs.push(def);
    }
    Ok(defs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    const MANIFEST_TOML: &str = r#"
name = "t"
version = "1.0.0"
[model]
provider = "scripted"
name = "m"
[tools.write_file]
"#;

    fn def(prompt: &str, extra: &str) -> AgentDefinition {
        AgentDefinition {
            manifest: AgentManifest::from_toml(&format!("{MANIFEST_TOML}{extra}")).unwrap(),
            prompt: prompt.to_owned(),
        }
    }

    #[test]
    fn renders_the_prompt_over_the_input() {
        let a = Agent::compile(def("Topic: {{ input.topic }}", "")).unwrap();
        let r = a.render(&json!({"topic": "otters"})).unwrap();
        assert_eq!(r.system_prompt, "Topic: otters");
        assert_eq!(r.user_message, r#"{"topic":"otters"}"#);
        assert!(matches!(a.render(&json!({})), Err(AgentError::Render(_))));
        let plain = Agent::compile(def("Be brief.", "")).unwrap();
        assert_eq!(plain.render(&json!("hi")).unwrap().user_message, "hi");
    }

    #[test]
    fn refuses_bad_templates_schemas_and_tools() {
        let e = Agent::compile(def("{% if %}", "")).unwrap_err();
        assert!(
            matches!(&e, AgentError::Invalid(m) if m.field == "prompt"),
            "{e}"
        );
        let e = Agent::compile(def("x", "[output_schema]\ntype = 12\n")).unwrap_err();
        assert!(
            matches!(&e, AgentError::Invalid(m) if m.field == "output_schema"),
            "{e}"
        );
        let e = Agent::compile(def("x", "[tools.launch_missiles]\n")).unwrap_err();
        assert!(
            matches!(&e, AgentError::Invalid(m) if m.field == "tools.launch_missiles"),
            "{e}"
        );
    }

    #[test]
    fn validates_input_and_output_naming_the_location() {
        let a = Agent::compile(def(
            "x",
            "[input_schema]\ntype = \"object\"\nrequired = [\"topic\"]\n[input_schema.properties.topic]\ntype = \"string\"\n",
        ))
        .unwrap();
        assert!(a.validate_input(&json!({"topic": "a"})).is_ok());
        let errs = a.validate_input(&json!({"topic": 5})).unwrap_err();
        assert!(errs[0].starts_with("input/topic:"), "{errs:?}");
        assert!(a.validate_input(&json!({})).is_err());
        assert!(a.validate_output(&json!(1)).is_ok(), "no output schema");
    }

    #[test]
    fn idempotency_defaults_and_overrides() {
        let a = Agent::compile(def("x", "[tools.read_file]\n")).unwrap();
        assert!(a.tool_idempotent("read_file"));
        let a = Agent::compile(def("x", "idempotent = false\n")).unwrap();
        assert!(!a.tool_idempotent("write_file"));
    }

    #[test]
    fn loads_a_folder_and_names_the_file_of_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("t");
        std::fs::create_dir_all(&agent).unwrap();
        std::fs::write(agent.join("agent.toml"), MANIFEST_TOML).unwrap();
        std::fs::write(agent.join("prompt.md"), "Hello {{ input }}").unwrap();
        std::fs::write(agent.join("output.schema.json"), r#"{"type":"object"}"#).unwrap();
        let d = load_dir(&agent).unwrap();
        assert_eq!(d.manifest.output_schema, Some(json!({"type": "object"})));
        assert_eq!(load_all(dir.path()).unwrap().len(), 1);

        std::fs::write(agent.join("output.schema.json"), "{nope").unwrap();
        let e = load_dir(&agent).unwrap_err().to_string();
        assert!(e.contains("output.schema.json"), "{e}");

        std::fs::remove_file(agent.join("output.schema.json")).unwrap();
        std::fs::write(agent.join("prompt.md"), "{% for %}").unwrap();
        let e = load_dir(&agent).unwrap_err().to_string();
        assert!(e.contains("prompt.md"), "{e}");

        std::fs::write(
            agent.join("agent.toml"),
            MANIFEST_TOML.replace("name = \"m\"", "name = \"m\"\nmax_output_tokens = \"lots\""),
        )
        .unwrap();
        let e = load_dir(&agent).unwrap_err().to_string();
        assert!(
            e.contains("agent.toml") && e.contains("model.max_output_tokens"),
            "{e}"
        );

        std::fs::remove_file(agent.join("agent.toml")).unwrap();
        assert!(
            load_dir(&agent)
                .unwrap_err()
                .to_string()
                .contains("agent.toml")
        );
    }
}
