//! Secrets in transit: an upstream that reflects a bound secret in other encodings gets it
//! redacted, and a request that carries one of the workspace's secrets (request line, header,
//! body whole or streamed, `Broker::request`) is refused with `secret_in_request` before the
//! secret reaches the upstream's socket.

use super::support::*;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{HeaderMap, Method};
use paddock_egress::{DenyReason, EgressError, OutboundRequest, ResolvedCredential, RunEgress};
use paddock_types::event::EgressDecision;
use paddock_types::redact::SecretMatcher;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A workspace secret the run has no binding for (the sandbox somehow holds it).
const LOOSE: &str = "ws-loose-Zq81mXc0vB7ne2Lr5TkA";

/// A raw upstream: records every byte it receives and answers each request with `body`
/// (chunked in 7-byte pieces when `chunked`, so the stream redactor sees split forms).
struct RawUpstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
}

impl RawUpstream {
    async fn start(body: String, chunked: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (rec, body) = (rec.clone(), body.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        rec.lock().unwrap().extend_from_slice(&chunk[..n]);
                        if request_complete(&buf) {
                            break;
                        }
                    }
                    let _ = s.write_all(&response(&body, chunked)).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Self { addr, received }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

fn request_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let head = head.to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with("0\r\n\r\n");
    }
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= len
}

fn response(body: &str, chunked: bool) -> Vec<u8> {
    if !chunked {
        return format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
    }
    let mut out =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    for piece in body.as_bytes().chunks(7) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The bound secret as an upstream might echo it: each form, labelled.
fn reflections(secret: &str) -> Vec<(&'static str, String)> {
    let b64_at = |lead: &[u8]| {
        let mut blob = lead.to_vec();
        blob.extend_from_slice(secret.as_bytes());
        blob.extend_from_slice(b"\"}");
        STANDARD.encode(blob)
    };
    let hex: String = secret.bytes().map(|b| format!("{b:02X}")).collect();
    vec![
        (
            "json \\/",
            serde_json::to_string(secret).unwrap().replace('/', "\\/"),
        ),
        ("base64 offset 1", b64_at(b"{")),
        ("base64 offset 2", b64_at(b"{\"")),
        ("base64url", URL_SAFE_NO_PAD.encode(secret)),
        ("hex upper", hex),
        ("upper-case", secret.to_ascii_uppercase()),
        ("reversed", secret.chars().rev().collect()),
        ("cut by one", secret[..secret.len() - 1].to_owned()),
        ("html", secret.replace('/', "&#x2F;")),
    ]
}

#[tokio::test]
async fn a_secret_echoed_in_other_encodings_is_redacted() {
    let secret = "sk-live/9fQ2xWm4Lr8TzB1vNc7Hy";
    let forms = reflections(secret);
    let body: String = forms
        .iter()
        .map(|(what, f)| format!("{what}: <{f}>\n"))
        .collect();
    for chunked in [false, true] {
        let up = RawUpstream::start(body.clone(), chunked).await;
        let broker = broker(vec![up.addr.to_string()], vec![]);
        // Bound to another host: redaction covers every response of the run.
        let ctx = Arc::new(RunEgress::new(
            "run_reflect",
            vec![rule("http", "127.0.0.1", up.addr.port())],
            vec![ResolvedCredential::new(
                header_binding("api_key", "https", "api.example.com", 443),
                secret,
            )],
        ));
        let proxy = start_proxy(&broker, &ctx).await;
        let r = proxy_get(
            proxy.addr,
            "GET",
            &format!("http://127.0.0.1:{}/reflect", up.addr.port()),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
        let text = r.text();
        for (what, form) in &forms {
            assert!(
                !text.contains(form.as_str()),
                "{what} (chunked {chunked}) leaked: {text}"
            );
            assert!(
                text.contains(&format!("{what}: <")),
                "{what} (chunked {chunked}) missing: {text}"
            );
        }
        assert!(text.contains("[REDACTED:api_key]"), "{text}");
        proxy.stop().await;
    }
}

fn scanned_ctx(port: u16) -> Arc<RunEgress> {
    let workspace = SecretMatcher::new([("loose", LOOSE), ("bound", SECRET)]).unwrap();
    let mut bound =
        ResolvedCredential::new(header_binding("bound", "http", "127.0.0.1", port), SECRET);
    bound.placeholder = Some("PLACEHOLDER-abcdefghijklmnopq".into());
    Arc::new(
        RunEgress::new(
            "run_scan",
            vec![rule("http", "127.0.0.1", port)],
            vec![bound],
        )
        .with_secret_scan(workspace),
    )
}

async fn raw_request(proxy: SocketAddr, head: &str, chunks: &[&[u8]]) -> Raw {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    for c in chunks {
        // A write may fail once the broker has refused and closed.
        if s.write_all(c).await.is_err() {
            break;
        }
        s.flush().await.ok();
    }
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all).await;
    parse_response(&all)
}

#[tokio::test]
async fn a_workspace_secret_in_a_request_is_refused_before_it_leaves() {
    let up = RawUpstream::start("ok".into(), false).await;
    let port = up.addr.port();
    // The bound credential goes over plain http to the test upstream: the operator says so.
    let broker = broker_plaintext(vec![up.addr.to_string()], vec![up.addr.to_string()]);
    let ctx = scanned_ctx(port);
    let proxy = start_proxy(&broker, &ctx).await;
    let base = format!("http://127.0.0.1:{port}");
    let b64 = STANDARD.encode(format!("x{LOOSE}"));
    let json = format!("{{\"note\": \"{}\"}}", LOOSE.replace('-', "\\u002d"));
    let cut = &LOOSE[1..];

    let plain = |method: &str, path: &str, headers: &str, body: &str| {
        format!(
            "{method} {base}{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
             {headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let cases = [
        (
            "query",
            plain("GET", &format!("/q?t={}", LOOSE.to_lowercase()), "", ""),
        ),
        (
            "header",
            plain("GET", "/h", &format!("X-Note: {cut}\r\n"), ""),
        ),
        ("json body", plain("POST", "/j", "", &json)),
        ("base64 body", plain("POST", "/b", "", &b64)),
        (
            "bound secret's value in a header",
            plain("GET", "/v", &format!("X-Raw: {SECRET}\r\n"), ""),
        ),
    ];
    for (what, req) in &cases {
        let r = raw_request(proxy.addr, req, &[]).await;
        assert_eq!(r.status, 403, "{what}: {}", r.text());
        assert_eq!(
            r.header("paddock-egress-denied"),
            Some("secret_in_request"),
            "{what}"
        );
    }
    // Streamed (chunked, unknown length), the secret split across chunks: the exchange is
    // cut before the secret's end leaves.
    let head = format!(
        "POST {base}/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    let (a, b) = LOOSE.split_at(10);
    let pieces = [
        format!("{:x}\r\n{}\r\n", 4000, "p".repeat(4000)),
        format!("{:x}\r\nzz{a}\r\n", a.len() + 2),
        format!("{:x}\r\n{b}zz\r\n", b.len() + 2),
        "0\r\n\r\n".to_owned(),
    ];
    let chunks: Vec<&[u8]> = pieces.iter().map(|p| p.as_bytes()).collect();
    let r = raw_request(proxy.addr, &head, &chunks).await;
    assert_eq!(r.status, 403, "stream: {}", r.text());
    assert_eq!(r.header("paddock-egress-denied"), Some("secret_in_request"));

    // The placeholder is swapped for the bound secret after the scan: allowed.
    let ok = plain(
        "GET",
        "/fine",
        "Authorization: Bearer PLACEHOLDER-abcdefghijklmnopq\r\n",
        "",
    );
    let r = raw_request(proxy.addr, &ok, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    proxy.stop().await;

    let received = up.received();
    assert!(received.contains("GET /fine"), "{received}");
    assert!(received.contains(&format!("Bearer {SECRET}")), "{received}");
    for leak in [LOOSE, cut, &b64, a, b] {
        if leak == a {
            // The first piece (10 characters, shorter than a fragment) may leave on its own.
            continue;
        }
        assert!(
            !received.contains(leak),
            "{leak} reached the upstream:\n{received}"
        );
    }
    assert!(
        !received.contains("/q?") && !received.contains("/j "),
        "{received}"
    );

    let log = ctx.take_log();
    let denied: Vec<_> = log
        .iter()
        .filter(|r| r.reason == "secret_in_request")
        .collect();
    assert_eq!(denied.len(), cases.len() + 1, "{log:#?}");
    assert!(denied.iter().all(|r| r.decision == EgressDecision::Denied));
    assert!(denied.iter().all(|r| r.credential.is_none()), "{denied:#?}");
    // The stream was checked as it went: its harmless start left before the secret was seen.
    assert!(received.contains(&"p".repeat(1000)), "{received}");
    // A refused request's path is not recorded (it may hold a piece of the secret).
    assert!(denied.iter().all(|r| r.path == "[REDACTED]"), "{denied:#?}");
    let streamed = denied.iter().max_by_key(|r| r.bytes_sent).unwrap();
    assert!(streamed.bytes_sent >= 1000, "{streamed:?}");
}

#[tokio::test]
async fn the_http_request_tool_cannot_send_a_workspace_secret() {
    let up = RawUpstream::start("ok".into(), false).await;
    let port = up.addr.port();
    // The bound credential goes over plain http to the test upstream: the operator says so.
    let broker = broker_plaintext(vec![up.addr.to_string()], vec![up.addr.to_string()]);
    let ctx = scanned_ctx(port);
    let req = OutboundRequest {
        method: Method::POST,
        url: format!("http://127.0.0.1:{port}/post"),
        headers: HeaderMap::new(),
        body: Bytes::from(format!("data={}", hex_lower(LOOSE))),
    };
    let err = broker.request(&ctx, req).await.unwrap_err();
    assert!(
        matches!(
            err,
            EgressError::Denied {
                reason: DenyReason::SecretInRequest
            }
        ),
        "{err}"
    );
    assert!(up.received().is_empty(), "{}", up.received());
    let log = ctx.take_log();
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0].reason, "secret_in_request");
    assert_eq!(log[0].bytes_sent, 0, "{log:#?}");
}

fn hex_lower(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}
