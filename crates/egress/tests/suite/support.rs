//! Local upstreams, proxy clients and log helpers. Everything binds 127.0.0.1 (or [::1]).

#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use paddock_egress::{Broker, BrokerConfig, CaPem, RunEgress, generate_ca};
use paddock_types::event::EgressRecord;
use paddock_types::manifest::{CredentialBinding, EgressRule};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "s3cr3t-TOKEN-0123456789abcdef";

/// One CA for the whole test binary: key generation is the slow part.
pub fn ca() -> CaPem {
    static CA: OnceLock<CaPem> = OnceLock::new();
    CA.get_or_init(|| generate_ca("Paddock test CA").unwrap())
        .clone()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
}

/// A local upstream (plain or TLS) that records what it receives.
///
/// `/redirect?to=URL` answers 302 to URL, `/loop` redirects to itself, `/big` echoes the request
/// 50 times, everything else echoes the request line and headers in the body and the
/// `authorization` header in `x-echo-auth`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    /// PEM of the self-signed certificate (TLS upstreams).
    pub cert_pem: Option<String>,
    pub shutdown: CancellationToken,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Upstream {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub async fn plain() -> Self {
        Self::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), None).await
    }

    pub async fn tls() -> Self {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .unwrap();
        let cert_pem = certified.cert.pem();
        let key = PrivateKeyDer::from_pem_slice(certified.signing_key.serialize_pem().as_bytes())
            .unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut up = Self::start(listener, Some(TlsAcceptor::from(Arc::new(cfg)))).await;
        up.cert_pem = Some(cert_pem);
        up
    }

    /// A listener that only counts connections (to prove none were attempted).
    pub async fn counting(listener: TcpListener) -> Self {
        Self::start(listener, None).await
    }

    async fn start(listener: TcpListener, tls: Option<TlsAcceptor>) -> Self {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let (s, c, sd) = (seen.clone(), connections.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = sd.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (s, tls) = (s.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(s.clone(), req));
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            seen,
            connections,
            cert_pem: None,
            shutdown,
        }
    }
}

async fn handle(
    seen: Arc<Mutex<Vec<Seen>>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        uri: uri.clone(),
        headers: headers.clone(),
    });
    let path = uri.split('?').next().unwrap_or("");
    if path == "/redirect" {
        let to = uri
            .split_once("?to=")
            .map(|(_, t)| t.to_owned())
            .unwrap_or_default();
        return Ok(Response::builder()
            .status(StatusCode::FOUND)
            .header("location", to)
            .body(Full::new(Bytes::from_static(b"moved")))
            .unwrap());
    }
    if path == "/loop" {
        return Ok(Response::builder()
            .status(StatusCode::FOUND)
            .header("location", "/loop")
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    let mut echo = format!("{method} {uri}\n");
    for (k, v) in &headers {
        echo.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    echo.push_str(&format!("body: {}\n", String::from_utf8_lossy(&body)));
    if path == "/big" {
        echo = echo.repeat(50);
    }
    let mut resp = Response::builder().status(StatusCode::OK);
    if let Some(a) = headers.get("authorization") {
        resp = resp.header("x-echo-auth", a.clone());
    }
    Ok(resp.body(Full::new(Bytes::from(echo))).unwrap())
}

pub fn rule(scheme: &str, host: &str, port: u16) -> EgressRule {
    EgressRule {
        scheme: scheme.into(),
        host: host.into(),
        port: Some(port),
        path_prefix: "/".into(),
        methods: Vec::new(),
        deny: false,
    }
}

/// An `Authorization: Bearer` binding with placeholder `API_KEY` for `scheme://host:port`.
pub fn header_binding(secret: &str, scheme: &str, host: &str, port: u16) -> CredentialBinding {
    CredentialBinding {
        secret: secret.into(),
        scheme: scheme.into(),
        host: host.into(),
        port: Some(port),
        header: Some("Authorization: Bearer {secret}".into()),
        query: None,
        placeholder_env: Some("API_KEY".into()),
    }
}

pub fn broker_with(
    allow_private: Vec<String>,
    extra_roots: Vec<String>,
    max_body: usize,
) -> Arc<Broker> {
    broker_cfg(allow_private, extra_roots, max_body, Vec::new())
}

/// A broker that may also inject credentials over plain http to the `plaintext` targets.
pub fn broker_plaintext(allow_private: Vec<String>, plaintext: Vec<String>) -> Arc<Broker> {
    broker_cfg(allow_private, Vec::new(), 1024 * 1024, plaintext)
}

fn broker_cfg(
    allow_private: Vec<String>,
    extra_roots: Vec<String>,
    max_body: usize,
    plaintext: Vec<String>,
) -> Arc<Broker> {
    let mut cfg = BrokerConfig::new(ca());
    cfg.allow_private = allow_private;
    cfg.plaintext_credentials = plaintext;
    cfg.extra_roots_pem = extra_roots;
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.request_timeout = Duration::from_secs(10);
    cfg.max_body_bytes = max_body;
    Broker::new(cfg).unwrap()
}

pub fn broker(allow_private: Vec<String>, extra_roots: Vec<String>) -> Arc<Broker> {
    broker_with(allow_private, extra_roots, 1024 * 1024)
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub done: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Stops the proxy and waits until every connection's record is in the log.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.done.await.unwrap();
    }
}

pub async fn start_proxy(broker: &Arc<Broker>, ctx: &Arc<RunEgress>) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let (b, c, s) = (broker.clone(), ctx.clone(), shutdown.clone());
    let done = tokio::spawn(async move { b.serve(listener, c, s).await });
    Proxy {
        addr,
        shutdown,
        done,
    }
}

#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn parse_head(head: &[u8]) -> (u16, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = body.windows(2).position(|w| w == b"\r\n") {
        let size_line = String::from_utf8_lossy(&body[..pos]);
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).unwrap();
        body = &body[pos + 2..];
        if size == 0 {
            break;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
    out
}

/// Parses a complete `Connection: close` response.
pub fn parse_response(all: &[u8]) -> Raw {
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(all)));
    let (status, headers) = parse_head(&all[..split]);
    let rest = &all[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Raw {
        status,
        headers,
        body,
    }
}

/// Writes `request` and reads until the peer closes (TLS EOF without close_notify is fine).
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &str) -> Raw {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!("timed out reading the response"),
        }
    }
    parse_response(&all)
}

/// A plain request through the proxy (absolute-form), `Connection: close`.
pub async fn proxy_get(
    proxy: SocketAddr,
    method: &str,
    url: &str,
    extra_headers: &[(&str, &str)],
) -> Raw {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("");
    let mut req = format!("{method} {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    let mut s = TcpStream::connect(proxy).await.unwrap();
    exchange(&mut s, &req).await
}

/// Sends `CONNECT authority` and returns the stream and the proxy's answer head.
pub async fn connect(
    proxy: SocketAddr,
    authority: &str,
) -> (TcpStream, u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.unwrap();
        assert!(n > 0, "proxy closed during CONNECT answer");
        head.extend_from_slice(&byte);
    }
    let (status, headers) = parse_head(&head[..head.len() - 4]);
    // A refusal has a body; read it when the length is declared.
    let mut body = Vec::new();
    if status != 200
        && let Some(len) = headers.iter().find(|(k, _)| k == "content-length")
    {
        body = vec![0u8; len.1.parse().unwrap()];
        s.read_exact(&mut body).await.unwrap();
    }
    (s, status, headers, body)
}

/// TLS over an established CONNECT tunnel, trusting only `root_pem`.
pub async fn tls_over(
    stream: TcpStream,
    server_name: &str,
    root_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
        .connect(
            ServerName::try_from(server_name.to_owned()).unwrap(),
            stream,
        )
        .await
}

/// Collects at least `n` records, waiting briefly for ones pushed when bodies are dropped.
pub async fn wait_log(ctx: &RunEgress, n: usize) -> Vec<EgressRecord> {
    let mut all = Vec::new();
    for _ in 0..200 {
        all.extend(ctx.take_log());
        if all.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Anything beyond n would be a bug the caller should see.
    tokio::time::sleep(Duration::from_millis(20)).await;
    all.extend(ctx.take_log());
    all
}
