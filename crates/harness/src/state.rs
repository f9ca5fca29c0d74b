//! [`RunState`]: everything the loop needs to decide, folded from the journal.

use paddock_types::event::{ApprovalDecision, PolicyDecision};
use paddock_types::time::Millis;
use paddock_types::{ApprovalId, Event, EventKind, Message, ToolCall};
use serde_json::Value;
use std::collections::VecDeque;

/// A tool call from the latest model response that has not completed yet.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingCall {
    pub call: ToolCall,
    pub decision: Option<PolicyDecision>,
    pub approval: Option<ApprovalId>,
    pub approval_decision: Option<(ApprovalDecision, Option<String>)>,
    /// `tool_call_started` is journaled: after a crash the call's outcome is unknown.
    pub started: bool,
}

/// The fold of a run's journal. Build it with [`RunState::from_events`] and keep it current with
/// [`RunState::apply`]; the engine applies each event as it journals it, so deciding the next
/// step never re-reads history (per-step cost stays flat as the run grows).
#[derive(Debug, Clone, Default)]
pub struct RunState {
    pub agent: String,
    pub agent_version: String,
    pub input: Value,
    /// The conversation so far, in the order the model sees it.
    pub messages: Vec<Message>,
    pub last_seq: u64,
    pub terminal: bool,
    /// A `model_requested` whose response is not journaled (the call was in flight at a crash).
    pub model_in_flight: Option<u32>,
    pub next_call_index: u32,
    pub model_calls: u32,
    pub tool_calls: u32,
    pub tokens: u64,
    pub cost_usd: f64,
    pub pending: VecDeque<PendingCall>,
    /// The model's answer without tool calls, not yet validated.
    pub final_answer: Option<String>,
    /// The one repair turn after an invalid final answer has been used.
    pub repair_used: bool,
    /// A worker started the run and it did not park or end since: if we are loading this state
    /// from the store, that worker died.
    pub active: bool,
    active_since: Option<Millis>,
    active_ms_closed: i64,
    last_at: Millis,
}

impl RunState {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut s = Self::default();
        for ev in events {
            s.apply(ev);
        }
        s
    }

    /// Steps taken so far (model calls plus tool calls), as `limits.max_steps` counts them.
    pub fn steps(&self) -> u32 {
        self.model_calls + self.tool_calls
    }

    /// Time the run spent active (not parked), in milliseconds, up to its last event.
    pub fn active_ms(&self) -> i64 {
        self.active_ms_closed
            + self
                .active_since
                .map(|since| (self.last_at - since).max(0))
                .unwrap_or(0)
    }

    fn pending_mut(&mut self, call_id: &str) -> Option<&mut PendingCall> {
        self.pending.iter_mut().find(|p| p.call.id == call_id)
    }

    fn close_activation(&mut self, at: Millis) {
        if let Some(since) = self.active_since.take() {
            self.active_ms_closed += (at - since).max(0);
        }
        self.active = false;
    }

    pub fn apply(&mut self, ev: &Event) {
        let prev_at = self.last_at;
        self.last_seq = ev.seq;
        self.last_at = ev.at;
        match &ev.kind {
            EventKind::RunCreated {
                agent,
                agent_version,
                input,
                system_prompt,
                user_message,
                ..
            } => {
                self.agent = agent.clone();
                self.agent_version = agent_version.clone();
                self.input = input.clone();
                self.messages = vec![
                    Message::System {
                        content: system_prompt.clone(),
                    },
                    Message::User {
                        content: user_message.clone(),
                    },
                ];
            }
            EventKind::RunStarted { .. } => {
                // A recovered worker's start closes the dead worker's activation at its last event.
                if self.active {
                    self.close_activation(prev_at);
                }
                self.active = true;
                self.active_since = Some(ev.at);
            }
            EventKind::ModelRequested { call_index, .. } => {
                self.model_in_flight = Some(*call_index);
            }
            EventKind::ModelResponded {
                call_index,
                response,
                cost_usd,
                ..
            } => {
                self.model_in_flight = None;
                self.next_call_index = call_index + 1;
                self.model_calls += 1;
                self.tokens += response.usage.total();
                self.cost_usd += cost_usd;
                self.messages.push(Message::Assistant {
                    content: response.content.clone(),
                    tool_calls: response.tool_calls.clone(),
                });
                self.pending = response
                    .tool_calls
                    .iter()
                    .map(|call| PendingCall {
                        call: call.clone(),
                        decision: None,
                        approval: None,
                        approval_decision: None,
                        started: false,
                    })
                    .collect();
                self.final_answer = if response.tool_calls.is_empty() {
                    Some(response.content.clone().unwrap_or_default())
                } else {
                    None
                };
            }
            EventKind::PolicyDecided {
                call_id, decision, ..
            } => {
                if let Some(p) = self.pending_mut(call_id) {
                    p.decision = Some(*decision);
                }
            }
            EventKind::ApprovalRequested { approval_id, call } => {
                if let Some(p) = self.pending_mut(&call.id) {
                    p.approval = Some(approval_id.clone());
                }
            }
            EventKind::ApprovalDecided {
                call_id,
                decision,
                comment,
                ..
            } => {
                if let Some(p) = self.pending_mut(call_id) {
                    p.approval_decision = Some((*decision, comment.clone()));
                }
            }
            EventKind::ToolCallStarted { call_id, .. } => {
                if let Some(p) = self.pending_mut(call_id) {
                    p.started = true;
                }
            }
            EventKind::ToolCallCompleted {
                call_id,
                tool,
                output,
                is_error,
                ..
            } => {
                self.pending.retain(|p| p.call.id != *call_id);
                self.tool_calls += 1;
                self.messages.push(Message::Tool {
                    call_id: call_id.clone(),
                    name: tool.clone(),
                    content: output.clone(),
                    is_error: *is_error,
                });
            }
            EventKind::OutputValidated { valid, errors } => {
                if !*valid {
                    self.repair_used = true;
                    self.final_answer = None;
                    self.messages.push(Message::User {
                        content: repair_prompt(errors),
                    });
                }
            }
            EventKind::EgressStarted { .. }
            | EventKind::EgressRequest { .. }
            | EventKind::EgressOmitted { .. } => {}
            EventKind::RunWaiting { .. } => self.close_activation(ev.at),
            EventKind::RunSucceeded { .. }
            | EventKind::RunFailed { .. }
            | EventKind::RunTimedOut { .. }
            | EventKind::RunCancelled { .. } => {
                self.close_activation(ev.at);
                self.terminal = true;
            }
        }
    }
}

/// The message that asks the model to fix an answer that failed the output schema.
fn repair_prompt(errors: &[String]) -> String {
    let mut s = String::from("Your final answer does not match the required output JSON Schema:\n");
    for e in errors {
        s.push_str("- ");
        s.push_str(e);
        s.push('\n');
    }
    s.push_str("Reply with only the corrected JSON value, no prose and no code fence.");
    s
}
