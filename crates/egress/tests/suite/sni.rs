//! The TLS server name inside a `CONNECT`: a tunnel to an allowed name must not carry a
//! ClientHello for another server (one allowed CDN-hosted name would allow every site behind that
//! CDN), nor none for a host name, nor bytes that are not TLS at all.

use super::support::*;
use paddock_egress::{ResolvedCredential, RunEgress};
use paddock_types::event::EgressDecision;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Accepts any certificate: the hostile client only cares that its ClientHello gets through.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS over the tunnel with this SNI (none for an IP address), trusting any certificate, then
/// one GET. `Err` when the handshake or the exchange is cut.
async fn hostile_get(tcp: TcpStream, sni: &str) -> std::io::Result<Raw> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut tls = TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await?;
    tls.write_all(b"GET /fronted HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut all = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut all)
        .await
        .or_else(|e| {
            // A TLS EOF without close_notify still delivered the response.
            if all.is_empty() { Err(e) } else { Ok(0) }
        })?;
    if all.is_empty() {
        return Err(std::io::Error::other("no response"));
    }
    Ok(parse_response(&all))
}

#[tokio::test]
async fn a_tunnel_whose_client_hello_names_another_server_is_refused() {
    let up = Upstream::tls().await;
    let port = up.port();
    let broker = broker(vec![format!("localhost:{port}")], vec![]);
    let ctx = Arc::new(RunEgress::new(
        "run_sni",
        vec![rule("https", "localhost", port)],
        vec![],
    ));
    let proxy = start_proxy(&broker, &ctx).await;
    for sni in ["evil.example", "localhost.evil.example", "127.0.0.1"] {
        let (tcp, status, _, _) = connect(proxy.addr, &format!("localhost:{port}")).await;
        assert_eq!(status, 200);
        let r = hostile_get(tcp, sni).await;
        assert!(r.is_err(), "{sni}: the tunnel carried a request: {r:?}");
    }
    // The name the CONNECT asked for still works (any case, as clients send it).
    let (tcp, _, _, _) = connect(proxy.addr, &format!("localhost:{port}")).await;
    let r = hostile_get(tcp, "LocalHost").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.seen().len(), 1, "{:?}", up.seen());

    proxy.stop().await;
    let log = ctx.take_log();
    assert_eq!(log.len(), 4, "{log:?}");
    let denied: Vec<_> = log
        .iter()
        .filter(|r| r.decision == EgressDecision::Denied)
        .collect();
    assert_eq!(denied.len(), 3, "{log:?}");
    assert!(
        denied
            .iter()
            .all(|r| r.reason == "sni_mismatch" && r.method == "CONNECT")
    );
}

#[tokio::test]
async fn a_tunnel_to_an_ip_literal_needs_no_sni_but_a_name_does() {
    let up = Upstream::tls().await;
    let port = up.port();
    let broker = broker(
        vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")],
        vec![],
    );
    let ctx = Arc::new(RunEgress::new(
        "run_ip",
        vec![
            rule("https", "127.0.0.1", port),
            rule("https", "localhost", port),
        ],
        vec![],
    ));
    let proxy = start_proxy(&broker, &ctx).await;
    // An IP target: clients send no SNI, and that is fine.
    let (tcp, _, _, _) = connect(proxy.addr, &format!("127.0.0.1:{port}")).await;
    assert_eq!(hostile_get(tcp, "127.0.0.1").await.unwrap().status, 200);
    // ...but a name on an IP target is another server.
    let (tcp, _, _, _) = connect(proxy.addr, &format!("127.0.0.1:{port}")).await;
    assert!(hostile_get(tcp, "evil.example").await.is_err());
    assert_eq!(up.seen().len(), 1);
    proxy.stop().await;
    let log = ctx.take_log();
    assert_eq!(
        log.iter().filter(|r| r.reason == "sni_mismatch").count(),
        1,
        "{log:?}"
    );
}

#[tokio::test]
async fn bytes_that_are_not_tls_in_a_tunnel_are_refused() {
    let up = Upstream::tls().await;
    let port = up.port();
    let broker = broker(vec![format!("localhost:{port}")], vec![]);
    let ctx = Arc::new(RunEgress::new(
        "run_not_tls",
        vec![rule("https", "localhost", port)],
        vec![],
    ));
    let proxy = start_proxy(&broker, &ctx).await;
    let (mut tcp, status, _, _) = connect(proxy.addr, &format!("localhost:{port}")).await;
    assert_eq!(status, 200);
    // Plain HTTP through a tunnel meant for https: it would reach a plaintext service unchecked.
    tcp.write_all(b"GET /plain HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut rest).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    proxy.stop().await;
    let log = ctx.take_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].decision, EgressDecision::Denied);
    assert_eq!(log[0].reason, "not_tls");
    // Nothing the client sent went upstream.
    assert_eq!(log[0].bytes_sent, 0, "{log:?}");
}

#[tokio::test]
async fn an_intercepted_connect_checks_the_sni_too() {
    let up = Upstream::tls().await;
    let port = up.port();
    let broker = broker(
        vec![format!("localhost:{port}")],
        vec![up.cert_pem.clone().unwrap()],
    );
    let cred = ResolvedCredential::new(
        header_binding("api_token", "https", "localhost", port),
        SECRET,
    );
    let ctx = Arc::new(RunEgress::new(
        "run_sni_mitm",
        vec![rule("https", "localhost", port)],
        vec![cred],
    ));
    let proxy = start_proxy(&broker, &ctx).await;
    let (tcp, status, _, _) = connect(proxy.addr, &format!("localhost:{port}")).await;
    assert_eq!(status, 200);
    assert!(hostile_get(tcp, "evil.example").await.is_err());
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    let (tcp, _, _, _) = connect(proxy.addr, &format!("localhost:{port}")).await;
    assert_eq!(hostile_get(tcp, "localhost").await.unwrap().status, 200);
    assert_eq!(up.seen().len(), 1);
    let log = wait_log(&ctx, 2).await;
    assert_eq!(log.len(), 2, "{log:?}");
    let denied = log
        .iter()
        .find(|r| r.decision == EgressDecision::Denied)
        .unwrap();
    assert_eq!(
        (denied.method.as_str(), denied.reason.as_str()),
        ("CONNECT", "sni_mismatch")
    );
    proxy.stop().await;
}
