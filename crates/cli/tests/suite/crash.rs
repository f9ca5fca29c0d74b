//! Crash recovery through the real binary: 20 concurrent runs of 10 tool calls each are cut by a
//! SIGKILL of `paddock serve` about halfway through; a new process on the same data folder
//! finishes all of them. Nothing completed is redone: the model sees at most one repeated
//! request per run (the one in flight at the kill, same `Idempotency-Key`), and the server logs
//! of both processes show no tool call executed more than twice and at most one call per run
//! executed twice. Every journal ends with exactly 10 completed tool calls.

use super::{OPENAI, bin, final_answer, of_type, options, write};
use paddock_test_support::MockLlm;
use paddock_test_support::{AgentFixture, POLL, Server, WAIT, is_terminal, mock_input};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

const RUNS: usize = 20;
const TOOLS_PER_RUN: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flight_loses_nothing_and_repeats_only_the_call_in_flight() {
    let mock = MockLlm::start(bin(), 50).await;
    let opts = options(&mock, vec![AgentFixture::new("crash", OPENAI)])
        // A short lease so the new process may take over the dead one's runs quickly.
        .config("[engine]\nlease_secs = 3\n")
        .log_filter("info,paddock_engine=debug");
    let mut server = Server::start(opts).await;
    let api = server.api();

    let mut ids = Vec::new();
    for r in 0..RUNS {
        let mut turns: Vec<Value> = (0..TOOLS_PER_RUN)
            .map(|t| write(&format!("r{r}-t{t}.txt"), &format!("run {r} tool {t}")))
            .collect();
        turns.push(final_answer(json!({"run": r})));
        let run = api.create_run("crash", &mock_input(json!(turns))).await;
        ids.push(run["id"].as_str().unwrap().to_owned());
    }

    // Kill once about half of all tool calls are durable.
    let half = (RUNS * TOOLS_PER_RUN / 2) as u64;
    let start = Instant::now();
    let done_at_kill = loop {
        let runs = api.list_runs("agent=crash").await;
        let done: u64 = runs
            .iter()
            .map(|r| r["usage"]["tool_calls"].as_u64().unwrap())
            .sum();
        if done >= half {
            server.kill_9();
            assert!(
                !runs.iter().all(is_terminal),
                "every run ended before the kill, nothing was interrupted: {runs:?}"
            );
            break done;
        }
        if start.elapsed() > WAIT {
            panic!("only {done} tool calls done after {WAIT:?}; runs: {runs:#?}");
        }
        tokio::time::sleep(POLL).await;
    };
    assert!(done_at_kill < (RUNS * TOOLS_PER_RUN) as u64);

    server.restart().await;
    let api = server.api();

    let mut recovered_runs = 0;
    let mut completed_ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for id in &ids {
        let run = api.wait_terminal(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["usage"]["tool_calls"], TOOLS_PER_RUN, "{run}");
        let journal = api.events(id).await;
        let completed = of_type(&journal, "tool_call_completed");
        assert_eq!(completed.len(), TOOLS_PER_RUN, "run {id}: {journal:#?}");
        assert!(
            completed.iter().all(|e| e["is_error"] == false),
            "run {id}: {completed:#?}"
        );
        let call_ids: BTreeSet<String> = completed
            .iter()
            .map(|e| e["call_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            call_ids.len(),
            TOOLS_PER_RUN,
            "call ids of run {id} are not distinct"
        );
        completed_ids.insert(id.clone(), call_ids);
        if of_type(&journal, "run_started")
            .iter()
            .any(|e| e["recovered"] == true)
        {
            recovered_runs += 1;
        }
    }
    assert!(recovered_runs >= 1, "no run was recovered after the kill");

    // The model: at most one repeated request per run, and repeated at most once.
    let stats = mock.stats().await;
    let dups = stats["duplicate_keys"]
        .as_object()
        .unwrap_or_else(|| panic!("mock stats without duplicate_keys: {stats}"));
    let mut dup_keys_per_run: BTreeMap<&str, usize> = BTreeMap::new();
    for (key, count) in dups {
        let (run, _call_index) = key
            .split_once('/')
            .unwrap_or_else(|| panic!("idempotency key {key:?} is not <run_id>/<call_index>"));
        assert!(
            ids.iter().any(|i| i == run),
            "key {key:?} names no run of this test"
        );
        assert!(
            count.as_u64().unwrap() <= 2,
            "{key} was sent {count} times: {stats}"
        );
        *dup_keys_per_run.entry(run).or_default() += 1;
    }
    for (run, n) in &dup_keys_per_run {
        assert!(
            *n <= 1,
            "run {run} repeated {n} different model calls: {stats}"
        );
    }

    // The tools: from both processes' debug logs, count executions per (run, call).
    let logs = server.stderr_per_process();
    assert_eq!(logs.len(), 2, "expected exactly two server processes");
    let executions = tool_executions(&logs.join("\n"));
    let before_kill = tool_executions(&logs[0]);
    assert!(
        !before_kill.is_empty(),
        "the first process logged no tool execution; is PADDOCK_LOG honoured?\n{}",
        logs[0]
    );
    for id in &ids {
        let logged: BTreeSet<String> = executions
            .keys()
            .filter(|(run, _)| run == id)
            .map(|(_, call)| call.clone())
            .collect();
        assert_eq!(
            &logged, &completed_ids[id],
            "calls executed by run {id} (per the logs) differ from those completed (per the journal)"
        );
        let twice: Vec<_> = executions
            .iter()
            .filter(|((run, _), n)| run == id && **n >= 2)
            .collect();
        assert!(
            twice.len() <= 1,
            "run {id}: more than one call executed twice: {twice:?}"
        );
        for ((_, call), n) in executions.iter().filter(|((run, _), _)| run == id) {
            assert!(*n <= 2, "run {id}: call {call} executed {n} times");
        }
    }
}

/// `(run_id, call_id)` → how many "tool executing" debug lines name it.
fn tool_executions(log: &str) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for line in log.lines().map(strip_ansi) {
        if !line.contains("tool executing") {
            continue;
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_owned))
                .unwrap_or_else(|| panic!("no {name}= in log line {line:?}"))
        };
        *counts
            .entry((field("run_id"), field("call_id")))
            .or_insert(0) += 1;
    }
    counts
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequence: ESC [ params final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn tool_execution_lines_are_parsed_with_or_without_colours() {
    let plain = "2026-01-01T00:00:00.000Z DEBUG paddock_engine::drive: tool executing \
                 run_id=run_a call_id=call_1 tool=write_file\n\
                 2026-01-01T00:00:00.000Z  INFO paddock_cli::serve: something else run_id=run_a";
    let coloured = "\u{1b}[2m2026-01-01T00:00:00.000Z\u{1b}[0m \u{1b}[34mDEBUG\u{1b}[0m \
                    \u{1b}[2mpaddock_engine::drive\u{1b}[0m\u{1b}[2m:\u{1b}[0m tool executing \
                    \u{1b}[3mrun_id\u{1b}[0m\u{1b}[2m=\u{1b}[0mrun_a \
                    \u{1b}[3mcall_id\u{1b}[0m\u{1b}[2m=\u{1b}[0mcall_1 \
                    \u{1b}[3mtool\u{1b}[0m\u{1b}[2m=\u{1b}[0mwrite_file";
    let counts = tool_executions(&format!("{plain}\n{coloured}"));
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(counts[&("run_a".to_owned(), "call_1".to_owned())], 2);
}
