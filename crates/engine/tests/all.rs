//! Engine behaviour with the real SQLite store, the scripted model and the workspace tools:
//! crash recovery from hand-written journals, limits, output repair, approvals, timeouts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use paddock_engine::{Engine, EngineConfig};
use paddock_harness::WorkspaceTools;
use paddock_models::Models;
use paddock_store::{Append, SqliteStore};
use paddock_types::api::{AgentDefinition, CreateRun, Run};
use paddock_types::event::{ApprovalDecision, PolicyDecision};
use paddock_types::{
    AgentManifest, ErrorCode, EventKind, ModelResponse, NewEvent, RunStatus, Scope, ToolCall, Usage,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const PROMPT: &str = "Test.\n```mock\n{{ input.mock | tojson }}\n```\n";

fn manifest(extra: &str) -> String {
    format!(
        r#"
name = "t"
version = "1.0.0"
[model]
provider = "scripted"
name = "m"
{extra}
"#
    )
}

struct Harness {
    engine: Arc<Engine>,
    dir: tempfile::TempDir,
    scope: Scope,
}

async fn setup(manifest_toml: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_at(dir.path());
    let def = AgentDefinition {
        manifest: AgentManifest::from_toml(manifest_toml).unwrap(),
        prompt: PROMPT.to_owned(),
    };
    let scope = Scope::default_workspace();
    engine.put_agent(&scope, def).await.unwrap();
    Harness { engine, dir, scope }
}

fn engine_at(path: &std::path::Path) -> Arc<Engine> {
    let store = SqliteStore::open(path).unwrap();
    Engine::new(
        store,
        Arc::new(Models::new(&BTreeMap::new()).unwrap()),
        Arc::new(WorkspaceTools::new(path.join("workspaces"))),
        EngineConfig::default(),
    )
}

impl Harness {
    async fn create(&self, turns: Value) -> Run {
        self.engine
            .create_run(
                &self.scope,
                CreateRun {
                    agent: "t".into(),
                    input: json!({"mock": {"turns": turns}}),
                    metadata: None,
                },
            )
            .await
            .unwrap()
    }

    async fn finish(&self, run: &Run) -> Run {
        let r = self
            .engine
            .wait(&self.scope, &run.id, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(r.status.is_terminal(), "run did not finish: {r:?}");
        r
    }

    async fn kinds(&self, run: &Run) -> Vec<EventKind> {
        self.engine
            .store()
            .events(&self.scope, &run.id, 0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    async fn append(&self, run: &Run, kinds: Vec<EventKind>) {
        self.engine
            .store()
            .append(
                &self.scope,
                Append {
                    run_id: run.id.clone(),
                    expected_seq: None,
                    events: kinds.into_iter().map(NewEvent::now).collect(),
                },
            )
            .await
            .unwrap();
    }
}

fn write_call(id: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: "write_file".into(),
        arguments: json!({"path": "a.txt", "content": "x"}),
    }
}

fn responded_with(call: ToolCall) -> EventKind {
    EventKind::ModelResponded {
        call_index: 0,
        response: ModelResponse {
            model: "m".into(),
            content: None,
            tool_calls: vec![call],
            usage: Usage {
                input_tokens: 1,
                output_tokens: 1,
            },
            stop_reason: Some("tool_calls".into()),
        },
        cost_usd: 0.0,
        retries: 0,
        latency_ms: 0,
    }
}

fn started() -> EventKind {
    EventKind::RunStarted {
        worker: "dead-worker".into(),
        recovered: false,
    }
}

#[tokio::test]
async fn a_run_with_tools_succeeds_and_journals_every_step() {
    let h = setup(&manifest("[tools.write_file]\n[tools.read_file]")).await;
    h.engine.start();
    let run = h
        .create(json!([
            {"tool": "write_file", "args": {"path": "a.txt", "content": "hello"}},
            {"tool": "read_file", "args": {"path": "a.txt"}},
            {"final": "all done"}
        ]))
        .await;
    let run = h.finish(&run).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    assert_eq!(run.output, Some(json!("all done")));
    assert_eq!(run.usage.model_calls, 3);
    assert_eq!(run.usage.tool_calls, 2);
    let kinds = h.kinds(&run).await;
    let read = kinds.iter().find_map(|k| match k {
        EventKind::ToolCallCompleted { tool, output, .. } if tool == "read_file" => Some(output),
        _ => None,
    });
    assert_eq!(read.map(String::as_str), Some("hello"));
    assert!(matches!(kinds.last(), Some(EventKind::RunSucceeded { .. })));
}

#[tokio::test]
async fn a_model_call_in_flight_at_a_crash_is_reissued_and_counted() {
    let h = setup(&manifest("")).await;
    let run = h.create(json!([{"final": "ok"}])).await;
    h.append(
        &run,
        vec![
            started(),
            EventKind::ModelRequested {
                call_index: 0,
                provider: "scripted".into(),
                model: "m".into(),
                reissue: false,
            },
        ],
    )
    .await;
    h.engine.start();
    let run = h.finish(&run).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    assert_eq!(run.usage.model_retries, 1);
    assert_eq!(run.usage.model_calls, 1);
    let kinds = h.kinds(&run).await;
    assert!(kinds.iter().any(|k| matches!(
        k,
        EventKind::ModelRequested {
            call_index: 0,
            reissue: true,
            ..
        }
    )));
    assert!(kinds.iter().any(|k| matches!(
        k,
        EventKind::RunStarted {
            recovered: true,
            ..
        }
    )));
}

#[tokio::test]
async fn a_started_non_idempotent_tool_call_is_not_rerun() {
    let h = setup(&manifest("[tools.write_file]\nidempotent = false")).await;
    let run = h
        .create(json!([{"tool": "write_file", "args": {"path": "a.txt", "content": "x"}}, {"final": "ok"}]))
        .await;
    h.append(
        &run,
        vec![
            started(),
            responded_with(write_call("call_0")),
            EventKind::PolicyDecided {
                call_id: "call_0".into(),
                tool: "write_file".into(),
                decision: PolicyDecision::Allow,
                reason: "test".into(),
            },
            EventKind::ToolCallStarted {
                call_id: "call_0".into(),
                tool: "write_file".into(),
                idempotent: false,
                rerun: false,
            },
        ],
    )
    .await;
    h.engine.start();
    let run = h.finish(&run).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.unwrap().code, ErrorCode::ToolOutcomeUnknown);
    assert!(
        !paddock_harness::tools::workspace_dir(&h.dir.path().join("workspaces"), &run.id)
            .join("a.txt")
            .exists(),
        "the tool must not have run again"
    );
}

#[tokio::test]
async fn a_started_idempotent_tool_call_is_rerun() {
    let h = setup(&manifest("[tools.write_file]")).await;
    let run = h
        .create(json!([{"tool": "write_file", "args": {"path": "a.txt", "content": "x"}}, {"final": "ok"}]))
        .await;
    h.append(
        &run,
        vec![
            started(),
            responded_with(write_call("call_0")),
            EventKind::PolicyDecided {
                call_id: "call_0".into(),
                tool: "write_file".into(),
                decision: PolicyDecision::Allow,
                reason: "test".into(),
            },
            EventKind::ToolCallStarted {
                call_id: "call_0".into(),
                tool: "write_file".into(),
                idempotent: true,
                rerun: false,
            },
        ],
    )
    .await;
    h.engine.start();
    let run = h.finish(&run).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    let kinds = h.kinds(&run).await;
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, EventKind::ToolCallStarted { rerun: true, .. }))
    );
    assert_eq!(run.usage.tool_calls, 1);
}

#[tokio::test]
async fn max_steps_ends_the_run_naming_the_limit() {
    let h = setup(&manifest("[limits]\nmax_steps = 3\n[tools.write_file]")).await;
    h.engine.start();
    let run = h
        .create(json!([{"tool": "write_file", "args": {"path": "a", "content": "x"}, "repeat": 5}, {"final": "ok"}]))
        .await;
    let run = h.finish(&run).await;
    assert_eq!(run.status, RunStatus::Failed);
    let e = run.error.unwrap();
    assert_eq!(e.code, ErrorCode::LimitExceeded);
    assert!(e.message.contains("max_steps"), "{}", e.message);
    assert!(run.usage.model_calls + run.usage.tool_calls <= 3);
}

#[tokio::test]
async fn max_tokens_ends_the_run_naming_the_limit() {
    let h = setup(&manifest("[limits]\nmax_tokens = 5\n[tools.write_file]")).await;
    h.engine.start();
    let run = h
        .create(json!([{"tool": "write_file", "args": {"path": "a", "content": "x"}, "repeat": 5}, {"final": "ok"}]))
        .await;
    let run = h.finish(&run).await;
    assert_eq!(run.status, RunStatus::Failed);
    let e = run.error.unwrap();
    assert_eq!(e.code, ErrorCode::LimitExceeded);
    assert!(e.message.contains("max_tokens"), "{}", e.message);
}

const SCHEMA: &str = r#"
[output_schema]
type = "object"
required = ["ok"]
[output_schema.properties.ok]
type = "boolean"
"#;

#[tokio::test]
async fn an_invalid_answer_gets_one_repair_turn() {
    let h = setup(&manifest(SCHEMA)).await;
    h.engine.start();
    let run = h
        .create(json!([{"final": {"bad": 1}}, {"final": {"ok": true}}]))
        .await;
    let run = h.finish(&run).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    assert_eq!(run.output, Some(json!({"ok": true})));
    let kinds = h.kinds(&run).await;
    let validations: Vec<bool> = kinds
        .iter()
        .filter_map(|k| match k {
            EventKind::OutputValidated { valid, .. } => Some(*valid),
            _ => None,
        })
        .collect();
    assert_eq!(validations, [false, true]);

    let run = h
        .create(json!([{"final": "not json"}, {"final": {"ok": "nope"}}]))
        .await;
    let run = h.finish(&run).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.unwrap().code, ErrorCode::OutputInvalid);
}

#[tokio::test]
async fn approvals_park_the_run_and_a_denial_goes_back_to_the_model() {
    let h = setup(&manifest("[tools.write_file]\napproval = \"always\"")).await;
    h.engine.start();
    let run = h
        .create(
            json!([{"tool": "write_file", "args": {"path": "a", "content": "x"}}, {"final": "ok"}]),
        )
        .await;
    let mut parked = None;
    for _ in 0..300 {
        let r = h
            .engine
            .store()
            .get_run(&h.scope, &run.id)
            .await
            .unwrap()
            .unwrap();
        if r.status == RunStatus::Waiting {
            parked = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(parked.is_some(), "run never parked");
    let approvals = h
        .engine
        .store()
        .list_approvals(&h.scope, None, None, 10)
        .await
        .unwrap();
    let a = &approvals.data[0];
    h.engine
        .decide(
            &h.scope,
            &run.id,
            &a.id,
            ApprovalDecision::Deny,
            Some("not today".into()),
        )
        .await
        .unwrap();
    let run = h.finish(&run).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    let kinds = h.kinds(&run).await;
    let denial = kinds.iter().find_map(|k| match k {
        EventKind::ToolCallCompleted {
            output,
            is_error: true,
            ..
        } => Some(output.clone()),
        _ => None,
    });
    assert!(denial.unwrap().contains("not today"));
    assert!(
        !paddock_harness::tools::workspace_dir(&h.dir.path().join("workspaces"), &run.id)
            .join("a")
            .exists(),
        "a denied call must not run"
    );
}

#[tokio::test]
async fn a_fatal_model_error_fails_the_run_with_model_error() {
    let h = setup(&manifest("")).await;
    h.engine.start();
    let run = h
        .create(json!([{"error": 400, "times": 1}, {"final": "ok"}]))
        .await;
    let run = h.finish(&run).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.unwrap().code, ErrorCode::ModelError);
}

#[tokio::test]
async fn the_timeout_limit_ends_the_run_as_timed_out() {
    let h = setup(&manifest("[limits]\ntimeout = \"1s\"")).await;
    h.engine.start();
    let run = h
        .create(json!([{"error": 429, "times": 10, "retry_after": 1}, {"final": "ok"}]))
        .await;
    let run = h.finish(&run).await;
    assert_eq!(run.status, RunStatus::TimedOut, "{run:?}");
    let e = run.error.unwrap();
    assert_eq!(e.code, ErrorCode::LimitExceeded);
    assert!(e.message.contains("timeout"), "{}", e.message);
}

#[tokio::test]
async fn runs_survive_a_restart_of_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let scope = Scope::default_workspace();
    let id = {
        let engine = engine_at(dir.path());
        let def = AgentDefinition {
            manifest: AgentManifest::from_toml(&manifest(
                "[tools.write_file]\napproval = \"always\"",
            ))
            .unwrap(),
            prompt: PROMPT.to_owned(),
        };
        engine.put_agent(&scope, def).await.unwrap();
        let run = engine
            .create_run(
                &scope,
                CreateRun {
                    agent: "t".into(),
                    input: json!({"mock": {"turns": [{"tool": "write_file", "args": {"path": "a", "content": "x"}}, {"final": "ok"}]}}),
                    metadata: None,
                },
            )
            .await
            .unwrap();
        // Not started: the run is queued when this engine goes away.
        run.id
    };
    let engine = engine_at(dir.path());
    engine.start();
    let mut approval = None;
    for _ in 0..300 {
        let page = engine
            .store()
            .list_approvals(&scope, None, None, 10)
            .await
            .unwrap();
        if let Some(a) = page.data.into_iter().next() {
            approval = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = approval.expect("the restarted engine picked the run up and parked it");
    engine
        .decide(&scope, &id, &a.id, ApprovalDecision::Approve, None)
        .await
        .unwrap();
    let run = engine
        .wait(&scope, &id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    assert!(
        paddock_harness::tools::workspace_dir(&dir.path().join("workspaces"), &id)
            .join("a")
            .exists()
    );
}
