//! The API's happy paths and its answers to bad input, as redacted JSON snapshots.

use super::TestApp;
use axum::http::StatusCode;
use serde_json::{Value, json};

fn mock(turns: Value) -> Value {
    json!({"mock": {"turns": turns}})
}

macro_rules! snap {
    ($name:expr, $value:expr) => {
        insta::assert_json_snapshot!($name, $value, {
            ".id" => "[run_id]",
            ".created_by" => "[key_id]",
            ".data[].created_by" => "[key_id]",
            ".created_at" => "[ts]",
            ".updated_at" => "[ts]",
            ".usage.input_tokens" => "[n]",
            ".usage.output_tokens" => "[n]",
            ".data[].at" => "[ts]",
            ".data[].worker" => "[worker]",
            ".data[].latency_ms" => "[ms]",
            ".data[].duration_ms" => "[ms]",
            ".data[].approval_id" => "[approval_id]",
            ".data[].response.usage" => "[usage]",
            ".data[].system_prompt" => "[prompt]",
        })
    };
}

#[tokio::test]
async fn a_run_with_tools_succeeds_and_its_journal_is_listed() {
    let app = TestApp::new().await;
    let input = mock(json!([
        {"tool": "write_file", "args": {"path": "a.txt", "content": "hello"}},
        {"tool": "read_file", "args": {"path": "a.txt"}},
        {"final": {"ok": true}}
    ]));
    let (status, ctype, run) = app
        .post(
            "/v1/runs?wait=30",
            &json!({"agent": "notes", "input": input, "metadata": {"k": "v"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(ctype.as_deref(), Some("application/json"));
    snap!("run_succeeded", &run);
    let id = run["id"].as_str().unwrap();
    let (status, _, events) = app.get(&format!("/v1/runs/{id}/events?after=0")).await;
    assert_eq!(status, StatusCode::OK);
    snap!("run_events", &events);
    let (_, _, events) = app.get(&format!("/v1/runs/{id}/events?after=10")).await;
    let seqs: Vec<u64> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.iter().all(|s| *s > 10), "{seqs:?}");
    assert_eq!(seqs.last().copied(), run["last_seq"].as_u64());
}

#[tokio::test]
async fn approval_round_trip_and_listing() {
    let app = TestApp::new().await;
    let input = mock(json!([
        {"tool": "write_file", "args": {"path": "a.txt", "content": "x"}},
        {"final": "done"}
    ]));
    let (status, _, run) = app
        .post("/v1/runs", &json!({"agent": "gated", "input": input}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = run["id"].as_str().unwrap().to_owned();
    // Wait for it to park.
    let mut pending = Value::Null;
    for _ in 0..200 {
        let (_, _, p) = app.get("/v1/approvals?status=pending").await;
        if !p["data"].as_array().unwrap().is_empty() {
            pending = p;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let approval = &pending["data"][0];
    assert_eq!(approval["run_id"], json!(id));
    assert_eq!(approval["call"]["name"], json!("write_file"));
    let (_, _, r) = app.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(r["status"], json!("waiting"));
    let aid = approval["id"].as_str().unwrap();
    let url = format!("/v1/runs/{id}/approvals/{aid}");
    let (status, _, _) = app.post(&url, &json!({"decision": "maybe"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _, _) = app
        .post(&url, &json!({"decision": "approve", "comment": "fine"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, p) = app.post(&url, &json!({"decision": "deny"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["code"], json!("conflict"));
    let (_, _, r) = app.get(&format!("/v1/runs/{id}?wait=30")).await;
    assert_eq!(r["status"], json!("succeeded"), "{r}");
    assert_eq!(r["usage"]["tool_calls"], json!(1));
}

#[tokio::test]
async fn cancel_works_while_waiting_and_then_conflicts() {
    let app = TestApp::new().await;
    let input = mock(json!([{"tool": "write_file", "args": {"path": "a", "content": "x"}}]));
    let (_, _, run) = app
        .post("/v1/runs", &json!({"agent": "gated", "input": input}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let (status, _, r) = app
        .post(
            &format!("/v1/runs/{id}/cancel"),
            &json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["status"], json!("cancelled"));
    assert_eq!(r["error"]["code"], json!("cancelled"));
    let (status, _, p) = app.post(&format!("/v1/runs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
}

#[tokio::test]
async fn bad_input_gets_problem_json_and_creates_nothing() {
    let app = TestApp::new().await;
    let good_input = mock(json!([{"final": "x"}]));
    let cases: Vec<(&str, super::Answer)> = vec![
        (
            "malformed_json",
            app.post_raw("/v1/runs", "application/json", "{\"agent\":")
                .await,
        ),
        (
            "wrong_content_type",
            app.post_raw("/v1/runs", "text/plain", "{}").await,
        ),
        (
            "unknown_agent",
            app.post("/v1/runs", &json!({"agent": "nope", "input": good_input}))
                .await,
        ),
        (
            "input_schema",
            app.post(
                "/v1/runs",
                &json!({"agent": "notes", "input": {"other": 1}}),
            )
            .await,
        ),
        (
            "unknown_field",
            app.post(
                "/v1/runs",
                &json!({"agent": "notes", "input": good_input, "extra": 1}),
            )
            .await,
        ),
        (
            "metadata_not_object",
            app.post(
                "/v1/runs",
                &json!({"agent": "notes", "input": good_input, "metadata": [1]}),
            )
            .await,
        ),
        (
            "oversized",
            app.post_raw("/v1/runs", "application/json", vec![b' '; 2 * 1024 * 1024])
                .await,
        ),
        ("bad_cursor", app.get("/v1/runs?cursor=garbage").await),
        ("bad_status", app.get("/v1/runs?status=sleeping").await),
        (
            "unknown_run",
            app.get("/v1/runs/run_0000000000000000000000000000dead")
                .await,
        ),
        ("malformed_run_id", app.get("/v1/runs/not-an-id").await),
        (
            "unknown_approval",
            app.post(
                "/v1/runs/run_0000000000000000000000000000dead/approvals/apr_x",
                &json!({"decision": "approve"}),
            )
            .await,
        ),
        ("no_route", app.get("/v1/nothing").await),
        (
            "wrong_method",
            app.request(
                axum::http::Request::delete("/v1/runs")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await,
        ),
        (
            "bad_last_event_id",
            app.request(
                axum::http::Request::get("/v1/runs/run_0000000000000000000000000000dead/events")
                    .header("last-event-id", "x")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await,
        ),
    ];
    for (name, (status, ctype, body)) in cases {
        assert!(status.is_client_error(), "{name}: {status} {body}");
        assert_eq!(ctype.as_deref(), Some("application/problem+json"), "{name}");
        assert_eq!(body["status"], json!(status.as_u16()), "{name}");
        snap!(format!("problem_{name}"), &body);
    }
    let (_, _, runs) = app.get("/v1/runs").await;
    assert_eq!(
        runs["data"],
        json!([]),
        "nothing may be created by bad requests"
    );
}

#[tokio::test]
async fn agents_can_be_registered_and_versions_are_immutable() {
    let app = TestApp::new().await;
    let (status, _, agent) = app.get("/v1/agents/notes").await;
    assert_eq!(status, StatusCode::OK);
    let mut def = agent.clone();
    let put = |body: Value| {
        let app = &app;
        async move {
            app.request(
                axum::http::Request::put("/v1/agents/notes")
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            )
            .await
        }
    };
    let (status, _, _) = put(def.clone()).await;
    assert_eq!(status, StatusCode::OK, "identical re-put is fine");
    def["prompt"] = json!("changed {{ input }}");
    let (status, _, p) = put(def.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    def["manifest"]["version"] = json!("1.1.0");
    let (status, _, _) = put(def.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, latest) = app.get("/v1/agents/notes").await;
    assert_eq!(latest["manifest"]["version"], json!("1.1.0"));
    def["manifest"]["version"] = json!("1.2.0");
    def["prompt"] = json!("{% if %}");
    let (status, _, p) = put(def.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["code"], json!("agent_invalid"));
    def["manifest"]["name"] = json!("other");
    let (status, _, _) = put(def).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, _, list) = app.get("/v1/agents").await;
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["manifest"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gated", "notes"]);
}

#[tokio::test]
async fn openapi_document_and_docs_page_are_served() {
    let app = TestApp::new().await;
    let (status, _, doc) = app.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], json!("3.1.0"));
    for path in [
        "/v1/runs",
        "/v1/runs/{id}",
        "/v1/runs/{id}/cancel",
        "/v1/runs/{id}/events",
        "/v1/runs/{id}/approvals/{approval_id}",
        "/v1/approvals",
        "/v1/agents",
        "/v1/agents/{name}",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from openapi"
        );
    }
    let (status, ctype, body) = app.get("/docs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.unwrap().starts_with("text/html"));
    let html = body.as_str().unwrap();
    assert!(html.contains("/v1/openapi.json"));
    assert!(!html.contains("cdn"), "docs page must work offline");
}

#[tokio::test]
async fn secrets_are_write_only_and_validated() {
    let app = TestApp::new().await;
    let put = |name: &str, body: Value| {
        let app = &app;
        let uri = format!("/v1/secrets/{name}");
        async move {
            app.request(
                axum::http::Request::put(uri)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            )
            .await
        }
    };
    let (status, _, created) = put("gh_token", json!({"value": "ghp_supersecretvalue123"})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], json!("gh_token"));
    assert!(created.get("value").is_none(), "{created}");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (status, _, replaced) = put("gh_token", json!({"value": "ghp_othervalue456"})).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    let (status, _, list) = app.get("/v1/secrets").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains("value456"), "{list}");

    for (name, body, want) in [
        (
            "9bad",
            json!({"value": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "ok_name",
            json!({"value": "x".repeat(70_000)}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "ok_name",
            json!({"val": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "ok_name",
            json!({"value": 5}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, ctype, p) = put(name, body).await;
        assert_eq!(status, want, "{name}: {p}");
        assert_eq!(ctype.as_deref(), Some("application/problem+json"));
        assert!(
            !p.to_string().contains("xxxxxxxx"),
            "the value must not be echoed: {p}"
        );
    }

    let del = |name: &str| {
        app.request(
            axum::http::Request::delete(format!("/v1/secrets/{name}"))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
    };
    let (status, _, _) = del("gh_token").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, p) = del("gh_token").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{p}");
    let (_, _, list) = app.get("/v1/secrets").await;
    assert_eq!(list["data"], json!([]));
}

#[tokio::test]
async fn the_master_key_rotates_while_serving_and_secrets_stay_readable() {
    let app = TestApp::new().await;
    let scope = paddock_types::Scope::default_workspace();
    app.vault
        .put(&scope, "gh_token", "ghp_beforerotation42")
        .await
        .unwrap();
    let (status, _, r) = app.post("/v1/vault/rotate", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_ne!(r["old_master_key_id"], r["new_master_key_id"], "{r}");
    assert!(r["data_keys"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(
        app.vault.master_key_id().await,
        r["new_master_key_id"].as_str().unwrap()
    );
    // Old secrets open with the new key; new ones can be written.
    let v = app.vault.get(&scope, "gh_token").await.unwrap().unwrap();
    assert_eq!(v.expose(), "ghp_beforerotation42");
    let (status, _, _) = app
        .request(
            axum::http::Request::put("/v1/secrets/after")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(
                    r#"{"value":"written-after-rotation"}"#,
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let v = app.vault.get(&scope, "after").await.unwrap().unwrap();
    assert_eq!(v.expose(), "written-after-rotation");
}
