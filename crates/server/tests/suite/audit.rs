//! The audit trail as seen through the API: what gets recorded, who may read it, and verify.

use super::{TestApp, make_key};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use paddock_types::{Role, Scope};
use serde_json::{Value, json};

async fn send(
    app: &TestApp,
    method: Method,
    uri: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::USER_AGENT, "audit-test/1");
    if let Some(k) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&b).unwrap())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let (status, _, body) = app.request(req).await;
    (status, body)
}

async fn trail(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = send(app, Method::GET, &format!("/v1/audit{query}"), None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].as_array().unwrap().clone()
}

fn actions(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn changing_requests_are_recorded_and_the_chain_verifies() {
    let app = TestApp::new().await;
    let put = |name: &str, value: &str| {
        (
            Method::PUT,
            format!("/v1/secrets/{name}"),
            Some(json!({"value": value})),
        )
    };
    let (m, u, b) = put("TOKEN", "very-secret-value-123");
    assert_eq!(send(&app, m, &u, None, b).await.0, StatusCode::CREATED);
    let (s, _) = send(&app, Method::DELETE, "/v1/secrets/TOKEN", None, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    let input = json!({"mock": {"turns": [
        {"tool": "write_file", "args": {"path": "a.txt", "content": "x"}}, {"final": "done"}]}});
    let (s, run) = send(
        &app,
        Method::POST,
        "/v1/runs",
        None,
        Some(json!({"agent": "gated", "input": input})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();
    let mut approval = String::new();
    for _ in 0..400 {
        let (_, b) = send(
            &app,
            Method::GET,
            "/v1/approvals?status=pending",
            None,
            None,
        )
        .await;
        if let Some(id) = b["data"][0]["id"].as_str() {
            approval = id.to_owned();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(!approval.is_empty(), "the run never asked for approval");
    let (s, b) = send(
        &app,
        Method::POST,
        &format!("/v1/runs/{run_id}/approvals/{approval}"),
        None,
        Some(json!({"decision": "deny"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");

    let (s, run2) = send(&app, Method::POST, "/v1/runs", None, Some(json!({"agent": "gated", "input": {"mock": {"turns": [{"tool": "write_file", "args": {"path": "b", "content": "y"}}]}}}))).await;
    assert_eq!(s, StatusCode::CREATED);
    let run2 = run2["id"].as_str().unwrap().to_owned();
    let (s, b) = send(
        &app,
        Method::POST,
        &format!("/v1/runs/{run2}/cancel"),
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");

    let (s, key) = send(
        &app,
        Method::POST,
        "/v1/keys",
        None,
        Some(json!({"name": "ci", "role": "viewer"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{key}");
    let key_id = key["key"]["id"].as_str().unwrap().to_owned();
    let (s, _) = send(
        &app,
        Method::DELETE,
        &format!("/v1/keys/{key_id}"),
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, ws) = send(
        &app,
        Method::POST,
        "/v1/workspaces",
        None,
        Some(json!({"name": "audited"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{ws}");
    let def = json!({"manifest": {"name": "notes2", "version": "1.0.0",
        "model": {"provider": "scripted", "name": "scripted-model"}}, "prompt": "hi"});
    let (s, b) = send(&app, Method::PUT, "/v1/agents/notes2", None, Some(def)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = send(&app, Method::POST, "/v1/vault/rotate", None, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Reads are not audited.
    let _ = send(&app, Method::GET, "/v1/runs", None, None).await;

    let all = trail(&app, "?limit=1000").await;
    // The engine records each run's end itself (actor `system`), in the transaction that ends
    // the run; when that lands among the requests depends on timing.
    let (system, entries): (Vec<Value>, Vec<Value>) = all
        .into_iter()
        .partition(|e| e["actor"]["kind"] == "system");
    let mut ended = actions(&system);
    ended.sort();
    assert_eq!(ended, ["run.cancelled", "run.succeeded"]);
    assert!(
        system
            .iter()
            .all(|e| e["resource"].as_str().unwrap().starts_with("run/"))
    );
    assert_eq!(
        actions(&entries),
        [
            "secret.written",
            "secret.deleted",
            "run.created",
            "approval.decided",
            "run.created",
            "run.cancelled",
            "key.created",
            "key.revoked",
            "workspace.created",
            "agent.registered",
            "vault.rotated",
        ]
    );
    let resources: Vec<&str> = entries
        .iter()
        .map(|e| e["resource"].as_str().unwrap())
        .collect();
    assert_eq!(resources[0], "secret/TOKEN");
    assert_eq!(resources[2], format!("run/{run_id}"));
    assert_eq!(resources[3], format!("run/{run_id}/approval/{approval}"));
    assert_eq!(entries[3]["detail"]["decision"], "deny");
    assert_eq!(resources[5], format!("run/{run2}"));
    assert_eq!(resources[6], format!("key/{key_id}"));
    assert_eq!(resources[7], format!("key/{key_id}"));
    assert_eq!(
        resources[8],
        format!("workspace/{}", ws["id"].as_str().unwrap())
    );
    assert_eq!(resources[9], "agent/notes2");
    let mut seqs: Vec<u64> = entries
        .iter()
        .chain(&system)
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(seqs, (1..=13).collect::<Vec<u64>>(), "gapless");
    for e in &entries {
        assert_eq!(e["outcome"], "ok");
        assert_eq!(e["actor"]["kind"], "api_key");
        assert_eq!(e["actor"]["role"], "owner");
        assert_eq!(e["user_agent"], "audit-test/1");
    }
    assert!(
        !serde_json::to_string(&entries)
            .unwrap()
            .contains("very-secret-value"),
        "a secret value reached the audit trail"
    );

    // Filters and paging.
    assert_eq!(trail(&app, "?action=run.created").await.len(), 2);
    assert_eq!(trail(&app, "?resource=secret/").await.len(), 2);
    assert_eq!(
        trail(&app, "?from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z")
            .await
            .len(),
        0
    );
    assert_eq!(trail(&app, "?from=2000-01-01T00:00:00Z").await.len(), 13);
    let (s, b) = send(&app, Method::GET, "/v1/audit?from=yesterday", None, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, page) = send(&app, Method::GET, "/v1/audit?limit=4", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let rest = trail(&app, &format!("?cursor={cursor}&limit=100")).await;
    assert_eq!(rest[0]["seq"], 5);
    assert_eq!(rest.len(), 9);

    let (s, v) = send(&app, Method::GET, "/v1/audit/verify", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"ok": true, "entries": 13}));
}

#[tokio::test]
async fn only_admins_read_the_trail_and_denials_are_recorded() {
    let app = TestApp::new().await;
    let s = Scope::default_workspace();
    let dev = make_key(&app.store, &s, Role::Developer, None).await;
    let admin = make_key(&app.store, &s, Role::Admin, None).await;
    for uri in ["/v1/audit", "/v1/audit/verify"] {
        let (status, body) = send(&app, Method::GET, uri, Some(&dev), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["code"], "forbidden");
        let (status, _) = send(&app, Method::GET, uri, Some(&admin), None).await;
        assert_eq!(status, StatusCode::OK);
    }
    // A developer may not mint keys: denied, and recorded as such.
    let (status, _) = send(
        &app,
        Method::POST,
        "/v1/keys",
        Some(&dev),
        Some(json!({"name": "x", "role": "viewer"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let entries = trail(&app, "").await;
    assert_eq!(
        actions(&entries),
        ["audit:read", "audit:read", "key.created"]
    );
    assert!(entries.iter().all(|e| e["outcome"] == "denied"));
    assert!(entries.iter().all(|e| e["actor"]["role"] == "developer"));
    assert_eq!(entries[0]["resource"], "audit");

    // A revoked key is refused and the refusal lands in its workspace's trail; an unknown key is
    // not attributable and is not recorded.
    let (_, created) = send(
        &app,
        Method::POST,
        "/v1/keys",
        None,
        Some(json!({"name": "gone", "role": "viewer"})),
    )
    .await;
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    send(&app, Method::DELETE, &format!("/v1/keys/{id}"), None, None).await;
    let (status, _) = send(&app, Method::GET, "/v1/runs", Some(&secret), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let unknown = paddock_vault::new_api_key_secret().unwrap();
    let (status, _) = send(&app, Method::GET, "/v1/runs", Some(&unknown), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let failed = trail(&app, "?action=auth.failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["resource"], format!("key/{id}"));
    assert_eq!(failed[0]["outcome"], "denied");
    assert_eq!(failed[0]["detail"]["reason"], "API key revoked");

    // Another workspace's admin sees none of it.
    let other = Scope {
        org: paddock_types::OrgId::parse("org_other").unwrap(),
        workspace: paddock_types::WorkspaceId::parse("ws_other").unwrap(),
        end_user: None,
    };
    let theirs = make_key(&app.store, &other, Role::Admin, None).await;
    let (_, body) = send(&app, Method::GET, "/v1/audit", Some(&theirs), None).await;
    assert_eq!(body["data"], json!([]));
}

#[tokio::test]
async fn a_refused_tool_call_and_the_run_end_are_recorded_with_the_end_user() {
    let app = TestApp::new().await;
    let (s, eu) = send(
        &app,
        Method::POST,
        "/v1/end-users",
        None,
        Some(json!({"external_id": "dana"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{eu}");
    let eu = eu["id"].as_str().unwrap().to_owned();
    // `notes` has no shell tool: the manifest check refuses the call, the model then finishes.
    let input = json!({"mock": {"turns": [
        {"tool": "shell", "args": {"command": "id"}},
        {"final": "gave up"}]}});
    let req = Request::post("/v1/runs?wait=30")
        .header(header::CONTENT_TYPE, "application/json")
        .header("Paddock-End-User", "dana")
        .body(Body::from(
            serde_json::to_vec(&json!({"agent": "notes", "input": input})).unwrap(),
        ))
        .unwrap();
    let (s, _, run) = app.request(req).await;
    assert_eq!(s, StatusCode::CREATED, "{run}");
    assert_eq!(run["status"], "succeeded", "{run}");
    let run_id = run["id"].as_str().unwrap();

    let denied = trail(&app, "?action=policy.denied").await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["outcome"], "denied");
    assert_eq!(denied[0]["detail"]["tool"], "shell");
    assert_eq!(denied[0]["actor"]["kind"], "system");
    assert_eq!(denied[0]["actor"]["end_user"], eu.as_str());
    assert!(
        denied[0]["resource"]
            .as_str()
            .unwrap()
            .starts_with(&format!("run/{run_id}/call/")),
        "{denied:?}"
    );
    let ended = trail(&app, "?action=run.succeeded").await;
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0]["resource"], format!("run/{run_id}"));
    assert_eq!(ended[0]["actor"]["end_user"], eu.as_str());
    // The request that started it names the end-user it impersonated.
    let created = trail(&app, "?action=run.created").await;
    assert_eq!(created[0]["actor"]["kind"], "api_key");
    assert_eq!(created[0]["actor"]["end_user"], eu.as_str());
    let (_, v) = send(&app, Method::GET, "/v1/audit/verify", None, None).await;
    assert_eq!(v["ok"], true, "{v}");
}
