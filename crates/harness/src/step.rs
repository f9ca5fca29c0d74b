//! [`next_step`]: given the folded state and the agent, what happens next.

use crate::agent::Agent;
use crate::state::{PendingCall, RunState};
use paddock_types::event::{ApprovalDecision, PolicyDecision};
use paddock_types::manifest::Approval;
use paddock_types::{ApprovalId, ErrorCode, EventKind, RunError, ToolCall};
use serde_json::Value;

/// The next thing a run needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Journal these decisions (no outside effect). Journaling a terminal event ends the run.
    Record(Vec<EventKind>),
    /// Call the model with the conversation in the state. `reissue` marks a call that was in
    /// flight when a previous worker died (it counts as a retry).
    CallModel { call_index: u32, reissue: bool },
    /// Run a tool. `rerun` marks an idempotent call that was started before a crash.
    RunTool {
        call: ToolCall,
        idempotent: bool,
        rerun: bool,
    },
    /// Parked on an approval: release the run until a decision arrives.
    Park,
    /// The run has ended.
    Done,
}

fn fail(code: ErrorCode, message: impl Into<String>) -> Step {
    Step::Record(vec![EventKind::RunFailed {
        error: RunError::new(code, message),
    }])
}

pub fn next_step(state: &RunState, agent: &Agent) -> Step {
    if state.terminal {
        return Step::Done;
    }
    let limits = &agent.manifest().limits;
    if state.tokens > limits.max_tokens {
        return fail(
            ErrorCode::LimitExceeded,
            format!(
                "max_tokens limit ({}) exceeded: {} tokens used",
                limits.max_tokens, state.tokens
            ),
        );
    }
    if let Some(max) = limits.max_cost_usd
        && state.cost_usd > max
    {
        return fail(
            ErrorCode::LimitExceeded,
            format!(
                "max_cost_usd limit ({max}) exceeded: {:.6} USD spent",
                state.cost_usd
            ),
        );
    }
    if let Some(call_index) = state.model_in_flight {
        return Step::CallModel {
            call_index,
            reissue: true,
        };
    }
    if let Some(p) = state.pending.front() {
        return pending_step(state, agent, p);
    }
    if let Some(answer) = &state.final_answer {
        return final_step(state, agent, answer);
    }
    if state.steps() >= limits.max_steps {
        return fail(
            ErrorCode::LimitExceeded,
            format!("max_steps limit ({}) reached", limits.max_steps),
        );
    }
    Step::CallModel {
        call_index: state.next_call_index,
        reissue: false,
    }
}

fn pending_step(state: &RunState, agent: &Agent, p: &PendingCall) -> Step {
    let call = &p.call;
    let Some(decision) = p.decision else {
        let (decision, reason) = match agent.tool_rule(&call.name) {
            None => (
                PolicyDecision::Deny,
                format!("tool {} is not enabled for this agent", call.name),
            ),
            Some(rule) if rule.approval == Approval::Always => (
                PolicyDecision::ApprovalRequired,
                "manifest requires approval".to_owned(),
            ),
            Some(_) => (PolicyDecision::Allow, "allowed by manifest".to_owned()),
        };
        return Step::Record(vec![EventKind::PolicyDecided {
            call_id: call.id.clone(),
            tool: call.name.clone(),
            decision,
            reason,
        }]);
    };
    let tool_error = |output: String| {
        Step::Record(vec![EventKind::ToolCallCompleted {
            call_id: call.id.clone(),
            tool: call.name.clone(),
            output,
            is_error: true,
            duration_ms: 0,
        }])
    };
    match decision {
        PolicyDecision::Deny => {
            let known: Vec<&str> = agent.tool_specs().iter().map(|t| t.name.as_str()).collect();
            return tool_error(format!(
                "tool call refused: {} is not an available tool (available: {})",
                call.name,
                known.join(", ")
            ));
        }
        PolicyDecision::ApprovalRequired => match (&p.approval, &p.approval_decision) {
            (None, _) => {
                let approval_id = ApprovalId::new();
                return Step::Record(vec![
                    EventKind::ApprovalRequested {
                        approval_id: approval_id.clone(),
                        call: call.clone(),
                    },
                    EventKind::RunWaiting { approval_id },
                ]);
            }
            (Some(_), None) => return Step::Park,
            (Some(_), Some((ApprovalDecision::Deny, comment))) => {
                let mut msg = String::from("tool call denied by a human approver");
                if let Some(c) = comment.as_deref().filter(|c| !c.trim().is_empty()) {
                    msg.push_str(": ");
                    msg.push_str(c);
                }
                return tool_error(msg);
            }
            (Some(_), Some((ApprovalDecision::Approve, _))) => {}
        },
        PolicyDecision::Allow => {}
    }
    let idempotent = agent.tool_idempotent(&call.name);
    if p.started {
        if !idempotent {
            return fail(
                ErrorCode::ToolOutcomeUnknown,
                format!(
                    "tool call {} ({}) was started before a crash and is not idempotent; its outcome is unknown",
                    call.id, call.name
                ),
            );
        }
        return Step::RunTool {
            call: call.clone(),
            idempotent,
            rerun: true,
        };
    }
    let limits = &agent.manifest().limits;
    if state.steps() >= limits.max_steps {
        return fail(
            ErrorCode::LimitExceeded,
            format!("max_steps limit ({}) reached", limits.max_steps),
        );
    }
    Step::RunTool {
        call: call.clone(),
        idempotent,
        rerun: false,
    }
}

fn final_step(state: &RunState, agent: &Agent, answer: &str) -> Step {
    if !agent.has_output_schema() {
        return Step::Record(vec![EventKind::RunSucceeded {
            output: loose_output(answer),
        }]);
    }
    let errors = match parse_json_answer(answer) {
        Ok(value) => match agent.validate_output(&value) {
            Ok(()) => {
                return Step::Record(vec![
                    EventKind::OutputValidated {
                        valid: true,
                        errors: vec![],
                    },
                    EventKind::RunSucceeded { output: value },
                ]);
            }
            Err(errors) => errors,
        },
        Err(e) => vec![format!("the answer is not JSON: {e}")],
    };
    let mut events = vec![EventKind::OutputValidated {
        valid: false,
        errors: errors.clone(),
    }];
    if state.repair_used {
        events.push(EventKind::RunFailed {
            error: RunError::new(
                ErrorCode::OutputInvalid,
                format!(
                    "final answer does not match the output schema after one repair turn: {}",
                    errors.join("; ")
                ),
            ),
        });
    }
    Step::Record(events)
}

/// Without an output schema: a JSON object or array stays structured, anything else is text.
fn loose_output(answer: &str) -> Value {
    let t = strip_fence(answer);
    if (t.starts_with('{') || t.starts_with('['))
        && let Ok(v) = serde_json::from_str::<Value>(t)
    {
        return v;
    }
    Value::String(answer.to_owned())
}

fn parse_json_answer(answer: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(strip_fence(answer))
}

/// Models often wrap JSON in a ```json fence; accept that.
fn strip_fence(s: &str) -> &str {
    let t = s.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").map(str::trim).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_code_fences() {
        assert_eq!(strip_fence("```json\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(strip_fence("  {\"a\":1} "), "{\"a\":1}");
        assert_eq!(strip_fence("```\n[1]\n```"), "[1]");
    }

    #[test]
    fn loose_output_keeps_text_and_structures_json() {
        assert_eq!(loose_output("hello"), Value::String("hello".into()));
        assert_eq!(loose_output("{\"a\":1}"), serde_json::json!({"a":1}));
        assert_eq!(loose_output("12"), Value::String("12".into()));
        assert_eq!(loose_output("{broken"), Value::String("{broken".into()));
    }
}

/// The loop as a pure function: each test builds a journal by hand and checks the next step.
#[cfg(test)]
mod machine {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::agent::Agent;
    use crate::state::RunState;
    use paddock_types::api::AgentDefinition;
    use paddock_types::{AgentManifest, Event, ModelResponse, Usage};
    use serde_json::json;

    fn agent(extra: &str) -> Agent {
        let toml = format!(
            "name = \"t\"\nversion = \"1.0.0\"\n[model]\nprovider = \"scripted\"\nname = \"m\"\n{extra}"
        );
        Agent::compile(AgentDefinition {
            manifest: AgentManifest::from_toml(&toml).unwrap(),
            prompt: "p".into(),
        })
        .unwrap()
    }

    struct Journal(Vec<Event>);

    impl Journal {
        fn new() -> Self {
            let mut j = Self(Vec::new());
            j.push(EventKind::RunCreated {
                agent: "t".into(),
                agent_version: "1.0.0".into(),
                input: json!({}),
                metadata: json!({}),
                system_prompt: "p".into(),
                user_message: "{}".into(),
                sandbox: "none".into(),
                end_user: None,
                created_by: None,
            });
            j.push(EventKind::RunStarted {
                worker: "w".into(),
                recovered: false,
            });
            j
        }
        fn push(&mut self, kind: EventKind) {
            let seq = self.0.len() as u64 + 1;
            self.0.push(Event { seq, at: 0, kind });
        }
        fn state(&self) -> RunState {
            RunState::from_events(&self.0)
        }
        fn respond(&mut self, index: u32, content: Option<&str>, calls: Vec<ToolCall>) {
            self.push(EventKind::ModelRequested {
                call_index: index,
                provider: "scripted".into(),
                model: "m".into(),
                reissue: false,
            });
            self.push(EventKind::ModelResponded {
                call_index: index,
                response: ModelResponse {
                    model: "m".into(),
                    content: content.map(str::to_owned),
                    tool_calls: calls,
                    usage: Usage {
                        input_tokens: 10,
                        output_tokens: 5,
                    },
                    stop_reason: None,
                },
                cost_usd: 0.0,
                retries: 0,
                latency_ms: 0,
            });
        }
        /// Journals whatever `Record` step comes next and returns the step after it.
        fn record_and_next(&mut self, agent: &Agent) -> Step {
            match next_step(&self.state(), agent) {
                Step::Record(kinds) => {
                    for k in kinds {
                        self.push(k);
                    }
                    next_step(&self.state(), agent)
                }
                other => panic!("expected a Record step, got {other:?}"),
            }
        }
    }

    fn call(name: &str) -> ToolCall {
        ToolCall {
            id: "call_0".into(),
            name: name.into(),
            arguments: json!({"path": "a", "content": "x"}),
        }
    }

    #[test]
    fn a_new_run_calls_the_model_and_an_unanswered_call_is_reissued() {
        let a = agent("");
        let mut j = Journal::new();
        assert_eq!(
            next_step(&j.state(), &a),
            Step::CallModel {
                call_index: 0,
                reissue: false
            }
        );
        j.push(EventKind::ModelRequested {
            call_index: 0,
            provider: "scripted".into(),
            model: "m".into(),
            reissue: false,
        });
        assert_eq!(
            next_step(&j.state(), &a),
            Step::CallModel {
                call_index: 0,
                reissue: true
            }
        );
    }

    #[test]
    fn an_allowed_tool_runs_and_its_result_leads_to_the_next_model_call() {
        let a = agent("[tools.write_file]");
        let mut j = Journal::new();
        j.respond(0, None, vec![call("write_file")]);
        let step = j.record_and_next(&a);
        assert_eq!(
            step,
            Step::RunTool {
                call: call("write_file"),
                idempotent: true,
                rerun: false
            }
        );
        j.push(EventKind::ToolCallStarted {
            call_id: "call_0".into(),
            tool: "write_file".into(),
            idempotent: true,
            rerun: false,
        });
        j.push(EventKind::ToolCallCompleted {
            call_id: "call_0".into(),
            tool: "write_file".into(),
            output: "ok".into(),
            is_error: false,
            duration_ms: 1,
        });
        assert_eq!(
            next_step(&j.state(), &a),
            Step::CallModel {
                call_index: 1,
                reissue: false
            }
        );
        assert_eq!(j.state().messages.len(), 4, "system, user, assistant, tool");
    }

    #[test]
    fn a_tool_that_is_not_enabled_is_refused_back_to_the_model() {
        let a = agent("[tools.read_file]");
        let mut j = Journal::new();
        j.respond(0, None, vec![call("write_file")]);
        let Step::Record(kinds) = j.record_and_next(&a) else {
            panic!("expected the refusal to be recorded");
        };
        assert!(
            matches!(&kinds[..], [EventKind::ToolCallCompleted { is_error: true, output, .. }] if output.contains("read_file")),
            "{kinds:?}"
        );
    }

    #[test]
    fn a_gated_tool_parks_until_decided_and_a_started_unsafe_call_is_not_rerun() {
        let a = agent("[tools.write_file]\napproval = \"always\"\nidempotent = false");
        let mut j = Journal::new();
        j.respond(0, None, vec![call("write_file")]);
        let Step::Record(kinds) = j.record_and_next(&a) else {
            panic!("expected an approval request");
        };
        assert!(matches!(
            &kinds[..],
            [
                EventKind::ApprovalRequested { .. },
                EventKind::RunWaiting { .. }
            ]
        ));
        for k in kinds {
            j.push(k);
        }
        assert_eq!(next_step(&j.state(), &a), Step::Park);
        j.push(EventKind::ApprovalDecided {
            approval_id: ApprovalId::new(),
            call_id: "call_0".into(),
            decision: ApprovalDecision::Approve,
            comment: None,
        });
        assert!(matches!(
            next_step(&j.state(), &a),
            Step::RunTool {
                idempotent: false,
                ..
            }
        ));
        j.push(EventKind::ToolCallStarted {
            call_id: "call_0".into(),
            tool: "write_file".into(),
            idempotent: false,
            rerun: false,
        });
        let Step::Record(kinds) = next_step(&j.state(), &a) else {
            panic!("expected a failure");
        };
        assert!(matches!(
            &kinds[..],
            [EventKind::RunFailed { error }] if error.code == ErrorCode::ToolOutcomeUnknown
        ));
    }

    #[test]
    fn a_final_answer_ends_the_run_and_limits_stop_it() {
        let a = agent("");
        let mut j = Journal::new();
        j.respond(0, Some("{\"a\": 1}"), vec![]);
        assert_eq!(
            next_step(&j.state(), &a),
            Step::Record(vec![EventKind::RunSucceeded {
                output: json!({"a": 1})
            }])
        );
        let a = agent("[limits]\nmax_tokens = 10");
        let mut j = Journal::new();
        j.respond(0, None, vec![call("write_file")]);
        assert!(matches!(
            next_step(&j.state(), &a),
            Step::Record(k) if matches!(&k[..], [EventKind::RunFailed { error }] if error.code == ErrorCode::LimitExceeded)
        ));
    }
}
