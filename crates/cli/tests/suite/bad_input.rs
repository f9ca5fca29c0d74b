//! Bad requests to the real server get a 4xx `application/problem+json` answer with the right
//! stable `code`, and create nothing: the run listing and the existing run's journal are the
//! same before and after.

use super::{OPENAI, assert_problem, bin, final_answer, start};
use paddock_test_support::{AgentFixture, MockLlm, mock_input};
use serde_json::json;

const STRICT_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["topic"],
  "properties": {"topic": {"type": "string"}}
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_problems_and_create_nothing() {
    let mock = MockLlm::start(bin(), 0).await;
    let agents = vec![
        AgentFixture::new("e2e", OPENAI),
        // Input schema from a file next to the manifest…
        AgentFixture::new("strict", OPENAI).with_file("input.schema.json", STRICT_SCHEMA),
        // …and inline in the manifest.
        AgentFixture::new("inline", OPENAI)
            .with_manifest_extra("[input_schema]\ntype = \"object\"\nrequired = [\"mock\"]\n"),
    ];
    let server = start(&mock, agents).await;
    let api = server.api();

    let good = api
        .create_run("e2e", &mock_input(json!([final_answer(json!("fine"))])))
        .await;
    let good_id = good["id"].as_str().unwrap().to_owned();
    let good = api.wait_terminal(&good_id).await;
    assert_eq!(good["status"], "succeeded", "{good}");
    let runs_before = api.list_runs("").await;
    assert_eq!(runs_before.len(), 1, "{runs_before:?}");
    let journal_before = api.events(&good_id).await;

    let http = api.http();
    let post = |path: &str| http.post(api.url(path));
    let json_ct = "application/json";

    let r = api
        .send(
            post("/v1/runs")
                .header("content-type", json_ct)
                .body(r#"{"agent": "e2e", "input": "#),
        )
        .await;
    assert_problem(&r, 400, "invalid_json", "malformed JSON");

    let r = api
        .post_json("/v1/runs", &json!({"agent": "nobody", "input": {}}))
        .await;
    assert_problem(&r, 404, "not_found", "unknown agent");

    let r = api
        .post_json(
            "/v1/runs",
            &json!({"agent": "strict", "input": {"topic": 5}}),
        )
        .await;
    assert_problem(
        &r,
        422,
        "validation_failed",
        "input failing input.schema.json",
    );
    let r = api
        .post_json("/v1/runs", &json!({"agent": "strict", "input": {}}))
        .await;
    assert_problem(
        &r,
        422,
        "validation_failed",
        "input missing a required field",
    );
    let r = api
        .post_json("/v1/runs", &json!({"agent": "inline", "input": {"x": 1}}))
        .await;
    assert_problem(
        &r,
        422,
        "validation_failed",
        "input failing an inline [input_schema]",
    );

    let big = "x".repeat(1024 * 1024 + 1024);
    let r = api
        .post_json("/v1/runs", &json!({"agent": "e2e", "input": {"blob": big}}))
        .await;
    assert_problem(&r, 413, "body_too_large", "body over 1 MiB");

    let r = api.get_json("/v1/runs?cursor=not-a-cursor").await;
    assert_problem(&r, 400, "invalid_cursor", "bad cursor");

    let r = api.get_json(&format!("/v1/runs/{good_id}?wait=soon")).await;
    assert_problem(&r, 400, "invalid_query", "bad query parameter");

    let r = api
        .get_json("/v1/runs/run_0000000000000000000000000000000a")
        .await;
    assert_problem(&r, 404, "not_found", "unknown run id");
    let r = api.get_json("/v1/runs/not-a-run-id").await;
    assert_problem(&r, 404, "not_found", "malformed run id");
    let r = api.get_json("/v1/runs/not-a-run-id/events").await;
    assert_problem(&r, 404, "not_found", "events of a malformed run id");
    let r = api
        .post_json(
            "/v1/runs/run_0000000000000000000000000000000a/cancel",
            &json!({}),
        )
        .await;
    assert_problem(&r, 404, "not_found", "cancelling an unknown run");

    let r = api
        .post_json(
            &format!("/v1/runs/{good_id}/approvals/apr_0000000000000000000000000000000a"),
            &json!({"decision": "approve"}),
        )
        .await;
    assert_problem(&r, 404, "not_found", "unknown approval");
    let r = api
        .post_json(
            &format!("/v1/runs/{good_id}/approvals/not-an-approval"),
            &json!({"decision": "approve"}),
        )
        .await;
    assert_problem(&r, 404, "not_found", "malformed approval id");

    let r = api
        .send(
            post("/v1/runs")
                .header("content-type", "text/plain")
                .body(r#"{"agent": "e2e", "input": {}}"#),
        )
        .await;
    assert_problem(&r, 415, "unsupported_media_type", "wrong content type");

    let r = api
        .post_json(
            "/v1/runs",
            &json!({"agent": "e2e", "input": {}, "priority": 1}),
        )
        .await;
    assert_problem(&r, 422, "validation_failed", "unknown field in the body");

    let r = api.get_json("/v1/no-such-route").await;
    assert_problem(&r, 404, "not_found", "unknown route");

    let r = api.send(http.delete(api.url("/v1/runs"))).await;
    assert_problem(&r, 405, "method_not_allowed", "wrong method");

    // Nothing was created or changed.
    let runs_after = api.list_runs("").await;
    assert_eq!(runs_after, runs_before);
    assert_eq!(api.events(&good_id).await, journal_before);
}

/// Through the real binary: `/v1` refuses a request without a key (401 problem+json with
/// `WWW-Authenticate: Bearer`) while `/healthz` stays public; the CLI tells the user how to pass
/// a key, and works once given the admin key the server was started with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_key_are_refused() {
    let mock = MockLlm::start(bin(), 0).await;
    let server = start(&mock, vec![AgentFixture::new("e2e", OPENAI)]).await;
    let anon = server.api_anonymous();
    let r = anon.get_json("/v1/runs").await;
    assert_problem(&r, 401, "unauthenticated", "missing API key");
    assert_eq!(
        r.headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    assert_eq!(anon.get_json("/healthz").await.status, 200);
    assert_eq!(server.api().get_json("/v1/runs").await.status, 200);

    let cli = |key: Option<&str>| {
        let mut cmd = std::process::Command::new(bin());
        cmd.env_remove("PADDOCK_API_KEY")
            .args(["runs", "--server", &server.url(), "list"]);
        if let Some(k) = key {
            cmd.args(["--api-key", k]);
        }
        cmd.output().unwrap()
    };
    let out = cli(None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--api-key") && err.contains("PADDOCK_API_KEY"),
        "{err}"
    );
    let out = cli(Some(server.admin_key()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The supplied admin key was registered, never printed.
    assert!(!server.stderr_text().contains(server.admin_key()));
}
