//! End-users and budgets through the real binary: `paddock end-users` and `paddock budgets`
//! set them up, an API key acts for each end-user with `Paddock-End-User`, a priced provider
//! (the mock LLM) spends money, one end-user's cap stops its run before the call that would
//! exceed it while another's runs go on, and `paddock usage` reports it per end-user.

use super::{OPENAI, bin, final_answer, options};
use paddock_test_support::{AgentFixture, MockLlm, Server, mock_input};
use serde_json::{Value, json};
use std::process::Command;

fn paddock(server: &Server, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PADDOCK_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .env("PADDOCK_SERVER", server.url())
        .env("PADDOCK_API_KEY", server.admin_key())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn run_for(server: &Server, end_user: &str, tool_calls: usize) -> Value {
    let api = server.api();
    let turns = json!([
        {"tool": "write_file", "args": {"path": "a.txt", "content": "x"}, "repeat": tool_calls},
        final_answer(json!("done"))
    ]);
    let r = api
        .send(
            api.http()
                .post(api.url("/v1/runs"))
                .header("Paddock-End-User", end_user)
                .json(&json!({"agent": "spender", "input": mock_input(turns)})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["created_by"].as_str().map(|k| &k[..4]), Some("key_"));
    let id = r.body["id"].as_str().unwrap().to_owned();
    for _ in 0..1200 {
        let r = api
            .send(
                api.http()
                    .get(api.url(&format!("/v1/runs/{id}")))
                    .header("Paddock-End-User", end_user),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        if ["succeeded", "failed"].contains(&r.body["status"].as_str().unwrap()) {
            return r.body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("run {id} never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_users_budget_stops_its_runs_and_usage_is_reported_per_end_user() {
    let mock = MockLlm::start(bin(), 0).await;
    let priced = format!(
        "[providers.{OPENAI}.prices.mock-model]\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\n\n"
    );
    let server =
        Server::start(options(&mock, vec![AgentFixture::new("spender", OPENAI)]).config(&priced))
            .await;

    let (ok, alice, err) = paddock(
        &server,
        &[
            "end-users",
            "create",
            "alice",
            "--metadata",
            r#"{"plan":"pro"}"#,
            "--output",
            "json",
        ],
    );
    assert!(ok, "{err}");
    let alice: Value = serde_json::from_str(&alice).unwrap();
    let alice_id = alice["id"].as_str().unwrap().to_owned();
    let (ok, _, err) = paddock(&server, &["end-users", "create", "bob"]);
    assert!(ok, "{err}");
    let (ok, listed, err) = paddock(&server, &["end-users", "list"]);
    assert!(ok, "{err}");
    assert_eq!(listed.lines().count(), 2, "{listed}");
    // Each end-user may spend two cents a day.
    let (ok, added, err) = paddock(
        &server,
        &[
            "budgets",
            "add",
            "--subject",
            "end-user",
            "--period",
            "day",
            "--limit-usd",
            "0.02",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        added.contains("end_user each") && added.contains("per day"),
        "{added}"
    );
    // Bad input is refused with the server's reason, and creates nothing.
    let (ok, _, err) = paddock(
        &server,
        &[
            "budgets",
            "add",
            "--subject",
            "workspace",
            "--period",
            "day",
            "--limit-usd=-1",
        ],
    );
    assert!(!ok && err.contains("validation_failed"), "{err}");
    let (_, listed, _) = paddock(&server, &["budgets", "list"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");

    let stopped = run_for(&server, "alice", 200).await;
    assert_eq!(stopped["status"], "failed", "{stopped}");
    assert_eq!(stopped["error"]["code"], "budget_exceeded", "{stopped}");
    assert_eq!(stopped["end_user"], alice_id.as_str());
    let calls = stopped["usage"]["model_calls"].as_u64().unwrap();
    assert!((1..201).contains(&calls), "{calls}");
    assert!(
        stopped["usage"]["cost_usd"].as_f64().unwrap() <= 0.02,
        "{stopped}"
    );
    // The mock saw exactly the calls the run journaled: the refused one was never sent.
    let stats = mock.stats().await;
    assert_eq!(stats["requests"].as_u64(), Some(calls), "{stats}");
    // Bob has his own cap.
    let bobs = run_for(&server, "bob", 2).await;
    assert_eq!(bobs["status"], "succeeded", "{bobs}");

    let (ok, usage, err) = paddock(
        &server,
        &["usage", "--group-by", "end_user", "--output", "json"],
    );
    assert!(ok, "{err}");
    let usage: Value = serde_json::from_str(&usage).unwrap();
    let rows = usage["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{usage}");
    let alice_row = rows
        .iter()
        .find(|r| r["end_user"] == alice_id.as_str())
        .unwrap();
    assert_eq!(alice_row["model_calls"].as_u64(), Some(calls));
    assert!(alice_row["cost_usd"].as_f64().unwrap() <= 0.02);
    assert_eq!(usage["total"]["model_calls"].as_u64(), Some(calls + 3));
    let (ok, table, err) = paddock(&server, &["usage"]);
    assert!(ok, "{err}");
    assert!(table.contains("total"), "{table}");

    // The CLI acts for an end-user too: Bob sees his run, not Alice's.
    let (alice_run, bob_run) = (
        stopped["id"].as_str().unwrap(),
        bobs["id"].as_str().unwrap(),
    );
    let (ok, listed, err) = paddock(
        &server,
        &["runs", "list", "--end-user", "bob", "--output", "json"],
    );
    assert!(ok, "{err}");
    assert!(
        listed.contains(bob_run) && !listed.contains(alice_run),
        "{listed}"
    );
    let (ok, _, err) = paddock(&server, &["runs", "get", alice_run, "--end-user", "bob"]);
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, usage, err) = paddock(&server, &["usage", "--end-user", "bob", "--output", "json"]);
    assert!(ok, "{err}");
    let usage: Value = serde_json::from_str(&usage).unwrap();
    assert_eq!(usage["total"]["model_calls"], 3, "{usage}");
}
