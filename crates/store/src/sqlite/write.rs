//! The writer thread and every operation that changes the database.
//!
//! Each operation runs inside the batch transaction and must not commit. Most run in their own
//! savepoint; the few that run at every step of every run and refuse before their first write
//! do without ([`Isolation`]).
//! Nothing here may be observed before the batch commits: answers and notifications wait for
//! [`run`] to finish the batch.
//!
//! The writer keeps the projections of the runs it appends to ([`RunCache`]), so an append does
//! not read and decode the run row it wrote a moment before. The cache only ever holds what the
//! database holds once the operation commits: what a failed operation or batch touched is
//! forgotten, and the run-row update checks the sequence number it expects.

use super::{from_json, scope_params, to_json};
use crate::{
    AgentRecord, Claimed, Committed, DataKeyRecord, IDEMPOTENCY_IN_FLIGHT_MS, IDEMPOTENCY_TTL_MS,
    IdempotencyClaim, IdempotentResponse, KeyRecord, Result, Rewrap, StoreError,
};
use paddock_types::KeyId;
use paddock_types::api::{AgentDefinition, ApprovalStatus, Run};
use paddock_types::event::ApprovalDecision;
use paddock_types::ids::EndUserId;
use paddock_types::time::Millis;
use paddock_types::time::now_ms;
use paddock_types::{
    ApprovalId, Event, EventKind, NewEvent, OrgId, RunId, RunStatus, Scope, ToolCall, WorkspaceId,
};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, oneshot};

/// What an operation works with: the writer's connection, inside the batch transaction, and the
/// writer's cache of run projections.
pub(super) struct Ctx<'a> {
    pub(super) conn: &'a Connection,
    runs: &'a mut RunCache,
}

/// Most run projections the writer keeps; beyond this it starts over (rare: runs leave the cache
/// when they end or park).
const MAX_CACHED_RUNS: usize = 4096;

/// The projections of the runs being appended to, as committed (or as written by the current
/// operation, which [`RunCache::forget_touched`] takes back if it fails).
#[derive(Default)]
pub(super) struct RunCache {
    runs: HashMap<RunId, CachedRun>,
    /// Runs the operation in progress put in the cache.
    touched: Vec<RunId>,
    /// Runs that ended in this batch, for [`Finished`] once it commits.
    finished: Vec<CachedRun>,
    /// How many of `finished` the operations before the current one left.
    finished_kept: usize,
    /// The usage the batch's model answers add to the ledger, kept and forgotten with the runs.
    pub(super) usage: super::usage::PendingUsage,
}

struct CachedRun {
    org: String,
    workspace: String,
    end_user: Option<String>,
    /// Shared with the answer to the last append, so that the copy its caller needs is made on
    /// the caller's thread (see [`super::owned`]), not on the writer's.
    run: Arc<Run>,
}

impl CachedRun {
    fn new(scope: &Scope, end_user: Option<&str>, run: &Arc<Run>) -> Self {
        Self {
            org: scope.org.as_str().to_owned(),
            workspace: scope.workspace.as_str().to_owned(),
            end_user: end_user.map(str::to_owned),
            run: Arc::clone(run),
        }
    }

    /// Whether the run belongs to `scope`, as the database's scope filter decides it.
    fn visible(&self, scope: &Scope) -> bool {
        self.org == scope.org.as_str()
            && self.workspace == scope.workspace.as_str()
            && scope
                .end_user
                .as_ref()
                .is_none_or(|e| self.end_user.as_deref() == Some(e.as_str()))
    }
}

impl RunCache {
    /// Takes a run's projection out of the cache, if cached: `Some(None)` if it is not in `scope`
    /// (the same answer as the database's, as a run never changes scope). The append puts it
    /// back; one that fails before that reads the row again next time.
    fn take(&mut self, scope: &Scope, id: &RunId) -> Option<Option<(Arc<Run>, Option<String>)>> {
        if !self.runs.get(id)?.visible(scope) {
            return Some(None);
        }
        let c = self.runs.remove(id)?;
        Some(Some((c.run, c.end_user)))
    }

    /// Records a run's projection as the current operation leaves it. Finished and parked runs
    /// are dropped instead: they will not be appended to soon, if ever.
    fn put(&mut self, scope: &Scope, end_user: Option<&str>, run: &Arc<Run>) {
        self.touched.push(run.id.clone());
        if run.status.is_terminal() || run.status == RunStatus::Waiting {
            self.runs.remove(&run.id);
            if run.status.is_terminal() {
                self.finished.push(CachedRun::new(scope, end_user, run));
            }
            return;
        }
        if self.runs.len() >= MAX_CACHED_RUNS && !self.runs.contains_key(&run.id) {
            self.runs.clear();
        }
        self.runs
            .insert(run.id.clone(), CachedRun::new(scope, end_user, run));
    }

    /// The current operation succeeded (within the batch): keep what it cached.
    fn keep_touched(&mut self) {
        self.touched.clear();
        self.finished_kept = self.finished.len();
        self.usage.keep_op();
    }

    /// The current operation was rolled back: drop what it cached.
    fn forget_touched(&mut self) {
        for id in self.touched.drain(..) {
            self.runs.remove(&id);
        }
        self.finished.truncate(self.finished_kept);
        self.usage.forget_op();
    }

    /// The batch committed: what ended in it is final.
    fn publish_finished(&mut self, to: &Finished) {
        to.publish(self.finished.drain(..));
        self.finished_kept = 0;
    }

    /// The batch failed: none of it happened.
    fn forget_batch(&mut self) {
        self.touched.clear();
        self.runs.clear();
        self.finished.clear();
        self.finished_kept = 0;
        self.usage.forget_batch();
    }
}

/// Most finished runs [`Finished`] keeps; the oldest go first.
const MAX_FINISHED_RUNS: usize = 4096;

/// The projections of recently finished runs, shared with readers. Nothing can be appended to a
/// finished run, so its projection never changes again and answering from here is never stale;
/// it spares the reads that follow a run's end (whoever waited for it, the worker that ran it) a
/// trip to the database.
#[derive(Default)]
pub(super) struct Finished {
    inner: Mutex<FinishedRuns>,
}

#[derive(Default)]
struct FinishedRuns {
    runs: HashMap<RunId, CachedRun>,
    /// Oldest first.
    order: VecDeque<RunId>,
}

impl Finished {
    /// A finished run's projection, if kept: `Some(None)` if it is not in `scope`.
    pub(super) fn get(&self, scope: &Scope, id: &RunId) -> Option<Option<Run>> {
        let run = {
            let inner = self.lock();
            let c = inner.runs.get(id)?;
            if !c.visible(scope) {
                return Some(None);
            }
            Arc::clone(&c.run)
        };
        // Copied outside the lock, on the reader's thread.
        Some(Some(Run::clone(&run)))
    }

    fn publish(&self, runs: impl Iterator<Item = CachedRun>) {
        let mut inner = self.lock();
        for c in runs {
            let id = c.run.id.clone();
            if inner.runs.insert(id.clone(), c).is_none() {
                inner.order.push_back(id);
            }
        }
        while inner.order.len() > MAX_FINISHED_RUNS {
            if let Some(oldest) = inner.order.pop_front() {
                inner.runs.remove(&oldest);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FinishedRuns> {
        // The maps stay valid even if a holder panicked.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How an operation is kept apart from the others of its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isolation {
    /// In its own savepoint: a failure anywhere in it takes back just its own writes.
    Savepoint,
    /// No savepoint, for the operations that run at every step (creating runs and appending to
    /// them): they check everything before their first write, so a refusal (a conflict, a
    /// finished run) leaves nothing to take back, and they skip the savepoint's cost of copying
    /// every page they touch. One that fails after writing (an invariant broken, the disk
    /// failing) takes the whole batch down: every operation in it fails and nothing is
    /// committed.
    ChecksFirst,
}

/// One queued write operation and the caller waiting for it.
pub(super) trait Job: Send {
    /// Whether the operation needs its own savepoint.
    fn isolation(&self) -> Isolation;
    /// Runs the operation on the open transaction; false if it failed (its savepoint is then
    /// rolled back and the other operations of the batch go on).
    fn run(&mut self, ctx: &mut Ctx<'_>) -> bool;
    /// Replaces the outcome with a failure, unless it failed already: the batch could not be
    /// committed.
    fn fail(&mut self, msg: &str);
    /// What to announce once the batch is durable.
    fn committed(&self) -> Option<Committed>;
    /// Answers the caller (who may have gone away; that is fine).
    fn reply(self: Box<Self>);
}

struct Pending<T, F> {
    isolation: Isolation,
    work: Option<F>,
    outcome: Option<Result<T>>,
    note: Option<Committed>,
    reply: Option<oneshot::Sender<Reply<T>>>,
}

/// An operation's outcome, sent back with the job that carried it: the caller's thread, which
/// allocated the job, frees it too. Freed by the writer, another thread's allocations made it
/// queue on that thread's allocator lock, and every write waits for the writer.
pub(super) struct Reply<T> {
    outcome: Result<T>,
    _job: Box<dyn std::any::Any + Send>,
}

impl<T> Reply<T> {
    pub(super) fn into_outcome(self) -> Result<T> {
        self.outcome
    }
}

/// Wraps an operation and its reply channel as a [`Job`] for the writer.
pub(super) fn pending<T, F>(
    isolation: Isolation,
    work: F,
    reply: oneshot::Sender<Reply<T>>,
) -> Box<dyn Job>
where
    T: Send + 'static,
    F: FnOnce(&mut Ctx<'_>) -> Result<(T, Option<Committed>)> + Send + 'static,
{
    Box::new(Pending {
        isolation,
        work: Some(work),
        outcome: None,
        note: None,
        reply: Some(reply),
    })
}

impl<T, F> Job for Pending<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut Ctx<'_>) -> Result<(T, Option<Committed>)> + Send + 'static,
{
    fn isolation(&self) -> Isolation {
        self.isolation
    }

    fn run(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        match work(ctx) {
            Ok((value, note)) => {
                self.outcome = Some(Ok(value));
                self.note = note;
                true
            }
            Err(e) => {
                self.outcome = Some(Err(e));
                false
            }
        }
    }

    fn fail(&mut self, msg: &str) {
        // An operation that failed keeps its own reason: none of it happened either way.
        if !matches!(self.outcome, Some(Err(_))) {
            self.outcome = Some(Err(StoreError::Backend(msg.to_owned())));
        }
        self.note = None;
    }

    fn committed(&self) -> Option<Committed> {
        self.note.clone()
    }

    fn reply(mut self: Box<Self>) {
        let outcome = self.outcome.take().unwrap_or_else(|| {
            Err(StoreError::Backend(
                "the store operation failed unexpectedly".to_owned(),
            ))
        });
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Reply {
                outcome,
                _job: self,
            });
        }
    }
}

/// The writer loop: blocks for one job, takes whatever else is already queued, commits it all
/// at once. Returns when every sender is gone (the store was dropped).
pub(super) fn run(
    conn: &mut Connection,
    queue: &mpsc::Receiver<Box<dyn Job>>,
    notify: &broadcast::Sender<Committed>,
    commits: &AtomicU64,
    finished: &Finished,
) {
    let mut runs = RunCache::default();
    // Kept from batch to batch rather than grown each time.
    let mut batch = Vec::with_capacity(64);
    while let Ok(first) = queue.recv() {
        batch.push(first);
        while batch.len() < super::MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(conn, &mut runs, &mut batch, notify, commits, finished);
        for job in batch.drain(..) {
            job.reply();
        }
    }
}

/// Runs one of the writer's transaction-control statements, prepared once rather than parsed
/// for every operation.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn commit_batch(
    conn: &mut Connection,
    runs: &mut RunCache,
    batch: &mut [Box<dyn Job>],
    notify: &broadcast::Sender<Committed>,
    commits: &AtomicU64,
    finished: &Finished,
) {
    let conn = &*conn;
    let outcome = (|| -> Result<()> {
        control(conn, "BEGIN IMMEDIATE")?;
        for job in batch.iter_mut() {
            let savepoint = job.isolation() == Isolation::Savepoint;
            if savepoint {
                // Whatever it reads of the usage ledger must include the batch so far.
                runs.usage.flush(conn)?;
                control(conn, "SAVEPOINT op")?;
            }
            let changes = conn.total_changes();
            let mut ctx = Ctx {
                conn,
                runs: &mut *runs,
            };
            // A panicking operation must not take the writer (and so the whole store) down.
            let ok =
                std::panic::catch_unwind(AssertUnwindSafe(|| job.run(&mut ctx))).unwrap_or(false);
            if ok {
                runs.keep_touched();
            } else {
                runs.forget_touched();
                if savepoint {
                    // If even this fails the transaction's state is unknown, so the whole batch
                    // fails.
                    control(conn, "ROLLBACK TO op")?;
                } else if conn.total_changes() != changes {
                    // It wrote before failing, and only the whole batch can take that back. (A
                    // statement that fails undoes its own changes and does not count.)
                    return Err(StoreError::Backend(
                        "an operation failed part way, so its batch was rolled back".to_owned(),
                    ));
                }
            }
            if savepoint {
                control(conn, "RELEASE op")?;
            }
            if conn.is_autocommit() {
                // SQLite rolled the whole transaction back itself (an I/O error, the disk or
                // memory full): going on would run the next operations outside any transaction.
                return Err(StoreError::Backend(
                    "the database rolled the batch back after an operation failed".to_owned(),
                ));
            }
        }
        runs.usage.flush(conn)?;
        control(conn, "COMMIT")?;
        Ok(())
    })();
    match outcome {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(ops = batch.len(), "store batch committed");
            // Before anyone hears of the ends, so that their next read finds them.
            runs.publish_finished(finished);
            for note in batch.iter().filter_map(|job| job.committed()) {
                // No subscribers is not an error.
                let _ = notify.send(note);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, ops = batch.len(), "store batch failed to commit");
            // Nothing of the batch happened, so the cache may be ahead of the database.
            runs.forget_batch();
            if !conn.is_autocommit()
                && let Err(e) = conn.execute_batch("ROLLBACK")
            {
                tracing::error!(error = %e, "store batch failed to roll back");
            }
            let msg = format!("commit failed: {e}");
            for job in batch.iter_mut() {
                job.fail(&msg);
            }
        }
    }
}

pub(super) fn put_agent(
    conn: &Connection,
    scope: &Scope,
    def: AgentDefinition,
) -> Result<AgentRecord> {
    let (org, ws, _) = scope_params(scope);
    let name = def.manifest.name.as_str();
    let version = def.manifest.version.to_string();
    let existing = conn
        .prepare_cached(
            "SELECT definition, created_at FROM agents
             WHERE org = ?1 AND workspace = ?2 AND name = ?3 AND version = ?4",
        )?
        .query_row(params![org, ws, name, version], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()?;
    if let Some((stored, created_at)) = existing {
        // Compare values, not text: the same definition must match however it was encoded.
        let stored: AgentDefinition = from_json(&stored)?;
        return if stored == def {
            Ok(AgentRecord {
                definition: stored,
                created_at,
            })
        } else {
            Err(StoreError::AgentVersionExists {
                name: name.to_owned(),
                version,
            })
        };
    }
    let created_at = now_ms();
    conn.prepare_cached(
        "INSERT INTO agents (org, workspace, name, version, definition, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![org, ws, name, version, to_json(&def)?, created_at])?;
    Ok(AgentRecord {
        definition: def,
        created_at,
    })
}

pub(super) fn create_run(
    ctx: &mut Ctx<'_>,
    scope: &Scope,
    id: &RunId,
    first: NewEvent,
) -> Result<(Arc<Run>, Event, Option<Committed>)> {
    let conn = ctx.conn;
    let first = Event {
        seq: 1,
        at: first.at,
        kind: first.kind,
    };
    let run = Run::from_created(id.clone(), &first).ok_or_else(|| {
        StoreError::Backend(format!(
            "the first event of a run must be run_created, not {}",
            first.kind.type_name()
        ))
    })?;
    let (org, ws, end_user) = scope_params(scope);
    let taken = conn
        .prepare_cached("SELECT 1 FROM runs WHERE id = ?1")?
        .exists(params![id.as_str()])?;
    if taken {
        return Err(StoreError::Backend(format!("run {id} already exists")));
    }
    conn.prepare_cached(
        "INSERT INTO runs (id, org, workspace, end_user, agent, status, created_at, last_seq, run)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        id.as_str(),
        org,
        ws,
        end_user,
        run.agent,
        run.status.as_str(),
        run.created_at,
        run.last_seq as i64,
        to_json(&run)?,
    ])?;
    insert_event(conn, id, &first)?;
    let note = committed(&run);
    // A worker appends to it as soon as it is claimed.
    let run = Arc::new(run);
    ctx.runs.put(scope, end_user, &run);
    Ok((run, first, Some(note)))
}

/// A new event and its kind as stored (JSON), encoded before it reaches the writer so that the
/// one thread that writes does not spend its time encoding. The writer numbers it and gives it
/// back with its answer: freed by the thread that allocated it, it never makes the writer wait
/// on another thread's allocator lock.
pub(super) struct Encoded {
    event: Event,
    json: String,
}

impl Encoded {
    pub(super) fn new(event: NewEvent) -> Result<Self> {
        let json = to_json(&event.kind)?;
        let event = Event {
            seq: 0,
            at: event.at,
            kind: event.kind,
        };
        Ok(Self { event, json })
    }
}

pub(super) fn append(
    ctx: &mut Ctx<'_>,
    scope: &Scope,
    run_id: &RunId,
    expected_seq: Option<u64>,
    events: &mut [Encoded],
) -> Result<(Arc<Run>, Option<Committed>)> {
    let (run, end_user) = load_run(ctx, scope, run_id)?.ok_or(StoreError::NotFound("run"))?;
    append_events(ctx, scope, run, end_user.as_deref(), expected_seq, events)
}

pub(super) fn decide_approval(
    ctx: &mut Ctx<'_>,
    scope: &Scope,
    run_id: &RunId,
    approval_id: &ApprovalId,
    decision: ApprovalDecision,
    comment: Option<String>,
) -> Result<(Arc<Run>, Option<Committed>)> {
    let (org, ws, end_user) = scope_params(scope);
    let approval = ctx
        .conn
        .prepare_cached(
            "SELECT status, call FROM approvals
             WHERE id = ?1 AND run_id = ?2 AND org = ?3 AND workspace = ?4
               AND (?5 IS NULL OR end_user = ?5)",
        )?
        .query_row(
            params![approval_id.as_str(), run_id.as_str(), org, ws, end_user],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )
        .optional()?;
    let Some((status, call)) = approval else {
        return Err(StoreError::NotFound("approval"));
    };
    if status != ApprovalStatus::Pending.as_str() {
        return Err(StoreError::AlreadyDecided);
    }
    let call: ToolCall = from_json(&call)?;
    let (run, run_end_user) = load_run(ctx, scope, run_id)?.ok_or(StoreError::NotFound("run"))?;
    // The approval row itself is updated by the projection of the event.
    let event = NewEvent::now(EventKind::ApprovalDecided {
        approval_id: approval_id.clone(),
        call_id: call.id,
        decision,
        comment,
    });
    let mut events = [Encoded::new(event)?];
    append_events(ctx, scope, run, run_end_user.as_deref(), None, &mut events)
}

/// Leases the oldest runs a worker may take: queued or running, with no live lease. Waiting and
/// finished runs are never handed out.
pub(super) fn claim(
    conn: &Connection,
    worker: &str,
    lease_ms: i64,
    limit: u32,
    max_running_per_workspace: Option<NonZeroU32>,
) -> Result<Vec<Claimed>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let now = now_ms();
    let row = |r: &rusqlite::Row<'_>| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, u64>(4)?,
        ))
    };
    let rows = match max_running_per_workspace {
        None => conn
            .prepare_cached(
                "SELECT id, org, workspace, end_user, last_seq FROM runs
                 WHERE status IN ('queued', 'running')
                   AND (lease_until IS NULL OR lease_until < ?1)
                 ORDER BY id LIMIT ?2",
            )?
            .query_map(params![now, i64::from(limit)], row)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        // A workspace's claimable runs are numbered oldest first; the n-th may go only while
        // the runs it already has under a live lease plus n stay within the cap. Inside the
        // writer's transaction, so two claims cannot both take the last slot.
        Some(cap) => conn
            .prepare_cached(
                "WITH busy AS (
                     SELECT org, workspace, COUNT(*) AS n FROM runs
                     WHERE status IN ('queued', 'running') AND lease_until >= ?1
                     GROUP BY org, workspace
                 ),
                 ready AS (
                     SELECT id, org, workspace, end_user, last_seq,
                            ROW_NUMBER() OVER (PARTITION BY org, workspace ORDER BY id) AS nth
                     FROM runs
                     WHERE status IN ('queued', 'running')
                       AND (lease_until IS NULL OR lease_until < ?1)
                 )
                 SELECT r.id, r.org, r.workspace, r.end_user, r.last_seq FROM ready r
                 LEFT JOIN busy b ON b.org = r.org AND b.workspace = r.workspace
                 WHERE COALESCE(b.n, 0) + r.nth <= ?3
                 ORDER BY r.id LIMIT ?2",
            )?
            .query_map(params![now, i64::from(limit), i64::from(cap.get())], row)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
    };
    let mut lease =
        conn.prepare_cached("UPDATE runs SET lease_owner = ?2, lease_until = ?3 WHERE id = ?1")?;
    let until = now.saturating_add(lease_ms);
    let mut claimed = Vec::with_capacity(rows.len());
    for (id, org, ws, end_user, last_seq) in rows {
        lease.execute(params![id, worker, until])?;
        claimed.push(Claimed {
            scope: Scope {
                org: OrgId::parse(&org).map_err(corrupt)?,
                workspace: WorkspaceId::parse(&ws).map_err(corrupt)?,
                end_user: end_user
                    .as_deref()
                    .map(EndUserId::parse)
                    .transpose()
                    .map_err(corrupt)?,
            },
            run_id: RunId::parse(&id).map_err(corrupt)?,
            last_seq,
        });
    }
    Ok(claimed)
}

/// Extends the leases `worker` still holds; returns the runs it lost (taken over, finished, or
/// released).
pub(super) fn renew(
    conn: &Connection,
    worker: &str,
    runs: &[RunId],
    lease_ms: i64,
) -> Result<Vec<RunId>> {
    let until = now_ms().saturating_add(lease_ms);
    let mut extend = conn.prepare_cached(
        "UPDATE runs SET lease_until = ?3
         WHERE id = ?1 AND lease_owner = ?2
           AND status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out')",
    )?;
    let mut lost = Vec::new();
    for id in runs {
        if extend.execute(params![id.as_str(), worker, until])? == 0 {
            lost.push(id.clone());
        }
    }
    Ok(lost)
}

pub(super) fn release(conn: &Connection, worker: &str, run_id: &RunId) -> Result<()> {
    conn.prepare_cached(
        "UPDATE runs SET lease_owner = NULL, lease_until = NULL
         WHERE id = ?1 AND lease_owner = ?2",
    )?
    .execute(params![run_id.as_str(), worker])?;
    Ok(())
}

/// Inserts a data key unless the workspace already has one with this id; true if inserted.
pub(super) fn put_data_key(conn: &Connection, scope: &Scope, key: &DataKeyRecord) -> Result<bool> {
    let (org, ws, _) = scope_params(scope);
    let inserted = conn
        .prepare_cached(
            "INSERT INTO data_keys (org, workspace, key_id, master_key_id, wrapped, nonce, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (org, workspace, key_id) DO NOTHING",
        )?
        .execute(params![
            org,
            ws,
            i64::from(key.key_id),
            key.master_key_id,
            key.wrapped,
            key.nonce,
            key.created_at,
        ])?;
    Ok(inserted == 1)
}

/// All or nothing: the first row that is missing or wrapped by another master key fails the
/// operation, and its savepoint takes the rows already updated back with it.
pub(super) fn rewrap_data_keys(conn: &Connection, rewraps: &[Rewrap]) -> Result<()> {
    let mut update = conn.prepare_cached(
        "UPDATE data_keys SET master_key_id = ?5, wrapped = ?6, nonce = ?7
         WHERE org = ?1 AND workspace = ?2 AND key_id = ?3 AND master_key_id = ?4",
    )?;
    for r in rewraps {
        let (org, ws, _) = scope_params(&r.scope);
        let changed = update.execute(params![
            org,
            ws,
            i64::from(r.key_id),
            r.from_master_key_id,
            r.master_key_id,
            r.wrapped,
            r.nonce,
        ])?;
        if changed != 1 {
            return Err(StoreError::NotFound("data key"));
        }
    }
    Ok(())
}

pub(super) fn ensure_workspace(conn: &Connection, scope: &Scope, name: &str) -> Result<()> {
    let now = now_ms();
    conn.prepare_cached("INSERT OR IGNORE INTO orgs (id, created_at) VALUES (?1, ?2)")?
        .execute(params![scope.org.as_str(), now])?;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO workspaces (org, id, name, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        scope.org.as_str(),
        scope.workspace.as_str(),
        name,
        now
    ])?;
    Ok(())
}

pub(super) fn create_workspace(
    conn: &Connection,
    org: &OrgId,
    name: &str,
) -> Result<paddock_types::api::WorkspaceInfo> {
    let org_exists = conn
        .prepare_cached("SELECT 1 FROM orgs WHERE id = ?1")?
        .exists(params![org.as_str()])?;
    if !org_exists {
        return Err(StoreError::NotFound("org"));
    }
    let taken = conn
        .prepare_cached("SELECT 1 FROM workspaces WHERE org = ?1 AND name = ?2")?
        .exists(params![org.as_str(), name])?;
    if taken {
        return Err(StoreError::AlreadyExists("workspace"));
    }
    let info = paddock_types::api::WorkspaceInfo {
        id: WorkspaceId::new(),
        name: name.to_owned(),
        created_at: now_ms(),
    };
    conn.prepare_cached(
        "INSERT INTO workspaces (org, id, name, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        org.as_str(),
        info.id.as_str(),
        name,
        info.created_at
    ])?;
    Ok(info)
}

pub(super) fn create_api_key(conn: &Connection, scope: &Scope, key: &KeyRecord) -> Result<()> {
    let ws_exists = conn
        .prepare_cached("SELECT 1 FROM workspaces WHERE org = ?1 AND id = ?2")?
        .exists(params![scope.org.as_str(), scope.workspace.as_str()])?;
    if !ws_exists {
        return Err(StoreError::NotFound("workspace"));
    }
    conn.prepare_cached(
        "INSERT INTO api_keys (id, org, workspace, name, role, prefix, secret_hash, created_at,
                               expires_at, revoked_at, last_used_at, scopes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        key.id.as_str(),
        scope.org.as_str(),
        scope.workspace.as_str(),
        key.name,
        key.role.as_str(),
        key.prefix,
        key.secret_hash,
        key.created_at,
        key.expires_at,
        key.revoked_at,
        key.last_used_at,
        key.scopes.as_ref().map(to_json).transpose()?,
    ])?;
    Ok(())
}

pub(super) fn touch_api_key(conn: &Connection, id: &KeyId, at: Millis) -> Result<()> {
    conn.prepare_cached(
        "UPDATE api_keys SET last_used_at = ?2
         WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
    )?
    .execute(params![id.as_str(), at])?;
    Ok(())
}

pub(super) fn revoke_api_key(
    conn: &Connection,
    scope: &Scope,
    id: &KeyId,
    at: Millis,
) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE api_keys SET revoked_at = ?4
             WHERE org = ?1 AND workspace = ?2 AND id = ?3 AND revoked_at IS NULL",
        )?
        .execute(params![
            scope.org.as_str(),
            scope.workspace.as_str(),
            id.as_str(),
            at
        ])?;
    Ok(n > 0)
}

pub(super) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("corrupt stored id: {e}"))
}

fn committed(run: &Run) -> Committed {
    Committed {
        run_id: run.id.clone(),
        last_seq: run.last_seq,
        status: run.status,
    }
}

/// The run's projection and end-user, if the run exists in `scope`: from the writer's cache, or
/// one primary-key lookup, whatever the journal's length.
fn load_run(
    ctx: &mut Ctx<'_>,
    scope: &Scope,
    id: &RunId,
) -> Result<Option<(Arc<Run>, Option<String>)>> {
    if let Some(cached) = ctx.runs.take(scope, id) {
        return Ok(cached);
    }
    let (org, ws, end_user) = scope_params(scope);
    let row = ctx
        .conn
        .prepare_cached(
            "SELECT run, end_user FROM runs
             WHERE id = ?1 AND org = ?2 AND workspace = ?3 AND (?4 IS NULL OR end_user = ?4)",
        )?
        .query_row(params![id.as_str(), org, ws, end_user], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })
        .optional()?;
    row.map(|(run, end_user)| Ok((Arc::new(from_json::<Run>(&run)?), end_user)))
        .transpose()
}

fn insert_event(conn: &Connection, run_id: &RunId, ev: &Event) -> Result<()> {
    let json = to_json(&ev.kind)?;
    insert_journal(conn, run_id, &[(ev.seq, ev.at, &json)])
}

/// Appends one journal row: a run's consecutive events, given as (seq, at, encoded kind). One
/// row and one index entry per append, however many events it holds (see migration 0010).
fn insert_journal(conn: &Connection, run_id: &RunId, events: &[(u64, i64, &str)]) -> Result<()> {
    use std::fmt::Write as _;
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(());
    };
    let mut text = String::with_capacity(events.iter().map(|e| e.2.len() + 32).sum::<usize>() + 2);
    text.push('[');
    for (i, (_, at, kind)) in events.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        // Writing into a String cannot fail.
        let _ = write!(text, "{{\"at\":{at},\"kind\":{kind}}}");
    }
    text.push(']');
    conn.prepare_cached(
        "INSERT INTO journal (run_id, first_seq, last_seq, events) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        run_id.as_str(),
        first.0 as i64,
        last.0 as i64,
        text
    ])?;
    Ok(())
}

/// Appends `events` after the run's last seq and keeps the run row and the approvals in step.
/// Costs one journal row plus one run-row update, whatever the journal's length.
fn append_events(
    ctx: &mut Ctx<'_>,
    scope: &Scope,
    mut shared: Arc<Run>,
    end_user: Option<&str>,
    expected_seq: Option<u64>,
    events: &mut [Encoded],
) -> Result<(Arc<Run>, Option<Committed>)> {
    let conn = ctx.conn;
    if shared.status.is_terminal() {
        return Err(StoreError::Terminal(shared.status));
    }
    if let Some(expected) = expected_seq
        && expected != shared.last_seq
    {
        return Err(StoreError::Conflict {
            expected,
            actual: shared.last_seq,
        });
    }
    if events.is_empty() {
        return Ok((shared, None));
    }
    // A batch may end a run but not go on after the end. Checked before the first write, as
    // `Isolation::ChecksFirst` requires.
    let last = events.len() - 1;
    if let Some(end) = events[..last]
        .iter()
        .find_map(|e| e.event.kind.final_status())
    {
        return Err(StoreError::Terminal(end));
    }
    // No copy: the caller of the last append has made its own by now.
    let run = Arc::make_mut(&mut shared);
    let (from_seq, from_status) = (run.last_seq, run.status);
    let mut rows = Vec::with_capacity(events.len());
    for Encoded { event: ev, json } in events.iter_mut() {
        ev.seq = run.last_seq + 1;
        let ev = &*ev;
        run.apply(ev);
        rows.push((ev.seq, ev.at, json.as_str()));
        project_approval(conn, scope, run, end_user, ev)?;
        super::usage::on_event(conn, &mut ctx.runs.usage, scope, run, end_user, ev)?;
        super::trail::on_event(conn, scope, run, end_user, ev)?;
    }
    insert_journal(conn, &run.id, &rows)?;
    let terminal = run.status.is_terminal();
    if terminal {
        // Nobody can act on an approval of a finished run any more.
        conn.prepare_cached(
            "UPDATE approvals SET status = 'expired' WHERE run_id = ?1 AND status = 'pending'",
        )?
        .execute(params![run.id.as_str()])?;
    }
    // The row must still be at the seq the events were numbered from; this can only fail if the
    // cached projection were stale, and then it fails the operation instead of leaving a gap.
    let updated = if run.status == from_status {
        // Same status: leave the status indexes alone (setting the column, even to its value,
        // rewrites their entries and so their pages).
        conn.prepare_cached(
            "UPDATE runs SET last_seq = ?3, run = ?4 WHERE id = ?1 AND last_seq = ?2",
        )?
        .execute(params![
            run.id.as_str(),
            from_seq as i64,
            run.last_seq as i64,
            to_json(&run)?,
        ])?
    } else {
        // A finished run needs no worker: drop its lease so it never shows up as held.
        conn.prepare_cached(
            "UPDATE runs SET status = ?3, last_seq = ?4, run = ?5,
               lease_owner = CASE WHEN ?6 THEN NULL ELSE lease_owner END,
               lease_until = CASE WHEN ?6 THEN NULL ELSE lease_until END
             WHERE id = ?1 AND last_seq = ?2",
        )?
        .execute(params![
            run.id.as_str(),
            from_seq as i64,
            run.status.as_str(),
            run.last_seq as i64,
            to_json(&run)?,
            terminal,
        ])?
    };
    if updated != 1 {
        return Err(StoreError::Backend(format!(
            "run {} is no longer at seq {from_seq}",
            run.id
        )));
    }
    let note = committed(run);
    ctx.runs.put(scope, end_user, &shared);
    Ok((shared, Some(note)))
}

fn project_approval(
    conn: &Connection,
    scope: &Scope,
    run: &Run,
    end_user: Option<&str>,
    ev: &Event,
) -> Result<()> {
    match &ev.kind {
        EventKind::ApprovalRequested { approval_id, call } => {
            conn.prepare_cached(
                "INSERT INTO approvals
                   (id, run_id, org, workspace, end_user, agent, call, status, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8)",
            )?
            .execute(params![
                approval_id.as_str(),
                run.id.as_str(),
                scope.org.as_str(),
                scope.workspace.as_str(),
                end_user,
                run.agent,
                to_json(call)?,
                ev.at,
            ])?;
        }
        EventKind::ApprovalDecided {
            approval_id,
            decision,
            comment,
            ..
        } => {
            let status = match decision {
                ApprovalDecision::Approve => ApprovalStatus::Approved,
                ApprovalDecision::Deny => ApprovalStatus::Denied,
            };
            conn.prepare_cached(
                "UPDATE approvals SET status = ?3, comment = ?4, decided_at = ?5
                 WHERE id = ?1 AND run_id = ?2",
            )?
            .execute(params![
                approval_id.as_str(),
                run.id.as_str(),
                status.as_str(),
                comment,
                ev.at,
            ])?;
        }
        _ => {}
    }
    Ok(())
}

/// Appends to the workspace's audit chain. The writer is the only connection that writes, and
/// this runs inside its transaction, so reading the last entry and inserting the next cannot
/// interleave with another append.
pub(super) fn append_audit(
    conn: &Connection,
    scope: &Scope,
    e: crate::NewAuditEntry,
) -> Result<paddock_types::api::AuditEntry> {
    let (org, ws) = (scope.org.as_str(), scope.workspace.as_str());
    let last: Option<(i64, String)> = conn
        .prepare_cached(
            "SELECT seq, hash FROM audit WHERE org = ?1 AND workspace = ?2 \
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![org, ws], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (seq, prev_hash) = match last {
        Some((seq, hash)) => (seq as u64 + 1, hash),
        None => (1, crate::audit::GENESIS.to_owned()),
    };
    let detail = to_json(&e.detail)?;
    // The actor's id column holds a key id, or a member id for a session's request.
    let key_id = e
        .actor
        .key_id
        .as_ref()
        .map(|k| k.to_string())
        .or_else(|| e.actor.member_id.as_ref().map(|m| m.to_string()));
    let end_user = e.actor.end_user.as_ref().map(|k| k.to_string());
    let canonical = crate::audit::Canonical {
        v: 1,
        org,
        workspace: ws,
        seq,
        at: e.at,
        actor_kind: &e.actor.kind,
        actor_key_id: key_id.as_deref(),
        actor_role: e.actor.role.map(|r| r.as_str()),
        actor_end_user: end_user.as_deref(),
        action: &e.action,
        resource: &e.resource,
        outcome: &e.outcome,
        ip: e.ip.as_deref(),
        user_agent: e.user_agent.as_deref(),
        detail: &detail,
        prev_hash: &prev_hash,
    };
    let hash = canonical.hash();
    conn.prepare_cached(
        "INSERT INTO audit (org, workspace, seq, at, actor_kind, actor_key_id, actor_role, \
         actor_end_user, action, resource, outcome, ip, user_agent, detail, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        org,
        ws,
        seq as i64,
        e.at,
        canonical.actor_kind,
        canonical.actor_key_id,
        canonical.actor_role,
        canonical.actor_end_user,
        canonical.action,
        canonical.resource,
        canonical.outcome,
        canonical.ip,
        canonical.user_agent,
        canonical.detail,
        canonical.prev_hash,
        hash,
    ])?;
    Ok(paddock_types::api::AuditEntry {
        seq,
        at: e.at,
        actor: e.actor,
        action: e.action,
        resource: e.resource,
        outcome: e.outcome,
        ip: e.ip,
        user_agent: e.user_agent,
        detail: e.detail,
        prev_hash,
        hash,
    })
}

// Idempotency keys. Run in the writer's transaction, so a claim's read and insert are atomic.

pub(super) fn claim_idempotency(
    conn: &Connection,
    scope: &Scope,
    key: &str,
    request_hash: &str,
    now: Millis,
) -> Result<IdempotencyClaim> {
    let (org, ws, _) = scope_params(scope);
    let expired_before = now.saturating_sub(IDEMPOTENCY_TTL_MS);
    // Cheap: the index on created_at makes this a range delete of what just expired.
    conn.prepare_cached("DELETE FROM idempotency WHERE created_at < ?1")?
        .execute(params![expired_before])?;
    type Row = (
        String,
        Millis,
        Option<u16>,
        Option<String>,
        Option<String>,
        Option<Vec<u8>>,
    );
    let row: Option<Row> = conn
        .prepare_cached(
            "SELECT request_hash, created_at, status, content_type, location, body
             FROM idempotency WHERE org = ?1 AND workspace = ?2 AND key = ?3",
        )?
        .query_row(params![org, ws, key], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .optional()?;
    if let Some((hash, created_at, status, content_type, location, body)) = row {
        let abandoned =
            status.is_none() && created_at < now.saturating_sub(IDEMPOTENCY_IN_FLIGHT_MS);
        if !abandoned {
            if hash != request_hash {
                return Ok(IdempotencyClaim::Mismatch);
            }
            return Ok(match status {
                None => IdempotencyClaim::InFlight,
                Some(status) => IdempotencyClaim::Done(IdempotentResponse {
                    status,
                    content_type,
                    location,
                    body: body.unwrap_or_default(),
                }),
            });
        }
    }
    conn.prepare_cached(
        "INSERT OR REPLACE INTO idempotency
             (org, workspace, key, request_hash, created_at, status, content_type, location, body)
         VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL, NULL, NULL)",
    )?
    .execute(params![org, ws, key, request_hash, now])?;
    Ok(IdempotencyClaim::New)
}

pub(super) fn complete_idempotency(
    conn: &Connection,
    scope: &Scope,
    key: &str,
    request_hash: &str,
    response: &IdempotentResponse,
) -> Result<()> {
    let (org, ws, _) = scope_params(scope);
    conn.prepare_cached(
        "UPDATE idempotency SET status = ?5, content_type = ?6, location = ?7, body = ?8
         WHERE org = ?1 AND workspace = ?2 AND key = ?3 AND request_hash = ?4
           AND status IS NULL",
    )?
    .execute(params![
        org,
        ws,
        key,
        request_hash,
        response.status,
        response.content_type,
        response.location,
        response.body
    ])?;
    Ok(())
}

pub(super) fn release_idempotency(
    conn: &Connection,
    scope: &Scope,
    key: &str,
    request_hash: &str,
) -> Result<()> {
    let (org, ws, _) = scope_params(scope);
    conn.prepare_cached(
        "DELETE FROM idempotency
         WHERE org = ?1 AND workspace = ?2 AND key = ?3 AND request_hash = ?4 AND status IS NULL",
    )?
    .execute(params![org, ws, key, request_hash])?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::conformance::{agent, created};
    use crate::{Append, SqliteStore, Store};
    use std::sync::Arc;

    fn started() -> NewEvent {
        NewEvent::now(EventKind::RunStarted {
            worker: "w".to_owned(),
            recovered: false,
        })
    }

    async fn store_with_run() -> (tempfile::TempDir, Arc<SqliteStore>, Scope, Run) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let s = Scope::default_workspace();
        store
            .put_agent(&s, &agent("alpha", "1.0.0", "p").unwrap())
            .await
            .unwrap();
        let run = store
            .create_run(&s, &RunId::new(), created("alpha"))
            .await
            .unwrap();
        (dir, store, s, run)
    }

    #[tokio::test]
    async fn an_append_rolled_back_with_its_operation_is_forgotten() {
        let (_dir, store, s, run) = store_with_run().await;
        let (scope, id) = (s.clone(), run.id.clone());
        // The append succeeds inside the operation, which then fails: its savepoint takes the
        // append back, and the writer's cache must follow.
        let failed = store
            .write_runs(
                Isolation::Savepoint,
                move |ctx| -> Result<((), Option<Committed>)> {
                    let mut events = [Encoded::new(started())?];
                    let (run, _) = append(ctx, &scope, &id, Some(1), &mut events)?;
                    assert_eq!(run.last_seq, 2);
                    Err(StoreError::Backend("injected".to_owned()))
                },
            )
            .await;
        assert!(failed.is_err());
        let after = store
            .append(
                &s,
                Append {
                    run_id: run.id.clone(),
                    expected_seq: Some(1),
                    events: vec![started()],
                },
            )
            .await
            .unwrap();
        assert_eq!(after.last_seq, 2);
        let seqs: Vec<u64> = store
            .events(&s, &run.id, 0, 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(store.get_run(&s, &run.id).await.unwrap(), Some(after));
    }

    /// Holds the writer inside a batch of its own until the returned sender is dropped, so that
    /// whatever is queued meanwhile commits as one batch.
    async fn hold_writer(store: &Arc<SqliteStore>) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (entered, inside) = oneshot::channel();
        let store2 = Arc::clone(store);
        tokio::spawn(async move {
            store2
                .write(move |_| {
                    let _ = entered.send(());
                    let _ = held.recv();
                    Ok(((), None))
                })
                .await
        });
        inside.await.unwrap();
        release
    }

    fn one_append(ctx: &mut Ctx<'_>, scope: &Scope, id: &RunId, expected: u64) -> Result<Arc<Run>> {
        let mut events = [Encoded::new(started())?];
        Ok(append(ctx, scope, id, Some(expected), &mut events)?.0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unisolated_operation_that_fails_after_writing_sinks_its_batch_only() {
        let (_dir, store, s, run) = store_with_run().await;
        let other = store
            .create_run(&s, &RunId::new(), created("alpha"))
            .await
            .unwrap();
        let release = hold_writer(&store).await;
        let spawn = |fail_after_writing: bool, id: RunId| {
            let (store, s) = (Arc::clone(&store), s.clone());
            tokio::spawn(async move {
                store
                    .write_runs(Isolation::ChecksFirst, move |ctx| {
                        let run = one_append(ctx, &s, &id, 1)?;
                        if fail_after_writing {
                            return Err(StoreError::Backend("injected".to_owned()));
                        }
                        Ok((run.last_seq, None))
                    })
                    .await
            })
        };
        let good = spawn(false, run.id.clone());
        let bad = spawn(true, other.id.clone());
        // Both queued behind the held batch, so they commit (or not) together.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(release);
        let (good, bad) = (good.await.unwrap(), bad.await.unwrap());
        assert!(
            matches!(&bad, Err(StoreError::Backend(m)) if m == "injected"),
            "{bad:?}"
        );
        assert!(
            matches!(&good, Err(StoreError::Backend(m)) if m.contains("rolled back")),
            "{good:?}"
        );
        // Nothing of the batch happened, and the writer's cache knows it.
        assert_only_created(&store, &s, [&run.id, &other.id]).await;

        // A refusal before any write costs its batch nothing.
        let release = hold_writer(&store).await;
        let stale = spawn(false, other.id.clone());
        let (store2, s2, id2) = (Arc::clone(&store), s.clone(), run.id.clone());
        let fine = tokio::spawn(async move {
            store2
                .write_runs(Isolation::ChecksFirst, move |ctx| {
                    Ok((one_append(ctx, &s2, &id2, 2)?.last_seq, None))
                })
                .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(release);
        let stale = stale.await.unwrap();
        assert!(
            matches!(
                stale,
                Err(StoreError::Conflict {
                    expected: 1,
                    actual: 2
                })
            ),
            "{stale:?}"
        );
        assert_eq!(fine.await.unwrap().unwrap(), 3);
        assert_eq!(store.events(&s, &run.id, 0, 100).await.unwrap().len(), 3);
    }

    fn answered(input_tokens: u64, cost_usd: f64) -> NewEvent {
        NewEvent::now(
            serde_json::from_value(serde_json::json!({
                "type": "model_responded", "call_index": 0,
                "response": {"model": "m1", "tool_calls": [],
                             "usage": {"input_tokens": input_tokens, "output_tokens": 1},
                             "stop_reason": "end_turn"},
                "cost_usd": cost_usd, "retries": 0, "latency_ms": 0
            }))
            .unwrap(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_settles_its_model_answers_into_the_ledger_once_and_only_what_landed() {
        let (_dir, store, s, run) = store_with_run().await;
        let other = store
            .create_run(&s, &RunId::new(), created("alpha"))
            .await
            .unwrap();
        let release = hold_writer(&store).await;
        let push = |id: RunId, expected: u64, input: u64| {
            let (store, s) = (Arc::clone(&store), s.clone());
            tokio::spawn(async move {
                store
                    .append(
                        &s,
                        Append {
                            run_id: id,
                            expected_seq: Some(expected),
                            events: vec![started(), answered(input, 0.25)],
                        },
                    )
                    .await
            })
        };
        let a = push(run.id.clone(), 1, 10);
        let b = push(other.id.clone(), 1, 20);
        // Refused (wrong seq): its answer must not count.
        let c = push(other.id.clone(), 7, 400);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(release);
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        assert!(c.await.unwrap().is_err());
        let ledger = || {
            let store = Arc::clone(&store);
            async move {
                store
                    .readers
                    .with(|conn| {
                        Ok(conn.query_row(
                            "SELECT input_tokens, output_tokens, model_calls, cost_micros
                             FROM usage_ledger WHERE model = 'm1'",
                            [],
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                        )?)
                    })
                    .await
                    .unwrap()
            }
        };
        let sums: (i64, i64, i64, i64) = ledger().await;
        assert_eq!(sums, (30, 2, 2, 500_000));
        // And the next batch adds to the same row.
        push(run.id.clone(), 3, 5).await.unwrap().unwrap();
        let sums: (i64, i64, i64, i64) = ledger().await;
        assert_eq!(sums, (35, 3, 3, 750_000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_sqlite_rolled_back_by_itself_stops_there() {
        // As on an I/O error or a full disk: SQLite ends the transaction itself and the failed
        // statement counts no change. Nothing after it may run outside a transaction, and
        // nothing before it may be reported done.
        let (_dir, store, s, run) = store_with_run().await;
        let other = store
            .create_run(&s, &RunId::new(), created("alpha"))
            .await
            .unwrap();
        let spawn = |id: RunId| {
            let (store, s) = (Arc::clone(&store), s.clone());
            tokio::spawn(async move {
                store
                    .write_runs(Isolation::ChecksFirst, move |ctx| {
                        Ok((one_append(ctx, &s, &id, 1)?.last_seq, None))
                    })
                    .await
            })
        };
        let release = hold_writer(&store).await;
        let before = spawn(run.id.clone());
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let store2 = Arc::clone(&store);
        let lost = tokio::spawn(async move {
            store2
                .write_runs(Isolation::ChecksFirst, move |ctx| -> Result<((), _)> {
                    ctx.conn.execute_batch("ROLLBACK")?;
                    Err(StoreError::Backend("disk I/O error".to_owned()))
                })
                .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let after = spawn(other.id.clone());
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(release);
        assert!(before.await.unwrap().is_err());
        assert!(lost.await.unwrap().is_err());
        let after = after.await.unwrap();
        assert!(after.is_err(), "ran after the rollback: {after:?}");
        assert_only_created(&store, &s, [&run.id, &other.id]).await;
    }

    /// Each run holds only its creation, and the writer's cache agrees: an append expecting seq
    /// 1 lands at seq 2.
    async fn assert_only_created(store: &SqliteStore, s: &Scope, ids: [&RunId; 2]) {
        for id in ids {
            assert_eq!(store.events(s, id, 0, 100).await.unwrap().len(), 1);
            let again = store
                .append(
                    s,
                    Append {
                        run_id: id.clone(),
                        expected_seq: Some(1),
                        events: vec![started()],
                    },
                )
                .await
                .unwrap();
            assert_eq!(again.last_seq, 2);
        }
    }

    #[tokio::test]
    async fn an_append_that_goes_on_after_the_end_is_refused_before_writing() {
        let (_dir, store, s, run) = store_with_run().await;
        let refused = store
            .append(
                &s,
                Append {
                    run_id: run.id.clone(),
                    expected_seq: Some(1),
                    events: vec![
                        NewEvent::now(EventKind::RunCancelled { reason: None }),
                        started(),
                    ],
                },
            )
            .await;
        assert!(
            matches!(refused, Err(StoreError::Terminal(RunStatus::Cancelled))),
            "{refused:?}"
        );
        assert_eq!(store.events(&s, &run.id, 0, 100).await.unwrap().len(), 1);
        let run = store.get_run(&s, &run.id).await.unwrap().unwrap();
        assert_eq!((run.status, run.last_seq), (RunStatus::Queued, 1));
    }

    #[tokio::test]
    async fn a_stale_cached_projection_fails_the_append_instead_of_leaving_a_gap() {
        let (_dir, store, s, run) = store_with_run().await;
        // Move the row on behind the cache's back, as a write the cache missed would.
        let id = run.id.clone();
        store
            .write(move |conn| {
                conn.execute(
                    "UPDATE runs SET last_seq = last_seq + 1 WHERE id = ?1",
                    params![id.as_str()],
                )?;
                Ok(((), None))
            })
            .await
            .unwrap();
        let stale = store
            .append(
                &s,
                Append {
                    run_id: run.id.clone(),
                    expected_seq: None,
                    events: vec![started()],
                },
            )
            .await;
        assert!(matches!(stale, Err(StoreError::Backend(_))), "{stale:?}");
        assert_eq!(store.events(&s, &run.id, 0, 100).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn finished_runs_are_read_from_memory_only_in_their_scope() {
        let (_dir, store, s, run) = store_with_run().await;
        let done = store
            .append(
                &s,
                Append {
                    run_id: run.id.clone(),
                    expected_seq: Some(1),
                    events: vec![
                        started(),
                        NewEvent::now(EventKind::RunSucceeded {
                            output: serde_json::json!("ok"),
                        }),
                    ],
                },
            )
            .await
            .unwrap();
        assert!(store.finished.get(&s, &run.id).is_some());
        let (scope, id) = (s.clone(), run.id.clone());
        let stored = store
            .readers
            .with(move |conn| super::super::read::get_run(conn, &scope, &id))
            .await
            .unwrap();
        assert_eq!(stored.as_ref(), Some(&done));
        assert_eq!(store.get_run(&s, &run.id).await.unwrap(), Some(done));
        let other_workspace = Scope {
            workspace: WorkspaceId::new(),
            ..s.clone()
        };
        let other_end_user = Scope {
            end_user: Some(EndUserId::new()),
            ..s.clone()
        };
        for other in [other_workspace, other_end_user] {
            assert_eq!(store.get_run(&other, &run.id).await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn an_append_is_one_journal_row_read_back_event_by_event() {
        let (_dir, store, s, run) = store_with_run().await;
        let events: Vec<NewEvent> = (0..19).map(|_| started()).collect();
        let after = store
            .append(
                &s,
                Append {
                    run_id: run.id.clone(),
                    expected_seq: Some(1),
                    events: events.clone(),
                },
            )
            .await
            .unwrap();
        push_one(&store, &s, &run.id).await;
        let stored = store.events(&s, &run.id, 0, u32::MAX).await.unwrap();
        assert_eq!(after.last_seq + 1, stored.len() as u64);
        let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=21).collect::<Vec<_>>());
        for (e, sent) in stored[1..20].iter().zip(&events) {
            assert_eq!((e.at, &e.kind), (sent.at, &sent.kind));
        }
        // Pages start and end inside a row, and cross into the next one.
        for (from, limit) in [(5, 4), (0, 1), (19, 2), (18, 100), (21, 5), (3, 0)] {
            let page = store.events(&s, &run.id, from, limit).await.unwrap();
            let expected: Vec<u64> = (from + 1..=21).take(limit as usize).collect();
            let got: Vec<u64> = page.iter().map(|e| e.seq).collect();
            assert_eq!(got, expected, "after {from}, limit {limit}");
        }
        let id = run.id.clone();
        let rows = store
            .readers
            .with(move |conn| {
                Ok(conn.query_row(
                    "SELECT count(*) FROM journal WHERE run_id = ?1",
                    [id.as_str()],
                    |r| r.get::<_, i64>(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(rows, 3, "creation, the 19-event append and the last one");
    }

    async fn push_one(store: &SqliteStore, s: &Scope, id: &RunId) {
        store
            .append(
                s,
                Append {
                    run_id: id.clone(),
                    expected_seq: None,
                    events: vec![started()],
                },
            )
            .await
            .unwrap();
    }
}
