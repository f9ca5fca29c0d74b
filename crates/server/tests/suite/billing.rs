//! End-users (acting for one with `Paddock-End-User`, isolation between end-users of one key),
//! budgets (hard stops, the race for the last dollar) and usage, on the real router.

use super::{AGENT, PROMPT, TestApp, make_key};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use paddock_server::routes;
use paddock_types::{Role, Scope};
use serde_json::{Value, json};
use std::time::Duration;

/// One request: `key` as bearer, acting for `end_user` when given.
async fn send(
    app: &TestApp,
    method: &Method,
    path: &str,
    key: &str,
    end_user: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {key}"));
    if let Some(eu) = end_user {
        req = req.header("Paddock-End-User", eu);
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&b).unwrap())),
        None => req.body(Body::empty()),
    };
    let (status, _, body) = app.request_raw(req.unwrap()).await;
    (status, body)
}

async fn end_user(app: &TestApp, external_id: &str) -> String {
    let (status, body) = send(
        app,
        &Method::POST,
        "/v1/end-users",
        &app.key,
        None,
        Some(json!({"external_id": external_id, "metadata": {"plan": "pro"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Waits until `run` (seen as `end_user`) is in one of `statuses`.
async fn wait_for(app: &TestApp, run: &str, end_user: Option<&str>, statuses: &[&str]) -> Value {
    for _ in 0..800 {
        let (status, body) = send(
            app,
            &Method::GET,
            &format!("/v1/runs/{run}"),
            &app.key,
            end_user,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if statuses.contains(&body["status"].as_str().unwrap_or("")) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("run {run} never reached {statuses:?}");
}

/// `path` with every `{param}` filled by `fill(path, param)`.
fn concrete(path: &str, fill: impl Fn(&str, &str) -> String) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').unwrap() + start;
        out.push_str(&rest[..start]);
        out.push_str(&fill(path, &rest[start + 1..end]));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn tool_input(n: usize) -> Value {
    json!({"mock": {"turns": [
        {"tool": "write_file", "args": {"path": "a.txt", "content": "x"}, "repeat": n},
        {"final": "done"}]}})
}

/// Everything end-user B can see, to prove A's requests changed none of it.
async fn snapshot(app: &TestApp, eu: &str, run: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for path in [
        "/v1/runs".to_owned(),
        "/v1/approvals".to_owned(),
        "/v1/secrets".to_owned(),
        format!("/v1/runs/{run}"),
        format!("/v1/runs/{run}/events?after=0"),
    ] {
        let (status, body) = send(app, &Method::GET, &path, &app.key, Some(eu), None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        out.push(body);
    }
    out
}

#[tokio::test]
async fn an_end_user_never_sees_or_touches_another_end_users_resources_on_any_route() {
    let app = TestApp::new().await;
    let alice = end_user(&app, "alice@example.com").await;
    let bob = end_user(&app, "bob").await;

    // Bob's run parks on an approval; Bob stores a secret of his own.
    let (status, body) = send(
        &app,
        &Method::POST,
        "/v1/runs",
        &app.key,
        Some("bob"),
        Some(json!({"agent": "gated", "input": tool_input(1)})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["end_user"],
        bob.as_str(),
        "the run records its end-user"
    );
    assert!(
        body["created_by"].as_str().unwrap().starts_with("key_"),
        "the run records the key: {body}"
    );
    let run = body["id"].as_str().unwrap().to_owned();
    wait_for(&app, &run, Some(&bob), &["waiting"]).await;
    let (_, body) = send(
        &app,
        &Method::GET,
        "/v1/approvals?status=pending",
        &app.key,
        Some(&bob),
        None,
    )
    .await;
    let approval = body["data"][0]["id"].as_str().unwrap().to_owned();
    let (status, body) = send(
        &app,
        &Method::PUT,
        "/v1/secrets/bobtok",
        &app.key,
        Some(&bob),
        Some(json!({"value": "bob-secret-value"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let before = snapshot(&app, &bob, &run).await;
    let of_bob = |path: &str, param: &str| -> String {
        match param {
            "id" if path.starts_with("/v1/runs/") => run.clone(),
            "approval_id" => approval.clone(),
            "name" if path.starts_with("/v1/secrets/") => "bobtok".into(),
            "name" if path.starts_with("/v1/agents/") => "gated".into(),
            _ => panic!("no resource of Bob for {{{param}}} of {path}: add one"),
        }
    };
    let missing = |path: &str, param: &str| -> String {
        match param {
            "id" if path.starts_with("/v1/runs/") => "run_0000000000000000000000000000dead".into(),
            "approval_id" => "apr_0000000000000000000000000000dead".into(),
            "name" if path.starts_with("/v1/secrets/") => "nothing-here".into(),
            "name" => "gated".into(),
            _ => panic!("no stand-in for {{{param}}} of {path}: add one"),
        }
    };
    let bobs = [
        run.as_str(),
        approval.as_str(),
        "bobtok",
        "bob-secret-value",
    ];
    let mut checked = 0;
    for route in routes() {
        let Some(permission) = route.permission else {
            continue;
        };
        if !permission.acts_for_end_user() {
            // A management route refuses to act for an end-user at all.
            let body = (route.method != Method::GET && route.method != Method::DELETE)
                .then(|| json!({"bogus": 1}));
            let path = concrete(route.path, |_, _| "x".into());
            let (status, answer) =
                send(&app, &route.method, &path, &app.key, Some(&alice), body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{route:?}: {answer}");
            assert_eq!(answer["code"], "end_user_not_allowed", "{route:?}");
            continue;
        }
        if route.method == Method::PUT {
            // PUTs create by name in Alice's own space: covered by the listing checks.
            continue;
        }
        if !route.path.contains('{') {
            if route.method == Method::GET {
                let (status, answer) = send(
                    &app,
                    &route.method,
                    route.path,
                    &app.key,
                    Some(&alice),
                    None,
                )
                .await;
                assert_eq!(status, StatusCode::OK, "{route:?}: {answer}");
                let text = answer.to_string();
                for b in bobs {
                    assert!(
                        !text.contains(b),
                        "{route:?} as Alice shows Bob's {b}: {text}"
                    );
                }
            }
            continue;
        }
        let body = match route.method {
            Method::POST if route.path.ends_with("/approvals/{approval_id}") => {
                Some(json!({"decision": "approve"}))
            }
            Method::POST => Some(json!({"reason": "from alice"})),
            _ => None,
        };
        let on_bob = send(
            &app,
            &route.method,
            &concrete(route.path, of_bob),
            &app.key,
            Some(&alice),
            body.clone(),
        )
        .await;
        let on_missing = send(
            &app,
            &route.method,
            &concrete(route.path, missing),
            &app.key,
            Some(&alice),
            body,
        )
        .await;
        assert_eq!(on_bob, on_missing, "{route:?}");
        if !route.path.starts_with("/v1/agents/") {
            // Agents belong to the workspace: both end-users see them.
            assert_eq!(on_bob.0, StatusCode::NOT_FOUND, "{route:?}: {}", on_bob.1);
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "only {checked} routes with parameters checked"
    );
    assert_eq!(
        before,
        snapshot(&app, &bob, &run).await,
        "Alice changed Bob's data"
    );

    // The workspace itself (no header) sees Bob's run; Alice's own secret shadows nothing of
    // Bob's and the workspace's listing does not show end-users' secrets.
    let (_, body) = send(&app, &Method::GET, "/v1/runs", &app.key, None, None).await;
    assert!(body.to_string().contains(&run));
    let (_, body) = send(&app, &Method::GET, "/v1/secrets", &app.key, None, None).await;
    assert!(!body.to_string().contains("bobtok"), "{body}");
    // Acting for Bob by his external id is the same as by his id.
    let (status, body) = send(
        &app,
        &Method::GET,
        &format!("/v1/runs/{run}"),
        &app.key,
        Some("bob"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn the_end_user_header_is_checked_and_a_refusal_creates_nothing() {
    let app = TestApp::new().await;
    let alice = end_user(&app, "alice").await;
    let runs_before = send(&app, &Method::GET, "/v1/runs", &app.key, None, None).await;
    let create = json!({"agent": "notes", "input": tool_input(0)});

    // Unknown, and an end-user of another workspace: the same answer.
    let other = Scope {
        org: paddock_types::OrgId::parse("org_other").unwrap(),
        workspace: paddock_types::WorkspaceId::parse("ws_other").unwrap(),
        end_user: None,
    };
    let other_key = make_key(&app.store, &other, Role::Owner, None).await;
    let (status, body) = send(
        &app,
        &Method::POST,
        "/v1/end-users",
        &other_key,
        None,
        Some(json!({"external_id": "carol"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let carol = body["id"].as_str().unwrap().to_owned();
    let unknown = send(
        &app,
        &Method::POST,
        "/v1/runs",
        &app.key,
        Some("eu_0000000000000000000000000000dead"),
        Some(create.clone()),
    )
    .await;
    assert_eq!(unknown.0, StatusCode::BAD_REQUEST, "{}", unknown.1);
    assert_eq!(unknown.1["code"], "unknown_end_user");
    for eu in [carol.as_str(), "carol", "nobody"] {
        let r = send(
            &app,
            &Method::POST,
            "/v1/runs",
            &app.key,
            Some(eu),
            Some(create.clone()),
        )
        .await;
        assert_eq!(r, unknown, "{eu}");
    }
    // Malformed.
    let long = "x".repeat(201);
    let r = send(&app, &Method::GET, "/v1/runs", &app.key, Some(&long), None).await;
    assert_eq!(r.0, StatusCode::BAD_REQUEST);
    assert_eq!(r.1["code"], "invalid_end_user");
    // A management route does not act for an end-user.
    let r = send(&app, &Method::GET, "/v1/keys", &app.key, Some(&alice), None).await;
    assert_eq!(r.0, StatusCode::BAD_REQUEST);
    assert_eq!(r.1["code"], "end_user_not_allowed");
    // Nothing was created by any of it.
    let runs_after = send(&app, &Method::GET, "/v1/runs", &app.key, None, None).await;
    assert_eq!(runs_before, runs_after);

    // A login session may not act for an end-user.
    let (status, body) = send(
        &app,
        &Method::POST,
        "/v1/members",
        &app.key,
        None,
        Some(json!({"email": "dev@example.com", "password": "a long enough password", "role": "developer"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, body) = app
        .post(
            "/v1/sessions",
            &json!({"email": "dev@example.com", "password": "a long enough password"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let r = send(&app, &Method::GET, "/v1/runs", &token, None, None).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    let r = send(&app, &Method::GET, "/v1/runs", &token, Some(&alice), None).await;
    assert_eq!(r.0, StatusCode::BAD_REQUEST, "{}", r.1);
    assert_eq!(r.1["code"], "end_user_not_allowed");
}

#[tokio::test]
async fn end_users_are_created_listed_and_validated() {
    let app = TestApp::new().await;
    let alice = end_user(&app, "alice").await;
    let post = |body: Value| {
        let app = &app;
        async move {
            send(
                app,
                &Method::POST,
                "/v1/end-users",
                &app.key,
                None,
                Some(body),
            )
            .await
        }
    };
    let (status, body) = post(json!({"external_id": "alice"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    for bad in [
        json!({"external_id": ""}),
        json!({"external_id": " padded "}),
        json!({"external_id": "x".repeat(201)}),
        json!({"external_id": "eu_0000000000000000000000000000beef"}),
        json!({"external_id": "m", "metadata": [1, 2]}),
        json!({"external_id": "m", "metadata": {"blob": "x".repeat(9000)}}),
    ] {
        let (status, body) = post(bad.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["code"], "validation_failed");
    }
    let (status, _) = post(json!({"external_id": "m", "admin": true})).await;
    assert!(status.is_client_error());
    let (status, body) = send(&app, &Method::GET, "/v1/end-users", &app.key, None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["data"][0]["metadata"]["plan"], "pro");
    let path = format!("/v1/end-users/{alice}");
    let (status, body) = send(&app, &Method::GET, &path, &app.key, None, None).await;
    assert_eq!(
        (status, body["external_id"].clone()),
        (StatusCode::OK, json!("alice"))
    );
    // A viewer reads but may not create.
    let viewer = make_key(&app.store, &Scope::default_workspace(), Role::Viewer, None).await;
    let (status, _) = send(&app, &Method::GET, &path, &viewer, None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(
        &app,
        &Method::POST,
        "/v1/end-users",
        &viewer,
        None,
        Some(json!({"external_id": "v"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = send(&app, &Method::DELETE, &path, &app.key, None, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = send(&app, &Method::GET, &path, &app.key, None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Once deleted, no key can act for it.
    let (status, body) = send(&app, &Method::GET, "/v1/runs", &app.key, Some(&alice), None).await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("unknown_end_user"))
    );
}

/// Registers a priced agent whose calls may answer at most 100 tokens.
async fn priced_agent(app: &TestApp, name: &str) {
    let mut m = paddock_types::AgentManifest::from_toml(AGENT).unwrap();
    m.name = name.to_owned();
    m.model.max_output_tokens = 100;
    let (status, body) = send(
        app,
        &Method::PUT,
        &format!("/v1/agents/{name}"),
        &app.key,
        None,
        Some(json!({"manifest": m, "prompt": PROMPT})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn events(app: &TestApp, run: &str) -> Vec<String> {
    let (_, body) = send(
        app,
        &Method::GET,
        &format!("/v1/runs/{run}/events?after=0"),
        &app.key,
        None,
        None,
    )
    .await;
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_run_stops_before_the_model_call_that_would_exceed_its_budget() {
    let app = TestApp::priced().await;
    priced_agent(&app, "spender").await;
    let (status, body) = send(
        &app,
        &Method::POST,
        "/v1/budgets",
        &app.key,
        None,
        Some(json!({"subject": "agent", "agent": "spender", "period": "day", "limit_usd": 0.002})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let budget = body["id"].as_str().unwrap().to_owned();
    let (status, body) = send(
        &app,
        &Method::POST,
        "/v1/runs",
        &app.key,
        None,
        Some(json!({"agent": "spender", "input": tool_input(40)})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let run = body["id"].as_str().unwrap().to_owned();
    let done = wait_for(&app, &run, None, &["succeeded", "failed"]).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "budget_exceeded", "{done}");
    assert!(
        done["error"]["message"].as_str().unwrap().contains(&budget),
        "the error names the budget: {done}"
    );
    let calls = done["usage"]["model_calls"].as_u64().unwrap();
    assert!((1..41).contains(&calls), "{calls} calls");
    assert!(done["usage"]["cost_usd"].as_f64().unwrap() <= 0.002);
    // The refused call was never requested: the run failed straight after the last answer and
    // its tool call.
    let types = events(&app, &run).await;
    let n = types.len();
    assert_eq!(types[n - 1], "run_failed", "{types:?}");
    assert_eq!(
        types.iter().filter(|t| *t == "model_requested").count() as u64,
        calls,
        "{types:?}"
    );
    // Usage agrees with the run, and another agent is not capped.
    let (status, body) = send(
        &app,
        &Method::GET,
        "/v1/usage?group_by=agent",
        &app.key,
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"][0]["agent"], "spender");
    assert_eq!(body["data"][0]["model_calls"].as_u64(), Some(calls));
    assert!(body["total"]["cost_usd"].as_f64().unwrap() <= 0.002);
    let (_, body) = send(
        &app,
        &Method::POST,
        "/v1/runs?wait=30",
        &app.key,
        None,
        Some(json!({"agent": "notes", "input": tool_input(2)})),
    )
    .await;
    assert_eq!(body["status"], "succeeded", "{body}");
    // The run's end is in the audit trail, attributed to the system.
    let (_, body) = send(
        &app,
        &Method::GET,
        "/v1/audit?action=run.failed",
        &app.key,
        None,
        None,
    )
    .await;
    let entry = &body["data"][0];
    assert_eq!(entry["resource"], format!("run/{run}"), "{body}");
    assert_eq!(entry["actor"]["kind"], "system");
    assert_eq!(entry["detail"]["error"], "budget_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_runs_racing_for_the_last_dollar_never_exceed_the_cap() {
    let app = TestApp::priced().await;
    priced_agent(&app, "racer").await;
    // One call's most expensive outcome is about $0.0004 here; $0.002 fits a handful at once.
    let limit = 0.002;
    let (status, body) = send(
        &app,
        &Method::POST,
        "/v1/budgets",
        &app.key,
        None,
        Some(json!({"subject": "workspace", "period": "month", "limit_usd": limit})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let req = Request::post("/v1/runs?wait=60")
            .header(header::AUTHORIZATION, format!("Bearer {}", app.key))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                serde_json::to_vec(&json!({"agent": "racer", "input": tool_input(0)})).unwrap(),
            ))
            .unwrap();
        let router = app.app.clone();
        tasks.push(tokio::spawn(async move {
            use tower::ServiceExt;
            let resp = router.oneshot(req).await.unwrap();
            let bytes = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        }));
    }
    let (mut ok, mut refused, mut spent) = (0, 0, 0.0);
    for t in tasks {
        let run = t.await.unwrap();
        match (run["status"].as_str(), run["error"]["code"].as_str()) {
            (Some("succeeded"), _) => ok += 1,
            (Some("failed"), Some("budget_exceeded")) => {
                assert_eq!(run["usage"]["model_calls"], 0, "{run}");
                refused += 1;
            }
            other => panic!("unexpected {other:?}: {run}"),
        }
        spent += run["usage"]["cost_usd"].as_f64().unwrap();
    }
    assert!(ok >= 1 && refused >= 1, "{ok} succeeded, {refused} refused");
    assert_eq!(ok + refused, 50);
    assert!(spent <= limit, "spent ${spent} of ${limit}");
    let (_, body) = send(
        &app,
        &Method::GET,
        "/v1/usage?group_by=",
        &app.key,
        None,
        None,
    )
    .await;
    assert!(
        body["total"]["cost_usd"].as_f64().unwrap() <= limit,
        "{body}"
    );
    assert_eq!(body["total"]["model_calls"].as_u64(), Some(ok));
}

#[tokio::test]
async fn budgets_and_usage_refuse_bad_input() {
    let app = TestApp::new().await;
    for bad in [
        json!({"subject": "workspace", "period": "day", "limit_usd": -1}),
        json!({"subject": "workspace", "period": "day", "limit_usd": 1e12}),
        json!({"subject": "workspace", "agent": "x", "period": "day", "limit_usd": 1}),
        json!({"subject": "agent", "agent": "Bad Name!", "period": "day", "limit_usd": 1}),
        json!({"subject": "end_user", "end_user": "eu_0000000000000000000000000000dead", "period": "day", "limit_usd": 1}),
    ] {
        let (status, body) = send(
            &app,
            &Method::POST,
            "/v1/budgets",
            &app.key,
            None,
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
    for bad in [
        json!({"subject": "galaxy", "period": "day", "limit_usd": 1}),
        json!({"subject": "workspace", "period": "year", "limit_usd": 1}),
        json!({"subject": "workspace", "period": "day"}),
    ] {
        let (status, _) = send(
            &app,
            &Method::POST,
            "/v1/budgets",
            &app.key,
            None,
            Some(bad.clone()),
        )
        .await;
        assert!(status.is_client_error(), "{bad}");
    }
    let (_, body) = send(&app, &Method::GET, "/v1/budgets", &app.key, None, None).await;
    assert_eq!(body["data"], json!([]), "nothing was created");
    // Only admins set budgets.
    let dev = make_key(
        &app.store,
        &Scope::default_workspace(),
        Role::Developer,
        None,
    )
    .await;
    let (status, _) = send(
        &app,
        &Method::POST,
        "/v1/budgets",
        &dev,
        None,
        Some(json!({"subject": "workspace", "period": "day", "limit_usd": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for q in [
        "from=2026-02-30",
        "to=yesterday",
        "from=2026-11-02&to=2026-11-01",
        "from=2020-01-01&to=2026-01-01",
        "group_by=planet",
        "scope=universe",
    ] {
        let (status, body) = send(
            &app,
            &Method::GET,
            &format!("/v1/usage?{q}"),
            &app.key,
            None,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {body}");
    }
    let (status, body) = send(
        &app,
        &Method::GET,
        "/v1/usage?from=2026-01-01&to=2026-01-31",
        &app.key,
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"], json!([]));
    assert_eq!(body["total"]["model_calls"], 0);
    // Org-wide usage is for owners.
    let admin = make_key(&app.store, &Scope::default_workspace(), Role::Admin, None).await;
    let (status, _) = send(
        &app,
        &Method::GET,
        "/v1/usage?scope=org",
        &admin,
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = send(
        &app,
        &Method::GET,
        "/v1/usage?scope=org",
        &app.key,
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}
