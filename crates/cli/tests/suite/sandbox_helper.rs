//! The `paddock` binary as its own sandbox helper, on the path a host without cgroups takes
//! (an unprivileged server, or no delegated hierarchy): memory is then capped by `RLIMIT_AS`,
//! which counts the address space the binary's allocator has reserved, not just what it uses.

use paddock_sandbox::{ExecSpec, HelperCommand, Limits, ProcessDriver, ProcessOptions};
use paddock_sandbox::{SandboxDriver, helper::HELPER_ARG};

#[tokio::test]
async fn the_binary_runs_tools_under_an_address_space_limit() {
    // Built as `paddock serve` builds it (`HelperCommand::current_exe`).
    let helper = HelperCommand::new(super::bin(), vec![HELPER_ARG.to_owned()]);
    let opts = ProcessOptions {
        cgroups: false,
        ..Default::default()
    };
    let driver = tokio::task::spawn_blocking(move || ProcessDriver::with_options(helper, opts))
        .await
        .unwrap()
        .expect("process tier without cgroups");
    let ws = tempfile::tempdir().unwrap();
    let mut spec = ExecSpec::new(
        ws.path(),
        ["bash", "-c", "echo hi; ( echo sub ); ulimit -v"],
    );
    spec.limits = Limits {
        memory_bytes: 256 << 20,
        ..Limits::default()
    };
    let o = driver.exec(spec).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hi\nsub\n262144\n",
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
