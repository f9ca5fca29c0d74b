//! Advancing one leased run: fold its journal, then loop over the harness's next step,
//! performing effects and journaling their results under the durability rule in the crate doc.

use crate::recording::{CallSink, EgressTally, FORWARDED_PER_RUN, Forward, without_outcome};
use crate::{Engine, EngineError};
use paddock_harness::{Agent, RunState, Step, next_step};
use paddock_models::ModelRequest;
use paddock_store::{Append, BudgetRefusal, Reservation, StoreError};
use paddock_types::billing::{BudgetSubject, usd_to_micros};
use paddock_types::event::EgressSink;
use paddock_types::time::now_ms;
use paddock_types::{ErrorCode, Event, EventKind, NewEvent, RunError, RunId, Scope, ToolCall};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why a worker stopped advancing a run without ending it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Stop {
    #[error("run changed under the worker (cancelled or taken over)")]
    Superseded,
    #[error("worker stopped: {0}")]
    Interrupted(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Journal writer for one activation: events are applied to the state as they are decided and
/// buffered until the next durable flush.
struct Journal<'a> {
    engine: &'a Engine,
    scope: &'a Scope,
    run_id: &'a RunId,
    state: RunState,
    buffer: Vec<NewEvent>,
    /// Last seq known durable.
    durable_seq: u64,
}

impl Journal<'_> {
    fn push(&mut self, kind: EventKind) {
        let ev = Event {
            seq: self.state.last_seq + 1,
            at: now_ms(),
            kind,
        };
        self.state.apply(&ev);
        self.buffer.push(NewEvent {
            at: ev.at,
            kind: ev.kind,
        });
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let events = std::mem::take(&mut self.buffer);
        let expected = self.durable_seq;
        match self
            .engine
            .store
            .append_seq(
                self.scope,
                Append {
                    run_id: self.run_id.clone(),
                    expected_seq: Some(expected),
                    events,
                },
            )
            .await
        {
            Ok(last_seq) => {
                self.durable_seq = last_seq;
                Ok(())
            }
            Err(StoreError::Conflict { .. } | StoreError::Terminal(_)) => Err(Stop::Superseded),
            Err(e) => Err(Stop::Store(e)),
        }
    }
}

pub(crate) async fn drive(
    engine: &Arc<Engine>,
    scope: &Scope,
    run_id: &RunId,
    // The run's only event, when the engine knows it (a run it created, claimed untouched).
    created: Option<Event>,
    cancel: &CancellationToken,
) -> Result<(), Stop> {
    let events = match created {
        Some(first) => vec![first],
        None => engine.store.events(scope, run_id, 0, u32::MAX).await?,
    };
    let state = RunState::from_events(&events);
    let mut egress = EgressTally::from_events(&events);
    drop(events);
    if state.terminal {
        return Ok(());
    }
    let recovered = state.active;
    let mut j = Journal {
        engine,
        scope,
        run_id,
        durable_seq: state.last_seq,
        state,
        buffer: Vec::new(),
    };
    let agent = match engine
        .agent(scope, &j.state.agent, &j.state.agent_version)
        .await
    {
        Ok(a) => a,
        Err(e) => {
            let error = RunError::new(
                ErrorCode::AgentError,
                format!(
                    "agent {} {} cannot run: {e}",
                    j.state.agent, j.state.agent_version
                ),
            );
            j.push(EventKind::RunFailed { error });
            return j.flush().await;
        }
    };
    let timeout = agent.manifest().limits.timeout;
    let used = Duration::from_millis(j.state.active_ms().max(0) as u64);
    let deadline = Instant::now() + timeout.saturating_sub(used);
    if recovered {
        tracing::info!(run_id = %run_id, "recovering run left by a stopped worker");
    }
    j.push(EventKind::RunStarted {
        worker: engine.worker.clone(),
        recovered,
    });
    // Forwarded requests whose outcome a stopped worker never journaled: they reached (or may
    // have reached) the upstream, and the journal says so.
    for (seq, (call_id, request)) in std::mem::take(&mut egress.open) {
        j.push(EventKind::EgressRequest {
            call_id,
            request: without_outcome(request, "outcome_unknown"),
            started: Some(seq),
        });
    }
    loop {
        if cancel.is_cancelled() {
            return Err(Stop::Interrupted("cancelled"));
        }
        if Instant::now() >= deadline {
            j.push(timed_out(timeout));
            return j.flush().await;
        }
        match next_step(&j.state, &agent) {
            Step::Done => return j.flush().await,
            Step::Park => return j.flush().await,
            Step::Record(kinds) => {
                for k in kinds {
                    j.push(k);
                }
            }
            Step::CallModel {
                call_index,
                reissue,
            } => {
                if let Some(refusal) = reserve(engine, &j, &agent, call_index).await? {
                    j.push(EventKind::RunFailed {
                        error: budget_exceeded(&refusal),
                    });
                    return j.flush().await;
                }
                j.push(EventKind::ModelRequested {
                    call_index,
                    provider: agent.manifest().model.provider.clone(),
                    model: agent.manifest().model.name.clone(),
                    reissue,
                });
                j.flush().await?;
                call_model(
                    engine, &mut j, &agent, call_index, cancel, deadline, timeout,
                )
                .await?;
            }
            Step::RunTool {
                call,
                idempotent,
                rerun,
            } => {
                j.push(EventKind::ToolCallStarted {
                    call_id: call.id.clone(),
                    tool: call.name.clone(),
                    idempotent,
                    rerun,
                });
                if !idempotent {
                    j.flush().await?;
                }
                tracing::debug!(run_id = %run_id, call_id = %call.id, tool = %call.name, "tool executing");
                let started = Instant::now();
                let ended = run_tool(&mut j, &agent, &call, deadline, &mut egress).await?;
                let Some(out) = ended else {
                    j.push(timed_out(timeout));
                    return j.flush().await;
                };
                j.push(EventKind::ToolCallCompleted {
                    call_id: call.id,
                    tool: call.name,
                    output: out.content,
                    is_error: out.is_error,
                    duration_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
    }
}

/// Executes one tool call until it ends or the deadline fires (`None`), journaling its egress
/// on the way: each allowed request durably before the broker forwards it, and every record the
/// call's sink holds once the call is over, however it ended.
async fn run_tool(
    j: &mut Journal<'_>,
    agent: &Agent,
    call: &ToolCall,
    deadline: Instant,
    egress: &mut EgressTally,
) -> Result<Option<paddock_harness::ToolOutput>, Stop> {
    let engine = j.engine;
    let (sink, mut forwards) = CallSink::new(egress.room());
    let sink = Arc::new(sink);
    let shared: Arc<dyn EgressSink> = sink.clone();
    let ctx = paddock_harness::ToolContext {
        scope: j.scope,
        run_id: j.run_id,
        agent,
        egress: Some(&shared),
    };
    let mut exec = engine.tools.execute(ctx, call);
    let expiry = tokio::time::sleep_until(deadline.into());
    tokio::pin!(expiry);
    let ended = loop {
        tokio::select! {
            // The deadline first, so a call that keeps its requests queued cannot outrun it;
            // then requests waiting to leave: the call may be waiting on them.
            biased;
            () = &mut expiry => break None,
            Some(forward) = forwards.recv() => {
                journal_forward(j, &call.id, forward, egress).await?;
            }
            out = &mut exec => break Some(out),
        }
    };
    // Dropping a call cut short stops its egress proxy; what its connections record from now
    // on arrives after `close` and is covered by the outcomes journaled below.
    drop(exec);
    drop(forwards);
    if let Some(out) = &ended {
        // An executor without a sink hands its records back with the output.
        for record in out.egress.iter().cloned() {
            sink.finished(None, record);
        }
    }
    let finished = sink.close();
    let counts = finished.omitted();
    for (started, request) in finished.kept {
        match started {
            Some(seq) => {
                egress.open.remove(&seq);
            }
            None => egress.unforwarded += 1,
        }
        j.push(EventKind::EgressRequest {
            call_id: call.id.clone(),
            request,
            started,
        });
    }
    let why = if ended.is_some() {
        "no_outcome"
    } else {
        "cut_by_deadline"
    };
    for (seq, (call_id, request)) in std::mem::take(&mut egress.open) {
        j.push(EventKind::EgressRequest {
            call_id,
            request: without_outcome(request, why),
            started: Some(seq),
        });
    }
    if !counts.is_empty() {
        j.push(EventKind::EgressOmitted {
            call_id: call.id.clone(),
            counts,
        });
    }
    Ok(ended)
}

/// Journals an allowed request durably, then lets the broker forward it; refuses it past the
/// run's cap, or when the journal will not take it (the run ended under the worker).
async fn journal_forward(
    j: &mut Journal<'_>,
    call_id: &str,
    forward: Forward,
    egress: &mut EgressTally,
) -> Result<(), Stop> {
    if egress.forwarded >= FORWARDED_PER_RUN {
        let _ = forward.ack.send(Err(format!(
            "the run reached its cap of {FORWARDED_PER_RUN} forwarded requests"
        )));
        return Ok(());
    }
    let record = forward.record.clone();
    j.push(EventKind::EgressStarted {
        call_id: call_id.to_owned(),
        request: forward.record,
    });
    let seq = j.state.last_seq;
    match j.flush().await {
        Ok(()) => {
            egress.forwarded += 1;
            egress.open.insert(seq, (call_id.to_owned(), record));
            let _ = forward.ack.send(Ok(seq));
            Ok(())
        }
        Err(stop) => {
            let _ = forward
                .ack
                .send(Err("the run's journal did not take the record".to_owned()));
            Err(stop)
        }
    }
}

async fn call_model(
    engine: &Engine,
    j: &mut Journal<'_>,
    agent: &Agent,
    call_index: u32,
    cancel: &CancellationToken,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), Stop> {
    let m = &agent.manifest().model;
    let run_id = j.run_id.to_string();
    let req = request(j, agent, &run_id, call_index);
    let call = engine.models.call(&m.provider, &req, cancel);
    let outcome = tokio::time::timeout_at(deadline.into(), call).await;
    if cancel.is_cancelled() {
        return Err(Stop::Interrupted("cancelled"));
    }
    match outcome {
        Err(_) => j.push(timed_out(timeout)),
        Ok(Ok(o)) => j.push(EventKind::ModelResponded {
            call_index,
            response: o.response,
            cost_usd: o.cost_usd,
            retries: o.retries,
            latency_ms: o.latency_ms,
        }),
        Ok(Err(e)) => {
            j.push(EventKind::RunFailed {
                error: RunError::new(
                    ErrorCode::ModelError,
                    format!(
                        "model call failed after {} retries: {}",
                        e.retries, e.message
                    ),
                ),
            });
            return j.flush().await;
        }
    }
    if j.state.terminal {
        return j.flush().await;
    }
    Ok(())
}

fn request<'a>(
    j: &'a Journal<'_>,
    agent: &'a Agent,
    run_id: &'a str,
    call_index: u32,
) -> ModelRequest<'a> {
    let m = &agent.manifest().model;
    ModelRequest {
        model: &m.name,
        messages: &j.state.messages,
        tools: agent.tool_specs(),
        temperature: m.temperature,
        top_p: m.top_p,
        max_output_tokens: m.max_output_tokens,
        run_id,
        call_index,
    }
}

/// Holds the next call's most expensive outcome against the budgets that apply to the run; a
/// refusal means the call must not be made.
async fn reserve(
    engine: &Engine,
    j: &Journal<'_>,
    agent: &Agent,
    call_index: u32,
) -> Result<Option<BudgetRefusal>, Stop> {
    let run_id = j.run_id.to_string();
    let max = engine.models.max_cost_usd(
        &agent.manifest().model.provider,
        &request(j, agent, &run_id, call_index),
    );
    let hold = Reservation {
        run_id: j.run_id.clone(),
        agent: agent.manifest().name.clone(),
        micros: usd_to_micros(max),
        at: now_ms(),
    };
    Ok(engine.store.reserve_budget(j.scope, hold).await?)
}

fn budget_exceeded(r: &BudgetRefusal) -> RunError {
    let b = &r.budget;
    let whom = match (b.subject, &b.agent, &b.end_user) {
        (BudgetSubject::Workspace, _, _) => "the workspace".to_owned(),
        (BudgetSubject::Agent, Some(a), _) => format!("agent {a}"),
        (BudgetSubject::Agent, None, _) => "each agent".to_owned(),
        (BudgetSubject::EndUser, _, Some(eu)) => format!("end-user {eu}"),
        (BudgetSubject::EndUser, _, None) => "each end-user".to_owned(),
    };
    RunError::new(
        ErrorCode::BudgetExceeded,
        format!(
            "budget {} ({whom}, ${} per {}) has no room for the next model call: \
             ${:.6} spent this {}, ${:.6} held by calls in flight, this call may cost up to ${:.6}",
            b.id,
            b.limit_usd,
            b.period.as_str(),
            r.spent_usd,
            b.period.as_str(),
            r.held_usd,
            r.requested_usd
        ),
    )
}

fn timed_out(timeout: Duration) -> EventKind {
    EventKind::RunTimedOut {
        error: RunError::new(
            ErrorCode::LimitExceeded,
            format!("timeout limit ({}) exceeded", humantime_secs(timeout)),
        ),
    }
}

fn humantime_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

impl From<Stop> for EngineError {
    fn from(s: Stop) -> Self {
        match s {
            Stop::Store(e) => e.into(),
            other => EngineError::Conflict(other.to_string()),
        }
    }
}
