//! Egress that is allowed, through the real `paddock serve`: HTTPS to a local upstream (a
//! self-signed certificate the server trusts through `[egress] extra_root_certs`, reachable
//! through `allow_private`) from `shell` running curl (the sandbox trusts the broker's CA) and
//! from `http_request`, with a `[[credentials]]` header binding. The upstream gets the secret;
//! the model's tool output, the journal, the server's log and the sandbox's environment never
//! hold it, and a secret the upstream echoes back comes back redacted. Also: without
//! `keep_workspaces`, a run's workspace is deleted when the run ends.
//!
//! The tests of this file share one server and upstream while they run at the same time.

use super::bin;
use super::hostile::{
    Attack, assert_ok, attack, port_of, put_agent, put_secret, shell, token, tool,
};
use paddock_test_support::{POLL, SeenRequest, Server, ServerOptions, Shared, Upstream, WAIT};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

const AGENT: &str = "egress";
const SECRET_NAME: &str = "UPSTREAM_TOKEN";

struct Egress {
    server: Server,
    /// HTTPS on 127.0.0.1, certificate for `localhost`.
    upstream: Upstream,
    secret: String,
}

static EGRESS: Shared<Egress> = Shared::new();

async fn egress() -> Arc<Egress> {
    EGRESS.get_or_start(Egress::start).await
}

impl Egress {
    async fn start() -> Self {
        let upstream = Upstream::https();
        let p = upstream.port();
        let config = format!(
            "[egress]\nallow_private = [\"localhost:{p}\"]\nextra_root_certs = [\"{}\"]\n",
            upstream.cert_path().display()
        );
        // Verbose where requests and credentials are handled: the secret must not be logged even
        // there.
        let server = Server::start(
            ServerOptions::new(bin())
                .config(&config)
                .log_filter("info,paddock_egress=debug,paddock_engine=debug,paddock=debug"),
        )
        .await;
        let api = server.api();
        let secret = format!("sk-{}", token(40));
        put_secret(&api, SECRET_NAME, &secret).await;
        put_agent(
            &api,
            AGENT,
            json!([{"scheme": "https", "host": "localhost", "port": p}]),
            json!([{
                "secret": SECRET_NAME,
                "host": "localhost",
                // Bindings name the exact target: this upstream's port, not 443.
                "port": p,
                "header": "Authorization: Bearer {secret}",
                "placeholder_env": SECRET_NAME,
            }]),
        )
        .await;
        assert_ne!(port_of(&server), p);
        Self {
            server,
            upstream,
            secret,
        }
    }

    fn base(&self) -> String {
        format!("https://localhost:{}", self.upstream.port())
    }

    /// The one request the upstream received whose target contains `marker`.
    fn seen(&self, marker: &str) -> SeenRequest {
        let seen: Vec<SeenRequest> = self
            .upstream
            .requests()
            .into_iter()
            .filter(|r| r.target.contains(marker))
            .collect();
        assert_eq!(seen.len(), 1, "requests with {marker}: {seen:#?}");
        seen.into_iter().next().unwrap()
    }

    /// The secret is nowhere the model, the journal or the log can show it.
    fn assert_secret_kept(&self, a: &Attack) {
        for (i, c) in a.calls.iter().enumerate() {
            assert!(
                !c["output"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&self.secret),
                "tool output {i} holds the secret"
            );
        }
        assert!(
            !a.text().contains(&self.secret),
            "the journal holds the secret"
        );
        assert!(
            !self.server.stderr_text().contains(&self.secret),
            "the server log holds the secret"
        );
    }
}

/// Call `i` made one request, allowed, answered `status`, with the credential injected.
#[track_caller]
fn assert_injected(a: &Attack, i: usize, path: &str, status: u16) {
    let reqs = a.egress(i);
    assert_eq!(reqs.len(), 1, "egress records of call {i}: {reqs:#?}");
    let r = reqs[0];
    assert_eq!(r["decision"], "allowed", "{r}");
    assert_eq!(r["status"], status, "{r}");
    assert_eq!(r["credential"], SECRET_NAME, "{r}");
    assert_eq!(r["method"], "GET", "{r}");
    assert_eq!(r["scheme"], "https", "{r}");
    assert_eq!(r["host"], "localhost", "{r}");
    assert_eq!(r["path"], path, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_from_the_shell_gets_the_credential_without_seeing_it() {
    let e = egress().await;
    let m = token(10);
    let base = e.base();
    let turns = [
        shell(&format!("curl -sS --fail-with-body {base}/quiet/shell-{m}")),
        shell(&format!(
            "curl -sS --fail-with-body -H \"Authorization: Bearer ${SECRET_NAME}\" \
             {base}/quiet/placeholder-{m}"
        )),
        shell("env"),
    ];
    let a = attack(&e.server.api(), AGENT, &turns).await;
    assert_ok(&a, 0, "curl over HTTPS");
    assert!(a.output(0).contains("\nok\n"), "{}", a.output(0));
    let seen = e.seen(&format!("shell-{m}"));
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {}", e.secret).as_str()),
        "{seen:?}"
    );
    assert_injected(&a, 0, &format!("/quiet/shell-{m}"), 200);

    // The placeholder in the header the binding names: the secret goes there (and nowhere
    // else: `inject.rs` tries the other places).
    assert_ok(&a, 1, "curl with the placeholder");
    let seen = e.seen(&format!("placeholder-{m}"));
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {}", e.secret).as_str()),
        "{seen:?}"
    );
    assert_injected(&a, 1, &format!("/quiet/placeholder-{m}"), 200);

    assert_ok(&a, 2, "env");
    let env = a.output(2);
    assert!(
        env.lines()
            .any(|l| l.starts_with(&format!("{SECRET_NAME}="))),
        "no placeholder in env:\n{env}"
    );
    assert!(
        !env.contains("[REDACTED:"),
        "the secret itself is in the sandbox's environment:\n{env}"
    );
    e.assert_secret_kept(&a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_through_http_request_gets_the_credential() {
    let e = egress().await;
    let m = token(10);
    let turns = [tool(
        "http_request",
        json!({"url": format!("{}/quiet/tool-{m}", e.base())}),
    )];
    let a = attack(&e.server.api(), AGENT, &turns).await;
    assert_ok(&a, 0, "http_request over HTTPS");
    let out = a.output(0);
    assert!(out.starts_with("status: 200\n"), "{out}");
    assert!(out.ends_with("\nok\n"), "{out}");
    let seen = e.seen(&format!("tool-{m}"));
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {}", e.secret).as_str()),
        "{seen:?}"
    );
    assert_injected(&a, 0, &format!("/quiet/tool-{m}"), 200);
    e.assert_secret_kept(&a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_the_upstream_echoes_comes_back_redacted() {
    let e = egress().await;
    let m = token(10);
    let base = e.base();
    let turns = [
        shell(&format!(
            "curl -sS -i --fail-with-body {base}/echo-shell-{m}"
        )),
        tool(
            "http_request",
            json!({"url": format!("{base}/echo-tool-{m}")}),
        ),
    ];
    let a = attack(&e.server.api(), AGENT, &turns).await;
    let redacted = format!("Bearer [REDACTED:{SECRET_NAME}]");
    for (i, marker) in [(0, "echo-shell"), (1, "echo-tool")] {
        assert_ok(&a, i, marker);
        // The upstream did get (and echo) the secret…
        let seen = e.seen(&format!("{marker}-{m}"));
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {}", e.secret).as_str()),
            "{seen:?}"
        );
        // …and the model sees it redacted, in the echoed body and the echoing header.
        let out = a.output(i);
        assert!(
            out.contains(&format!("authorization: {redacted}")),
            "{marker}: no redacted echo in the body:\n{out}"
        );
        assert!(
            out.contains(&format!("x-echo-authorization: {redacted}")),
            "{marker}: no redacted echo header:\n{out}"
        );
        assert_injected(&a, i, &format!("/{marker}-{m}"), 200);
    }
    e.assert_secret_kept(&a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_workspace_is_deleted_when_it_ends() {
    let e = egress().await;
    // Host files the workspace links to: deleting the workspace must not follow the links.
    let host = tempfile::tempdir().unwrap();
    let host_file = host.path().join("keep.txt");
    std::fs::write(&host_file, "keep me").unwrap();
    let turns = [
        tool(
            "write_file",
            json!({"path": "notes/a.txt", "content": "scratch"}),
        ),
        shell("echo more > notes/b.txt && ls notes && pwd"),
        shell(&format!(
            "ln -s {dir} host-dir && ln -s {file} host-file && mkdir -p deep/er && \
             ln -s / deep/er/root && ls -l host-dir host-file",
            dir = host.path().display(),
            file = host_file.display()
        )),
    ];
    let a = attack(&e.server.api(), AGENT, &turns).await;
    assert_ok(&a, 0, "write_file");
    assert_ok(&a, 1, "shell");
    assert_ok(&a, 2, "symlinks to host paths");
    let out = a.output(1);
    assert!(
        out.contains("a.txt\nb.txt\n/workspace\n"),
        "the files are not in the workspace:\n{out}"
    );
    // Deleted once the run is over (right after its last event is committed).
    let ws = paddock_harness::tools::workspace_dir(
        &e.server.data_dir().join("workspaces"),
        &paddock_types::RunId::parse(&a.id).unwrap(),
    );
    let start = Instant::now();
    while ws.exists() {
        assert!(
            start.elapsed() < WAIT,
            "workspace {} still exists after the run ended",
            ws.display()
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "keep me");
}
