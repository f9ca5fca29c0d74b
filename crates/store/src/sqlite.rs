//! The embedded SQLite backend: one database file per data folder, WAL, `synchronous=FULL`.
//!
//! Writes go through one writer thread that owns the only read-write connection. It takes every
//! operation already queued (up to [`MAX_BATCH`]), runs them in one `BEGIN IMMEDIATE` transaction
//! where one failing operation does not sink the others (each has its own savepoint, or refuses
//! before writing anything; see `write::Isolation`), commits once — one fsync for the whole
//! batch — and only then answers the callers and publishes [`Committed`]. While it waits on the
//! disk, the next batch queues up, so concurrent runs share fsyncs without any timer.
//!
//! Reads go to a small pool of read-only connections on blocking threads; WAL lets them run
//! beside the writer.
//!
//! The data folder is guarded by an advisory lock on `paddock.lock`, held for the life of the
//! store (the kernel drops it if the process dies), so two processes never write the same files.

mod end_users;
mod keycache;
mod members;
mod read;
mod secrets;
mod trail;
mod usage;
mod write;

use write::Isolation;

use crate::{
    AgentRecord, Append, AuditFilter, Claimed, Committed, DataKeyRecord, IdempotencyClaim,
    IdempotentResponse, KeyRecord, NewAuditEntry, Result, Rewrap, RunFilter, SecretMeta,
    SecretRecord, Store, StoreError,
};
use crate::{BudgetRefusal, Reservation, UsageQuery};
use async_trait::async_trait;
use paddock_types::KeyId;
use paddock_types::api::WorkspaceInfo;
use paddock_types::api::{AgentDefinition, Approval, ApprovalStatus, Page, Run};
use paddock_types::api::{AuditEntry, AuditVerify};
use paddock_types::billing::{Budget, EndUser, UsageRow};
use paddock_types::event::ApprovalDecision;
use paddock_types::time::Millis;
use paddock_types::{ApprovalId, Event, NewEvent, RunId, Scope};
use paddock_types::{BudgetId, EndUserId};
use rusqlite::{Connection, OptionalExtension};
use std::fs::{File, OpenOptions, TryLockError};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};

/// Most operations committed in one transaction; a bound on how long a caller can wait behind
/// others and on the transaction's size.
pub const MAX_BATCH: usize = 512;
/// Read-only connections kept for concurrent reads.
const READERS: usize = 4;
/// Commit notifications kept for slow subscribers (they see `Lagged` beyond this).
const NOTIFY_CAPACITY: usize = 8192;
/// How long a connection waits on a lock held by a checkpoint or a reader before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection; listings build a few SQL variants each.
const STATEMENT_CACHE: usize = 64;
/// WAL pages (4 KiB each) after which a commit checkpoints; see [`configure_writer`].
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied. Append only:
/// a released migration never changes, a new one is added at the end.
const MIGRATIONS: &[&str] = &[
    include_str!("sqlite/migrations/0001_init.sql"),
    include_str!("sqlite/migrations/0002_secrets.sql"),
    include_str!("sqlite/migrations/0003_tenancy.sql"),
    include_str!("sqlite/migrations/0004_audit.sql"),
    include_str!("sqlite/migrations/0005_idempotency.sql"),
    include_str!("sqlite/migrations/0006_members.sql"),
    include_str!("sqlite/migrations/0007_end_users_budgets.sql"),
    include_str!("sqlite/migrations/0008_key_scopes.sql"),
    include_str!("sqlite/migrations/0009_events_append_order.sql"),
    include_str!("sqlite/migrations/0010_journal.sql"),
];

/// The schema version (`PRAGMA user_version`) this binary migrates databases to.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The SQLite [`Store`]. Dropping the last `Arc` stops the writer thread and releases the lock.
pub struct SqliteStore {
    path: PathBuf,
    /// `None` only while dropping: closing the channel is what stops the writer.
    jobs: Option<mpsc::Sender<Box<dyn write::Job>>>,
    writer: Option<JoinHandle<()>>,
    readers: Arc<read::Pool>,
    /// Finished runs' projections, published by the writer as their ends commit.
    finished: Arc<write::Finished>,
    notify: broadcast::Sender<Committed>,
    commits: Arc<AtomicU64>,
    /// How many budgets each (org, workspace) has, so a model call in a workspace without any
    /// skips the reservation write. Exact because this process is the database's only writer
    /// (the folder lock); raised before a budget is written, lowered after one is deleted.
    budgeted: std::sync::Mutex<std::collections::HashMap<(String, String), i64>>,
    /// API keys by secret hash, exact for the same reason ([`keycache`]).
    keys: Arc<keycache::KeyCache>,
    /// Each agent's latest version by (org, workspace, name), exact for the same reason.
    latest_agents: Arc<keycache::ExactCache<(String, String, String), Arc<AgentRecord>>>,
}

/// Most bytes of agent definitions (as stored) in [`SqliteStore::latest_agents`].
const AGENT_CACHE_BYTES: usize = 16 << 20;

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`: `paddock.db` plus the `paddock.lock`
    /// that keeps a second process out ([`StoreError::Locked`]).
    pub fn open(data_dir: &Path) -> Result<Arc<SqliteStore>> {
        private_dir(data_dir)?;
        let lock = lock_folder(data_dir)?;
        let path = data_dir.join("paddock.db");
        private_db_files(&path)?;
        let mut conn = Connection::open(&path)?;
        configure_writer(&conn)?;
        migrate(&mut conn)?;
        let budgeted = std::sync::Mutex::new(usage::budget_counts(&conn)?);

        let (jobs, queue) = mpsc::channel::<Box<dyn write::Job>>();
        let (notify, _) = broadcast::channel(NOTIFY_CAPACITY);
        let commits = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(write::Finished::default());
        let writer = {
            let notify = notify.clone();
            let commits = Arc::clone(&commits);
            let finished = Arc::clone(&finished);
            std::thread::Builder::new()
                .name("paddock-store-writer".to_owned())
                .spawn(move || {
                    write::run(&mut conn, &queue, &notify, &commits, &finished);
                    // Close the database before giving up the folder, so the next owner never
                    // sees our connection still open.
                    drop(conn);
                    drop(lock);
                })
                .map_err(|e| StoreError::Backend(format!("cannot start the store writer: {e}")))?
        };
        tracing::debug!(path = %path.display(), "store opened");
        Ok(Arc::new(SqliteStore {
            readers: Arc::new(read::Pool::new(path.clone(), READERS)),
            finished,
            path,
            jobs: Some(jobs),
            writer: Some(writer),
            notify,
            commits,
            budgeted,
            keys: Arc::new(keycache::KeyCache::for_keys()),
            latest_agents: Arc::new(keycache::ExactCache::new(AGENT_CACHE_BYTES)),
        }))
    }

    /// Transactions committed by the writer so far. Group commit shows as fewer commits than
    /// write operations.
    pub fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `work` in the writer's next batch and waits until that batch is durable.
    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<(T, Option<Committed>)> + Send + 'static,
    {
        self.write_runs(Isolation::Savepoint, move |ctx: &mut write::Ctx<'_>| {
            work(ctx.conn)
        })
        .await
    }

    /// [`SqliteStore::write`] for the operations that keep the writer's cache of run
    /// projections: creating runs, appending to them, deciding approvals.
    async fn write_runs<T, F>(&self, isolation: Isolation, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut write::Ctx<'_>) -> Result<(T, Option<Committed>)> + Send + 'static,
    {
        self.submit(isolation, work)?
            .await
            .map_err(|_| stopped())?
            .into_outcome()
    }

    /// [`SqliteStore::write`], then `after` once the write has committed or failed, even if the
    /// caller stops waiting: a request dropped mid-way (a client hanging up) must not skip the
    /// cache invalidation that follows a committed change.
    async fn write_then<T, F>(&self, work: F, after: impl FnOnce() + Send + 'static) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<(T, Option<Committed>)> + Send + 'static,
    {
        let reply = self.submit(Isolation::Savepoint, move |ctx: &mut write::Ctx<'_>| {
            work(ctx.conn)
        })?;
        tokio::spawn(async move {
            let reply = reply.await;
            after();
            reply.map_err(|_| stopped())?.into_outcome()
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store write task failed: {e}")))?
    }

    /// Queues an operation for the writer; the receiver gets its outcome.
    fn submit<T, F>(
        &self,
        isolation: Isolation,
        work: F,
    ) -> Result<oneshot::Receiver<write::Reply<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&mut write::Ctx<'_>) -> Result<(T, Option<Committed>)> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = write::pending(isolation, work, tx);
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        Ok(rx)
    }
}

impl SqliteStore {
    /// Appends, answering with the writer's shared projection (see [`owned`]).
    async fn append_shared(&self, scope: &Scope, batch: Append) -> Result<Arc<Run>> {
        let scope = scope.clone();
        let Append {
            run_id,
            expected_seq,
            events,
        } = batch;
        // Encoded here, on the caller's thread, so the single writer thread does not have to.
        let mut events = events
            .into_iter()
            .map(write::Encoded::new)
            .collect::<Result<Vec<_>>>()?;
        let (run, events) = self
            .write_runs(Isolation::ChecksFirst, move |ctx| {
                let (run, note) = write::append(ctx, &scope, &run_id, expected_seq, &mut events)?;
                Ok(((run, events), note))
            })
            .await?;
        // Freed here, where they were made (see `write::Encoded`).
        drop(events);
        Ok(run)
    }

    fn budget_counts(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), i64>> {
        // A panic while holding it cannot leave the map half-changed: every change is one
        // insert or one addition.
        self.budgeted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn count_budgets(&self, scope: &Scope, change: i64) {
        let key = (scope.org.to_string(), scope.workspace.to_string());
        *self.budget_counts().entry(key).or_insert(0) += change;
    }

    fn has_budgets(&self, scope: &Scope) -> bool {
        let key = (scope.org.to_string(), scope.workspace.to_string());
        self.budget_counts().get(&key).is_some_and(|n| *n > 0)
    }
}

fn stopped() -> StoreError {
    StoreError::Backend("the store writer has stopped".to_owned())
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.readers.close();
        // Closing the channel ends the writer's loop once it has answered what is queued.
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take()
            && writer.thread().id() != std::thread::current().id()
            && writer.join().is_err()
        {
            tracing::error!("the store writer thread panicked");
        }
    }
}

/// Creates `dir` (and missing parents) readable by this user only: it holds every tenant's
/// journal. An existing folder keeps its mode (the server refuses to start on a shared one
/// unless told; see `paddock serve --allow-shared-data-dir`).
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))
}

/// Makes the database and its `-wal`/`-shm` files mode 0600, creating the database empty if
/// missing: SQLite creates it with the process umask (usually 0644), and creates the `-wal` and
/// `-shm` files with the database's mode, so fixing the database covers them from now on; those
/// left by an earlier version are fixed here too.
fn private_db_files(db: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(db)
        .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", db.display())))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = std::path::PathBuf::from(name);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                    |e| StoreError::Backend(format!("cannot chmod 600 {}: {e}", path.display())),
                )?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Backend(format!(
                    "cannot inspect {}: {e}",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

fn lock_folder(data_dir: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("paddock.lock");
    let file = OpenOptions::new()
        .mode(0o600)
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
    // A process that was just killed can hold the lock a moment longer through a child it was
    // spawning (the descriptor closes only when that child's exec completes); a restart right
    // after a crash must not fail on that, so wait briefly before calling the folder taken.
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Locked(path.display().to_string()));
            }
            Err(TryLockError::Error(e)) => {
                return Err(StoreError::Backend(format!(
                    "cannot lock {}: {e}",
                    path.display()
                )));
            }
        }
    }
}

/// How long `open` waits for another process to let go of the data folder.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

fn configure_writer(conn: &Connection) -> Result<()> {
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "the database refused WAL mode (got {mode})"
        )));
    }
    // FULL: a commit is on disk (WAL fsynced) before anyone is told it happened.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Checkpoint (copy the WAL back into the database) every ~40 MB of WAL rather than SQLite's
    // default ~4 MB: each checkpoint copies every page changed since the last one and fsyncs the
    // database, on the writer thread, so a busy journal that rewrites the same pages (run rows,
    // the last page of each run's events) pays for that copy far less often. Durability does not
    // change: a commit is durable once it is in the (fsynced) WAL.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = SCHEMA_VERSION;
    if current > known {
        return Err(StoreError::Backend(format!(
            "the database schema is version {current}, newer than this binary knows ({known}); \
             upgrade paddock"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        // user_version lives in the database header, so it commits with the migration.
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "store schema migrated");
    }
    Ok(())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// The caller's own copy of a run the writer answered with. The writer keeps the projection it
/// shares, so the copy (and later its drop) happens here, on the caller's thread: off the one
/// thread every write waits for, and with the caller's allocator cache.
fn owned(run: Arc<Run>) -> Run {
    Arc::try_unwrap(run).unwrap_or_else(|shared| Run::clone(&shared))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("cannot encode: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Backend(format!("corrupt stored value: {e}")))
}

/// The scope as SQL parameters: org, workspace, end-user (NULL matches every end-user).
fn scope_params(scope: &Scope) -> (&str, &str, Option<&str>) {
    (
        scope.org.as_str(),
        scope.workspace.as_str(),
        scope.end_user.as_ref().map(|e| e.as_str()),
    )
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_agent(&self, scope: &Scope, def: &AgentDefinition) -> Result<AgentRecord> {
        let (scope, def) = (scope.clone(), def.clone());
        let agents = Arc::clone(&self.latest_agents);
        // Even after a failure: the write may have committed before the answer was lost.
        self.write_then(
            move |conn| Ok((write::put_agent(conn, &scope, def)?, None)),
            move || agents.invalidate(),
        )
        .await
    }

    async fn get_agent(
        &self,
        scope: &Scope,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<AgentRecord>> {
        let (scope, name) = (scope.clone(), name.to_owned());
        // Stored versions are canonical semver strings; accept any spelling that parses.
        let version = version.map(|v| {
            semver::Version::parse(v)
                .map(|v| v.to_string())
                .unwrap_or_else(|_| v.to_owned())
        });
        if version.is_some() {
            return self
                .readers
                .with(move |conn| read::get_agent(conn, &scope, &name, version.as_deref()))
                .await;
        }
        let key = (
            scope.org.as_str().to_owned(),
            scope.workspace.as_str().to_owned(),
            name,
        );
        if let Some(hit) = self.latest_agents.get(&key) {
            return Ok(Some(AgentRecord::clone(&hit)));
        }
        let generation = self.latest_agents.generation();
        let (s, n) = (scope, key.2.clone());
        let found = self
            .readers
            .with(move |conn| read::get_agent(conn, &s, &n, None))
            .await?;
        if let Some(found) = &found {
            // Its size as stored; a definition that does not serialize is simply not cached.
            let weight = serde_json::to_vec(&found.definition).map_or(usize::MAX, |v| v.len());
            self.latest_agents
                .insert(generation, key, Arc::new(found.clone()), weight);
        }
        Ok(found)
    }

    async fn list_agents(&self, scope: &Scope) -> Result<Vec<AgentRecord>> {
        let scope = scope.clone();
        self.readers
            .with(move |conn| read::list_agents(conn, &scope))
            .await
    }

    async fn create_run(&self, scope: &Scope, id: &RunId, first: NewEvent) -> Result<Run> {
        let (scope, id) = (scope.clone(), id.clone());
        let (run, first) = self
            .write_runs(Isolation::ChecksFirst, move |ctx| {
                let (run, first, note) = write::create_run(ctx, &scope, &id, first)?;
                Ok(((run, first), note))
            })
            .await?;
        // Freed here, where it was made (see `write::Encoded`).
        drop(first);
        Ok(owned(run))
    }

    async fn get_run(&self, scope: &Scope, id: &RunId) -> Result<Option<Run>> {
        if let Some(run) = self.finished.get(scope, id) {
            return Ok(run);
        }
        let (scope, id) = (scope.clone(), id.clone());
        self.readers
            .with(move |conn| read::get_run(conn, &scope, &id))
            .await
    }

    async fn list_runs(
        &self,
        scope: &Scope,
        filter: &RunFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Run>> {
        let cursor = cursor
            .map(|c| RunId::parse(c).map_err(|_| StoreError::BadCursor))
            .transpose()?;
        let (scope, filter) = (scope.clone(), filter.clone());
        let limit = limit.clamp(1, 200);
        self.readers
            .with(move |conn| read::list_runs(conn, &scope, &filter, cursor.as_ref(), limit))
            .await
    }

    async fn append(&self, scope: &Scope, batch: Append) -> Result<Run> {
        self.append_shared(scope, batch).await.map(owned)
    }

    async fn append_seq(&self, scope: &Scope, batch: Append) -> Result<u64> {
        Ok(self.append_shared(scope, batch).await?.last_seq)
    }

    async fn events(
        &self,
        scope: &Scope,
        run_id: &RunId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let (scope, run_id) = (scope.clone(), run_id.clone());
        self.readers
            .with(move |conn| read::events(conn, &scope, &run_id, after, limit))
            .await
    }

    async fn get_approval(
        &self,
        scope: &Scope,
        run_id: &RunId,
        id: &ApprovalId,
    ) -> Result<Option<Approval>> {
        let (scope, run_id, id) = (scope.clone(), run_id.clone(), id.clone());
        self.readers
            .with(move |conn| read::get_approval(conn, &scope, &run_id, &id))
            .await
    }

    async fn list_approvals(
        &self,
        scope: &Scope,
        status: Option<ApprovalStatus>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Approval>> {
        let cursor = cursor
            .map(|c| ApprovalId::parse(c).map_err(|_| StoreError::BadCursor))
            .transpose()?;
        let scope = scope.clone();
        let limit = limit.clamp(1, 200);
        self.readers
            .with(move |conn| read::list_approvals(conn, &scope, status, cursor.as_ref(), limit))
            .await
    }

    async fn decide_approval(
        &self,
        scope: &Scope,
        run_id: &RunId,
        id: &ApprovalId,
        decision: ApprovalDecision,
        comment: Option<String>,
    ) -> Result<Run> {
        let (scope, run_id, id) = (scope.clone(), run_id.clone(), id.clone());
        self.write_runs(Isolation::Savepoint, move |ctx| {
            write::decide_approval(ctx, &scope, &run_id, &id, decision, comment)
        })
        .await
        .map(owned)
    }

    async fn claim(
        &self,
        worker: &str,
        lease_ms: i64,
        limit: u32,
        max_running_per_workspace: Option<NonZeroU32>,
    ) -> Result<Vec<Claimed>> {
        let worker = worker.to_owned();
        self.write(move |conn| {
            let claimed = write::claim(conn, &worker, lease_ms, limit, max_running_per_workspace)?;
            Ok((claimed, None))
        })
        .await
    }

    async fn renew(&self, worker: &str, runs: &[RunId], lease_ms: i64) -> Result<Vec<RunId>> {
        let (worker, runs) = (worker.to_owned(), runs.to_vec());
        self.write(move |conn| Ok((write::renew(conn, &worker, &runs, lease_ms)?, None)))
            .await
    }

    async fn release(&self, worker: &str, run_id: &RunId) -> Result<()> {
        let (worker, run_id) = (worker.to_owned(), run_id.clone());
        self.write(move |conn| Ok((write::release(conn, &worker, &run_id)?, None)))
            .await
    }

    fn subscribe(&self) -> broadcast::Receiver<Committed> {
        self.notify.subscribe()
    }

    async fn put_data_key(&self, scope: &Scope, key: DataKeyRecord) -> Result<bool> {
        let scope = scope.clone();
        self.write(move |conn| Ok((write::put_data_key(conn, &scope, &key)?, None)))
            .await
    }

    async fn data_keys(&self, scope: &Scope) -> Result<Vec<DataKeyRecord>> {
        let scope = scope.clone();
        self.readers
            .with(move |conn| read::data_keys(conn, &scope))
            .await
    }

    async fn all_data_keys(&self) -> Result<Vec<(Scope, DataKeyRecord)>> {
        self.readers.with(read::all_data_keys).await
    }

    async fn rewrap_data_keys(&self, rewraps: Vec<Rewrap>) -> Result<()> {
        self.write(move |conn| Ok((write::rewrap_data_keys(conn, &rewraps)?, None)))
            .await
    }

    async fn put_secret(&self, scope: &Scope, secret: SecretRecord) -> Result<SecretMeta> {
        let scope = scope.clone();
        self.write(move |conn| Ok((secrets::put_secret(conn, &scope, &secret)?, None)))
            .await
    }

    async fn get_secret(&self, scope: &Scope, name: &str) -> Result<Option<SecretRecord>> {
        let (scope, name) = (scope.clone(), name.to_owned());
        self.readers
            .with(move |conn| secrets::get_secret(conn, &scope, &name))
            .await
    }

    async fn list_secrets(&self, scope: &Scope) -> Result<Vec<SecretMeta>> {
        let scope = scope.clone();
        self.readers
            .with(move |conn| secrets::list_secrets(conn, &scope))
            .await
    }

    async fn delete_secret(&self, scope: &Scope, name: &str) -> Result<bool> {
        let (scope, name) = (scope.clone(), name.to_owned());
        self.write(move |conn| Ok((secrets::delete_secret(conn, &scope, &name)?, None)))
            .await
    }

    async fn all_secrets(&self, scope: &Scope) -> Result<Vec<SecretRecord>> {
        let scope = scope.clone();
        self.readers
            .with(move |conn| secrets::all_secrets(conn, &scope))
            .await
    }

    async fn ensure_workspace(&self, scope: &Scope, name: &str) -> Result<()> {
        let (scope, name) = (scope.clone(), name.to_owned());
        self.write(move |conn| Ok((write::ensure_workspace(conn, &scope, &name)?, None)))
            .await
    }

    async fn create_workspace(&self, scope: &Scope, name: &str) -> Result<WorkspaceInfo> {
        let (org, name) = (scope.org.clone(), name.to_owned());
        self.write(move |conn| Ok((write::create_workspace(conn, &org, &name)?, None)))
            .await
    }

    async fn list_workspaces(&self, scope: &Scope) -> Result<Vec<WorkspaceInfo>> {
        let org = scope.org.clone();
        self.readers
            .with(move |conn| read::list_workspaces(conn, &org))
            .await
    }

    async fn create_api_key(&self, scope: &Scope, key: KeyRecord) -> Result<()> {
        let scope = scope.clone();
        self.write(move |conn| Ok((write::create_api_key(conn, &scope, &key)?, None)))
            .await
    }

    async fn api_key_by_hash(&self, secret_hash: &str) -> Result<Option<(Scope, KeyRecord)>> {
        if let Some(hit) = self.keys.get(secret_hash) {
            return Ok(Some(hit));
        }
        let generation = self.keys.generation();
        let hash = secret_hash.to_owned();
        let found = self
            .readers
            .with(move |conn| read::api_key_by_hash(conn, &hash))
            .await?;
        if let Some(found) = &found {
            self.keys
                .insert(generation, secret_hash.to_owned(), found.clone(), 1);
        }
        Ok(found)
    }

    async fn touch_api_key(&self, id: &KeyId, at: Millis) -> Result<()> {
        let touched = id.clone();
        self.write(move |conn| Ok((write::touch_api_key(conn, &touched, at)?, None)))
            .await?;
        self.keys.touched(id, at);
        Ok(())
    }

    async fn list_api_keys(&self, scope: &Scope) -> Result<Vec<KeyRecord>> {
        let scope = scope.clone();
        self.readers
            .with(move |conn| read::list_api_keys(conn, &scope))
            .await
    }

    async fn revoke_api_key(&self, scope: &Scope, id: &KeyId, at: Millis) -> Result<bool> {
        let (scope, id) = (scope.clone(), id.clone());
        let keys = Arc::clone(&self.keys);
        // Even after a failure: the write may have committed before the answer was lost.
        self.write_then(
            move |conn| Ok((write::revoke_api_key(conn, &scope, &id, at)?, None)),
            move || keys.invalidate(),
        )
        .await
    }

    async fn count_api_keys(&self) -> Result<u64> {
        self.readers.with(read::count_api_keys).await
    }

    async fn append_audit(&self, scope: &Scope, entry: NewAuditEntry) -> Result<AuditEntry> {
        let scope = scope.clone();
        self.write(move |conn| Ok((write::append_audit(conn, &scope, entry)?, None)))
            .await
    }

    async fn list_audit(
        &self,
        scope: &Scope,
        filter: &AuditFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<AuditEntry>> {
        let cursor = cursor
            .map(|c| c.parse::<u64>().map_err(|_| StoreError::BadCursor))
            .transpose()?;
        let (scope, filter) = (scope.clone(), filter.clone());
        let limit = limit.clamp(1, 1000);
        self.readers
            .with(move |conn| read::list_audit(conn, &scope, &filter, cursor, limit))
            .await
    }

    async fn verify_audit(&self, scope: &Scope) -> Result<AuditVerify> {
        let scope = scope.clone();
        self.readers
            .with(move |conn| read::verify_audit(conn, &scope))
            .await
    }

    async fn audit_workspaces(&self) -> Result<Vec<Scope>> {
        self.readers.with(read::audit_workspaces).await
    }

    async fn create_end_user(&self, scope: &Scope, user: EndUser) -> Result<EndUser> {
        let scope = scope.clone();
        self.write(move |conn| Ok((end_users::create(conn, &scope, &user)?, None)))
            .await
    }

    async fn find_end_user(&self, scope: &Scope, id_or_external: &str) -> Result<Option<EndUser>> {
        let (scope, key) = (scope.clone(), id_or_external.to_owned());
        self.readers
            .with(move |conn| end_users::find(conn, &scope, &key))
            .await
    }

    async fn list_end_users(
        &self,
        scope: &Scope,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<EndUser>> {
        let cursor = cursor
            .map(|c| EndUserId::parse(c).map_err(|_| StoreError::BadCursor))
            .transpose()?;
        let scope = scope.clone();
        let limit = limit.clamp(1, 200);
        self.readers
            .with(move |conn| end_users::list(conn, &scope, cursor.as_ref(), limit))
            .await
    }

    async fn delete_end_user(&self, scope: &Scope, id: &EndUserId) -> Result<bool> {
        let (scope, id) = (scope.clone(), id.clone());
        self.write(move |conn| Ok((end_users::delete(conn, &scope, &id)?, None)))
            .await
    }

    async fn create_budget(&self, scope: &Scope, budget: Budget) -> Result<Budget> {
        // Raised first and never lowered on an error: the write may have committed even if its
        // answer was lost, and over-counting costs only a reservation write.
        self.count_budgets(scope, 1);
        let scope = scope.clone();
        self.write(move |conn| Ok((usage::create(conn, &scope, &budget)?, None)))
            .await
    }

    async fn list_budgets(&self, scope: &Scope) -> Result<Vec<Budget>> {
        let scope = scope.clone();
        self.readers
            .with(move |conn| usage::list(conn, &scope))
            .await
    }

    async fn delete_budget(&self, scope: &Scope, id: &BudgetId) -> Result<bool> {
        let deleted = {
            let (scope, id) = (scope.clone(), id.clone());
            self.write(move |conn| Ok((usage::delete(conn, &scope, &id)?, None)))
                .await?
        };
        if deleted {
            self.count_budgets(scope, -1);
        }
        Ok(deleted)
    }

    async fn reserve_budget(&self, scope: &Scope, r: Reservation) -> Result<Option<BudgetRefusal>> {
        if !self.has_budgets(scope) {
            return Ok(None);
        }
        let scope = scope.clone();
        self.write(move |conn| Ok((usage::reserve(conn, &scope, &r)?, None)))
            .await
    }

    async fn usage(&self, scope: &Scope, q: &UsageQuery) -> Result<Vec<UsageRow>> {
        let (scope, q) = (scope.clone(), q.clone());
        self.readers
            .with(move |conn| usage::report(conn, &scope, &q))
            .await
    }

    async fn claim_idempotency(
        &self,
        scope: &Scope,
        key: &str,
        request_hash: &str,
        now: Millis,
    ) -> Result<IdempotencyClaim> {
        let (scope, key, hash) = (scope.clone(), key.to_owned(), request_hash.to_owned());
        self.write(move |conn| {
            Ok((
                write::claim_idempotency(conn, &scope, &key, &hash, now)?,
                None,
            ))
        })
        .await
    }

    async fn complete_idempotency(
        &self,
        scope: &Scope,
        key: &str,
        request_hash: &str,
        response: IdempotentResponse,
    ) -> Result<()> {
        let (scope, key, hash) = (scope.clone(), key.to_owned(), request_hash.to_owned());
        self.write(move |conn| {
            Ok((
                write::complete_idempotency(conn, &scope, &key, &hash, &response)?,
                None,
            ))
        })
        .await
    }

    async fn release_idempotency(
        &self,
        scope: &Scope,
        key: &str,
        request_hash: &str,
    ) -> Result<()> {
        let (scope, key, hash) = (scope.clone(), key.to_owned(), request_hash.to_owned());
        self.write(move |conn| Ok((write::release_idempotency(conn, &scope, &key, &hash)?, None)))
            .await
    }

    // Members and sessions (SQL in `sqlite/members.rs`).

    async fn create_member(&self, scope: &Scope, member: crate::MemberRecord) -> Result<()> {
        let scope = scope.clone();
        self.write(move |conn| Ok((members::create_member(conn, &scope, &member)?, None)))
            .await
    }

    async fn list_members(&self, scope: &Scope) -> Result<Vec<crate::MemberRecord>> {
        let org = scope.org.clone();
        self.readers
            .with(move |conn| members::list_members(conn, &org))
            .await
    }

    async fn get_member(
        &self,
        scope: &Scope,
        id: &paddock_types::MemberId,
    ) -> Result<Option<crate::MemberRecord>> {
        let (org, id) = (scope.org.clone(), id.clone());
        self.readers
            .with(move |conn| members::get_member(conn, &org, &id))
            .await
    }

    async fn remove_member(
        &self,
        scope: &Scope,
        id: &paddock_types::MemberId,
        at: Millis,
    ) -> Result<bool> {
        let (scope, id) = (scope.clone(), id.clone());
        self.write(move |conn| Ok((members::remove_member(conn, &scope, &id, at)?, None)))
            .await
    }

    async fn members_by_email(
        &self,
        email: &str,
    ) -> Result<Vec<(paddock_types::OrgId, crate::MemberRecord)>> {
        let email = email.to_owned();
        self.readers
            .with(move |conn| members::members_by_email(conn, &email))
            .await
    }

    async fn count_members(&self) -> Result<u64> {
        self.readers.with(members::count_members).await
    }

    async fn create_session(&self, scope: &Scope, session: crate::SessionRecord) -> Result<()> {
        let scope = scope.clone();
        self.write(move |conn| Ok((members::create_session(conn, &scope, &session)?, None)))
            .await
    }

    async fn session_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<(Scope, crate::SessionRecord, crate::MemberRecord)>> {
        let hash = token_hash.to_owned();
        self.readers
            .with(move |conn| members::session_by_hash(conn, &hash))
            .await
    }

    async fn revoke_session(&self, scope: &Scope, token_hash: &str, at: Millis) -> Result<bool> {
        let (scope, hash) = (scope.clone(), token_hash.to_owned());
        self.write(move |conn| Ok((members::revoke_session(conn, &scope, &hash, at)?, None)))
            .await
    }

    async fn create_org(
        &self,
        name: &str,
        workspace_name: &str,
        owner_key: KeyRecord,
    ) -> Result<(paddock_types::api::OrgInfo, WorkspaceInfo)> {
        let (name, ws) = (name.to_owned(), workspace_name.to_owned());
        self.write(move |conn| Ok((members::create_org(conn, &name, &ws, &owner_key)?, None)))
            .await
    }

    async fn list_orgs(&self) -> Result<Vec<paddock_types::api::OrgInfo>> {
        self.readers.with(members::list_orgs).await
    }
}

/// Verifies every workspace's audit chain in the data folder without opening the store: the
/// database is opened read-only and the folder lock is not taken, so this works beside a
/// running server (WAL lets the reader see a consistent snapshot).
pub fn verify_audit_offline(
    data_dir: &Path,
    checkpoints: &[paddock_types::api::AuditCheckpoint],
) -> Result<Vec<(Scope, AuditVerify)>> {
    let path = data_dir.join("paddock.db");
    if !path.is_file() {
        return Err(StoreError::Backend(format!(
            "no paddock database at {}",
            path.display()
        )));
    }
    let mut conn = read::open_reader(&path)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version < 4 {
        // Older than the audit trail: nothing recorded yet.
        return Ok(Vec::new());
    }
    // One snapshot for every workspace.
    let tx = conn.transaction()?;
    let mut out = Vec::new();
    let mut scopes = read::audit_workspaces_tx(&tx)?;
    // A checkpoint of a workspace whose entries are all gone still names it.
    for cp in checkpoints {
        let scope = Scope {
            org: cp.org.clone(),
            workspace: cp.workspace.clone(),
            end_user: None,
        };
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    for scope in scopes {
        let mut v = read::verify_audit_tx(&tx, &scope)?;
        for cp in checkpoints
            .iter()
            .filter(|cp| cp.org == scope.org && cp.workspace == scope.workspace)
        {
            let at: Option<String> = tx
                .query_row(
                    "SELECT hash FROM audit WHERE org = ?1 AND workspace = ?2 AND seq = ?3",
                    rusqlite::params![scope.org.as_str(), scope.workspace.as_str(), cp.seq as i64],
                    |r| r.get(0),
                )
                .optional()?;
            v = crate::audit::against_checkpoint(v, cp.seq, &cp.hash, at.as_deref());
        }
        out.push((scope, v));
    }
    Ok(out)
}
