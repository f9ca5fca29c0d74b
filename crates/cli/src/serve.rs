//! `paddock serve`, and the wiring shared with `paddock run` and `paddock bench`.

use crate::config::{self, Config};
use anyhow::{Context, Result};
use paddock_engine::{Engine, EngineConfig};
use paddock_harness::WorkspaceTools;
use paddock_models::{Models, ProviderConfig};
use paddock_store::SqliteStore;
use paddock_types::Scope;
use paddock_types::api::AgentDefinition;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The demo agent shipped inside the binary: it uses the in-process scripted model, so it runs
/// with no API key and no network.
pub fn demo_agent() -> Result<AgentDefinition> {
    let manifest =
        paddock_types::AgentManifest::from_toml(include_str!("../../../agents/demo/agent.toml"))
            .context("bundled demo agent.toml")?;
    let output_schema: serde_json::Value =
        serde_json::from_str(include_str!("../../../agents/demo/output.schema.json"))
            .context("bundled demo output.schema.json")?;
    let mut manifest = manifest;
    if manifest.output_schema.is_none() {
        manifest.output_schema = Some(output_schema);
    }
    Ok(AgentDefinition {
        manifest,
        prompt: include_str!("../../../agents/demo/prompt.md").to_owned(),
    })
}

/// Opens the store under `data_dir` and builds an engine over it (not started).
pub fn open_engine(
    data_dir: &Path,
    providers: &BTreeMap<String, ProviderConfig>,
    engine: EngineConfig,
) -> Result<Arc<Engine>> {
    let store = SqliteStore::open(data_dir)
        .with_context(|| format!("cannot open the data folder {}", data_dir.display()))?;
    let models = Models::new(providers).context("invalid [providers] configuration")?;
    let tools = WorkspaceTools::new(data_dir.join("workspaces"));
    Ok(Engine::new(
        store,
        Arc::new(models),
        Arc::new(tools),
        engine,
    ))
}

/// Registers the bundled demo agent and every agent folder under `agents_dir`.
pub async fn register_agents(engine: &Engine, agents_dir: Option<&Path>) -> Result<Vec<String>> {
    let scope = Scope::default_workspace();
    let mut defs = Vec::new();
    if let Some(dir) = agents_dir {
        defs = paddock_harness::load_all(dir)
            .with_context(|| format!("cannot load the agents in {}", dir.display()))?;
    }
    if !defs.iter().any(|d| d.manifest.name == "demo") {
        defs.push(demo_agent()?);
    }
    let mut names = Vec::new();
    for def in defs {
        let label = format!("{}@{}", def.manifest.name, def.manifest.version);
        engine
            .put_agent(&scope, def)
            .await
            .with_context(|| format!("cannot register agent {label}"))?;
        names.push(label);
    }
    Ok(names)
}

pub async fn serve(file: Option<&Path>, o: &config::Overrides) -> Result<()> {
    let cfg: Config = config::load(file, o)?;
    let engine = open_engine(
        &cfg.data_dir,
        &cfg.providers,
        EngineConfig {
            max_concurrent_runs: cfg.engine.max_concurrent_runs,
            lease: Duration::from_secs(cfg.engine.lease_secs),
            ..EngineConfig::default()
        },
    )?;
    let agents = register_agents(&engine, cfg.agents_dir.as_deref()).await?;
    engine.start();
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        agents = %agents.join(", "),
        "paddock serving on http://{addr}"
    );
    let app = paddock_server::router(paddock_server::AppState {
        engine: Arc::clone(&engine),
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    engine.shutdown();
    tracing::info!("paddock stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
