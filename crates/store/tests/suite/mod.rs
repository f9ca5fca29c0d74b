#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use paddock_store::conformance::{self, agent, created};
use paddock_store::{Append, DynStore, SqliteStore, Store, StoreError};
use paddock_types::api::ApprovalStatus;
use paddock_types::event::ApprovalDecision;
use paddock_types::{ApprovalId, EventKind, NewEvent, RunId, RunStatus, Scope, ToolCall};
use serde_json::json;
use std::sync::Arc;

fn started() -> NewEvent {
    NewEvent::now(EventKind::RunStarted {
        worker: "w".into(),
        recovered: false,
    })
}

async fn append(store: &SqliteStore, scope: &Scope, run: &RunId, events: Vec<NewEvent>) {
    store
        .append(
            scope,
            Append {
                run_id: run.clone(),
                expected_seq: None,
                events,
            },
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_on_sqlite() {
    let result = conformance::run_all(|| async {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let store: DynStore = SqliteStore::open(dir.path()).map_err(|e| e.to_string())?;
        Ok::<_, String>((store, dir))
    })
    .await;
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[tokio::test]
async fn a_second_open_of_the_same_folder_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    match SqliteStore::open(dir.path()) {
        Err(StoreError::Locked(path)) => assert!(path.ends_with("paddock.lock"), "{path}"),
        other => panic!("expected Locked, got {other:?}"),
    }
    // Dropping the store stops its writer and frees the folder.
    drop(store);
    SqliteStore::open(dir.path()).unwrap();
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scope::default_workspace();
    let approval = ApprovalId::new();
    let (run, before, events_before, leased) = {
        let store = SqliteStore::open(dir.path()).unwrap();
        store
            .put_agent(&s, &agent("alpha", "1.0.0", "p").unwrap())
            .await
            .unwrap();
        let run = store
            .create_run(&s, &RunId::new(), created("alpha"))
            .await
            .unwrap();
        append(
            &store,
            &s,
            &run.id,
            vec![
                started(),
                NewEvent::now(EventKind::ApprovalRequested {
                    approval_id: approval.clone(),
                    call: ToolCall {
                        id: "c1".into(),
                        name: "write_file".into(),
                        arguments: json!({}),
                    },
                }),
                NewEvent::now(EventKind::RunWaiting {
                    approval_id: approval.clone(),
                }),
            ],
        )
        .await;
        let before = store.get_run(&s, &run.id).await.unwrap().unwrap();
        let events = store.events(&s, &run.id, 0, u32::MAX).await.unwrap();
        let leased = store
            .create_run(&s, &RunId::new(), created("alpha"))
            .await
            .unwrap();
        assert_eq!(store.claim("old", 60_000, 10).await.unwrap().len(), 1);
        (run.id, before, events, leased.id)
    };

    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(store.get_agent(&s, "alpha", None).await.unwrap().is_some());
    assert_eq!(store.get_run(&s, &run).await.unwrap(), Some(before.clone()));
    assert_eq!(
        store.events(&s, &run, 0, u32::MAX).await.unwrap(),
        events_before
    );
    let pending = store
        .get_approval(&s, &run, &approval)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pending.status, ApprovalStatus::Pending);
    // A lease outlives the process that took it: a crashed worker's runs wait for expiry.
    assert!(store.claim("new", 60_000, 10).await.unwrap().is_empty());
    assert!(
        store
            .renew("old", &[leased], 60_000)
            .await
            .unwrap()
            .is_empty()
    );
    // The journal continues where it was.
    let after = store
        .decide_approval(&s, &run, &approval, ApprovalDecision::Approve, None)
        .await
        .unwrap();
    assert_eq!(after.last_seq, before.last_seq + 1);
    assert_eq!(after.status, RunStatus::Queued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let s = Scope::default_workspace();
    let mut runs = Vec::new();
    for _ in 0..200 {
        let run = store
            .create_run(&s, &RunId::new(), created("alpha"))
            .await
            .unwrap();
        runs.push(run.id);
    }
    let commits_before = store.commit_count();
    let barrier = Arc::new(tokio::sync::Barrier::new(runs.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for id in runs.clone() {
        let (store, s, barrier) = (Arc::clone(&store), s.clone(), Arc::clone(&barrier));
        tasks.spawn(async move {
            barrier.wait().await;
            for _ in 0..3 {
                append(&store, &s, &id, vec![started()]).await;
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    let commits = store.commit_count() - commits_before;
    let appends = runs.len() as u64 * 3;
    eprintln!("group commit: {appends} appends in {commits} commits");
    assert!(
        commits < appends / 2,
        "{appends} appends took {commits} commits: group commit is not batching"
    );
    for id in &runs {
        let seqs: Vec<u64> = store
            .events(&s, id, 0, u32::MAX)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
    }
}

#[tokio::test]
async fn the_schema_is_versioned_and_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let db = rusqlite::Connection::open(dir.path().join("paddock.db")).unwrap();
    let version: i64 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, paddock_store::sqlite::SCHEMA_VERSION);
    assert_eq!(version, 3);
    let mode: String = db
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(store);

    // A database from a newer binary is refused rather than misread.
    db.pragma_update(None, "user_version", 99).unwrap();
    drop(db);
    match SqliteStore::open(dir.path()) {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("newer"), "{msg}"),
        other => panic!("expected a schema error, got {other:?}"),
    }
}

#[tokio::test]
async fn claiming_uses_the_partial_index() {
    let dir = tempfile::tempdir().unwrap();
    let _store = SqliteStore::open(dir.path()).unwrap();
    let db = rusqlite::Connection::open(dir.path().join("paddock.db")).unwrap();
    let plan: Vec<String> = db
        .prepare(
            "EXPLAIN QUERY PLAN SELECT id, org, workspace, end_user FROM runs
             WHERE status IN ('queued', 'running')
               AND (lease_until IS NULL OR lease_until < ?1)
             ORDER BY id LIMIT ?2",
        )
        .unwrap()
        .query_map([0, 10], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter().any(|p| p.contains("runs_claimable")),
        "{plan:?}"
    );
}

#[tokio::test]
async fn a_version_1_database_is_migrated_keeping_its_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What a binary that only knew 0001 left behind.
        let db = rusqlite::Connection::open(dir.path().join("paddock.db")).unwrap();
        db.execute_batch(include_str!("../../src/sqlite/migrations/0001_init.sql"))
            .unwrap();
        db.pragma_update(None, "user_version", 1).unwrap();
        let def = serde_json::to_string(&agent("alpha", "1.0.0", "old").unwrap()).unwrap();
        db.execute(
            "INSERT INTO agents (org, workspace, name, version, definition, created_at)
             VALUES ('org_default', 'ws_default', 'alpha', '1.0.0', ?1, 1)",
            [def],
        )
        .unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    let s = Scope::default_workspace();
    let kept = store.get_agent(&s, "alpha", None).await.unwrap().unwrap();
    assert_eq!(kept.definition.prompt, "old");
    // The new tables work.
    assert!(
        store
            .put_data_key(&s, conformance::data_key(1, "m"))
            .await
            .unwrap()
    );
    store
        .put_secret(&s, conformance::sealed("token", 1, "ct", 1))
        .await
        .unwrap();
    assert_eq!(store.list_secrets(&s).await.unwrap().len(), 1);
    drop(store);
    let db = rusqlite::Connection::open(dir.path().join("paddock.db")).unwrap();
    let version: i64 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rewrap_shares_no_fate_with_its_batch() {
    // A failing rewrap rolls back alone: the writes group-committed beside it still land.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let s = Scope::default_workspace();
    assert!(
        store
            .put_data_key(&s, conformance::data_key(1, "old"))
            .await
            .unwrap()
    );
    let bad = paddock_store::Rewrap {
        scope: s.clone(),
        key_id: 1,
        from_master_key_id: "old".into(),
        master_key_id: "new".into(),
        wrapped: vec![1],
        nonce: vec![2],
    };
    let mut missing = bad.clone();
    missing.key_id = 2;
    let (rewrap, put) = tokio::join!(
        store.rewrap_data_keys(vec![bad, missing]),
        store.put_secret(&s, conformance::sealed("token", 1, "ct", 1)),
    );
    assert!(
        matches!(rewrap, Err(StoreError::NotFound("data key"))),
        "{rewrap:?}"
    );
    put.unwrap();
    assert_eq!(
        store.data_keys(&s).await.unwrap(),
        vec![conformance::data_key(1, "old")]
    );
    assert!(store.get_secret(&s, "token").await.unwrap().is_some());
}
