//! Resource exhaustion: every attack is stopped by a limit, the call returns, the host is fine.

use std::time::{Duration, Instant};

use super::*;

#[tokio::test]
async fn fork_bomb_is_bounded() {
    let ws = tempfile::tempdir().unwrap();
    let mut s = spec(
        ws.path(),
        ":(){ :|:& };: ; sleep 2; echo survived-bomb-0417",
    );
    s.limits.wall = Duration::from_secs(6);
    s.limits.pids = 64;
    let start = Instant::now();
    let o = driver().exec(s).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    let e = err(&o);
    assert!(
        e.contains("Resource temporarily unavailable"),
        "fork failed at the pids limit: {e:.500}"
    );
    // Everything it spawned is gone, and the host can still start processes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(host_processes_with("survived-bomb-0417").is_empty());
    assert!(
        std::process::Command::new("true")
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn memory_exhaustion_is_stopped() {
    let ws = tempfile::tempdir().unwrap();
    let Some(o) = py(
        ws.path(),
        "b = b'x' * (2 * 1024 ** 3)\nprint('allocated', len(b))",
    )
    .await
    else {
        return;
    };
    assert!(!out(&o).contains("allocated"));
    let oom_killed = o.signal == Some(9);
    let memory_error = err(&o).contains("MemoryError");
    assert!(oom_killed || memory_error, "{o:?}");
}

#[tokio::test]
async fn filling_the_workspace_is_stopped_by_the_file_size_limit() {
    let ws = tempfile::tempdir().unwrap();
    let mut s = spec(
        ws.path(),
        "dd if=/dev/zero of=/workspace/big bs=1M count=1000",
    );
    s.limits.file_bytes = 8 << 20;
    let o = driver().exec(s).await.unwrap();
    // dd is killed by SIGXFSZ (bash execs it directly).
    assert_eq!(o.signal, Some(libc_sigxfsz()), "{o:?}");
    assert_eq!(
        std::fs::metadata(ws.path().join("big")).unwrap().len(),
        8 << 20
    );
}

#[tokio::test]
async fn filling_tmp_is_stopped_by_the_tmpfs_size() {
    let ws = tempfile::tempdir().unwrap();
    let mut s = spec(
        ws.path(),
        "dd if=/dev/zero of=/tmp/big bs=1M count=100; ls -l /tmp/big",
    );
    s.limits.tmp_bytes = 16 << 20;
    let o = driver().exec(s).await.unwrap();
    assert!(err(&o).contains("No space left on device"), "{}", err(&o));
    assert!(out(&o).contains(&(16u64 << 20).to_string()), "{}", out(&o));
}

#[tokio::test]
async fn output_flood_is_truncated() {
    let ws = tempfile::tempdir().unwrap();
    let o = sh(
        ws.path(),
        "yes | head -c 10000000; yes err | head -c 3000000 >&2",
    )
    .await;
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(o.stdout.len(), 64 << 10);
    assert_eq!(o.stderr.len(), 64 << 10);
    assert!(o.stdout_truncated && o.stderr_truncated);
}

#[tokio::test]
async fn wall_clock_timeout_kills_everything() {
    let ws = tempfile::tempdir().unwrap();
    let mut s = spec(ws.path(), "sleep 100.0417 & sleep 100.0418");
    s.limits.wall = Duration::from_secs(1);
    let start = Instant::now();
    let o = driver().exec(s).await.unwrap();
    let took = start.elapsed();
    assert!(o.timed_out);
    assert_eq!((o.exit_code, o.signal), (None, Some(9)));
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(
        host_processes_with("sleep 100.041").is_empty(),
        "{:?}",
        host_processes_with("sleep 100.041")
    );
}

#[tokio::test]
async fn background_processes_die_with_the_command() {
    let ws = tempfile::tempdir().unwrap();
    let o = sh(ws.path(), "(sleep 100.0416 &) ; echo started").await;
    assert_eq!(out(&o), "started\n");
    assert!(!o.timed_out);
    assert!(host_processes_with("sleep 100.0416").is_empty());
}

#[tokio::test]
async fn cpu_time_is_limited() {
    let ws = tempfile::tempdir().unwrap();
    let mut s = spec(ws.path(), "while :; do :; done");
    s.limits.cpu_secs = 1;
    let o = driver().exec(s).await.unwrap();
    // SIGXCPU at the soft limit.
    assert_eq!(o.signal.or(o.exit_code.map(|c| c - 128)), Some(24), "{o:?}");
    assert!(!o.timed_out);
}

fn libc_sigxfsz() -> i32 {
    nix::sys::signal::Signal::SIGXFSZ as i32
}

#[tokio::test]
async fn many_files_each_under_the_file_limit_are_stopped_at_the_workspace_quota() {
    // 200 files of 7 MB, each under an 8 MB file limit, against a 32 MB workspace quota: the
    // periodic check kills the sandbox long before the 1.4 GB are written.
    let ws = tempfile::tempdir().unwrap();
    let mut s = spec(
        ws.path(),
        "for i in $(seq 200); do head -c 7M /dev/zero > /workspace/f$i || exit 3; done; echo wrote-all",
    );
    s.limits.file_bytes = 8 << 20;
    s.limits.workspace_bytes = 32 << 20;
    s.limits.wall = Duration::from_secs(60);
    let o = driver().exec(s).await.unwrap();
    assert!(!out(&o).contains("wrote-all"), "{o:?}");
    assert!(
        matches!(o.disk_stop, Some(paddock_sandbox::DiskStop::Quota { quota, .. }) if quota == 32 << 20),
        "{:?} {}",
        o.disk_stop,
        err(&o)
    );
    assert_eq!(o.signal, Some(9));
    let used = paddock_sandbox::disk::workspace_usage(
        ws.path(),
        paddock_sandbox::disk::WalkBounds::NONE,
        false,
    )
    .unwrap();
    let reported = o.workspace_usage.unwrap();
    assert!(reported.bytes > 32 << 20, "{reported:?}");
    eprintln!("written before the stop: {} MB", used.bytes >> 20);
    // What one check period lets through (a loose bound for a loaded test machine; the
    // README states it).
    assert!(used.bytes < (32 + 512) << 20, "{used:?}");
}

#[tokio::test]
async fn a_call_is_stopped_when_the_disk_goes_under_the_reserve() {
    let ws = tempfile::tempdir().unwrap();
    let mut s = spec(ws.path(), "sleep 30; echo survived");
    // More than any disk has free: the first check stops it.
    s.limits.disk_reserve_bytes = u64::MAX / 4;
    let o = driver().exec(s).await.unwrap();
    assert!(!out(&o).contains("survived"));
    assert!(
        matches!(o.disk_stop, Some(paddock_sandbox::DiskStop::Reserve { .. })),
        "{:?}",
        o.disk_stop
    );
    assert!(!o.timed_out);
}

#[tokio::test]
async fn a_single_file_cannot_outgrow_the_workspace_quota() {
    let ws = tempfile::tempdir().unwrap();
    let mut s = spec(
        ws.path(),
        "head -c 20M /dev/zero > /workspace/big; echo rc=$?",
    );
    s.limits.file_bytes = 256 << 20;
    s.limits.workspace_bytes = 4 << 20;
    let o = driver().exec(s).await.unwrap();
    assert!(
        out(&o).contains("rc=1") || out(&o).contains("rc=153"),
        "{}{}",
        out(&o),
        err(&o)
    );
    let size = std::fs::metadata(ws.path().join("big")).unwrap().len();
    assert_eq!(size, 4 << 20);
}
