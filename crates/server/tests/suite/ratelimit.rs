//! Rate limits through the router: a burst passes, then 429 problem+json with `Retry-After` and
//! the draft-ietf-httpapi-ratelimit-headers fields; keys have their own quota, a workspace's is
//! shared by its keys only; a 401 costs nothing and a 429 is not audited. Quotas are tiny and
//! refill slowly (one request per 1,000 s), so nothing here depends on timing.

use super::make_key;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use paddock_engine::{Engine, EngineConfig};
use paddock_harness::WorkspaceTools;
use paddock_models::Models;
use paddock_server::{AppState, Quota, RateLimiter, RateLimits, router};
use paddock_store::{AuditFilter, DynStore, SqliteStore};
use paddock_types::{OrgId, Role, Scope, WorkspaceId};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tower::ServiceExt;

/// One request per 1,000 s after the burst: no refill during a test.
fn quota(burst: u32) -> Option<Quota> {
    Some(Quota {
        per_second: 0.001,
        burst,
    })
}

struct App {
    app: Router,
    store: DynStore,
    _dir: tempfile::TempDir,
}

async fn app(limits: RateLimits) -> App {
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = SqliteStore::open(dir.path()).unwrap();
    let vault = Arc::new(
        paddock_vault::Vault::open(Arc::clone(&store), dir.path())
            .await
            .unwrap(),
    );
    let engine = Engine::new(
        Arc::clone(&store),
        Arc::new(Models::new(&BTreeMap::new()).unwrap()),
        Arc::new(WorkspaceTools::new(dir.path().join("workspaces"))),
        EngineConfig::default(),
    );
    let app = router(AppState {
        engine,
        vault,
        rate_limiter: Arc::new(RateLimiter::new(limits)),
        sessions: Arc::new(paddock_server::Sessions::default()),
    });
    App {
        app,
        store,
        _dir: dir,
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn send(
    app: &App,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
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
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

async fn get(app: &App, key: &str) -> Reply {
    send(app, "GET", "/v1/runs", Some(key), None).await
}

fn other_workspace() -> Scope {
    Scope {
        // Another org: `make_key` names every workspace it creates "test", unique per org.
        org: OrgId::parse("org_other").unwrap(),
        workspace: WorkspaceId::parse("ws_other").unwrap(),
        end_user: None,
    }
}

#[track_caller]
fn assert_limited(r: &Reply, what: &str) {
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{what}: {:?}",
        r.body
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{what}"
    );
    assert_eq!(r.body["code"], "rate_limited", "{what}");
    assert_eq!(r.body["status"], 429, "{what}");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(wait >= 1, "{what}: Retry-After {wait}");
    assert!(r.header("ratelimit").is_some(), "{what}");
    assert!(r.header("ratelimit-policy").is_some(), "{what}");
}

#[tokio::test]
async fn a_burst_passes_then_429_with_retry_after_and_ratelimit_headers() {
    let app = app(RateLimits {
        per_key: quota(3),
        per_workspace: None,
    })
    .await;
    let key = make_key(&app.store, &Scope::default_workspace(), Role::Owner, None).await;
    for left in [2, 1, 0] {
        let r = get(&app, &key).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.header("ratelimit-policy"), Some("\"key\";q=3;w=3000"));
        let live = r.header("ratelimit").unwrap();
        assert!(live.starts_with(&format!("\"key\";r={left};t=")), "{live}");
    }
    let r = get(&app, &key).await;
    assert_limited(&r, "fourth request");
    assert_eq!(r.header("retry-after"), Some("1000"));
    assert_eq!(r.header("ratelimit"), Some("\"key\";r=0;t=3000"));
    // Still refused: refusals do not extend the wait, but they do not pass either.
    assert_limited(&get(&app, &key).await, "fifth request");
}

#[tokio::test]
async fn keys_have_their_own_quota() {
    let app = app(RateLimits {
        per_key: quota(2),
        per_workspace: None,
    })
    .await;
    let s = Scope::default_workspace();
    let a = make_key(&app.store, &s, Role::Viewer, None).await;
    let b = make_key(&app.store, &s, Role::Viewer, None).await;
    for _ in 0..2 {
        assert_eq!(get(&app, &a).await.status, StatusCode::OK);
    }
    assert_limited(&get(&app, &a).await, "key a spent");
    for _ in 0..2 {
        assert_eq!(
            get(&app, &b).await.status,
            StatusCode::OK,
            "key b is independent"
        );
    }
    assert_limited(&get(&app, &b).await, "key b spent");
}

#[tokio::test]
async fn a_workspace_quota_is_shared_by_its_keys_and_no_one_else() {
    let app = app(RateLimits {
        per_key: None,
        per_workspace: quota(3),
    })
    .await;
    let s = Scope::default_workspace();
    let a1 = make_key(&app.store, &s, Role::Viewer, None).await;
    let a2 = make_key(&app.store, &s, Role::Viewer, None).await;
    let b = make_key(&app.store, &other_workspace(), Role::Viewer, None).await;
    for k in [&a1, &a2, &a1] {
        let r = get(&app, k).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"workspace\";q=3;w=3000")
        );
    }
    let r = get(&app, &a2).await;
    assert_limited(&r, "the workspace's quota is spent, whichever key asks");
    assert!(
        r.body["detail"].as_str().unwrap().contains("workspace"),
        "{:?}",
        r.body
    );
    for _ in 0..3 {
        assert_eq!(
            get(&app, &b).await.status,
            StatusCode::OK,
            "another workspace has its own quota"
        );
    }
    assert_limited(&get(&app, &b).await, "other workspace spent");
}

#[tokio::test]
async fn a_key_refused_by_its_workspace_limit_keeps_its_own_quota() {
    let app = app(RateLimits {
        per_key: quota(2),
        per_workspace: quota(2),
    })
    .await;
    let s = Scope::default_workspace();
    let a = make_key(&app.store, &s, Role::Viewer, None).await;
    let b = make_key(&app.store, &s, Role::Viewer, None).await;
    for _ in 0..2 {
        assert_eq!(get(&app, &a).await.status, StatusCode::OK);
    }
    let r = get(&app, &b).await;
    assert_limited(&r, "workspace spent");
    // Both policies are reported; b's own quota is untouched.
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"key\";q=2;w=2000, \"workspace\";q=2;w=2000")
    );
    assert!(
        r.header("ratelimit").unwrap().starts_with("\"key\";r=2;"),
        "{:?}",
        r.header("ratelimit")
    );
}

#[tokio::test]
async fn unauthenticated_requests_consume_nothing() {
    let app = app(RateLimits {
        per_key: quota(1),
        per_workspace: quota(1),
    })
    .await;
    let s = Scope::default_workspace();
    let key = make_key(&app.store, &s, Role::Owner, None).await;
    let expired = make_key(&app.store, &s, Role::Owner, Some(1)).await;
    let unknown = paddock_vault::new_api_key_secret().unwrap();
    for _ in 0..5 {
        for k in [
            None,
            Some("pdk_bad"),
            Some(unknown.as_str()),
            Some(expired.as_str()),
        ] {
            let r = send(&app, "GET", "/v1/runs", k, None).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{k:?}");
            assert!(r.header("ratelimit").is_none(), "a 401 reports no quota");
        }
    }
    let r = get(&app, &key).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the 401s (even of a key of this workspace) used up nothing: {:?}",
        r.body
    );
    assert_limited(&get(&app, &key).await, "now spent");
}

#[tokio::test]
async fn every_authenticated_answer_carries_the_headers_and_a_429_is_not_audited() {
    let app = app(RateLimits {
        per_key: quota(3),
        per_workspace: None,
    })
    .await;
    let s = Scope::default_workspace();
    let owner = make_key(&app.store, &s, Role::Owner, None).await;
    let viewer = make_key(&app.store, &s, Role::Viewer, None).await;
    // 403 and 404 answers report the quota too.
    let r = send(
        &app,
        "POST",
        "/v1/workspaces",
        Some(&viewer),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.header("ratelimit").unwrap().starts_with("\"key\";r=2;"));
    let r = send(
        &app,
        "GET",
        "/v1/runs/run_0000000000000000000000000000dead",
        Some(&owner),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.header("ratelimit").unwrap().starts_with("\"key\";r=2;"));

    let audited = |app: &App| {
        let store = Arc::clone(&app.store);
        async move {
            store
                .list_audit(
                    &Scope::default_workspace(),
                    &AuditFilter::default(),
                    None,
                    100,
                )
                .await
                .unwrap()
                .data
                .len()
        }
    };
    let before = audited(&app).await;
    for name in ["one", "two"] {
        let r = send(
            &app,
            "POST",
            "/v1/workspaces",
            Some(&owner),
            Some(json!({"name": name})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    assert_eq!(audited(&app).await, before + 2);
    let r = send(
        &app,
        "POST",
        "/v1/workspaces",
        Some(&owner),
        Some(json!({"name": "three"})),
    )
    .await;
    assert_limited(&r, "owner spent");
    assert_eq!(audited(&app).await, before + 2, "a 429 adds no audit entry");
    // And the refused request did nothing.
    let listed = app.store.list_workspaces(&s).await.unwrap();
    assert!(!listed.iter().any(|w| w.name == "three"), "{listed:?}");
}

#[tokio::test]
async fn without_limits_there_are_no_headers() {
    let app = app(RateLimits::default()).await;
    let key = make_key(&app.store, &Scope::default_workspace(), Role::Owner, None).await;
    for _ in 0..20 {
        let r = get(&app, &key).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.header("ratelimit").is_none());
        assert!(r.header("ratelimit-policy").is_none());
    }
}

/// The store keeps verified keys in memory (so authenticating costs no database read); a key
/// used a moment ago and then revoked through the API is refused on its very next request.
#[tokio::test]
async fn a_revocation_takes_effect_at_once_despite_the_key_cache() {
    let app = app(RateLimits::default()).await;
    let s = Scope::default_workspace();
    let owner = make_key(&app.store, &s, Role::Owner, None).await;
    let victim = make_key(&app.store, &s, Role::Viewer, None).await;
    for _ in 0..3 {
        assert_eq!(get(&app, &victim).await.status, StatusCode::OK);
    }
    let keys = send(&app, "GET", "/v1/keys", Some(&owner), None).await;
    let id = keys.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "viewer")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = send(
        &app,
        "DELETE",
        &format!("/v1/keys/{id}"),
        Some(&owner),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let r = get(&app, &victim).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    assert_eq!(get(&app, &owner).await.status, StatusCode::OK);
}
