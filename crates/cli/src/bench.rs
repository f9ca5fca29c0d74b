//! `paddock bench`: the numbers the README quotes. In-process scripted model with zero latency,
//! SQLite on disk with full durability (synchronous=FULL, one fsync per group commit), the real
//! engine and the real workspace tools. Prints one JSON object (`--output json`) or a table.

mod records;

use crate::Output;
use crate::serve::{Tools, open_runtime};
use anyhow::{Context, Result, bail};
use paddock_engine::{Engine, EngineConfig};
use paddock_types::api::{AgentDefinition, CreateRun};
use paddock_types::{AgentManifest, RunId, RunStatus, Scope};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BENCH_AGENT: &str = r#"
name = "bench"
version = "1.0.0"
description = "benchmark agent driven by the scripted model"
[model]
provider = "scripted"
name = "bench"
[limits]
max_steps = 100000
# The scripted model bills the whole conversation on every call, so a 1,000-call run uses
# hundreds of millions of tokens.
max_tokens = 1000000000000
timeout = "1h"
[tools.write_file]
"#;

const WAIT_AGENT: &str = r#"
name = "wait"
version = "1.0.0"
description = "parks on an approval at its first tool call"
[model]
provider = "scripted"
name = "bench"
[tools.write_file]
approval = "always"
"#;

const PROMPT: &str = "Benchmark.\n```mock\n{{ input.mock | tojson }}\n```\n";

fn tool_turns(n: usize) -> serde_json::Value {
    json!({"mock": {"turns": [
        {"tool": "write_file", "args": {"path": "f.txt", "content": "x"}, "repeat": n},
        {"final": "done"}
    ]}})
}

fn agent(manifest: &str) -> Result<AgentDefinition> {
    Ok(AgentDefinition {
        manifest: AgentManifest::from_toml(manifest)?,
        prompt: PROMPT.to_owned(),
    })
}

async fn start(
    engine: &Engine,
    scope: &Scope,
    agent: &str,
    input: serde_json::Value,
) -> Result<RunId> {
    Ok(engine
        .create_run(
            scope,
            CreateRun {
                agent: agent.to_owned(),
                input,
                metadata: None,
            },
        )
        .await?
        .id)
}

async fn finish(engine: &Engine, scope: &Scope, id: &RunId) -> Result<()> {
    let run = engine.wait(scope, id, Duration::from_secs(600)).await?;
    if run.status != RunStatus::Succeeded {
        bail!("bench run {} ended {}: {:?}", id, run.status, run.error);
    }
    Ok(())
}

pub async fn bench(output: Output, waiting_runs: usize) -> Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary data folder")?;
    let runtime = open_runtime(
        dir.path(),
        &BTreeMap::new(),
        // The throughput numbers measure the engine, not the per-workspace cap.
        EngineConfig {
            max_running_per_workspace: 0,
            ..EngineConfig::default()
        },
        Tools::InProcess,
    )
    .await?;
    let engine = Arc::clone(&runtime.engine);
    let scope = Scope::default_workspace();
    engine.put_agent(&scope, agent(BENCH_AGENT)?).await?;
    engine.start();

    // Warm up (page cache, statement cache, allocator).
    let id = start(&engine, &scope, "bench", tool_turns(20)).await?;
    finish(&engine, &scope, &id).await?;

    eprintln!("single run: 100 tool calls (201 steps)…");
    let mut single = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let id = start(&engine, &scope, "bench", tool_turns(100)).await?;
        finish(&engine, &scope, &id).await?;
        single.push(t.elapsed().as_secs_f64() * 1000.0 / 201.0);
    }
    let single_run_ms_per_step = median(&mut single);

    eprintln!("concurrent: 200 runs × 10 tool calls…");
    let mut rates = Vec::new();
    let mut per_step = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        // 200 clients at once: their creations share commits like their steps do.
        let runs = (0..200).map(|_| async {
            let id = start(&engine, &scope, "bench", tool_turns(10)).await?;
            finish(&engine, &scope, &id).await
        });
        for r in futures::future::join_all(runs).await {
            r?;
        }
        let secs = t.elapsed().as_secs_f64();
        rates.push(200.0 / secs);
        per_step.push(secs * 1000.0 / (200.0 * 21.0));
    }
    let concurrent_runs_per_s = median(&mut rates);
    let concurrent_ms_per_step = median(&mut per_step);

    eprintln!("history flatness: one run of 1,010 tool calls…");
    let history_flatness_ratio = flatness(&engine, &scope).await?;

    eprintln!("auth: 2,000 GET /v1/runs/{{id}} in-process, with and without authentication…");
    let auth_overhead_us_p50 = auth_overhead(&runtime, &scope, &id).await?;
    engine.shutdown();

    eprintln!("waiting runs: {waiting_runs} runs parked on an approval in a `paddock serve`…");
    let waiting_runs_peak_rss_mb = waiting_rss(waiting_runs).await?;

    eprintln!(
        "sandbox: spawn + `true` in the process tier, 200 times spaced and 200 back to back…"
    );
    let (sandbox_spawn_ms_p50, sandbox_spawn_back_to_back_ms_p50) = sandbox_spawn().await?;

    eprintln!("egress: 2,000 GETs to a loopback upstream, direct and through the broker…");
    let egress = paddock_egress::bench_overhead(2000)
        .await
        .context("egress benchmark")?;
    let egress_added_ms_p50 = egress.added_ms_p50();
    eprintln!("redaction: build the secret matcher for 1,000 secrets, scan 16 MiB…");
    let matcher = paddock_egress::bench_matcher(1000).context("matcher benchmark")?;

    eprintln!("egress records: journal 1,000 forwarded requests before they leave…");
    let egress_record_ms_p50 = records::egress_record_ms_p50().await?;

    eprintln!("audit: verify a chain of 10,000 entries…");
    let audit_verify_ms_per_10k = audit_verify().await?;

    let result = json!({
        "single_run_ms_per_step": round3(single_run_ms_per_step),
        "concurrent_runs_per_s": round3(concurrent_runs_per_s),
        "concurrent_ms_per_step": round3(concurrent_ms_per_step),
        "history_flatness_ratio": round3(history_flatness_ratio),
        "waiting_runs_peak_rss_mb": round3(waiting_runs_peak_rss_mb),
        "sandbox_spawn_ms_p50": round3(sandbox_spawn_ms_p50),
        "sandbox_spawn_back_to_back_ms_p50": round3(sandbox_spawn_back_to_back_ms_p50),
        "egress_added_ms_p50": round3(egress_added_ms_p50),
        "redactor_build_ms_1000_secrets": round3(matcher.build_ms),
        "secret_scan_mib_per_s": round3(matcher.scan_mib_per_s),
        "egress_record_ms_p50": round3(egress_record_ms_p50),
        "audit_verify_ms_per_10k": round3(audit_verify_ms_per_10k),
        "auth_overhead_us_p50": round3(auth_overhead_us_p50),
    });
    match output {
        Output::Json => println!("{result}"),
        Output::Text => {
            if let Some(o) = result.as_object() {
                for (k, v) in o {
                    println!("{k:<28} {v}");
                }
            }
        }
    }
    Ok(())
}

/// What authentication adds to a request: the median time of an authenticated
/// `GET /v1/runs/{id}` through the real router (key lookup, permission check, rate limit with a
/// quota it never reaches, audit decision) minus the median of the same request on the same
/// router with authentication bypassed in-process, in microseconds. The two kinds alternate so
/// drift hits both alike.
async fn auth_overhead(runtime: &crate::serve::Runtime, scope: &Scope, run: &RunId) -> Result<f64> {
    const N: usize = 2000;
    let store = runtime.engine.store();
    store.ensure_workspace(scope, "default").await?;
    let secret = paddock_vault::new_api_key_secret()?;
    let key = paddock_store::KeyRecord {
        id: paddock_types::KeyId::new(),
        name: "bench".to_owned(),
        role: paddock_types::Role::Owner,
        prefix: paddock_vault::api_key_display_prefix(&secret),
        secret_hash: paddock_vault::hash_api_key(&secret),
        created_at: paddock_types::time::now_ms(),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        scopes: None,
    };
    store.create_api_key(scope, key.clone()).await?;
    let state = paddock_server::AppState {
        engine: Arc::clone(&runtime.engine),
        vault: Arc::clone(&runtime.vault),
        // On, as in `paddock serve`, but never reached: its check is part of the cost.
        rate_limiter: Arc::new(paddock_server::RateLimiter::new(
            paddock_server::RateLimits {
                per_key: Some(paddock_server::Quota {
                    per_second: 1e9,
                    burst: 1_000_000,
                }),
                per_workspace: Some(paddock_server::Quota {
                    per_second: 1e9,
                    burst: 1_000_000,
                }),
            },
        )),
        sessions: Arc::new(paddock_server::Sessions::default()),
    };
    let principal = paddock_server::Principal::key(key.id.clone(), key.role, scope.clone());
    let authed = paddock_server::router(state.clone());
    let bypass = paddock_server::router_with_principal(state, principal);
    let uri = format!("/v1/runs/{run}");
    let bearer = format!("Bearer {secret}");
    for _ in 0..200 {
        timed_get(&authed, &uri, &bearer).await?;
        timed_get(&bypass, &uri, &bearer).await?;
    }
    let (mut with, mut without) = (Vec::with_capacity(N), Vec::with_capacity(N));
    for _ in 0..N {
        with.push(timed_get(&authed, &uri, &bearer).await?);
        without.push(timed_get(&bypass, &uri, &bearer).await?);
    }
    Ok(median(&mut with) - median(&mut without))
}

/// One in-process GET through `app`, answer read to the end; microseconds. Fails unless 200.
async fn timed_get(app: &axum::Router, uri: &str, bearer: &str) -> Result<f64> {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use tower::ServiceExt;
    let req = Request::get(uri)
        .header(header::AUTHORIZATION, bearer)
        .body(Body::empty())?;
    let app = app.clone();
    let t = Instant::now();
    let resp = app.oneshot(req).await?;
    let status = resp.status();
    axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
    let took = t.elapsed();
    if status != StatusCode::OK {
        bail!("GET {uri} answered {status}");
    }
    Ok(took.as_secs_f64() * 1e6)
}

/// Median time of `verify_audit` over a 10,000-entry chain on a fresh store (appended
/// concurrently, so group commit keeps the setup short).
async fn audit_verify() -> Result<f64> {
    let dir = tempfile::tempdir().context("cannot create a temporary data folder")?;
    let store: paddock_store::DynStore = paddock_store::SqliteStore::open(dir.path())?;
    let scope = Scope::default_workspace();
    for chunk in 0..20 {
        let appends = (0..500).map(|i| {
            let mut e = paddock_store::conformance::audit_entry(
                "run.created",
                &format!("run/{chunk}-{i}"),
                paddock_types::time::now_ms(),
            );
            e.detail = json!({"agent": "bench", "agent_version": "1.0.0"});
            let (store, scope) = (Arc::clone(&store), scope.clone());
            async move { store.append_audit(&scope, e).await }
        });
        for r in futures::future::join_all(appends).await {
            r?;
        }
    }
    let mut times = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let v = store.verify_audit(&scope).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        if !v.ok || v.entries != 10_000 {
            bail!("the benchmark chain does not verify: {v:?}");
        }
    }
    Ok(median(&mut times))
}

/// Per-step cost late in a long run divided by the cost early in it, from the commit times of
/// the run's journal: the time to advance the journal by one event from seq ~30 on versus from
/// ~3,000 on (about 10 and 1,000 steps of history).
async fn flatness(engine: &Arc<Engine>, scope: &Scope) -> Result<f64> {
    let mut rx = engine.store().subscribe();
    let id = start(engine, scope, "bench", tool_turns(1010)).await?;
    let mut marks: Vec<(Instant, u64)> = Vec::new();
    loop {
        match rx.recv().await {
            Ok(c) if c.run_id == id => {
                marks.push((Instant::now(), c.last_seq));
                if c.status.is_terminal() {
                    break;
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(e) => bail!("commit notifications stopped: {e}"),
        }
    }
    let run = engine.wait(scope, &id, Duration::from_secs(600)).await?;
    if run.status != RunStatus::Succeeded {
        bail!("flatness run ended {}: {:?}", run.status, run.error);
    }
    let last = marks.last().map(|m| m.1).unwrap_or(0);
    if last < 3400 {
        bail!("flatness run too short: {last} events");
    }
    let window = |from: u64, len: u64| -> Option<f64> {
        let a = marks.iter().find(|m| m.1 >= from)?;
        let b = marks.iter().find(|m| m.1 >= a.1 + len)?;
        Some(b.0.duration_since(a.0).as_secs_f64() / (b.1 - a.1) as f64)
    };
    // The median of six 50-event windows in each place, so that one WAL checkpoint or slow
    // fsync landing in a window does not decide the ratio.
    let per_event = |from: u64| -> Option<f64> {
        let mut w = (0..6)
            .map(|i| window(from + 50 * i, 50))
            .collect::<Option<Vec<f64>>>()?;
        Some(median(&mut w))
    };
    let early = per_event(30).context("no early window")?;
    let late = per_event(3000).context("no late window")?;
    Ok(late / early)
}

/// Starts a real `paddock serve`, parks `n` runs on an approval through the API and reads the
/// server's peak RSS (VmHWM) from /proc.
async fn waiting_rss(n: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let agents = dir.path().join("agents/wait");
    std::fs::create_dir_all(&agents)?;
    std::fs::write(agents.join("agent.toml"), WAIT_AGENT)?;
    std::fs::write(agents.join("prompt.md"), PROMPT)?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let exe = std::env::current_exe()?;
    let admin_key = paddock_vault::new_api_key_secret()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--agents")
        .arg(dir.path().join("agents"))
        .env("PADDOCK_LOG", "warn")
        // Thousands of creations and polls from one key: measure memory, not the limits.
        .env("PADDOCK_RATE_LIMITS__PER_KEY_PER_SECOND", "0")
        .env("PADDOCK_RATE_LIMITS__PER_WORKSPACE_PER_SECOND", "0")
        .env("PADDOCK_ENGINE__MAX_RUNNING_PER_WORKSPACE", "0")
        .env(crate::serve::ENV_ADMIN_KEY, &admin_key)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("cannot start paddock serve")?;
    let pid = child.id().context("server has no pid")?;
    let base = format!("http://127.0.0.1:{port}");
    let http = crate::client::http_client(Some(&admin_key))?;
    let mut up = false;
    for _ in 0..200 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !up {
        bail!("paddock serve did not come up");
    }
    let input = json!({"mock": {"turns": [
        {"tool": "write_file", "args": {"path": "a.txt", "content": "x"}},
        {"final": "done"}
    ]}});
    let body = json!({"agent": "wait", "input": input});
    use futures::StreamExt;
    let results: Vec<Result<()>> = futures::stream::iter(0..n)
        .map(|_| {
            let http = http.clone();
            let url = format!("{base}/v1/runs");
            let body = body.clone();
            async move {
                let r = http.post(url).json(&body).send().await?;
                if !r.status().is_success() {
                    bail!("create run: {}", r.status());
                }
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r?;
    }
    // Wait until every run is parked.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let page: serde_json::Value = http
            .get(format!("{base}/v1/runs"))
            .query(&[("status", "waiting"), ("limit", "1")])
            .send()
            .await?
            .json()
            .await?;
        let queued: serde_json::Value = http
            .get(format!("{base}/v1/runs"))
            .query(&[("status", "queued"), ("limit", "1")])
            .send()
            .await?
            .json()
            .await?;
        let running: serde_json::Value = http
            .get(format!("{base}/v1/runs"))
            .query(&[("status", "running"), ("limit", "1")])
            .send()
            .await?
            .json()
            .await?;
        let empty = |v: &serde_json::Value| v["data"].as_array().is_none_or(|a| a.is_empty());
        if !empty(&page) && empty(&queued) && empty(&running) {
            break;
        }
        if Instant::now() > deadline {
            bail!("runs did not all park within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM in /proc status")?;
    let _ = child.kill().await;
    let _ = Path::new(&dir.path());
    Ok(hwm_kb / 1024.0)
}

/// Median time to create a process-tier sandbox and run `true` in it (fresh namespaces, mounts,
/// Landlock, seccomp and limits each time, as for every tool call): first with calls 20 ms apart,
/// as tool calls arrive between model calls (the driver prepares the next sandbox meanwhile),
/// then back to back, where preparing sandboxes is the bottleneck on two cores.
async fn sandbox_spawn() -> Result<(f64, f64)> {
    use paddock_sandbox::{ExecSpec, SandboxDriver, bench_spawn, percentile};
    let helper = paddock_sandbox::HelperCommand::current_exe()?;
    let driver = paddock_sandbox::ProcessDriver::new(helper)
        .context("the process sandbox is not available on this host")?;
    // Warm the page cache and the helper binary.
    bench_spawn(&driver, 10).await?;
    let ws = tempfile::tempdir()?;
    let mut spaced = Vec::with_capacity(200);
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        let out = driver.exec(ExecSpec::new(ws.path(), ["true"])).await?;
        spaced.push(t.elapsed());
        if !out.success() {
            bail!("sandboxed `true` failed: {out:?}");
        }
    }
    let back_to_back = bench_spawn(&driver, 200).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok((
        ms(percentile(&spaced, 0.5)),
        ms(percentile(&back_to_back, 0.5)),
    ))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match (v.get(n.wrapping_sub(1) / 2), v.get(n / 2)) {
        (Some(lo), Some(hi)) => (lo + hi) / 2.0,
        _ => f64::NAN,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
