//! Where a credential goes: only to the binding's exact `scheme://host:port`, only in the field
//! the binding names, and over plain `http` only where the operator allows it. Each test is an
//! attack a sandbox could make, against the real proxy or `request()` and a local upstream.

use super::support::*;
use bytes::Bytes;
use http::{HeaderMap, Method};
use paddock_egress::{DenyReason, OutboundRequest, ResolvedCredential, RunEgress};
use paddock_types::event::EgressDecision;
use paddock_types::manifest::CredentialBinding;
use std::sync::Arc;
use std::sync::atomic::Ordering;

fn get(url: String) -> OutboundRequest {
    OutboundRequest {
        method: Method::GET,
        url,
        headers: HeaderMap::new(),
        body: Bytes::new(),
    }
}

/// Nothing the upstream saw holds the secret, except the `authorization` headers listed.
#[track_caller]
fn assert_secret_only_in_authorization(up: &Upstream) {
    for s in up.seen() {
        assert!(!s.uri.contains(SECRET), "secret in the target: {s:?}");
        for (k, v) in &s.headers {
            if k != "authorization" {
                assert!(
                    !String::from_utf8_lossy(v.as_bytes()).contains(SECRET),
                    "secret in {k}: {s:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_placeholder_anywhere_but_the_bound_header_is_refused() {
    let up = Upstream::plain().await;
    let target = up.addr.to_string();
    let broker = broker_plaintext(vec![target.clone()], vec![target]);
    let cred = ResolvedCredential::new(
        header_binding("api_token", "http", "127.0.0.1", up.port()),
        SECRET,
    );
    let ph = cred.placeholder.clone().unwrap();
    let ctx = Arc::new(RunEgress::new(
        "run_misplaced",
        vec![rule("http", "127.0.0.1", up.port())],
        vec![cred],
    ));
    let proxy = start_proxy(&broker, &ctx).await;
    let base = format!("http://127.0.0.1:{}", up.port());
    // The first character percent-encoded: a server decodes it back into the placeholder.
    let encoded = format!("%{:02X}{}", ph.as_bytes()[0], &ph[1..]);
    let cookie = format!("s={ph}");
    let attacks: Vec<(String, Vec<(&str, &str)>)> = vec![
        (format!("{base}/p?token={ph}"), vec![]),
        (format!("{base}/p?a=1&token=x{ph}y"), vec![]),
        (format!("{base}/p/{ph}"), vec![]),
        (format!("{base}/p/{encoded}"), vec![]),
        (format!("{base}/p"), vec![("X-Api-Key", ph.as_str())]),
        (format!("{base}/p"), vec![("Cookie", cookie.as_str())]),
    ];
    for (url, headers) in &attacks {
        let r = proxy_get(proxy.addr, "GET", url, headers).await;
        assert_eq!(r.status, 403, "{url} {headers:?}: {}", r.text());
        assert_eq!(
            r.header("paddock-egress-denied"),
            Some("placeholder_misplaced"),
            "{url}"
        );
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);

    // In the header the binding names, the placeholder is fine: that header is set anyway.
    let auth = format!("Bearer {ph}");
    let r = proxy_get(
        proxy.addr,
        "GET",
        &format!("{base}/ok"),
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {SECRET}").as_str()
    );
    assert_secret_only_in_authorization(&up);

    // The http_request tool's path refuses the same way.
    let err = broker
        .request(&ctx, get(format!("{base}/p?token={ph}")))
        .await
        .unwrap_err();
    assert_eq!(err.deny_reason(), Some(DenyReason::PlaceholderMisplaced));
    assert_eq!(up.seen().len(), 1);

    proxy.stop().await;
    let log = ctx.take_log();
    let denied: Vec<_> = log
        .iter()
        .filter(|r| r.decision == EgressDecision::Denied)
        .collect();
    assert_eq!(denied.len(), attacks.len() + 1, "{log:?}");
    assert!(denied.iter().all(|r| r.reason == "placeholder_misplaced"));
    assert!(!format!("{log:?}").contains(SECRET));
}

#[tokio::test]
async fn a_query_binding_takes_the_placeholder_only_in_its_own_parameter() {
    let up = Upstream::plain().await;
    let target = up.addr.to_string();
    let broker = broker_plaintext(vec![target.clone()], vec![target]);
    let binding = CredentialBinding {
        query: Some("key".into()),
        header: None,
        ..header_binding("maps_key", "http", "127.0.0.1", up.port())
    };
    let cred = ResolvedCredential::new(binding, SECRET);
    let ph = cred.placeholder.clone().unwrap();
    let ctx = RunEgress::new(
        "run_query_ph",
        vec![rule("http", "127.0.0.1", up.port())],
        vec![cred],
    );
    let base = format!("http://127.0.0.1:{}", up.port());
    for url in [
        format!("{base}/geo?other={ph}&key=x"),
        format!("{base}/geo?q=1"),
    ] {
        let _ = broker.request(&ctx, get(url)).await;
    }
    let seen = up.seen();
    // The first was refused; the second got the key although it did not ask for it.
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].uri, format!("/geo?q=1&key={SECRET}"));
    let r = broker
        .request(&ctx, get(format!("{base}/geo?key={ph}&q=2")))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.seen()[1].uri, format!("/geo?q=2&key={SECRET}"));
    let log = ctx.take_log();
    assert_eq!(log[0].reason, "placeholder_misplaced", "{log:?}");
    assert_eq!(log[0].decision, EgressDecision::Denied);
}

#[tokio::test]
async fn a_binding_injects_only_on_its_own_port() {
    let bound = Upstream::plain().await;
    let other = Upstream::plain().await;
    let targets = vec![bound.addr.to_string(), other.addr.to_string()];
    // Both targets are allowed plaintext credentials: only the binding's port decides.
    let broker = broker_plaintext(targets.clone(), targets);
    let cred = ResolvedCredential::new(
        header_binding("api_token", "http", "127.0.0.1", bound.port()),
        SECRET,
    );
    let ph = cred.placeholder.clone().unwrap();
    let ctx = Arc::new(RunEgress::new(
        "run_port",
        vec![
            rule("http", "127.0.0.1", bound.port()),
            rule("http", "127.0.0.1", other.port()),
        ],
        vec![cred],
    ));
    let proxy = start_proxy(&broker, &ctx).await;
    let auth = format!("Bearer {ph}");
    for up in [&other, &bound] {
        let url = format!("http://127.0.0.1:{}/p", up.port());
        let r = proxy_get(proxy.addr, "GET", &url, &[("Authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The other port of the same host got what the sandbox sent: the placeholder, no secret.
    assert_eq!(other.seen()[0].headers["authorization"], auth.as_str());
    assert_eq!(
        bound.seen()[0].headers["authorization"],
        format!("Bearer {SECRET}").as_str()
    );
    proxy.stop().await;
    let log = ctx.take_log();
    let by_port = |p: u16| log.iter().find(|r| r.port == p).unwrap();
    assert_eq!(by_port(other.port()).credential, None);
    assert_eq!(
        by_port(bound.port()).credential.as_deref(),
        Some("api_token")
    );
}

#[tokio::test]
async fn a_binding_to_https_never_injects_over_plain_http() {
    let up = Upstream::plain().await;
    let broker = broker(vec![up.addr.to_string()], vec![]);
    // Bound to https on this very host and port; the sandbox asks for http instead.
    let cred = ResolvedCredential::new(
        header_binding("api_token", "https", "127.0.0.1", up.port()),
        SECRET,
    );
    let ctx = Arc::new(RunEgress::new(
        "run_scheme",
        vec![rule("http", "127.0.0.1", up.port())],
        vec![cred],
    ));
    let proxy = start_proxy(&broker, &ctx).await;
    let url = format!("http://127.0.0.1:{}/p", up.port());
    let r = proxy_get(proxy.addr, "GET", &url, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(up.seen()[0].headers.get("authorization").is_none());
    broker.request(&ctx, get(url)).await.unwrap();
    assert!(up.seen()[1].headers.get("authorization").is_none());
    proxy.stop().await;
    assert!(ctx.take_log().iter().all(|r| r.credential.is_none()));
}

#[tokio::test]
async fn a_plaintext_binding_is_refused_unless_the_operator_allows_it() {
    let up = Upstream::plain().await;
    let cred = || {
        ResolvedCredential::new(
            header_binding("api_token", "http", "127.0.0.1", up.port()),
            SECRET,
        )
    };
    let rules = vec![rule("http", "127.0.0.1", up.port())];
    let url = format!("http://127.0.0.1:{}/p", up.port());

    let refusing = broker(vec![up.addr.to_string()], vec![]);
    let ctx = Arc::new(RunEgress::new("run_plain_no", rules.clone(), vec![cred()]));
    let proxy = start_proxy(&refusing, &ctx).await;
    let r = proxy_get(proxy.addr, "GET", &url, &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.header("paddock-egress-denied"),
        Some("plaintext_credential")
    );
    assert!(r.text().contains("plaintext_credential"), "{}", r.text());
    let err = refusing.request(&ctx, get(url.clone())).await.unwrap_err();
    assert_eq!(err.deny_reason(), Some(DenyReason::PlaintextCredential));
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);
    proxy.stop().await;
    let log = ctx.take_log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(
        log.iter()
            .all(|r| r.decision == EgressDecision::Denied && r.reason == "plaintext_credential")
    );

    // The operator lists the target: the credential goes out, in clear text, as asked.
    let allowing = broker_plaintext(vec![up.addr.to_string()], vec![up.addr.to_string()]);
    let ctx = RunEgress::new("run_plain_yes", rules, vec![cred()]);
    allowing.request(&ctx, get(url)).await.unwrap();
    assert_eq!(
        up.seen()[0].headers["authorization"],
        format!("Bearer {SECRET}").as_str()
    );
}

#[test]
fn a_bad_plaintext_credentials_entry_is_a_config_error() {
    for bad in ["localhost", "localhost:0", ":80", "localhost:http"] {
        let mut cfg = paddock_egress::BrokerConfig::new(ca());
        cfg.plaintext_credentials = vec![bad.into()];
        let err = paddock_egress::Broker::new(cfg).unwrap_err();
        assert!(
            err.to_string().contains("plaintext_credentials"),
            "{bad}: {err}"
        );
    }
}

#[tokio::test]
async fn a_connect_to_another_port_of_a_bound_host_is_tunnelled_without_the_secret() {
    let bound = Upstream::tls().await;
    let other = Upstream::tls().await;
    let broker = broker(
        vec![
            format!("localhost:{}", bound.port()),
            format!("localhost:{}", other.port()),
        ],
        vec![bound.cert_pem.clone().unwrap()],
    );
    let cred = ResolvedCredential::new(
        header_binding("api_token", "https", "localhost", bound.port()),
        SECRET,
    );
    let ctx = Arc::new(RunEgress::new(
        "run_other_port",
        vec![
            rule("https", "localhost", bound.port()),
            rule("https", "localhost", other.port()),
        ],
        vec![cred],
    ));
    let proxy = start_proxy(&broker, &ctx).await;
    // Not intercepted: the other port's own certificate is what the client sees.
    let (tcp, status, _, _) = connect(proxy.addr, &format!("localhost:{}", other.port())).await;
    assert_eq!(status, 200);
    let mut tls = tls_over(tcp, "localhost", other.cert_pem.as_deref().unwrap())
        .await
        .expect("a blind tunnel to the other port, not the broker's certificate");
    let r = exchange(
        &mut tls,
        "GET /p HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer mine\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(other.seen()[0].headers["authorization"], "Bearer mine");
    proxy.stop().await;
    let log = ctx.take_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (log[0].method.as_str(), log[0].credential.as_deref()),
        ("CONNECT", None)
    );
}
