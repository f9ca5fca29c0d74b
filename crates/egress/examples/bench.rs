//! Prints `egress_added_ms_p50`: a loopback plain-HTTP GET through the broker minus the same GET
//! direct, each on a fresh connection. `cargo run --release -p paddock-egress --example bench [n]`

#[tokio::main]
async fn main() -> Result<(), paddock_egress::EgressError> {
    let n = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let report = paddock_egress::bench_overhead(n).await?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    println!("requests {n}");
    println!(
        "direct_ms_p50 {:.3}",
        ms(paddock_egress::BenchReport::p50(&report.direct))
    );
    println!(
        "proxied_ms_p50 {:.3}",
        ms(paddock_egress::BenchReport::p50(&report.proxied))
    );
    println!("egress_added_ms_p50 {:.3}", report.added_ms_p50());
    Ok(())
}
