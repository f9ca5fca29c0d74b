//! The broker: configuration, upstream connections, and the one exchange path every allowed
//! request goes through (policy → address check → injection → upstream).

use crate::addr::{self, AllowPrivate};
use crate::body::{ProxyBody, counting_full, empty, scanned_request};
use crate::ca::{CaPem, CertAuthority};
use crate::credentials::Injection;
use crate::error::{DenyReason, EgressError, UpstreamFailure};
use crate::policy::{self, Verdict};
use crate::run::{RecordGuard, RunEgress, denied_record};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use paddock_types::event::{EgressDecision, EgressRecord};
use paddock_types::redact::SecretMatcher;
use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Request bodies of known length up to this size are read whole and scanned in one piece
/// before they are forwarded; longer ones are scanned as they stream. With
/// [`MAX_CONNECTIONS_PER_RUN`](crate::MAX_CONNECTIONS_PER_RUN) this bounds what one run's
/// request bodies can pin in the broker's memory (256 × 256 KiB = 64 MiB).
pub const SCAN_WHOLE_BYTES: usize = 256 * 1024;

/// The broker's settings. Secrets are not part of it: they come per run in [`RunEgress`].
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `host:port` targets on otherwise refused addresses (loopback, private, link-local, …)
    /// that are reachable anyway. Operator setting, empty by default. Entries like
    /// `"127.0.0.1:8443"`, `"localhost:8443"` or `"[::1]:8443"`; an entry matches the request's
    /// host name as written or any address it resolves to. The allow-list rules still apply.
    pub allow_private: Vec<String>,
    /// `host:port` targets where credentials may be injected over plain `http` (operator
    /// setting, empty by default: a binding with `scheme = "http"` is refused with
    /// `plaintext_credential` elsewhere). Entries like `"127.0.0.1:8080"`, `"localhost:8080"`,
    /// `"[::1]:8080"`; matched against the request's host name as written (case-insensitive).
    pub plaintext_credentials: Vec<String>,
    /// Extra trusted roots (PEM, one or more certificates each) for upstream TLS, in addition
    /// to the Mozilla roots from `webpki-roots`.
    pub extra_roots_pem: Vec<String>,
    /// The per-installation CA that signs leaf certificates for intercepted hosts.
    pub ca: CaPem,
    /// Limit for resolving, TCP connect and TLS handshake to an upstream.
    pub connect_timeout: Duration,
    /// Limit for a whole `request()` (all hops, including reading the body).
    pub request_timeout: Duration,
    /// The proxy reads a request body of known length up to
    /// `min(SCAN_WHOLE_BYTES, max_body_bytes)` whole (to scan it for the workspace's secrets)
    /// before forwarding it, and gives the client this long to send it (`body_timeout`).
    /// Longer bodies are scanned as they stream and never held whole.
    pub body_read_timeout: Duration,
    /// `request()` keeps at most this many response body bytes (the rest is cut, `truncated`
    /// is set). The proxy buffers (and redacts in one piece) responses of intercepted or plain
    /// HTTP hosts up to this size when they declare a length; longer ones are streamed.
    pub max_body_bytes: usize,
}

impl BrokerConfig {
    /// Defaults: nothing private reachable, no extra roots, 10 s connect, 60 s request, 30 s to
    /// send a request body that is read whole, 10 MiB.
    pub fn new(ca: CaPem) -> Self {
        Self {
            allow_private: Vec::new(),
            plaintext_credentials: Vec::new(),
            extra_roots_pem: Vec::new(),
            ca,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            max_body_bytes: 10 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub(crate) fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if s.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }
}

/// `[egress] plaintext_credentials`, parsed: `(host, port)` pairs, host lower-case without
/// brackets.
#[derive(Debug, Default)]
struct PlaintextTargets(Vec<(String, u16)>);

impl PlaintextTargets {
    fn parse(entries: &[String]) -> Result<Self, EgressError> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let bad = || {
                EgressError::Config(format!(
                    "plaintext_credentials entry {entry:?} is not host:port (e.g. \"localhost:8080\" or \"[::1]:8080\")"
                ))
            };
            let (host, port) = entry.trim().rsplit_once(':').ok_or_else(bad)?;
            let port: u16 = port.parse().map_err(|_| bad())?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            if port == 0 || host.is_empty() {
                return Err(bad());
            }
            out.push((host, port));
        }
        Ok(Self(out))
    }

    fn allows(&self, host: &str, port: u16) -> bool {
        self.0
            .iter()
            .any(|(h, p)| *p == port && h.eq_ignore_ascii_case(host.trim_end_matches('.')))
    }
}

/// The egress broker. One per process; runs are attributed by the [`RunEgress`] passed in.
pub struct Broker {
    pub(crate) cfg: BrokerConfig,
    pub(crate) allow: AllowPrivate,
    plaintext: PlaintextTargets,
    client_tls: Arc<ClientConfig>,
    pub(crate) ca: CertAuthority,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("allow_private", &self.cfg.allow_private)
            .finish_non_exhaustive()
    }
}

impl Broker {
    pub fn new(cfg: BrokerConfig) -> Result<Arc<Self>, EgressError> {
        let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
        let allow = AllowPrivate::parse(&cfg.allow_private)?;
        let plaintext = PlaintextTargets::parse(&cfg.plaintext_credentials)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for pem in &cfg.extra_roots_pem {
            let mut any = false;
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| EgressError::Config(format!("extra root pem: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| EgressError::Config(format!("extra root: {e}")))?;
                any = true;
            }
            if !any {
                return Err(EgressError::Config(
                    "extra root pem holds no certificate".into(),
                ));
            }
        }
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| EgressError::Config(format!("tls client config: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Upstream connections are spoken as HTTP/1.1 by hyper's http1 client.
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let ca = CertAuthority::new(&cfg.ca, provider)?;
        Ok(Arc::new(Self {
            cfg,
            allow,
            plaintext,
            client_tls: Arc::new(client),
            ca,
        }))
    }

    /// The interception CA certificate (PEM), for the sandbox's trust store.
    pub fn ca_cert_pem(&self) -> &str {
        &self.cfg.ca.cert_pem
    }

    /// TCP connect to the first reachable address of an already checked list.
    pub(crate) async fn connect_tcp(
        &self,
        addrs: &[SocketAddr],
    ) -> Result<TcpStream, (UpstreamFailure, String)> {
        let attempt = async {
            let mut last = String::from("no address");
            for a in addrs {
                match TcpStream::connect(a).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(s);
                    }
                    Err(e) => last = format!("{a}: {e}"),
                }
            }
            Err((UpstreamFailure::ConnectFailed, last))
        };
        match tokio::time::timeout(self.cfg.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err((UpstreamFailure::ConnectTimeout, "connect timed out".into())),
        }
    }

    /// A fresh HTTP/1.1 client connection to the upstream (TLS with normal verification for
    /// https; SNI and certificate name are the host name, not the pinned address).
    async fn connect_http(
        &self,
        scheme: Scheme,
        host: &str,
        addrs: &[SocketAddr],
    ) -> Result<Sender, (UpstreamFailure, String)> {
        let tcp = self.connect_tcp(addrs).await?;
        let proto = |e: hyper::Error| (UpstreamFailure::ProtocolError, e.to_string());
        match scheme {
            Scheme::Http => {
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(proto)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(sender)
            }
            Scheme::Https => {
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| (UpstreamFailure::TlsFailed, e.to_string()))?;
                let tls = tokio::time::timeout(
                    self.cfg.connect_timeout,
                    TlsConnector::from(self.client_tls.clone()).connect(name, tcp),
                )
                .await
                .map_err(|_| {
                    (
                        UpstreamFailure::ConnectTimeout,
                        "tls handshake timed out".into(),
                    )
                })?
                .map_err(|e| (UpstreamFailure::TlsFailed, e.to_string()))?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(proto)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(sender)
            }
        }
    }

    /// Checks, injects and sends one request; every outcome leaves a record in `ctx`'s log.
    /// `pinned` are the addresses checked when an intercepted CONNECT was accepted; without
    /// them the host is resolved and checked here. `cache` reuses one upstream connection per
    /// client connection when consecutive requests go to the same origin.
    pub(crate) async fn exchange(
        &self,
        ctx: &RunEgress,
        out: Outbound,
        pinned: Option<&[SocketAddr]>,
        cache: Option<&UpstreamCache>,
    ) -> Result<Exchanged, Failure> {
        let path = out
            .path_and_query
            .split('?')
            .next()
            .unwrap_or("")
            .to_owned();
        let scheme = out.scheme.as_str();
        // Every refusal before the exchange leaves a denied record.
        let deny = |out: &Outbound, reason: DenyReason| {
            ctx.recorder().push(denied_record(
                out.method.as_str(),
                scheme,
                &out.host,
                out.port,
                &path,
                reason.as_str(),
            ));
            Failure::Denied(reason)
        };
        if let Some(reason) = ctx.refuse_all() {
            return Err(deny(&out, reason));
        }
        let rule = match policy::check_request(
            ctx.rules(),
            scheme,
            &out.host,
            out.port,
            &path,
            out.method.as_str(),
        ) {
            Verdict::Allow(i) => i,
            Verdict::Deny(reason) => return Err(deny(&out, reason)),
        };
        let inj = Injection::for_target(ctx.credentials(), scheme, &out.host, out.port);
        if !inj.is_empty() {
            if out.scheme == Scheme::Http && !self.plaintext.allows(&out.host, out.port) {
                return Err(deny(&out, DenyReason::PlaintextCredential));
            }
            if inj.placeholder_misplaced(&out.path_and_query, &out.headers) {
                return Err(deny(&out, DenyReason::PlaceholderMisplaced));
            }
        }
        // Before injection: the injected credential legitimately carries a secret, and what
        // the sandbox wrote must not.
        let mut out = out;
        let mut tripped = None;
        if let Some(scanner) = ctx.scanner() {
            match self.scan_outbound(scanner, &mut out).await {
                Ok(flag) => tripped = flag,
                Err(Failure::Denied(reason)) => return Err(deny(&out, reason)),
                Err(Failure::Upstream(f, detail)) => {
                    // The client stalled or went away while its body was read: nothing left,
                    // but the attempt is on record like any other failed exchange.
                    let mut rec = denied_record(
                        out.method.as_str(),
                        scheme,
                        &out.host,
                        out.port,
                        &path,
                        &format!("rule:{rule} error:{f}"),
                    );
                    rec.decision = EgressDecision::Allowed;
                    ctx.recorder().push(rec);
                    return Err(Failure::Upstream(f, detail));
                }
            }
        }
        let record = EgressRecord {
            method: out.method.as_str().to_owned(),
            scheme: scheme.to_owned(),
            host: out.host.clone(),
            port: out.port,
            path: path.clone(),
            status: None,
            bytes_sent: 0,
            bytes_received: 0,
            decision: EgressDecision::Allowed,
            // Overwritten below; stays if this future is dropped half-way.
            reason: format!("rule:{rule} error:cancelled"),
            credential: None,
            host_len: None,
            path_len: None,
        };
        let mut guard = RecordGuard::new(ctx.recorder().clone(), record, out.sent.clone());
        let fail = |guard: &mut RecordGuard, f: UpstreamFailure, detail: String| {
            guard.set_reason(format!("rule:{rule} error:{f}"));
            Failure::Upstream(f, detail)
        };

        let key = (out.scheme, out.host.clone(), out.port);
        let mut sender = cache.and_then(|c| c.take(&key));
        if let Some(s) = &mut sender
            && s.ready().await.is_err()
        {
            sender = None;
        }
        let mut sender = match sender {
            Some(s) => s,
            None => {
                let resolved;
                let addrs = match pinned {
                    Some(a) => a,
                    None => {
                        match addr::resolve_checked(
                            &out.host,
                            out.port,
                            &self.allow,
                            self.cfg.connect_timeout,
                        )
                        .await
                        {
                            Ok(a) => {
                                resolved = a;
                                &resolved[..]
                            }
                            Err(reason) => {
                                // Not an exchange after all: record a denial instead.
                                drop(guard_into_denial(guard, reason));
                                return Err(Failure::Denied(reason));
                            }
                        }
                    }
                };
                match self.connect_http(out.scheme, &out.host, addrs).await {
                    Ok(s) => s,
                    Err((f, d)) => return Err(fail(&mut guard, f, d)),
                }
            }
        };

        let target = inj.apply_to_target(&out.path_and_query);
        let mut headers = out.headers;
        strip_hop_by_hop(&mut headers);
        if let Err(f) = inj.apply_to_headers(&mut headers) {
            return Err(fail(
                &mut guard,
                f,
                "secret is not a valid header value".into(),
            ));
        }
        if !inj.is_empty() {
            // Compressed responses cannot be scanned for an echoed secret.
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        guard.set_credential(inj.names());
        let host_value = HeaderValue::from_str(&host_header(out.scheme, &out.host, out.port))
            .map_err(|_| {
                fail(
                    &mut guard,
                    UpstreamFailure::ProtocolError,
                    "bad host".into(),
                )
            })?;
        headers.insert(header::HOST, host_value);
        let uri: Uri = target.parse().map_err(|_| {
            fail(
                &mut guard,
                UpstreamFailure::ProtocolError,
                "bad target".into(),
            )
        })?;
        // On record before it leaves: a request that reached the upstream must be in the run's
        // journal however the call ends, even if this process is killed the next instant.
        if !guard.forwarding().await {
            return Err(Failure::Denied(DenyReason::NotRecorded));
        }
        let mut req = Request::new(out.body);
        *req.method_mut() = out.method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let response = match sender.send_request(req).await {
            Ok(r) => r,
            Err(_) if tripped.as_ref().is_some_and(|t| t.load(Ordering::SeqCst)) => {
                // The streamed body carried a secret: the exchange was cut before the rest of
                // it left. What was sent is recorded; the request counts as refused.
                let reason = DenyReason::SecretInRequest;
                let mut guard = guard_into_denial(guard, reason);
                guard.set_credential(None);
                return Err(Failure::Denied(reason));
            }
            Err(e) => {
                return Err(fail(
                    &mut guard,
                    UpstreamFailure::ProtocolError,
                    e.to_string(),
                ));
            }
        };
        if let Some(c) = cache {
            c.put(key, sender);
        }
        guard.set_reason(format!("rule:{rule}"));
        guard.set_status(response.status().as_u16());
        Ok(Exchanged { response, guard })
    }
}

impl Broker {
    /// Refuses a request whose head (host, method, target, header names and values) carries
    /// one of the workspace's secrets, and checks its body: whole when its length is known and
    /// small, otherwise as it streams (the returned flag is set if the stream is cut for a
    /// secret). The host is checked before anything resolves it: a wildcard rule lets the
    /// sandbox choose a sub-domain, and a name travels in DNS queries, the SNI and `Host`.
    async fn scan_outbound(
        &self,
        scanner: &SecretMatcher,
        out: &mut Outbound,
    ) -> Result<Option<Arc<AtomicBool>>, Failure> {
        let in_head = scanner.find(out.host.as_bytes()).is_some()
            || scanner.find(out.method.as_str().as_bytes()).is_some()
            || scanner.find(out.path_and_query.as_bytes()).is_some()
            || out.headers.iter().any(|(n, v)| {
                scanner.find(n.as_str().as_bytes()).is_some()
                    || scanner.find(v.as_bytes()).is_some()
            });
        if in_head {
            return Err(Failure::Denied(DenyReason::SecretInRequest));
        }
        let body = std::mem::replace(&mut out.body, empty());
        let whole = SCAN_WHOLE_BYTES.min(self.cfg.max_body_bytes) as u64;
        match body.size_hint().exact() {
            // Small: read whole, with a deadline, so a stalled client pins little and not
            // for long. Larger bodies stream through the scanner, which holds back only the
            // longest secret form.
            Some(len) if len <= whole => {
                let bytes =
                    match tokio::time::timeout(self.cfg.body_read_timeout, body.collect()).await {
                        Ok(Ok(c)) => c.to_bytes(),
                        Ok(Err(e)) => {
                            return Err(Failure::Upstream(
                                UpstreamFailure::ProtocolError,
                                format!("client body: {e}"),
                            ));
                        }
                        Err(_) => {
                            return Err(Failure::Upstream(
                                UpstreamFailure::BodyTimeout,
                                "client body read timed out".into(),
                            ));
                        }
                    };
                if scanner.find(&bytes).is_some() {
                    return Err(Failure::Denied(DenyReason::SecretInRequest));
                }
                // Reading counted the bytes as sent; count them when they really go out.
                out.sent.store(0, Ordering::Relaxed);
                out.body = counting_full(bytes, out.sent.clone());
                Ok(None)
            }
            _ => {
                let tripped = Arc::new(AtomicBool::new(false));
                out.body =
                    scanned_request(body, scanner.clone(), tripped.clone(), out.sent.clone());
                Ok(Some(tripped))
            }
        }
    }
}

/// Turns a pending allowed record into a denial (the address check refused the host).
fn guard_into_denial(mut guard: RecordGuard, reason: DenyReason) -> RecordGuard {
    guard.set_reason(reason.as_str().to_owned());
    guard.set_denied();
    guard
}

pub(crate) type Sender = SendRequest<ProxyBody>;
type CacheKey = (Scheme, String, u16);

/// One reusable upstream connection per client connection (keep-alive towards the upstream).
#[derive(Default)]
pub(crate) struct UpstreamCache {
    slot: Mutex<Option<(CacheKey, Sender)>>,
}

impl UpstreamCache {
    fn take(&self, key: &CacheKey) -> Option<Sender> {
        let mut slot = self.slot.lock().ok()?;
        match slot.take() {
            Some((k, s)) if &k == key && !s.is_closed() => Some(s),
            _ => None,
        }
    }

    fn put(&self, key: CacheKey, sender: Sender) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some((key, sender));
        }
    }
}

/// A request about to leave, as seen after parsing (host normalised).
pub(crate) struct Outbound {
    pub method: Method,
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// Origin-form target: path and optional `?query`.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: ProxyBody,
    /// Counts request body bytes as they go out.
    pub sent: Arc<AtomicU64>,
}

#[derive(Debug)]
pub(crate) enum Failure {
    Denied(DenyReason),
    Upstream(UpstreamFailure, String),
}

impl From<Failure> for EgressError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Denied(reason) => EgressError::Denied { reason },
            Failure::Upstream(reason, detail) => EgressError::Upstream { reason, detail },
        }
    }
}

pub(crate) struct Exchanged {
    pub response: Response<Incoming>,
    pub guard: RecordGuard,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the proxy's own: never forwarded in either
/// direction. Framing (`transfer-encoding`) is re-done by hyper.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// The `Host` header value for an origin.
pub(crate) fn host_header(scheme: Scheme, host: &str, port: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    if port == scheme.default_port() {
        host
    } else {
        format!("{host}:{port}")
    }
}
