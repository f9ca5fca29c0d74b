//! Event streams and `?wait=` long-polls (issue 19, item 8): each holds a slot of its key and of
//! its workspace, cap + 1 answers 429 `too_many_streams` with `Retry-After`, a closed stream gives
//! its slot back, and a commit wakes only the streams of its own run. The engine is not started:
//! runs stay queued (open streams stay open) and the only commits are the ones a test makes.

use super::{AGENT, PROMPT, make_key};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use paddock_engine::{Engine, EngineConfig};
use paddock_harness::WorkspaceTools;
use paddock_models::Models;
use paddock_server::{AppState, RateLimiter, StreamCaps, router};
use paddock_store::{Append, DynStore, SqliteStore};
use paddock_types::api::{AgentDefinition, CreateRun};
use paddock_types::{AgentManifest, EventKind, NewEvent, OrgId, Role, RunId, Scope, WorkspaceId};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tower::ServiceExt;

struct App {
    app: Router,
    engine: Arc<Engine>,
    store: DynStore,
    _dir: tempfile::TempDir,
}

async fn app(caps: StreamCaps) -> App {
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
        engine: Arc::clone(&engine),
        vault,
        rate_limiter: Arc::new(RateLimiter::new(Default::default()).with_stream_caps(caps)),
        sessions: Arc::new(paddock_server::Sessions::default()),
    });
    App {
        app,
        engine,
        store,
        _dir: dir,
    }
}

/// A queued run of the `notes` agent in `scope` (registering the agent there first).
async fn queued_run(app: &App, scope: &Scope) -> RunId {
    let def = AgentDefinition {
        manifest: AgentManifest::from_toml(AGENT).unwrap(),
        prompt: PROMPT.to_owned(),
    };
    app.engine.put_agent(scope, def).await.unwrap();
    let req = CreateRun {
        agent: "notes".into(),
        input: json!({"mock": []}),
        metadata: None,
    };
    app.engine.create_run(scope, req).await.unwrap().id
}

/// Opens `GET /v1/runs/{run}/events` as SSE and returns the answer with its body unread: while
/// it is held the stream is open.
async fn open(app: &App, key: &str, run: &RunId) -> Response {
    let req = Request::get(format!("/v1/runs/{run}/events"))
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header(header::ACCEPT, "text/event-stream")
        .body(Body::empty())
        .unwrap();
    app.app.clone().oneshot(req).await.unwrap()
}

#[track_caller]
fn assert_streaming(r: &Response, what: &str) {
    assert_eq!(r.status(), StatusCode::OK, "{what}");
    assert_eq!(
        r.headers()[header::CONTENT_TYPE],
        "text/event-stream",
        "{what}"
    );
}

async fn assert_too_many(r: Response, what: &str) -> Value {
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{what}");
    assert_eq!(
        r.headers()[header::CONTENT_TYPE],
        "application/problem+json",
        "{what}"
    );
    let wait: u64 = r.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait >= 1, "{what}: Retry-After {wait}");
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["code"], "too_many_streams", "{what}: {body}");
    assert_eq!(body["status"], 429, "{what}");
    body
}

#[tokio::test]
async fn streams_are_capped_per_key_and_per_workspace_and_a_closed_one_frees_its_slot() {
    let app = app(StreamCaps {
        per_key: Some(3),
        per_workspace: Some(5),
    })
    .await;
    let s = Scope::default_workspace();
    let run = queued_run(&app, &s).await;
    let a = make_key(&app.store, &s, Role::Viewer, None).await;
    let b = make_key(&app.store, &s, Role::Viewer, None).await;

    let mut held = Vec::new();
    for i in 0..3 {
        let r = open(&app, &a, &run).await;
        assert_streaming(&r, &format!("stream {i} of key a"));
        held.push(r);
    }
    let body = assert_too_many(open(&app, &a, &run).await, "stream 4 of key a").await;
    assert!(
        body["detail"].as_str().unwrap().contains("3 open"),
        "{body}"
    );
    // A `?wait=` long-poll takes a slot too: refused at once, without waiting.
    let r = app
        .app
        .clone()
        .oneshot(
            Request::get(format!("/v1/runs/{run}?wait=30"))
                .header(header::AUTHORIZATION, format!("Bearer {a}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_too_many(r, "a ?wait= of key a").await;
    // The JSON page of events is not long-lived: it is not capped.
    let r = app
        .app
        .clone()
        .oneshot(
            Request::get(format!("/v1/runs/{run}/events?after=0"))
                .header(header::AUTHORIZATION, format!("Bearer {a}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Closing a stream (the client drops it) gives its slot back.
    drop(held.pop());
    let r = open(&app, &a, &run).await;
    assert_streaming(&r, "key a after closing one");
    held.push(r);

    // Key b of the same workspace is served up to the workspace's cap (3 + 2 = 5)…
    for i in 0..2 {
        let r = open(&app, &b, &run).await;
        assert_streaming(&r, &format!("stream {i} of key b"));
        held.push(r);
    }
    let body = assert_too_many(open(&app, &b, &run).await, "key b over the workspace cap").await;
    assert!(
        body["detail"].as_str().unwrap().contains("workspace"),
        "{body}"
    );
    // …and another workspace is untouched.
    let other = Scope {
        org: OrgId::parse("org_other").unwrap(),
        workspace: WorkspaceId::parse("ws_other").unwrap(),
        end_user: None,
    };
    let c = make_key(&app.store, &other, Role::Viewer, None).await;
    let other_run = queued_run(&app, &other).await;
    assert_streaming(&open(&app, &c, &other_run).await, "another workspace");

    // Every slot comes back when the streams end.
    drop(held);
    for i in 0..3 {
        let r = open(&app, &a, &run).await;
        assert_streaming(&r, &format!("key a again, stream {i}"));
    }
}

/// Reads SSE frames from `body` until one carries event id `seq`.
async fn read_until(body: &mut Body, seq: u64) {
    let mut text = String::new();
    let want = format!("id: {seq}\n");
    while !text.contains(&want) {
        let frame = body
            .frame()
            .await
            .expect("the stream ended before the event")
            .unwrap();
        if let Some(data) = frame.data_ref() {
            text.push_str(&String::from_utf8_lossy(data));
        }
    }
}

#[tokio::test]
async fn a_commit_wakes_only_the_streams_of_its_own_run() {
    const STREAMS: u64 = 8;
    const OTHER_COMMITS: u64 = 200;
    let app = app(StreamCaps {
        per_key: None,
        per_workspace: None,
    })
    .await;
    let s = Scope::default_workspace();
    let key = make_key(&app.store, &s, Role::Viewer, None).await;
    let watched = queued_run(&app, &s).await;
    let busy = queued_run(&app, &s).await;
    let mut bodies = Vec::new();
    for _ in 0..STREAMS {
        let r = open(&app, &key, &watched).await;
        assert_streaming(&r, "a stream on the watched run");
        let mut body = r.into_body();
        // The replay of what is already there (run_created), then the stream waits.
        read_until(&mut body, 1).await;
        bodies.push(body);
    }
    let before = app.engine.run_wakeups();
    let started = || {
        NewEvent::now(EventKind::RunStarted {
            worker: "bench".into(),
            recovered: false,
        })
    };
    for _ in 0..OTHER_COMMITS {
        let batch = Append {
            run_id: busy.clone(),
            expected_seq: None,
            events: vec![started()],
        };
        app.store.append(&s, batch).await.unwrap();
    }
    // One commit on the watched run; once every stream has delivered it, the commits before it
    // have been routed too (one router reads commits in order).
    let batch = Append {
        run_id: watched.clone(),
        expected_seq: None,
        events: vec![started()],
    };
    let seq = app.store.append(&s, batch).await.unwrap().last_seq;
    for body in &mut bodies {
        read_until(body, seq).await;
    }
    let woken = app.engine.run_wakeups() - before;
    assert_eq!(
        woken, STREAMS,
        "{OTHER_COMMITS} commits of another run and one of the watched run woke {woken} stream \
         waits; only the watched run's one commit × {STREAMS} streams should"
    );
}
