use std::time::Duration;

use paddock_sandbox::{
    ExecSpec, HelperCommand, ProcessDriver, ProcessOptions, SandboxDriver, SandboxError, Tier,
};

use super::*;

#[tokio::test]
async fn echo_and_identity() {
    let ws = tempfile::tempdir().unwrap();
    let o = sh(
        ws.path(),
        "echo hi; id -u; id -g; pwd; hostname; echo err >&2",
    )
    .await;
    assert_eq!(out(&o), "hi\n1000\n1000\n/workspace\nsandbox\n");
    assert_eq!(err(&o), "err\n");
    assert_eq!((o.exit_code, o.signal, o.timed_out), (Some(0), None, false));
    assert!(!o.stdout_truncated && !o.stderr_truncated);
    assert_eq!(driver().tier(), Tier::Process);
}

#[tokio::test]
async fn exit_codes_and_signals() {
    let ws = tempfile::tempdir().unwrap();
    assert_eq!(sh(ws.path(), "exit 3").await.exit_code, Some(3));
    let killed = sh(ws.path(), "kill -TERM $$").await;
    assert_eq!((killed.exit_code, killed.signal), (None, Some(15)));
    let missing = driver()
        .exec(ExecSpec::new(ws.path(), ["no-such-command-xyz"]))
        .await
        .unwrap();
    assert_eq!(missing.exit_code, Some(127));
    assert!(
        err(&missing).contains("no-such-command-xyz: command not found"),
        "{}",
        err(&missing)
    );
}

#[tokio::test]
async fn stdin_is_delivered() {
    let ws = tempfile::tempdir().unwrap();
    let mut s = ExecSpec::new(ws.path(), ["wc", "-c"]);
    s.stdin = Some(vec![b'x'; 300_000]);
    let o = driver().exec(s).await.unwrap();
    assert_eq!(out(&o).trim(), "300000");
    // No stdin: the command sees end-of-file at once.
    let o = driver()
        .exec(ExecSpec::new(ws.path(), ["cat"]))
        .await
        .unwrap();
    assert_eq!((o.exit_code, o.stdout.len()), (Some(0), 0));
}

#[tokio::test]
async fn workspace_persists_tmp_does_not() {
    let ws = tempfile::tempdir().unwrap();
    let o = sh(
        ws.path(),
        "echo kept > /workspace/a.txt && echo gone > /tmp/b.txt && ls /tmp",
    )
    .await;
    assert_eq!(out(&o), "b.txt\n");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("a.txt")).unwrap(),
        "kept\n"
    );
    let o = sh(ws.path(), "cat /workspace/a.txt; ls -A /tmp | wc -l").await;
    assert_eq!(out(&o), "kept\n0\n");
}

#[tokio::test]
async fn environment_is_only_what_was_given() {
    let ws = tempfile::tempdir().unwrap();
    assert!(
        std::env::var_os("CARGO_MANIFEST_DIR").is_some(),
        "cargo sets this in the test process"
    );
    let mut s = ExecSpec::new(ws.path(), ["env"]);
    s.env = vec![("FOO".into(), "bar".into())];
    let o = driver().exec(s).await.unwrap();
    let o_text = out(&o);
    let mut vars: Vec<&str> = o_text
        .lines()
        .map(|l| l.split('=').next().unwrap())
        .collect();
    vars.sort();
    assert_eq!(vars, ["FOO", "HOME", "PATH", "TERM"], "{o_text}");
    assert!(o_text.contains("FOO=bar\n") && o_text.contains("HOME=/workspace\n"));
}

#[tokio::test]
async fn extra_read_only_files() {
    let ws = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut s = spec(
        ws.path(),
        "cat /etc/paddock/ca.pem; wc -c < /opt/tools/big; head -c 5 /opt/tools/big; tail -c 3 /opt/tools/big; echo; \
         echo x >> /etc/paddock/ca.pem || echo denied",
    );
    s.extra_ro_files = vec![
        ("/etc/paddock/ca.pem".into(), b"CERT\n".to_vec()),
        ("/opt/tools/big".into(), big.clone()),
    ];
    let o = driver().exec(s).await.unwrap();
    let tail = String::from_utf8_lossy(&big[big.len() - 3..]).into_owned();
    assert_eq!(
        out(&o),
        format!("CERT\n300000\nabcde{tail}\ndenied\n"),
        "{}",
        err(&o)
    );
    let e = err(&o);
    assert!(
        e.contains("Read-only file system") || e.contains("Permission denied"),
        "{e}"
    );

    let mut bad = spec(ws.path(), "true");
    bad.extra_ro_files = vec![("/workspace/x".into(), vec![])];
    assert!(matches!(
        driver().exec(bad).await,
        Err(SandboxError::InvalidSpec(_))
    ));
}

#[tokio::test]
async fn invalid_requests_are_rejected() {
    let ws = tempfile::tempdir().unwrap();
    let empty = ExecSpec::new(ws.path(), Vec::<String>::new());
    assert!(matches!(
        driver().exec(empty).await,
        Err(SandboxError::InvalidSpec(_))
    ));
    let root = ExecSpec::new("/", ["true"]);
    assert!(matches!(
        driver().exec(root).await,
        Err(SandboxError::InvalidSpec(_))
    ));
    let mut bad_env = ExecSpec::new(ws.path(), ["true"]);
    bad_env.env = vec![("A=B".into(), "c".into())];
    assert!(matches!(
        driver().exec(bad_env).await,
        Err(SandboxError::InvalidSpec(_))
    ));
}

#[tokio::test]
async fn report_names_the_mechanisms() {
    let report = driver().report();
    for needle in [
        "landlock ABI",
        "seccomp",
        "memory via",
        "pids via",
        "namespaces",
    ] {
        assert!(report.contains(needle), "{report}");
    }
}

#[test]
fn a_helper_that_is_not_one_makes_the_tier_unavailable() {
    let bogus = HelperCommand::new("/bin/true", vec![]);
    match ProcessDriver::new(bogus) {
        Err(SandboxError::Unavailable(msg)) => {
            assert!(msg.contains("running `true` in a sandbox failed"), "{msg}")
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    let missing = HelperCommand::new("/nonexistent/helper", vec![]);
    assert!(matches!(
        ProcessDriver::new(missing),
        Err(SandboxError::Unavailable(_))
    ));
}

#[test]
fn setup_failures_name_the_step() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root (maps the sandbox user to an invalid host uid)");
        return;
    }
    // An unmappable host uid makes the id-map write fail inside the helper.
    let opts = ProcessOptions {
        host_uid: u32::MAX,
        cgroups: false,
        ..Default::default()
    };
    match ProcessDriver::with_options(helper(), opts) {
        Err(SandboxError::Unavailable(msg)) => {
            assert!(
                msg.contains("sandbox setup failed at write uid_map"),
                "{msg}"
            )
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn dropping_an_execution_kills_the_sandbox() {
    let ws = tempfile::tempdir().unwrap();
    let running = driver()
        .spawn(spec(ws.path(), "sleep 100.0419"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !host_processes_with("sleep 100.0419").is_empty(),
        "the command should be running"
    );
    drop(running);
    for _ in 0..50 {
        if host_processes_with("sleep 100.0419").is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "sandbox still running: {:?}",
        host_processes_with("sleep 100.0419")
    );
}

/// Not a test of behaviour: prints the spawn latency (`cargo test -- --ignored --nocapture`;
/// the release example `bench_spawn` gives the number that counts).
#[tokio::test]
#[ignore]
async fn bench_spawn_p50() {
    let times = paddock_sandbox::bench_spawn(driver(), 200).await.unwrap();
    let p50 = paddock_sandbox::percentile(&times, 0.5);
    eprintln!(
        "sandbox_spawn_ms_p50 {:.2} (debug build)",
        p50.as_secs_f64() * 1000.0
    );
}

#[tokio::test]
async fn commands_get_default_signal_handling() {
    // `yes` must die of SIGPIPE (141 in bash), not see EPIPE because an ignored SIGPIPE leaked
    // from the Rust helper.
    let ws = tempfile::tempdir().unwrap();
    let o = sh(ws.path(), "yes | head -c1 >/dev/null; echo ${PIPESTATUS[0]}; grep -E '^Sig(Ign|Blk)' /proc/self/status").await;
    let s = out(&o);
    assert!(s.starts_with("141\n"), "{s}");
    // Standard signals (1-31) all default; glibc's internal 32/33 are its business.
    let ignored = s.lines().find_map(|l| l.strip_prefix("SigIgn:\t")).unwrap();
    assert_eq!(
        u64::from_str_radix(ignored, 16).unwrap() & 0x7fff_ffff,
        0,
        "{s}"
    );
    assert!(s.contains("SigBlk:\t0000000000000000"), "{s}");
    assert!(!err(&o).contains("Broken pipe"), "{}", err(&o));
}
