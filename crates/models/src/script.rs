//! The `mock` directive, obeyed by the scripted provider and the mock LLM server alike so a test
//! can swap one for the other and get the same conversation.
//!
//! The system prompt holds a fenced block: a line "```mock", JSON, then a line "```". The JSON is
//! `{"turns": [...]}`; answer turns (`tool`, `final`, `text`) are taken in order, one per model
//! call, the position being the number of assistant messages already in the conversation. Fault
//! turns (`error`, `drop`) do not take a position: they make the first `times` requests for the
//! next answer's position fail.

use paddock_types::{Message, ToolCall, Usage};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

pub(crate) const EXHAUSTED: &str = "(mock script exhausted)";

/// How much of the last user message the no-directive echo repeats.
const ECHO_MAX_CHARS: usize = 200;

/// Parsed directives kept by the cache before it starts over; each distinct prompt costs one.
const CACHE_CAP: usize = 256;

/// What is wrong with a directive, phrased for whoever wrote the prompt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ScriptError(String);

/// A fault the directive injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Answer with this HTTP status (and `Retry-After` seconds when given).
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Cut the connection before the answer is complete.
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FaultSpan {
    fault: Fault,
    times: u32,
}

#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Tool { name: String, args: Value },
    Text(String),
}

/// `count` consecutive positions from `start` answered the same way (`repeat`), kept as one
/// entry so a `repeat` of thousands costs nothing.
#[derive(Debug, Clone, PartialEq)]
struct Segment {
    start: usize,
    count: usize,
    answer: Answer,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Script {
    segments: Vec<Segment>,
    len: usize,
    faults: BTreeMap<usize, Vec<FaultSpan>>,
    last_text: Option<String>,
}

/// What the mock answers at one position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    Text(String),
    Tool(ToolCall),
}

impl Reply {
    fn output_chars(&self) -> usize {
        match self {
            Reply::Text(t) => t.len(),
            Reply::Tool(c) => c.name.len() + args_len(&c.arguments),
        }
    }
}

/// The parts of a request the mock looks at, whichever wire format it came in.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Summary<'a> {
    pub system: Option<Cow<'a, str>>,
    pub assistant_turns: usize,
    pub input_chars: usize,
    pub last_user: Option<Cow<'a, str>>,
}

impl<'a> Summary<'a> {
    pub fn of_messages(messages: &'a [Message]) -> Self {
        let mut s = Summary::default();
        for m in messages {
            match m {
                Message::System { content } => {
                    s.input_chars += content.len();
                    if s.system.is_none() {
                        s.system = Some(Cow::Borrowed(content));
                    }
                }
                Message::User { content } => {
                    s.input_chars += content.len();
                    s.last_user = Some(Cow::Borrowed(content));
                }
                Message::Assistant {
                    content,
                    tool_calls,
                } => {
                    s.assistant_turns += 1;
                    s.input_chars += content.as_ref().map_or(0, String::len);
                    s.input_chars += tool_calls.iter().map(|c| c.name.len()).sum::<usize>();
                }
                Message::Tool { content, .. } => s.input_chars += content.len(),
            }
        }
        s
    }

    /// Deterministic, non-zero usage: about four bytes per token.
    pub fn usage(&self, reply: &Reply) -> Usage {
        Usage {
            input_tokens: tokens(self.input_chars),
            output_tokens: tokens(reply.output_chars()),
        }
    }
}

fn tokens(chars: usize) -> u64 {
    u64::try_from(chars / 4).unwrap_or(u64::MAX).max(1)
}

/// Counting the argument bytes without serializing them: usage only has to be deterministic.
fn args_len(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Object(m) => m.iter().map(|(k, v)| k.len() + args_len(v)).sum(),
        Value::Array(a) => a.iter().map(args_len).sum(),
        _ => 1,
    }
}

/// The text between a "```mock" line and the next "```" line; `None` without an opening line.
pub(crate) fn find_block(system: &str) -> Result<Option<&str>, ScriptError> {
    // Most prompts have no directive: one substring search settles them.
    if !system.contains("```mock") {
        return Ok(None);
    }
    let mut offset = 0;
    let mut body_start = None;
    for line in system.split_inclusive('\n') {
        let trimmed = line.trim();
        match body_start {
            None if trimmed == "```mock" => body_start = Some(offset + line.len()),
            Some(start) if trimmed == "```" => return Ok(Some(&system[start..offset])),
            _ => {}
        }
        offset += line.len();
    }
    match body_start {
        None => Ok(None),
        Some(_) => Err(ScriptError(
            "the ```mock block has no closing ``` line".into(),
        )),
    }
}

/// Parses the JSON of a directive.
pub(crate) fn parse(block: &str) -> Result<Script, ScriptError> {
    let v: Value = serde_json::from_str(block)
        .map_err(|e| ScriptError(format!("the ```mock block is not valid JSON: {e}")))?;
    let Value::Object(top) = v else {
        return Err(ScriptError(
            "the ```mock block must be a JSON object like {\"turns\": [...]}".into(),
        ));
    };
    if let Some(k) = top.keys().find(|k| *k != "turns") {
        return Err(ScriptError(format!(
            "the ```mock block has an unknown field {k:?} (only \"turns\")"
        )));
    }
    let Some(Value::Array(turns)) = top.get("turns") else {
        return Err(ScriptError(
            "the ```mock block needs a \"turns\" array".into(),
        ));
    };
    let mut script = Script {
        segments: Vec::new(),
        len: 0,
        faults: BTreeMap::new(),
        last_text: None,
    };
    let mut pending: Vec<FaultSpan> = Vec::new();
    for (i, turn) in turns.iter().enumerate() {
        match parse_turn(turn).map_err(|e| ScriptError(format!("turns[{i}]: {e}")))? {
            Turn::Fault(f) => pending.push(f),
            Turn::Answer { answer, count } => {
                if count == 0 {
                    continue;
                }
                if !pending.is_empty() {
                    script
                        .faults
                        .entry(script.len)
                        .or_default()
                        .append(&mut pending);
                }
                if let Answer::Text(t) = &answer {
                    script.last_text = Some(t.clone());
                }
                script.segments.push(Segment {
                    start: script.len,
                    count,
                    answer,
                });
                script.len = script.len.saturating_add(count);
            }
        }
    }
    // Trailing faults hit the first position past the script.
    if !pending.is_empty() {
        script
            .faults
            .entry(script.len)
            .or_default()
            .append(&mut pending);
    }
    Ok(script)
}

enum Turn {
    Answer { answer: Answer, count: usize },
    Fault(FaultSpan),
}

const KINDS: [&str; 5] = ["tool", "final", "text", "error", "drop"];

fn parse_turn(v: &Value) -> Result<Turn, String> {
    let Value::Object(m) = v else {
        return Err("a turn must be a JSON object".into());
    };
    let kinds: Vec<&str> = KINDS.into_iter().filter(|k| m.contains_key(*k)).collect();
    let kind = match kinds.as_slice() {
        [k] => *k,
        [] => {
            return Err(
                "a turn needs one of \"tool\", \"final\", \"text\", \"error\", \"drop\"".into(),
            );
        }
        [a, b, ..] => return Err(format!("a turn cannot be both {a:?} and {b:?}")),
    };
    let allowed: &[&str] = match kind {
        "tool" => &["tool", "args", "repeat"],
        "error" => &["error", "times", "retry_after"],
        "drop" => &["drop", "times"],
        _ => &[kind],
    };
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("unknown field {k:?} in a {kind:?} turn"));
    }
    match kind {
        "tool" => {
            let Some(Value::String(name)) = m.get("tool") else {
                return Err("\"tool\" must be the tool's name as a string".into());
            };
            let args = m
                .get("args")
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new()));
            let count = match m.get("repeat") {
                None => 1,
                Some(r) => r
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or("\"repeat\" must be a non-negative integer")?,
            };
            Ok(Turn::Answer {
                answer: Answer::Tool {
                    name: name.clone(),
                    args,
                },
                count,
            })
        }
        "final" => {
            let text = match &m["final"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Ok(Turn::Answer {
                answer: Answer::Text(text),
                count: 1,
            })
        }
        "text" => match &m["text"] {
            Value::String(s) => Ok(Turn::Answer {
                answer: Answer::Text(s.clone()),
                count: 1,
            }),
            _ => Err("\"text\" must be a string".into()),
        },
        "error" => {
            let status = m["error"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .filter(|s| (400..=599).contains(s))
                .ok_or("\"error\" must be an HTTP error status (400 to 599)")?;
            let retry_after = match m.get("retry_after") {
                None | Some(Value::Null) => None,
                Some(r) => Some(
                    r.as_u64()
                        .ok_or("\"retry_after\" must be a non-negative integer (seconds)")?,
                ),
            };
            Ok(Turn::Fault(FaultSpan {
                fault: Fault::Status {
                    status,
                    retry_after,
                },
                times: times(m)?,
            }))
        }
        _ => {
            if m["drop"] != Value::Bool(true) {
                return Err("\"drop\" must be true".into());
            }
            Ok(Turn::Fault(FaultSpan {
                fault: Fault::Drop,
                times: times(m)?,
            }))
        }
    }
}

fn times(m: &Map<String, Value>) -> Result<u32, String> {
    match m.get("times") {
        None => Ok(1),
        Some(t) => t
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| "\"times\" must be a non-negative integer".into()),
    }
}

impl Script {
    fn faults_at(&self, position: usize) -> &[FaultSpan] {
        self.faults.get(&position).map_or(&[], Vec::as_slice)
    }

    /// The answer at `position`; past the end, the last text answer again.
    pub fn reply_at(&self, position: usize) -> Reply {
        let answer = if position < self.len {
            let i = self
                .segments
                .partition_point(|s| s.start + s.count <= position);
            self.segments.get(i).map(|s| &s.answer)
        } else {
            None
        };
        match answer {
            Some(Answer::Tool { name, args }) => Reply::Tool(ToolCall {
                id: format!("call_{position}"),
                name: name.clone(),
                arguments: args.clone(),
            }),
            Some(Answer::Text(t)) => Reply::Text(t.clone()),
            None => Reply::Text(
                self.last_text
                    .clone()
                    .unwrap_or_else(|| EXHAUSTED.to_owned()),
            ),
        }
    }
}

/// The fault the `count`-th request (1-based) for a position suffers: consecutive fault turns
/// before one answer apply one after the other.
fn fault_for(spans: &[FaultSpan], count: u32) -> Option<Fault> {
    let mut upto: u64 = 0;
    for s in spans {
        upto += u64::from(s.times);
        if u64::from(count) <= upto {
            return Some(s.fault);
        }
    }
    None
}

/// Requests seen per (request key, position), for positions that have faults only, so a
/// fault-free script keeps no state at all.
#[derive(Debug, Default)]
pub(crate) struct FaultCounters(Mutex<HashMap<String, u32>>);

impl FaultCounters {
    fn bump(&self, key: &str, position: usize) -> u32 {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(format!("{key}#{position}")).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    Fault(Fault),
    Reply(Reply),
}

/// Decides the fate of a request. `key` identifies the request across its retries and is only
/// built when the position has faults.
pub(crate) fn decide(
    script: Option<&Script>,
    summary: &Summary<'_>,
    key: impl FnOnce() -> String,
    counters: &FaultCounters,
) -> Decision {
    let Some(script) = script else {
        return Decision::Reply(Reply::Text(echo(summary.last_user.as_deref())));
    };
    let position = summary.assistant_turns;
    let spans = script.faults_at(position);
    if !spans.is_empty() {
        let count = counters.bump(&key(), position);
        if let Some(f) = fault_for(spans, count) {
            return Decision::Fault(f);
        }
    }
    Decision::Reply(script.reply_at(position))
}

fn echo(last_user: Option<&str>) -> String {
    match last_user {
        None => "echo: (no user message)".into(),
        Some(u) => {
            let short: String = u.chars().take(ECHO_MAX_CHARS).collect();
            format!("echo: {short}")
        }
    }
}

/// Parsed directives by block text: the same prompt comes back on every step of a run.
#[derive(Debug, Default)]
pub(crate) struct ScriptCache(Mutex<HashMap<String, Arc<Script>>>);

impl ScriptCache {
    /// The directive of a system prompt, `None` when it has none.
    pub fn get(&self, system: Option<&str>) -> Result<Option<Arc<Script>>, ScriptError> {
        let Some(block) = system.map(find_block).transpose()?.flatten() else {
            return Ok(None);
        };
        if let Some(s) = self.lock().get(block) {
            return Ok(Some(Arc::clone(s)));
        }
        // Parsed outside the lock: other requests need not wait for it.
        let script = Arc::new(parse(block)?);
        let mut map = self.lock();
        if map.len() >= CACHE_CAP {
            map.clear();
        }
        map.insert(block.to_owned(), Arc::clone(&script));
        Ok(Some(script))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Script>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn prompt(turns: Value) -> String {
        format!(
            "You are a test.\n```mock\n{}\n```\nBe brief.\n",
            json!({ "turns": turns })
        )
    }

    fn script(turns: Value) -> Script {
        let p = prompt(turns);
        parse(find_block(&p).unwrap().unwrap()).unwrap()
    }

    fn text(s: &str) -> Reply {
        Reply::Text(s.into())
    }

    #[test]
    fn no_directive_is_none_and_echoes() {
        assert_eq!(find_block("just a prompt\nwith ```mock inline"), Ok(None));
        assert_eq!(find_block(""), Ok(None));
        let msgs = vec![
            Message::System {
                content: "plain".into(),
            },
            Message::User {
                content: "hello there".into(),
            },
        ];
        let cache = ScriptCache::default();
        let summary = Summary::of_messages(&msgs);
        let s = cache.get(summary.system.as_deref()).unwrap();
        assert!(s.is_none());
        let d = decide(None, &summary, || "k".into(), &FaultCounters::default());
        assert_eq!(d, Decision::Reply(text("echo: hello there")));
    }

    #[test]
    fn the_fence_must_be_a_line_of_its_own() {
        let p = "see ```mock here\n```mock\n{\"turns\":[]}\n```\n";
        assert_eq!(find_block(p), Ok(Some("{\"turns\":[]}\n")));
        let p = "```mock  \r\n{\"turns\":[]}\r\n```\r\n";
        assert_eq!(find_block(p), Ok(Some("{\"turns\":[]}\r\n")));
        let p = "```mock\n{\"turns\":[]}\n```";
        assert_eq!(find_block(p), Ok(Some("{\"turns\":[]}\n")));
    }

    #[test]
    fn a_multi_line_block_inside_prose_parses() {
        // The shape of the bundled demo agent's rendered prompt.
        let p = "Write a note.\n\n```mock\n{\"turns\": [\n  {\"tool\": \"write_file\", \"args\": {\"path\": \"notes.md\", \"content\": \"# bees\\n\"}},\n  {\"final\": {\"topic\": \"bees\"}}\n]}\n```\n";
        let s = parse(find_block(p).unwrap().unwrap()).unwrap();
        let Reply::Tool(c) = s.reply_at(0) else {
            panic!()
        };
        assert_eq!(c.arguments["content"], "# bees\n");
        assert_eq!(s.reply_at(1), text("{\"topic\":\"bees\"}"));
    }

    #[test]
    fn malformed_directives_say_what_is_wrong() {
        let cases = [
            ("```mock\n{\"turns\":[]}\n", "no closing"),
            ("```mock\n{nope}\n```\n", "not valid JSON"),
            ("```mock\n[1]\n```\n", "JSON object"),
            ("```mock\n{\"turn\":[]}\n```\n", "unknown field \"turn\""),
            ("```mock\n{}\n```\n", "\"turns\" array"),
            (
                "```mock\n{\"turns\":[1]}\n```\n",
                "turns[0]: a turn must be",
            ),
            (
                "```mock\n{\"turns\":[{\"final\":1},{}]}\n```\n",
                "turns[1]: a turn needs one of",
            ),
            (
                "```mock\n{\"turns\":[{\"final\":1,\"tool\":\"x\"}]}\n```\n",
                "cannot be both",
            ),
            ("```mock\n{\"turns\":[{\"tool\":3}]}\n```\n", "tool's name"),
            (
                "```mock\n{\"turns\":[{\"tool\":\"t\",\"repeat\":-1}]}\n```\n",
                "\"repeat\"",
            ),
            (
                "```mock\n{\"turns\":[{\"tool\":\"t\",\"times\":1}]}\n```\n",
                "unknown field \"times\"",
            ),
            (
                "```mock\n{\"turns\":[{\"error\":200}]}\n```\n",
                "400 to 599",
            ),
            (
                "```mock\n{\"turns\":[{\"error\":429,\"retry_after\":\"1\"}]}\n```\n",
                "retry_after",
            ),
            (
                "```mock\n{\"turns\":[{\"drop\":false}]}\n```\n",
                "must be true",
            ),
            (
                "```mock\n{\"turns\":[{\"drop\":true,\"times\":1.5}]}\n```\n",
                "\"times\"",
            ),
            (
                "```mock\n{\"turns\":[{\"text\":1}]}\n```\n",
                "\"text\" must be a string",
            ),
        ];
        let cache = ScriptCache::default();
        for (p, want) in cases {
            let e = cache.get(Some(p)).unwrap_err();
            assert!(e.to_string().contains(want), "{p:?}: {e}");
        }
    }

    #[test]
    fn repeat_expands_into_positions_with_stable_ids() {
        let s = script(json!([
            {"tool": "write", "args": {"p": 1}, "repeat": 3},
            {"tool": "none", "repeat": 0},
            {"tool": "read"},
            {"final": {"ok": true}},
        ]));
        for i in 0..3 {
            let Reply::Tool(c) = s.reply_at(i) else {
                panic!("{i}")
            };
            assert_eq!(
                (c.id.as_str(), c.name.as_str()),
                (format!("call_{i}").as_str(), "write")
            );
            assert_eq!(c.arguments, json!({"p": 1}));
        }
        let Reply::Tool(c) = s.reply_at(3) else {
            panic!()
        };
        assert_eq!((c.id.as_str(), c.name.as_str()), ("call_3", "read"));
        assert_eq!(c.arguments, json!({}));
        assert_eq!(s.reply_at(4), text("{\"ok\":true}"));
        // Past the end: the last final answer again.
        assert_eq!(s.reply_at(5), text("{\"ok\":true}"));
        assert_eq!(s.reply_at(500), text("{\"ok\":true}"));
    }

    #[test]
    fn a_script_without_a_final_turn_runs_out() {
        let s = script(json!([{"tool": "t"}]));
        assert_eq!(s.reply_at(1), text(EXHAUSTED));
        assert_eq!(script(json!([])).reply_at(0), text(EXHAUSTED));
        let s = script(json!([{"text": "hi"}]));
        assert_eq!(s.reply_at(0), text("hi"));
    }

    #[test]
    fn faults_apply_to_the_next_answer_position_per_key() {
        let s = script(json!([
            {"tool": "t"},
            {"error": 429, "times": 2, "retry_after": 1},
            {"drop": true},
            {"tool": "t", "repeat": 2},
            {"error": 500},
        ]));
        let counters = FaultCounters::default();
        let at = |pos: usize, key: &str| {
            let summary = Summary {
                assistant_turns: pos,
                ..Summary::default()
            };
            decide(Some(&s), &summary, || key.into(), &counters)
        };
        let status = Decision::Fault(Fault::Status {
            status: 429,
            retry_after: Some(1),
        });
        assert!(matches!(at(0, "a"), Decision::Reply(Reply::Tool(_))));
        assert_eq!(at(1, "a"), status);
        assert_eq!(at(1, "b"), status, "another request key counts apart");
        assert_eq!(at(1, "a"), status);
        assert_eq!(at(1, "a"), Decision::Fault(Fault::Drop));
        assert!(matches!(at(1, "a"), Decision::Reply(Reply::Tool(_))));
        assert!(matches!(at(1, "a"), Decision::Reply(Reply::Tool(_))));
        // The repeated turn's second position has no fault.
        assert!(matches!(at(2, "a"), Decision::Reply(Reply::Tool(_))));
        // A trailing fault hits the position past the end.
        assert_eq!(
            at(3, "a"),
            Decision::Fault(Fault::Status {
                status: 500,
                retry_after: None
            })
        );
        assert_eq!(at(3, "a"), Decision::Reply(text(EXHAUSTED)));
        assert_eq!(
            counters.0.lock().unwrap().len(),
            3,
            "only faulty positions are counted"
        );
    }

    #[test]
    fn usage_is_deterministic_and_never_zero() {
        let msgs = vec![
            Message::System {
                content: "x".repeat(40),
            },
            Message::User {
                content: "y".repeat(20),
            },
        ];
        let summary = Summary::of_messages(&msgs);
        let u = summary.usage(&text("ab"));
        assert_eq!((u.input_tokens, u.output_tokens), (15, 1));
    }

    #[test]
    fn the_cache_returns_the_same_parse_and_stays_bounded() {
        let cache = ScriptCache::default();
        let p = prompt(json!([{"final": "a"}]));
        let a = cache.get(Some(&p)).unwrap().unwrap();
        let b = cache.get(Some(&p)).unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        for i in 0..(CACHE_CAP * 2) {
            cache.get(Some(&prompt(json!([{"final": i}])))).unwrap();
        }
        assert!(cache.lock().len() <= CACHE_CAP);
    }
}
