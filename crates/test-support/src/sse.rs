//! Reading a run's journal as Server-Sent Events.

use crate::WAIT;
use crate::client::Api;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;

/// One SSE event as received.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    /// `data` parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE event data is not JSON ({e}): {self:?}"))
    }
}

impl Api {
    /// Opens `path` as an event stream (optionally resuming after `last_event_id`) and collects
    /// events until the server ends the stream or `max` events arrived. Panics if the answer is
    /// not a 200 event stream, the stream breaks, or it is still open after [`WAIT`].
    pub async fn sse(
        &self,
        path: &str,
        last_event_id: Option<&str>,
        max: Option<usize>,
    ) -> Vec<SseEvent> {
        let mut req = self
            .http()
            .get(self.url(path))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let collect = async {
            let resp = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("SSE request to {path} failed: {e:?}"));
            let status = resp.status();
            let ctype = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            if status != 200 || !ctype.starts_with("text/event-stream") {
                let body = resp.text().await.unwrap_or_default();
                panic!("SSE {path}: expected a 200 event stream, got {status} {ctype}: {body}");
            }
            let mut stream = resp.bytes_stream().eventsource();
            let mut events = Vec::new();
            while let Some(item) = stream.next().await {
                let ev = item.unwrap_or_else(|e| {
                    panic!("SSE {path} broke after {} events: {e:?}", events.len())
                });
                events.push(SseEvent {
                    id: ev.id,
                    event: ev.event,
                    data: ev.data,
                });
                if max.is_some_and(|m| events.len() >= m) {
                    break;
                }
            }
            events
        };
        tokio::time::timeout(WAIT, collect)
            .await
            .unwrap_or_else(|_| panic!("SSE {path} did not end within {WAIT:?}"))
    }
}
