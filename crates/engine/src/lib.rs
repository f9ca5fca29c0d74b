//! The durable run engine. It creates runs, leases them to in-process workers, drives each one
//! with the harness (model calls through `paddock-models`, tools through a
//! [`ToolExecutor`](paddock_harness::ToolExecutor)), journals every effect through the store,
//! recovers runs a dead worker left behind, parks runs on approvals and cancels them.
//!
//! Durability rule (DESIGN.md, "the journal is the truth"): the journal is made durable before
//! every model call (so a completed tool result is never lost and a re-issued call is counted) and
//! before every non-idempotent tool call (so a crash mid-call is detected as
//! `tool_outcome_unknown` instead of running it twice). An idempotent tool call rides along with
//! the next commit, so a round (model response + tool result) costs one durable write.
//! An allowed egress request is journaled (`egress_started`) before the broker forwards it, so
//! a request an upstream received is on record whatever ends the call ([`recording`]).
//!
//! It must not know HTTP: the server calls [`Engine`]'s methods.

mod drive;
pub mod recording;
pub mod sandboxed;
mod waiters;

pub use sandboxed::{DiskQuota, SandboxTools};

use paddock_harness::{Agent, AgentError, ToolExecutor};
use paddock_models::Models;
use paddock_store::{AgentRecord, Append, DynStore, StoreError};
use paddock_types::api::{AgentDefinition, CreateRun, Run};
use paddock_types::event::ApprovalDecision;
use paddock_types::{ApprovalId, Event, EventKind, NewEvent, RunId, Scope};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// Engine settings (the `[engine]` table of `paddock.toml`).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Runs advanced at once by this process; more wait in `queued`.
    pub max_concurrent_runs: usize,
    /// How long a claimed run stays leased without a heartbeat.
    pub lease: Duration,
    /// How often the dispatcher looks for work when nothing woke it.
    pub poll_interval: Duration,
    /// Runs of one workspace running at once (leased, across every process sharing the
    /// store); more wait in `queued` and start as slots free up. 0 = no cap.
    pub max_running_per_workspace: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_concurrent_runs: 512,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            max_running_per_workspace: 20,
        }
    }
}

/// What went wrong with a request to the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The thing does not exist in this scope: answer 404.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request is well-formed but not acceptable (input schema, metadata, …): answer 422.
    #[error("invalid input: {}", .0.join("; "))]
    InvalidInput(Vec<String>),
    /// The agent definition is broken: answer 422 and name the field.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The agent needs a model provider the server does not have configured.
    #[error(
        "agent {agent} uses model provider {provider:?}, which is not configured on this server"
    )]
    UnknownProvider { agent: String, provider: String },
    /// The state changed under the request (already decided, already ended, version clash).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => EngineError::NotFound(what),
            StoreError::AlreadyDecided => {
                EngineError::Conflict("approval was already decided".to_owned())
            }
            StoreError::Terminal(status) => {
                EngineError::Conflict(format!("run is already {status}"))
            }
            e @ StoreError::AgentVersionExists { .. } => EngineError::Conflict(format!(
                "{e}; bump `version` in agent.toml to publish a change"
            )),
            other => EngineError::Store(other),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

type AgentKey = (String, String, String, String);

/// Most entries in [`Engine::fresh`], and the largest first event (as JSON) it keeps.
const MAX_FRESH: usize = 1_024;
const MAX_FRESH_EVENT_BYTES: usize = 16 << 10;

/// What [`Engine::watch`] returns; dropping it unregisters.
pub struct RunWatch(waiters::Waiter);

impl RunWatch {
    /// Notified (`notify_waiters`) on each commit of the watched run.
    pub fn notify(&self) -> &Notify {
        &self.0.notify
    }
}

pub struct Engine {
    store: DynStore,
    models: Arc<Models>,
    tools: Arc<dyn ToolExecutor>,
    config: EngineConfig,
    worker: String,
    agents: RwLock<HashMap<AgentKey, Arc<Agent>>>,
    /// Runs this process is advancing, with the token that stops them.
    active: Mutex<HashMap<RunId, CancellationToken>>,
    /// The first event of runs this process created that no worker here has claimed yet, so
    /// the claiming worker folds it without reading the journal back: the claim's `last_seq`
    /// of 1 proves nothing was appended since. Runs claimed by another process, or cancelled
    /// while queued, leave their entry behind, so the map is emptied when it reaches
    /// [`MAX_FRESH`]; and only small events are kept, so a backlog of queued runs with large
    /// inputs does not pin them in memory.
    fresh: Mutex<HashMap<RunId, Event>>,
    slots: Arc<Semaphore>,
    waiters: waiters::Waiters,
    wake: Notify,
    shutdown: CancellationToken,
}

impl Engine {
    pub fn new(
        store: DynStore,
        models: Arc<Models>,
        tools: Arc<dyn ToolExecutor>,
        config: EngineConfig,
    ) -> Arc<Self> {
        let slots = Arc::new(Semaphore::new(config.max_concurrent_runs.max(1)));
        Arc::new(Self {
            store,
            models,
            tools,
            worker: format!("worker-{}", uuid::Uuid::now_v7().simple()),
            config,
            agents: RwLock::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            fresh: Mutex::new(HashMap::new()),
            slots,
            waiters: waiters::Waiters::default(),
            wake: Notify::new(),
            shutdown: CancellationToken::new(),
        })
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    pub fn worker_id(&self) -> &str {
        &self.worker
    }

    /// Starts the dispatcher and the lease heartbeat. Runs left behind by a dead process are
    /// claimed on the first pass.
    pub fn start(self: &Arc<Self>) {
        let me = Arc::clone(self);
        tokio::spawn(async move { me.dispatch_loop().await });
        let me = Arc::clone(self);
        tokio::spawn(async move { me.heartbeat_loop().await });
    }

    /// Stops claiming work and stops the runs in progress (they resume on the next start).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        for token in self.lock_active().values() {
            token.cancel();
        }
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, CancellationToken>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_fresh(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Event>> {
        self.fresh.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an agent version after checking that it compiles.
    pub async fn put_agent(&self, scope: &Scope, def: AgentDefinition) -> Result<AgentRecord> {
        let agent = Agent::compile(def.clone())?;
        let record = self.store.put_agent(scope, &def).await?;
        let key = agent_key(scope, &def.manifest.name, &def.manifest.version.to_string());
        self.agents
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Arc::new(agent));
        Ok(record)
    }

    /// The compiled agent of a run (cached per version).
    pub async fn agent(&self, scope: &Scope, name: &str, version: &str) -> Result<Arc<Agent>> {
        let key = agent_key(scope, name, version);
        if let Some(a) = self
            .agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(Arc::clone(a));
        }
        let record = self
            .store
            .get_agent(scope, name, Some(version))
            .await?
            .ok_or(EngineError::NotFound("agent"))?;
        let agent = Arc::new(Agent::compile(record.definition)?);
        self.agents
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Arc::clone(&agent));
        Ok(agent)
    }

    /// Validates and creates a run of the agent's latest version; a worker picks it up at once.
    pub async fn create_run(&self, scope: &Scope, req: CreateRun) -> Result<Run> {
        self.create_run_by(scope, req, None).await
    }

    /// [`Engine::create_run`], recording who started it (an API key or member id) on the run.
    /// The run acts for `scope.end_user` when set.
    pub async fn create_run_by(
        &self,
        scope: &Scope,
        req: CreateRun,
        created_by: Option<String>,
    ) -> Result<Run> {
        let record = self
            .store
            .get_agent(scope, &req.agent, None)
            .await?
            .ok_or(EngineError::NotFound("agent"))?;
        let manifest = &record.definition.manifest;
        let agent = self
            .agent(scope, &manifest.name, &manifest.version.to_string())
            .await?;
        let manifest = agent.manifest();
        if !self.models.has(&manifest.model.provider) {
            return Err(EngineError::UnknownProvider {
                agent: manifest.name.clone(),
                provider: manifest.model.provider.clone(),
            });
        }
        agent
            .validate_input(&req.input)
            .map_err(EngineError::InvalidInput)?;
        let metadata = match req.metadata {
            None => serde_json::Value::Object(Default::default()),
            Some(m @ serde_json::Value::Object(_)) => m,
            Some(_) => {
                return Err(EngineError::InvalidInput(vec![
                    "metadata must be a JSON object".to_owned(),
                ]));
            }
        };
        let rendered = agent.render(&req.input)?;
        let id = RunId::new();
        let first = NewEvent::now(EventKind::RunCreated {
            agent: manifest.name.clone(),
            agent_version: manifest.version.to_string(),
            input: req.input,
            metadata,
            system_prompt: rendered.system_prompt,
            user_message: rendered.user_message,
            sandbox: self.tools.sandbox_tier().to_owned(),
            end_user: scope.end_user.clone(),
            created_by,
        });
        // Remembered before the run exists: a worker may claim it the moment it commits.
        if json_fits(&first.kind, MAX_FRESH_EVENT_BYTES) {
            let mut fresh = self.lock_fresh();
            if fresh.len() >= MAX_FRESH {
                fresh.clear();
            }
            let created = Event {
                seq: 1,
                at: first.at,
                kind: first.kind.clone(),
            };
            fresh.insert(id.clone(), created);
        }
        let run = match self.store.create_run(scope, &id, first).await {
            Ok(run) => run,
            Err(e) => {
                self.lock_fresh().remove(&id);
                return Err(e.into());
            }
        };
        self.wake.notify_one();
        Ok(run)
    }

    /// Cancels a run in any non-terminal state.
    pub async fn cancel(&self, scope: &Scope, id: &RunId, reason: Option<String>) -> Result<Run> {
        let run = self
            .store
            .append(
                scope,
                Append {
                    run_id: id.clone(),
                    expected_seq: None,
                    events: vec![NewEvent::now(EventKind::RunCancelled { reason })],
                },
            )
            .await?;
        self.lock_fresh().remove(id);
        let active = self.lock_active().get(id).cloned();
        match active {
            // The worker notices, stops, and cleans up after itself.
            Some(token) => token.cancel(),
            None => self.tools.run_ended(id).await,
        }
        Ok(run)
    }

    /// Records a human decision on a pending approval and puts the run back to work.
    pub async fn decide(
        &self,
        scope: &Scope,
        run_id: &RunId,
        approval_id: &ApprovalId,
        decision: ApprovalDecision,
        comment: Option<String>,
    ) -> Result<Run> {
        let run = self
            .store
            .decide_approval(scope, run_id, approval_id, decision, comment)
            .await?;
        self.wake.notify_one();
        Ok(run)
    }

    /// A watch on every commit of run `id` (an event stream's wake-up): only commits of this run
    /// notify it. Arm [`RunWatch::notify`]'s `notified()` before reading the journal, then await
    /// it, so a commit in between is not missed.
    pub fn watch(&self, id: &RunId) -> RunWatch {
        RunWatch(
            self.waiters
                .register(&self.store, id, waiters::Kind::Commit),
        )
    }

    /// How many waiters and watches commits have woken since start (each registration woken
    /// counts once per notification): what `paddock bench` and tests read to see that a commit
    /// wakes only its own run's streams.
    pub fn run_wakeups(&self) -> u64 {
        self.waiters.wakeups()
    }

    /// Waits until the run is terminal or `timeout` passes; returns its latest projection.
    pub async fn wait(&self, scope: &Scope, id: &RunId, timeout: Duration) -> Result<Run> {
        let waiter = self.waiters.register(&self.store, id, waiters::Kind::End);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Armed before reading, so an end committed in between is not missed.
            let ended = waiter.notify.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let run = self
                .store
                .get_run(scope, id)
                .await?
                .ok_or(EngineError::NotFound("run"))?;
            if run.status.is_terminal() {
                return Ok(run);
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return Ok(run);
            }
        }
    }

    async fn dispatch_loop(self: Arc<Self>) {
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let free = self.slots.available_permits();
            let mut claimed_all = false;
            if free > 0 {
                match self
                    .store
                    .claim(
                        &self.worker,
                        self.lease_ms(),
                        free as u32,
                        std::num::NonZeroU32::new(
                            u32::try_from(self.config.max_running_per_workspace)
                                .unwrap_or(u32::MAX),
                        ),
                    )
                    .await
                {
                    Ok(claimed) => {
                        claimed_all = claimed.len() == free;
                        for c in claimed {
                            self.spawn_run(c.scope, c.run_id, c.last_seq);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "claiming runs failed"),
                }
            }
            if claimed_all {
                // There may be more; come back once a slot frees up.
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    permit = Arc::clone(&self.slots).acquire_owned() => drop(permit),
                }
                continue;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    fn spawn_run(self: &Arc<Self>, scope: Scope, run_id: RunId, last_seq: u64) {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            // Cannot happen (we claimed at most the free slots), but never over-commit.
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let _ = me.store.release(&me.worker, &run_id).await;
            });
            return;
        };
        let token = self.shutdown.child_token();
        self.lock_active().insert(run_id.clone(), token.clone());
        let created = self.lock_fresh().remove(&run_id).filter(|_| last_seq == 1);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = drive::drive(&me, &scope, &run_id, created, &token).await;
            me.lock_active().remove(&run_id);
            if let Err(e) = &outcome {
                tracing::warn!(run_id = %run_id, error = %e, "run stopped");
            }
            // Ended (by this worker, or cancelled under it): its tools' resources can go.
            let ended = !me.shutdown.is_cancelled()
                && matches!(
                    me.store.get_run(&scope, &run_id).await,
                    Ok(Some(run)) if run.status.is_terminal()
                );
            if ended {
                me.tools.run_ended(&run_id).await;
            }
            // Hand the lease back unless the process is shutting down (then it expires and the
            // next process recovers the run). A finished run's lease went with the append that
            // ended it, so it costs no write here.
            if !me.shutdown.is_cancelled()
                && !ended
                && let Err(e) = me.store.release(&me.worker, &run_id).await
            {
                tracing::warn!(run_id = %run_id, error = %e, "releasing lease failed");
            }
            drop(permit);
            me.wake.notify_one();
        });
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let every = self.config.lease / 3;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let ids: Vec<RunId> = self.lock_active().keys().cloned().collect();
            if ids.is_empty() {
                continue;
            }
            match self.store.renew(&self.worker, &ids, self.lease_ms()).await {
                Ok(lost) => {
                    let active = self.lock_active();
                    for id in lost {
                        if let Some(t) = active.get(&id) {
                            tracing::warn!(run_id = %id, "lease lost; stopping run");
                            t.cancel();
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "renewing leases failed"),
            }
        }
    }

    fn lease_ms(&self) -> i64 {
        self.config.lease.as_millis() as i64
    }
}

/// Whether `kind` serializes to at most `limit` bytes of JSON (serializing no further).
fn json_fits(kind: &EventKind, limit: usize) -> bool {
    struct Budget(usize);
    impl std::io::Write for Budget {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self
                .0
                .checked_sub(buf.len())
                .ok_or(std::io::ErrorKind::FileTooLarge)?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(Budget(limit), kind).is_ok()
}

fn agent_key(scope: &Scope, name: &str, version: &str) -> AgentKey {
    (
        scope.org.to_string(),
        scope.workspace.to_string(),
        name.to_owned(),
        version.to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_first_events_are_remembered() {
        let created = |input: &str| EventKind::RunCreated {
            agent: "a".into(),
            agent_version: "1.0.0".into(),
            input: serde_json::Value::String(input.into()),
            metadata: serde_json::json!({}),
            system_prompt: "s".into(),
            user_message: "u".into(),
            sandbox: "none".into(),
            end_user: None,
            created_by: None,
        };
        assert!(json_fits(&created("x"), MAX_FRESH_EVENT_BYTES));
        let big = "x".repeat(MAX_FRESH_EVENT_BYTES);
        assert!(!json_fits(&created(&big), MAX_FRESH_EVENT_BYTES));
    }
}
