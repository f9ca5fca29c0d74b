//! HTTPS through `CONNECT`: interception for bound or path-restricted hosts, blind tunnels
//! otherwise.

use super::support::*;
use paddock_egress::{ResolvedCredential, RunEgress};
use paddock_types::event::EgressDecision;
use paddock_types::manifest::{CredentialBinding, EgressRule};
use std::sync::Arc;

#[tokio::test]
async fn bound_host_is_intercepted_and_credential_injected_and_redacted() {
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
    let placeholder = cred.placeholder.clone().unwrap();
    let ctx = Arc::new(RunEgress::new(
        "run_bound",
        vec![rule("https", "localhost", port)],
        vec![cred],
    ));
    let proxy = start_proxy(&broker, &ctx).await;

    let (tcp, status, _, _) = connect(proxy.addr, &format!("localhost:{port}")).await;
    assert_eq!(status, 200);
    // The sandbox trusts the broker's CA, and that is enough: the broker terminates TLS.
    let mut tls = tls_over(tcp, "localhost", broker.ca_cert_pem())
        .await
        .unwrap();
    let r = exchange(
        &mut tls,
        &format!(
            "GET /echo?k=v HTTP/1.1\r\nHost: localhost:{port}\r\n\
             Authorization: Bearer {placeholder}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The upstream saw the real secret, injected and swapped in.
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {SECRET}").as_str()
    );
    assert!(!seen[0].uri.contains(SECRET), "{}", seen[0].uri);
    assert_eq!(
        seen[0].headers["host"],
        format!("localhost:{port}").as_str()
    );

    // The upstream echoed it back in body and header; the sandbox only sees redactions.
    let text = r.text();
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("[REDACTED:api_token]"), "{text}");
    assert_eq!(r.header("x-echo-auth"), Some("Bearer [REDACTED:api_token]"));
    assert!(!format!("{:?}", r.headers).contains(SECRET));

    let log = wait_log(&ctx, 1).await;
    assert_eq!(log.len(), 1, "{log:?}");
    let rec = &log[0];
    assert_eq!(rec.decision, EgressDecision::Allowed);
    assert_eq!((rec.method.as_str(), rec.scheme.as_str()), ("GET", "https"));
    assert_eq!(rec.path, "/echo");
    assert_eq!(rec.status, Some(200));
    assert_eq!(rec.credential.as_deref(), Some("api_token"));
    assert!(!format!("{log:?}").contains(SECRET));
    proxy.stop().await;
}

#[tokio::test]
async fn streamed_echo_is_redacted_too() {
    let up = Upstream::tls().await;
    let port = up.port();
    // A tiny buffer limit forces the streamed path (no content-length, chunked to the client).
    let broker = broker_with(
        vec![format!("127.0.0.1:{port}")],
        vec![up.cert_pem.clone().unwrap()],
        64,
    );
    let cred = ResolvedCredential::new(
        header_binding("api_token", "https", "127.0.0.1", port),
        SECRET,
    );
    let ctx = Arc::new(RunEgress::new(
        "run_stream",
        vec![rule("https", "127.0.0.1", port)],
        vec![cred],
    ));
    let proxy = start_proxy(&broker, &ctx).await;
    let (tcp, status, _, _) = connect(proxy.addr, &format!("127.0.0.1:{port}")).await;
    assert_eq!(status, 200);
    let mut tls = tls_over(tcp, "127.0.0.1", broker.ca_cert_pem())
        .await
        .unwrap();
    let r = exchange(
        &mut tls,
        "GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let text = r.text();
    assert!(!text.contains(SECRET));
    assert_eq!(text.matches("[REDACTED:api_token]").count(), 50);
    let log = wait_log(&ctx, 1).await;
    assert!(log[0].bytes_received > 50 * SECRET.len() as u64);
    proxy.stop().await;
}

#[tokio::test]
async fn unbound_unrestricted_host_is_tunnelled_untouched() {
    let up = Upstream::tls().await;
    let port = up.port();
    let broker = broker(vec![format!("localhost:{port}")], vec![]);
    let ctx = Arc::new(RunEgress::new(
        "run_tunnel",
        vec![rule("https", "localhost", port)],
        vec![],
    ));
    let proxy = start_proxy(&broker, &ctx).await;

    // The broker's CA does not work: nobody in the middle presents its certificate...
    let (tcp, status, _, _) = connect(proxy.addr, &format!("localhost:{port}")).await;
    assert_eq!(status, 200);
    assert!(
        tls_over(tcp, "localhost", broker.ca_cert_pem())
            .await
            .is_err()
    );

    // ...and the upstream's own self-signed certificate does: end-to-end TLS.
    let (tcp, status, _, _) = connect(proxy.addr, &format!("localhost:{port}")).await;
    assert_eq!(status, 200);
    let mut tls = tls_over(tcp, "localhost", up.cert_pem.as_deref().unwrap())
        .await
        .unwrap();
    let r = exchange(
        &mut tls,
        "GET /raw HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer mine\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    // Untouched: what the sandbox sent is what the upstream got.
    assert_eq!(seen[0].headers["authorization"], "Bearer mine");

    proxy.stop().await;
    let log = ctx.take_log();
    assert_eq!(log.len(), 2, "{log:?}");
    for rec in &log {
        assert_eq!(rec.method, "CONNECT");
        assert_eq!(rec.decision, EgressDecision::Allowed);
        assert_eq!(rec.reason, "rule:0");
        assert_eq!((rec.host.as_str(), rec.port), ("localhost", port));
    }
    assert!(log.iter().any(|r| r.bytes_sent > 0 && r.bytes_received > 0));
}

#[tokio::test]
async fn path_restricted_host_is_intercepted_and_checked_per_request() {
    let up = Upstream::tls().await;
    let port = up.port();
    let broker = broker(
        vec![format!("localhost:{port}")],
        vec![up.cert_pem.clone().unwrap()],
    );
    let rules = vec![EgressRule {
        path_prefix: "/api/".into(),
        ..rule("https", "localhost", port)
    }];
    let ctx = Arc::new(RunEgress::new("run_inspect", rules, vec![]));
    let proxy = start_proxy(&broker, &ctx).await;
    for (path, status) in [("/api/ok", 200), ("/private", 403)] {
        let (tcp, s, _, _) = connect(proxy.addr, &format!("localhost:{port}")).await;
        assert_eq!(s, 200);
        let mut tls = tls_over(tcp, "localhost", broker.ca_cert_pem())
            .await
            .unwrap();
        let r = exchange(
            &mut tls,
            &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, status, "{path}");
        if status == 403 {
            assert_eq!(r.header("paddock-egress-denied"), Some("path_not_allowed"));
        }
    }
    assert_eq!(up.seen().len(), 1);
    let log = wait_log(&ctx, 2).await;
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(
        log.iter()
            .filter(|r| r.decision == EgressDecision::Denied)
            .count(),
        1
    );
    proxy.stop().await;
}

#[tokio::test]
async fn connect_that_no_rule_allows_is_refused_before_any_tunnel() {
    let up = Upstream::tls().await;
    let port = up.port();
    let broker = broker(vec![format!("localhost:{port}")], vec![]);
    let rules = vec![
        rule("https", "localhost", port),
        EgressRule {
            deny: true,
            ..rule("https", "blocked.localhost", port)
        },
        rule("http", "plain.example", 443),
    ];
    let ctx = Arc::new(RunEgress::new("run_refuse", rules, vec![]));
    let proxy = start_proxy(&broker, &ctx).await;
    for (authority, reason) in [
        ("evil.example:443".to_owned(), "no_rule"),
        (
            format!("localhost:{}", port.wrapping_add(1)),
            "port_not_allowed",
        ),
        (format!("blocked.localhost:{port}"), "denied_by_rule"),
        ("plain.example:443".to_owned(), "scheme_not_allowed"),
    ] {
        let (_s, status, headers, body) = connect(proxy.addr, &authority).await;
        assert_eq!(status, 403, "{authority}");
        let got = headers
            .iter()
            .find(|(k, _)| k == "paddock-egress-denied")
            .map(|(_, v)| v.as_str());
        assert_eq!(got, Some(reason), "{authority}");
        assert!(String::from_utf8_lossy(&body).contains(reason));
    }
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 0);
    let log = wait_log(&ctx, 4).await;
    assert_eq!(log.len(), 4);
    assert!(
        log.iter()
            .all(|r| r.decision == EgressDecision::Denied && r.method == "CONNECT")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn query_credential_through_interception() {
    let up = Upstream::tls().await;
    let port = up.port();
    let broker = broker(
        vec![format!("localhost:{port}")],
        vec![up.cert_pem.clone().unwrap()],
    );
    let binding = CredentialBinding {
        secret: "maps_key".into(),
        scheme: "https".into(),
        host: "localhost".into(),
        port: Some(port),
        header: None,
        query: Some("key".into()),
        placeholder_env: None,
    };
    let ctx = Arc::new(RunEgress::new(
        "run_q",
        vec![rule("https", "localhost", port)],
        vec![ResolvedCredential::new(binding, SECRET)],
    ));
    let proxy = start_proxy(&broker, &ctx).await;
    let (tcp, _, _, _) = connect(proxy.addr, &format!("localhost:{port}")).await;
    let mut tls = tls_over(tcp, "localhost", broker.ca_cert_pem())
        .await
        .unwrap();
    let r = exchange(
        &mut tls,
        "GET /geo?q=x&key=guess HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.seen()[0].uri, format!("/geo?q=x&key={SECRET}"));
    assert!(!r.text().contains(SECRET));
    let log = wait_log(&ctx, 1).await;
    assert_eq!(log[0].credential.as_deref(), Some("maps_key"));
    assert_eq!(log[0].path, "/geo");
    proxy.stop().await;
}
