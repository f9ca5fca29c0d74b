//! Members, login sessions and orgs: logging in (and failing to, identically), what a session
//! may do, workspace narrowing, logout and removal taking effect at once, expiry, role ceilings,
//! bad input, and orgs that are isolated from the first one.

use super::{TestApp, make_key};
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use paddock_types::{Role, Scope};
use serde_json::{Value, json};
use tower::ServiceExt;

const PASSWORD: &str = "correct horse battery";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
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
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Reply {
        status,
        headers,
        body,
    }
}

#[track_caller]
fn assert_problem(r: &Reply, status: StatusCode, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/problem+json",
        "{what}"
    );
    assert_eq!(r.body["code"], code, "{what}: {}", r.body);
}

async fn add_member(app: &TestApp, by: &str, body: Value) -> Reply {
    call(app, Method::POST, "/v1/members", Some(by), Some(body)).await
}

/// Adds a member with the owner key; returns its id.
async fn member(app: &TestApp, email: &str, role: &str, workspace: Option<&str>) -> String {
    let mut body = json!({"email": email, "password": PASSWORD, "role": role});
    if let Some(ws) = workspace {
        body["workspace"] = json!(ws);
    }
    let r = add_member(app, &app.key, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn login(app: &TestApp, body: Value) -> Reply {
    call(app, Method::POST, "/v1/sessions", None, Some(body)).await
}

/// Logs in and returns the token.
async fn session(app: &TestApp, email: &str, workspace: Option<&str>) -> String {
    let mut body = json!({"email": email, "password": PASSWORD});
    if let Some(ws) = workspace {
        body["workspace"] = json!(ws);
    }
    let r = login(app, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["token"].as_str().unwrap().to_owned()
}

async fn status(app: &TestApp, method: Method, path: &str, token: &str) -> StatusCode {
    call(app, method, path, Some(token), None).await.status
}

async fn new_workspace(app: &TestApp, name: &str) -> String {
    let r = call(
        app,
        Method::POST,
        "/v1/workspaces",
        Some(&app.key),
        Some(json!({ "name": name })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn audit(app: &TestApp, action: &str) -> Vec<Value> {
    let r = call(
        app,
        Method::GET,
        &format!("/v1/audit?action={action}"),
        Some(&app.key),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn login_works_and_every_failure_looks_the_same() {
    let app = TestApp::new().await;
    let id = member(&app, "Op@Example.com", "operator", None).await;

    // Email case does not matter; the token is shown once and acts as the member.
    let r = login(
        &app,
        json!({"email": "op@example.COM", "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let token = r.body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("pds_") && token.len() > 40, "{token}");
    assert_eq!(r.body["role"], "operator");
    assert_eq!(r.body["workspace"], "ws_default");
    assert_eq!(r.body["member"]["id"], id.as_str());
    assert!(r.body["expires_at"].is_string(), "{}", r.body);
    assert!(!r.body.to_string().contains(PASSWORD));

    // Wrong password and unknown email: the same 401, body and headers.
    let wrong = login(
        &app,
        json!({"email": "op@example.com", "password": "not the password"}),
    )
    .await;
    let unknown = login(
        &app,
        json!({"email": "nobody@example.com", "password": PASSWORD}),
    )
    .await;
    for r in [&wrong, &unknown] {
        assert_problem(r, StatusCode::UNAUTHORIZED, "unauthenticated", "bad login");
        assert_eq!(r.headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
    }
    assert_eq!(wrong.body, unknown.body);

    // The session may do what an operator may, and nothing above.
    assert_eq!(
        status(&app, Method::GET, "/v1/runs", &token).await,
        StatusCode::OK
    );
    let r = call(
        &app,
        Method::POST,
        "/v1/runs",
        Some(&token),
        Some(json!({"agent": "notes", "input": {"mock": {"turns": [{"final": "ok"}]}}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for (method, path) in [
        (Method::GET, "/v1/keys"),
        (Method::GET, "/v1/members"),
        (Method::GET, "/v1/audit"),
        (Method::PUT, "/v1/secrets/x"),
    ] {
        let r = call(
            &app,
            method.clone(),
            path,
            Some(&token),
            Some(json!({"value": "v"})),
        )
        .await;
        assert_problem(&r, StatusCode::FORBIDDEN, "forbidden", path);
        assert!(
            r.body["detail"]
                .as_str()
                .unwrap()
                .contains("operator member"),
            "{}",
            r.body
        );
    }

    // Audited: the login, the failure of a known member (not the unknown email), the run
    // created by the member, and the refusals, all naming the member.
    let created = audit(&app, "session.created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["actor"]["kind"], "member");
    assert_eq!(created[0]["actor"]["member_id"], id.as_str());
    assert!(
        created[0]["actor"].get("key_id").is_none(),
        "{}",
        created[0]
    );
    let failed = audit(&app, "auth.failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["actor"]["member_id"], id.as_str());
    assert_eq!(failed[0]["detail"]["reason"], "wrong password");
    let runs = audit(&app, "run.created").await;
    assert_eq!(runs.last().unwrap()["actor"]["member_id"], id.as_str());
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/audit?actor={id}&action=keys:read"),
        Some(&app.key),
        None,
    )
    .await;
    assert_eq!(r.body["data"][0]["outcome"], "denied", "{}", r.body);
    let trail = call(&app, Method::GET, "/v1/audit", Some(&app.key), None)
        .await
        .body
        .to_string();
    assert!(
        !trail.contains(PASSWORD) && !trail.contains(&token),
        "{trail}"
    );
    let v = call(&app, Method::GET, "/v1/audit/verify", Some(&app.key), None).await;
    assert_eq!(v.body["ok"], true, "{}", v.body);
}

#[tokio::test]
async fn repeated_failures_are_throttled_whether_or_not_the_email_exists() {
    let app = TestApp::new().await;
    member(&app, "t@example.com", "viewer", None).await;
    for email in ["t@example.com", "ghost@example.com"] {
        for _ in 0..5 {
            let r = login(&app, json!({"email": email, "password": "wrong password!"})).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
        }
        // Now even the right password waits.
        let r = login(
            &app,
            json!({"email": email.to_uppercase(), "password": PASSWORD}),
        )
        .await;
        assert_problem(
            &r,
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            email,
        );
        assert!(r.headers.get(header::RETRY_AFTER).is_some());
    }
    // Another email is not affected.
    member(&app, "u@example.com", "viewer", None).await;
    session(&app, "u@example.com", None).await;
}

#[tokio::test]
async fn a_member_narrowed_to_a_workspace_acts_only_there() {
    let app = TestApp::new().await;
    let ws_b = new_workspace(&app, "b").await;
    let dev = member(&app, "dev@example.com", "developer", Some(&ws_b)).await;
    // A run in the default workspace.
    let r = call(
        &app,
        Method::POST,
        "/v1/runs",
        Some(&app.key),
        Some(json!({"agent": "notes", "input": {"mock": {"turns": [{"final": "ok"}]}}})),
    )
    .await;
    let run = r.body["id"].as_str().unwrap().to_owned();

    // The session lands in B, and asking for another workspace is refused.
    let r = login(
        &app,
        json!({"email": "dev@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.body["workspace"], ws_b.as_str(), "{}", r.body);
    let token = r.body["token"].as_str().unwrap().to_owned();
    let r = login(
        &app,
        json!({"email": "dev@example.com", "password": PASSWORD, "workspace": "ws_default"}),
    )
    .await;
    assert_problem(&r, StatusCode::FORBIDDEN, "forbidden", "other workspace");
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/runs/{run}"),
        Some(&token),
        None,
    )
    .await;
    assert_problem(
        &r,
        StatusCode::NOT_FOUND,
        "not_found",
        "run of another workspace",
    );
    let r = call(&app, Method::GET, "/v1/runs", Some(&token), None).await;
    assert_eq!(r.body["data"], json!([]), "{}", r.body);
    // It holds its role there: a developer writes secrets of B.
    let r = call(
        &app,
        Method::PUT,
        "/v1/secrets/tok",
        Some(&token),
        Some(json!({"value": "v"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    // An admin key of the default workspace neither sees nor removes B's member, but an org-wide
    // member does.
    let admin = make_key(&app.store, &Scope::default_workspace(), Role::Admin, None).await;
    let r = call(&app, Method::GET, "/v1/members", Some(&admin), None).await;
    assert!(!r.body.to_string().contains(&dev), "{}", r.body);
    let r = call(
        &app,
        Method::DELETE,
        &format!("/v1/members/{dev}"),
        Some(&admin),
        None,
    )
    .await;
    assert_problem(
        &r,
        StatusCode::NOT_FOUND,
        "not_found",
        "B's member as A's admin",
    );
    let r = call(&app, Method::GET, "/v1/members", Some(&app.key), None).await;
    assert!(r.body.to_string().contains(&dev), "{}", r.body);
}

#[tokio::test]
async fn logout_and_member_removal_take_effect_at_once() {
    let app = TestApp::new().await;
    let id = member(&app, "m@example.com", "admin", None).await;
    let one = session(&app, "m@example.com", None).await;
    let two = session(&app, "m@example.com", None).await;
    assert_eq!(
        status(&app, Method::GET, "/v1/keys", &one).await,
        StatusCode::OK
    );

    // Logging out ends that session only.
    assert_eq!(
        status(&app, Method::DELETE, "/v1/sessions/current", &one).await,
        StatusCode::NO_CONTENT
    );
    let r = call(&app, Method::GET, "/v1/runs", Some(&one), None).await;
    assert_problem(
        &r,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "after logout",
    );
    assert_eq!(
        status(&app, Method::DELETE, "/v1/sessions/current", &one).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&app, Method::GET, "/v1/runs", &two).await,
        StatusCode::OK
    );
    // Logging out needs a session, not an API key.
    assert_eq!(
        status(&app, Method::DELETE, "/v1/sessions/current", &app.key).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(audit(&app, "session.ended").await.len(), 1);

    // Removing the member kills its other session on the next request, and its login.
    assert_eq!(
        status(&app, Method::DELETE, &format!("/v1/members/{id}"), &app.key).await,
        StatusCode::NO_CONTENT
    );
    let r = call(&app, Method::GET, "/v1/runs", Some(&two), None).await;
    assert_problem(
        &r,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "removed member",
    );
    let r = login(
        &app,
        json!({"email": "m@example.com", "password": PASSWORD}),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "removed member login",
    );
    assert_eq!(
        status(&app, Method::DELETE, &format!("/v1/members/{id}"), &app.key).await,
        StatusCode::NOT_FOUND
    );
    let removed = audit(&app, "member.removed").await;
    assert_eq!(removed[0]["resource"], format!("member/{id}"));
}

#[tokio::test]
async fn an_expired_session_is_refused() {
    let app = TestApp::new().await;
    let id = member(&app, "e@example.com", "owner", None).await;
    let token = format!("pds_{}", "e".repeat(43));
    let now = paddock_types::time::now_ms();
    app.store
        .create_session(
            &Scope::default_workspace(),
            paddock_store::SessionRecord {
                token_hash: paddock_vault::hash_api_key(&token),
                member: paddock_types::MemberId::parse(&id).unwrap(),
                created_at: now - 10_000,
                expires_at: now - 1,
                revoked_at: None,
            },
        )
        .await
        .unwrap();
    let r = call(&app, Method::GET, "/v1/runs", Some(&token), None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthenticated", "expired");
    assert_eq!(r.body["detail"], "session expired; log in again");
    // Malformed and unknown tokens are refused too.
    for bad in ["pds_short", &format!("pds_{}", "f".repeat(43))] {
        let r = call(&app, Method::GET, "/v1/runs", Some(bad), None).await;
        assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthenticated", bad);
    }
    let failed = audit(&app, "auth.failed").await;
    assert_eq!(failed[0]["actor"]["member_id"], id.as_str(), "{failed:?}");
}

#[tokio::test]
async fn members_cannot_be_added_above_the_adder() {
    let app = TestApp::new().await;
    let ws = Scope::default_workspace().workspace.to_string();
    let admin_key = make_key(&app.store, &Scope::default_workspace(), Role::Admin, None).await;
    let ok = |email: &str, role: &str| json!({"email": email, "password": PASSWORD, "role": role, "workspace": ws});
    // An admin key adds admins and below, only narrowed to its own workspace.
    let r = add_member(&app, &admin_key, ok("o@x.io", "owner")).await;
    assert_problem(
        &r,
        StatusCode::FORBIDDEN,
        "forbidden",
        "admin key adds owner",
    );
    let r = add_member(
        &app,
        &admin_key,
        json!({"email": "w@x.io", "password": PASSWORD, "role": "viewer"}),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::FORBIDDEN,
        "forbidden",
        "admin key adds org-wide",
    );
    let r = add_member(&app, &admin_key, ok("a@x.io", "admin")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // A narrowed admin member's session likewise; it cannot remove an owner either.
    let admin = session(&app, "a@x.io", None).await;
    let r = add_member(&app, &admin, ok("o2@x.io", "owner")).await;
    assert_problem(
        &r,
        StatusCode::FORBIDDEN,
        "forbidden",
        "admin session adds owner",
    );
    let r = add_member(&app, &admin, ok("d@x.io", "developer")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let owner = member(&app, "boss@x.io", "owner", None).await;
    let r = call(
        &app,
        Method::DELETE,
        &format!("/v1/members/{owner}"),
        Some(&admin),
        None,
    )
    .await;
    assert_problem(
        &r,
        StatusCode::FORBIDDEN,
        "forbidden",
        "admin removes owner",
    );
    // A developer cannot manage members at all.
    let dev = session(&app, "d@x.io", None).await;
    let r = add_member(&app, &dev, ok("v@x.io", "viewer")).await;
    assert_problem(&r, StatusCode::FORBIDDEN, "forbidden", "developer adds");
    // An owner member's session creates owners and API keys.
    let boss = session(&app, "boss@x.io", None).await;
    let r = add_member(
        &app,
        &boss,
        json!({"email": "o3@x.io", "password": PASSWORD, "role": "owner"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = call(
        &app,
        Method::POST,
        "/v1/keys",
        Some(&boss),
        Some(json!({"name": "ci", "role": "viewer"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let emails: Vec<String> = call(&app, Method::GET, "/v1/members", Some(&app.key), None)
        .await
        .body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["email"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(emails, ["a@x.io", "d@x.io", "boss@x.io", "o3@x.io"]);
}

#[tokio::test]
async fn bad_member_input_is_refused_and_creates_nothing() {
    let app = TestApp::new().await;
    member(&app, "taken@x.io", "viewer", None).await;
    let base = json!({"email": "new@x.io", "password": PASSWORD, "role": "viewer"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let cases = vec![
        (
            "short password",
            with("password", json!("short")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "oversized password",
            with("password", json!("p".repeat(1025))),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "bad email",
            with("email", json!("not-an-email")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "spaces in email",
            with("email", json!("a b@x.io")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "oversized email",
            with("email", json!(format!("{}@x.io", "a".repeat(300)))),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown role",
            with("role", json!("root")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown field",
            with("admin", json!(true)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "narrowed owner",
            json!({"email": "n@x.io", "password": PASSWORD, "role": "owner", "workspace": "ws_default"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown workspace",
            with("workspace", json!("ws_nowhere")),
            StatusCode::NOT_FOUND,
        ),
        (
            "taken email",
            with("email", json!("TAKEN@x.io")),
            StatusCode::CONFLICT,
        ),
    ];
    for (what, body, expected) in cases {
        let r = add_member(&app, &app.key, body).await;
        assert_eq!(r.status, expected, "{what}: {}", r.body);
        assert_eq!(
            r.headers.get(header::CONTENT_TYPE).unwrap(),
            "application/problem+json",
            "{what}"
        );
        assert!(!r.body.to_string().contains(PASSWORD), "{what}: {}", r.body);
    }
    let r = call(&app, Method::POST, "/v1/members", Some(&app.key), None).await;
    assert!(r.status.is_client_error(), "{}", r.status);
    // A body over the limit.
    let huge = with("password", json!("p".repeat(2 * 1024 * 1024)));
    let r = add_member(&app, &app.key, huge).await;
    assert_problem(
        &r,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "huge body",
    );
    assert_eq!(
        app.store
            .list_members(&Scope::default_workspace())
            .await
            .unwrap()
            .len(),
        1
    );
    // Logins with bad input are refused too, without a session.
    for bad in [
        json!({"email": "taken@x.io"}),
        json!({"email": "taken@x.io", "password": "p".repeat(1025)}),
        json!({"email": "taken@x.io", "password": PASSWORD, "extra": 1}),
    ] {
        let r = login(&app, bad.clone()).await;
        assert_problem(
            &r,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            &bad.to_string(),
        );
    }
}

#[tokio::test]
async fn a_new_org_is_isolated_from_the_first() {
    let app = TestApp::new().await;
    let r = call(
        &app,
        Method::POST,
        "/v1/runs",
        Some(&app.key),
        Some(json!({"agent": "notes", "input": {"mock": {"turns": [{"final": "ok"}]}}})),
    )
    .await;
    let run = r.body["id"].as_str().unwrap().to_owned();
    member(&app, "first@x.io", "viewer", None).await;

    let r = call(
        &app,
        Method::POST,
        "/v1/orgs",
        Some(&app.key),
        Some(json!({"name": "Acme"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let org = r.body["org"]["id"].as_str().unwrap().to_owned();
    let ws = r.body["workspace"]["id"].as_str().unwrap().to_owned();
    let key = r.body["key"]["secret"].as_str().unwrap().to_owned();
    assert!(org.starts_with("org_") && org != "org_default");
    assert_eq!(r.body["key"]["key"]["role"], "owner");
    assert_eq!(r.body["key"]["key"]["workspace"], ws.as_str());

    // The new org's owner sees nothing of the first org.
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/runs/{run}"),
        Some(&key),
        None,
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found", "first org's run");
    let r = call(&app, Method::GET, "/v1/runs", Some(&key), None).await;
    assert_eq!(r.body["data"], json!([]));
    let r = call(&app, Method::GET, "/v1/workspaces", Some(&key), None).await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1, "{}", r.body);
    assert_eq!(r.body["data"][0]["id"], ws.as_str());
    let r = call(&app, Method::GET, "/v1/members", Some(&key), None).await;
    assert_eq!(r.body["data"], json!([]), "{}", r.body);
    // Nor creates orgs: that is for the first org's owners.
    let r = call(
        &app,
        Method::POST,
        "/v1/orgs",
        Some(&key),
        Some(json!({"name": "Sub"})),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::FORBIDDEN,
        "forbidden",
        "org from another org",
    );
    let r = call(&app, Method::GET, "/v1/orgs", Some(&key), None).await;
    assert_problem(
        &r,
        StatusCode::FORBIDDEN,
        "forbidden",
        "orgs list from another org",
    );
    // The same email may be a member of both orgs; the new org's member logs in to its own.
    let r = add_member(
        &app,
        &key,
        json!({"email": "first@x.io", "password": "another password 2", "role": "admin"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = login(
        &app,
        json!({"email": "first@x.io", "password": "another password 2"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["org"], org.as_str());
    assert_eq!(r.body["workspace"], ws.as_str());

    // Listed for the first org's owners; names are unique; bad input creates nothing.
    let r = call(&app, Method::GET, "/v1/orgs", Some(&app.key), None).await;
    assert!(r.body.to_string().contains(&org), "{}", r.body);
    let count = r.body["data"].as_array().unwrap().len();
    let r = call(
        &app,
        Method::POST,
        "/v1/orgs",
        Some(&app.key),
        Some(json!({"name": "ACME"})),
    )
    .await;
    assert_problem(&r, StatusCode::CONFLICT, "conflict", "taken name");
    for bad in [
        json!({"name": ""}),
        json!({"name": "x\n"}),
        json!({}),
        json!({"name": "x", "y": 1}),
    ] {
        let r = call(
            &app,
            Method::POST,
            "/v1/orgs",
            Some(&app.key),
            Some(bad.clone()),
        )
        .await;
        assert_problem(
            &r,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            &bad.to_string(),
        );
    }
    let r = call(&app, Method::GET, "/v1/orgs", Some(&app.key), None).await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), count);
    assert_eq!(
        audit(&app, "org.created").await[0]["resource"],
        format!("org/{org}")
    );
}
