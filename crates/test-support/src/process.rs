//! The binary's long-running commands as child processes: `paddock mock-llm` and `paddock serve`.
//! Their stderr goes to files so a test can read everything a process logged, even after it was
//! killed, and so a chatty child never blocks on a full pipe.

use crate::client::Api;
use crate::fixtures::AgentFixture;
use crate::{POLL, WAIT};
use serde_json::Value;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;
use tempfile::TempDir;

/// A 127.0.0.1 port that was free a moment ago. Prefer letting a child bind port 0 and reading
/// the address it reports (what [`MockLlm`] and [`Server`] do): nothing can take it in between.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free port on 127.0.0.1: {e}"))
}

/// A command for the binary with a clean environment: no inherited `PADDOCK_*` variable can
/// change the configuration under test, and logs are plain text (no ANSI colours) so they parse.
fn command(bin: &Path, cwd: &Path, log_filter: &str, stderr: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PADDOCK_") {
            cmd.env_remove(k);
        }
    }
    let log = File::create(stderr)
        .unwrap_or_else(|e| panic!("cannot create log file {}: {e}", stderr.display()));
    cmd.current_dir(cwd)
        .env("PADDOCK_LOG", log_filter)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    cmd
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Waits until `log` contains `marker` followed by an address, and returns that address, or the
/// whole log if the child exits first. Panics (with the log) when the deadline passes.
async fn address_from_log(
    child: &mut Child,
    log: &Path,
    marker: &str,
    what: &str,
) -> Result<SocketAddr, String> {
    let start = Instant::now();
    loop {
        let text = read_lossy(log);
        if let Some(pos) = text.find(marker) {
            let rest = &text[pos + marker.len()..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '\u{1b}')
                .unwrap_or(rest.len());
            // The line may still be half-written: only accept it once it ends.
            if end < rest.len() {
                let addr = &rest[..end];
                return Ok(addr.parse().unwrap_or_else(|e| {
                    panic!("{what}: cannot parse address {addr:?} from its log ({e}):\n{text}")
                }));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited ({status}) before it was ready; its stderr:\n{}",
                read_lossy(log)
            ));
        }
        if start.elapsed() > WAIT {
            panic!("{what} did not report its address within {WAIT:?}; its stderr:\n{text}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `GET url` until it answers 200, or panics (with the log) when the child exits or the
/// deadline passes.
async fn wait_answering(child: &mut Child, log: &Path, url: &str, what: &str) {
    let api = Api::new("");
    let start = Instant::now();
    loop {
        if let Ok(r) = api.http().get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before answering {url}; its stderr:\n{}",
                read_lossy(log)
            );
        }
        if start.elapsed() > WAIT {
            panic!(
                "{what} did not answer {url} within {WAIT:?}; its stderr:\n{}",
                read_lossy(log)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn kill(child: &mut Child) {
    // `Child::kill` is SIGKILL on Unix: no graceful shutdown, exactly like a crash.
    let _ = child.kill();
    let _ = child.wait();
}

/// `paddock mock-llm` on a port of its choosing; killed when dropped.
pub struct MockLlm {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl MockLlm {
    /// Starts the mock with `--latency-ms latency_ms` and waits until it answers `GET /stats`.
    pub async fn start(bin: &Path, latency_ms: u64) -> Self {
        let dir = tempfile::tempdir().expect("cannot create a temporary folder for mock-llm");
        let log = dir.path().join("mock-llm.stderr.log");
        let mut child = command(bin, dir.path(), "info", &log)
            .args(["mock-llm", "--listen", "127.0.0.1:0", "--latency-ms"])
            .arg(latency_ms.to_string())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} mock-llm: {e}", bin.display()));
        let addr = address_from_log(
            &mut child,
            &log,
            "mock-llm listening on http://",
            "mock-llm",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        wait_answering(
            &mut child,
            &log,
            &format!("http://{addr}/stats"),
            "mock-llm",
        )
        .await;
        Self {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `base_url` of an `openai` provider using this mock.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The `base_url` of an `anthropic` provider using this mock.
    pub fn anthropic_base_url(&self) -> String {
        self.url()
    }

    /// `GET /stats`: `{"requests": N, "duplicate_keys": {"<Idempotency-Key>": count}}`.
    pub async fn stats(&self) -> Value {
        let r = Api::new(&self.url()).get_json("/stats").await;
        assert_eq!(r.status, 200, "GET /stats on mock-llm: {r:?}");
        r.body
    }

    pub fn stderr_text(&self) -> String {
        read_lossy(&self.log)
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// How to start a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub bin: PathBuf,
    /// Body of `paddock.toml` (`[providers.*]`, `[engine]`); `listen` and `data_dir` come from
    /// flags.
    pub config: String,
    /// Written under a fresh agents folder unless `agents_dir` is set.
    pub agents: Vec<AgentFixture>,
    /// An existing agents folder to use instead of writing `agents`.
    pub agents_dir: Option<PathBuf>,
    /// `PADDOCK_LOG` for the server.
    pub log_filter: String,
    /// Extra environment variables of the server process (after the `PADDOCK_*` clean-up).
    pub env: Vec<(String, String)>,
}

impl ServerOptions {
    pub fn new(bin: &Path) -> Self {
        Self {
            bin: bin.to_owned(),
            config: String::new(),
            agents: Vec::new(),
            agents_dir: None,
            log_filter: "info".to_owned(),
            env: Vec::new(),
        }
    }

    pub fn config(mut self, toml: &str) -> Self {
        self.config.push_str(toml);
        self
    }

    pub fn agent(mut self, agent: AgentFixture) -> Self {
        self.agents.push(agent);
        self
    }

    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log_filter = filter.to_owned();
        self
    }

    /// Sets an environment variable of the server process, e.g. a canary value a test checks
    /// never shows up where it must not.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// `paddock serve` over a data folder that outlives the process: [`Server::kill_9`] crashes it,
/// [`Server::restart`] starts a new process on the same folder and port. Killed when dropped.
pub struct Server {
    opts: ServerOptions,
    dir: TempDir,
    config_path: PathBuf,
    agents_dir: PathBuf,
    data_dir: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
    /// One stderr file per process started, in order.
    logs: Vec<PathBuf>,
    /// The owner key given as `PADDOCK_ADMIN_KEY`; [`Server::api`] sends it.
    admin_key: String,
}

/// A well-formed, unique admin key for one test server (tests need no cryptographic strength).
fn test_admin_key() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "pdk_test{}x{nanos}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

const SERVING: &str = "serving on http://";

impl Server {
    /// Writes `paddock.toml` and the agent folders into a temporary folder, starts
    /// `paddock serve` on a port of its choosing and waits until `/healthz` answers.
    pub async fn start(opts: ServerOptions) -> Self {
        let dir = tempfile::tempdir().expect("cannot create a temporary folder for the server");
        let config_path = dir.path().join("paddock.toml");
        std::fs::write(&config_path, &opts.config)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));
        let agents_dir = match &opts.agents_dir {
            Some(d) => d.clone(),
            None => {
                let d = dir.path().join("agents");
                std::fs::create_dir_all(&d).expect("cannot create the agents folder");
                for a in &opts.agents {
                    a.write_into(&d);
                }
                d
            }
        };
        let data_dir = dir.path().join("data");
        let mut s = Self {
            opts,
            config_path,
            agents_dir,
            data_dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: None,
            logs: Vec::new(),
            admin_key: test_admin_key(),
            dir,
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let log = self
                .dir
                .path()
                .join(format!("serve-{}.stderr.log", self.logs.len() + 1));
            let mut child = command(&self.opts.bin, self.dir.path(), &self.opts.log_filter, &log)
                .arg("serve")
                .arg("--config")
                .arg(&self.config_path)
                .arg("--listen")
                .arg(self.addr.to_string())
                .arg("--data-dir")
                .arg(&self.data_dir)
                .arg("--agents")
                .arg(&self.agents_dir)
                .env("PADDOCK_ADMIN_KEY", &self.admin_key)
                .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {} serve: {e}", self.opts.bin.display()));
            self.logs.push(log.clone());
            let what = format!("paddock serve (process {})", self.logs.len());
            let addr = match address_from_log(&mut child, &log, SERVING, &what).await {
                Ok(a) => a,
                // A restart binds the previous port, which the kernel may hold back for a
                // moment; a first start binds port 0 and cannot clash.
                Err(e) if self.addr.port() != 0 && e.contains("cannot listen") && attempts < 50 => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => panic!("{e}"),
            };
            wait_answering(&mut child, &log, &format!("http://{addr}/healthz"), &what).await;
            self.addr = addr;
            self.child = Some(child);
            return;
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A JSON client for this server, authenticated with its owner key.
    pub fn api(&self) -> Api {
        Api::with_key(&self.url(), &self.admin_key)
    }

    /// A JSON client that sends no key.
    pub fn api_anonymous(&self) -> Api {
        Api::new(&self.url())
    }

    /// The owner key the server was started with (`PADDOCK_ADMIN_KEY`).
    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn agents_dir(&self) -> &Path {
        &self.agents_dir
    }

    /// Process id of the running server process, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL (a crash: no shutdown code runs) and reaps it.
    pub fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// The `paddock.toml` the server reads at each start (a test may rewrite it, then restart).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Starts a new server process on the same data folder, agents and port (killing the
    /// current one first if it still runs) and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill_9();
        self.spawn().await;
    }

    /// Everything every server process of this `Server` wrote to stderr, oldest first.
    pub fn stderr_text(&self) -> String {
        self.logs
            .iter()
            .map(|p| read_lossy(p))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stderr of each process separately, oldest first.
    pub fn stderr_per_process(&self) -> Vec<String> {
        self.logs.iter().map(|p| read_lossy(p)).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_9();
    }
}
