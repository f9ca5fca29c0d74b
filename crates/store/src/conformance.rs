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
//! [`StoreError::AlreadyDecided`]; claim, renew and release publish nothing. Data keys belong to
//! the workspace; secrets to the workspace or to one end-user, whose secret shadows the
//! workspace's of the same name; the store treats their bytes as opaque.

use crate::{
    Append, AuditFilter, Claimed, Committed, DataKeyRecord, DynStore, IDEMPOTENCY_IN_FLIGHT_MS,
    IDEMPOTENCY_TTL_MS, IdempotencyClaim, IdempotentResponse, KeyRecord, NewAuditEntry, Rewrap,
    RunFilter, SecretMeta, SecretRecord, Store, StoreError,
};
use crate::{BudgetRefusal, Reservation, UsageQuery};
use paddock_types::api::{AgentDefinition, ApprovalStatus, Run};
use paddock_types::billing::{Budget, BudgetPeriod, BudgetSubject, EndUser, UsageRow};
use paddock_types::event::{ApprovalDecision, PolicyDecision};
use paddock_types::ids::EndUserId;
use paddock_types::manifest::{Limits, ModelSettings};
use paddock_types::message::{ModelResponse, Usage};
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
    ("members_lifecycle", |s| Box::pin(members_lifecycle(s))),
    ("sessions_lifecycle", |s| Box::pin(sessions_lifecycle(s))),
    ("create_org_is_atomic", |s| {
        Box::pin(create_org_is_atomic(s))
    }),
    ("end_users", |s| Box::pin(end_users(s))),
    ("budgets_reserve_and_settle", |s| {
        Box::pin(budgets_reserve_and_settle(s))
    }),
    ("budgets_concurrent_reservations", |s| {
        Box::pin(budgets_concurrent_reservations(s))
    }),
    ("usage_report", |s| Box::pin(usage_report(s))),
    ("claim_caps_running_per_workspace", |s| {
        Box::pin(claim_caps_running_per_workspace(s))
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
        end_user: None,
        created_by: None,
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
        end_user: None,
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

    // A new version is the latest at once, however often the old latest was just read.
    for _ in 0..3 {
        store.get_agent(&s, "alpha", None).await?;
    }
    store
        .put_agent(&s, &agent("alpha", "2.0.0", "v20")?)
        .await?;
    let latest = store.get_agent(&s, "alpha", None).await?;
    ensure_eq!(latest.map(|r| r.definition.prompt), Some("v20".to_owned()));
    for other in [
        scope_of(s.org.as_str(), "ws_other", None)?,
        scope_of("org_other", s.workspace.as_str(), None)?,
    ] {
        ensure!(
            store.get_agent(&other, "alpha", None).await?.is_none(),
            "another tenant must not see the agent"
        );
    }

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
            ("alpha".to_owned(), "2.0.0".to_owned()),
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

    let stale = store.append(&s, started_after(&run.id, 1)).await;
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

    // The engine's form: the new last seq only, with the same checks.
    let seq = store.append_seq(&s, started_after(&run.id, 5)).await?;
    ensure_eq!(seq, 6);
    let stale = store.append_seq(&s, started_after(&run.id, 5)).await;
    ensure_matches!(
        stale,
        Err(StoreError::Conflict {
            expected: 5,
            actual: 6
        })
    );

    let events = store.events(&s, &run.id, 0, u32::MAX).await?;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    ensure_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
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

/// One `run_started` appended to `run` where its journal is expected to end at `seq`.
fn started_after(run: &RunId, seq: u64) -> Append {
    Append {
        run_id: run.clone(),
        expected_seq: Some(seq),
        events: vec![started()],
    }
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

    let got = store.claim("w1", LONG, 10, None).await?;
    ensure_eq!(
        claimed_ids(&got),
        vec![queued.id.clone(), running.id.clone()]
    );
    ensure!(
        got.iter().all(|c| c.scope == s),
        "claims carry the run's scope"
    );
    ensure_eq!(
        got.iter().map(|c| c.last_seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    ensure!(
        store.claim("w2", LONG, 10, None).await?.is_empty(),
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
        claimed_ids(&store.claim("w2", LONG, 10, None).await?),
        vec![queued.id.clone()]
    );

    // A decided approval puts the waiting run back in line.
    store
        .decide_approval(&s, &waiting.id, &apr, ApprovalDecision::Approve, None)
        .await?;
    ensure_eq!(
        claimed_ids(&store.claim("w3", LONG, 10, None).await?),
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
        claimed_ids(&store.claim("w4", 1, 10, None).await?),
        vec![short.id.clone()]
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    ensure_eq!(
        claimed_ids(&store.claim("w5", LONG, 10, None).await?),
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
    ensure!(
        store.claim("w6", LONG, 0, None).await?.is_empty(),
        "limit 0"
    );
    ensure_eq!(
        claimed_ids(&store.claim("w6", LONG, 2, None).await?),
        fresh[..2].to_vec()
    );
    ensure_eq!(
        claimed_ids(&store.claim("w6", LONG, 2, None).await?),
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
    let claimed = store.claim("w", 60_000, 10, None).await?;
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

    let claimed = store.claim("w", 60_000, 10, None).await?;
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

    store.claim("w", 60_000, 10, None).await?;
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

    // An end-user scope reads its workspace's secrets until it has its own of the same name,
    // which shadows the workspace's for that end-user only. Listings and deletes touch only the
    // caller's own secrets; `all_secrets` (for redaction) holds both.
    let eu = scope_of("org_default", "ws_default", Some("eu_alice"))?;
    let bob = scope_of("org_default", "ws_default", Some("eu_bob"))?;
    ensure_eq!(store.get_secret(&eu, "token").await?, Some(mine.clone()));
    ensure!(
        store.list_secrets(&eu).await?.is_empty(),
        "listed the workspace's"
    );
    let alices = SecretRecord {
        end_user: eu.end_user.clone(),
        ..sealed("token", 1, "alice's", 30)
    };
    ensure_matches!(
        store.put_secret(&s, alices.clone()).await,
        Err(StoreError::Backend(_))
    );
    store.put_secret(&eu, alices.clone()).await?;
    ensure_eq!(store.get_secret(&eu, "token").await?, Some(alices.clone()));
    ensure_eq!(store.get_secret(&bob, "token").await?, Some(mine.clone()));
    ensure_eq!(store.get_secret(&s, "token").await?, Some(mine.clone()));
    ensure_eq!(store.list_secrets(&eu).await?, vec![meta(&alices)]);
    ensure_eq!(store.list_secrets(&s).await?, vec![meta(&mine)]);
    ensure_eq!(
        store.all_secrets(&eu).await?,
        vec![mine.clone(), alices.clone()]
    );
    ensure_eq!(store.all_secrets(&bob).await?, vec![mine.clone()]);
    ensure!(
        !store.delete_secret(&bob, "token").await?,
        "deleted another end-user's or the workspace's secret"
    );
    ensure!(store.delete_secret(&eu, "token").await?, "not deleted");
    ensure_eq!(store.get_secret(&eu, "token").await?, Some(mine.clone()));

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
        scopes: None,
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
            member_id: None,
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

fn end_user(external_id: &str) -> EndUser {
    EndUser {
        id: EndUserId::new(),
        external_id: external_id.to_owned(),
        metadata: json!({"plan": "pro"}),
        created_at: 1_000,
    }
}

pub async fn end_users(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    let other = scope_of("org_default", "ws_other", None)?;
    let alice = store
        .create_end_user(&s, end_user("alice@example.com"))
        .await?;
    let bob = store.create_end_user(&s, end_user("bob")).await?;
    ensure_matches!(
        store
            .create_end_user(&s, end_user("alice@example.com"))
            .await,
        Err(StoreError::AlreadyExists("end-user"))
    );
    // The same external id in another workspace is another end-user.
    let other_alice = store
        .create_end_user(&other, end_user("alice@example.com"))
        .await?;
    ensure_eq!(
        store.find_end_user(&s, alice.id.as_str()).await?,
        Some(alice.clone())
    );
    ensure_eq!(
        store.find_end_user(&s, "alice@example.com").await?,
        Some(alice.clone())
    );
    ensure_eq!(
        store.find_end_user(&other, "alice@example.com").await?,
        Some(other_alice.clone())
    );
    ensure_eq!(store.find_end_user(&other, alice.id.as_str()).await?, None);
    ensure_eq!(store.find_end_user(&s, "nobody").await?, None);

    let first = store.list_end_users(&s, None, 1).await?;
    ensure_eq!(first.data, vec![alice.clone()]);
    let cursor = first
        .next_cursor
        .ok_or_else(|| Failure("no cursor".into()))?;
    let second = store.list_end_users(&s, Some(&cursor), 1).await?;
    ensure_eq!(second.data, vec![bob.clone()]);
    ensure_eq!(second.next_cursor, None);
    ensure_matches!(
        store.list_end_users(&s, Some("run_x"), 10).await,
        Err(StoreError::BadCursor)
    );

    ensure!(
        !store.delete_end_user(&other, &alice.id).await?,
        "deleted across workspaces"
    );
    ensure!(store.delete_end_user(&s, &alice.id).await?, "not deleted");
    ensure_eq!(store.find_end_user(&s, "alice@example.com").await?, None);
    Ok(())
}

fn budget(subject: BudgetSubject, target: Option<&str>, limit_usd: f64) -> Result<Budget, Failure> {
    Ok(Budget {
        id: paddock_types::BudgetId::new(),
        subject,
        agent: target
            .filter(|_| subject == BudgetSubject::Agent)
            .map(str::to_owned),
        end_user: match (subject, target) {
            (BudgetSubject::EndUser, Some(t)) => {
                Some(EndUserId::parse(t).map_err(|e| Failure(e.to_string()))?)
            }
            _ => None,
        },
        period: BudgetPeriod::Day,
        limit_usd,
        created_at: 1_000,
    })
}

fn hold(run: &RunId, agent: &str, usd: f64) -> Reservation {
    Reservation {
        run_id: run.clone(),
        agent: agent.to_owned(),
        micros: paddock_types::billing::usd_to_micros(usd),
        at: paddock_types::time::now_ms(),
    }
}

/// Journals a model answer costing `usd` on `run` (settling its hold).
async fn respond(store: &DynStore, scope: &Scope, run: &RunId, usd: f64) -> Outcome {
    let response = ModelResponse {
        model: "m-1".to_owned(),
        content: Some("ok".to_owned()),
        tool_calls: Vec::new(),
        usage: Usage {
            input_tokens: 100,
            output_tokens: 10,
        },
        stop_reason: None,
    };
    store
        .append(
            scope,
            Append {
                run_id: run.clone(),
                expected_seq: None,
                events: vec![NewEvent::now(EventKind::ModelResponded {
                    call_index: 0,
                    response,
                    cost_usd: usd,
                    retries: 0,
                    latency_ms: 1,
                })],
            },
        )
        .await?;
    Ok(())
}

pub async fn budgets_reserve_and_settle(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    let alice = scope_of("org_default", "ws_default", Some("eu_alice"))?;
    let other = scope_of("org_default", "ws_other", None)?;
    let ws_cap = store
        .create_budget(&s, budget(BudgetSubject::Workspace, None, 1.0)?)
        .await?;
    let agent_cap = store
        .create_budget(&s, budget(BudgetSubject::Agent, Some("writer"), 0.5)?)
        .await?;
    let each_end_user = store
        .create_budget(&s, budget(BudgetSubject::EndUser, None, 0.25)?)
        .await?;
    ensure_eq!(
        store.list_budgets(&s).await?,
        vec![ws_cap.clone(), agent_cap.clone(), each_end_user.clone()]
    );
    ensure!(
        store.list_budgets(&other).await?.is_empty(),
        "budgets leaked"
    );

    let writer = RunId::new();
    store.create_run(&s, &writer, created("writer")).await?;
    // Within every cap: held.
    ensure_eq!(
        store
            .reserve_budget(&s, hold(&writer, "writer", 0.4))
            .await?,
        None
    );
    // A second hold of the same run replaces the first (a re-issued call).
    ensure_eq!(
        store
            .reserve_budget(&s, hold(&writer, "writer", 0.5))
            .await?,
        None
    );
    // The agent cap has no room left for another run of the same agent.
    let writer2 = RunId::new();
    store.create_run(&s, &writer2, created("writer")).await?;
    let refused = store
        .reserve_budget(&s, hold(&writer2, "writer", 0.01))
        .await?;
    ensure_matches!(refused, Some(BudgetRefusal { ref budget, .. }) if budget.id == agent_cap.id);
    // Settling at a lower actual cost frees the difference.
    respond(&store, &s, &writer, 0.2).await?;
    ensure_eq!(
        store
            .reserve_budget(&s, hold(&writer2, "writer", 0.3))
            .await?,
        None
    );
    respond(&store, &s, &writer2, 0.3).await?;
    // 0.5 of the agent's cap spent: nothing more for that agent, other agents still run.
    let refused = store
        .reserve_budget(&s, hold(&writer2, "writer", 0.000_001))
        .await?;
    ensure_matches!(refused, Some(BudgetRefusal { ref budget, .. }) if budget.id == agent_cap.id);
    let reader = RunId::new();
    store.create_run(&s, &reader, created("reader")).await?;
    ensure_eq!(
        store
            .reserve_budget(&s, hold(&reader, "reader", 0.5))
            .await?,
        None
    );
    // Workspace: 0.5 spent + 0.5 held = the whole dollar.
    let reader2 = RunId::new();
    store.create_run(&s, &reader2, created("reader")).await?;
    let refused = store
        .reserve_budget(&s, hold(&reader2, "reader", 0.01))
        .await?;
    ensure_matches!(refused, Some(BudgetRefusal { ref budget, .. }) if budget.id == ws_cap.id);
    // A run's end frees its hold.
    store
        .append(
            &s,
            Append {
                run_id: reader.clone(),
                expected_seq: None,
                events: vec![NewEvent::now(EventKind::RunCancelled { reason: None })],
            },
        )
        .await?;
    ensure_eq!(
        store
            .reserve_budget(&s, hold(&reader2, "reader", 0.2))
            .await?,
        None
    );
    // Each end-user has its own 0.25; an end-user's cap does not apply to runs without one.
    let alices = RunId::new();
    store.create_run(&alice, &alices, created("reader")).await?;
    let refused = store
        .reserve_budget(&alice, hold(&alices, "reader", 0.26))
        .await?;
    ensure_matches!(refused, Some(BudgetRefusal { ref budget, .. }) if budget.id == each_end_user.id);
    ensure_eq!(
        store
            .reserve_budget(&alice, hold(&alices, "reader", 0.25))
            .await?,
        None
    );
    // Another workspace has no budgets at all.
    let elsewhere = RunId::new();
    store
        .create_run(&other, &elsewhere, created("writer"))
        .await?;
    ensure_eq!(
        store
            .reserve_budget(&other, hold(&elsewhere, "writer", 100.0))
            .await?,
        None
    );

    ensure!(
        !store.delete_budget(&other, &agent_cap.id).await?,
        "deleted across workspaces"
    );
    ensure!(store.delete_budget(&s, &agent_cap.id).await?, "not deleted");
    ensure_eq!(store.list_budgets(&s).await?.len(), 2);
    Ok(())
}

pub async fn budgets_concurrent_reservations(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    store
        .create_budget(&s, budget(BudgetSubject::Workspace, None, 1.0)?)
        .await?;
    // 50 runs race for a dollar in holds of 0.30: exactly three fit.
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (store, s) = (store.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            let run = RunId::new();
            store.create_run(&s, &run, created("racer")).await?;
            store.reserve_budget(&s, hold(&run, "racer", 0.3)).await
        }));
    }
    let mut held = 0;
    for t in tasks {
        match t.await.map_err(|e| Failure(format!("task failed: {e}")))? {
            Ok(None) => held += 1,
            Ok(Some(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    ensure_eq!(held, 3);
    Ok(())
}

pub async fn usage_report(store: DynStore) -> Outcome {
    let s = Scope::default_workspace();
    let alice = scope_of("org_default", "ws_default", Some("eu_alice"))?;
    let other = scope_of("org_default", "ws_other", None)?;
    for (scope, agent, usd) in [
        (&s, "writer", 0.25),
        (&s, "writer", 0.5),
        (&alice, "reader", 1.0),
        (&other, "writer", 2.0),
    ] {
        let run = RunId::new();
        store.create_run(scope, &run, created(agent)).await?;
        respond(&store, scope, &run, usd).await?;
    }
    let today = paddock_types::time::utc_day(paddock_types::time::now_ms());
    let q = UsageQuery {
        from: today.clone(),
        to: today.clone(),
        by_agent: true,
        by_end_user: true,
        ..UsageQuery::default()
    };
    let row = |agent: &str, end_user: Option<&str>, calls: u64, usd: f64| UsageRow {
        workspace: None,
        agent: Some(agent.to_owned()),
        end_user: end_user.map(str::to_owned),
        model: None,
        day: None,
        input_tokens: 100 * calls,
        output_tokens: 10 * calls,
        model_calls: calls,
        cost_usd: usd,
    };
    ensure_eq!(
        store.usage(&s, &q).await?,
        vec![
            row("reader", Some("eu_alice"), 1, 1.0),
            row("writer", None, 2, 0.75)
        ]
    );
    // An end-user sees only its own usage.
    ensure_eq!(
        store.usage(&alice, &q).await?,
        vec![row("reader", Some("eu_alice"), 1, 1.0)]
    );
    // Ungrouped: one total row; org-wide: by workspace.
    let total = store
        .usage(
            &s,
            &UsageQuery {
                from: today.clone(),
                to: today.clone(),
                ..UsageQuery::default()
            },
        )
        .await?;
    ensure_eq!(total.len(), 1);
    ensure_eq!(total[0].model_calls, 3);
    let org = store
        .usage(
            &s,
            &UsageQuery {
                from: today.clone(),
                to: today.clone(),
                all_workspaces: true,
                ..UsageQuery::default()
            },
        )
        .await?;
    ensure_eq!(org.len(), 2);
    ensure_eq!(
        org[1].workspace.as_ref().map(|w| w.as_str()),
        Some("ws_other")
    );
    ensure_eq!(org[1].cost_usd, 2.0);
    // Days outside the range: nothing.
    let none = store
        .usage(
            &s,
            &UsageQuery {
                from: "2000-01-01".into(),
                to: "2000-01-31".into(),
                ..q
            },
        )
        .await?;
    ensure!(none.is_empty(), "usage outside the range");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Members and sessions

/// A member record with a made-up password hash.
pub fn member_record(
    email: &str,
    role: Role,
    workspace: Option<WorkspaceId>,
) -> crate::MemberRecord {
    crate::MemberRecord {
        id: paddock_types::MemberId::new(),
        email: email.to_owned(),
        password_hash: format!("$argon2id$fake${email}"),
        role,
        workspace,
        created_at: 1_000,
        removed_at: None,
    }
}

pub async fn members_lifecycle(store: DynStore) -> Outcome {
    let a = Scope::default_workspace();
    let b = scope_of("org_default", "ws_b", None)?;
    let other = scope_of("org_other", "ws_other", None)?;
    ensure_eq!(store.count_members().await?, 0);
    // The org must exist, and a narrowing workspace must be the org's.
    ensure_matches!(
        store
            .create_member(&a, member_record("a@x.io", Role::Owner, None))
            .await,
        Err(StoreError::NotFound("org"))
    );
    store.ensure_workspace(&a, "a").await?;
    store.ensure_workspace(&b, "b").await?;
    store.ensure_workspace(&other, "o").await?;
    ensure_matches!(
        store
            .create_member(
                &a,
                member_record("n@x.io", Role::Viewer, Some(other.workspace.clone()))
            )
            .await,
        Err(StoreError::NotFound("workspace"))
    );
    let owner = member_record("Ann@X.io", Role::Owner, None);
    let dev = member_record("dev@x.io", Role::Developer, Some(b.workspace.clone()));
    store.create_member(&a, owner.clone()).await?;
    store.create_member(&b, dev.clone()).await?;
    // Emails are unique per org, whatever their case; another org may reuse one.
    ensure_matches!(
        store
            .create_member(&a, member_record("ann@x.IO", Role::Viewer, None))
            .await,
        Err(StoreError::AlreadyExists("member"))
    );
    let theirs = member_record("ann@x.io", Role::Admin, None);
    store.create_member(&other, theirs.clone()).await?;
    ensure_eq!(store.count_members().await?, 3);

    // Listing is per org (the workspace part of the scope is ignored).
    ensure_eq!(
        store.list_members(&a).await?,
        vec![owner.clone(), dev.clone()]
    );
    ensure_eq!(store.list_members(&b).await?, store.list_members(&a).await?);
    ensure_eq!(store.list_members(&other).await?, vec![theirs.clone()]);
    ensure_eq!(store.get_member(&a, &dev.id).await?, Some(dev.clone()));
    ensure_eq!(store.get_member(&other, &dev.id).await?, None);

    // Login lookup: every org, case-insensitive.
    let found = store.members_by_email(" ANN@x.io").await?;
    ensure_eq!(found.len(), 2);
    ensure!(
        found.contains(&(a.org.clone(), owner.clone()))
            && found.contains(&(other.org.clone(), theirs.clone())),
        "members_by_email: {found:?}"
    );
    ensure!(
        store.members_by_email("nobody@x.io").await?.is_empty(),
        "found a member that does not exist"
    );

    // Removal: not across orgs, once, and the email is free again.
    ensure!(
        !store.remove_member(&other, &owner.id, 5_000).await?,
        "removed across orgs"
    );
    ensure!(
        store.remove_member(&a, &owner.id, 5_000).await?,
        "not removed"
    );
    ensure!(
        !store.remove_member(&a, &owner.id, 6_000).await?,
        "removed twice"
    );
    ensure_eq!(store.list_members(&a).await?, vec![dev.clone()]);
    ensure_eq!(
        store
            .get_member(&a, &owner.id)
            .await?
            .and_then(|m| m.removed_at),
        Some(5_000)
    );
    ensure_eq!(store.members_by_email("ann@x.io").await?.len(), 1);
    store
        .create_member(&a, member_record("ann@x.io", Role::Viewer, None))
        .await?;
    Ok(())
}

fn session_record(
    member: &paddock_types::MemberId,
    hash: &str,
    expires_at: i64,
) -> crate::SessionRecord {
    crate::SessionRecord {
        token_hash: hash.to_owned(),
        member: member.clone(),
        created_at: 1_000,
        expires_at,
        revoked_at: None,
    }
}

pub async fn sessions_lifecycle(store: DynStore) -> Outcome {
    let a = Scope::default_workspace();
    let b = scope_of("org_default", "ws_b", None)?;
    let other = scope_of("org_other", "ws_other", None)?;
    for (s, n) in [(&a, "a"), (&b, "b"), (&other, "o")] {
        store.ensure_workspace(s, n).await?;
    }
    let m = member_record("m@x.io", Role::Operator, None);
    store.create_member(&a, m.clone()).await?;
    // Only in the member's org, in a workspace it has.
    ensure_matches!(
        store
            .create_session(&other, session_record(&m.id, "h-other", 9_000))
            .await,
        Err(StoreError::NotFound("member"))
    );
    ensure_matches!(
        store
            .create_session(
                &scope_of("org_default", "ws_nowhere", None)?,
                session_record(&m.id, "h-nowhere", 9_000)
            )
            .await,
        Err(StoreError::NotFound("workspace"))
    );
    let s1 = session_record(&m.id, "h1", 9_000);
    let s2 = session_record(&m.id, "h2", 9_000);
    store.create_session(&b, s1.clone()).await?;
    store.create_session(&a, s2.clone()).await?;
    ensure!(
        store
            .create_session(&a, session_record(&m.id, "h1", 9_000))
            .await
            .is_err(),
        "duplicate token hash accepted"
    );
    ensure_eq!(
        store.session_by_hash("h1").await?,
        Some((b.clone(), s1.clone(), m.clone()))
    );
    ensure_eq!(store.session_by_hash("nope").await?, None);

    // Revocation: not from another org, once.
    ensure!(
        !store.revoke_session(&other, "h1", 2_000).await?,
        "revoked across orgs"
    );
    ensure!(store.revoke_session(&a, "h1", 2_000).await?, "not revoked");
    ensure!(
        !store.revoke_session(&a, "h1", 3_000).await?,
        "revoked twice"
    );
    ensure_eq!(
        store
            .session_by_hash("h1")
            .await?
            .and_then(|(_, s, _)| s.revoked_at),
        Some(2_000)
    );
    // Removing the member revokes its other sessions in the same transaction, and no new one
    // can be made.
    ensure!(store.remove_member(&a, &m.id, 4_000).await?, "not removed");
    let (_, s, member) = store
        .session_by_hash("h2")
        .await?
        .ok_or_else(|| fail("session of a removed member vanished"))?;
    ensure_eq!(s.revoked_at, Some(4_000));
    ensure_eq!(member.removed_at, Some(4_000));
    ensure_matches!(
        store
            .create_session(&a, session_record(&m.id, "h3", 9_000))
            .await,
        Err(StoreError::NotFound("member"))
    );
    Ok(())
}

pub async fn create_org_is_atomic(store: DynStore) -> Outcome {
    let before = store.count_api_keys().await?;
    let (org, ws) = store
        .create_org(
            "Acme",
            "main",
            key_record("acme owner", Role::Owner, "h-acme"),
        )
        .await?;
    ensure_eq!(org.name.as_deref(), Some("Acme"));
    ensure_eq!(ws.name, "main");
    let scope = Scope {
        org: org.id.clone(),
        workspace: ws.id.clone(),
        end_user: None,
    };
    ensure_eq!(
        store.api_key_by_hash("h-acme").await?.map(|(s, _)| s),
        Some(scope.clone())
    );
    ensure_eq!(store.list_workspaces(&scope).await?, vec![ws.clone()]);
    ensure!(
        store.list_orgs().await?.iter().any(|o| o == &org),
        "the org is not listed"
    );
    // A taken name (any case) creates nothing.
    ensure_matches!(
        store
            .create_org("ACME", "main", key_record("k", Role::Owner, "h-2"))
            .await,
        Err(StoreError::AlreadyExists("org"))
    );
    // A failing key insert (its hash is taken) rolls the org and workspace back.
    let orgs = store.list_orgs().await?.len();
    ensure!(
        store
            .create_org("Other", "main", key_record("k", Role::Owner, "h-acme"))
            .await
            .is_err(),
        "duplicate key hash accepted"
    );
    ensure_eq!(store.list_orgs().await?.len(), orgs);
    ensure_eq!(store.count_api_keys().await?, before + 1);
    // The new org can hold members like any other.
    store
        .create_member(&scope, member_record("o@acme.io", Role::Owner, None))
        .await?;
    Ok(())
}

/// With a per-workspace cap, a claim leases no run of a workspace that already has that many
/// queued or running runs under a live lease (counting what the claim itself takes); other
/// workspaces are still served, the excess stays queued, and an ended run or an expired lease
/// frees its slot. End-users' runs count toward their workspace.
pub async fn claim_caps_running_per_workspace(store: DynStore) -> Outcome {
    const LONG: i64 = 60_000;
    let cap = |n: u32| std::num::NonZeroU32::new(n);
    let a = Scope::default_workspace();
    let b = scope_of("org_default", "ws_b", None)?;
    let mut a_runs = Vec::new();
    let mut b_runs = Vec::new();
    for _ in 0..3 {
        a_runs.push(new_run(&*store, &a, "alpha").await?.id);
        b_runs.push(new_run(&*store, &b, "alpha").await?.id);
    }

    ensure_eq!(
        sorted(&claimed_ids(&store.claim("w1", LONG, 10, cap(2)).await?)),
        sorted(&[&a_runs[..2], &b_runs[..2]].concat())
    );
    ensure!(
        store.claim("w2", LONG, 10, cap(2)).await?.is_empty(),
        "both workspaces are at their cap"
    );
    // A run that started is still one of the running.
    push(&*store, &a, &a_runs[0], vec![started()]).await?;
    ensure!(
        store.claim("w2", LONG, 10, cap(2)).await?.is_empty(),
        "a started run still holds its slot"
    );
    // Without a cap the excess is claimable at once (the cap is the caller's choice).
    ensure_eq!(
        sorted(&claimed_ids(&store.claim("w2", LONG, 10, None).await?)),
        sorted(&[a_runs[2].clone(), b_runs[2].clone()])
    );
    store.release("w2", &a_runs[2]).await?;
    store.release("w2", &b_runs[2]).await?;

    // An ended run frees its slot, in its workspace only.
    push(
        &*store,
        &a,
        &a_runs[0],
        vec![ev(EventKind::RunSucceeded {
            output: json!(null),
        })],
    )
    .await?;
    ensure_eq!(
        claimed_ids(&store.claim("w3", LONG, 10, cap(2)).await?),
        vec![a_runs[2].clone()]
    );
    // So does a released lease; the limit still applies within the cap.
    store.release("w1", &b_runs[0]).await?;
    store.release("w1", &b_runs[1]).await?;
    ensure_eq!(
        claimed_ids(&store.claim("w3", LONG, 1, cap(2)).await?),
        vec![b_runs[0].clone()]
    );

    // An expired lease frees the slot, and its run (the oldest) is what gets claimed again.
    let c = scope_of("org_default", "ws_c", None)?;
    let c1 = new_run(&*store, &c, "alpha").await?.id;
    ensure_eq!(
        claimed_ids(&store.claim("w4", 1, 10, cap(1)).await?),
        vec![c1.clone()]
    );
    let c2 = new_run(&*store, &c, "alpha").await?.id;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let got = claimed_ids(&store.claim("w5", LONG, 10, cap(1)).await?);
    ensure!(
        got.contains(&c1) && !got.contains(&c2),
        "expected the expired run back and the newer one kept queued, got {got:?}"
    );

    // Runs of the workspace's end-users share its slots.
    let d = scope_of("org_default", "ws_d", None)?;
    let d_user = scope_of("org_default", "ws_d", Some("eu_alice"))?;
    let d1 = new_run(&*store, &d_user, "alpha").await?.id;
    let d2 = new_run(&*store, &d, "alpha").await?.id;
    let got = claimed_ids(&store.claim("w6", LONG, 10, cap(1)).await?);
    ensure!(
        got.contains(&d1) && !got.contains(&d2),
        "one slot in ws_d: expected only {d1}, got {got:?}"
    );
    Ok(())
}
