//! Prints `tunnel_added_ms_p50`: a TLS handshake (plus one byte read) to a loopback upstream
//! through a blind `CONNECT` tunnel of the broker (which reads and checks the ClientHello's
//! server name before forwarding it) minus the same handshake direct, each on a fresh
//! connection. `cargo run --release -p paddock-egress --example bench_tunnel [n]`

use paddock_egress::{Broker, BrokerConfig, RunEgress, generate_ca};
use paddock_types::manifest::EgressRule;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

type Error = Box<dyn std::error::Error>;

fn p50(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples
        .get(samples.len() / 2)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let key = PrivateKeyDer::from_pem_slice(certified.signing_key.serialize_pem().as_bytes())?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)?;
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let port = upstream.local_addr()?.port();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = upstream.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"x").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(certified.cert.der().to_vec()))?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(client));

    let mut cfg = BrokerConfig::new(generate_ca("paddock bench CA")?);
    cfg.allow_private = vec![format!("localhost:{port}")];
    let broker = Broker::new(cfg)?;
    let rule = EgressRule {
        scheme: "https".into(),
        host: "localhost".into(),
        port: Some(port),
        path_prefix: "/".into(),
        methods: Vec::new(),
        deny: false,
    };
    let ctx = Arc::new(RunEgress::new("bench", vec![rule], vec![]));
    let proxy = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = proxy.local_addr()?;
    let shutdown = CancellationToken::new();
    let (b, c, s) = (broker.clone(), ctx.clone(), shutdown.clone());
    tokio::spawn(async move { b.serve(proxy, c, s).await });

    let handshake = |tcp: TcpStream| {
        let connector = connector.clone();
        async move {
            let name = ServerName::try_from("localhost")?;
            let mut tls = connector.connect(name, tcp).await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            Ok::<_, Error>(())
        }
    };
    let (mut direct, mut tunnelled) = (Vec::new(), Vec::new());
    for i in 0..n + 20 {
        let t = Instant::now();
        handshake(TcpStream::connect(("127.0.0.1", port)).await?).await?;
        let d = t.elapsed();

        let t = Instant::now();
        let mut tcp = TcpStream::connect(proxy_addr).await?;
        tcp.write_all(
            format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte).await? == 0 {
                return Err("proxy closed".into());
            }
            head.push(byte[0]);
        }
        handshake(tcp).await?;
        let p = t.elapsed();
        // The first rounds warm up caches and the allocator.
        if i >= 20 {
            direct.push(d);
            tunnelled.push(p);
        }
        ctx.take_log();
    }
    shutdown.cancel();
    let (d, p) = (p50(&mut direct), p50(&mut tunnelled));
    println!("handshakes {n}");
    println!("direct_tls_ms_p50 {d:.3}");
    println!("tunnelled_tls_ms_p50 {p:.3}");
    println!("tunnel_added_ms_p50 {:.3}", p - d);
    Ok(())
}
