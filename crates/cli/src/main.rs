//! `paddock`: the one binary. `serve` runs the platform; `run` does a one-off local run;
//! `runs` talks to a server; `mock-llm` serves a fake model for offline use; `bench` measures.
//! Data goes to stdout, everything for humans to stderr.

mod admin;
mod audit;
mod bench;
mod billing;
mod client;
mod config;
mod local;
mod login;
mod secrets;
mod serve;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// mimalloc rather than glibc's malloc: the engine allocates many small, short-lived values per
/// step (events, JSON), and the concurrent benchmark spends about 13% less CPU with it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "paddock",
    version,
    about = "Durable, sandboxed, governed agent runs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// How the commands that talk to a running server reach it.
#[derive(clap::Args)]
struct Remote {
    /// Server URL
    #[arg(long, env = "PADDOCK_SERVER", default_value = "http://127.0.0.1:8420")]
    server: String,
    #[arg(long, value_enum, default_value_t, global = true)]
    output: Output,
    /// API key (`pdk_…`) sent as `Authorization: Bearer`; without one, the session of
    /// `paddock login` for this server is used
    #[arg(long, env = "PADDOCK_API_KEY", global = true, hide_env_values = true)]
    api_key: Option<String>,
}

impl Remote {
    /// The bearer token to send: the API key if one is given, else the stored login session.
    fn token(&self) -> Option<String> {
        self.api_key
            .clone()
            .filter(|k| !k.is_empty())
            .or_else(|| login::stored_token(&self.server))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Start the API server and the run engine
    Serve {
        /// Config file (default: ./paddock.toml if it exists)
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:8420)
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data folder (database, workspaces; default ./paddock-data)
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Register every agent folder under this directory at start
        #[arg(long)]
        agents: Option<PathBuf>,
        /// Start even if the data folder is readable or writable by group or others (it holds
        /// every tenant's journal and the master key)
        #[arg(long)]
        allow_shared_data_dir: bool,
    },
    /// Run an agent folder once, locally, and print the result
    Run {
        /// Agent folder (agent.toml + prompt.md)
        agent_dir: PathBuf,
        /// Run input as JSON
        #[arg(long, default_value = "{}")]
        input: String,
        /// Config file for model providers (default: ./paddock.toml if it exists)
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Keep the run's data here instead of a temporary folder
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Approve every tool call that asks for approval without prompting
        #[arg(long)]
        auto_approve: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Inspect and act on runs of a running server
    Runs {
        #[command(flatten)]
        remote: Remote,
        /// Act for this end-user of the key's workspace (`eu_…` or its external id): see and
        /// create only its runs, secrets and usage
        #[arg(long, env = "PADDOCK_END_USER", global = true)]
        end_user: Option<String>,
        #[command(subcommand)]
        action: client::RunsAction,
    },
    /// Manage a server's secrets (values are write-only)
    Secrets {
        #[command(flatten)]
        remote: Remote,
        /// Act for this end-user of the key's workspace (`eu_…` or its external id): see and
        /// create only its runs, secrets and usage
        #[arg(long, env = "PADDOCK_END_USER", global = true)]
        end_user: Option<String>,
        #[command(subcommand)]
        action: secrets::SecretsAction,
    },
    /// Manage a server's orgs, workspaces, members and API keys
    Admin {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        action: admin::AdminAction,
    },
    /// Log in to a server as a member (password from PADDOCK_PASSWORD, or asked without echo);
    /// the session is stored for later commands
    Login {
        /// Server URL
        #[arg(long, env = "PADDOCK_SERVER", default_value = "http://127.0.0.1:8420")]
        server: String,
        #[arg(long)]
        email: String,
        /// Workspace to act in (default: your own, or the org's first)
        #[arg(long)]
        workspace: Option<String>,
        /// Org to log in to, when your email is a member of several
        #[arg(long)]
        org: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// End the stored session of a server and forget it
    Logout {
        /// Server URL
        #[arg(long, env = "PADDOCK_SERVER", default_value = "http://127.0.0.1:8420")]
        server: String,
    },
    /// A workspace's end-users: the customers its API keys act for (`Paddock-End-User`)
    EndUsers {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        action: billing::EndUsersAction,
    },
    /// A workspace's cost budgets (hard caps per workspace, agent or end-user, per day or month)
    Budgets {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        action: billing::BudgetsAction,
    },
    /// Tokens, model calls and cost of a workspace's runs
    Usage {
        #[command(flatten)]
        remote: Remote,
        /// Act for this end-user of the key's workspace (`eu_…` or its external id): see and
        /// create only its runs, secrets and usage
        #[arg(long, env = "PADDOCK_END_USER", global = true)]
        end_user: Option<String>,
        /// First UTC day, YYYY-MM-DD (default: 29 days before --to)
        #[arg(long)]
        from: Option<String>,
        /// Last UTC day, YYYY-MM-DD (default: today)
        #[arg(long)]
        to: Option<String>,
        /// Comma-separated subset of agent,end_user,model,day (default: all)
        #[arg(long)]
        group_by: Option<String>,
        /// Every workspace of the org (owners)
        #[arg(long)]
        org: bool,
    },
    /// The workspace's audit trail: list it, or verify its hash chain (online, or offline with
    /// `verify --data-dir`)
    Audit {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        action: audit::AuditAction,
    },
    /// Vault key management on a data folder (with the server stopped)
    Vault {
        /// Data folder (default ./paddock-data)
        #[arg(long, default_value = "./paddock-data")]
        data_dir: PathBuf,
        #[arg(long, value_enum, default_value_t, global = true)]
        output: Output,
        #[command(subcommand)]
        action: secrets::VaultAction,
    },
    /// Serve a fake model speaking the OpenAI and Anthropic wire formats
    MockLlm {
        #[arg(long, default_value = "127.0.0.1:8421")]
        listen: SocketAddr,
        /// Delay before each answer
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
    /// Measure per-step cost, throughput, history flatness and waiting-run memory
    Bench {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
        /// Waiting runs for the memory measurement
        #[arg(long, default_value_t = 10_000)]
        waiting_runs: usize,
    },
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PADDOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    // The sandbox helper re-enters this binary; it must run before any thread exists.
    if let Some(code) = paddock_sandbox::helper::maybe_run() {
        return code;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Result<std::process::ExitCode> {
    use std::process::ExitCode;
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            agents,
            allow_shared_data_dir,
        } => {
            init_tracing("info");
            let o = config::Overrides {
                listen,
                data_dir,
                agents_dir: agents,
                allow_shared_data_dir,
            };
            serve::serve(config.as_deref(), &o).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            agent_dir,
            input,
            config,
            data_dir,
            auto_approve,
            output,
        } => {
            init_tracing("warn");
            local::run(
                &agent_dir,
                &input,
                config.as_deref(),
                data_dir,
                auto_approve,
                output,
            )
            .await
        }
        Command::Runs {
            remote,
            end_user,
            action,
        } => {
            client::runs(
                &remote.server,
                remote.token().as_deref(),
                end_user.as_deref(),
                action,
                remote.output,
            )
            .await
        }
        Command::Secrets {
            remote,
            end_user,
            action,
        } => {
            secrets::secrets(
                &remote.server,
                remote.token().as_deref(),
                end_user.as_deref(),
                action,
                remote.output,
            )
            .await
        }
        Command::Admin { remote, action } => {
            admin::admin(
                &remote.server,
                remote.token().as_deref(),
                action,
                remote.output,
            )
            .await
        }
        Command::Login {
            server,
            email,
            workspace,
            org,
            output,
        } => login::login(&server, &email, workspace, org, output).await,
        Command::Logout { server } => login::logout(&server).await,
        Command::EndUsers { remote, action } => {
            billing::end_users(
                &remote.server,
                remote.token().as_deref(),
                action,
                remote.output,
            )
            .await
        }
        Command::Budgets { remote, action } => {
            billing::budgets(
                &remote.server,
                remote.token().as_deref(),
                action,
                remote.output,
            )
            .await
        }
        Command::Usage {
            remote,
            end_user,
            from,
            to,
            group_by,
            org,
        } => {
            let scope = org.then(|| "org".to_owned());
            billing::usage(
                &remote.server,
                remote.token().as_deref(),
                end_user.as_deref(),
                &[
                    ("from", from),
                    ("to", to),
                    ("group_by", group_by),
                    ("scope", scope),
                ],
                remote.output,
            )
            .await
        }
        Command::Audit { remote, action } => {
            init_tracing("warn");
            audit::audit(
                &remote.server,
                remote.token().as_deref(),
                action,
                remote.output,
            )
            .await
        }
        Command::Vault {
            data_dir,
            output,
            action,
        } => {
            init_tracing("warn");
            secrets::vault(&data_dir, action, output).await
        }
        Command::MockLlm { listen, latency_ms } => {
            init_tracing("info");
            let listener = tokio::net::TcpListener::bind(listen).await?;
            eprintln!("mock-llm listening on http://{}", listener.local_addr()?);
            paddock_models::mock_server::serve(
                listener,
                paddock_models::mock_server::MockOptions { latency_ms },
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            output,
            waiting_runs,
        } => {
            init_tracing("warn");
            bench::bench(output, waiting_runs).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
