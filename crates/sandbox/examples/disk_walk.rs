//! Prints what one quota check costs: the time of a walk over a workspace of N empty files (the
//! worst case per byte of quota: each entry is charged 4 KiB). Run with
//! `cargo run --release -p paddock-sandbox --example disk_walk -- 100000`.

use paddock_sandbox::disk::{WalkBounds, workspace_usage};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    for folder in 0..n.div_ceil(1000) {
        let sub = dir.path().join(format!("d{folder}"));
        std::fs::create_dir(&sub)?;
        for i in 0..1000.min(n - folder * 1000) {
            std::fs::File::create(sub.join(format!("f{i}")))?;
        }
    }
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let usage = workspace_usage(dir.path(), WalkBounds::NONE, false)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        best = best.min(ms);
        println!(
            "entries={} bytes={} walk_ms={ms:.1}",
            usage.entries, usage.bytes
        );
    }
    println!(
        "disk_walk_ms_best={best:.1} check_period_ms={:.0}",
        (best * 10.0).max(100.0)
    );
    Ok(())
}
