//! Measures what idle event streams cost while another run commits (issue 19, item 8): 1,000
//! SSE streams open on one run through the router, 1,000 appends to another run, then the same
//! appends with 1,000 tasks on the store's raw commit feed (what each stream did before streams
//! were woken per run). Prints wake-ups and process CPU time for each; asserts nothing.
//!
//! `cargo run --release -p paddock-server --example stream_wakeups`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt;
use paddock_engine::{Engine, EngineConfig};
use paddock_harness::WorkspaceTools;
use paddock_models::Models;
use paddock_server::{AppState, RateLimiter, StreamCaps, router};
use paddock_store::{Append, DynStore, SqliteStore};
use paddock_types::api::{AgentDefinition, CreateRun};
use paddock_types::{AgentManifest, EventKind, KeyId, NewEvent, Role, RunId, Scope};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tower::ServiceExt;

const STREAMS: usize = 1000;
const APPENDS: usize = 1000;

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of the file (utime, stime) are 12 and 13 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

async fn append_to(store: &DynStore, scope: &Scope, run: &RunId) {
    for _ in 0..APPENDS {
        let batch = Append {
            run_id: run.clone(),
            expected_seq: None,
            events: vec![NewEvent::now(EventKind::RunStarted {
                worker: "bench".into(),
                recovered: false,
            })],
        };
        store.append(scope, batch).await.unwrap();
    }
}

#[tokio::main]
async fn main() {
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
    let scope = Scope::default_workspace();
    let manifest = "name = \"idle\"\nversion = \"1.0.0\"\n[model]\nprovider = \"scripted\"\n\
                    name = \"m\"\n";
    engine
        .put_agent(
            &scope,
            AgentDefinition {
                manifest: AgentManifest::from_toml(manifest).unwrap(),
                prompt: "x".into(),
            },
        )
        .await
        .unwrap();
    let create = || CreateRun {
        agent: "idle".into(),
        input: serde_json::json!({}),
        metadata: None,
    };
    let watched = engine.create_run(&scope, create()).await.unwrap().id;
    let busy = engine.create_run(&scope, create()).await.unwrap().id;
    store.ensure_workspace(&scope, "bench").await.unwrap();
    let secret = paddock_vault::new_api_key_secret().unwrap();
    let key = paddock_store::KeyRecord {
        id: KeyId::new(),
        name: "bench".into(),
        role: Role::Viewer,
        prefix: paddock_vault::api_key_display_prefix(&secret),
        secret_hash: paddock_vault::hash_api_key(&secret),
        created_at: paddock_types::time::now_ms(),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        scopes: None,
    };
    store.create_api_key(&scope, key).await.unwrap();
    let app = router(AppState {
        engine: Arc::clone(&engine),
        vault,
        rate_limiter: Arc::new(
            RateLimiter::new(Default::default()).with_stream_caps(StreamCaps {
                per_key: None,
                per_workspace: None,
            }),
        ),
        sessions: Arc::new(paddock_server::Sessions::default()),
    });

    // 1,000 streams on the watched run, each read by its own task like a client's connection.
    let frames = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..STREAMS {
        let req = Request::get(format!("/v1/runs/{watched}/events"))
            .header(header::AUTHORIZATION, format!("Bearer {secret}"))
            .header(header::ACCEPT, "text/event-stream")
            .body(Body::empty())
            .unwrap();
        let mut body = app.clone().oneshot(req).await.unwrap().into_body();
        let frames = Arc::clone(&frames);
        readers.push(tokio::spawn(async move {
            while let Some(Ok(_)) = body.frame().await {
                frames.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    while frames.load(Ordering::Relaxed) < STREAMS as u64 {
        tokio::task::yield_now().await;
    }
    let (w0, c0, t0) = (engine.run_wakeups(), cpu_secs(), Instant::now());
    append_to(&store, &scope, &busy).await;
    let routed_secs = t0.elapsed().as_secs_f64();
    let routed_cpu = cpu_secs() - c0;
    let routed_wakeups = engine.run_wakeups() - w0;
    let routed_frames = frames.load(Ordering::Relaxed) - STREAMS as u64;
    for r in &readers {
        r.abort();
    }

    // Before: every stream read the raw commit feed and woke on every commit.
    let woken = Arc::new(AtomicU64::new(0));
    let mut raw = Vec::new();
    for _ in 0..STREAMS {
        let mut rx = store.subscribe();
        let woken = Arc::clone(&woken);
        let watched = watched.clone();
        raw.push(tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(c) => {
                        woken.fetch_add(1, Ordering::Relaxed);
                        if c.run_id == watched {
                            break;
                        }
                    }
                    // Fell behind: woken once for the lot, then reads on.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        woken.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    let (c0, t0) = (cpu_secs(), Instant::now());
    append_to(&store, &scope, &busy).await;
    // One commit on the watched run ends every receiver once it has read all before it.
    let batch = Append {
        run_id: watched.clone(),
        expected_seq: None,
        events: vec![NewEvent::now(EventKind::RunStarted {
            worker: "bench".into(),
            recovered: false,
        })],
    };
    store.append(&scope, batch).await.unwrap();
    for r in raw {
        let _ = r.await;
    }
    let feed_secs = t0.elapsed().as_secs_f64();
    let feed_cpu = cpu_secs() - c0;
    println!(
        "{{\"streams\": {STREAMS}, \"appends_to_another_run\": {APPENDS}, \
         \"per_run_wakeups\": {routed_wakeups}, \"per_run_cpu_s\": {routed_cpu:.2}, \
         \"per_run_wall_s\": {routed_secs:.2}, \"per_run_frames_sent\": {routed_frames}, \
         \"raw_feed_wakeups\": {}, \"raw_feed_cpu_s\": {feed_cpu:.2}, \
         \"raw_feed_wall_s\": {feed_secs:.2}}}",
        woken.load(Ordering::Relaxed)
    );
}
