//! A run with five tool calls succeeds through `paddock serve` talking to `paddock mock-llm` over
//! both wire formats (OpenAI and Anthropic, streaming), its SSE stream delivers every journal
//! event once and in order (ids 1..=last_seq, identical to the JSON listing), and a reconnect with
//! `Last-Event-ID: k` receives exactly the events after k.

use super::{ANTHROPIC, OPENAI, bin, final_answer, find_files, of_type, start, write};
use paddock_test_support::{AgentFixture, Api, MockLlm, mock_input};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_run_streams_its_whole_journal_and_resumes_after_last_event_id() {
    let mock = MockLlm::start(bin(), 0).await;
    let server = start(&mock, vec![AgentFixture::new("e2e", OPENAI)]).await;
    five_tool_run(&server.api(), "e2e", server.data_dir()).await;
    let stats = mock.stats().await;
    assert!(stats["requests"].as_u64().unwrap() >= 6, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_run_streams_its_whole_journal_and_resumes_after_last_event_id() {
    let mock = MockLlm::start(bin(), 0).await;
    let server = start(&mock, vec![AgentFixture::new("e2e-anthropic", ANTHROPIC)]).await;
    five_tool_run(&server.api(), "e2e-anthropic", server.data_dir()).await;
    let stats = mock.stats().await;
    assert!(stats["requests"].as_u64().unwrap() >= 6, "{stats}");
}

async fn five_tool_run(api: &Api, agent: &str, data_dir: &std::path::Path) {
    let mut turns: Vec<_> = (0..5)
        .map(|i| write(&format!("file-{i}.txt"), &format!("content {i}")))
        .collect();
    turns.push(final_answer(json!({"ok": true, "files": 5})));
    let run = api.create_run(agent, &mock_input(json!(turns))).await;
    let id = run["id"].as_str().unwrap().to_owned();
    let events_path = format!("/v1/runs/{id}/events");

    // Subscribed while the run is in progress: the stream replays from the start, then follows.
    let streamed = api.sse(&events_path, None, None).await;
    let run = api.wait_terminal(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], json!({"ok": true, "files": 5}), "{run}");
    assert_eq!(run["usage"]["tool_calls"], 5, "{run}");
    assert_eq!(run["usage"]["model_calls"], 6, "{run}");
    assert_eq!(run["agent"], agent);
    let last_seq = run["last_seq"].as_u64().unwrap();

    let journal = api.events(&id).await;
    let seqs: Vec<u64> = journal.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=last_seq).collect::<Vec<_>>(), "journal seqs");
    let completed = of_type(&journal, "tool_call_completed");
    assert_eq!(completed.len(), 5, "{journal:#?}");
    assert!(
        completed.iter().all(|e| e["is_error"] == false),
        "{completed:#?}"
    );
    assert_eq!(journal.last().unwrap()["type"], "run_succeeded");

    // The stream: every event, in order, with id = seq, event = type, data = the event.
    let ids: Vec<String> = streamed.iter().map(|e| e.id.clone()).collect();
    let want: Vec<String> = (1..=last_seq).map(|s| s.to_string()).collect();
    assert_eq!(ids, want, "SSE ids");
    for (sse, ev) in streamed.iter().zip(&journal) {
        assert_eq!(
            sse.event,
            ev["type"].as_str().unwrap(),
            "SSE event name of {ev}"
        );
        assert_eq!(&sse.json(), ev, "SSE data of seq {}", sse.id);
    }

    // Resume from the middle: exactly what comes after k, then the stream ends.
    let k = last_seq / 2;
    assert!(k >= 1 && k < last_seq);
    let resumed = api.sse(&events_path, Some(&k.to_string()), None).await;
    let ids: Vec<String> = resumed.iter().map(|e| e.id.clone()).collect();
    let want: Vec<String> = (k + 1..=last_seq).map(|s| s.to_string()).collect();
    assert_eq!(ids, want, "SSE ids after Last-Event-ID {k}");
    for (sse, ev) in resumed.iter().zip(&journal[k as usize..]) {
        assert_eq!(&sse.json(), ev, "resumed SSE data of seq {}", sse.id);
    }

    // Resuming after the last event of an ended run yields nothing and ends at once.
    let none = api
        .sse(&events_path, Some(&last_seq.to_string()), None)
        .await;
    assert!(none.is_empty(), "{none:?}");

    // The tools really ran: each file holds what the model asked for.
    for i in 0..5 {
        let name = format!("file-{i}.txt");
        let found = find_files(&data_dir.join("workspaces"), &name);
        assert_eq!(
            found.len(),
            1,
            "{name} under the workspaces folder: {found:?}"
        );
        assert_eq!(
            std::fs::read_to_string(&found[0]).unwrap(),
            format!("content {i}")
        );
    }
}
