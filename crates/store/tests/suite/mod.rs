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
        assert_eq!(store.claim("old", 60_000, 10, None).await.unwrap().len(), 1);
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
    assert!(
        store
            .claim("new", 60_000, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
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
    assert_eq!(version, 10);
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
    migrated_keeping_its_data(&[include_str!("../../src/sqlite/migrations/0001_init.sql")]).await;
}

/// Version 9 is what the release before the journal table left behind (events one row each, in
/// append order): it must still reach the journal.
#[tokio::test]
async fn a_version_9_database_is_migrated_keeping_its_data() {
    migrated_keeping_its_data(&[
        include_str!("../../src/sqlite/migrations/0001_init.sql"),
        include_str!("../../src/sqlite/migrations/0002_secrets.sql"),
        include_str!("../../src/sqlite/migrations/0003_tenancy.sql"),
        include_str!("../../src/sqlite/migrations/0004_audit.sql"),
        include_str!("../../src/sqlite/migrations/0005_idempotency.sql"),
        include_str!("../../src/sqlite/migrations/0006_members.sql"),
        include_str!("../../src/sqlite/migrations/0007_end_users_budgets.sql"),
        include_str!("../../src/sqlite/migrations/0008_key_scopes.sql"),
        include_str!("../../src/sqlite/migrations/0009_events_append_order.sql"),
    ])
    .await;
}

/// Opens what a binary that knew only `migrations` left behind (an agent and two runs' events)
/// and checks that the current schema keeps all of it.
async fn migrated_keeping_its_data(migrations: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = rusqlite::Connection::open(dir.path().join("paddock.db")).unwrap();
        for sql in migrations {
            db.execute_batch(sql).unwrap();
        }
        db.pragma_update(None, "user_version", migrations.len() as i64)
            .unwrap();
        let def = serde_json::to_string(&agent("alpha", "1.0.0", "old").unwrap()).unwrap();
        db.execute(
            "INSERT INTO agents (org, workspace, name, version, definition, created_at)
             VALUES ('org_default', 'ws_default', 'alpha', '1.0.0', ?1, 1)",
            [def],
        )
        .unwrap();
        // A journal, written out of order across two runs as concurrent runs interleave.
        for run in ["run_a", "run_b"] {
            db.execute(
                "INSERT INTO runs (id, org, workspace, agent, status, created_at, last_seq, run)
                 VALUES (?1, 'org_default', 'ws_default', 'alpha', 'running', 1, 2, '{}')",
                [run],
            )
            .unwrap();
        }
        for (run, seq) in [("run_b", 1), ("run_a", 1), ("run_a", 2), ("run_b", 2)] {
            db.execute(
                "INSERT INTO events (run_id, seq, at, kind) VALUES (?1, ?2, 7, ?3)",
                rusqlite::params![run, seq, format!("\"{run}/{seq}\"")],
            )
            .unwrap();
        }
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
    assert_eq!(version, paddock_store::sqlite::SCHEMA_VERSION);
    // Every event kept, in each run's order, one journal row each, and (run, seq) still unique.
    let journal: Vec<(i64, i64, String)> = db
        .prepare("SELECT first_seq, last_seq, events FROM journal WHERE run_id = 'run_a' ORDER BY last_seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let parsed: Vec<serde_json::Value> = journal
        .iter()
        .map(|(_, _, e)| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(
        (journal[0].0, journal[0].1, journal[1].0, journal[1].1),
        (1, 1, 2, 2)
    );
    assert_eq!(
        parsed,
        [
            serde_json::json!([{"at": 7, "kind": "run_a/1"}]),
            serde_json::json!([{"at": 7, "kind": "run_a/2"}])
        ]
    );
    let total: i64 = db
        .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, 4);
    let again = db.execute(
        "INSERT INTO journal (run_id, first_seq, last_seq, events) VALUES ('run_b', 2, 2, '[]')",
        [],
    );
    assert!(again.is_err(), "a second run_b/2 was accepted");
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

/// A store with a ten-entry chain in the default workspace (and one entry elsewhere), closed so
/// the test can edit the file.
async fn chained(dir: &std::path::Path) {
    let store = SqliteStore::open(dir).unwrap();
    let s = Scope::default_workspace();
    for i in 1..=10 {
        store
            .append_audit(
                &s,
                conformance::audit_entry("run.created", &format!("run/{i}"), i),
            )
            .await
            .unwrap();
    }
    let other = Scope {
        workspace: paddock_types::WorkspaceId::parse("ws_other").unwrap(),
        ..s.clone()
    };
    store
        .append_audit(&other, conformance::audit_entry("key.created", "key/k", 1))
        .await
        .unwrap();
    drop(store);
}

async fn verify(dir: &std::path::Path) -> paddock_types::api::AuditVerify {
    let store = SqliteStore::open(dir).unwrap();
    store
        .verify_audit(&Scope::default_workspace())
        .await
        .unwrap()
}

fn broken(v: &paddock_types::api::AuditVerify) -> (u64, String) {
    assert!(!v.ok, "{v:?}");
    let b = v.first_broken.clone().unwrap();
    (b.seq, b.reason)
}

#[tokio::test]
async fn audit_tamper_edit_is_named_at_the_edited_entry() {
    let dir = tempfile::tempdir().unwrap();
    chained(dir.path()).await;
    let db = rusqlite::Connection::open(dir.path().join("paddock.db")).unwrap();
    db.execute(
        "UPDATE audit SET resource = 'run/forged' WHERE workspace = 'ws_default' AND seq = 4",
        [],
    )
    .unwrap();
    drop(db);
    let v = verify(dir.path()).await;
    assert_eq!(broken(&v), (4, "hash mismatch".to_owned()));
    assert_eq!(v.entries, 3);
}

#[tokio::test]
async fn audit_tamper_edit_with_a_recomputed_hash_breaks_the_next_link() {
    let dir = tempfile::tempdir().unwrap();
    chained(dir.path()).await;
    let store = SqliteStore::open(dir.path()).unwrap();
    let all = store
        .list_audit(&Scope::default_workspace(), &Default::default(), None, 100)
        .await
        .unwrap();
    drop(store);
    // A forger who rewrites entry 6 consistently (new hash over the new content) still cannot
    // fix entry 7's prev_hash without rewriting the rest of the chain.
    let e = &all.data[5];
    let detail = serde_json::to_string(&e.detail).unwrap();
    let key = e.actor.key_id.as_ref().map(|k| k.to_string());
    let forged = paddock_store::audit::Canonical {
        v: 1,
        org: "org_default",
        workspace: "ws_default",
        seq: 6,
        at: e.at,
        actor_kind: &e.actor.kind,
        actor_key_id: key.as_deref(),
        actor_role: e.actor.role.map(|r| r.as_str()),
        actor_end_user: None,
        action: "run.cancelled",
        resource: &e.resource,
        outcome: &e.outcome,
        ip: e.ip.as_deref(),
        user_agent: e.user_agent.as_deref(),
        detail: &detail,
        prev_hash: &e.prev_hash,
    };
    let db = rusqlite::Connection::open(dir.path().join("paddock.db")).unwrap();
    db.execute(
        "UPDATE audit SET action = 'run.cancelled', hash = ?1 \
         WHERE workspace = 'ws_default' AND seq = 6",
        [forged.hash()],
    )
    .unwrap();
    drop(db);
    assert_eq!(
        broken(&verify(dir.path()).await),
        (7, "prev_hash does not link".to_owned())
    );
}

#[tokio::test]
async fn audit_tamper_delete_is_named_as_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    chained(dir.path()).await;
    let db = rusqlite::Connection::open(dir.path().join("paddock.db")).unwrap();
    db.execute(
        "DELETE FROM audit WHERE workspace = 'ws_default' AND seq = 5",
        [],
    )
    .unwrap();
    drop(db);
    assert_eq!(
        broken(&verify(dir.path()).await),
        (5, "sequence gap".to_owned())
    );
}

#[tokio::test]
async fn audit_tamper_reorder_is_named_at_the_first_moved_entry() {
    let dir = tempfile::tempdir().unwrap();
    chained(dir.path()).await;
    let db = rusqlite::Connection::open(dir.path().join("paddock.db")).unwrap();
    // Swap entries 3 and 8 (through a free seq, as seq is the key).
    for sql in [
        "UPDATE audit SET seq = 1000 WHERE workspace = 'ws_default' AND seq = 3",
        "UPDATE audit SET seq = 3 WHERE workspace = 'ws_default' AND seq = 8",
        "UPDATE audit SET seq = 8 WHERE workspace = 'ws_default' AND seq = 1000",
    ] {
        db.execute(sql, []).unwrap();
    }
    drop(db);
    assert_eq!(
        broken(&verify(dir.path()).await),
        (3, "hash mismatch".to_owned())
    );
}

#[tokio::test]
async fn audit_verify_offline_reads_beside_a_running_store() {
    let dir = tempfile::tempdir().unwrap();
    chained(dir.path()).await;
    // The store stays open (holding the folder lock) while the offline verify reads.
    let store = SqliteStore::open(dir.path()).unwrap();
    let all = paddock_store::sqlite::verify_audit_offline(dir.path(), &[]).unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|(_, v)| v.ok));
    assert_eq!(all.iter().map(|(_, v)| v.entries).sum::<u64>(), 11);
    drop(store);
    assert!(paddock_store::sqlite::verify_audit_offline(&dir.path().join("none"), &[]).is_err());
}

/// What the chain alone cannot show (the newest entries deleted, or the newest rewritten with
/// recomputed hashes), a checkpoint kept outside shows, online and offline.
#[tokio::test]
async fn audit_checkpoints_catch_truncation_and_a_rewritten_tail() {
    let s = Scope::default_workspace();
    for tamper in ["truncate", "rewrite"] {
        let dir = tempfile::tempdir().unwrap();
        chained(dir.path()).await;
        let store = SqliteStore::open(dir.path()).unwrap();
        let all = store
            .list_audit(&s, &Default::default(), None, 100)
            .await
            .unwrap()
            .data;
        let last = all.last().unwrap().clone();
        assert_eq!(
            store.audit_hash_at(&s, last.seq).await.unwrap(),
            Some(last.hash.clone())
        );
        assert_eq!(store.audit_hash_at(&s, last.seq + 1).await.unwrap(), None);
        drop(store);
        let checkpoint = paddock_types::api::AuditCheckpoint {
            org: s.org.clone(),
            workspace: s.workspace.clone(),
            seq: last.seq,
            hash: last.hash.clone(),
            at: last.at,
        };
        let db = rusqlite::Connection::open(dir.path().join("paddock.db")).unwrap();
        let expected = if tamper == "truncate" {
            db.execute(
                "DELETE FROM audit WHERE workspace = 'ws_default' AND seq >= ?1",
                [last.seq as i64 - 1],
            )
            .unwrap();
            "checkpoint entry missing"
        } else {
            let detail = serde_json::to_string(&last.detail).unwrap();
            let key = last.actor.key_id.as_ref().map(|k| k.to_string());
            let forged = paddock_store::audit::Canonical {
                v: 1,
                org: "org_default",
                workspace: "ws_default",
                seq: last.seq,
                at: last.at,
                actor_kind: &last.actor.kind,
                actor_key_id: key.as_deref(),
                actor_role: last.actor.role.map(|r| r.as_str()),
                actor_end_user: None,
                action: "nothing.happened",
                resource: &last.resource,
                outcome: &last.outcome,
                ip: last.ip.as_deref(),
                user_agent: last.user_agent.as_deref(),
                detail: &detail,
                prev_hash: &last.prev_hash,
            };
            db.execute(
                "UPDATE audit SET action = 'nothing.happened', hash = ?1 \
                 WHERE workspace = 'ws_default' AND seq = ?2",
                rusqlite::params![forged.hash(), last.seq as i64],
            )
            .unwrap();
            "checkpoint hash differs"
        };
        drop(db);
        // The chain alone still verifies…
        let plain = verify(dir.path()).await;
        assert!(plain.ok, "{tamper}: {plain:?}");
        // …the checkpoint does not, offline and online.
        let offline = paddock_store::sqlite::verify_audit_offline(
            dir.path(),
            std::slice::from_ref(&checkpoint),
        )
        .unwrap();
        let (_, v) = offline
            .iter()
            .find(|(scope, _)| *scope == s)
            .unwrap()
            .clone();
        assert_eq!(broken(&v), (last.seq, expected.to_owned()), "{tamper}");
        let store = SqliteStore::open(dir.path()).unwrap();
        let at = store.audit_hash_at(&s, checkpoint.seq).await.unwrap();
        let online = paddock_store::audit::against_checkpoint(
            store.verify_audit(&s).await.unwrap(),
            checkpoint.seq,
            &checkpoint.hash,
            at.as_deref(),
        );
        assert_eq!(broken(&online), (last.seq, expected.to_owned()), "{tamper}");
    }
}

/// The caches the single writer keeps exact are cleared once a change commits, even when the
/// caller gave up waiting: a client that hangs up mid-revocation must not leave the revoked
/// key working, nor a new agent version hidden behind the old one.
#[tokio::test]
async fn a_dropped_caller_still_clears_the_caches() {
    use paddock_store::conformance::key_record;
    use paddock_types::Role;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let s = Scope::default_workspace();
    let key = key_record("k", Role::Owner, "hash-1");
    store.ensure_workspace(&s, "default").await.unwrap();
    store.create_api_key(&s, key.clone()).await.unwrap();
    store
        .put_agent(&s, &agent("a", "1.0.0", "v1").unwrap())
        .await
        .unwrap();
    // Cached by these reads.
    assert!(store.api_key_by_hash("hash-1").await.unwrap().is_some());
    assert!(store.get_agent(&s, "a", None).await.unwrap().is_some());

    // Each polled once (the write is queued), then dropped: on this single-threaded runtime
    // nothing else of the call can run before the drop.
    let poll_once_and_drop =
        |mut fut: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>>| {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let _ = fut.as_mut().poll(&mut cx);
        };
    poll_once_and_drop(Box::pin(async {
        store.revoke_api_key(&s, &key.id, 5).await.map(drop)
    }));
    let v2 = agent("a", "2.0.0", "v2").unwrap();
    poll_once_and_drop(Box::pin(async { store.put_agent(&s, &v2).await.map(drop) }));

    let mut revoked = false;
    let mut latest = String::new();
    for _ in 0..3_000 {
        let k = store.api_key_by_hash("hash-1").await.unwrap().unwrap();
        revoked = k.1.revoked_at.is_some();
        let a = store.get_agent(&s, "a", None).await.unwrap().unwrap();
        latest = a.definition.manifest.version.to_string();
        if revoked && latest == "2.0.0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(revoked, "the revoked key is still served from the cache");
    assert_eq!(latest, "2.0.0", "the old latest version is still served");
}
