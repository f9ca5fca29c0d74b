//! Authentication, the permission table and tenant isolation, walked over the route table the
//! router itself is built from ([`paddock_server::routes`]): a new route is covered (or fails
//! here) without anyone remembering to add it.

use super::{AGENT, GATED, PROMPT, TestApp, make_key};
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use paddock_server::{RouteSpec, routes};
use paddock_types::auth::allowed;
use paddock_types::{Permission, Role, Scope};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn call(
    app: &TestApp,
    method: &Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut req = Request::builder().method(method.clone()).uri(path);
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
    let resp = app.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Reply {
        status,
        headers,
        body,
    }
}

fn assert_unauthenticated(r: &Reply, what: &str) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {:?}", r.body);
    assert_eq!(r.body["code"], "unauthenticated", "{what}");
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/problem+json",
        "{what}"
    );
    assert_eq!(
        r.headers.get(header::WWW_AUTHENTICATE).unwrap(),
        "Bearer",
        "{what}"
    );
}

/// A request body that gets past the permission check without creating anything (the handler
/// then refuses it or finds nothing).
fn harmless_body(route: &RouteSpec) -> Option<Value> {
    (route.method == Method::POST || route.method == Method::PUT).then(|| json!({"bogus": 1}))
}

/// The route's path with every parameter filled by `fill(name)`.
fn concrete(route: &RouteSpec, fill: impl Fn(&str, &str) -> String) -> String {
    let mut out = String::new();
    let mut rest = route.path;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').unwrap() + start;
        out.push_str(&rest[..start]);
        out.push_str(&fill(route.path, &rest[start + 1..end]));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn missing(path: &str, param: &str) -> String {
    match (path, param) {
        (_, "id") if path.starts_with("/v1/runs/") => "run_0000000000000000000000000000dead".into(),
        (_, "approval_id") => "apr_0000000000000000000000000000dead".into(),
        ("/v1/keys/{id}", "id") => "key_0000000000000000000000000000dead".into(),
        ("/v1/members/{id}", "id") => "usr_0000000000000000000000000000dead".into(),
        ("/v1/end-users/{id}", "id") => "eu_0000000000000000000000000000dead".into(),
        ("/v1/budgets/{id}", "id") => "bud_0000000000000000000000000000dead".into(),
        (_, "name") => "nothing-here".into(),
        _ => panic!("no stand-in for the parameter {{{param}}} of {path}: add one"),
    }
}

#[tokio::test]
async fn openapi_lists_exactly_the_routes_and_their_permissions() {
    let app = TestApp::new().await;
    let (_, _, doc) = app.get("/v1/openapi.json").await;
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            documented.insert((method.to_uppercase(), path.clone()));
            let _ = op;
        }
    }
    let served: BTreeSet<(String, String)> = routes()
        .iter()
        .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(
        documented, served,
        "the OpenAPI paths and the route table differ"
    );
    for r in routes() {
        let op = &doc["paths"][r.path][r.method.as_str().to_lowercase()];
        match r.permission {
            Some(p) => {
                assert_eq!(op["x-permission"], p.as_str(), "{r:?}");
                assert_eq!(op["security"], json!([{"bearer": []}]), "{r:?}");
                assert!(op["responses"].get("401").is_some(), "{r:?}");
            }
            None => {
                assert!(op.get("security").is_none(), "{r:?}");
                // Public: the document, and the login routes (logging in needs no key; logging
                // out authenticates the session it ends, in its handler).
                assert!(
                    !r.path.starts_with("/v1/")
                        || r.path == "/v1/openapi.json"
                        || r.path.starts_with("/v1/sessions"),
                    "{r:?}"
                );
            }
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn every_route_refuses_missing_malformed_unknown_expired_and_revoked_keys() {
    let app = TestApp::new().await;
    let s = Scope::default_workspace();
    let expired = make_key(&app.store, &s, Role::Owner, Some(1)).await;
    let unknown = paddock_vault::new_api_key_secret().unwrap();
    let headers: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("empty", Some(String::new())),
        ("basic scheme", Some(format!("Basic {}", app.key))),
        ("bearer without key", Some("Bearer ".into())),
        ("short key", Some("Bearer pdk_short".into())),
        (
            "wrong prefix",
            Some(format!("Bearer sk_{}", "a".repeat(40))),
        ),
        (
            "bad characters",
            Some(format!("Bearer pdk_{}!", "a".repeat(40))),
        ),
        ("unknown key", Some(format!("Bearer {unknown}"))),
        ("expired key", Some(format!("Bearer {expired}"))),
    ];
    for route in routes().into_iter().filter(|r| r.permission.is_some()) {
        let path = concrete(&route, missing);
        for (what, value) in &headers {
            let mut req = Request::builder().method(route.method.clone()).uri(&path);
            if let Some(v) = value {
                req = req.header(header::AUTHORIZATION, v);
            }
            let (status, _, body) = app
                .request_raw(
                    req.header(header::CONTENT_TYPE, "application/json")
                        .body(Body::from("{}"))
                        .unwrap(),
                )
                .await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{what} on {route:?}: {body}"
            );
            assert_eq!(body["code"], "unauthenticated", "{what} on {route:?}");
        }
    }
    // Headers and content type, once.
    let r = call(&app, &Method::GET, "/v1/runs", None, None).await;
    assert_unauthenticated(&r, "no key");
    // The public routes stay public.
    for path in ["/healthz", "/docs", "/v1/openapi.json"] {
        assert_eq!(
            call(&app, &Method::GET, path, None, None).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
}

#[tokio::test]
async fn every_role_is_allowed_exactly_what_the_table_says_on_every_route() {
    let app = TestApp::new().await;
    let s = Scope::default_workspace();
    let mut keys = Vec::new();
    for role in Role::ALL {
        keys.push((role, make_key(&app.store, &s, role, None).await));
    }
    let mut covered = BTreeSet::new();
    for route in routes() {
        let Some(permission) = route.permission else {
            continue;
        };
        covered.insert(permission);
        let path = concrete(&route, missing);
        for (role, key) in &keys {
            let r = call(&app, &route.method, &path, Some(key), harmless_body(&route)).await;
            if allowed(*role, permission) {
                assert!(
                    r.status != StatusCode::FORBIDDEN && r.status != StatusCode::UNAUTHORIZED,
                    "{role} should hold {permission} on {route:?}: {} {}",
                    r.status,
                    r.body
                );
            } else {
                assert_eq!(
                    r.status,
                    StatusCode::FORBIDDEN,
                    "{role} must not {permission} on {route:?}: {}",
                    r.body
                );
                assert_eq!(r.body["code"], "forbidden");
            }
        }
    }
    // `secrets:bind` is checked by `PUT /v1/agents/{name}` on top of its route permission, only
    // for a version that binds secrets: the next test walks it.
    covered.insert(Permission::SecretsBind);
    let all: BTreeSet<Permission> = Permission::ALL.into_iter().collect();
    assert_eq!(covered, all, "a permission no route uses");
}

#[tokio::test]
async fn registering_an_agent_that_binds_a_secret_needs_secrets_bind() {
    let app = TestApp::new().await;
    let s = Scope::default_workspace();
    let r = call(
        &app,
        &Method::PUT,
        "/v1/secrets/OWNER_TOKEN",
        Some(&app.key),
        Some(json!({"value": "owner-only-value-0123456789"})),
    )
    .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    let manifest = |version: &str, bound: bool| {
        let mut m = paddock_types::AgentManifest::from_toml(AGENT).unwrap();
        m.name = "binder".into();
        m.version = version.parse().unwrap();
        if bound {
            m.egress = vec![serde_json::from_value(json!({"host": "127.0.0.1"})).unwrap()];
            m.credentials = vec![
                serde_json::from_value(json!({
                    "secret": "OWNER_TOKEN",
                    "host": "127.0.0.1",
                    "header": "Authorization: Bearer {secret}",
                }))
                .unwrap(),
            ];
        }
        json!({"manifest": m, "prompt": PROMPT})
    };
    for (i, role) in Role::ALL.into_iter().enumerate() {
        let key = make_key(&app.store, &s, role, None).await;
        let version = format!("1.0.{i}");
        let r = call(
            &app,
            &Method::PUT,
            "/v1/agents/binder",
            Some(&key),
            Some(manifest(&version, true)),
        )
        .await;
        if allowed(role, Permission::SecretsBind) {
            assert_eq!(r.status, StatusCode::OK, "{role}: {:?}", r.body);
            continue;
        }
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role}: {:?}", r.body);
        assert_eq!(r.body["code"], "forbidden", "{role}");
        if allowed(role, Permission::AgentsWrite) {
            // The refusal is about the binding: the same agent without it is accepted.
            let detail = r.body["detail"].as_str().unwrap();
            assert!(
                detail.contains("secrets:bind") && detail.contains("OWNER_TOKEN"),
                "{detail}"
            );
            let r = call(
                &app,
                &Method::PUT,
                "/v1/agents/binder",
                Some(&key),
                Some(manifest(&format!("1.1.{i}"), false)),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{role}: {:?}", r.body);
        }
    }
    // A key scoped to `agents:write` within an owner's role does not bind either.
    let r = call(
        &app,
        &Method::POST,
        "/v1/keys",
        Some(&app.key),
        Some(json!({"name": "ci", "role": "owner", "scopes": ["agents:write"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let scoped = r.body["secret"].as_str().unwrap().to_owned();
    let r = call(
        &app,
        &Method::PUT,
        "/v1/agents/binder",
        Some(&scoped),
        Some(manifest("2.0.0", true)),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
}

#[tokio::test]
async fn keys_cannot_mint_above_their_role_and_revocation_is_immediate() {
    let app = TestApp::new().await;
    let s = Scope::default_workspace();
    let admin = make_key(&app.store, &s, Role::Admin, None).await;
    let post = |key: String, body: Value| {
        let app = &app;
        async move { call(app, &Method::POST, "/v1/keys", Some(&key), Some(body)).await }
    };
    let r = post(admin.clone(), json!({"name": "up", "role": "owner"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.body["code"], "forbidden");
    // An admin may create admins and below, but not in another workspace.
    let r = post(admin.clone(), json!({"name": "peer", "role": "admin"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = post(
        admin.clone(),
        json!({"name": "x", "role": "viewer", "workspace": "ws_other"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    // Nor revoke a key stronger than itself: the owner's key stays valid.
    let owner_id = call(&app, &Method::GET, "/v1/keys", Some(&app.key), None)
        .await
        .body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "owner")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = call(
        &app,
        &Method::DELETE,
        &format!("/v1/keys/{owner_id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(
        call(&app, &Method::GET, "/v1/runs", Some(&app.key), None)
            .await
            .status,
        StatusCode::OK
    );
    // Bad input creates nothing.
    let before = app.store.count_api_keys().await.unwrap();
    for bad in [
        json!({"name": "", "role": "viewer"}),
        json!({"name": "x", "role": "root"}),
        json!({"name": "x", "role": "viewer", "expires_in_secs": 0}),
        json!({"name": "x", "role": "viewer", "extra": true}),
    ] {
        let r = post(admin.clone(), bad.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            r.body
        );
    }
    let r = post(
        app.key.clone(),
        json!({"name": "x", "role": "viewer", "workspace": "ws_nowhere"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_eq!(app.store.count_api_keys().await.unwrap(), before);

    // A fresh viewer key works, is shown once, listed without its secret, and dies on revoke.
    let r = post(
        admin.clone(),
        json!({"name": "ci", "role": "viewer", "expires_in_secs": 3600}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    let id = r.body["key"]["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("pdk_") && secret.len() > 40, "{secret}");
    assert!(r.body["key"]["expires_at"].is_string(), "{}", r.body);
    assert_eq!(
        call(&app, &Method::GET, "/v1/runs", Some(&secret), None)
            .await
            .status,
        StatusCode::OK
    );
    let list = call(&app, &Method::GET, "/v1/keys", Some(&admin), None).await;
    assert_eq!(list.status, StatusCode::OK);
    let text = list.body.to_string();
    assert!(text.contains(&id) && !text.contains(&secret), "{text}");
    let r = call(
        &app,
        &Method::DELETE,
        &format!("/v1/keys/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = call(&app, &Method::GET, "/v1/runs", Some(&secret), None).await;
    assert_unauthenticated(&r, "revoked key");
    assert_eq!(r.body["detail"], "API key revoked");
    // Revoking again finds no key to revoke.
    let r = call(
        &app,
        &Method::DELETE,
        &format!("/v1/keys/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // An expired key is refused, with its reason.
    let expired = make_key(
        &app.store,
        &s,
        Role::Owner,
        Some(paddock_types::time::now_ms() - 1),
    )
    .await;
    let r = call(&app, &Method::GET, "/v1/runs", Some(&expired), None).await;
    assert_unauthenticated(&r, "expired key");
    assert_eq!(r.body["detail"], "API key expired");
}

/// B's state as its own owner sees it, with what the reads themselves change removed.
async fn snapshot(app: &TestApp, key: &str, run: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for path in [
        "/v1/runs".to_owned(),
        "/v1/approvals".to_owned(),
        "/v1/agents".to_owned(),
        "/v1/secrets".to_owned(),
        "/v1/keys".to_owned(),
        "/v1/workspaces".to_owned(),
        "/v1/end-users".to_owned(),
        "/v1/budgets".to_owned(),
        format!("/v1/runs/{run}"),
        format!("/v1/runs/{run}/events?after=0"),
    ] {
        let mut r = call(app, &Method::GET, &path, Some(key), None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        if let Some(keys) = r.body["data"].as_array_mut().filter(|_| path == "/v1/keys") {
            for k in keys {
                k["last_used_at"] = Value::Null;
            }
        }
        out.push(r.body);
    }
    out
}

#[tokio::test]
async fn another_workspace_resources_are_missing_on_every_route() {
    let app = TestApp::new().await;
    let a = app.key.clone();
    // Workspace B of the same org, with an owner key and one resource of every kind.
    let r = call(
        &app,
        &Method::POST,
        "/v1/workspaces",
        Some(&a),
        Some(json!({"name": "b"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let ws_b = r.body["id"].as_str().unwrap().to_owned();
    let r = call(
        &app,
        &Method::POST,
        "/v1/workspaces",
        Some(&a),
        Some(json!({"name": "b"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let r = call(
        &app,
        &Method::POST,
        "/v1/keys",
        Some(&a),
        Some(json!({"name": "b-owner", "role": "owner", "workspace": ws_b})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["key"]["workspace"], ws_b.as_str());
    let b = r.body["secret"].as_str().unwrap().to_owned();
    let r = call(
        &app,
        &Method::POST,
        "/v1/keys",
        Some(&b),
        Some(json!({"name": "b-viewer", "role": "viewer"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let b_key_id = r.body["key"]["id"].as_str().unwrap().to_owned();
    for (name, manifest) in [("bagent", AGENT), ("gated", GATED)] {
        let mut m = paddock_types::AgentManifest::from_toml(manifest).unwrap();
        m.name = name.to_owned();
        let def = json!({"manifest": m, "prompt": PROMPT});
        let r = call(
            &app,
            &Method::PUT,
            &format!("/v1/agents/{name}"),
            Some(&b),
            Some(def),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let r = call(
        &app,
        &Method::PUT,
        "/v1/secrets/btok",
        Some(&b),
        Some(json!({"value": "b-secret"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let input = json!({"mock": {"turns": [
        {"tool": "write_file", "args": {"path": "a.txt", "content": "x"}}, {"final": "done"}]}});
    let r = call(
        &app,
        &Method::POST,
        "/v1/runs",
        Some(&b),
        Some(json!({"agent": "gated", "input": input})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let run = r.body["id"].as_str().unwrap().to_owned();
    let mut approval = String::new();
    for _ in 0..400 {
        let r = call(
            &app,
            &Method::GET,
            "/v1/approvals?status=pending",
            Some(&b),
            None,
        )
        .await;
        if let Some(id) = r.body["data"][0]["id"].as_str() {
            approval = id.to_owned();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(!approval.is_empty(), "B's run never asked for approval");
    // Let the run park.
    for _ in 0..400 {
        let r = call(
            &app,
            &Method::GET,
            &format!("/v1/runs/{run}"),
            Some(&b),
            None,
        )
        .await;
        if r.body["status"] == "waiting" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }

    // B's end-user and budget.
    let r = call(
        &app,
        &Method::POST,
        "/v1/end-users",
        Some(&b),
        Some(json!({"external_id": "b-customer"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let b_end_user = r.body["id"].as_str().unwrap().to_owned();
    let r = call(
        &app,
        &Method::POST,
        "/v1/budgets",
        Some(&b),
        Some(json!({"subject": "workspace", "period": "day", "limit_usd": 5})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let b_budget = r.body["id"].as_str().unwrap().to_owned();

    let before = snapshot(&app, &b, &run).await;
    // Members belong to the org, not to a workspace, and A's key is an owner (whose reach is the
    // whole org): the foreign member it must not reach is one of another org. (Workspace
    // narrowing of members is covered in `members.rs`.)
    let other_org = Scope {
        org: paddock_types::OrgId::parse("org_other").unwrap(),
        workspace: paddock_types::WorkspaceId::parse("ws_other").unwrap(),
        end_user: None,
    };
    app.store
        .ensure_workspace(&other_org, "other")
        .await
        .unwrap();
    let foreign_member = paddock_types::MemberId::new();
    app.store
        .create_member(
            &other_org,
            paddock_store::MemberRecord {
                id: foreign_member.clone(),
                email: "other@example.com".into(),
                password_hash: "$argon2id$unused".into(),
                role: Role::Viewer,
                workspace: None,
                created_at: 1,
                removed_at: None,
            },
        )
        .await
        .unwrap();
    let foreign_member = foreign_member.to_string();
    let of_b = |path: &str, param: &str| -> String {
        match (path, param) {
            (_, "id") if path.starts_with("/v1/runs/") => run.clone(),
            (_, "approval_id") => approval.clone(),
            ("/v1/keys/{id}", "id") => b_key_id.clone(),
            ("/v1/members/{id}", "id") => foreign_member.clone(),
            ("/v1/end-users/{id}", "id") => b_end_user.clone(),
            ("/v1/budgets/{id}", "id") => b_budget.clone(),
            ("/v1/agents/{name}", "name") => "bagent".into(),
            ("/v1/secrets/{name}", "name") => "btok".into(),
            _ => panic!("no resource of workspace B for {{{param}}} of {path}: add one"),
        }
    };
    let secrets_of_b = [
        run.as_str(),
        approval.as_str(),
        b_key_id.as_str(),
        b_end_user.as_str(),
        "b-customer",
        b_budget.as_str(),
        "bagent",
        "btok",
        "b-secret",
    ];
    let mut checked = 0;
    // PUTs create in A's own workspace under B's names, so they go last: before them, those
    // names are missing in A.
    let mut table = routes();
    table.sort_by_key(|r| r.method == Method::PUT);
    for route in table.into_iter().filter(|r| r.permission.is_some()) {
        if !route.path.contains('{') {
            // Listings and creations act in A's workspace: nothing of B may show.
            if route.method == Method::GET {
                let r = call(&app, &route.method, route.path, Some(&a), None).await;
                assert_eq!(r.status, StatusCode::OK, "{route:?}");
                let text = r.body.to_string();
                for s in secrets_of_b {
                    assert!(!text.contains(s), "{route:?} as A shows B's {s}: {text}");
                }
            }
            continue;
        }
        // PUT creates by name in the caller's own workspace: a name B uses is just a new name.
        let body = match (route.method.clone(), route.path) {
            (Method::PUT, "/v1/secrets/{name}") => Some(json!({"value": "from-a"})),
            (Method::PUT, "/v1/agents/{name}") => None,
            (Method::POST, p) if p.ends_with("/approvals/{approval_id}") => {
                Some(json!({"decision": "approve"}))
            }
            (Method::POST, _) => Some(json!({"reason": "from a"})),
            _ => None,
        };
        if route.method == Method::PUT && body.is_none() {
            // An agent PUT needs a manifest naming the path's agent: covered by the listing
            // check above (A's agents never include B's).
            let mut m = paddock_types::AgentManifest::from_toml(AGENT).unwrap();
            m.name = "bagent".into();
            let r = call(
                &app,
                &route.method,
                "/v1/agents/bagent",
                Some(&a),
                Some(json!({"manifest": m, "prompt": PROMPT})),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            checked += 1;
            continue;
        }
        let on_b = call(
            &app,
            &route.method,
            &concrete(&route, of_b),
            Some(&a),
            body.clone(),
        )
        .await;
        let on_missing = call(
            &app,
            &route.method,
            &concrete(&route, missing),
            Some(&a),
            body,
        )
        .await;
        assert_eq!(
            on_b.status, on_missing.status,
            "{route:?}: {} vs {}",
            on_b.body, on_missing.body
        );
        if route.method != Method::PUT {
            assert_eq!(
                on_b.status,
                StatusCode::NOT_FOUND,
                "{route:?}: {}",
                on_b.body
            );
            // Same body but for the id the detail does not contain anyway.
            assert_eq!(on_b.body, on_missing.body, "{route:?}");
        }
        checked += 1;
    }
    assert!(
        checked >= 9,
        "only {checked} routes with parameters checked"
    );
    let after = snapshot(&app, &b, &run).await;
    assert_eq!(
        before, after,
        "a request of workspace A changed workspace B"
    );
    // And A's key never saw the value B stored.
    let r = call(&app, &Method::GET, "/v1/secrets", Some(&a), None).await;
    assert!(!r.body.to_string().contains("b-secret"));
}

#[tokio::test]
async fn workspaces_are_listed_per_org_and_validated() {
    let app = TestApp::new().await;
    let r = call(&app, &Method::GET, "/v1/workspaces", Some(&app.key), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1, "{}", r.body);
    for bad in [json!({"name": ""}), json!({"name": "x\n"}), json!({})] {
        let r = call(
            &app,
            &Method::POST,
            "/v1/workspaces",
            Some(&app.key),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            r.body
        );
    }
    // A key of another org sees none of this org's workspaces.
    let other = Scope {
        org: paddock_types::OrgId::parse("org_other").unwrap(),
        workspace: paddock_types::WorkspaceId::parse("ws_other").unwrap(),
        end_user: None,
    };
    let k = make_key(&app.store, &other, Role::Owner, None).await;
    let r = call(&app, &Method::GET, "/v1/workspaces", Some(&k), None).await;
    let ids: Vec<&str> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["ws_other"]);
}

#[tokio::test]
async fn a_scoped_key_may_use_only_its_scopes_and_mint_only_within_them() {
    let app = TestApp::new().await;
    let owner = app.key.clone();
    let mint = |key: String, body: Value| {
        let app = &app;
        async move { call(app, &Method::POST, "/v1/keys", Some(&key), Some(body)).await }
    };
    let r = mint(
        owner.clone(),
        json!({"name": "ci", "role": "operator", "scopes": ["runs:read", "runs:create", "runs:read"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["key"]["scopes"], json!(["runs:create", "runs:read"]));
    let ci = r.body["secret"].as_str().unwrap().to_owned();
    let r = call(&app, &Method::GET, "/v1/runs", Some(&ci), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = call(
        &app,
        &Method::POST,
        "/v1/runs?wait=30",
        Some(&ci),
        Some(json!({"agent": "notes", "input": {"mock": {"turns": [{"final": "x"}]}}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let run = r.body["id"].as_str().unwrap().to_owned();
    // Its role could cancel and read agents; its scopes do not let it.
    for (method, path) in [
        (Method::POST, format!("/v1/runs/{run}/cancel")),
        (Method::GET, "/v1/agents".to_owned()),
        (Method::GET, "/v1/approvals".to_owned()),
    ] {
        let body = (method == Method::POST).then(|| json!({}));
        let r = call(&app, &method, &path, Some(&ci), body).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            r.body
        );
    }
    // A scoped admin mints only keys scoped within its own scopes.
    let r = mint(
        owner.clone(),
        json!({"name": "minter", "role": "admin", "scopes": ["keys:write", "runs:read"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let minter = r.body["secret"].as_str().unwrap().to_owned();
    for (body, status) in [
        (
            json!({"name": "wide", "role": "viewer"}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"name": "other", "role": "viewer", "scopes": ["agents:read"]}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"name": "narrow", "role": "viewer", "scopes": ["runs:read"]}),
            StatusCode::CREATED,
        ),
    ] {
        let r = mint(minter.clone(), body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
    }
    // Scopes the role does not hold, none at all, or unknown ones are refused.
    for body in [
        json!({"name": "x", "role": "viewer", "scopes": ["agents:write"]}),
        json!({"name": "x", "role": "viewer", "scopes": []}),
        json!({"name": "x", "role": "viewer", "scopes": ["runs:explode"]}),
    ] {
        let r = mint(owner.clone(), body.clone()).await;
        assert!(r.status.is_client_error(), "{body}: {}", r.body);
    }
    // The listing shows each key's scopes.
    let r = call(&app, &Method::GET, "/v1/keys", Some(&owner), None).await;
    let narrow = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "narrow")
        .unwrap()
        .clone();
    assert_eq!(narrow["scopes"], json!(["runs:read"]));
}
