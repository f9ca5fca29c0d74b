//! Members through the real binary: `paddock serve` creates the owner member from
//! PADDOCK_ADMIN_EMAIL/PASSWORD, `paddock login` stores a session that `paddock runs list` and
//! `paddock admin members …` then use without an API key, and `paddock logout` ends it.

use super::{bin, options};
use paddock_test_support::{MockLlm, Server};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const EMAIL: &str = "Owner@Example.com";
const PASSWORD: &str = "a long owner password";

fn paddock(config_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PADDOCK_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PADDOCK_CONFIG_DIR", config_dir)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_then_use_the_session_for_runs_and_members() {
    let mock = MockLlm::start(bin(), 0).await;
    let server = Server::start(
        options(&mock, vec![])
            .env("PADDOCK_ADMIN_EMAIL", EMAIL)
            .env("PADDOCK_ADMIN_PASSWORD", PASSWORD),
    )
    .await;
    let run = server
        .api()
        .create_run("demo", &json!({"topic": "members"}))
        .await;
    let run_id = run["id"].as_str().unwrap().to_owned();
    let url = server.url();
    let config = tempfile::tempdir().unwrap();
    let dir = config.path();

    // Not logged in yet: no key, no session.
    let out = paddock(dir, &[], &["runs", "--server", &url, "list"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("paddock login"), "{}", text(&out));

    // A wrong password fails and stores nothing.
    let out = paddock(
        dir,
        &[("PADDOCK_PASSWORD", "not the password")],
        &["login", "--server", &url, "--email", EMAIL],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("invalid email or password"),
        "{}",
        text(&out)
    );
    assert!(!dir.join("sessions.json").exists());

    let out = paddock(
        dir,
        &[("PADDOCK_PASSWORD", PASSWORD)],
        &[
            "login",
            "--server",
            &format!("{url}/"),
            "--email",
            "owner@example.com",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("(owner) in workspace ws_default"),
        "{}",
        text(&out)
    );
    let file = dir.join("sessions.json");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "sessions file mode {mode:o}");
    let stored: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(
        stored[&url]["token"].as_str().unwrap().starts_with("pds_"),
        "{stored}"
    );

    // The stored session works for remote commands.
    let out = paddock(dir, &[], &["runs", "--server", &url, "list"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&run_id),
        "{}",
        text(&out)
    );

    let out = paddock(
        dir,
        &[("PADDOCK_MEMBER_PASSWORD", "viewer password 1")],
        &[
            "admin",
            "--server",
            &url,
            "members",
            "add",
            "viewer@example.com",
            "--role",
            "viewer",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = paddock(
        dir,
        &[],
        &[
            "admin", "--server", &url, "--output", "json", "members", "list",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let emails: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, [EMAIL, "viewer@example.com"], "{list}");
    let out = paddock(dir, &[], &["admin", "--server", &url, "members", "list"]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listing.contains("viewer@example.com\tviewer\t(all workspaces)"),
        "{listing}"
    );
    // The other admin commands live under `admin` too.
    let out = paddock(dir, &[], &["admin", "--server", &url, "keys", "list"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = paddock(dir, &[], &["admin", "--server", &url, "workspaces", "list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ws_default"),
        "{}",
        text(&out)
    );
    let out = paddock(
        dir,
        &[],
        &["admin", "--server", &url, "orgs", "create", "Acme"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("pdk_"),
        "{}",
        text(&out)
    );

    // Logging out ends the session on the server and forgets it here.
    let token = stored[&url]["token"].as_str().unwrap().to_owned();
    let out = paddock(dir, &[], &["logout", "--server", &url]);
    assert!(out.status.success(), "{}", text(&out));
    let r = paddock_test_support::Api::with_key(&url, &token)
        .get_json("/v1/runs")
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    let out = paddock(dir, &[], &["runs", "--server", &url, "list"]);
    assert!(!out.status.success(), "{}", text(&out));

    // The password never reached the server's log.
    let log = server.stderr_text();
    assert!(log.contains("created the owner member"), "{log}");
    assert!(
        !log.contains(PASSWORD) && !log.contains("viewer password 1"),
        "{log}"
    );
}
