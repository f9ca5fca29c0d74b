//! The engine's side of egress records: the sink a tool call's broker context writes to, and
//! the caps that keep what one run can make the journal hold bounded.
//!
//! The sink belongs to the worker driving the run, not to the tool call, so records made while a
//! call is torn down (its deadline fired, its sandbox died) still reach the worker, which
//! journals what it holds in every exit path of the call. An allowed request is journaled as
//! `egress_started` *before* the broker forwards it (the worker appends it durably and only then
//! lets the request go), so even a SIGKILL leaves a trace; its outcome follows as an
//! `egress_request` that names the `egress_started` seq, and a recovering worker closes the
//! ones whose outcome was lost.
//!
//! It must not know HTTP or the broker's internals: it sees [`EgressRecord`]s only.

use paddock_types::event::{EgressCount, EgressDecision, EgressRecord, EgressSink};
use paddock_types::{Event, EventKind};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use tokio::sync::{mpsc, oneshot};

/// Most `egress_request` events one tool call journals for requests that were not forwarded
/// (denials); the rest are counted in one `egress_omitted` event.
pub const EGRESS_EVENTS_PER_CALL: usize = 100;
/// Most such events one run journals over all its calls.
pub const EGRESS_EVENTS_PER_RUN: usize = 1_000;
/// Most requests one run may forward: each costs an `egress_started` and an `egress_request`
/// event, so later ones are refused (`not_recorded`) rather than forwarded without a record.
pub const FORWARDED_PER_RUN: usize = 2_000;
/// Distinct hosts an `egress_omitted` event counts one by one; the others count under `*`.
pub const OMITTED_HOSTS: usize = 100;
/// Requests waiting at once for the worker to journal them before they leave.
pub(crate) const FORWARDING_QUEUE: usize = 16;

/// An allowed request waiting to be journaled; the answer is its `egress_started` seq.
pub(crate) struct Forward {
    pub record: EgressRecord,
    pub ack: oneshot::Sender<Result<u64, String>>,
}

/// The sink of one tool call.
pub(crate) struct CallSink {
    forwards: mpsc::Sender<Forward>,
    finished: Mutex<Finished>,
}

impl CallSink {
    /// A sink that keeps at most `room` records of requests that were not forwarded.
    pub(crate) fn new(room: usize) -> (Self, mpsc::Receiver<Forward>) {
        let (forwards, rx) = mpsc::channel(FORWARDING_QUEUE);
        let sink = Self {
            forwards,
            finished: Mutex::new(Finished {
                room,
                ..Finished::default()
            }),
        };
        (sink, rx)
    }

    /// Takes what the call's records came to and stops taking more (records that arrive later
    /// belong to requests the worker closes itself).
    pub(crate) fn close(&self) -> Finished {
        let mut f = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        let room = f.room;
        let taken = std::mem::take(&mut *f);
        f.closed = true;
        f.room = room;
        taken
    }
}

impl EgressSink for CallSink {
    fn forwarding(
        &self,
        record: EgressRecord,
    ) -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send + '_>> {
        Box::pin(async move {
            let gone = || "the tool call's run no longer records egress".to_owned();
            let (ack, answer) = oneshot::channel();
            self.forwards
                .send(Forward { record, ack })
                .await
                .map_err(|_| gone())?;
            answer.await.map_err(|_| gone())?
        })
    }

    fn finished(&self, started: Option<u64>, record: EgressRecord) {
        let mut f = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        f.add(started, record);
    }
}

/// The finished records of one call: bounded by construction.
#[derive(Default)]
pub(crate) struct Finished {
    /// Outcomes of forwarded requests (always kept: their number is capped by
    /// [`FORWARDED_PER_RUN`]) and the first `room` other records, oldest first.
    pub kept: Vec<(Option<u64>, EgressRecord)>,
    room: usize,
    /// Counts of the records past `room`, by (host, allowed), at most [`OMITTED_HOSTS`] + 1 keys.
    omitted: HashMap<(String, bool), u64>,
    /// Keys in first-seen order, so the summary reads in the order things happened.
    order: Vec<(String, bool)>,
    closed: bool,
}

impl Finished {
    fn add(&mut self, started: Option<u64>, mut record: EgressRecord) {
        if self.closed {
            return;
        }
        record.bound();
        if started.is_some() {
            self.kept.push((started, record));
            return;
        }
        if self.room > 0 {
            self.room -= 1;
            self.kept.push((None, record));
            return;
        }
        let allowed = record.decision == EgressDecision::Allowed;
        let mut key = (record.host, allowed);
        if !self.omitted.contains_key(&key) && self.order.len() >= OMITTED_HOSTS {
            key.0 = "*".to_owned();
        }
        let count = self.omitted.entry(key.clone()).or_insert_with(|| {
            self.order.push(key);
            0
        });
        *count += 1;
    }

    /// The `egress_omitted` counts, in first-seen order (empty when nothing was omitted).
    pub(crate) fn omitted(&self) -> Vec<EgressCount> {
        self.order
            .iter()
            .map(|key| EgressCount {
                host: key.0.clone(),
                decision: if key.1 {
                    EgressDecision::Allowed
                } else {
                    EgressDecision::Denied
                },
                count: self.omitted.get(key).copied().unwrap_or(0),
            })
            .collect()
    }
}

/// What a run's journal already holds of egress: the counts the caps apply to, and the
/// forwarded requests whose outcome is not journaled (by `egress_started` seq).
#[derive(Debug, Default)]
pub(crate) struct EgressTally {
    /// `egress_request` events of requests that were not forwarded.
    pub unforwarded: usize,
    /// `egress_started` events.
    pub forwarded: usize,
    pub open: BTreeMap<u64, (String, EgressRecord)>,
}

impl EgressTally {
    pub(crate) fn from_events(events: &[Event]) -> Self {
        let mut t = Self::default();
        for ev in events {
            match &ev.kind {
                EventKind::EgressStarted { call_id, request } => {
                    t.forwarded += 1;
                    t.open.insert(ev.seq, (call_id.clone(), request.clone()));
                }
                EventKind::EgressRequest {
                    started: Some(seq), ..
                } => {
                    t.open.remove(seq);
                }
                EventKind::EgressRequest { started: None, .. } => t.unforwarded += 1,
                _ => {}
            }
        }
        t
    }

    /// How many records of requests that were not forwarded the next call may journal.
    pub(crate) fn room(&self) -> usize {
        EGRESS_EVENTS_PER_CALL.min(EGRESS_EVENTS_PER_RUN.saturating_sub(self.unforwarded))
    }
}

/// The outcome to journal for a forwarded request whose real outcome was lost: its started
/// record, with why it has no outcome appended to the reason.
pub(crate) fn without_outcome(mut record: EgressRecord, why: &str) -> EgressRecord {
    record.reason = format!("{} error:{why}", record.reason);
    record.bound();
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(host: &str) -> EgressRecord {
        EgressRecord {
            method: "GET".into(),
            scheme: "http".into(),
            host: host.into(),
            port: 80,
            path: "/".into(),
            status: None,
            bytes_sent: 0,
            bytes_received: 0,
            decision: EgressDecision::Denied,
            reason: "no_rule".into(),
            credential: None,
            host_len: None,
            path_len: None,
        }
    }

    #[test]
    fn records_past_the_room_are_counted_by_host_and_forwarded_outcomes_are_always_kept() {
        let (sink, _rx) = CallSink::new(3);
        for i in 0..10 {
            sink.finished(None, denied(if i % 2 == 0 { "a.test" } else { "b.test" }));
        }
        sink.finished(Some(7), denied("c.test"));
        let f = sink.close();
        assert_eq!(f.kept.len(), 4);
        assert_eq!(f.kept[3].0, Some(7));
        let counts = f.omitted();
        assert_eq!(counts.len(), 2);
        // Kept: a, b, a; then b and a alternate from the fourth on.
        assert_eq!(counts[0].host, "b.test");
        assert_eq!(counts[0].count, 4);
        assert_eq!(counts[1].host, "a.test");
        assert_eq!(counts[1].count, 3);
        sink.finished(None, denied("late.test"));
        assert!(sink.close().kept.is_empty(), "a closed sink takes nothing");
    }

    #[test]
    fn the_tally_counts_the_runs_records_and_finds_forwarded_requests_without_an_outcome() {
        let ev = |seq: u64, kind: EventKind| Event { seq, at: 0, kind };
        let request = |started: Option<u64>| EventKind::EgressRequest {
            call_id: "c".into(),
            request: denied("a.test"),
            started,
        };
        let started = || EventKind::EgressStarted {
            call_id: "c".into(),
            request: denied("a.test"),
        };
        let mut events = vec![ev(1, started()), ev(2, started()), ev(3, request(Some(1)))];
        for seq in 4..(4 + EGRESS_EVENTS_PER_RUN as u64 - 30) {
            events.push(ev(seq, request(None)));
        }
        let t = EgressTally::from_events(&events);
        assert_eq!(t.forwarded, 2);
        assert_eq!(t.unforwarded, EGRESS_EVENTS_PER_RUN - 30);
        assert_eq!(t.open.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(t.room(), 30, "the run's cap leaves less than a call's");
        assert_eq!(EgressTally::default().room(), EGRESS_EVENTS_PER_CALL);
    }

    #[test]
    fn distinct_hosts_past_the_cap_share_one_count() {
        let (sink, _rx) = CallSink::new(0);
        for i in 0..(OMITTED_HOSTS + 50) {
            sink.finished(None, denied(&format!("h{i}.test")));
        }
        let counts = sink.close().omitted();
        assert_eq!(counts.len(), OMITTED_HOSTS + 1);
        let other = counts.iter().find(|c| c.host == "*").map(|c| c.count);
        assert_eq!(other, Some(50));
        let total: u64 = counts.iter().map(|c| c.count).sum();
        assert_eq!(total, (OMITTED_HOSTS + 50) as u64);
    }
}
