//! Disk limits and host hygiene through the real binary: a hostile agent that fills its
//! workspace with files each under `file_mb` is stopped at its quota and can clean up, a second
//! run of the same tenant over the tenant total is refused, a disk under the reserve refuses
//! tool calls, and the data folder is private to the server's user.

use super::bin;
use super::hostile::{assert_blocked, assert_ok, attack, conclude, launch, shell};
use paddock_test_support::{Api, MOCK_PROMPT, Server, ServerOptions, mock_input};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

const AGENT: &str = "filler";
const QUOTA_MB: u64 = 32;
/// Twice the run's quota: a call takes at most half of what its tenant has left, so a lone run
/// gets its whole quota.
const TENANT_MB: u64 = 64;

/// A scripted agent with the built-in tools; `list_files` needs an approval, so a run can be
/// parked (alive, holding its workspace) on it.
async fn put_agent(api: &Api) {
    let def = json!({
        "manifest": {
            "name": AGENT,
            "version": "1.0.0",
            "description": "fills its workspace",
            "model": {"provider": "scripted", "name": "mock-model"},
            "limits": {"max_steps": 50, "timeout": "5m"},
            "tools": {
                "shell": {}, "read_file": {}, "write_file": {},
                "list_files": {"approval": "always"}
            },
        },
        "prompt": MOCK_PROMPT,
    });
    let r = api
        .send(
            api.http()
                .put(api.url(&format!("/v1/agents/{AGENT}")))
                .json(&def),
        )
        .await;
    assert_eq!(r.status, 200, "PUT agent: {r:?}");
}

async fn server(extra: &str) -> Server {
    let config = format!(
        "[sandbox]\nkeep_workspaces = true\nfile_mb = 8\nworkspace_mb = {QUOTA_MB}\n\
         tenant_workspace_mb = {TENANT_MB}\n{extra}"
    );
    let server = Server::start(ServerOptions::new(bin()).config(&config)).await;
    put_agent(&server.api()).await;
    server
}

/// The `N` of "N MB used of" in a quota error.
fn used_mb(output: &str) -> u64 {
    let at = output
        .find(" MB used of ")
        .unwrap_or_else(|| panic!("no usage in {output}"));
    output[..at]
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no usage in {output}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_under_the_file_limit_cannot_fill_the_workspace_past_its_quota() {
    let server = server("disk_reserve_mb = 1\n").await;
    let api = server.api();
    let turns = [
        // 200 files of 7 MB, each under file_mb = 8: 1.4 GB without a quota.
        shell("for i in $(seq 200); do head -c 7M /dev/zero > f$i.bin || break; done; echo wrote"),
        shell("echo more > more.txt"),
        shell("rm -f f*.bin more.txt; echo cleaned"),
        json!({"tool": "write_file", "args": {"path": "small.txt", "content": "ok"}}),
    ];
    let a = attack(&api, AGENT, &turns).await;
    let quota_error = &["workspace quota exceeded"];
    assert_blocked(&a, 0, "filling the workspace", quota_error);
    assert!(
        a.output(0).contains("delete files to continue"),
        "{}",
        a.output(0)
    );
    let used = used_mb(a.output(0));
    eprintln!("workspace usage when the flood was stopped: {used} MB of {QUOTA_MB} MB");
    // The check runs every 100 ms; what a call writes in between is the overshoot (tens of MB
    // here; the bound is loose for a loaded machine).
    assert!(used > QUOTA_MB && used < QUOTA_MB + 512, "{used} MB");
    // Over its quota the run can only shrink its workspace...
    assert_blocked(&a, 1, "writing more while over quota", quota_error);
    // ...and deleting brings it back.
    assert_ok(&a, 2, "deleting files");
    assert_ok(&a, 3, "a small write after cleaning up");
}

/// Waits (without a time assertion on the system under test) until the run is parked.
async fn wait_waiting(api: &Api, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = api.get_run(id).await;
        if run["status"] == "waiting" {
            return;
        }
        assert!(
            run["status"] == "running" || run["status"] == "queued",
            "{run}"
        );
        assert!(Instant::now() < deadline, "run {id} never parked: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_over_the_tenant_total_is_refused() {
    let server = server("").await;
    let api = server.api();
    // Run A: 28 MB, within its own quota, then parked on an approval (still running, so its
    // workspace counts).
    let script = json!([
        {"tool": "shell", "args": {"command": "for i in 1 2 3 4; do head -c 7M /dev/zero > a$i.bin; done; echo ok"}},
        {"tool": "list_files", "args": {}},
        {"final": "done"}
    ]);
    let run = api.create_run(AGENT, &mock_input(script)).await;
    let first = run["id"].as_str().unwrap().to_owned();
    wait_waiting(&api, &first).await;
    let events = api.events(&first).await;
    let call = events
        .iter()
        .find(|e| e["type"] == "tool_call_completed")
        .unwrap();
    assert_eq!(call["is_error"], false, "{call}");

    // Run B of the same tenant: 35 MB more is over its own 32 MB quota, and far over its share
    // of what the 64 MB total leaves (half of 36 MB).
    let turns = [
        shell("for i in 1 2 3 4 5; do head -c 7M /dev/zero > b$i.bin || break; done; echo wrote"),
        shell("rm -f b*.bin; echo cleaned"),
    ];
    let id = launch(&api, AGENT, &turns).await;
    let b = conclude(&api, &id, &turns).await;
    assert_blocked(&b, 0, "the second run", &["workspace disk total exceeded"]);
    assert_ok(&b, 1, "the second run cleaning up");
    let r = api
        .post_json(&format!("/v1/runs/{first}/cancel"), &json!({}))
        .await;
    assert!(r.status < 300, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_are_refused_when_the_disk_is_under_the_reserve() {
    // A reserve larger than any disk: the database's room comes first.
    let server = server("disk_reserve_mb = 1073741824\n").await;
    let api = server.api();
    let turns = [shell("echo hello > a.txt")];
    let a = attack(&api, AGENT, &turns).await;
    assert_blocked(
        &a,
        0,
        "a write with the disk under the reserve",
        &["MB are kept for the database"],
    );
    // A 1 MB reserve (the other tests) lets calls run: see the quota test.
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_folder_is_private_and_a_shared_one_is_refused() {
    let server = server("").await;
    let api = server.api();
    let turns = [json!({"tool": "write_file", "args": {"path": "x.txt", "content": "x"}})];
    attack(&api, AGENT, &turns).await;
    let data = server.data_dir();
    assert_eq!(mode(data), 0o700);
    for file in [
        "paddock.db",
        "paddock.db-wal",
        "paddock.db-shm",
        "master.key",
        "paddock.lock",
    ] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&data.join("workspaces")), 0o700);

    // A folder others can read is refused, with the fix in the message.
    let shared = tempfile::tempdir().unwrap();
    let dir = shared.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let serve = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .args(extra)
            .current_dir(shared.path())
            .env_remove("PADDOCK_ALLOW_SHARED_DATA_DIR")
            .stdin(std::process::Stdio::null());
        cmd
    };
    let out = serve(&[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("chmod 700 {}", dir.display())) && stderr.contains("755"),
        "{stderr}"
    );
    assert!(!dir.join("paddock.db").exists(), "nothing was written");

    // Told it is deliberate, it starts.
    let log = shared.path().join("serve.log");
    let mut child = serve(&["--allow-shared-data-dir"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("serving on http://") {
            break true;
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        started,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// The `N` of "used=N" printed by `du -sk` in a turn's output, in KiB.
fn du_kib(output: &str) -> u64 {
    output
        .split("used=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no usage in {output}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallocate_cannot_reserve_blocks_past_the_file_limit_or_the_quota() {
    let server = server("disk_reserve_mb = 1\n").await;
    let api = server.api();
    let turns = [
        // KEEP_SIZE allocates blocks without growing the file: no RLIMIT_FSIZE check at all.
        shell(
            "touch kept.bin; fallocate -n -l 1G kept.bin; echo rc=$?; echo used=$(du -sk . | cut -f1)",
        ),
        shell("fallocate -l 1G grown.bin; echo rc=$?; echo used=$(du -sk . | cut -f1)"),
        shell(
            "touch kept2.bin; fallocate -n -o 0 -l 200M kept2.bin; echo rc=$?; echo used=$(du -sk . | cut -f1)",
        ),
        // glibc's posix_fallocate falls back to writing one byte per block: RLIMIT_FSIZE stops it.
        shell(
            "python3 -c \"import os; fd = os.open('p.bin', os.O_CREAT | os.O_WRONLY); os.posix_fallocate(fd, 0, 1 << 30)\"; \
             echo rc=$?; echo used=$(du -sk . | cut -f1)",
        ),
    ];
    let a = attack(&api, AGENT, &turns).await;
    for i in 0..turns.len() {
        assert_ok(
            &a,
            i,
            "fallocate (refused by the kernel filter, not by the quota)",
        );
        let out = a.output(i);
        assert!(!out.contains("rc=0"), "fallocate succeeded: {out}");
        let used = du_kib(out);
        assert!(used < QUOTA_MB << 10, "{used} KiB allocated: {out}");
    }
    // EOPNOTSUPP, in util-linux's words for the keep-size mode.
    for i in [0, 2] {
        assert!(a.output(i).contains("unsupported"), "{}", a.output(i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_deeper_than_path_max_does_not_turn_the_quota_off() {
    let server = server("disk_reserve_mb = 1\n").await;
    let api = server.api();
    // 20 folders of 250-character names: host paths past PATH_MAX (4096).
    let deep = "n=$(printf 'a%.0s' $(seq 250)); for i in $(seq 20); do mkdir -p $n && cd $n || exit 1; done";
    let turns = [
        shell("echo small > small.txt"),
        shell(&format!(
            "{deep}; for i in 1 2 3 4 5 6; do head -c 7M /dev/zero > f$i.bin || break; done; echo wrote"
        )),
        shell(&format!(
            "{deep}; for i in 1 2 3 4 5 6; do head -c 7M /dev/zero > g$i.bin || break; done; echo wrote"
        )),
        shell("rm -rf a*; echo cleaned"),
        shell("echo ok > after.txt"),
    ];
    let a = attack(&api, AGENT, &turns).await;
    assert_ok(&a, 0, "a small write");
    let quota_error = &["workspace quota exceeded"];
    assert_blocked(&a, 1, "filling a deep tree", quota_error);
    let used = used_mb(a.output(1));
    assert!(used > QUOTA_MB && used < QUOTA_MB + 512, "{used} MB");
    // The measurement was recorded: the next call gets no fresh budget.
    assert_blocked(&a, 2, "writing more in the deep tree", quota_error);
    assert_ok(&a, 3, "deleting the deep tree");
    assert_ok(&a, 4, "a small write after cleaning up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_files_count_as_over_quota() {
    // Each empty file costs the quota's walk a visit at every check: the entry cap bounds that.
    let server = server("disk_reserve_mb = 1\nworkspace_files = 1000\n").await;
    let api = server.api();
    let turns = [
        shell("mkdir d && cd d && seq 3000 | xargs touch; echo made"),
        shell("echo more > more.txt"),
        shell("rm -rf d more.txt; echo cleaned"),
        shell("echo ok > after.txt"),
    ];
    let a = attack(&api, AGENT, &turns).await;
    let cap_error = &["more than 1000 files and folders"];
    assert_blocked(&a, 0, "3,000 empty files", cap_error);
    // The next call may only shrink the workspace.
    assert_blocked(
        &a,
        1,
        "writing more while over the cap",
        &["quota exceeded"],
    );
    assert_ok(&a, 2, "deleting the files");
    assert_ok(&a, 3, "a small write after cleaning up");
}
