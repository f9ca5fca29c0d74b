//! Plain HTTP through the forward proxy (absolute-form requests).

use super::support::*;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use paddock_egress::{ResolvedCredential, RunEgress};
use paddock_types::event::EgressDecision;
use paddock_types::manifest::EgressRule;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

async fn setup(rules: Vec<EgressRule>) -> (Upstream, Arc<RunEgress>, Proxy) {
    let up = Upstream::plain().await;
    let broker = broker(vec![up.addr.to_string()], vec![]);
    let ctx = Arc::new(RunEgress::new("run_plain", rules, vec![]));
    let proxy = start_proxy(&broker, &ctx).await;
    (up, ctx, proxy)
}

#[tokio::test]
async fn allowed_get_reaches_upstream_and_is_recorded() {
    let up = Upstream::plain().await;
    let broker = broker(vec![up.addr.to_string()], vec![]);
    let ctx = Arc::new(RunEgress::new(
        "run_plain",
        vec![rule("http", "127.0.0.1", up.port())],
        vec![],
    ));
    let proxy = start_proxy(&broker, &ctx).await;
    let url = format!("http://127.0.0.1:{}/hello?token=abc", up.port());
    let r = proxy_get(proxy.addr, "GET", &url, &[("X-Test", "1")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().starts_with("GET /hello?token=abc\n"),
        "{}",
        r.text()
    );

    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["host"], format!("127.0.0.1:{}", up.port()));
    assert_eq!(seen[0].headers["x-test"], "1");
    // Hop-by-hop headers stay between the client and the proxy.
    assert!(seen[0].headers.get("connection").is_none());

    let log = wait_log(&ctx, 1).await;
    assert_eq!(log.len(), 1, "{log:?}");
    let rec = &log[0];
    assert_eq!(rec.decision, EgressDecision::Allowed);
    assert_eq!(rec.reason, "rule:0");
    assert_eq!((rec.method.as_str(), rec.scheme.as_str()), ("GET", "http"));
    assert_eq!((rec.host.as_str(), rec.port), ("127.0.0.1", up.port()));
    // The query never reaches the log.
    assert_eq!(rec.path, "/hello");
    assert_eq!(rec.status, Some(200));
    assert_eq!(rec.bytes_received, r.body.len() as u64);
    assert_eq!(rec.credential, None);
    proxy.stop().await;
}

#[tokio::test]
async fn disallowed_host_is_refused_with_reason() {
    let (up, ctx, proxy) = setup(vec![rule("http", "127.0.0.1", 1)]).await;
    // Refused by the rules before any DNS lookup, so this name never leaves the machine.
    let r = proxy_get(proxy.addr, "GET", "http://evil.example/steal", &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("paddock-egress-denied"), Some("no_rule"));
    assert!(r.text().contains("no_rule"));
    let log = wait_log(&ctx, 1).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].decision, EgressDecision::Denied);
    assert_eq!(log[0].reason, "no_rule");
    assert_eq!(log[0].host, "evil.example");
    assert_eq!(log[0].path, "/steal");
    assert_eq!(log[0].status, None);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn wrong_path_wrong_method_and_deny_rule() {
    let up_port_rules = |port: u16| {
        vec![
            EgressRule {
                path_prefix: "/api/".into(),
                methods: vec!["GET".into()],
                ..rule("http", "127.0.0.1", port)
            },
            EgressRule {
                path_prefix: "/api/admin".into(),
                deny: true,
                ..rule("http", "127.0.0.1", port)
            },
        ]
    };
    let up = Upstream::plain().await;
    let broker = broker(vec![up.addr.to_string()], vec![]);
    let ctx = Arc::new(RunEgress::new(
        "run_rules",
        up_port_rules(up.port()),
        vec![],
    ));
    let proxy = start_proxy(&broker, &ctx).await;
    let base = format!("http://127.0.0.1:{}", up.port());

    let cases = [
        ("GET", "/api/items", 200, None),
        ("GET", "/other", 403, Some("path_not_allowed")),
        ("POST", "/api/items", 403, Some("method_not_allowed")),
        ("GET", "/api/admin/users", 403, Some("denied_by_rule")),
        ("GET", "/api/%2e%2e/secret", 403, Some("path_traversal")),
        ("GET", "/api/..%2Fsecret", 403, Some("path_traversal")),
    ];
    for (method, path, status, reason) in cases {
        let r = proxy_get(proxy.addr, method, &format!("{base}{path}"), &[]).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert_eq!(r.header("paddock-egress-denied"), reason, "{method} {path}");
    }
    assert_eq!(
        up.seen().len(),
        1,
        "only the allowed request reaches the upstream"
    );
    let log = wait_log(&ctx, cases.len()).await;
    assert_eq!(log.len(), cases.len(), "{log:?}");
    for (method, path, _, reason) in cases {
        let rec = log
            .iter()
            .find(|r| r.method == method && r.path == path)
            .unwrap_or_else(|| panic!("no record for {method} {path}: {log:?}"));
        match reason {
            None => assert_eq!(rec.decision, EgressDecision::Allowed),
            Some(reason) => {
                assert_eq!(rec.decision, EgressDecision::Denied);
                assert_eq!(rec.reason, reason);
            }
        }
    }
    proxy.stop().await;
}

#[tokio::test]
async fn origin_form_and_foreign_scheme_are_bad_requests() {
    let (_up, ctx, proxy) = setup(vec![]).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let r = exchange(
        &mut s,
        "GET /direct HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("paddock-egress-denied"), Some("bad_request"));
    let r = proxy_get(proxy.addr, "GET", "ftp://example.com/file", &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("paddock-egress-denied"),
        Some("scheme_not_allowed")
    );
    let log = wait_log(&ctx, 2).await;
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|r| r.decision == EgressDecision::Denied));
}

#[tokio::test]
async fn no_rules_means_no_egress() {
    let (up, ctx, proxy) = setup(vec![]).await;
    let r = proxy_get(
        proxy.addr,
        "GET",
        &format!("http://127.0.0.1:{}/", up.port()),
        &[],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("paddock-egress-denied"), Some("no_rule"));
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(wait_log(&ctx, 1).await.len(), 1);
}

#[tokio::test]
async fn keep_alive_client_connection_serves_several_requests() {
    let up = Upstream::plain().await;
    let broker = broker(vec![up.addr.to_string()], vec![]);
    let ctx = Arc::new(RunEgress::new(
        "run_ka",
        vec![rule("http", "127.0.0.1", up.port())],
        vec![],
    ));
    let proxy = start_proxy(&broker, &ctx).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(TokioIo::new(tcp))
    .await
    .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = http::Request::get(format!("http://127.0.0.1:{}/n{i}", up.port()))
            .body(http_body_util::Empty::new())
            .unwrap();
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(format!("GET /n{i}").as_bytes()));
    }
    // One upstream connection served all three (kept alive per client connection).
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    let log = wait_log(&ctx, 3).await;
    assert_eq!(log.len(), 3);
    proxy.stop().await;
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_recorded() {
    // Bind then drop: a loopback port with nobody listening.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let broker = broker(vec![format!("127.0.0.1:{port}")], vec![]);
    let ctx = Arc::new(RunEgress::new(
        "run_down",
        vec![rule("http", "127.0.0.1", port)],
        vec![],
    ));
    let proxy = start_proxy(&broker, &ctx).await;
    let r = proxy_get(
        proxy.addr,
        "GET",
        &format!("http://127.0.0.1:{port}/x"),
        &[],
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("paddock-egress-error"), Some("connect_failed"));
    let log = wait_log(&ctx, 1).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].decision, EgressDecision::Allowed);
    assert_eq!(log[0].reason, "rule:0 error:connect_failed");
    assert_eq!(log[0].status, None);
    proxy.stop().await;
}

#[tokio::test]
async fn placeholder_is_not_swapped_on_an_unbound_host() {
    let up = Upstream::plain().await;
    let broker = broker(vec![up.addr.to_string()], vec![]);
    // The credential is bound to another host: this upstream must see the placeholder only.
    let cred = ResolvedCredential::new(
        header_binding("api_token", "https", "api.example.com", 443),
        SECRET,
    );
    let placeholder = cred.placeholder.clone().unwrap();
    let ctx = Arc::new(RunEgress::new(
        "run_ph",
        vec![rule("http", "127.0.0.1", up.port())],
        vec![cred],
    ));
    assert_eq!(
        ctx.placeholders(),
        vec![("API_KEY".to_owned(), placeholder.clone())]
    );
    let proxy = start_proxy(&broker, &ctx).await;
    let url = format!("http://127.0.0.1:{}/p?key={placeholder}", up.port());
    let r = proxy_get(proxy.addr, "GET", &url, &[("X-Key", &placeholder)]).await;
    assert_eq!(r.status, 200);
    let seen = up.seen();
    assert_eq!(seen[0].headers["x-key"], placeholder.as_str());
    assert!(seen[0].uri.contains(&placeholder));
    assert!(seen[0].headers.get("authorization").is_none());
    let log = wait_log(&ctx, 1).await;
    assert_eq!(log[0].credential, None);
    proxy.stop().await;
}
