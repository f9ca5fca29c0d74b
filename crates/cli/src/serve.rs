//! `paddock serve`, and the wiring shared with `paddock run` and `paddock bench`.

use crate::config::{self, Config};
use crate::config::{EgressSection, SandboxSection};
use anyhow::{Context, Result};
use paddock_egress::{Broker, BrokerConfig, CaPem, generate_ca};
use paddock_engine::{DiskQuota, SandboxTools};
use paddock_engine::{Engine, EngineConfig};
use paddock_harness::ToolExecutor;
use paddock_harness::WorkspaceTools;
use paddock_models::{Models, ProviderConfig};
use paddock_sandbox::{HelperCommand, Limits, NoneDriver, ProcessDriver, SandboxDriver};
use paddock_store::{DynStore, SqliteStore};
use paddock_types::Scope;
use paddock_types::api::AgentDefinition;
use paddock_types::{OrgId, WorkspaceId};
use paddock_vault::Vault;
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

/// Everything a process needs to run agents over one data folder.
pub struct Runtime {
    pub engine: Arc<Engine>,
    pub vault: Arc<Vault>,
}

/// Where a runtime's tools run.
pub enum Tools<'a> {
    /// In a sandbox per call, per `[sandbox]`, with egress per `[egress]`.
    Sandboxed(&'a SandboxSection, &'a EgressSection),
    /// The file tools in-process over the workspace folder, no sandbox and no network (the
    /// benchmark, which measures the engine rather than process spawning).
    InProcess,
}

/// Opens the store and the vault under `data_dir` and builds an engine over them (not started).
pub async fn open_runtime(
    data_dir: &Path,
    providers: &BTreeMap<String, ProviderConfig>,
    engine: EngineConfig,
    tools: Tools<'_>,
) -> Result<Runtime> {
    let store: DynStore = SqliteStore::open(data_dir)
        .with_context(|| format!("cannot open the data folder {}", data_dir.display()))?;
    let vault = Arc::new(
        Vault::open(Arc::clone(&store), data_dir)
            .await
            .context("cannot open the secret vault")?,
    );
    let models = Models::new(providers).context("invalid [providers] configuration")?;
    let workspaces = data_dir.join("workspaces");
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&workspaces)
            .with_context(|| format!("cannot create {}", workspaces.display()))?;
    }
    let tools: Arc<dyn ToolExecutor> = match tools {
        Tools::InProcess => Arc::new(WorkspaceTools::new(workspaces)),
        Tools::Sandboxed(sandbox, egress) => {
            let driver = sandbox_driver(sandbox)?;
            let broker = egress_broker(&vault, egress).await?;
            Arc::new(
                SandboxTools::new(
                    driver,
                    broker,
                    Arc::clone(&vault),
                    workspaces,
                    sandbox_limits(sandbox),
                    sandbox.keep_workspaces,
                )
                .with_disk_quota(DiskQuota {
                    workspace_bytes: sandbox.workspace_mb << 20,
                    tenant_bytes: sandbox.tenant_workspace_mb << 20,
                    reserve_bytes: sandbox.disk_reserve_mb << 20,
                    workspace_entries: sandbox.workspace_files,
                }),
            )
        }
    };
    let engine = Engine::new(store, Arc::new(models), tools, engine);
    Ok(Runtime { engine, vault })
}

fn sandbox_driver(cfg: &SandboxSection) -> Result<Arc<dyn SandboxDriver>> {
    let driver: Arc<dyn SandboxDriver> = match cfg.tier.as_str() {
        "none" => Arc::new(NoneDriver::new()),
        _ => {
            let helper =
                HelperCommand::current_exe().context("cannot locate the paddock binary")?;
            Arc::new(ProcessDriver::new(helper).context(
                "the process sandbox is not available on this host; fix what is missing, or set \
                 [sandbox] tier = \"none\" in paddock.toml to run tools WITHOUT isolation \
                 (development only)",
            )?)
        }
    };
    tracing::info!(report = %driver.report(), "sandbox ready");
    Ok(driver)
}

fn sandbox_limits(cfg: &SandboxSection) -> Limits {
    Limits {
        memory_bytes: cfg.memory_mb << 20,
        pids: cfg.pids,
        cpu_secs: cfg.cpu_secs,
        wall: Duration::from_secs(cfg.call_timeout_secs),
        output_bytes: cfg.output_kb << 10,
        tmp_bytes: cfg.tmp_mb << 20,
        file_bytes: cfg.file_mb << 20,
        ..Limits::default()
    }
}

/// Secrets of the platform itself live in a workspace no API key can name.
fn internal_scope() -> Result<Scope> {
    Ok(Scope {
        org: OrgId::parse("org_paddock")?,
        workspace: WorkspaceId::parse("ws_internal")?,
        end_user: None,
    })
}

const CA_KEY: &str = "paddock.egress-ca-key";
const CA_CERT: &str = "paddock.egress-ca-cert";

/// The broker, with the per-installation interception CA: created on first start, its private
/// key kept in the vault.
async fn egress_broker(vault: &Vault, cfg: &EgressSection) -> Result<Arc<Broker>> {
    let scope = internal_scope()?;
    let ca = match (
        vault.get(&scope, CA_KEY).await?,
        vault.get(&scope, CA_CERT).await?,
    ) {
        (Some(key), Some(cert)) => CaPem {
            cert_pem: cert.expose().to_owned(),
            key_pem: key.expose().to_owned(),
        },
        _ => {
            let ca = generate_ca("Paddock egress CA").context("cannot create the egress CA")?;
            vault.put(&scope, CA_CERT, &ca.cert_pem).await?;
            vault.put(&scope, CA_KEY, &ca.key_pem).await?;
            tracing::info!("created the egress broker's interception CA (key kept in the vault)");
            ca
        }
    };
    let mut broker = BrokerConfig::new(ca);
    broker.allow_private = cfg.allow_private.clone();
    broker.plaintext_credentials = cfg.plaintext_credentials.clone();
    for path in &cfg.extra_root_certs {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("egress.extra_root_certs: cannot read {}", path.display()))?;
        broker.extra_roots_pem.push(pem);
    }
    Broker::new(broker).context("invalid [egress] configuration")
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

/// Refuses a data folder that group or others may read or write (it holds every tenant's
/// journal, the workspaces and the master key), unless the operator said it is deliberate.
fn check_data_dir_private(dir: &Path, allow_shared: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match std::fs::metadata(dir) {
        Ok(meta) => meta.permissions().mode() & 0o777,
        // Created 0700 when the store opens it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", dir.display())),
    };
    if mode & 0o077 == 0 {
        return Ok(());
    }
    if allow_shared {
        tracing::warn!(data_dir = %dir.display(), mode = format!("{mode:o}"), "the data folder is readable or writable by other users (allowed by allow_shared_data_dir)");
        return Ok(());
    }
    anyhow::bail!(
        "the data folder {dir} is readable or writable by other users (mode {mode:o}), and it holds every tenant's journal and the master key; run `chmod 700 {dir}` (or start with --allow-shared-data-dir if this is deliberate)",
        dir = dir.display()
    )
}

pub async fn serve(file: Option<&Path>, o: &config::Overrides) -> Result<()> {
    let cfg: Config = config::load(file, o)?;
    check_data_dir_private(&cfg.data_dir, cfg.allow_shared_data_dir)?;
    let Runtime { engine, vault } = open_runtime(
        &cfg.data_dir,
        &cfg.providers,
        EngineConfig {
            max_concurrent_runs: cfg.engine.max_concurrent_runs,
            lease: Duration::from_secs(cfg.engine.lease_secs),
            max_running_per_workspace: cfg.engine.max_running_per_workspace,
            ..EngineConfig::default()
        },
        Tools::Sandboxed(&cfg.sandbox, &cfg.egress),
    )
    .await?;
    let agents = register_agents(&engine, cfg.agents_dir.as_deref()).await?;
    bootstrap_admin_key(engine.store()).await?;
    bootstrap_admin_member(engine.store()).await?;
    audit_config_change(engine.store(), &cfg.effective).await?;
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
    let limits = cfg.rate_limits.limits()?;
    let app = paddock_server::router(paddock_server::AppState {
        engine: Arc::clone(&engine),
        vault,
        rate_limiter: Arc::new(
            paddock_server::RateLimiter::new(limits)
                .with_stream_caps(cfg.rate_limits.stream_caps()),
        ),
        sessions: Arc::new(paddock_server::Sessions::new(
            paddock_server::SessionSettings {
                ttl: Duration::from_secs(cfg.auth.session_ttl_secs),
                throttle: cfg.auth.throttle()?,
            },
        )),
    });
    // Peer addresses reach the audit trail through ConnectInfo.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    engine.shutdown();
    tracing::info!("paddock stopped");
    Ok(())
}

/// Records `config.changed` in the first workspace's audit trail when the effective
/// configuration differs from the one the last start recorded (or none was recorded): the
/// SHA-256 of the whole and of each top-level section, and which sections changed. Values are
/// not copied into the trail.
async fn audit_config_change(store: &DynStore, effective: &serde_json::Value) -> Result<()> {
    use paddock_store::{AuditFilter, NewAuditEntry, audit::sha256_hex};
    let digest = |v: &serde_json::Value| sha256_hex(canonical(v).to_string().as_bytes());
    let sections: serde_json::Map<String, serde_json::Value> = effective
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(digest(v))))
        .collect();
    let hash = digest(effective);
    let scope = Scope::default_workspace();
    let filter = AuditFilter {
        action: Some("config.changed".to_owned()),
        ..AuditFilter::default()
    };
    let mut last = None;
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_audit(&scope, &filter, cursor.as_deref(), 1000)
            .await?;
        last = page.data.last().cloned().or(last);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let previous = last.as_ref().map(|e| &e.detail);
    if previous.and_then(|d| d["sha256"].as_str()) == Some(hash.as_str()) {
        return Ok(());
    }
    let before = previous
        .and_then(|d| d["sections"].as_object())
        .cloned()
        .unwrap_or_default();
    let mut changed: Vec<&String> = sections
        .keys()
        .chain(before.keys())
        .filter(|k| sections.get(*k) != before.get(*k))
        .collect();
    changed.sort();
    changed.dedup();
    store
        .append_audit(
            &scope,
            NewAuditEntry {
                at: paddock_types::time::now_ms(),
                actor: paddock_types::api::AuditActor::system(),
                action: "config.changed".to_owned(),
                resource: "config".to_owned(),
                outcome: "ok".to_owned(),
                ip: None,
                user_agent: None,
                detail: serde_json::json!({
                    "sha256": hash,
                    "previous_sha256": previous.and_then(|d| d["sha256"].as_str()),
                    "changed": changed,
                    "sections": sections,
                }),
            },
        )
        .await?;
    tracing::info!(sections = ?changed, "configuration changed since the last start; recorded in the audit trail");
    Ok(())
}

/// `v` with every object's keys sorted, so equal configurations hash equally.
fn canonical(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let sorted: std::collections::BTreeMap<&String, serde_json::Value> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            serde_json::json!(sorted)
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The environment variable that supplies the first owner key instead of a generated one.
pub const ENV_ADMIN_KEY: &str = "PADDOCK_ADMIN_KEY";

/// On a store without any API key: creates the default org and workspace and an owner key,
/// `PADDOCK_ADMIN_KEY` if set, else a generated one printed once to stderr. Never logs a key.
pub async fn bootstrap_admin_key(store: &DynStore) -> Result<()> {
    let supplied = std::env::var(ENV_ADMIN_KEY).ok().filter(|k| !k.is_empty());
    if let Some(k) = &supplied
        && !paddock_vault::is_api_key_secret(k)
    {
        anyhow::bail!(
            "{ENV_ADMIN_KEY} must look like `pdk_` followed by at least {} letters, digits, `-` or `_`",
            paddock_vault::API_KEY_MIN_LEN
        );
    }
    if store.count_api_keys().await? > 0 {
        return Ok(());
    }
    let scope = Scope::default_workspace();
    store.ensure_workspace(&scope, "default").await?;
    let secret = match &supplied {
        Some(k) => k.clone(),
        None => paddock_vault::new_api_key_secret()?,
    };
    let record = paddock_store::KeyRecord {
        id: paddock_types::KeyId::new(),
        name: "admin (bootstrap)".to_owned(),
        role: paddock_types::Role::Owner,
        prefix: paddock_vault::api_key_display_prefix(&secret),
        secret_hash: paddock_vault::hash_api_key(&secret),
        created_at: paddock_types::time::now_ms(),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        scopes: None,
    };
    store.create_api_key(&scope, record).await?;
    if supplied.is_some() {
        tracing::info!("registered {ENV_ADMIN_KEY} as the owner key of the default workspace");
    } else {
        eprintln!(
            "\n============================================================\n\
             admin API key (shown once, store it now):\n\n    {secret}\n\n\
             use it with: export PADDOCK_API_KEY=<the key above>\n\
             ============================================================\n"
        );
    }
    Ok(())
}

/// The environment variables that create the first owner member (a person who logs in with
/// `paddock login`).
pub const ENV_ADMIN_EMAIL: &str = "PADDOCK_ADMIN_EMAIL";
pub const ENV_ADMIN_PASSWORD: &str = "PADDOCK_ADMIN_PASSWORD";

/// On a store without any member, with `PADDOCK_ADMIN_EMAIL` and `PADDOCK_ADMIN_PASSWORD` set:
/// creates an owner member of the default org (every workspace). Never logs the password.
pub async fn bootstrap_admin_member(store: &DynStore) -> Result<()> {
    let email = std::env::var(ENV_ADMIN_EMAIL)
        .ok()
        .filter(|v| !v.is_empty());
    let password = std::env::var(ENV_ADMIN_PASSWORD)
        .ok()
        .filter(|v| !v.is_empty());
    let (email, password) = match (email, password) {
        (None, None) => return Ok(()),
        (Some(e), Some(p)) => (e.trim().to_owned(), p),
        _ => anyhow::bail!("set both {ENV_ADMIN_EMAIL} and {ENV_ADMIN_PASSWORD}, or neither"),
    };
    paddock_server::check_credentials(&email, &password)
        .map_err(|e| anyhow::anyhow!("{ENV_ADMIN_EMAIL}/{ENV_ADMIN_PASSWORD}: {e}"))?;
    if store.count_members().await? > 0 {
        tracing::info!("members exist already; {ENV_ADMIN_EMAIL} is ignored");
        return Ok(());
    }
    let scope = Scope::default_workspace();
    store.ensure_workspace(&scope, "default").await?;
    let member = paddock_store::MemberRecord {
        id: paddock_types::MemberId::new(),
        email,
        password_hash: paddock_server::hash_password(password)
            .await
            .map_err(|e| anyhow::anyhow!("cannot hash the admin password: {}", e.detail))?,
        role: paddock_types::Role::Owner,
        workspace: None,
        created_at: paddock_types::time::now_ms(),
        removed_at: None,
    };
    store.create_member(&scope, member.clone()).await?;
    tracing::info!(member = %member.id, email = %member.email, "created the owner member from {ENV_ADMIN_EMAIL}; log in with `paddock login`");
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
