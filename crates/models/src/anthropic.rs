//! The Anthropic Messages wire format.

use crate::ModelRequest;
use crate::http::{StreamState as Stream, parse_arguments};
use crate::retry::AttemptError;
use eventsource_stream::Event;
use paddock_types::{Message, ModelResponse, ToolCall, Usage};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

pub(crate) fn request_body(req: &ModelRequest<'_>, stream: bool) -> Value {
    let mut system: Vec<&str> = Vec::new();
    // Consecutive messages of one role are merged: the API wants user and assistant turns to
    // alternate, and all tool results of a turn belong in one user message.
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    let mut push = |role: &'static str, block: Value| match turns.last_mut() {
        Some((r, blocks)) if *r == role => blocks.push(block),
        _ => turns.push((role, vec![block])),
    };
    for m in req.messages {
        match m {
            Message::System { content } => system.push(content),
            Message::User { content } => push("user", json!({"type": "text", "text": content})),
            Message::Assistant {
                content,
                tool_calls,
            } => {
                let text = content.as_deref().filter(|t| !t.is_empty());
                if let Some(t) = text {
                    push("assistant", json!({"type": "text", "text": t}));
                }
                for c in tool_calls {
                    push(
                        "assistant",
                        json!({"type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(&c.arguments)}),
                    );
                }
                // The API rejects empty content, and dropping the turn would shift the
                // conversation's alternation.
                if text.is_none() && tool_calls.is_empty() {
                    push("assistant", json!({"type": "text", "text": "(no content)"}));
                }
            }
            Message::Tool {
                call_id,
                content,
                is_error,
                ..
            } => push(
                "user",
                json!({"type": "tool_result", "tool_use_id": call_id, "content": content, "is_error": is_error}),
            ),
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();

    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("max_tokens".into(), json!(req.max_output_tokens));
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(messages));
    if !req.tools.is_empty() {
        let tools = req
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Value::Object(body)
}

/// `input` must be an object; arguments another provider produced as something else (kept
/// verbatim because they were not JSON) are wrapped rather than refused.
fn tool_input(args: &Value) -> Value {
    match args {
        Value::Object(_) => args.clone(),
        other => json!({ "input": other }),
    }
}

#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Cached prompt tokens are reported apart from `input_tokens`; they still count as input.
    fn input(&self) -> Option<u64> {
        let parts = [
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
        ];
        parts
            .iter()
            .any(Option::is_some)
            .then(|| parts.iter().flatten().sum())
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    /// Thinking and other block kinds carry nothing the harness uses.
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    content: Option<Vec<Block>>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

pub(crate) fn parse_body(body: &[u8], requested_model: &str) -> Result<ModelResponse, String> {
    let m: WireMessage = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for b in m.content.ok_or("no content")? {
        match b {
            Block::Text { text: t } => text.push_str(&t),
            Block::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id,
                name,
                arguments: input,
            }),
            Block::Other => {}
        }
    }
    let usage = m.usage.unwrap_or_default();
    Ok(ModelResponse {
        model: m.model.unwrap_or_else(|| requested_model.to_owned()),
        content: (!text.is_empty()).then_some(text),
        tool_calls,
        usage: Usage {
            input_tokens: usage.input().unwrap_or(0),
            output_tokens: usage.output_tokens.unwrap_or(0),
        },
        stop_reason: m.stop_reason,
    })
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: WireMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: Block,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta,
    },
    ContentBlockStop,
    MessageDelta {
        #[serde(default)]
        delta: Option<MessageDelta>,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    Error {
        #[serde(default)]
        error: Option<WireError>,
    },
    /// `ping` and whatever the API adds later.
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct MessageDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireError {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
}

#[derive(Debug)]
enum PartialBlock {
    Text(String),
    Tool {
        id: String,
        name: String,
        start_input: Value,
        json: String,
    },
}

/// Message stream events folded together.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    model: Option<String>,
    blocks: BTreeMap<usize, PartialBlock>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    stop_reason: Option<String>,
}

impl Stream for StreamState {
    fn feed(&mut self, event: &Event) -> Result<bool, AttemptError> {
        if event.data.trim().is_empty() {
            return Ok(false);
        }
        let ev: StreamEvent = serde_json::from_str(&event.data).map_err(|e| {
            AttemptError::retryable(format!("malformed {:?} stream event: {e}", event.event))
        })?;
        match ev {
            StreamEvent::MessageStart { message } => {
                self.model = message.model;
                if let Some(u) = message.usage {
                    self.input_tokens = u.input();
                    self.output_tokens = u.output_tokens;
                }
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                let block = match content_block {
                    Block::Text { text } => PartialBlock::Text(text),
                    Block::ToolUse { id, name, input } => PartialBlock::Tool {
                        id,
                        name,
                        start_input: input,
                        json: String::new(),
                    },
                    Block::Other => return Ok(false),
                };
                self.blocks.insert(index, block);
            }
            StreamEvent::ContentBlockDelta { index, delta } => {
                match (self.blocks.get_mut(&index), delta) {
                    (Some(PartialBlock::Text(t)), BlockDelta::TextDelta { text }) => {
                        t.push_str(&text);
                    }
                    (
                        Some(PartialBlock::Tool { json, .. }),
                        BlockDelta::InputJsonDelta { partial_json },
                    ) => {
                        json.push_str(&partial_json);
                    }
                    _ => {}
                }
            }
            StreamEvent::ContentBlockStop | StreamEvent::Other => {}
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(reason) = delta.and_then(|d| d.stop_reason) {
                    self.stop_reason = Some(reason);
                }
                if let Some(u) = usage {
                    // Both counts are cumulative when present.
                    if let Some(i) = u.input() {
                        self.input_tokens = Some(i);
                    }
                    if u.output_tokens.is_some() {
                        self.output_tokens = u.output_tokens;
                    }
                }
            }
            StreamEvent::MessageStop => return Ok(true),
            StreamEvent::Error { error } => {
                let (kind, message) = error.map(|e| (e.kind, e.message)).unwrap_or_default();
                let reason = format!("the provider reported {kind} mid-stream: {message}");
                return Err(
                    if matches!(
                        kind.as_str(),
                        "overloaded_error" | "api_error" | "rate_limit_error" | "timeout_error"
                    ) {
                        AttemptError::retryable(reason)
                    } else {
                        AttemptError::Fatal(reason)
                    },
                );
            }
        }
        Ok(false)
    }

    fn finish(self, requested_model: &str) -> Result<ModelResponse, AttemptError> {
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for block in self.blocks.into_values() {
            match block {
                PartialBlock::Text(t) => text.push_str(&t),
                PartialBlock::Tool {
                    id,
                    name,
                    start_input,
                    json,
                } => tool_calls.push(ToolCall {
                    id,
                    name,
                    arguments: if json.is_empty() {
                        start_input
                    } else {
                        parse_arguments(&json)
                    },
                }),
            }
        }
        Ok(ModelResponse {
            model: self.model.unwrap_or_else(|| requested_model.to_owned()),
            content: (!text.is_empty()).then_some(text),
            tool_calls,
            usage: Usage {
                input_tokens: self.input_tokens.unwrap_or(0),
                output_tokens: self.output_tokens.unwrap_or(0),
            },
            stop_reason: self.stop_reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_types::ToolSpec;

    fn ev(name: &str, data: Value) -> Event {
        Event {
            event: name.into(),
            data: data.to_string(),
            id: String::new(),
            retry: None,
        }
    }

    #[test]
    fn system_goes_on_top_and_tool_results_merge() {
        let messages = vec![
            Message::System {
                content: "sys".into(),
            },
            Message::User {
                content: "hi".into(),
            },
            Message::Assistant {
                content: Some("let me".into()),
                tool_calls: vec![
                    ToolCall {
                        id: "a".into(),
                        name: "t".into(),
                        arguments: json!({"x": 1}),
                    },
                    ToolCall {
                        id: "b".into(),
                        name: "t".into(),
                        arguments: json!("raw"),
                    },
                ],
            },
            Message::Tool {
                call_id: "a".into(),
                name: "t".into(),
                content: "ok".into(),
                is_error: false,
            },
            Message::Tool {
                call_id: "b".into(),
                name: "t".into(),
                content: "bad".into(),
                is_error: true,
            },
        ];
        let tools = vec![ToolSpec {
            name: "t".into(),
            description: "d".into(),
            parameters: json!({"type": "object"}),
        }];
        let req = ModelRequest {
            model: "claude",
            messages: &messages,
            tools: &tools,
            temperature: None,
            top_p: Some(0.9),
            max_output_tokens: 100,
            run_id: "r",
            call_index: 1,
        };
        let body = request_body(&req, false);
        assert_eq!(
            body,
            json!({
                "model": "claude",
                "max_tokens": 100,
                "system": "sys",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "let me"},
                        {"type": "tool_use", "id": "a", "name": "t", "input": {"x": 1}},
                        {"type": "tool_use", "id": "b", "name": "t", "input": {"input": "raw"}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "a", "content": "ok", "is_error": false},
                        {"type": "tool_result", "tool_use_id": "b", "content": "bad", "is_error": true},
                    ]},
                ],
                "tools": [{"name": "t", "description": "d", "input_schema": {"type": "object"}}],
                "top_p": 0.9f32,
            })
        );
    }

    #[test]
    fn a_full_stream_folds_into_one_response() {
        let mut s = StreamState::default();
        let events = [
            ev(
                "message_start",
                json!({"type": "message_start", "message": {"id": "m", "model": "claude-x", "content": [], "usage": {"input_tokens": 12, "output_tokens": 1}}}),
            ),
            ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            ev("ping", json!({"type": "ping"})),
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi "}}),
            ),
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "there"}}),
            ),
            ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "tu", "name": "w", "input": {}}}),
            ),
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\""}}),
            ),
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ":2}"}}),
            ),
            ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 1}),
            ),
            ev(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            ),
        ];
        for e in &events {
            assert!(!s.feed(e).unwrap());
        }
        assert!(
            s.feed(&ev("message_stop", json!({"type": "message_stop"})))
                .unwrap()
        );
        let r = s.finish("asked").unwrap();
        assert_eq!(r.model, "claude-x");
        assert_eq!(r.content.as_deref(), Some("Hi there"));
        assert_eq!(r.tool_calls.len(), 1);
        assert_eq!(r.tool_calls[0].arguments, json!({"a": 2}));
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 12,
                output_tokens: 9
            }
        );
        assert_eq!(r.stop_reason.as_deref(), Some("tool_use"));
    }

    #[test]
    fn error_events_are_retryable_only_when_transient() {
        let mut s = StreamState::default();
        let over = ev(
            "error",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        );
        assert!(matches!(s.feed(&over), Err(AttemptError::Retryable { .. })));
        let bad = ev(
            "error",
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}),
        );
        assert!(matches!(s.feed(&bad), Err(AttemptError::Fatal(_))));
    }

    #[test]
    fn a_plain_body_parses() {
        let body = br#"{"id":"m","type":"message","role":"assistant","model":"claude-x",
            "content":[{"type":"thinking","thinking":"hmm"},{"type":"text","text":"ok"}],
            "stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":4,"cache_read_input_tokens":10}}"#;
        let r = parse_body(body, "m").unwrap();
        assert_eq!(r.content.as_deref(), Some("ok"));
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 13,
                output_tokens: 4
            }
        );
        assert!(parse_body(b"{}", "m").is_err());
    }
}
