//! The unprivileged path (server not root: user namespace first, own uid mapped), exercised by
//! running the helper through setpriv as `nobody`.

use std::os::unix::fs::PermissionsExt;

use paddock_sandbox::{HelperCommand, ProcessDriver, ProcessOptions, SandboxDriver};

use super::*;

#[tokio::test]
async fn unprivileged_helper_confines_too() {
    if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/usr/bin/setpriv").exists() {
        eprintln!("SKIPPED: needs root and setpriv(1) to run the helper as an unprivileged user");
        return;
    }
    // A copy of the helper that `nobody` can execute.
    let dir = tempfile::Builder::new()
        .prefix("paddock-helper")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("helper");
    std::fs::copy(env!("CARGO_BIN_EXE_paddock-sandbox-helper"), &exe).unwrap();
    let helper = HelperCommand::new(
        "/usr/bin/setpriv",
        vec![
            "--reuid=65534".into(),
            "--regid=65534".into(),
            "--clear-groups".into(),
            "--".into(),
            exe.to_string_lossy().into_owned(),
        ],
    );
    let opts = ProcessOptions {
        cgroups: false,
        ..Default::default()
    };
    let driver = tokio::task::spawn_blocking(move || ProcessDriver::with_options(helper, opts))
        .await
        .unwrap()
        .expect("unprivileged process tier");
    let ws = tempfile::tempdir().unwrap();
    let o = driver
        .exec(spec(
            ws.path(),
            "id -u; echo hi > /workspace/f && cat /workspace/f; cat /etc/shadow; touch /usr/x; \
             exec 3<>/dev/tcp/1.1.1.1/80",
        ))
        .await
        .unwrap();
    assert_eq!(out(&o), "1000\nhi\n", "{}", err(&o));
    let e = err(&o);
    assert!(e.contains("/etc/shadow: No such file or directory"), "{e}");
    assert!(e.contains("'/usr/x': Read-only file system"), "{e}");
    assert!(e.contains("Permission denied"), "{e}");
    let Some(o) = py(ws.path(), "").await else {
        return;
    };
    drop(o);
    let o = driver
        .exec(paddock_sandbox::ExecSpec::new(
            ws.path(),
            ["python3", "-c", "import ctypes; l = ctypes.CDLL(None, use_errno=True); print(l.unshare(0x10000000), ctypes.get_errno(), l.ptrace(0,0,0,0), ctypes.get_errno())"],
        ))
        .await
        .unwrap();
    assert_eq!(out(&o), "-1 1 -1 1\n", "{}", err(&o));
}
