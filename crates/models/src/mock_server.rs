//! The mock LLM server behind `paddock mock-llm`: both wire formats, answers and faults from the
//! `mock` directive in the system prompt, and `GET /stats` so tests can check how often each
//! `Idempotency-Key` was sent.
//!
//! It is a test double: state lives in memory for the life of the process and nothing is
//! authenticated.

use crate::script::{Decision, Fault, FaultCounters, Reply, ScriptCache, Summary, decide};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Long agent conversations exceed axum's 2 MB default.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Streamed text is cut into this many pieces so clients really have to join deltas.
const TEXT_PIECES: usize = 3;

/// How many events of a streamed answer go out before a `drop` fault cuts the connection.
const EVENTS_BEFORE_DROP: usize = 2;

/// How long a dropped stream stays open after its last event.
const CUT_DELAY: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, Default)]
pub struct MockOptions {
    /// Delay before every model answer (faults included).
    pub latency_ms: u64,
}

/// Serves the mock LLM on an already-bound listener until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, opts: MockOptions) -> std::io::Result<()> {
    axum::serve(listener, router(opts)).await
}

/// The mock's routes, apart from serving so tests can drive it in-process.
pub fn router(opts: MockOptions) -> Router {
    let state = Arc::new(Mock {
        latency: Duration::from_millis(opts.latency_ms),
        scripts: ScriptCache::default(),
        faults: FaultCounters::default(),
        requests: AtomicU64::new(0),
        keys: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/messages", post(messages))
        .route("/stats", get(stats))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

struct Mock {
    latency: Duration,
    scripts: ScriptCache,
    faults: FaultCounters,
    requests: AtomicU64,
    /// Sends per `Idempotency-Key`.
    keys: Mutex<HashMap<String, u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    OpenAi,
    Anthropic,
}

async fn chat_completions(State(m): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    m.answer(Format::OpenAi, &headers, &body).await
}

async fn messages(State(m): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    m.answer(Format::Anthropic, &headers, &body).await
}

async fn stats(State(m): State<Arc<Mock>>) -> Response {
    let duplicates: BTreeMap<String, u64> = m
        .keys
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    axum::Json(json!({
        "requests": m.requests.load(Ordering::Relaxed),
        "duplicate_keys": duplicates,
    }))
    .into_response()
}

impl Mock {
    async fn answer(&self, format: Format, headers: &HeaderMap, body: &[u8]) -> Response {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let parsed: Result<Value, _> = serde_json::from_slice(body);
        let key = match headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
            Some(k) => k.to_owned(),
            // Without a key, the same conversation re-sent still counts as a repeat.
            None => {
                let mut h = DefaultHasher::new();
                match &parsed {
                    Ok(v) => v.get("messages").map(Value::to_string).hash(&mut h),
                    Err(_) => body.hash(&mut h),
                }
                format!("sha-{:016x}", h.finish())
            }
        };
        *self
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_insert(0) += 1;
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }

        let v = match parsed {
            Ok(v) => v,
            Err(e) => return error(format, 400, &format!("request body is not JSON: {e}"), None),
        };
        let summary = match format {
            Format::OpenAi => summarize_openai(&v),
            Format::Anthropic => summarize_anthropic(&v),
        };
        let summary = match summary {
            Ok(s) => s,
            Err(e) => return error(format, 400, &e, None),
        };
        let script = match self.scripts.get(summary.system.as_deref()) {
            Ok(s) => s,
            Err(e) => return error(format, 400, &format!("invalid mock directive: {e}"), None),
        };
        let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let model = v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("mock-model")
            .to_owned();
        let position = summary.assistant_turns;
        match decide(script.as_deref(), &summary, || key, &self.faults) {
            Decision::Fault(Fault::Status {
                status,
                retry_after,
            }) => error(
                format,
                status,
                "injected by the mock directive",
                retry_after,
            ),
            Decision::Fault(Fault::Drop) => {
                // The real answer's first events, so the client is cut mid-way through it.
                let reply = script
                    .as_deref()
                    .map_or_else(|| Reply::Text(String::new()), |s| s.reply_at(position));
                let answer = Answer::new(reply, &summary, model, position);
                dropped(format, stream, &answer)
            }
            Decision::Reply(reply) => {
                let answer = Answer::new(reply, &summary, model, position);
                match (format, stream) {
                    (Format::OpenAi, false) => axum::Json(answer.openai_json()).into_response(),
                    (Format::OpenAi, true) => sse(answer.openai_events(), false),
                    (Format::Anthropic, false) => {
                        axum::Json(answer.anthropic_json()).into_response()
                    }
                    (Format::Anthropic, true) => sse(answer.anthropic_events(), false),
                }
            }
        }
    }
}

/// A fault response in the provider's error shape.
fn error(format: Format, status: u16, message: &str, retry_after: Option<u64>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match (format, status) {
        (Format::Anthropic, 529) => "overloaded_error",
        (_, 429) => "rate_limit_error",
        (_, 401) => "authentication_error",
        (_, 403) => "permission_error",
        (_, 404) => "not_found_error",
        (_, 400..=499) => "invalid_request_error",
        _ => "api_error",
    };
    let body = match format {
        Format::OpenAi => {
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        }
        Format::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
    };
    let mut resp = (code, axum::Json(body)).into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// An answer whose connection is cut: a streamed answer after a couple of events, without its
/// end marker; a plain one before any response at all.
fn dropped(format: Format, stream: bool, answer: &Answer) -> Response {
    if stream {
        let events = match format {
            Format::OpenAi => answer.openai_events(),
            Format::Anthropic => answer.anthropic_events(),
        };
        let head = events.into_iter().take(EVENTS_BEFORE_DROP).collect();
        sse(head, true)
    } else {
        // Failing the body before its first byte makes hyper close the connection without
        // writing the response head.
        let chunks = futures::stream::iter([Err::<Bytes, _>(cut_error())]);
        Body::from_stream(chunks).into_response()
    }
}

fn cut_error() -> std::io::Error {
    std::io::Error::other("mock fault: connection dropped")
}

/// An SSE response from ready-made events, optionally cut after them: a body error makes hyper
/// abort the connection instead of ending the chunked body cleanly.
fn sse(events: Vec<String>, cut: bool) -> Response {
    let events = futures::stream::iter(events.into_iter().map(|e| Ok(Bytes::from(e))));
    let body = if cut {
        let cut = futures::stream::once(async {
            // A pause first, so hyper flushes the head and the events: the client must see a
            // stream that started and then broke, not a connection refused an answer.
            tokio::time::sleep(CUT_DELAY).await;
            Err(cut_error())
        });
        Body::from_stream(events.chain(cut))
    } else {
        Body::from_stream(events)
    };
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn data_event(v: &Value) -> String {
    format!("data: {v}\n\n")
}

fn named_event(name: &str, v: &Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

/// Cuts `s` into about `n` pieces on character boundaries.
fn pieces(s: &str, n: usize) -> Vec<&str> {
    let chars = s.chars().count();
    if chars == 0 {
        return vec![s];
    }
    let per = chars.div_ceil(n.max(1));
    let mut out = Vec::new();
    let mut start = 0;
    for (count, (i, _)) in s.char_indices().enumerate() {
        if count > 0 && count % per == 0 {
            out.push(&s[start..i]);
            start = i;
        }
    }
    out.push(&s[start..]);
    out
}

/// One mock answer, renderable in either wire format.
struct Answer {
    reply: Reply,
    /// Tool arguments as the JSON text the wire formats carry.
    args_text: String,
    input_tokens: u64,
    output_tokens: u64,
    model: String,
    id: String,
}

impl Answer {
    fn new(reply: Reply, summary: &Summary<'_>, model: String, position: usize) -> Self {
        let usage = summary.usage(&reply);
        let args_text = match &reply {
            Reply::Tool(c) => c.arguments.to_string(),
            Reply::Text(_) => String::new(),
        };
        Answer {
            reply,
            args_text,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            model,
            id: format!("mock_{position}"),
        }
    }

    fn openai_finish(&self) -> &'static str {
        match self.reply {
            Reply::Text(_) => "stop",
            Reply::Tool(_) => "tool_calls",
        }
    }

    fn openai_usage(&self) -> Value {
        json!({
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        })
    }

    fn openai_json(&self) -> Value {
        let message = match &self.reply {
            Reply::Text(t) => json!({"role": "assistant", "content": t}),
            Reply::Tool(c) => json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": self.args_text}}
            ]}),
        };
        json!({
            "id": format!("chatcmpl-{}", self.id),
            "object": "chat.completion",
            "created": now_secs(),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.openai_finish()}],
            "usage": self.openai_usage(),
        })
    }

    fn openai_events(&self) -> Vec<String> {
        let id = format!("chatcmpl-{}", self.id);
        let created = now_secs();
        let chunk = |choices: Value, usage: Value| {
            data_event(&json!({
                "id": id, "object": "chat.completion.chunk", "created": created,
                "model": self.model, "choices": choices, "usage": usage,
            }))
        };
        let delta = |d: Value| json!([{"index": 0, "delta": d, "finish_reason": null}]);
        let mut out = vec![chunk(
            delta(json!({"role": "assistant", "content": ""})),
            Value::Null,
        )];
        match &self.reply {
            Reply::Text(t) => {
                for p in pieces(t, TEXT_PIECES) {
                    out.push(chunk(delta(json!({"content": p})), Value::Null));
                }
            }
            Reply::Tool(c) => {
                let args = pieces(&self.args_text, 2);
                for (i, part) in args.iter().enumerate() {
                    let call = if i == 0 {
                        json!({"index": 0, "id": c.id, "type": "function",
                               "function": {"name": c.name, "arguments": part}})
                    } else {
                        json!({"index": 0, "function": {"arguments": part}})
                    };
                    out.push(chunk(delta(json!({"tool_calls": [call]})), Value::Null));
                }
            }
        }
        out.push(chunk(
            json!([{"index": 0, "delta": {}, "finish_reason": self.openai_finish()}]),
            Value::Null,
        ));
        out.push(chunk(json!([]), self.openai_usage()));
        out.push("data: [DONE]\n\n".to_owned());
        out
    }

    fn anthropic_stop(&self) -> &'static str {
        match self.reply {
            Reply::Text(_) => "end_turn",
            Reply::Tool(_) => "tool_use",
        }
    }

    fn anthropic_json(&self) -> Value {
        let content = match &self.reply {
            Reply::Text(t) => json!([{"type": "text", "text": t}]),
            Reply::Tool(c) => {
                json!([{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}])
            }
        };
        json!({
            "id": format!("msg_{}", self.id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.anthropic_stop(),
            "stop_sequence": null,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
        })
    }

    fn anthropic_events(&self) -> Vec<String> {
        let mut out = vec![
            named_event(
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": format!("msg_{}", self.id), "type": "message", "role": "assistant",
                    "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": self.input_tokens, "output_tokens": 1},
                }}),
            ),
            named_event("ping", &json!({"type": "ping"})),
        ];
        let delta = |d: Value| {
            named_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0, "delta": d}),
            )
        };
        match &self.reply {
            Reply::Text(t) => {
                out.push(named_event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": 0,
                            "content_block": {"type": "text", "text": ""}}),
                ));
                for p in pieces(t, TEXT_PIECES) {
                    out.push(delta(json!({"type": "text_delta", "text": p})));
                }
            }
            Reply::Tool(c) => {
                out.push(named_event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": 0,
                            "content_block": {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}}),
                ));
                for p in pieces(&self.args_text, 2) {
                    out.push(delta(
                        json!({"type": "input_json_delta", "partial_json": p}),
                    ));
                }
            }
        }
        out.push(named_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ));
        out.push(named_event(
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": self.anthropic_stop(), "stop_sequence": null},
                    "usage": {"output_tokens": self.output_tokens}}),
        ));
        out.push(named_event(
            "message_stop",
            &json!({"type": "message_stop"}),
        ));
        out
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Text of a content value: a string, or the text of an array of blocks (tool results nest
/// their own content).
fn text_of(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        Value::Array(parts) => {
            let mut s = String::new();
            for p in parts {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    s.push_str(t);
                } else if let Some(c) = p.get("content") {
                    s.push_str(&text_of(c));
                }
            }
            Cow::Owned(s)
        }
        _ => Cow::Borrowed(""),
    }
}

fn messages_of(v: &Value) -> Result<&Vec<Value>, String> {
    v.get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| "the request has no \"messages\" array".to_owned())
}

fn summarize_openai(v: &Value) -> Result<Summary<'_>, String> {
    let mut s = Summary::default();
    for m in messages_of(v)? {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let text = m.get("content").map(text_of).unwrap_or_default();
        s.input_chars += text.len();
        match role {
            "system" | "developer" if s.system.is_none() => s.system = Some(text),
            "user" => s.last_user = Some(text),
            "assistant" => {
                s.assistant_turns += 1;
                for c in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let name = c.pointer("/function/name").and_then(Value::as_str);
                    s.input_chars += name.map_or(0, str::len);
                }
            }
            _ => {}
        }
    }
    Ok(s)
}

fn summarize_anthropic(v: &Value) -> Result<Summary<'_>, String> {
    let mut s = Summary::default();
    if let Some(system) = v.get("system") {
        let text = text_of(system);
        s.input_chars += text.len();
        s.system = Some(text);
    }
    for m in messages_of(v)? {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = m.get("content").unwrap_or(&Value::Null);
        let mut user_text = None;
        match content {
            Value::Array(blocks) => {
                for b in blocks {
                    match b.get("type").and_then(Value::as_str) {
                        Some("tool_use") => {
                            let name = b.get("name").and_then(Value::as_str);
                            s.input_chars += name.map_or(0, str::len);
                        }
                        Some("tool_result") => {
                            s.input_chars += b.get("content").map_or(0, |c| text_of(c).len());
                        }
                        _ => {
                            if let Some(t) = b.get("text").and_then(Value::as_str) {
                                s.input_chars += t.len();
                                user_text = Some(Cow::Borrowed(t));
                            }
                        }
                    }
                }
            }
            other => {
                let t = text_of(other);
                s.input_chars += t.len();
                user_text = Some(t);
            }
        }
        match role {
            "assistant" => s.assistant_turns += 1,
            "user" if user_text.is_some() => s.last_user = user_text,
            _ => {}
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_text_on_char_boundaries() {
        assert_eq!(pieces("abcdefg", 3), ["abc", "def", "g"]);
        assert_eq!(pieces("héllo", 2), ["hél", "lo"]);
        assert_eq!(pieces("", 3), [""]);
        assert_eq!(pieces("ab", 3), ["a", "b"]);
        assert_eq!(pieces("{}", 2).concat(), "{}");
    }

    #[test]
    fn both_formats_summarize_alike() {
        let openai = json!({"messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "t", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "ok"},
        ]});
        let anthropic = json!({"system": "sys", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "c", "name": "t", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c", "content": "ok"}]},
        ]});
        let a = summarize_openai(&openai).unwrap();
        let b = summarize_anthropic(&anthropic).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.assistant_turns, 1);
        assert_eq!(a.last_user.as_deref(), Some("hi"));
        assert_eq!(
            a.input_chars,
            "sys".len() + "hi".len() + "t".len() + "ok".len()
        );
        assert!(summarize_openai(&json!({})).is_err());
    }
}
