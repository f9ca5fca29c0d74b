//! `paddock run AGENT_DIR` as a user runs it: with the in-process scripted model it prints the
//! succeeded run as JSON on stdout (and only that) and exits 0; a broken manifest makes it exit
//! non-zero with an error naming the file and the field.

use super::{bin, final_answer, write};
use paddock_test_support::{AgentFixture, POLL, WAIT, mock_input};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the binary in `cwd` (with no `paddock.toml` and no `PADDOCK_*` variables around) and
/// waits for it, at most [`WAIT`].
fn paddock(cwd: &Path, args: &[&str]) -> Output {
    let out_path = cwd.join("stdout.txt");
    let err_path = cwd.join("stderr.txt");
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PADDOCK_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            panic!(
                "paddock {args:?} did not finish within {WAIT:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(POLL);
    };
    Output {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
    }
}

#[test]
fn paddock_run_prints_the_succeeded_run_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let agent_dir = AgentFixture::new("local", "scripted").write_into(tmp.path());
    let input = mock_input(json!([
        write("note.txt", "hello"),
        final_answer(json!({"ok": true}))
    ]));
    let out = paddock(
        &cwd,
        &[
            "run",
            agent_dir.to_str().unwrap(),
            "--input",
            &input.to_string(),
            "--output",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "exit {:?}; stderr:\n{}",
        out.status,
        out.stderr
    );
    // stdout is exactly one JSON document: the run.
    let run: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", out.stdout));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["agent"], "local", "{run}");
    assert_eq!(run["agent_version"], "1.0.0", "{run}");
    assert_eq!(run["input"], input, "{run}");
    assert_eq!(run["output"], json!({"ok": true}), "{run}");
    assert_eq!(run["usage"]["tool_calls"], 1, "{run}");
    assert_eq!(run["usage"]["model_calls"], 2, "{run}");
    assert!(run["id"].as_str().unwrap().starts_with("run_"), "{run}");
    // The journal went to stderr, for humans.
    assert!(out.stderr.contains("run_succeeded"), "{}", out.stderr);
}

#[test]
fn paddock_run_names_the_file_and_field_of_a_bad_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let manifest = AgentFixture::new("broken", "scripted")
        .manifest()
        .replace("max_steps = 200", "max_steps = \"x\"");
    assert!(manifest.contains("max_steps = \"x\""));
    let agent_dir = AgentFixture::new("broken", "scripted")
        .with_manifest(&manifest)
        .write_into(tmp.path());
    let out = paddock(
        &cwd,
        &["run", agent_dir.to_str().unwrap(), "--output", "json"],
    );
    assert!(
        !out.status.success(),
        "a broken manifest ran; stdout:\n{}",
        out.stdout
    );
    assert!(out.stderr.contains("agent.toml"), "{}", out.stderr);
    assert!(out.stderr.contains("limits.max_steps"), "{}", out.stderr);
    assert!(out.stdout.trim().is_empty(), "{}", out.stdout);
}
