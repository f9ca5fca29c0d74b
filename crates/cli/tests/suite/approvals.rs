//! Human approvals through the real binary: a gated tool call parks the run in `waiting` with a
//! pending approval that survives a SIGKILL and restart of the server; approving it finishes the
//! run (and the tool really runs), approving twice is a 409. Denying hands the denial to the model
//! as the tool's result and the run still finishes without running the tool; cancelling a
//! waiting run ends it as `cancelled`.

use super::{OPENAI, assert_problem, bin, final_answer, find_files, of_type, options, write};
use paddock_test_support::{AgentFixture, Api, MockLlm, Server, mock_input};
use serde_json::{Value, json};

/// Waits until `run_id` is parked and returns its pending approval from the listing.
async fn pending_approval(api: &Api, run_id: &str) -> Value {
    let run = api.wait_status(run_id, "waiting").await;
    assert!(run["output"].is_null(), "{run}");
    let r = api.get_json("/v1/approvals?status=pending").await;
    assert_eq!(r.status, 200, "{r:?}");
    let mine: Vec<&Value> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["run_id"] == run_id)
        .collect();
    assert_eq!(mine.len(), 1, "pending approvals of {run_id}: {r:?}");
    let a = mine[0].clone();
    assert_eq!(a["status"], "pending", "{a}");
    assert_eq!(a["call"]["name"], "write_file", "{a}");
    a
}

fn gated_script(path: &str, output: Value) -> Value {
    mock_input(json!([write(path, "gated content"), final_answer(output)]))
}

async fn decide(
    api: &Api,
    run_id: &str,
    approval_id: &str,
    body: Value,
) -> paddock_test_support::Resp {
    api.post_json(&format!("/v1/runs/{run_id}/approvals/{approval_id}"), &body)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_approval_survives_a_crash_and_approving_finishes_the_run() {
    let mock = MockLlm::start(bin(), 0).await;
    let opts = options(&mock, vec![AgentFixture::new("gated", OPENAI).gated()])
        .config("[engine]\nlease_secs = 3\n");
    let mut server = Server::start(opts).await;
    let api = server.api();

    let run = api
        .create_run(
            "gated",
            &gated_script("approved.txt", json!({"approved": true})),
        )
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let approval = pending_approval(&api, &id).await;
    let approval_id = approval["id"].as_str().unwrap().to_owned();
    assert_eq!(
        approval["call"]["arguments"]["path"], "approved.txt",
        "{approval}"
    );
    assert!(find_files(server.data_dir(), "approved.txt").is_empty());

    server.kill_9();
    server.restart().await;
    let api = server.api();

    // Still parked, still pending, nothing ran.
    let run = api.get_run(&id).await;
    assert_eq!(run["status"], "waiting", "{run}");
    let again = pending_approval(&api, &id).await;
    assert_eq!(again["id"], approval_id.as_str());
    assert!(find_files(server.data_dir(), "approved.txt").is_empty());

    let r = decide(
        &api,
        &id,
        &approval_id,
        json!({"decision": "approve", "comment": "fine"}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let run = api.wait_terminal(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], json!({"approved": true}), "{run}");

    let journal = api.events(&id).await;
    let decided = of_type(&journal, "approval_decided");
    assert_eq!(decided.len(), 1, "{journal:#?}");
    assert_eq!(decided[0]["decision"], "approve");
    assert_eq!(decided[0]["approval_id"], approval_id.as_str());
    let completed = of_type(&journal, "tool_call_completed");
    assert_eq!(completed.len(), 1, "{journal:#?}");
    assert_eq!(completed[0]["is_error"], false, "{journal:#?}");
    let files = find_files(server.data_dir(), "approved.txt");
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), "gated content");

    // A second decision on the same approval is a conflict, and changes nothing.
    let r = decide(&api, &id, &approval_id, json!({"decision": "approve"})).await;
    assert_problem(&r, 409, "conflict", "approving twice");
    let r = decide(&api, &id, &approval_id, json!({"decision": "deny"})).await;
    assert_problem(&r, 409, "conflict", "denying after approving");
    assert_eq!(api.get_run(&id).await["last_seq"], run["last_seq"]);

    let r = api.get_json("/v1/approvals?status=pending").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["run_id"] != id.as_str()),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denying_reports_to_the_model_and_cancelling_a_waiting_run_ends_it() {
    let mock = MockLlm::start(bin(), 0).await;
    let server = Server::start(options(
        &mock,
        vec![AgentFixture::new("gated", OPENAI).gated()],
    ))
    .await;
    let api = server.api();

    // Deny: the call does not run, the model gets the denial as the tool result, the run goes on.
    let run = api
        .create_run(
            "gated",
            &gated_script("denied.txt", json!({"gave_up": true})),
        )
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let approval = pending_approval(&api, &id).await;
    let approval_id = approval["id"].as_str().unwrap();
    let r = decide(
        &api,
        &id,
        approval_id,
        json!({"decision": "deny", "comment": "not today"}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let run = api.wait_terminal(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], json!({"gave_up": true}), "{run}");
    let journal = api.events(&id).await;
    assert!(
        of_type(&journal, "tool_call_started").is_empty(),
        "{journal:#?}"
    );
    let pos = journal
        .iter()
        .position(|e| e["type"] == "tool_call_completed")
        .unwrap_or_else(|| panic!("no tool result for the denied call: {journal:#?}"));
    let result = &journal[pos];
    assert_eq!(result["is_error"], true, "{result}");
    let text = result["output"].as_str().unwrap();
    assert!(
        text.contains("denied") && text.contains("not today"),
        "{result}"
    );
    // The model was called again after the denial (with it in the conversation).
    assert!(
        journal[pos..]
            .iter()
            .any(|e| e["type"] == "model_responded"),
        "{journal:#?}"
    );
    assert!(find_files(server.data_dir(), "denied.txt").is_empty());

    // Cancel while waiting.
    let run = api
        .create_run(
            "gated",
            &gated_script("cancelled.txt", json!({"never": true})),
        )
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let approval = pending_approval(&api, &id).await;
    let approval_id = approval["id"].as_str().unwrap();
    let r = api
        .post_json(
            &format!("/v1/runs/{id}/cancel"),
            &json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["status"], "cancelled", "{r:?}");
    let run = api.wait_terminal(&id).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(run["error"]["code"], "cancelled", "{run}");
    assert_eq!(
        api.events(&id).await.last().unwrap()["type"],
        "run_cancelled"
    );
    let r = api.get_json("/v1/approvals?status=pending").await;
    assert!(
        r.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["run_id"] != id.as_str()),
        "a cancelled run still has a pending approval: {r:?}"
    );
    let r = decide(&api, &id, approval_id, json!({"decision": "approve"})).await;
    assert_problem(&r, 409, "conflict", "approving for a cancelled run");
    let r = api
        .post_json(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await;
    assert_problem(&r, 409, "conflict", "cancelling twice");
    assert!(find_files(server.data_dir(), "cancelled.txt").is_empty());
}
