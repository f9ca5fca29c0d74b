//! The address policy: internal addresses are refused before any connection is attempted.
//!
//! Only loopback listeners exist here. For 10.0.0.1 and 169.254.169.254 the refusal reason
//! `private_address` proves the check ran: the broker decides it before it connects, so no
//! packet is ever sent to those addresses.

use super::support::*;
use paddock_egress::{DenyReason, OutboundRequest, RunEgress};
use paddock_types::event::EgressDecision;
use paddock_types::manifest::EgressRule;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;

fn open_rules(port: u16) -> Vec<EgressRule> {
    [
        "127.0.0.1",
        "localhost",
        "169.254.169.254",
        "10.0.0.1",
        "::1",
    ]
    .iter()
    .flat_map(|h| [rule("http", h, port), rule("https", h, port)])
    .collect()
}

#[tokio::test]
async fn internal_addresses_are_refused_without_connecting() {
    // A real listener on the loopback port the rules allow: it must never see a connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let witness = Upstream::counting(listener).await;
    let v6_witness = match TcpListener::bind(("::1", port)).await {
        Ok(l) => Some(Upstream::counting(l).await),
        Err(_) => None, // no IPv6 loopback in this environment
    };

    // No allow_private: the operator did not open anything.
    let broker = broker(vec![], vec![]);
    let ctx = Arc::new(RunEgress::new("run_private", open_rules(port), vec![]));
    let proxy = start_proxy(&broker, &ctx).await;

    let hosts = [
        "127.0.0.1",
        "localhost",
        "169.254.169.254",
        "10.0.0.1",
        "[::1]",
    ];
    for host in hosts {
        let r = proxy_get(proxy.addr, "GET", &format!("http://{host}:{port}/"), &[]).await;
        assert_eq!(r.status, 403, "{host}");
        assert_eq!(
            r.header("paddock-egress-denied"),
            Some("private_address"),
            "{host}"
        );

        let (_s, status, headers, _) = connect(proxy.addr, &format!("{host}:{port}")).await;
        assert_eq!(status, 403, "CONNECT {host}");
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "paddock-egress-denied" && v == "private_address"),
            "CONNECT {host}: {headers:?}"
        );

        let err = broker
            .request(
                &ctx,
                OutboundRequest {
                    method: http::Method::GET,
                    url: format!("https://{host}:{port}/"),
                    headers: http::HeaderMap::new(),
                    body: bytes::Bytes::new(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.deny_reason(),
            Some(DenyReason::PrivateAddress),
            "request {host}"
        );
    }
    assert_eq!(witness.connections.load(Ordering::SeqCst), 0);
    if let Some(w) = &v6_witness {
        assert_eq!(w.connections.load(Ordering::SeqCst), 0);
    }

    let log = wait_log(&ctx, hosts.len() * 3).await;
    assert_eq!(log.len(), hosts.len() * 3, "{log:?}");
    assert!(
        log.iter()
            .all(|r| r.decision == EgressDecision::Denied && r.reason == "private_address"),
        "{log:?}"
    );
    assert!(log.iter().any(|r| r.host == "::1"));
    proxy.stop().await;
}

#[tokio::test]
async fn allow_private_opens_exactly_the_listed_port() {
    let up = Upstream::plain().await;
    let port = up.port();
    // Listed by name: `localhost:<port>` opens it for requests to localhost...
    let broker = broker(vec![format!("localhost:{port}")], vec![]);
    let ctx = Arc::new(RunEgress::new("run_ap", open_rules(port), vec![]));
    let proxy = start_proxy(&broker, &ctx).await;
    let ok = proxy_get(proxy.addr, "GET", &format!("http://localhost:{port}/"), &[]).await;
    assert_eq!(ok.status, 200);
    // ...not for the metadata address on the same port.
    let r = proxy_get(
        proxy.addr,
        "GET",
        &format!("http://169.254.169.254:{port}/"),
        &[],
    )
    .await;
    assert_eq!(r.header("paddock-egress-denied"), Some("private_address"));
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    proxy.stop().await;
}
