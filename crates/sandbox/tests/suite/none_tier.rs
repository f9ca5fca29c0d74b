use paddock_sandbox::{ExecSpec, NetworkSpec, NoneDriver, SandboxDriver, Tier};
use tokio::io::AsyncReadExt;

use super::*;

#[tokio::test]
async fn none_tier_runs_in_the_workspace_folder() {
    let ws = tempfile::tempdir().unwrap();
    let driver = NoneDriver::new();
    assert_eq!(driver.tier(), Tier::None);
    assert!(driver.report().contains("NO ISOLATION"));
    let mut s = ExecSpec::new(ws.path(), ["bash", "-c", "pwd; echo $FOO; cat; exit 4"]);
    s.env = vec![("FOO".into(), "bar".into())];
    s.stdin = Some(b"in".to_vec());
    let o = driver.exec(s).await.unwrap();
    let canon = std::fs::canonicalize(ws.path()).unwrap();
    assert_eq!(out(&o), format!("{}\nbar\nin", canon.display()));
    assert_eq!(o.exit_code, Some(4));
}

#[tokio::test]
async fn none_tier_timeout_and_listener() {
    let ws = tempfile::tempdir().unwrap();
    let driver = NoneDriver::new();
    let mut s = ExecSpec::new(ws.path(), ["bash", "-c", "sleep 100.0421"]);
    s.limits.wall = std::time::Duration::from_millis(300);
    let o = driver.exec(s).await.unwrap();
    assert!(o.timed_out);
    assert!(host_processes_with("sleep 100.0421").is_empty());

    let mut s = ExecSpec::new(
        ws.path(),
        [
            "bash",
            "-c",
            "p=${HTTP_PROXY##*:}; exec 3<>/dev/tcp/127.0.0.1/$p; echo via-proxy >&3",
        ],
    );
    s.network = Some(NetworkSpec { proxy_port: 3128 });
    let mut run = driver.spawn(s).await.unwrap();
    let listener = run.take_listener().unwrap();
    let (mut conn, _) = listener.accept().await.unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "via-proxy\n");
    assert!(run.wait().await.unwrap().success());
}
