//! `Broker::request`: the broker's own HTTP client for the `http_request` tool.

use super::support::*;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use paddock_egress::{DenyReason, EgressError, OutboundRequest, ResolvedCredential, RunEgress};
use paddock_types::event::EgressDecision;
use paddock_types::manifest::{CredentialBinding, EgressRule};

fn get(url: impl Into<String>) -> OutboundRequest {
    OutboundRequest {
        method: Method::GET,
        url: url.into(),
        headers: HeaderMap::new(),
        body: Bytes::new(),
    }
}

#[tokio::test]
async fn plain_and_tls_requests() {
    let plain = Upstream::plain().await;
    let tls = Upstream::tls().await;
    let broker = broker(
        vec![plain.addr.to_string(), format!("localhost:{}", tls.port())],
        vec![tls.cert_pem.clone().unwrap()],
    );
    let ctx = RunEgress::new(
        "run_req",
        vec![
            rule("http", "127.0.0.1", plain.port()),
            rule("https", "localhost", tls.port()),
        ],
        vec![],
    );
    let mut req = get(format!("http://127.0.0.1:{}/a?b=c#frag", plain.port()));
    req.method = Method::POST;
    req.body = Bytes::from_static(b"payload");
    let r = broker.request(&ctx, req).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.truncated);
    assert!(String::from_utf8_lossy(&r.body).contains("body: payload"));
    assert_eq!(plain.seen()[0].uri, "/a?b=c");

    // Upstream TLS: verified against the extra root, SNI/name "localhost", pinned to loopback.
    let r = broker
        .request(
            &ctx,
            get(format!("https://localhost:{}/secure", tls.port())),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(tls.seen()[0].uri, "/secure");

    let log = ctx.take_log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].method, "POST");
    assert_eq!(log[0].bytes_sent, 7);
    assert_eq!(log[0].reason, "rule:0");
    assert_eq!(log[1].scheme, "https");
    assert_eq!(log[1].reason, "rule:1");
    assert!(
        log.iter()
            .all(|r| r.status == Some(200) && r.bytes_received > 0)
    );
}

#[tokio::test]
async fn redirect_to_a_disallowed_host_is_denied_and_recorded() {
    let up = Upstream::plain().await;
    let broker = broker(vec![up.addr.to_string()], vec![]);
    let ctx = RunEgress::new(
        "run_redir",
        vec![rule("http", "127.0.0.1", up.port())],
        vec![],
    );
    let url = format!(
        "http://127.0.0.1:{}/redirect?to=http://evil.example/collect",
        up.port()
    );
    let err = broker.request(&ctx, get(url)).await.unwrap_err();
    assert!(
        matches!(
            err,
            EgressError::Denied {
                reason: DenyReason::NoRule
            }
        ),
        "{err}"
    );
    let log = ctx.take_log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].decision, EgressDecision::Allowed);
    assert_eq!(log[0].status, Some(302));
    assert_eq!(log[0].path, "/redirect");
    assert_eq!(log[1].decision, EgressDecision::Denied);
    assert_eq!(log[1].host, "evil.example");
    assert_eq!(log[1].path, "/collect");
    assert_eq!(log[1].reason, "no_rule");
}

#[tokio::test]
async fn allowed_redirects_are_followed_and_limited() {
    let a = Upstream::plain().await;
    let b = Upstream::plain().await;
    let broker = broker(
        vec![a.addr.to_string(), format!("localhost:{}", b.port())],
        vec![],
    );
    let ctx = RunEgress::new(
        "run_follow",
        vec![
            rule("http", "127.0.0.1", a.port()),
            rule("http", "localhost", b.port()),
        ],
        vec![],
    );
    // Cross-origin hop: the caller's authorization header must not follow.
    let target = format!("http://localhost:{}/landed", b.port());
    let mut req = get(format!(
        "http://127.0.0.1:{}/redirect?to={target}",
        a.port()
    ));
    req.headers
        .insert("authorization", HeaderValue::from_static("Bearer caller"));
    let r = broker.request(&ctx, req).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.url, target);
    assert_eq!(a.seen()[0].headers["authorization"], "Bearer caller");
    assert!(b.seen()[0].headers.get("authorization").is_none());
    assert_eq!(ctx.take_log().len(), 2);

    // A redirect loop stops after MAX_REDIRECTS follow-ups.
    let err = broker
        .request(&ctx, get(format!("http://127.0.0.1:{}/loop", a.port())))
        .await
        .unwrap_err();
    assert_eq!(err.deny_reason(), Some(DenyReason::TooManyRedirects));
    let log = ctx.take_log();
    assert_eq!(log.len(), paddock_egress::MAX_REDIRECTS + 1);
    assert!(log.iter().all(|r| r.status == Some(302)));
}

#[tokio::test]
async fn query_credential_is_injected_and_never_returned() {
    let up = Upstream::plain().await;
    // A query credential over plain http: the operator has to allow exactly this target.
    let broker = broker_plaintext(vec![up.addr.to_string()], vec![up.addr.to_string()]);
    let binding = CredentialBinding {
        secret: "weather_key".into(),
        scheme: "http".into(),
        host: "127.0.0.1".into(),
        port: Some(up.port()),
        header: None,
        query: Some("api_key".into()),
        placeholder_env: None,
    };
    let ctx = RunEgress::new(
        "run_query",
        vec![rule("http", "127.0.0.1", up.port())],
        vec![ResolvedCredential::new(binding, SECRET)],
    );
    let r = broker
        .request(
            &ctx,
            get(format!(
                "http://127.0.0.1:{}/w?city=oslo&api_key=guess",
                up.port()
            )),
        )
        .await
        .unwrap();
    assert_eq!(up.seen()[0].uri, format!("/w?city=oslo&api_key={SECRET}"));
    let body = String::from_utf8_lossy(&r.body);
    assert!(!body.contains(SECRET), "{body}");
    assert!(body.contains("api_key=[REDACTED:weather_key]"), "{body}");
    let log = ctx.take_log();
    assert_eq!(log[0].credential.as_deref(), Some("weather_key"));
    assert_eq!(log[0].path, "/w");
    assert!(!format!("{log:?}").contains(SECRET));
}

#[tokio::test]
async fn body_is_capped_and_bad_urls_are_refused() {
    let up = Upstream::plain().await;
    let broker = broker_with(vec![up.addr.to_string()], vec![], 100);
    let ctx = RunEgress::new(
        "run_cap",
        vec![EgressRule {
            methods: vec!["GET".into()],
            ..rule("http", "127.0.0.1", up.port())
        }],
        vec![],
    );
    let r = broker
        .request(&ctx, get(format!("http://127.0.0.1:{}/big", up.port())))
        .await
        .unwrap();
    assert!(r.truncated);
    assert_eq!(r.body.len(), 100);

    for (url, reason) in [
        ("not a url", DenyReason::BadRequest),
        ("file:///etc/passwd", DenyReason::SchemeNotAllowed),
    ] {
        let err = broker.request(&ctx, get(url)).await.unwrap_err();
        assert_eq!(err.deny_reason(), Some(reason), "{url}");
    }
    let mut post = get(format!("http://127.0.0.1:{}/big", up.port()));
    post.method = Method::DELETE;
    let err = broker.request(&ctx, post).await.unwrap_err();
    assert_eq!(err.deny_reason(), Some(DenyReason::MethodNotAllowed));
    let log = ctx.take_log();
    assert_eq!(log.len(), 4);
    assert_eq!(
        log.iter()
            .filter(|r| r.decision == EgressDecision::Denied)
            .count(),
        3
    );
}

#[tokio::test]
async fn bench_overhead_runs() {
    let report = paddock_egress::bench_overhead(5).await.unwrap();
    assert_eq!(report.direct.len(), 5);
    assert_eq!(report.proxied.len(), 5);
    assert!(report.added_ms_p50().is_finite());
}
