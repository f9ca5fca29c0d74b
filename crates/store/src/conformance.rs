//! The behavioural suite every [`Store`] backend must pass, so SQLite and PostgreSQL show the same
//! semantics to the engine and the API.
//!
//! Each check in [`CHECKS`] gets a fresh, empty store of its own (claims and listings see every
//! run of the store, so checks must not share one). [`run_all`] runs them in order and reports
//! every failing check by name. To instantiate the suite for a backend, give it a factory that
//! returns a new store plus whatever must stay alive while the check runs (a temporary folder, a
//! throw-away database):
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread")]
//! async fn conformance() {
//!     paddock_store::conformance::run_all(|| async {
//!         let db = TempDatabase::create().await?; // dropped (and cleaned up) after the check
//!         let store: paddock_store::DynStore = PgStore::connect(db.url()).await?;
//!         Ok::<_, anyhow::Error>((store, db))
//!     })
//!     .await
//!     .unwrap();
//! }
//! ```
//!
//! A single check can be run alone with its function (they are all public), e.g. while
//! debugging one behaviour. Checks fail with a [`Failure`] naming the source line, never panic.
//!
//! Semantics pinned here beyond the trait docs: a scope without an end-user sees every run of its
//! workspace, a scope with one sees only that end-user's runs (agents are per workspace and seen
//! by both); a resource of another scope is indistinguishable from a missing one; a batch may end
//! a run but not continue after the end; deciding an expired approval is
//! [`StoreError::AlreadyDecided`]; claim, renew and release publish nothing. Secrets and data keys
//! belong to the workspace (an end-user scope sees its workspace's); the store treats their bytes
//! as opaque.

use crate::{
    Append, AuditFilter, Claimed, Committed, DataKeyRecord, DynStore, IDEMPOTENCY_IN_FLIGHT_MS,
    IDEMPOTENCY_TTL_MS, IdempotencyClaim, IdempotentResponse, KeyRecord, NewAuditEntry, Rewrap,
    RunFilter, SecretMeta, SecretRecord, Store, StoreError,
};
use paddock_types::api::{AgentDefinition, ApprovalStatus, Run};
use paddock_types::event::{ApprovalDecision, PolicyDecision};
use paddock_types::ids::EndUserId;
use paddock_types::manifest::{Limits, ModelSettings};
use paddock_types::{
    AgentManifest, ApprovalId, ErrorCode, EventKind, NewEvent, OrgId, RunId, RunStatus, Scope,
    ToolCall, WorkspaceId,
};
use paddock_types::{KeyId, Role};
use serde_json::json;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Failure(pub String);

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure(format!("unexpected store error: {e}"))
    }
}

type Outcome = Result<(), Failure>;

/// A check's future.
pub type CheckFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;
/// A check: takes a fresh, empty store.
pub type Check = fn(DynStore) -> CheckFuture;

/// Every check, by name.
pub const CHECKS: &[(&str, Check)] = &[
    ("agent_versions", |s| Box::pin(agent_versions(s))),
    ("runs_create_get_list", |s| {
        Box::pin(runs_create_get_list(s))
    }),
    ("append_seqs_and_conflicts", |s| {
        Box::pin(append_seqs_and_conflicts(s))
    }),
    ("terminal_runs_refuse_appends", |s| {
        Box::pin(terminal_runs_refuse_appends(s))
    }),
    ("events_paging", |s| Box::pin(events_paging(s))),
    ("approval_lifecycle", |s| Box::pin(approval_lifecycle(s))),
    ("leases", |s| Box::pin(leases(s))),
    ("scope_isolation", |s| Box::pin(scope_isolation(s))),
    ("end_user_scope", |s| Box::pin(end_user_scope(s))),
    ("subscribe_after_commit", |s| {
        Box::pin(subscribe_after_commit(s))
    }),
    ("concurrent_appends", |s| Box::pin(concurrent_appends(s))),
    ("data_keys_insert_only", |s| {
        Box::pin(data_keys_insert_only(s))
    }),
    ("data_key_rewrap_is_atomic", |s| {
        Box::pin(data_key_rewrap_is_atomic(s))
    }),
    ("secrets_crud", |s| Box::pin(secrets_crud(s))),
    ("secret_scope_isolation", |s| {
        Box::pin(secret_scope_isolation(s))
    }),
    ("workspaces", |s| Box::pin(workspaces(s))),
    ("api_keys", |s| Box::pin(api_keys(s))),
    ("audit_chain", |s| Box::pin(audit_chain(s))),
    ("audit_isolation", |s| Box::pin(audit_isolation(s))),
    ("audit_concurrent_appends", |s| {
        Box::pin(audit_concurrent_appends(s))
    }),
    ("idempotency_claim_complete", |s| {
        Box::pin(idempotency_claim_complete(s))
    }),
    ("idempotency_expiry_and_release", |s| {
        Box::pin(idempotency_expiry_and_release(s))
    }),
    ("idempotency_concurrent_claims", |s| {
        Box::pin(idempotency_concurrent_claims(s))
    }),
];

/// Runs every check, each on a store from `fresh`; the second value `fresh` returns is dropped
/// after its check (use it to clean up). Fails with the list of every failing check.
pub async fn run_all<F, Fut, G, E>(mut fresh: F) -> Result<(), Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(DynStore, G), E>>,
    E: std::fmt::Display,
{
    let mut failures = Vec::new();
    for (name, check) in CHECKS {
        let (store, keep) = fresh()
            .await
            .map_err(|e| Failure(format!("{name}: cannot create a store: {e}")))?;
        if let Err(f) = check(store).await {
            failures.push(format!("{name}: {f}"));
        }
        drop(keep);
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failure(format!(
            "{} of {} store checks failed:\n{}",
            failures.len(),
            CHECKS.len(),
            failures.join("\n")
        )))
    }
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Failure(format!("line {}: {}", line!(), format!($($msg)+))));
        }
    };
}

macro_rules! ensure_eq {
    ($left:expr, $right:expr $(,)?) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            return Err(Failure(format!(
                "line {}: {} != {}\n   left: {:?}\n  right: {:?}",
                line!(),
                stringify!($left),
                stringify!($right),
                left,
                right
            )));
        }
    }};
}

macro_rules! ensure_matches {
    ($value:expr, $pat:pat $(if $guard:expr)? $(,)?) => {
        match $value {
            $pat $(if $guard)? => {}
            other => {
                return Err(Failure(format!(
                    "line {}: expected {}, got {:?}",
                    line!(),
                    stringify!($pat),
                    other
                )))
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Fixtures

fn fail(msg: impl std::fmt::Display) -> Failure {
    Failure(msg.to_string())
}

/// An agent definition; `prompt` tells versions' contents apart.
pub fn agent(name: &str, version: &str, prompt: &str) -> Result<AgentDefinition, Failure> {
    Ok(AgentDefinition {
        manifest: AgentManifest {
            name: name.to_owned(),
            version: semver::Version::parse(version).map_err(fail)?,
            description: String::new(),
            model: ModelSettings {
                provider: "scripted".to_owned(),
                name: "test".to_owned(),
                temperature: Some(0.2),
                top_p: None,
                max_output_tokens: 256,
            },
            limits: Limits::default(),
            tools: BTreeMap::new(),
            input_schema: Some(json!({"type": "object"})),
            output_schema: None,
            egress: Vec::new(),
            credentials: Vec::new(),
        },
        prompt: prompt.to_owned(),
    })
}

/// The `run_created` event of a run of `agent`.
pub fn created(agent: &str) -> NewEvent {
    NewEvent::now(EventKind::RunCreated {
        agent: agent.to_owned(),
        agent_version: "1.0.0".to_owned(),
        input: json!({"question": "why?"}),
        metadata: json!({"team": "qa"}),
        system_prompt: "be brief".to_owned(),
        user_message: "why?".to_owned(),
        sandbox: "process".to_owned(),
    })
}

/// A data key record; `master` names the master key and tells wrappings apart.
pub fn data_key(key_id: u32, master: &str) -> DataKeyRecord {
    DataKeyRecord {
        key_id,
        master_key_id: master.to_owned(),
        wrapped: format!("wrapped {key_id} by {master}").into_bytes(),
        nonce: vec![key_id as u8; 24],
        created_at: 1_000,
    }
}

/// A sealed secret record (the bytes are opaque to the store).
pub fn sealed(name: &str, key_id: u32, ciphertext: &str, at: i64) -> SecretRecord {
    SecretRecord {
        name: name.to_owned(),
        key_id,
        nonce: vec![7; 24],
        ciphertext: ciphertext.as_bytes().to_vec(),
        created_at: at,
        updated_at: at,
    }
}

fn meta(s: &SecretRecord) -> SecretMeta {
    SecretMeta {
        name: s.name.clone(),
        created_at: s.created_at,
        updated_at: s.updated_at,
    }
}

fn ev(kind: EventKind) -> NewEvent {
    NewEvent::now(kind)
}

fn started() -> NewEvent {
    ev(EventKind::RunStarted {
        worker: "w".to_owned(),
        recovered: false,
    })
}

fn call(id: &str) -> ToolCall {
    ToolCall {
        id: id.to_owned(),
        name: "write_file".to_owned(),
        arguments: json!({"path": "a.txt"}),
    }
}

fn scope_of(org: &str, ws: &str, end_user: Option<&str>) -> Result<Scope, Failure> {
    Ok(Scope {
        org: OrgId::parse(org).map_err(fail)?,
        workspace: WorkspaceId::parse(ws).map_err(fail)?,
        end_user: end_user.map(EndUserId::parse).transpose().map_err(fail)?,
    })
}

async fn new_run(store: &dyn Store, scope: &Scope, agent: &str) -> Result<Run, Failure> {
    Ok(store
        .create_run(scope, &RunId::new(), created(agent))
        .await?)
}

async fn push(
    store: &dyn Store,
    scope: &Scope,
    run: &RunId,
    events: Vec<NewEvent>,
) -> Result<Run, StoreError> {
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
}

/// A run parked on a fresh approval of `call_id`; returns the run and the approval id.
async fn waiting_run(
    store: &dyn Store,
    scope: &Scope,
    agent: &str,
    call_id: &str,
) -> Result<(Run, ApprovalId), Failure> {
    let run = new_run(store, scope, agent).await?;
    let approval = ApprovalId::new();
    let run = push(
        store,
        scope,
        &run.id,
        vec![
            started(),
            ev(EventKind::PolicyDecided {
                call_id: call_id.to_owned(),
                tool: "write_file".to_owned(),
                decision: PolicyDecision::ApprovalRequired,
                reason: "manifest".to_owned(),
            }),
            ev(EventKind::ApprovalRequested {
                approval_id: approval.clone(),
                call: call(call_id),
            }),
            ev(EventKind::RunWaiting {
                approval_id: approval.clone(),
            }),
        ],
    )
    .await?;
    Ok((run, approval))
}

fn ids(runs: &[Run]) -> Vec<RunId> {
    runs.iter().map(|r| r.id.clone()).collect()
}

fn claimed_ids(claimed: &[Claimed]) -> Vec<RunId> {
    claimed.iter().map(|c| c.run_id.clone()).collect()
}

fn sorted<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    let mut v = items.to_vec();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Checks

/// Versions are immutable; identical re-registration is a no-op; "latest" is by semver.
pub async fn agent_versions(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    let first = store.put_agent(&s, &agent("alpha", "1.9.0", "v9")?).await?;
    store
        .put_agent(&s, &agent("alpha", "1.10.0", "v10")?)
        .await?;
    store.put_agent(&s, &agent("alpha", "1.2.0", "v2")?).await?;
    store.put_agent(&s, &agent("beta", "0.1.0", "b")?).await?;

    let again = store.put_agent(&s, &agent("alpha", "1.9.0", "v9")?).await?;
    ensure_eq!(again, first);
    ensure_matches!(
        store.put_agent(&s, &agent("alpha", "1.9.0", "changed")?).await,
        Err(StoreError::AgentVersionExists { ref name, ref version })
            if name == "alpha" && version == "1.9.0"
    );

    let latest = store.get_agent(&s, "alpha", None).await?;
    ensure_eq!(
        latest.map(|r| r.definition.manifest.version.to_string()),
        Some("1.10.0".to_owned())
    );
    let v9 = store.get_agent(&s, "alpha", Some("1.9.0")).await?;
    ensure_eq!(v9.map(|r| r.definition.prompt), Some("v9".to_owned()));
    ensure!(
        store.get_agent(&s, "alpha", Some("3.0.0")).await?.is_none(),
        "an unknown version must be missing"
    );
    ensure!(
        store.get_agent(&s, "gamma", None).await?.is_none(),
        "an unknown agent must be missing"
    );

    let listed = store.list_agents(&s).await?;
    let listed: Vec<(String, String)> = listed
        .iter()
        .map(|r| {
            let m = &r.definition.manifest;
            (m.name.clone(), m.version.to_string())
        })
        .collect();
    ensure_eq!(
        listed,
        vec![
            ("alpha".to_owned(), "1.10.0".to_owned()),
            ("beta".to_owned(), "0.1.0".to_owned())
        ]
    );
    Ok(())
}

/// Creating, reading and listing runs: filters, newest-first order, cursor paging.
pub async fn runs_create_get_list(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    let bad = store.create_run(&s, &RunId::new(), started()).await;
    ensure_matches!(bad, Err(StoreError::Backend(_)));

    let first = created("alpha");
    let id = RunId::new();
    let run = store.create_run(&s, &id, first.clone()).await?;
    ensure_eq!(run.id, id);
    ensure_eq!(run.status, RunStatus::Queued);
    ensure_eq!(run.last_seq, 1);
    ensure_eq!(run.agent, "alpha");
    ensure_eq!(run.input, json!({"question": "why?"}));
    ensure_eq!(run.metadata, json!({"team": "qa"}));
    ensure_eq!(run.created_at, first.at);
    ensure_eq!(store.get_run(&s, &id).await?, Some(run.clone()));
    ensure!(
        store.create_run(&s, &id, created("alpha")).await.is_err(),
        "a run id must not be created twice"
    );
    ensure_eq!(store.get_run(&s, &RunId::new()).await?, None);

    let mut all = vec![run];
    for agent in ["alpha", "alpha", "beta", "beta"] {
        all.push(new_run(&*store, &s, agent).await?);
    }
    let running = push(&*store, &s, &all[1].id, vec![started()]).await?;
    ensure_eq!(running.status, RunStatus::Running);
    all[1] = running;
    // Newest first.
    all.sort_by(|a, b| b.id.cmp(&a.id));

    let page = store
        .list_runs(&s, &RunFilter::default(), None, 200)
        .await?;
    ensure_eq!(page.data, all);
    ensure_eq!(page.next_cursor, None);

    let alpha = RunFilter {
        agent: Some("alpha".to_owned()),
        status: None,
    };
    let page = store.list_runs(&s, &alpha, None, 50).await?;
    ensure_eq!(page.data.len(), 3);
    ensure!(page.data.iter().all(|r| r.agent == "alpha"), "agent filter");
    let running = RunFilter {
        agent: None,
        status: Some(RunStatus::Running),
    };
    let page = store.list_runs(&s, &running, None, 50).await?;
    ensure_eq!(ids(&page.data), vec![all_running(&all)?]);
    let none = RunFilter {
        agent: Some("beta".to_owned()),
        status: Some(RunStatus::Running),
    };
    ensure!(
        store.list_runs(&s, &none, None, 50).await?.data.is_empty(),
        "combined filters"
    );
    // A page exactly as big as what is left has no next cursor.
    let page = store.list_runs(&s, &alpha, None, 3).await?;
    ensure_eq!(page.data.len(), 3);
    ensure_eq!(page.next_cursor, None);

    // Paging by 2 walks the whole listing once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_runs(&s, &RunFilter::default(), cursor.as_deref(), 2)
            .await?;
        pages += 1;
        ensure!(page.data.len() <= 2, "page larger than its limit");
        seen.extend(page.data);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        ensure!(pages < 10, "paging does not end");
    }
    ensure_eq!(pages, 3);
    ensure_eq!(seen, all);

    // The limit is clamped to 1..=200.
    let page = store.list_runs(&s, &RunFilter::default(), None, 0).await?;
    ensure_eq!(page.data.len(), 1);
    ensure!(page.next_cursor.is_some(), "a clamped page still pages");

    for bad in ["garbage", "apr_0123", ""] {
        ensure_matches!(
            store
                .list_runs(&s, &RunFilter::default(), Some(bad), 10)
                .await,
            Err(StoreError::BadCursor)
        );
    }
    Ok(())
}

fn all_running(runs: &[Run]) -> Result<RunId, Failure> {
    runs.iter()
        .find(|r| r.status == RunStatus::Running)
        .map(|r| r.id.clone())
        .ok_or_else(|| fail("no running run"))
}

/// Seqs follow without gaps, `expected_seq` detects concurrent writers, and the run row is the
/// fold of the journal.
pub async fn append_seqs_and_conflicts(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    let run = new_run(&*store, &s, "alpha").await?;
    let batch = vec![
        started(),
        ev(EventKind::ToolCallStarted {
            call_id: "c1".to_owned(),
            tool: "read_file".to_owned(),
            idempotent: true,
            rerun: false,
        }),
        ev(EventKind::ToolCallCompleted {
            call_id: "c1".to_owned(),
            tool: "read_file".to_owned(),
            output: "hello".to_owned(),
            is_error: false,
            duration_ms: 3,
        }),
    ];
    let after = store
        .append(
            &s,
            Append {
                run_id: run.id.clone(),
                expected_seq: Some(1),
                events: batch.clone(),
            },
        )
        .await?;
    ensure_eq!(after.last_seq, 4);
    ensure_eq!(after.status, RunStatus::Running);
    ensure_eq!(after.usage.tool_calls, 1);
    ensure_eq!(store.get_run(&s, &run.id).await?, Some(after.clone()));

    let stale = store
        .append(
            &s,
            Append {
                run_id: run.id.clone(),
                expected_seq: Some(1),
                events: vec![started()],
            },
        )
        .await;
    ensure_matches!(
        stale,
        Err(StoreError::Conflict {
            expected: 1,
            actual: 4
        })
    );
    ensure_eq!(store.events(&s, &run.id, 0, u32::MAX).await?.len(), 4);

    // No expectation: appends whatever the journal's position.
    let after = push(&*store, &s, &run.id, vec![started()]).await?;
    ensure_eq!(after.last_seq, 5);
    // Nothing to append: the run as it is.
    let same = push(&*store, &s, &run.id, Vec::new()).await?;
    ensure_eq!(same, after);

    let events = store.events(&s, &run.id, 0, u32::MAX).await?;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    ensure_eq!(seqs, vec![1, 2, 3, 4, 5]);
    for (stored, sent) in events[1..4].iter().zip(&batch) {
        ensure_eq!(stored.kind, sent.kind);
        ensure_eq!(stored.at, sent.at);
    }
    let mut fold = Run::from_created(run.id.clone(), &events[0])
        .ok_or_else(|| fail("first event is not run_created"))?;
    for e in &events[1..] {
        fold.apply(e);
    }
    ensure_eq!(Some(fold), store.get_run(&s, &run.id).await?);

    ensure_matches!(
        push(&*store, &s, &RunId::new(), vec![started()]).await,
        Err(StoreError::NotFound("run"))
    );
    Ok(())
}

/// A finished run takes no more events, and a batch cannot go on past the end.
pub async fn terminal_runs_refuse_appends(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    let run = new_run(&*store, &s, "alpha").await?;
    let done = push(
        &*store,
        &s,
        &run.id,
        vec![started(), ev(EventKind::RunSucceeded { output: json!(42) })],
    )
    .await?;
    ensure_eq!(done.status, RunStatus::Succeeded);
    ensure_eq!(done.output, Some(json!(42)));
    for more in [
        started(),
        ev(EventKind::RunCancelled { reason: None }),
        ev(EventKind::RunSucceeded { output: json!(1) }),
    ] {
        ensure_matches!(
            push(&*store, &s, &run.id, vec![more]).await,
            Err(StoreError::Terminal(RunStatus::Succeeded))
        );
    }
    ensure_matches!(
        push(&*store, &s, &run.id, Vec::new()).await,
        Err(StoreError::Terminal(RunStatus::Succeeded))
    );
    ensure_eq!(store.get_run(&s, &run.id).await?, Some(done));

    // All or nothing: the failing batch leaves no trace.
    let run = new_run(&*store, &s, "alpha").await?;
    let past_end = push(
        &*store,
        &s,
        &run.id,
        vec![
            ev(EventKind::RunFailed {
                error: paddock_types::RunError::new(ErrorCode::ToolError, "boom"),
            }),
            started(),
        ],
    )
    .await;
    ensure_matches!(past_end, Err(StoreError::Terminal(RunStatus::Failed)));
    ensure_eq!(store.get_run(&s, &run.id).await?, Some(run.clone()));
    ensure_eq!(store.events(&s, &run.id, 0, 100).await?.len(), 1);

    let cancelled = push(
        &*store,
        &s,
        &run.id,
        vec![ev(EventKind::RunCancelled {
            reason: Some("user asked".to_owned()),
        })],
    )
    .await?;
    ensure_eq!(cancelled.status, RunStatus::Cancelled);
    ensure_eq!(cancelled.error.map(|e| e.code), Some(ErrorCode::Cancelled));
    Ok(())
}

/// `events(after, limit)` pages through the journal in order.
pub async fn events_paging(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    let run = new_run(&*store, &s, "alpha").await?;
    let more: Vec<NewEvent> = (0..9)
        .map(|i| {
            ev(EventKind::ModelRequested {
                call_index: i,
                provider: "scripted".to_owned(),
                model: "test".to_owned(),
                reissue: false,
            })
        })
        .collect();
    push(&*store, &s, &run.id, more).await?;
    let seqs = |events: Vec<paddock_types::Event>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
    ensure_eq!(seqs(store.events(&s, &run.id, 0, 3).await?), vec![1, 2, 3]);
    ensure_eq!(seqs(store.events(&s, &run.id, 3, 3).await?), vec![4, 5, 6]);
    ensure_eq!(seqs(store.events(&s, &run.id, 9, 3).await?), vec![10]);
    ensure_eq!(
        seqs(store.events(&s, &run.id, 10, 3).await?),
        Vec::<u64>::new()
    );
    ensure_eq!(
        seqs(store.events(&s, &run.id, 0, 0).await?),
        Vec::<u64>::new()
    );
    ensure_eq!(
        seqs(store.events(&s, &run.id, 0, u32::MAX).await?),
        (1..=10).collect::<Vec<u64>>()
    );
    ensure_eq!(
        seqs(store.events(&s, &run.id, u64::MAX, u32::MAX).await?),
        Vec::<u64>::new()
    );
    let all = store.events(&s, &run.id, 0, u32::MAX).await?;
    ensure_matches!(&all[0].kind, EventKind::RunCreated { .. });
    ensure_matches!(
        &all[9].kind,
        EventKind::ModelRequested { call_index: 8, .. }
    );
    ensure_matches!(
        store.events(&s, &RunId::new(), 0, 10).await,
        Err(StoreError::NotFound("run"))
    );
    Ok(())
}

/// Requested → pending → decided once; pending approvals expire when the run ends.
pub async fn approval_lifecycle(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    let (run, apr) = waiting_run(&*store, &s, "alpha", "c1").await?;
    ensure_eq!(run.status, RunStatus::Waiting);
    let events = store.events(&s, &run.id, 0, u32::MAX).await?;
    let requested_at = events
        .iter()
        .find(|e| matches!(e.kind, EventKind::ApprovalRequested { .. }))
        .map(|e| e.at)
        .ok_or_else(|| fail("no approval_requested event"))?;

    let pending = store
        .get_approval(&s, &run.id, &apr)
        .await?
        .ok_or_else(|| fail("approval missing"))?;
    ensure_eq!(pending.id, apr);
    ensure_eq!(pending.run_id, run.id);
    ensure_eq!(pending.agent, "alpha");
    ensure_eq!(pending.call, call("c1"));
    ensure_eq!(pending.status, ApprovalStatus::Pending);
    ensure_eq!(pending.created_at, requested_at);
    ensure_eq!(pending.decided_at, None);
    ensure_eq!(pending.comment, None);
    ensure_eq!(store.get_approval(&s, &RunId::new(), &apr).await?, None);
    let listed = store
        .list_approvals(&s, Some(ApprovalStatus::Pending), None, 10)
        .await?;
    ensure_eq!(listed.data, vec![pending]);

    let decided = store
        .decide_approval(
            &s,
            &run.id,
            &apr,
            ApprovalDecision::Approve,
            Some("fine".to_owned()),
        )
        .await?;
    ensure_eq!(decided.status, RunStatus::Queued);
    ensure_eq!(decided.last_seq, run.last_seq + 1);
    ensure_eq!(store.get_run(&s, &run.id).await?, Some(decided.clone()));
    let last = store.events(&s, &run.id, run.last_seq, 10).await?;
    ensure_eq!(last.len(), 1);
    ensure_eq!(
        last[0].kind,
        EventKind::ApprovalDecided {
            approval_id: apr.clone(),
            call_id: "c1".to_owned(),
            decision: ApprovalDecision::Approve,
            comment: Some("fine".to_owned()),
        }
    );
    let approved = store
        .get_approval(&s, &run.id, &apr)
        .await?
        .ok_or_else(|| fail("approval missing"))?;
    ensure_eq!(approved.status, ApprovalStatus::Approved);
    ensure_eq!(approved.comment.as_deref(), Some("fine"));
    ensure_eq!(approved.decided_at, Some(last[0].at));

    ensure_matches!(
        store
            .decide_approval(&s, &run.id, &apr, ApprovalDecision::Deny, None)
            .await,
        Err(StoreError::AlreadyDecided)
    );
    ensure_matches!(
        store
            .decide_approval(
                &s,
                &run.id,
                &ApprovalId::new(),
                ApprovalDecision::Deny,
                None
            )
            .await,
        Err(StoreError::NotFound("approval"))
    );
    ensure_matches!(
        store
            .decide_approval(&s, &RunId::new(), &apr, ApprovalDecision::Deny, None)
            .await,
        Err(StoreError::NotFound(_))
    );

    // Cancelling a waiting run expires its pending approval.
    let (run2, apr2) = waiting_run(&*store, &s, "alpha", "c2").await?;
    push(
        &*store,
        &s,
        &run2.id,
        vec![ev(EventKind::RunCancelled { reason: None })],
    )
    .await?;
    let expired = store
        .get_approval(&s, &run2.id, &apr2)
        .await?
        .ok_or_else(|| fail("approval missing"))?;
    ensure_eq!(expired.status, ApprovalStatus::Expired);
    ensure_matches!(
        store
            .decide_approval(&s, &run2.id, &apr2, ApprovalDecision::Approve, None)
            .await,
        Err(StoreError::AlreadyDecided)
    );

    let (run3, apr3) = waiting_run(&*store, &s, "beta", "c3").await?;
    store
        .decide_approval(&s, &run3.id, &apr3, ApprovalDecision::Deny, None)
        .await?;
    let denied = store
        .get_approval(&s, &run3.id, &apr3)
        .await?
        .ok_or_else(|| fail("approval missing"))?;
    ensure_eq!(denied.status, ApprovalStatus::Denied);
    ensure_eq!(denied.agent, "beta");

    // Oldest first, filtered by status, paged by cursor.
    let order = sorted(&[apr.clone(), apr2.clone(), apr3.clone()]);
    let all = store.list_approvals(&s, None, None, 10).await?;
    ensure_eq!(
        all.data.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
        order
    );
    let only = store
        .list_approvals(&s, Some(ApprovalStatus::Expired), None, 10)
        .await?;
    ensure_eq!(
        only.data.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
        vec![apr2]
    );
    ensure!(
        store
            .list_approvals(&s, Some(ApprovalStatus::Pending), None, 10)
            .await?
            .data
            .is_empty(),
        "nothing is pending any more"
    );
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let page = store.list_approvals(&s, None, cursor.as_deref(), 1).await?;
        seen.extend(page.data.into_iter().map(|a| a.id));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    ensure_eq!(seen, order);
    for bad in ["nope", "run_0123"] {
        ensure_matches!(
            store.list_approvals(&s, None, Some(bad), 10).await,
            Err(StoreError::BadCursor)
        );
    }
    Ok(())
}

/// Claims hand out queued and running runs with free leases, oldest first, once; leases expire,
/// renew reports lost ones, release gives them back.
pub async fn leases(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    let queued = new_run(&*store, &s, "alpha").await?;
    let (waiting, apr) = waiting_run(&*store, &s, "alpha", "c1").await?;
    let done = new_run(&*store, &s, "alpha").await?;
    push(
        &*store,
        &s,
        &done.id,
        vec![ev(EventKind::RunSucceeded {
            output: json!(null),
        })],
    )
    .await?;
    let running = new_run(&*store, &s, "alpha").await?;
    push(&*store, &s, &running.id, vec![started()]).await?;
    const LONG: i64 = 60_000;

    let got = store.claim("w1", LONG, 10).await?;
    ensure_eq!(
        claimed_ids(&got),
        vec![queued.id.clone(), running.id.clone()]
    );
    ensure!(
        got.iter().all(|c| c.scope == s),
        "claims carry the run's scope"
    );
    ensure!(
        store.claim("w2", LONG, 10).await?.is_empty(),
        "a held run must not be claimed again"
    );

    ensure_eq!(
        store
            .renew(
                "w1",
                &[queued.id.clone(), running.id.clone(), waiting.id.clone()],
                LONG
            )
            .await?,
        vec![waiting.id.clone()]
    );
    ensure_eq!(
        store
            .renew("w2", std::slice::from_ref(&queued.id), LONG)
            .await?,
        vec![queued.id.clone()]
    );

    // Releasing someone else's lease does nothing; releasing one's own frees the run.
    store.release("w2", &running.id).await?;
    store.release("w1", &queued.id).await?;
    ensure_eq!(
        claimed_ids(&store.claim("w2", LONG, 10).await?),
        vec![queued.id.clone()]
    );

    // A decided approval puts the waiting run back in line.
    store
        .decide_approval(&s, &waiting.id, &apr, ApprovalDecision::Approve, None)
        .await?;
    ensure_eq!(
        claimed_ids(&store.claim("w3", LONG, 10).await?),
        vec![waiting.id.clone()]
    );

    // Ending a run drops its lease.
    push(
        &*store,
        &s,
        &running.id,
        vec![ev(EventKind::RunSucceeded { output: json!(1) })],
    )
    .await?;
    ensure_eq!(
        store
            .renew("w1", std::slice::from_ref(&running.id), LONG)
            .await?,
        vec![running.id.clone()]
    );

    // An expired lease can be taken over; the first holder then learns it lost it.
    let short = new_run(&*store, &s, "alpha").await?;
    ensure_eq!(
        claimed_ids(&store.claim("w4", 1, 10).await?),
        vec![short.id.clone()]
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    ensure_eq!(
        claimed_ids(&store.claim("w5", LONG, 10).await?),
        vec![short.id.clone()]
    );
    ensure_eq!(
        store
            .renew("w4", std::slice::from_ref(&short.id), LONG)
            .await?,
        vec![short.id.clone()]
    );
    ensure!(
        store
            .renew("w5", std::slice::from_ref(&short.id), LONG)
            .await?
            .is_empty(),
        "the new holder keeps its lease"
    );

    // The limit takes the oldest first.
    let mut fresh = Vec::new();
    for _ in 0..3 {
        fresh.push(new_run(&*store, &s, "alpha").await?.id);
    }
    ensure!(store.claim("w6", LONG, 0).await?.is_empty(), "limit 0");
    ensure_eq!(
        claimed_ids(&store.claim("w6", LONG, 2).await?),
        fresh[..2].to_vec()
    );
    ensure_eq!(
        claimed_ids(&store.claim("w6", LONG, 2).await?),
        fresh[2..].to_vec()
    );
    Ok(())
}

/// Another workspace (or org) sees nothing, and what it does touches nothing.
pub async fn scope_isolation(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    store
        .put_agent(&s, &agent("alpha", "1.0.0", "mine")?)
        .await?;
    let (run, apr) = waiting_run(&*store, &s, "alpha", "c1").await?;

    let other_ws = scope_of("org_x", "ws_other", None)?;
    // Same workspace id under another org: the org is part of the scope too.
    let other_org = scope_of("org_x", s.workspace.as_str(), None)?;
    for o in [&other_ws, &other_org] {
        ensure!(
            store.get_agent(o, "alpha", None).await?.is_none(),
            "agent leaked"
        );
        ensure!(
            store.get_agent(o, "alpha", Some("1.0.0")).await?.is_none(),
            "agent version leaked"
        );
        ensure!(store.list_agents(o).await?.is_empty(), "agent list leaked");
        ensure_eq!(store.get_run(o, &run.id).await?, None);
        ensure!(
            store
                .list_runs(o, &RunFilter::default(), None, 200)
                .await?
                .data
                .is_empty(),
            "run list leaked"
        );
        ensure_matches!(
            store.events(o, &run.id, 0, 10).await,
            Err(StoreError::NotFound("run"))
        );
        ensure_matches!(
            push(
                &*store,
                o,
                &run.id,
                vec![ev(EventKind::RunCancelled { reason: None })]
            )
            .await,
            Err(StoreError::NotFound("run"))
        );
        ensure_eq!(store.get_approval(o, &run.id, &apr).await?, None);
        ensure!(
            store
                .list_approvals(o, None, None, 200)
                .await?
                .data
                .is_empty(),
            "approval list leaked"
        );
        ensure_matches!(
            store
                .decide_approval(o, &run.id, &apr, ApprovalDecision::Approve, None)
                .await,
            Err(StoreError::NotFound("approval"))
        );
    }
    // Nothing the other scopes tried changed the run.
    ensure_eq!(store.get_run(&s, &run.id).await?, Some(run.clone()));

    // Names and versions are per workspace.
    let theirs = store
        .put_agent(&other_ws, &agent("alpha", "1.0.0", "theirs")?)
        .await?;
    ensure_eq!(theirs.definition.prompt, "theirs");
    let mine = store.get_agent(&s, "alpha", None).await?;
    ensure_eq!(mine.map(|r| r.definition.prompt), Some("mine".to_owned()));

    let their_run = new_run(&*store, &other_ws, "alpha").await?;
    ensure_eq!(
        ids(&store
            .list_runs(&s, &RunFilter::default(), None, 200)
            .await?
            .data),
        vec![run.id.clone()]
    );
    ensure_eq!(
        ids(&store
            .list_runs(&other_ws, &RunFilter::default(), None, 200)
            .await?
            .data),
        vec![their_run.id.clone()]
    );
    ensure_eq!(store.get_run(&s, &their_run.id).await?, None);

    // Workers claim across tenants, and each claim says whose run it is.
    let claimed = store.claim("w", 60_000, 10).await?;
    let scopes: Vec<(RunId, Scope)> = claimed.into_iter().map(|c| (c.run_id, c.scope)).collect();
    ensure_eq!(scopes, vec![(their_run.id.clone(), other_ws.clone())]);
    Ok(())
}

/// An end-user scope sees only that end-user's runs and approvals; the workspace sees all.
pub async fn end_user_scope(store: DynStore) -> Outcome {
    let ws = Scope::default_workspace();
    let eu1 = scope_of(ws.org.as_str(), ws.workspace.as_str(), Some("eu_one"))?;
    let eu2 = scope_of(ws.org.as_str(), ws.workspace.as_str(), Some("eu_two"))?;
    store.put_agent(&ws, &agent("alpha", "1.0.0", "p")?).await?;
    ensure!(
        store.get_agent(&eu1, "alpha", None).await?.is_some(),
        "end-users use the workspace's agents"
    );
    ensure_eq!(store.list_agents(&eu1).await?.len(), 1);

    let (r1, apr1) = waiting_run(&*store, &eu1, "alpha", "c1").await?;
    let r2 = new_run(&*store, &eu2, "alpha").await?;
    let r0 = new_run(&*store, &ws, "alpha").await?;

    ensure!(store.get_run(&eu1, &r1.id).await?.is_some(), "own run");
    ensure_eq!(store.get_run(&eu1, &r2.id).await?, None);
    ensure_eq!(store.get_run(&eu1, &r0.id).await?, None);
    ensure_eq!(
        ids(&store
            .list_runs(&eu1, &RunFilter::default(), None, 200)
            .await?
            .data),
        vec![r1.id.clone()]
    );
    ensure_matches!(
        store.events(&eu1, &r2.id, 0, 10).await,
        Err(StoreError::NotFound("run"))
    );
    ensure_matches!(
        push(&*store, &eu1, &r2.id, vec![started()]).await,
        Err(StoreError::NotFound("run"))
    );
    let mut every = vec![r0.id.clone(), r1.id.clone(), r2.id.clone()];
    every.sort_by(|a, b| b.cmp(a));
    ensure_eq!(
        ids(&store
            .list_runs(&ws, &RunFilter::default(), None, 200)
            .await?
            .data),
        every
    );
    ensure!(
        store.get_run(&ws, &r1.id).await?.is_some(),
        "workspace sees all"
    );

    ensure_eq!(
        store.list_approvals(&eu1, None, None, 10).await?.data.len(),
        1
    );
    ensure!(
        store
            .list_approvals(&eu2, None, None, 10)
            .await?
            .data
            .is_empty(),
        "another end-user's approvals leaked"
    );
    ensure_eq!(store.get_approval(&eu2, &r1.id, &apr1).await?, None);
    ensure_matches!(
        store
            .decide_approval(&eu2, &r1.id, &apr1, ApprovalDecision::Approve, None)
            .await,
        Err(StoreError::NotFound("approval"))
    );
    // The workspace may act on its end-users' runs; the approval stays the end-user's.
    store
        .decide_approval(&ws, &r1.id, &apr1, ApprovalDecision::Approve, None)
        .await?;
    let approved = store.get_approval(&eu1, &r1.id, &apr1).await?;
    ensure_eq!(approved.map(|a| a.status), Some(ApprovalStatus::Approved));

    let claimed = store.claim("w", 60_000, 10).await?;
    let of_r1 = claimed
        .iter()
        .find(|c| c.run_id == r1.id)
        .ok_or_else(|| fail("r1 not claimed"))?;
    ensure_eq!(of_r1.scope, eu1);
    Ok(())
}

/// Commits are announced (after they are visible); failures and leases are not.
pub async fn subscribe_after_commit(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    let mut rx = store.subscribe();

    let run = new_run(&*store, &s, "alpha").await?;
    ensure_eq!(
        recv(&mut rx).await?,
        Committed {
            run_id: run.id.clone(),
            last_seq: 1,
            status: RunStatus::Queued
        }
    );

    store.claim("w", 60_000, 10).await?;
    store
        .renew("w", std::slice::from_ref(&run.id), 60_000)
        .await?;
    let failed = store
        .append(
            &s,
            Append {
                run_id: run.id.clone(),
                expected_seq: Some(7),
                events: vec![started()],
            },
        )
        .await;
    ensure_matches!(failed, Err(StoreError::Conflict { .. }));
    store.release("w", &run.id).await?;

    let appended = push(&*store, &s, &run.id, vec![started(), started()]).await?;
    let note = recv(&mut rx).await?;
    ensure_eq!(
        note,
        Committed {
            run_id: run.id.clone(),
            last_seq: 3,
            status: RunStatus::Running
        }
    );
    ensure_eq!(store.get_run(&s, &run.id).await?, Some(appended));

    let (waiting, apr) = waiting_run(&*store, &s, "alpha", "c1").await?;
    ensure_eq!(recv(&mut rx).await?.last_seq, 1);
    ensure_eq!(
        recv(&mut rx).await?,
        Committed {
            run_id: waiting.id.clone(),
            last_seq: 5,
            status: RunStatus::Waiting
        }
    );
    store
        .decide_approval(&s, &waiting.id, &apr, ApprovalDecision::Approve, None)
        .await?;
    ensure_eq!(
        recv(&mut rx).await?,
        Committed {
            run_id: waiting.id.clone(),
            last_seq: 6,
            status: RunStatus::Queued
        }
    );
    ensure_matches!(
        rx.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Empty)
    );
    Ok(())
}

async fn recv(rx: &mut tokio::sync::broadcast::Receiver<Committed>) -> Result<Committed, Failure> {
    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(fail(format!("subscription failed: {e}"))),
        Err(_) => Err(fail("no commit notification within 5s")),
    }
}

/// Many writers at once: every journal stays gap-free and an `expected_seq` race has exactly one
/// winner.
pub async fn concurrent_appends(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    let mut runs = Vec::new();
    for _ in 0..20 {
        runs.push(new_run(&*store, &s, "alpha").await?.id);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for id in &runs {
        for _ in 0..5 {
            let (store, s, id) = (store.clone(), s.clone(), id.clone());
            tasks.spawn(async move { push(&*store, &s, &id, vec![started()]).await });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(fail)??;
    }
    for id in &runs {
        let seqs: Vec<u64> = store
            .events(&s, id, 0, u32::MAX)
            .await?
            .iter()
            .map(|e| e.seq)
            .collect();
        ensure_eq!(seqs, (1..=6).collect::<Vec<u64>>());
        ensure_eq!(store.get_run(&s, id).await?.map(|r| r.last_seq), Some(6));
    }

    let contested = runs[0].clone();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (store, s, id) = (store.clone(), s.clone(), contested.clone());
        tasks.spawn(async move {
            store
                .append(
                    &s,
                    Append {
                        run_id: id,
                        expected_seq: Some(6),
                        events: vec![started()],
                    },
                )
                .await
        });
    }
    let (mut won, mut lost) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(fail)? {
            Ok(_) => won += 1,
            Err(StoreError::Conflict {
                expected: 6,
                actual: 7,
            }) => lost += 1,
            Err(e) => return Err(e.into()),
        }
    }
    ensure_eq!((won, lost), (1, 9));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Secrets and data keys

/// Data keys are insert-only per (workspace, key id) and listed by key id; the cross-workspace
/// listing names each key's workspace.
pub async fn data_keys_insert_only(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    ensure!(
        store.data_keys(&s).await?.is_empty(),
        "a new store has keys"
    );
    ensure!(
        store.all_data_keys().await?.is_empty(),
        "a new store has keys"
    );

    ensure!(
        store.put_data_key(&s, data_key(2, "m1")).await?,
        "key 2 not inserted"
    );
    ensure!(
        store.put_data_key(&s, data_key(1, "m1")).await?,
        "key 1 not inserted"
    );
    // A second key 1 (a racing creator) changes nothing.
    ensure!(
        !store.put_data_key(&s, data_key(1, "other")).await?,
        "an existing key was overwritten"
    );
    ensure_eq!(
        store.data_keys(&s).await?,
        vec![data_key(1, "m1"), data_key(2, "m1")]
    );

    // An end-user scope sees its workspace's keys: secrets are per workspace.
    let eu = scope_of("org_default", "ws_default", Some("eu_alice"))?;
    ensure_eq!(store.data_keys(&eu).await?.len(), 2);

    let other = scope_of("org_x", "ws_other", None)?;
    ensure!(
        store.data_keys(&other).await?.is_empty(),
        "data keys leaked"
    );
    // Each workspace numbers its own keys.
    ensure!(
        store.put_data_key(&other, data_key(1, "m1")).await?,
        "key 1 not inserted"
    );
    let all = store.all_data_keys().await?;
    ensure_eq!(
        all,
        vec![
            (s.clone(), data_key(1, "m1")),
            (s.clone(), data_key(2, "m1")),
            (other.clone(), data_key(1, "m1")),
        ]
    );
    Ok(())
}

fn rewrap(scope: &Scope, key_id: u32, from: &str, to: &str) -> Rewrap {
    let new = data_key(key_id, to);
    Rewrap {
        scope: scope.clone(),
        key_id,
        from_master_key_id: from.to_owned(),
        master_key_id: new.master_key_id,
        wrapped: new.wrapped,
        nonce: new.nonce,
    }
}

/// A rewrap changes every listed key or none: a missing key or one wrapped by another master key
/// fails it as a whole.
pub async fn data_key_rewrap_is_atomic(store: DynStore) -> Outcome {
    let a = Scope::default_workspace();
    let b = scope_of("org_x", "ws_other", None)?;
    for (scope, id) in [(&a, 1), (&a, 2), (&b, 1)] {
        ensure!(
            store.put_data_key(scope, data_key(id, "old")).await?,
            "not inserted"
        );
    }
    store.put_secret(&a, sealed("token", 1, "ct-a", 5)).await?;
    let before = store.all_data_keys().await?;

    // The last entry names a key that does not exist: nothing may change.
    ensure_matches!(
        store
            .rewrap_data_keys(vec![
                rewrap(&a, 1, "old", "new"),
                rewrap(&b, 1, "old", "new"),
                rewrap(&b, 9, "old", "new"),
            ])
            .await,
        Err(StoreError::NotFound("data key"))
    );
    ensure_eq!(store.all_data_keys().await?, before);
    // A key no longer wrapped by the expected master key (another rotation won): same.
    ensure_matches!(
        store
            .rewrap_data_keys(vec![
                rewrap(&a, 1, "old", "new"),
                rewrap(&a, 2, "elsewhere", "new"),
            ])
            .await,
        Err(StoreError::NotFound("data key"))
    );
    ensure_eq!(store.all_data_keys().await?, before);
    // The workspace in the scope is part of the key's identity.
    ensure_matches!(
        store
            .rewrap_data_keys(vec![rewrap(&b, 2, "old", "new")])
            .await,
        Err(StoreError::NotFound("data key"))
    );

    store
        .rewrap_data_keys(vec![
            rewrap(&a, 1, "old", "new"),
            rewrap(&a, 2, "old", "new"),
            rewrap(&b, 1, "old", "new"),
        ])
        .await?;
    ensure_eq!(
        store.all_data_keys().await?,
        vec![
            (a.clone(), data_key(1, "new")),
            (a.clone(), data_key(2, "new")),
            (b.clone(), data_key(1, "new")),
        ]
    );
    // Secrets are sealed by the data key, not the master key: a rewrap leaves them alone.
    ensure_eq!(
        store.get_secret(&a, "token").await?,
        Some(sealed("token", 1, "ct-a", 5))
    );
    store.rewrap_data_keys(Vec::new()).await?;
    Ok(())
}

/// Put is an upsert that keeps `created_at`, listings are by name and carry no values, delete
/// says whether something was there, and a secret needs its data key.
pub async fn secrets_crud(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    ensure_eq!(store.get_secret(&s, "token").await?, None);
    ensure!(
        store.list_secrets(&s).await?.is_empty(),
        "a new store has secrets"
    );
    ensure_matches!(
        store.put_secret(&s, sealed("token", 1, "ct", 10)).await,
        Err(StoreError::NotFound("data key"))
    );
    ensure!(
        store.get_secret(&s, "token").await?.is_none(),
        "stored without a key"
    );

    ensure!(
        store.put_data_key(&s, data_key(1, "m")).await?,
        "not inserted"
    );
    ensure!(
        store.put_data_key(&s, data_key(2, "m")).await?,
        "not inserted"
    );
    let token = sealed("token", 1, "ct-1", 10);
    ensure_eq!(store.put_secret(&s, token.clone()).await?, meta(&token));
    ensure_eq!(store.get_secret(&s, "token").await?, Some(token.clone()));
    // Names are exact: no case folding, no prefix match.
    ensure_eq!(store.get_secret(&s, "TOKEN").await?, None);
    ensure_eq!(store.get_secret(&s, "tok").await?, None);

    // Replacing keeps the creation time and takes everything else from the new record.
    let mut replaced = sealed("token", 2, "ct-2", 20);
    replaced.nonce = vec![9; 24];
    let stored = store.put_secret(&s, replaced.clone()).await?;
    ensure_eq!(
        stored,
        SecretMeta {
            name: "token".to_owned(),
            created_at: 10,
            updated_at: 20
        }
    );
    ensure_eq!(
        store.get_secret(&s, "token").await?,
        Some(SecretRecord {
            created_at: 10,
            ..replaced.clone()
        })
    );

    let zeta = sealed("zeta", 1, "ct-z", 30);
    let alpha = sealed("alpha.key", 1, "ct-a", 40);
    store.put_secret(&s, zeta.clone()).await?;
    store.put_secret(&s, alpha.clone()).await?;
    let current = SecretRecord {
        created_at: 10,
        ..replaced
    };
    ensure_eq!(
        store.list_secrets(&s).await?,
        vec![meta(&alpha), meta(&current), meta(&zeta)]
    );
    ensure_eq!(
        store.all_secrets(&s).await?,
        vec![alpha.clone(), current.clone(), zeta.clone()]
    );

    ensure!(
        store.delete_secret(&s, "token").await?,
        "delete found nothing"
    );
    ensure!(!store.delete_secret(&s, "token").await?, "deleted twice");
    ensure!(
        !store.delete_secret(&s, "never").await?,
        "deleted a missing secret"
    );
    ensure_eq!(store.get_secret(&s, "token").await?, None);
    ensure_eq!(store.all_secrets(&s).await?, vec![alpha, zeta]);
    // Deleting a secret keeps the workspace's data keys.
    ensure_eq!(store.data_keys(&s).await?.len(), 2);
    Ok(())
}

/// Secrets belong to a workspace: another workspace (or the same workspace id in another org)
/// sees none, cannot delete them, and keeps its own under the same names. End-users see their
/// workspace's secrets.
pub async fn secret_scope_isolation(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    let other_ws = scope_of("org_x", "ws_other", None)?;
    let other_org = scope_of("org_x", s.workspace.as_str(), None)?;
    ensure!(
        store.put_data_key(&s, data_key(1, "m")).await?,
        "not inserted"
    );
    let mine = sealed("token", 1, "mine", 10);
    store.put_secret(&s, mine.clone()).await?;

    for o in [&other_ws, &other_org] {
        ensure_eq!(store.get_secret(o, "token").await?, None);
        ensure!(
            store.list_secrets(o).await?.is_empty(),
            "secret list leaked"
        );
        ensure!(store.all_secrets(o).await?.is_empty(), "secrets leaked");
        ensure!(store.data_keys(o).await?.is_empty(), "data keys leaked");
        ensure!(
            !store.delete_secret(o, "token").await?,
            "deleted across scopes"
        );
        // Their key 1 does not exist, even though ours does.
        ensure_matches!(
            store.put_secret(o, sealed("token", 1, "theirs", 20)).await,
            Err(StoreError::NotFound("data key"))
        );
    }
    ensure_eq!(store.get_secret(&s, "token").await?, Some(mine.clone()));

    // Same name, another workspace: two independent secrets.
    ensure!(
        store.put_data_key(&other_ws, data_key(1, "m")).await?,
        "not inserted"
    );
    let theirs = sealed("token", 1, "theirs", 20);
    store.put_secret(&other_ws, theirs.clone()).await?;
    ensure_eq!(store.get_secret(&s, "token").await?, Some(mine.clone()));
    ensure_eq!(
        store.get_secret(&other_ws, "token").await?,
        Some(theirs.clone())
    );
    ensure_eq!(store.get_secret(&other_org, "token").await?, None);

    // An end-user scope reads and writes its workspace's secrets.
    let eu = scope_of("org_default", "ws_default", Some("eu_alice"))?;
    ensure_eq!(store.get_secret(&eu, "token").await?, Some(mine.clone()));
    ensure_eq!(store.list_secrets(&eu).await?, vec![meta(&mine)]);

    // Deleting in one workspace leaves the other's.
    ensure!(
        store.delete_secret(&other_ws, "token").await?,
        "delete found nothing"
    );
    ensure_eq!(store.get_secret(&s, "token").await?, Some(mine));
    ensure_eq!(store.get_secret(&other_ws, "token").await?, None);
    Ok(())
}

/// A key record with a made-up hash.
pub fn key_record(name: &str, role: Role, hash: &str) -> KeyRecord {
    KeyRecord {
        id: KeyId::new(),
        name: name.to_owned(),
        role,
        prefix: "pdk_test".to_owned(),
        secret_hash: hash.to_owned(),
        created_at: 1_000,
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
    }
}

pub async fn workspaces(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    // No org yet: nothing can be created in it.
    ensure_matches!(
        store.create_workspace(&s, "prod").await,
        Err(StoreError::NotFound("org"))
    );
    store.ensure_workspace(&s, "default").await?;
    store.ensure_workspace(&s, "renamed?").await?;
    let list = store.list_workspaces(&s).await?;
    ensure_eq!(list.len(), 1);
    ensure_eq!(list[0].id, s.workspace);
    ensure_eq!(list[0].name, "default");
    let prod = store.create_workspace(&s, "prod").await?;
    ensure_matches!(
        store.create_workspace(&s, "prod").await,
        Err(StoreError::AlreadyExists("workspace"))
    );
    let names: Vec<String> = store
        .list_workspaces(&s)
        .await?
        .into_iter()
        .map(|w| w.name)
        .collect();
    ensure_eq!(names, vec!["default".to_owned(), "prod".to_owned()]);
    // Another org sees none of them, and may reuse the name.
    let other = scope_of("org_other", "ws_other", None)?;
    store.ensure_workspace(&other, "default").await?;
    let theirs = store.list_workspaces(&other).await?;
    ensure_eq!(theirs.len(), 1);
    ensure!(theirs[0].id != prod.id, "listed another org's workspace");
    store.create_workspace(&other, "prod").await?;
    Ok(())
}

pub async fn api_keys(store: DynStore) -> Outcome {
    let a = Scope::default_workspace();
    let b = scope_of("org_default", "ws_b", None)?;
    let other_org = scope_of("org_x", "ws_default", None)?;
    ensure_eq!(store.count_api_keys().await?, 0);
    // A key needs an existing workspace.
    ensure_matches!(
        store
            .create_api_key(&a, key_record("k", Role::Owner, "h0"))
            .await,
        Err(StoreError::NotFound("workspace"))
    );
    store.ensure_workspace(&a, "a").await?;
    store.ensure_workspace(&b, "b").await?;
    store.ensure_workspace(&other_org, "x").await?;
    let ka = key_record("ka", Role::Owner, "hash-a");
    let kb = key_record("kb", Role::Viewer, "hash-b");
    store.create_api_key(&a, ka.clone()).await?;
    store.create_api_key(&b, kb.clone()).await?;
    ensure_eq!(store.count_api_keys().await?, 2);
    // The same secret hash twice is refused (it would make authentication ambiguous).
    ensure!(
        store
            .create_api_key(&a, key_record("dup", Role::Owner, "hash-a"))
            .await
            .is_err(),
        "duplicate hash accepted"
    );

    ensure_eq!(
        store.api_key_by_hash("hash-a").await?,
        Some((a.clone(), ka.clone()))
    );
    ensure_eq!(
        store.api_key_by_hash("hash-b").await?,
        Some((b.clone(), kb.clone()))
    );
    ensure_eq!(store.api_key_by_hash("nope").await?, None);
    ensure_eq!(store.list_api_keys(&a).await?, vec![ka.clone()]);
    ensure_eq!(store.list_api_keys(&b).await?, vec![kb.clone()]);
    ensure!(
        store.list_api_keys(&other_org).await?.is_empty(),
        "another org listed keys"
    );

    // Another workspace or org cannot revoke it.
    for o in [&b, &other_org] {
        ensure!(
            !store.revoke_api_key(o, &ka.id, 5_000).await?,
            "revoked across scopes"
        );
    }
    ensure_eq!(
        store
            .api_key_by_hash("hash-a")
            .await?
            .map(|(_, k)| k.revoked_at),
        Some(None)
    );

    store.touch_api_key(&ka.id, 3_000).await?;
    // Never backwards.
    store.touch_api_key(&ka.id, 2_000).await?;
    ensure!(
        store.revoke_api_key(&a, &ka.id, 4_000).await?,
        "not revoked"
    );
    ensure!(
        !store.revoke_api_key(&a, &ka.id, 6_000).await?,
        "revoked twice"
    );
    let (_, after) = store
        .api_key_by_hash("hash-a")
        .await?
        .ok_or_else(|| Failure("revoked key vanished".to_owned()))?;
    ensure_eq!(after.last_used_at, Some(3_000));
    ensure_eq!(after.revoked_at, Some(4_000));
    ensure_eq!(store.list_api_keys(&b).await?, vec![kb]);
    Ok(())
}

/// An audit entry by an API key.
pub fn audit_entry(action: &str, resource: &str, at: i64) -> NewAuditEntry {
    NewAuditEntry {
        at,
        actor: paddock_types::api::AuditActor {
            kind: "api_key".to_owned(),
            key_id: Some(KeyId::new()),
            role: Some(Role::Admin),
            end_user: None,
        },
        action: action.to_owned(),
        resource: resource.to_owned(),
        outcome: "ok".to_owned(),
        ip: Some("127.0.0.1".to_owned()),
        user_agent: Some("test".to_owned()),
        detail: json!({"n": at, "name": "x"}),
    }
}

pub async fn audit_chain(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    let v = store.verify_audit(&s).await?;
    ensure!(v.ok && v.entries == 0, "empty chain: {v:?}");
    let mut appended = Vec::new();
    for i in 1..=7 {
        let action = if i % 2 == 0 {
            "run.created"
        } else {
            "secret.written"
        };
        let resource = if i % 2 == 0 {
            format!("run/r{i}")
        } else {
            format!("secret/s{i}")
        };
        let e = store
            .append_audit(&s, audit_entry(action, &resource, 1000 + i))
            .await?;
        appended.push(e);
    }
    ensure_eq!(appended[0].seq, 1);
    ensure_eq!(appended[0].prev_hash, crate::audit::GENESIS);
    for w in appended.windows(2) {
        ensure_eq!(w[1].seq, w[0].seq + 1);
        ensure_eq!(w[1].prev_hash, w[0].hash);
        ensure!(w[1].hash.len() == 64, "hash is not hex sha-256");
    }
    // Paging, oldest first, returns exactly what was appended.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_audit(&s, &AuditFilter::default(), cursor.as_deref(), 3)
            .await?;
        listed.extend(page.data);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    ensure_eq!(listed, appended);
    let f = |filter: AuditFilter| {
        let store = store.clone();
        let s = s.clone();
        async move { store.list_audit(&s, &filter, None, 100).await }
    };
    let runs = f(AuditFilter {
        action: Some("run.created".to_owned()),
        ..Default::default()
    })
    .await?;
    ensure_eq!(runs.data.len(), 3);
    let secrets = f(AuditFilter {
        resource_prefix: Some("secret/".to_owned()),
        ..Default::default()
    })
    .await?;
    ensure_eq!(secrets.data.len(), 4);
    let window = f(AuditFilter {
        from: Some(1002),
        to: Some(1004),
        ..Default::default()
    })
    .await?;
    ensure_eq!(
        window.data.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    let actor = appended[4].actor.key_id.as_ref().map(|k| k.to_string());
    let by = f(AuditFilter {
        actor: actor.clone(),
        ..Default::default()
    })
    .await?;
    ensure_eq!(by.data.len(), 1);
    ensure_matches!(
        store
            .list_audit(&s, &AuditFilter::default(), Some("nope"), 10)
            .await,
        Err(StoreError::BadCursor)
    );
    let v = store.verify_audit(&s).await?;
    ensure!(v.ok && v.entries == 7 && v.first_broken.is_none(), "{v:?}");
    ensure_eq!(store.audit_workspaces().await?, vec![s]);
    Ok(())
}

pub async fn audit_isolation(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    let other_ws = scope_of("org_x", "ws_other", None)?;
    let other_org = scope_of("org_x", s.workspace.as_str(), None)?;
    let end_user = scope_of(s.org.as_str(), s.workspace.as_str(), Some("eu_1"))?;
    store
        .append_audit(&s, audit_entry("key.created", "key/k", 1))
        .await?;
    for o in [&other_ws, &other_org] {
        let page = store
            .list_audit(o, &AuditFilter::default(), None, 100)
            .await?;
        ensure!(page.data.is_empty(), "audit leaked to {o:?}");
        let v = store.verify_audit(o).await?;
        ensure!(v.ok && v.entries == 0, "{v:?}");
    }
    // Another workspace starts its own chain at 1.
    let e = store
        .append_audit(&other_ws, audit_entry("key.created", "key/k", 2))
        .await?;
    ensure_eq!(e.seq, 1);
    ensure_eq!(e.prev_hash, crate::audit::GENESIS);
    // The trail is the workspace's: an end-user scope appends to and sees the same chain.
    let e = store
        .append_audit(&end_user, audit_entry("run.created", "run/r", 3))
        .await?;
    ensure_eq!(e.seq, 2);
    ensure_eq!(store.verify_audit(&s).await?.entries, 2);
    ensure_eq!(store.audit_workspaces().await?.len(), 2);
    Ok(())
}

pub async fn audit_concurrent_appends(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (store, s) = (store.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            store
                .append_audit(&s, audit_entry("run.created", &format!("run/{i}"), i))
                .await
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.map_err(fail)??.seq);
    }
    seqs.sort_unstable();
    ensure_eq!(seqs, (1..=50).collect::<Vec<u64>>());
    let v = store.verify_audit(&s).await?;
    ensure!(v.ok && v.entries == 50, "{v:?}");
    Ok(())
}

fn stored_response(body: &str) -> IdempotentResponse {
    IdempotentResponse {
        status: 201,
        content_type: Some("application/json".to_owned()),
        location: Some("/v1/runs/run_x".to_owned()),
        body: body.as_bytes().to_vec(),
    }
}

pub async fn idempotency_claim_complete(store: DynStore) -> Outcome {
    use IdempotencyClaim as C;
    let a = Scope::default_workspace();
    let a_end_user = scope_of(a.org.as_str(), a.workspace.as_str(), Some("eu_alice"))?;
    let b = scope_of("org_default", "ws_b", None)?;
    let t = 1_000_000;
    ensure_eq!(store.claim_idempotency(&a, "k1", "h1", t).await?, C::New);
    ensure_eq!(
        store.claim_idempotency(&a, "k1", "h1", t + 1).await?,
        C::InFlight
    );
    ensure_eq!(
        store.claim_idempotency(&a, "k1", "h2", t + 1).await?,
        C::Mismatch
    );
    // Per workspace: B's key of the same name is its own; an end-user shares its workspace's.
    ensure_eq!(
        store.claim_idempotency(&b, "k1", "h2", t + 1).await?,
        C::New
    );
    ensure_eq!(
        store
            .claim_idempotency(&a_end_user, "k1", "h1", t + 1)
            .await?,
        C::InFlight
    );
    let resp = stored_response("{\"id\":1}");
    store
        .complete_idempotency(&a, "k1", "h1", resp.clone())
        .await?;
    ensure_eq!(
        store.claim_idempotency(&a, "k1", "h1", t + 2).await?,
        C::Done(resp.clone())
    );
    ensure_eq!(
        store.claim_idempotency(&a, "k1", "h2", t + 2).await?,
        C::Mismatch
    );
    // Completing twice or releasing a completed record changes nothing.
    store
        .complete_idempotency(&a, "k1", "h1", stored_response("other"))
        .await?;
    store.release_idempotency(&a, "k1", "h1").await?;
    ensure_eq!(
        store.claim_idempotency(&a, "k1", "h1", t + 3).await?,
        C::Done(resp)
    );
    // B is still in flight.
    ensure_eq!(
        store.claim_idempotency(&b, "k1", "h2", t + 3).await?,
        C::InFlight
    );
    Ok(())
}

pub async fn idempotency_expiry_and_release(store: DynStore) -> Outcome {
    use IdempotencyClaim as C;
    let a = Scope::default_workspace();
    let t = 5_000_000;
    // Release frees an in-flight claim.
    ensure_eq!(store.claim_idempotency(&a, "r", "h", t).await?, C::New);
    store.release_idempotency(&a, "r", "h").await?;
    ensure_eq!(store.claim_idempotency(&a, "r", "h2", t).await?, C::New);
    // A completed record lives 24 h, then the key is free again (with any request).
    ensure_eq!(store.claim_idempotency(&a, "e", "h", t).await?, C::New);
    store
        .complete_idempotency(&a, "e", "h", stored_response("1"))
        .await?;
    ensure_matches!(
        store
            .claim_idempotency(&a, "e", "h", t + IDEMPOTENCY_TTL_MS - 1)
            .await?,
        C::Done(_)
    );
    ensure_eq!(
        store
            .claim_idempotency(&a, "e", "other", t + IDEMPOTENCY_TTL_MS + 1)
            .await?,
        C::New
    );
    // An in-flight claim nobody finished is abandoned after a while.
    let u = t + IDEMPOTENCY_TTL_MS + 10;
    ensure_eq!(store.claim_idempotency(&a, "f", "h", u).await?, C::New);
    ensure_eq!(
        store.claim_idempotency(&a, "f", "h", u + 1).await?,
        C::InFlight
    );
    ensure_eq!(
        store
            .claim_idempotency(&a, "f", "h", u + IDEMPOTENCY_IN_FLIGHT_MS + 1)
            .await?,
        C::New
    );
    Ok(())
}

pub async fn idempotency_concurrent_claims(store: DynStore) -> Outcome {
    let a = Scope::default_workspace();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = std::sync::Arc::clone(&store);
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            store.claim_idempotency(&a, "race", "h", 1_000).await
        }));
    }
    let mut new = 0;
    for t in tasks {
        let claim = t.await.map_err(|e| Failure(e.to_string()))??;
        match claim {
            IdempotencyClaim::New => new += 1,
            IdempotencyClaim::InFlight => {}
            other => return Err(Failure(format!("unexpected claim {other:?}"))),
        }
    }
    ensure_eq!(new, 1);
    Ok(())
}
