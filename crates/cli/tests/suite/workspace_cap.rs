//! `[engine] max_running_per_workspace` through the real binary: with a cap of 1, five runs
//! created at once against a slow mock model all succeed, never more than one is `running` at
//! any observation (the rest wait in `queued` instead of being refused), and their journals show
//! each one starting only after the previous one ended.

use super::{OPENAI, bin, final_answer, options, write};
use paddock_test_support::{AgentFixture, MockLlm, Server, is_terminal, mock_input};
use serde_json::json;
use std::time::{Duration, Instant};

const RUNS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_cap_queues_the_excess_and_runs_it_later() {
    // Every model call takes 150 ms, so each run is in `running` for a while.
    let mock = MockLlm::start(bin(), 150).await;
    let opts = options(&mock, vec![AgentFixture::new("capped", OPENAI)])
        .config("[engine]\nmax_running_per_workspace = 1\n");
    let server = Server::start(opts).await;
    let api = server.api();

    let mut ids = Vec::new();
    for i in 0..RUNS {
        let turns = json!([
            write(&format!("f{i}.txt"), "x"),
            final_answer(json!({"n": i}))
        ]);
        let run = api.create_run("capped", &mock_input(turns)).await;
        assert!(
            run["status"] == "queued" || run["status"] == "running",
            "{run}"
        );
        ids.push(run["id"].as_str().unwrap().to_owned());
    }

    // Watch every status until all have ended.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut observations = 0;
    loop {
        let runs = api.list_runs("agent=capped").await;
        assert_eq!(runs.len(), RUNS);
        let running = runs.iter().filter(|r| r["status"] == "running").count();
        assert!(
            running <= 1,
            "{running} runs of the workspace running at once: {runs:?}"
        );
        observations += 1;
        if runs.iter().all(is_terminal) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "runs did not all end; last seen: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(observations > 1, "the runs ended before the first look");

    // All succeeded, and their running spans (run_started .. the end) do not overlap.
    let mut spans = Vec::new();
    for id in &ids {
        let run = api.get_run(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let events: Vec<paddock_types::Event> = api
            .events(id)
            .await
            .into_iter()
            .map(|e| serde_json::from_value(e).unwrap())
            .collect();
        let at = |ty: &str| {
            events
                .iter()
                .find(|e| e.kind.type_name() == ty)
                .unwrap_or_else(|| panic!("{id} has no {ty} event"))
                .at
        };
        spans.push((at("run_started"), at("run_succeeded"), id.clone()));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "{} started before {} ended: {spans:?}",
            pair[1].2,
            pair[0].2
        );
    }
}
