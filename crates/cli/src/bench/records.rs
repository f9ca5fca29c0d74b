//! What recording an allowed egress request before it leaves costs: a tool call asks the
//! engine's sink to journal 1,000 forwarded requests one after another, as the broker does
//! before each one, through the real worker loop and SQLite with full durability. The time of
//! each `forwarding` answer is the latency the broker adds to a forwarded request for it.

use anyhow::{Context, Result, bail};
use paddock_engine::{Engine, EngineConfig};
use paddock_harness::{ToolContext, ToolExecutor, ToolOutput};
use paddock_models::Models;
use paddock_store::{DynStore, SqliteStore};
use paddock_types::api::CreateRun;
use paddock_types::event::{EgressDecision, EgressRecord};
use paddock_types::{RunStatus, Scope, ToolCall};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REQUESTS: usize = 1_000;

/// A tool that "forwards" [`REQUESTS`] requests through the call's sink, timing each record.
struct Forwarder {
    times_ms: Mutex<Vec<f64>>,
}

#[async_trait::async_trait]
impl ToolExecutor for Forwarder {
    fn sandbox_tier(&self) -> &'static str {
        "none"
    }

    async fn execute(&self, ctx: ToolContext<'_>, _call: &ToolCall) -> ToolOutput {
        let Some(sink) = ctx.egress else {
            return ToolOutput::error("no egress sink");
        };
        let record = EgressRecord {
            method: "GET".into(),
            scheme: "https".into(),
            host: "api.example.com".into(),
            port: 443,
            path: "/v1/items".into(),
            status: None,
            bytes_sent: 0,
            bytes_received: 0,
            decision: EgressDecision::Allowed,
            reason: "rule:0".into(),
            credential: Some("api_token".into()),
            host_len: None,
            path_len: None,
        };
        let mut times = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let t = Instant::now();
            let id = match sink.forwarding(record.clone()).await {
                Ok(id) => id,
                Err(e) => return ToolOutput::error(e),
            };
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            let mut done = record.clone();
            done.status = Some(200);
            sink.finished(Some(id), done);
        }
        *self.times_ms.lock().unwrap_or_else(|p| p.into_inner()) = times;
        ToolOutput::ok("forwarded")
    }
}

/// The median time to journal one forwarded request before it may leave, in milliseconds.
pub(super) async fn egress_record_ms_p50() -> Result<f64> {
    let dir = tempfile::tempdir().context("cannot create a temporary data folder")?;
    let store: DynStore = SqliteStore::open(dir.path()).context("cannot open the store")?;
    let models = Models::new(&BTreeMap::new()).context("scripted model")?;
    let tools = Arc::new(Forwarder {
        times_ms: Mutex::new(Vec::new()),
    });
    let engine = Engine::new(
        store,
        Arc::new(models),
        Arc::clone(&tools) as Arc<dyn ToolExecutor>,
        EngineConfig::default(),
    );
    let scope = Scope::default_workspace();
    engine
        .put_agent(&scope, super::agent(super::BENCH_AGENT)?)
        .await?;
    engine.start();
    let run = engine
        .create_run(
            &scope,
            CreateRun {
                agent: "bench".to_owned(),
                input: super::tool_turns(1),
                metadata: None,
            },
        )
        .await?;
    let ended = engine
        .wait(&scope, &run.id, Duration::from_secs(600))
        .await?;
    engine.shutdown();
    if ended.status != RunStatus::Succeeded {
        bail!(
            "egress record bench run ended {}: {:?}",
            ended.status,
            ended.error
        );
    }
    let mut times = std::mem::take(&mut *tools.times_ms.lock().unwrap_or_else(|p| p.into_inner()));
    if times.len() != REQUESTS {
        bail!("egress record bench timed {} requests", times.len());
    }
    Ok(super::median(&mut times))
}
