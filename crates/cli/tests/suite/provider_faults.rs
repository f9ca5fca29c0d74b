//! Provider faults injected by the real `paddock mock-llm`: 429s (with `Retry-After`), 500s and
//! a dropped connection are retried with the same `Idempotency-Key` and the run succeeds, with
//! the retries counted in its usage; a 500 that outlasts `max_retries = 3` and a 400 fail the run
//! with `model_error`, the 400 without any retry.

use super::{OPENAI, bin, final_answer, start, write};
use paddock_test_support::{AgentFixture, MockLlm, mock_input};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_retried_and_permanent_ones_fail_the_run() {
    let mock = MockLlm::start(bin(), 0).await;
    let server = start(&mock, vec![AgentFixture::new("faulty", OPENAI)]).await;
    let api = server.api();

    let then_succeed = |fault: Value| {
        mock_input(json!([
            fault,
            write("f.txt", "x"),
            final_answer(json!({"ok": true}))
        ]))
    };
    let then_final = |fault: Value| mock_input(json!([fault, final_answer(json!({"ok": true}))]));
    let cases = [
        (
            "429",
            then_succeed(json!({"error": 429, "times": 2, "retry_after": 1})),
        ),
        ("500", then_succeed(json!({"error": 500, "times": 2}))),
        ("drop", then_succeed(json!({"drop": true, "times": 1}))),
        ("500 x10", then_final(json!({"error": 500, "times": 10}))),
        ("400", then_final(json!({"error": 400, "times": 1}))),
    ];
    // All at once: the faults are per run, so they must not leak into each other.
    let mut ids = Vec::new();
    for (name, input) in &cases {
        let run = api.create_run("faulty", input).await;
        ids.push((*name, run["id"].as_str().unwrap().to_owned()));
    }
    let mut runs = std::collections::BTreeMap::new();
    for (name, id) in &ids {
        runs.insert(*name, api.wait_terminal(id).await);
    }
    let stats = mock.stats().await;
    // How many times the first model call of a run reached the mock (1 when not repeated).
    let sends = |name: &str| -> u64 {
        let id = &ids.iter().find(|(n, _)| *n == name).unwrap().1;
        stats["duplicate_keys"][format!("{id}/0")]
            .as_u64()
            .unwrap_or(1)
    };

    for (name, min_retries, min_sends) in [("429", 2, 3), ("500", 2, 3), ("drop", 1, 2)] {
        let run = &runs[name];
        assert_eq!(run["status"], "succeeded", "{name}: {run}");
        assert_eq!(run["output"], json!({"ok": true}), "{name}: {run}");
        assert_eq!(run["usage"]["tool_calls"], 1, "{name}: {run}");
        assert_eq!(run["usage"]["model_calls"], 2, "{name}: {run}");
        let retries = run["usage"]["model_retries"].as_u64().unwrap();
        assert!(retries >= min_retries, "{name}: {retries} retries: {run}");
        assert!(
            sends(name) >= min_sends,
            "{name}: retries did not reuse the Idempotency-Key: {stats}"
        );
    }

    let run = &runs["500 x10"];
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "model_error", "{run}");
    assert!(run["output"].is_null(), "{run}");
    // One try plus max_retries = 3.
    assert_eq!(sends("500 x10"), 4, "{stats}");

    let run = &runs["400"];
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "model_error", "{run}");
    assert_eq!(run["usage"]["model_retries"], 0, "{run}");
    assert_eq!(sends("400"), 1, "a 400 was retried: {stats}");
}
