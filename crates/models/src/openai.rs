//! The OpenAI chat completions wire format, as spoken by OpenAI and the many servers imitating
//! it (vLLM, Ollama, llama.cpp, LiteLLM, …), which is why every response field is optional.

use crate::ModelRequest;
use crate::http::{StreamState as Stream, parse_arguments};
use crate::retry::AttemptError;
use eventsource_stream::Event;
use paddock_types::{Message, ModelResponse, ToolCall, Usage};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

pub(crate) fn request_body(req: &ModelRequest<'_>, stream: bool) -> Value {
    let messages: Vec<Value> = req.messages.iter().map(message).collect();
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("messages".into(), Value::Array(messages));
    if !req.tools.is_empty() {
        let tools = req
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters,
                }})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    body.insert("max_tokens".into(), json!(req.max_output_tokens));
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

fn message(m: &Message) -> Value {
    match m {
        Message::System { content } => json!({"role": "system", "content": content}),
        Message::User { content } => json!({"role": "user", "content": content}),
        Message::Assistant {
            content,
            tool_calls,
        } => {
            let mut v = json!({"role": "assistant", "content": content});
            // OpenAI rejects an empty `tool_calls` array.
            if !tool_calls.is_empty() {
                let calls: Vec<Value> = tool_calls
                    .iter()
                    .map(|c| {
                        json!({"id": c.id, "type": "function", "function": {
                            "name": c.name, "arguments": arguments_text(&c.arguments),
                        }})
                    })
                    .collect();
                v["tool_calls"] = Value::Array(calls);
            }
            v
        }
        Message::Tool {
            call_id,
            content,
            is_error,
            ..
        } => {
            let content = if *is_error {
                format!("error: {content}")
            } else {
                content.clone()
            };
            json!({"role": "tool", "tool_call_id": call_id, "content": content})
        }
    }
}

/// Arguments kept verbatim because they were not JSON go back exactly as the model wrote them.
fn arguments_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

impl WireUsage {
    fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens.unwrap_or(0),
            output_tokens: self.completion_tokens.unwrap_or(0),
        }
    }
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Completion {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Option<Vec<Choice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<ChoiceMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Debug, Deserialize)]
struct WireToolCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

pub(crate) fn parse_body(body: &[u8], requested_model: &str) -> Result<ModelResponse, String> {
    let c: Completion = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let choice = c
        .choices
        .and_then(|cs| cs.into_iter().next())
        .ok_or("no choices")?;
    let msg = choice.message.ok_or("no message in the first choice")?;
    let tool_calls = msg
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, tc)| {
            let (name, args) = tc
                .function
                .map(|f| (f.name.unwrap_or_default(), f.arguments.unwrap_or_default()))
                .unwrap_or_default();
            ToolCall {
                id: tc.id.unwrap_or_else(|| format!("call_{i}")),
                name,
                arguments: parse_arguments(&args),
            }
        })
        .collect();
    Ok(ModelResponse {
        model: c.model.unwrap_or_else(|| requested_model.to_owned()),
        content: msg.content.filter(|s| !s.is_empty()),
        tool_calls,
        usage: c.usage.map(|u| u.usage()).unwrap_or_default(),
        stop_reason: choice.finish_reason,
    })
}

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Option<Vec<ChunkChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<DeltaToolCall>>,
}

#[derive(Debug, Deserialize)]
struct DeltaToolCall {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Debug, Default)]
struct PartialCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

/// Chat completion chunks folded together.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    model: Option<String>,
    content: String,
    calls: BTreeMap<usize, PartialCall>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl Stream for StreamState {
    fn feed(&mut self, event: &Event) -> Result<bool, AttemptError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            return Ok(true);
        }
        if data.is_empty() {
            return Ok(false);
        }
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|e| AttemptError::retryable(format!("malformed stream chunk: {e}")))?;
        if let Some(err) = chunk.error {
            return Err(AttemptError::retryable(format!(
                "the provider reported an error mid-stream: {err}"
            )));
        }
        if self.model.is_none() {
            self.model = chunk.model.filter(|m| !m.is_empty());
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u.usage());
        }
        for choice in chunk.choices.unwrap_or_default().into_iter().take(1) {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content {
                    self.content.push_str(&text);
                }
                for (i, tc) in delta.tool_calls.unwrap_or_default().into_iter().enumerate() {
                    let slot = self.calls.entry(tc.index.unwrap_or(i)).or_default();
                    if let Some(id) = tc.id.filter(|id| !id.is_empty()) {
                        slot.id = Some(id);
                    }
                    if let Some(f) = tc.function {
                        if let Some(name) = f.name {
                            slot.name.push_str(&name);
                        }
                        if let Some(args) = f.arguments {
                            slot.arguments.push_str(&args);
                        }
                    }
                }
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        Ok(false)
    }

    fn finish(self, requested_model: &str) -> Result<ModelResponse, AttemptError> {
        let Some(stop_reason) = self.finish_reason else {
            return Err(AttemptError::retryable(
                "stream ended without a finish_reason",
            ));
        };
        let tool_calls = self
            .calls
            .into_iter()
            .map(|(i, c)| ToolCall {
                id: c.id.unwrap_or_else(|| format!("call_{i}")),
                name: c.name,
                arguments: parse_arguments(&c.arguments),
            })
            .collect();
        Ok(ModelResponse {
            model: self.model.unwrap_or_else(|| requested_model.to_owned()),
            content: (!self.content.is_empty()).then_some(self.content),
            tool_calls,
            // Servers without `stream_options` support send no usage at all.
            usage: self.usage.unwrap_or_default(),
            stop_reason: Some(stop_reason),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_types::ToolSpec;

    fn ev(data: &str) -> Event {
        Event {
            event: String::new(),
            data: data.into(),
            id: String::new(),
            retry: None,
        }
    }

    #[test]
    fn the_request_maps_every_message_kind() {
        let messages = vec![
            Message::System {
                content: "sys".into(),
            },
            Message::User {
                content: "hi".into(),
            },
            Message::Assistant {
                content: None,
                tool_calls: vec![ToolCall {
                    id: "c1".into(),
                    name: "t".into(),
                    arguments: json!({"a": 1}),
                }],
            },
            Message::Tool {
                call_id: "c1".into(),
                name: "t".into(),
                content: "boom".into(),
                is_error: true,
            },
            Message::Assistant {
                content: Some("done".into()),
                tool_calls: vec![],
            },
        ];
        let tools = vec![ToolSpec {
            name: "t".into(),
            description: "d".into(),
            parameters: json!({"type": "object"}),
        }];
        let req = ModelRequest {
            model: "m",
            messages: &messages,
            tools: &tools,
            temperature: Some(0.5),
            top_p: None,
            max_output_tokens: 64,
            run_id: "r",
            call_index: 0,
        };
        let body = request_body(&req, true);
        assert_eq!(
            body,
            json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "sys"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "t", "arguments": "{\"a\":1}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "c1", "content": "error: boom"},
                    {"role": "assistant", "content": "done"},
                ],
                "tools": [{"type": "function", "function": {"name": "t", "description": "d", "parameters": {"type": "object"}}}],
                "max_tokens": 64,
                "temperature": 0.5,
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
        let plain = request_body(&ModelRequest { tools: &[], ..req }, false);
        assert!(plain.get("tools").is_none() && plain.get("stream").is_none());
    }

    #[test]
    fn fragments_are_joined() {
        let mut s = StreamState::default();
        for d in [
            r#"{"model":"gpt-x","choices":[{"index":0,"delta":{"role":"assistant","content":"He"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"llo"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c9","type":"function","function":{"name":"w","arguments":"{\"p\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#,
        ] {
            assert!(!s.feed(&ev(d)).unwrap());
        }
        assert!(s.feed(&ev("[DONE]")).unwrap());
        let r = s.finish("asked").unwrap();
        assert_eq!(r.model, "gpt-x");
        assert_eq!(r.content.as_deref(), Some("Hello"));
        assert_eq!(r.tool_calls[0].id, "c9");
        assert_eq!(r.tool_calls[0].arguments, json!({"p": 1}));
        assert_eq!(r.usage.total(), 10);
        assert_eq!(r.stop_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn incomplete_or_garbled_streams_are_retryable() {
        let mut s = StreamState::default();
        s.feed(&ev(r#"{"choices":[{"delta":{"content":"x"}}]}"#))
            .unwrap();
        assert!(s.feed(&ev("[DONE]")).unwrap());
        assert!(matches!(s.finish("m"), Err(AttemptError::Retryable { .. })));
        let mut s = StreamState::default();
        assert!(matches!(
            s.feed(&ev("{not json")),
            Err(AttemptError::Retryable { .. })
        ));
        assert!(matches!(
            s.feed(&ev(r#"{"error":{"message":"overloaded"}}"#)),
            Err(AttemptError::Retryable { .. })
        ));
    }

    #[test]
    fn a_plain_body_parses() {
        let body = br#"{"model":"gpt-x","choices":[{"index":0,"message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"c1","type":"function","function":{"name":"t","arguments":"not json"}}]},
            "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#;
        let r = parse_body(body, "m").unwrap();
        assert_eq!(r.content, None);
        assert_eq!(r.tool_calls[0].arguments, json!("not json"));
        assert_eq!(r.usage.input_tokens, 5);
        assert!(parse_body(br#"{"choices":[]}"#, "m").is_err());
    }
}
