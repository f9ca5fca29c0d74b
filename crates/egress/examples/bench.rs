//! Prints `egress_added_ms_p50`: a loopback plain-HTTP GET through the broker minus the same GET
//! direct, each on a fresh connection, with 5 bound secrets redacted from the response and 100
//! workspace secrets scanned in the request; then the secret matcher's build time for 1,000
//! secrets and its scan throughput. `cargo run --release -p paddock-egress --example bench [n]`

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
    println!("bound_secrets {}", paddock_egress::BENCH_BOUND);
    println!(
        "workspace_secrets {}",
        paddock_egress::BENCH_WORKSPACE_SECRETS
    );
    for secrets in [100, 1000] {
        let m = paddock_egress::bench_matcher(secrets)?;
        println!("matcher_build_ms_{secrets}_secrets {:.1}", m.build_ms);
        println!(
            "matcher_scan_mib_per_s_{secrets}_secrets {:.0}",
            m.scan_mib_per_s
        );
    }
    Ok(())
}
