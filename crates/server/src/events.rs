//! `GET /v1/runs/{id}/events`: the run's journal as Server-Sent Events (event id = journal seq,
//! `Last-Event-ID` resumes right after it) or, for `Accept: application/json` / `?after=`, as a
//! JSON page.
//!
//! A stream holds a slot of its caller and workspace ([`crate::streams`]) for as long as it is
//! open, and wakes only on commits of its own run ([`paddock_engine::Engine::watch`]), never on
//! another run's.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{ApiQuery, TenantScope};
use crate::streams::StreamSlot;
use crate::{AppState, parse_run_id};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use paddock_types::api::Page;
use paddock_types::{RunId, Scope};
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;

const PAGE: u32 = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    after: Option<u64>,
    limit: Option<u32>,
}

pub(crate) async fn run_events(
    State(st): State<AppState>,
    p: Principal,
    TenantScope(scope): TenantScope,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let store = st.engine.store().clone();
    // 404 for a run outside the scope before choosing a representation.
    store
        .get_run(&scope, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("run"))?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let wants_sse = accept.contains("text/event-stream");
    if !wants_sse && (accept.contains("application/json") || q.after.is_some()) {
        let limit = q.limit.unwrap_or(PAGE).clamp(1, 1000);
        let after = q.after.unwrap_or(0);
        let events = store.events(&scope, &id, after, limit).await?;
        let next_cursor = (events.len() as u32 == limit)
            .then(|| events.last().map(|e| e.seq.to_string()))
            .flatten();
        return Ok(Json(Page {
            data: events,
            next_cursor,
        })
        .into_response());
    }
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_header",
                        "Last-Event-ID must be the journal sequence number of an event",
                    )
                })?,
        ),
    };
    let after = last_event_id.or(q.after).unwrap_or(0);
    let slot = match st
        .rate_limiter
        .streams()
        .acquire(p.actor_id(), p.scope.workspace.as_str())
    {
        Ok(slot) => slot,
        Err(over) => return Ok(over.refusal()),
    };
    let watch = st.engine.watch(&id);
    let stream = sse_stream(store, watch, slot, scope, id, after);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// The stream owns `slot` and `watch`: both are given back when the body is dropped, whether the
/// run ended or the client went away.
fn sse_stream(
    store: paddock_store::DynStore,
    watch: paddock_engine::RunWatch,
    slot: StreamSlot,
    scope: Scope,
    id: RunId,
    mut cursor: u64,
) -> impl futures::Stream<Item = Result<SseEvent, Infallible>> {
    async_stream::stream! {
        let _slot = slot;
        loop {
            // Armed before reading so no commit falls between the read and the wait.
            let committed = watch.notify().notified();
            tokio::pin!(committed);
            committed.as_mut().enable();
            let batch = match store.events(&scope, &id, cursor, PAGE).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(run_id = %id, error = %e, "event stream read failed");
                    break;
                }
            };
            let full = batch.len() as u32 == PAGE;
            let mut ended = false;
            for ev in batch {
                cursor = ev.seq;
                ended = ev.kind.is_terminal();
                let data = serde_json::to_string(&ev).unwrap_or_default();
                yield Ok(SseEvent::default()
                    .id(ev.seq.to_string())
                    .event(ev.kind.type_name())
                    .data(data));
            }
            if ended {
                break;
            }
            if full {
                continue;
            }
            // Nothing new: if the run has already ended (a reconnect after the end), close.
            match store.get_run(&scope, &id).await {
                Ok(Some(run)) if run.last_seq > cursor => continue,
                Ok(Some(run)) if run.status.is_terminal() => break,
                Ok(Some(_)) => {}
                _ => break,
            }
            committed.await;
        }
    }
}
