//! Measures sandbox spawn + `true` latency, the way `paddock bench` does, and doubles as an
//! example of embedding the helper: this binary is its own helper (`maybe_run` first thing).
//!
//! `cargo run --release -p paddock-sandbox --example bench_spawn [-- N]`
//!
//! Environment: `PADDOCK_BENCH_CGROUPS=0` (rlimits only), `PADDOCK_BENCH_PRESTART=N`
//! (pre-started helpers), `PADDOCK_BENCH_GAP_MS=M` (pause between requests, so each finds its
//! pre-started helper ready, as spaced-out tool calls do; default 0: back-to-back).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use paddock_sandbox::{
    ExecSpec, HelperCommand, ProcessDriver, ProcessOptions, SandboxDriver, SandboxError,
    bench_spawn, percentile,
};

fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

async fn paced(
    driver: &ProcessDriver,
    n: usize,
    gap: Duration,
) -> Result<Vec<Duration>, SandboxError> {
    let dir = std::env::temp_dir().join(format!("paddock-bench-paced-{}", std::process::id()));
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        tokio::time::sleep(gap).await;
        let start = Instant::now();
        let out = driver.exec(ExecSpec::new(&dir, ["true"])).await?;
        times.push(start.elapsed());
        if !out.success() {
            return Err(SandboxError::Aborted(format!("`true` failed: {out:?}")));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(times)
}

fn main() -> ExitCode {
    if let Some(code) = paddock_sandbox::helper::maybe_run() {
        return code;
    }
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut opts = ProcessOptions {
        cgroups: env_num("PADDOCK_BENCH_CGROUPS") != Some(0),
        ..Default::default()
    };
    if let Some(p) = env_num("PADDOCK_BENCH_PRESTART") {
        opts.prestart = p as usize;
    }
    let driver =
        match HelperCommand::current_exe().and_then(|h| ProcessDriver::with_options(h, opts)) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
    eprintln!("{}", driver.report());
    let gap = Duration::from_millis(env_num("PADDOCK_BENCH_GAP_MS").unwrap_or(0));
    let result = if gap.is_zero() {
        rt.block_on(bench_spawn(&driver, n))
    } else {
        rt.block_on(paced(&driver, n, gap))
    };
    match result {
        Ok(times) => {
            let ms = |p| percentile(&times, p).as_secs_f64() * 1000.0;
            println!("sandbox_spawn_ms_p50 {:.2}", ms(0.5));
            println!("sandbox_spawn_ms_p90 {:.2}", ms(0.9));
            println!("sandbox_spawn_ms_p99 {:.2}", ms(0.99));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
