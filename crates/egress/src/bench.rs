//! What `paddock bench` uses to report the broker's added latency: the same plain-HTTP GET to a
//! loopback upstream, direct and through the proxy, each on a fresh TCP connection (as a tool
//! in the sandbox would do it), with a realistic set of secrets so that the outbound scan and
//! the response redactor run on every request; and the cost of the secret matcher itself
//! (build time for a large workspace, scan throughput).

use crate::body::{ProxyBody, empty, full};
use crate::broker::{Broker, BrokerConfig};
use crate::ca::generate_ca;
use crate::credentials::ResolvedCredential;
use crate::error::EgressError;
use crate::run::RunEgress;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use paddock_types::manifest::CredentialBinding;
use paddock_types::manifest::EgressRule;
use paddock_types::redact::SecretMatcher;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Timings of [`bench_overhead`].
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub direct: Vec<Duration>,
    pub proxied: Vec<Duration>,
}

impl BenchReport {
    /// Median of a sample (0 when empty).
    pub fn p50(samples: &[Duration]) -> Duration {
        let mut s = samples.to_vec();
        s.sort();
        s.get(s.len() / 2).copied().unwrap_or_default()
    }

    /// `egress_added_ms_p50`: median proxied minus median direct, in milliseconds.
    pub fn added_ms_p50(&self) -> f64 {
        let d = Self::p50(&self.direct).as_secs_f64();
        let p = Self::p50(&self.proxied).as_secs_f64();
        (p - d) * 1000.0
    }
}

/// Runs `n` GETs direct and `n` through a broker (interleaved, after a short warm-up) against a
/// loopback upstream it starts, and returns the timings. Everything stays on 127.0.0.1.
pub async fn bench_overhead(n: usize) -> Result<BenchReport, EgressError> {
    let shutdown = CancellationToken::new();
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let up_addr = upstream.local_addr()?;
    tokio::spawn(serve_upstream(upstream, shutdown.clone()));

    let mut cfg = BrokerConfig::new(generate_ca("paddock bench CA")?);
    cfg.allow_private = vec![up_addr.to_string()];
    let broker = Broker::new(cfg)?;
    let rule = EgressRule {
        scheme: "http".into(),
        host: up_addr.ip().to_string(),
        port: Some(up_addr.port()),
        path_prefix: "/".into(),
        methods: Vec::new(),
        deny: false,
    };
    // Bound to another host (nothing injected here) but redacted from every response; the
    // whole workspace's secrets scanned in every request.
    let bound = (0..BENCH_BOUND)
        .map(|i| {
            ResolvedCredential::new(
                CredentialBinding {
                    secret: format!("bound_{i}"),
                    scheme: "https".into(),
                    host: "api.bench.example".into(),
                    port: None,
                    header: Some("Authorization: Bearer {secret}".into()),
                    query: None,
                    placeholder_env: None,
                },
                random_secret(),
            )
        })
        .collect();
    let workspace = workspace_matcher(BENCH_WORKSPACE_SECRETS)?;
    let ctx = Arc::new(RunEgress::new("bench", vec![rule], bound).with_secret_scan(workspace));
    let proxy = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = proxy.local_addr()?;
    {
        let (broker, ctx, shutdown) = (broker.clone(), ctx.clone(), shutdown.clone());
        tokio::spawn(async move { broker.serve(proxy, ctx, shutdown).await });
    }

    let direct_uri = "/bench".to_owned();
    let proxied_uri = format!("http://{up_addr}/bench");
    let warmup = 20.min(n);
    let mut report = BenchReport {
        direct: Vec::with_capacity(n),
        proxied: Vec::with_capacity(n),
    };
    for i in 0..warmup + n {
        let d = one_get(up_addr, &direct_uri, up_addr).await;
        let p = one_get(proxy_addr, &proxied_uri, up_addr).await;
        let (d, p) = match (d, p) {
            (Ok(d), Ok(p)) => (d, p),
            (Err(e), _) | (_, Err(e)) => {
                shutdown.cancel();
                return Err(e);
            }
        };
        if i >= warmup {
            report.direct.push(d);
            report.proxied.push(p);
        }
        if i % 256 == 0 {
            // Keep the run log from growing for the whole benchmark.
            ctx.take_log();
        }
    }
    shutdown.cancel();
    Ok(report)
}

/// Bound credentials of the run in [`bench_overhead`] (redacted from responses).
pub const BENCH_BOUND: usize = 5;
/// Workspace secrets scanned for in every request of [`bench_overhead`].
pub const BENCH_WORKSPACE_SECRETS: usize = 100;

/// A 40-character random hex token, like an API key.
fn random_secret() -> String {
    let mut bytes = [0u8; 20];
    crate::random_fill_infallible(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn workspace_matcher(n: usize) -> Result<SecretMatcher, EgressError> {
    SecretMatcher::new((0..n).map(|i| (format!("secret_{i}"), random_secret())))
        .map_err(|e| EgressError::Config(e.to_string()))
}

/// The secret matcher's own cost, for a workspace of `secrets` 40-character secrets.
#[derive(Debug, Clone)]
pub struct MatcherBench {
    pub secrets: usize,
    /// Building the matcher (every form and fragment of every secret, the automaton).
    pub build_ms: f64,
    /// Scanning bodies that hold no secret (the common case), in MiB per second.
    pub scan_mib_per_s: f64,
}

/// Builds a matcher for `secrets` random secrets and scans 1 MiB of text through it 16 times.
pub fn bench_matcher(secrets: usize) -> Result<MatcherBench, EgressError> {
    let start = Instant::now();
    let matcher = workspace_matcher(secrets)?;
    let build_ms = start.elapsed().as_secs_f64() * 1000.0;
    let text: Vec<u8> = b"{\"id\": 12345, \"name\": \"example item\", \"tags\": [\"a\", \"b\"]}\n"
        .iter()
        .copied()
        .cycle()
        .take(1024 * 1024)
        .collect();
    let rounds = 16;
    let start = Instant::now();
    let mut found = 0;
    for _ in 0..rounds {
        found += usize::from(matcher.find(&text).is_some());
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    if found != 0 {
        return Err(EgressError::Config(
            "bench text matched a random secret".into(),
        ));
    }
    Ok(MatcherBench {
        secrets,
        build_ms,
        scan_mib_per_s: f64::from(rounds) / secs,
    })
}

async fn one_get(
    connect_to: SocketAddr,
    uri: &str,
    host: SocketAddr,
) -> Result<Duration, EgressError> {
    let io_err = |e: hyper::Error| EgressError::Io(std::io::Error::other(e));
    let start = Instant::now();
    let tcp = TcpStream::connect(connect_to).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, ProxyBody>(TokioIo::new(tcp))
            .await
            .map_err(io_err)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(uri)
        .header(http::header::HOST, host.to_string())
        .body(empty())
        .map_err(|e| EgressError::Io(std::io::Error::other(e)))?;
    let resp = sender.send_request(req).await.map_err(io_err)?;
    if !resp.status().is_success() {
        return Err(EgressError::Io(std::io::Error::other(format!(
            "bench request answered {}",
            resp.status()
        ))));
    }
    resp.into_body().collect().await.map_err(io_err)?;
    Ok(start.elapsed())
}

async fn serve_upstream(listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(full(vec![b'x'; 1024])))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
