//! `RunEgress::with_sink`: an allowed request is recorded by the sink before the upstream sees
//! it, is not forwarded when the sink refuses, and every outcome reaches the sink bounded.

use super::support::*;
use paddock_egress::{DenyReason, EgressError, RunEgress};
use paddock_types::event::{EgressDecision, EgressRecord, EgressSink};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

fn get(url: &str) -> paddock_egress::OutboundRequest {
    paddock_egress::OutboundRequest {
        method: http::Method::GET,
        url: url.to_owned(),
        headers: http::HeaderMap::new(),
        body: bytes::Bytes::new(),
    }
}

/// A sink that answers `forwarding` with `accept` and remembers what it was given, and what the
/// upstream had received at the moment each request asked to leave.
struct TestSink {
    accept: bool,
    upstream_seen: Arc<Mutex<Vec<Seen>>>,
    forwarded: Mutex<Vec<(EgressRecord, usize)>>,
    finished: Mutex<Vec<(Option<u64>, EgressRecord)>>,
}

impl TestSink {
    fn new(accept: bool, upstream: &Upstream) -> Arc<Self> {
        Arc::new(Self {
            accept,
            upstream_seen: Arc::clone(&upstream.seen),
            forwarded: Mutex::new(Vec::new()),
            finished: Mutex::new(Vec::new()),
        })
    }
}

impl EgressSink for TestSink {
    fn forwarding(
        &self,
        record: EgressRecord,
    ) -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send + '_>> {
        Box::pin(async move {
            let seen = self.upstream_seen.lock().unwrap().len();
            let mut f = self.forwarded.lock().unwrap();
            f.push((record, seen));
            if self.accept {
                Ok(40 + f.len() as u64)
            } else {
                Err("the run has ended".to_owned())
            }
        })
    }

    fn finished(&self, started: Option<u64>, record: EgressRecord) {
        self.finished.lock().unwrap().push((started, record));
    }
}

#[tokio::test]
async fn an_allowed_request_is_recorded_before_the_upstream_sees_it() {
    let up = Upstream::plain().await;
    let broker = broker(vec![up.addr.to_string()], vec![]);
    let sink = TestSink::new(true, &up);
    let ctx = Arc::new(
        RunEgress::new(
            "run_sink",
            vec![rule("http", "127.0.0.1", up.port())],
            vec![],
        )
        .with_sink(sink.clone()),
    );
    let proxy = start_proxy(&broker, &ctx).await;
    let url = format!("http://127.0.0.1:{}/ok", up.port());
    let r = proxy_get(proxy.addr, "GET", &url, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    proxy.stop().await;
    let forwarded = sink.forwarded.lock().unwrap().clone();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].0.path, "/ok");
    assert_eq!(
        forwarded[0].1, 0,
        "the upstream saw the request before it was recorded"
    );
    let finished = sink.finished.lock().unwrap().clone();
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(finished[0].0, Some(41), "the outcome names its record");
    assert_eq!(finished[0].1.status, Some(200));
    assert!(
        ctx.take_log().is_empty(),
        "with a sink, the log keeps nothing"
    );
}

#[tokio::test]
async fn a_request_the_sink_will_not_record_is_not_forwarded() {
    let up = Upstream::plain().await;
    let broker = broker(vec![up.addr.to_string()], vec![]);
    let sink = TestSink::new(false, &up);
    let ctx = RunEgress::new(
        "run_sink",
        vec![rule("http", "127.0.0.1", up.port())],
        vec![],
    )
    .with_sink(sink.clone());
    let url = format!("http://127.0.0.1:{}/secret-work", up.port());
    let err = broker.request(&ctx, get(&url)).await.unwrap_err();
    assert!(
        matches!(
            err,
            EgressError::Denied {
                reason: DenyReason::NotRecorded
            }
        ),
        "{err:?}"
    );
    assert!(up.seen().is_empty(), "the upstream got {:?}", up.seen());
    let finished = sink.finished.lock().unwrap().clone();
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(finished[0].0, None);
    assert_eq!(finished[0].1.decision, EgressDecision::Denied);
    assert_eq!(finished[0].1.reason, "not_recorded");

    // Through the proxy too.
    let ctx = Arc::new(ctx);
    let proxy = start_proxy(&broker, &ctx).await;
    let r = proxy_get(proxy.addr, "GET", &url, &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.header("paddock-egress-denied"), Some("not_recorded"));
    proxy.stop().await;
    assert!(up.seen().is_empty(), "the upstream got {:?}", up.seen());
}

#[tokio::test]
async fn a_denial_with_a_huge_path_reaches_the_sink_bounded() {
    let up = Upstream::plain().await;
    let broker = broker(vec![], vec![]);
    let sink = TestSink::new(true, &up);
    let ctx = Arc::new(RunEgress::new("run_sink", vec![], vec![]).with_sink(sink.clone()));
    let proxy = start_proxy(&broker, &ctx).await;
    let path = format!("/{}", "x".repeat(60_000));
    let r = proxy_get(
        proxy.addr,
        "GET",
        &format!("http://nowhere.example{path}"),
        &[],
    )
    .await;
    assert_eq!(r.status, 403);
    proxy.stop().await;
    let finished = sink.finished.lock().unwrap().clone();
    assert_eq!(finished.len(), 1);
    let rec = &finished[0].1;
    assert_eq!(rec.reason, "no_rule");
    assert!(
        rec.path.len() <= EgressRecord::MAX_PATH,
        "{}",
        rec.path.len()
    );
    assert_eq!(rec.path_len, Some(60_001));
}
