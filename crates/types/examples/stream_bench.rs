//! Prints what the stream scanner and redactor cost per MiB of body by frame size, for a
//! workspace of 100 random 40-character secrets and for one 64 KiB secret (whose longest form,
//! and so what a stream holds back, is several hundred KiB). Tiny frames used to cost a rescan
//! of everything held back per frame. `cargo run --release -p paddock-types --example stream_bench`

use paddock_types::redact::{SecretMatcher, StreamScanner};
use std::time::Instant;

fn token(seed: u64, len: usize) -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALNUM[(x % ALNUM.len() as u64) as usize])
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let body: Vec<u8> = b"{\"id\": 12345, \"name\": \"example item\", \"tags\": [\"a\", \"b\"]}\n"
        .iter()
        .copied()
        .cycle()
        .take(256 * 1024)
        .collect();
    let many: Vec<(String, String)> = (0..100).map(|n| (format!("s{n}"), token(n, 40))).collect();
    let big = vec![("big".to_owned(), token(7, 64 * 1024))];
    for (what, secrets) in [("100_secrets", many), ("one_64kib_secret", big)] {
        let matcher = SecretMatcher::new(secrets)?;
        println!("{what}_hold_bytes {}", matcher.max_len().saturating_sub(1));
        for frame in [1usize, 64, 16 * 1024] {
            let start = Instant::now();
            let mut out = 0;
            let mut scanner = StreamScanner::new(matcher.clone());
            for chunk in body.chunks(frame) {
                out += scanner.push(chunk).map_err(|_| "bench body matched")?.len();
            }
            out += scanner.finish().len();
            let scan = start.elapsed().as_secs_f64();
            let start = Instant::now();
            let mut redactor = matcher.stream();
            for chunk in body.chunks(frame) {
                out += redactor.push(chunk).len();
            }
            out += redactor.finish().len();
            let redact = start.elapsed().as_secs_f64();
            if out != 2 * body.len() {
                return Err("bench body changed".into());
            }
            let mib = body.len() as f64 / (1024.0 * 1024.0);
            println!(
                "{what}_scan_ms_per_mib_frame_{frame} {:.1}",
                scan * 1000.0 / mib
            );
            println!(
                "{what}_redact_ms_per_mib_frame_{frame} {:.1}",
                redact * 1000.0 / mib
            );
        }
    }
    Ok(())
}
