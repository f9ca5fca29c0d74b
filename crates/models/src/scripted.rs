//! The in-process `scripted` provider: the mock directive without HTTP, for engine tests, the
//! demo agent and benchmarks. It goes through the same retry loop as the HTTP providers so a
//! scripted fault behaves like a real one (a `retry_after` really sleeps).

use crate::ModelRequest;
use crate::retry::{AttemptError, RetryPolicy, retryable_status};
use crate::script::{Decision, Fault, FaultCounters, Reply, ScriptCache, Summary, decide};
use paddock_types::ModelResponse;
use std::time::Duration;

pub(crate) const POLICY: RetryPolicy = RetryPolicy {
    max_retries: 4,
    base: Duration::from_millis(10),
    max: Duration::from_millis(200),
    timeout: None,
};

#[derive(Debug, Default)]
pub(crate) struct Scripted {
    scripts: ScriptCache,
    faults: FaultCounters,
}

impl Scripted {
    pub fn new() -> Self {
        Self::default()
    }

    /// One attempt. Never awaits anything: the future only exists to fit the retry loop.
    pub async fn attempt(&self, req: &ModelRequest<'_>) -> Result<ModelResponse, AttemptError> {
        self.answer(req)
    }

    fn answer(&self, req: &ModelRequest<'_>) -> Result<ModelResponse, AttemptError> {
        let summary = Summary::of_messages(req.messages);
        let script = self.scripts.get(summary.system.as_deref()).map_err(|e| {
            AttemptError::Fatal(format!("scripted provider: invalid mock directive: {e}"))
        })?;
        match decide(
            script.as_deref(),
            &summary,
            || req.idempotency_key(),
            &self.faults,
        ) {
            Decision::Fault(Fault::Status {
                status,
                retry_after,
            }) => {
                let reason =
                    format!("scripted provider answered {status}: injected by the mock directive");
                Err(if retryable_status(status) {
                    AttemptError::Retryable {
                        reason,
                        status: Some(status),
                        retry_after: retry_after.map(Duration::from_secs),
                    }
                } else {
                    AttemptError::Fatal(reason)
                })
            }
            Decision::Fault(Fault::Drop) => Err(AttemptError::retryable(
                "scripted provider: stream cut before its end (injected by the mock directive)",
            )),
            Decision::Reply(reply) => {
                let usage = summary.usage(&reply);
                let (content, tool_calls, stop) = match reply {
                    Reply::Text(t) => (Some(t), Vec::new(), "stop"),
                    Reply::Tool(call) => (None, vec![call], "tool_calls"),
                };
                Ok(ModelResponse {
                    model: req.model.to_owned(),
                    content,
                    tool_calls,
                    usage,
                    stop_reason: Some(stop.to_owned()),
                })
            }
        }
    }
}
