//! A hostile sandbox that writes a workspace secret where the broker records or resolves it:
//! the path of a denied request, the host (a wildcard rule lets it pick a sub-domain), the
//! CONNECT authority, the method, a header name. None of it may reach the upstream, DNS, the
//! records the sink journals, or the server log.

use super::support::*;
use paddock_types::event::{EgressRecord, EgressSink};
use paddock_types::manifest::EgressRule;
use paddock_types::redact::SecretMatcher;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A workspace secret the run has no binding for (the sandbox somehow holds it). Host names are
/// lower-cased by the broker, so it is lower-case to start with.
const LOOSE: &str = "wsloose7zq81mxc0vb7ne2lr5tka";

/// Remembers every record it is given, before forwarding and when finished.
#[derive(Default)]
struct CapturingSink {
    records: Mutex<Vec<EgressRecord>>,
}

impl EgressSink for CapturingSink {
    fn forwarding(
        &self,
        record: EgressRecord,
    ) -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send + '_>> {
        Box::pin(async move {
            self.records.lock().unwrap().push(record);
            Ok(1)
        })
    }

    fn finished(&self, _started: Option<u64>, record: EgressRecord) {
        self.records.lock().unwrap().push(record);
    }
}

/// The server log, captured for one test (the tests run on a current-thread runtime, so a
/// thread-local default subscriber sees every task).
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let buf = self.clone();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || buf.clone())
            .finish();
        tracing::subscriber::set_default(sub)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn wildcard(scheme: &str, host: &str, port: u16) -> EgressRule {
    EgressRule {
        host: host.into(),
        ..rule(scheme, host, port)
    }
}

async fn raw(proxy: std::net::SocketAddr, req: &str) -> Raw {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all).await;
    parse_response(&all)
}

fn assert_no_trace(what: &str, text: &str) {
    let hex: String = LOOSE.bytes().map(|b| format!("{b:02x}")).collect();
    for form in [
        LOOSE,
        &LOOSE.to_uppercase(),
        &hex,
        &LOOSE[..20],
        &LOOSE[8..],
    ] {
        assert!(!text.contains(form), "{what} holds {form}:\n{text}");
    }
}

#[tokio::test]
async fn a_secret_in_a_denied_request_never_reaches_the_records_or_the_log() {
    let log = LogBuf::default();
    let _log = log.install();
    let up = Upstream::plain().await;
    let port = up.port();
    let broker = broker(vec![up.addr.to_string()], Vec::new());
    let sink = Arc::new(CapturingSink::default());
    // The sink first, the scan second: the recorder must learn the secrets either way.
    let ctx = Arc::new(
        paddock_egress::RunEgress::new("run_leak", vec![rule("http", "127.0.0.1", port)], vec![])
            .with_sink(sink.clone())
            .with_secret_scan(SecretMatcher::new([("loose", LOOSE)]).unwrap()),
    );
    let proxy = start_proxy(&broker, &ctx).await;
    let allowed = format!("127.0.0.1:{port}");
    let cases = [
        // No rule for the host: denied before any scan (a CONNECT authority is scanned first).
        format!("GET http://nope.invalid/{LOOSE} HTTP/1.1\r\nHost: nope.invalid\r\n"),
        format!("GET http://{LOOSE}.invalid/x HTTP/1.1\r\nHost: nope.invalid\r\n"),
        format!("{LOOSE} http://nope.invalid/x HTTP/1.1\r\nHost: nope.invalid\r\n"),
        format!("CONNECT {LOOSE}.invalid:443 HTTP/1.1\r\nHost: {LOOSE}.invalid:443\r\n"),
        // An allowed host: refused for carrying the secret, which must not be recorded either.
        format!("GET http://{allowed}/a/{LOOSE}/b HTTP/1.1\r\nHost: {allowed}\r\n"),
        format!(
            "GET http://{allowed}/a/{}/b HTTP/1.1\r\nHost: {allowed}\r\n",
            &LOOSE[2..]
        ),
    ];
    for case in &cases {
        let r = raw(proxy.addr, &format!("{case}Connection: close\r\n\r\n")).await;
        assert_eq!(r.status, 403, "{case}: {}", r.text());
    }
    proxy.stop().await;
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    let records = sink.records.lock().unwrap().clone();
    assert_eq!(records.len(), cases.len(), "{records:#?}");
    assert_no_trace("the sink's records", &format!("{records:?}"));
    assert_no_trace("the server log", &log.text());
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r.reason == "secret_in_request")
        .collect();
    assert_eq!(refused.len(), 3, "{records:#?}");
    assert!(
        refused
            .iter()
            .all(|r| r.path == "[REDACTED]" || r.method == "CONNECT"),
        "{refused:#?}"
    );
}

#[tokio::test]
async fn a_secret_in_the_host_method_or_a_header_name_is_refused_before_it_leaves() {
    let log = LogBuf::default();
    let _log = log.install();
    let up = Upstream::plain().await;
    let port = up.port();
    let broker = broker(
        vec![up.addr.to_string(), "localhost:443".into()],
        Vec::new(),
    );
    let ctx = Arc::new(
        paddock_egress::RunEgress::new(
            "run_leak_head",
            vec![
                rule("http", "127.0.0.1", port),
                wildcard("http", "*.example.test", 80),
                wildcard("https", "*.example.test", 443),
            ],
            vec![],
        )
        .with_secret_scan(SecretMatcher::new([("loose", LOOSE)]).unwrap()),
    );
    let proxy = start_proxy(&broker, &ctx).await;
    let allowed = format!("127.0.0.1:{port}");
    let hex: String = LOOSE.bytes().map(|b| format!("{b:02x}")).collect();
    let cases = [
        (
            "host under a wildcard rule",
            // The Host header is innocent: the target's host alone carries the secret.
            format!("GET http://{LOOSE}.example.test/ HTTP/1.1\r\nHost: a.example.test\r\n"),
        ),
        (
            "connect authority under a wildcard rule",
            format!(
                "CONNECT {LOOSE}.example.test:443 HTTP/1.1\r\nHost: {LOOSE}.example.test:443\r\n"
            ),
        ),
        (
            "method, the rule lists none",
            format!("{LOOSE} http://{allowed}/m HTTP/1.1\r\nHost: {allowed}\r\n"),
        ),
        (
            "header name",
            format!("GET http://{allowed}/h HTTP/1.1\r\nHost: {allowed}\r\nx-{hex}: 1\r\n"),
        ),
    ];
    for (what, case) in &cases {
        let r = raw(proxy.addr, &format!("{case}Connection: close\r\n\r\n")).await;
        assert_eq!(r.status, 403, "{what}: {}", r.text());
        assert_eq!(
            r.header("paddock-egress-denied"),
            Some("secret_in_request"),
            "{what}: the scan must refuse before DNS or the upstream"
        );
    }
    // An innocent request on the same rules still passes.
    let r = raw(
        proxy.addr,
        &format!("GET http://{allowed}/fine HTTP/1.1\r\nHost: {allowed}\r\nx-note: 1\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    proxy.stop().await;
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let records = ctx.take_log();
    assert_eq!(records.len(), cases.len() + 1, "{records:#?}");
    assert_no_trace("the records", &format!("{records:?}"));
    assert_no_trace("the server log", &log.text());
}

fn query_binding(port: u16) -> paddock_types::manifest::CredentialBinding {
    paddock_types::manifest::CredentialBinding {
        secret: "weather_key".into(),
        scheme: "http".into(),
        host: "127.0.0.1".into(),
        port: Some(port),
        header: None,
        query: Some("api_key".into()),
        placeholder_env: None,
    }
}

fn get(url: String) -> paddock_egress::OutboundRequest {
    paddock_egress::OutboundRequest {
        method: http::Method::GET,
        url,
        headers: http::HeaderMap::new(),
        body: bytes::Bytes::new(),
    }
}

#[tokio::test]
async fn a_redirect_that_echoes_the_query_credential_does_not_carry_it_on() {
    // The upstream's `/redirect?to=X` answers `Location: X` with the rest of its query, so the
    // `api_key` the broker appended comes back in the `Location`, as an API that normalises
    // its URLs would send it.
    let bound = Upstream::plain().await;
    let other = Upstream::plain().await;
    let broker = broker_plaintext(
        vec![bound.addr.to_string(), other.addr.to_string()],
        vec![bound.addr.to_string()],
    );
    let rules = vec![
        rule("http", "127.0.0.1", bound.port()),
        rule("http", "127.0.0.1", other.port()),
    ];
    let creds = vec![paddock_egress::ResolvedCredential::new(
        query_binding(bound.port()),
        SECRET,
    )];
    // Same host, with the workspace scan on: the next hop is not refused for the echoed
    // secret; the broker injects the credential again, once.
    let ctx = paddock_egress::RunEgress::new("run_redirect", rules.clone(), creds.clone())
        .with_secret_scan(SecretMatcher::new([("weather_key", SECRET)]).unwrap());
    let r = broker
        .request(
            &ctx,
            get(format!(
                "http://127.0.0.1:{}/redirect?to=/next?x=1",
                bound.port()
            )),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let seen: Vec<String> = bound.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(
        seen,
        [
            format!("/redirect?to=/next?x=1&api_key={SECRET}"),
            format!("/next?x=1&api_key={SECRET}"),
        ]
    );
    // To another allowed host the binding does not cover: the secret stays behind.
    let ctx = paddock_egress::RunEgress::new("run_redirect_away", rules, creds);
    let r = broker
        .request(
            &ctx,
            get(format!(
                "http://127.0.0.1:{}/redirect?to=http://127.0.0.1:{}/land?x=1",
                bound.port(),
                other.port()
            )),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let seen: Vec<String> = other.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(seen, ["/land?x=1"]);
    assert!(!format!("{:?}", ctx.take_log()).contains(SECRET));
}

/// An upstream that keeps every byte it receives and answers 200 once a request's declared
/// body is complete.
struct SlowSink {
    addr: std::net::SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
}

impl SlowSink {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let rec = rec.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = vec![0u8; 65536];
                    loop {
                        let n = match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        rec.lock().unwrap().extend_from_slice(&chunk[..n]);
                        if complete(&buf) {
                            break;
                        }
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        Self { addr, received }
    }

    fn received_len(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    fn head(&self) -> String {
        let r = self.received.lock().unwrap();
        let end = r
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(r.len());
        String::from_utf8_lossy(&r[..end]).to_lowercase()
    }
}

fn complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    buf.len() >= end + 4 + len
}

fn scanning_ctx(port: u16) -> Arc<paddock_egress::RunEgress> {
    Arc::new(
        paddock_egress::RunEgress::new("run_body", vec![rule("http", "127.0.0.1", port)], vec![])
            .with_secret_scan(SecretMatcher::new([("loose", LOOSE)]).unwrap()),
    )
}

fn body_broker(
    upstream: std::net::SocketAddr,
    body_timeout: std::time::Duration,
) -> Arc<paddock_egress::Broker> {
    let mut cfg = paddock_egress::BrokerConfig::new(ca());
    cfg.allow_private = vec![upstream.to_string()];
    cfg.body_read_timeout = body_timeout;
    paddock_egress::Broker::new(cfg).unwrap()
}

/// Waits (bounded) until `cond` holds; false if it never did.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if cond() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn a_large_request_body_streams_through_the_scan_instead_of_being_held_whole() {
    let up = SlowSink::start().await;
    let broker = body_broker(up.addr, std::time::Duration::from_secs(30));
    let ctx = scanning_ctx(up.addr.port());
    let proxy = start_proxy(&broker, &ctx).await;
    let total = 4 * paddock_egress::SCAN_WHOLE_BYTES;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST http://{0}/upload HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\nContent-Length: {total}\r\n\r\n",
        up.addr
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // Half the body, then the client pauses: what the broker holds must not grow with it.
    s.write_all(&vec![b'a'; total / 2]).await.unwrap();
    assert!(
        eventually(|| up.received_len() >= total / 4).await,
        "the upstream got {} bytes while the client paused: the body is being held whole",
        up.received_len()
    );
    s.write_all(&vec![b'b'; total / 2]).await.unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all).await;
    let r = parse_response(&all);
    assert_eq!(r.status, 200, "{}", r.text());
    // Still sent with its length, not re-chunked.
    assert!(
        up.head().contains(&format!("content-length: {total}")),
        "{}",
        up.head()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_that_stalls_or_aborts_its_body_leaves_a_record_and_nothing_upstream() {
    let up = SlowSink::start().await;
    let broker = body_broker(up.addr, std::time::Duration::from_millis(300));
    let ctx = scanning_ctx(up.addr.port());
    let proxy = start_proxy(&broker, &ctx).await;
    let head = |path: &str| {
        format!(
            "POST http://{0}{path} HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\nContent-Length: 100\r\n\r\n0123456789",
            up.addr
        )
    };
    // Stalls: the broker stops waiting and says why.
    let mut stall = TcpStream::connect(proxy.addr).await.unwrap();
    stall.write_all(head("/stall").as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let _ = stall.read_to_end(&mut all).await;
    let r = parse_response(&all);
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.header("paddock-egress-error"), Some("body_timeout"));
    // Aborts: the client goes away half-way through its body.
    let mut abort = TcpStream::connect(proxy.addr).await.unwrap();
    abort.write_all(head("/abort").as_bytes()).await.unwrap();
    abort.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = abort.read_to_end(&mut rest).await;
    let log = wait_log(&ctx, 2).await;
    proxy.stop().await;
    assert_eq!(up.received_len(), 0);
    let reasons: Vec<(&str, &str)> = log
        .iter()
        .map(|r| (r.path.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("/stall", "rule:0 error:body_timeout"),
            ("/abort", "rule:0 error:protocol_error")
        ]
    );
}

#[tokio::test]
async fn a_run_cannot_open_more_than_its_share_of_proxy_connections() {
    let up = Upstream::plain().await;
    let broker = broker(vec![up.addr.to_string()], Vec::new());
    let ctx = Arc::new(paddock_egress::RunEgress::new(
        "run_conns",
        vec![rule("http", "127.0.0.1", up.port())],
        vec![],
    ));
    let proxy = start_proxy(&broker, &ctx).await;
    // Every slot taken by a connection that says nothing (as one stalling its body would).
    let mut idle = Vec::new();
    for _ in 0..paddock_egress::MAX_CONNECTIONS_PER_RUN {
        idle.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    let mut extra = TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!(
        "GET http://{0}/x HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n",
        up.addr
    );
    extra.write_all(req.as_bytes()).await.unwrap();
    // Not served while the run holds every slot (this can only miss a bug, never flake).
    let mut byte = [0u8; 1];
    let early =
        tokio::time::timeout(std::time::Duration::from_millis(500), extra.read(&mut byte)).await;
    assert!(early.is_err(), "served past the cap: {early:?}");
    assert!(up.seen().is_empty());
    // One ends: the waiting connection is served.
    drop(idle.pop());
    let mut all = byte[..0].to_vec();
    let _ = extra.read_to_end(&mut all).await;
    let r = parse_response(&all);
    assert_eq!(r.status, 200, "{}", r.text());
    drop(idle);
    proxy.stop().await;
}
