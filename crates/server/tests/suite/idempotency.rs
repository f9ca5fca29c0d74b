//! `Idempotency-Key` on the creating POSTs: one action per key, replays, mismatches, isolation.

use super::{AGENT, PROMPT, TestApp, make_key};
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use paddock_types::api::AgentDefinition;
use paddock_types::{AgentManifest, Role, Scope};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

fn run_body(text: &str) -> Value {
    json!({"agent": "notes", "input": {"mock": {"turns": [{"final": text}]}}})
}

async fn post(
    app: &axum::Router,
    secret: &str,
    uri: &str,
    key: Option<&str>,
    body: &Value,
) -> Reply {
    let mut req = Request::post(uri)
        .header(header::AUTHORIZATION, format!("Bearer {secret}"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let req = req
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

async fn run_count(app: &TestApp, secret: &str) -> usize {
    let req = Request::get("/v1/runs?limit=200")
        .header(header::AUTHORIZATION, format!("Bearer {secret}"))
        .body(Body::empty())
        .unwrap();
    let (status, _, page) = app.request(req).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["data"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_start_exactly_one_run() {
    let app = TestApp::new().await;
    let body = run_body("once");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (router, secret, body) = (app.app.clone(), app.key.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            post(&router, &secret, "/v1/runs", Some("race-1"), &body).await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let (mut created, mut in_flight) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::CREATED => {
                created += 1;
                ids.insert(r.body["id"].as_str().unwrap().to_owned());
            }
            StatusCode::CONFLICT => {
                in_flight += 1;
                assert_eq!(
                    r.body["code"],
                    json!("idempotency_key_in_flight"),
                    "{}",
                    r.body
                );
                assert_eq!(r.headers.get(header::RETRY_AFTER).unwrap(), "1");
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!(created + in_flight, 20);
    assert!(created >= 1);
    assert_eq!(ids.len(), 1, "every 201 names the same run: {ids:?}");
    assert_eq!(run_count(&app, &app.key).await, 1, "exactly one run exists");
    // Once done, a retry replays that run.
    let r = post(&app.app, &app.key, "/v1/runs", Some("race-1"), &body).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["id"].as_str(), ids.iter().next().map(String::as_str));
    assert_eq!(run_count(&app, &app.key).await, 1);
}

#[tokio::test]
async fn a_replay_returns_the_stored_response() {
    let app = TestApp::new().await;
    let body = run_body("hi");
    let first = post(&app.app, &app.key, "/v1/runs", Some("k-replay"), &body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = post(&app.app, &app.key, "/v1/runs", Some("k-replay"), &body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.body, first.body);
    assert_eq!(
        again.headers.get(header::LOCATION),
        first.headers.get(header::LOCATION)
    );
    assert_eq!(
        again.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    assert_eq!(run_count(&app, &app.key).await, 1);

    // A 4xx is stored too: the replay gets the same refusal.
    let bad = json!({"agent": "missing-agent", "input": {}});
    let r1 = post(&app.app, &app.key, "/v1/runs", Some("k-404"), &bad).await;
    assert!(r1.status.is_client_error(), "{}", r1.body);
    let r2 = post(&app.app, &app.key, "/v1/runs", Some("k-404"), &bad).await;
    assert_eq!(r2.status, r1.status);
    assert_eq!(r2.body, r1.body);
    assert_eq!(r2.headers.get("idempotent-replayed").unwrap(), "true");

    // Workspaces and keys are creating POSTs too.
    let ws = json!({"name": "idem-ws"});
    let w1 = post(&app.app, &app.key, "/v1/workspaces", Some("ws-1"), &ws).await;
    assert_eq!(w1.status, StatusCode::CREATED, "{}", w1.body);
    let w2 = post(&app.app, &app.key, "/v1/workspaces", Some("ws-1"), &ws).await;
    assert_eq!(
        w2.status,
        StatusCode::CREATED,
        "not a 409 conflict: {}",
        w2.body
    );
    assert_eq!(w2.body, w1.body);
    let key = json!({"name": "ci", "role": "viewer"});
    let k1 = post(&app.app, &app.key, "/v1/keys", Some("key-1"), &key).await;
    assert_eq!(k1.status, StatusCode::CREATED, "{}", k1.body);
    // A new key's secret is shown once and never kept: a retry learns that the request
    // succeeded, not the secret, and no second key is made.
    let k2 = post(&app.app, &app.key, "/v1/keys", Some("key-1"), &key).await;
    assert_eq!(k2.status, StatusCode::CONFLICT, "{}", k2.body);
    assert_eq!(k2.body["code"], "idempotency_key_used");
    assert_eq!(k2.headers["idempotent-replayed"], "true");
    let secret = k1.body["secret"].as_str().unwrap();
    assert!(!k2.body.to_string().contains(secret));
    let req = Request::get("/v1/keys")
        .header(header::AUTHORIZATION, format!("Bearer {}", app.key))
        .body(Body::empty())
        .unwrap();
    let (_, _, keys) = app.request(req).await;
    let named_ci = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["name"] == "ci")
        .count();
    assert_eq!(named_ci, 1, "{keys}");
}

#[tokio::test]
async fn each_end_user_has_its_own_keys() {
    let app = TestApp::new().await;
    for external_id in ["ann", "ben"] {
        let r = post(
            &app.app,
            &app.key,
            "/v1/end-users",
            None,
            &json!({"external_id": external_id}),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let as_user = |eu: &'static str| {
        let app = &app;
        async move {
            let req = Request::post("/v1/runs")
                .header(header::AUTHORIZATION, format!("Bearer {}", app.key))
                .header(header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", "same-key")
                .header("Paddock-End-User", eu)
                .body(Body::from(serde_json::to_vec(&run_body("hi")).unwrap()))
                .unwrap();
            let (status, _, body) = app.request(req).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            body
        }
    };
    let ann = as_user("ann").await;
    let ben = as_user("ben").await;
    // Ben's identical request under the same key is his own run, not a replay of Ann's.
    assert_ne!(ann["id"], ben["id"]);
    assert_eq!(
        as_user("ann").await["id"],
        ann["id"],
        "Ann's retry replays hers"
    );
}

#[tokio::test]
async fn the_same_key_with_another_request_is_refused() {
    let app = TestApp::new().await;
    let first = post(&app.app, &app.key, "/v1/runs", Some("k-m"), &run_body("a")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let other = post(&app.app, &app.key, "/v1/runs", Some("k-m"), &run_body("b")).await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.body
    );
    assert_eq!(other.body["code"], json!("idempotency_key_mismatch"));
    // Another path with the same key is another request too.
    let ws = post(
        &app.app,
        &app.key,
        "/v1/workspaces",
        Some("k-m"),
        &json!({"name": "x"}),
    )
    .await;
    assert_eq!(ws.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", ws.body);
    assert_eq!(run_count(&app, &app.key).await, 1);
}

#[tokio::test]
async fn an_invalid_key_header_is_400_and_creates_nothing() {
    let app = TestApp::new().await;
    let long = "k".repeat(256);
    for bad in ["", long.as_str(), "tab\there", "caf\u{e9}"] {
        let Ok(value) = axum::http::HeaderValue::from_bytes(bad.as_bytes()) else {
            continue;
        };
        let req = Request::post("/v1/runs")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", value)
            .body(Body::from(serde_json::to_vec(&run_body("x")).unwrap()))
            .unwrap();
        let (status, ctype, body) = app.request(req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
        assert_eq!(ctype.as_deref(), Some("application/problem+json"));
        assert_eq!(body["code"], json!("invalid_header"));
    }
    let ok = "k".repeat(255);
    let r = post(&app.app, &app.key, "/v1/runs", Some(&ok), &run_body("x")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(run_count(&app, &app.key).await, 1);
}

#[tokio::test]
async fn keys_are_per_workspace() {
    let app = TestApp::new().await;
    let other = Scope {
        org: paddock_types::OrgId::parse("org_other").unwrap(),
        workspace: paddock_types::WorkspaceId::parse("ws_other").unwrap(),
        end_user: None,
    };
    let b = make_key(&app.store, &other, Role::Owner, None).await;
    app.store
        .put_agent(
            &other,
            &AgentDefinition {
                manifest: AgentManifest::from_toml(AGENT).unwrap(),
                prompt: PROMPT.to_owned(),
            },
        )
        .await
        .unwrap();
    let body = run_body("same");
    let ra = post(&app.app, &app.key, "/v1/runs", Some("shared"), &body).await;
    let rb = post(&app.app, &b, "/v1/runs", Some("shared"), &body).await;
    assert_eq!(ra.status, StatusCode::CREATED, "{}", ra.body);
    assert_eq!(rb.status, StatusCode::CREATED, "{}", rb.body);
    assert!(rb.headers.get("idempotent-replayed").is_none());
    assert_ne!(ra.body["id"], rb.body["id"]);
    assert_eq!(run_count(&app, &app.key).await, 1);
    assert_eq!(run_count(&app, &b).await, 1);
}

#[tokio::test]
async fn requests_without_the_header_are_unaffected() {
    let app = TestApp::new().await;
    let body = run_body("plain");
    let r1 = post(&app.app, &app.key, "/v1/runs", None, &body).await;
    let r2 = post(&app.app, &app.key, "/v1/runs", None, &body).await;
    assert_eq!(r1.status, StatusCode::CREATED);
    assert_eq!(r2.status, StatusCode::CREATED);
    assert_ne!(r1.body["id"], r2.body["id"]);
    assert!(r2.headers.get("idempotent-replayed").is_none());
    assert_eq!(run_count(&app, &app.key).await, 2);
}

#[tokio::test]
async fn openapi_documents_the_header_on_creating_posts() {
    let app = TestApp::new().await;
    let (_, _, doc) = app.get("/v1/openapi.json").await;
    for path in ["/v1/runs", "/v1/keys", "/v1/workspaces"] {
        let params = doc["paths"][path]["post"]["parameters"].as_array().unwrap();
        assert!(
            params
                .iter()
                .any(|p| p["name"] == json!("Idempotency-Key") && p["in"] == json!("header")),
            "{path}"
        );
    }
    let params = doc["paths"]["/v1/runs/{id}/cancel"]["post"]["parameters"]
        .as_array()
        .unwrap();
    assert!(params.iter().all(|p| p["name"] != json!("Idempotency-Key")));
}
