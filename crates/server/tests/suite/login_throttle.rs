//! The login throttle (issue 19, item 11): failures slow down the address that makes them, per
//! email, with exponential backoff, and each address has a token bucket of attempts; nobody can
//! lock a member out. Source addresses are set as the connection's peer address (`ConnectInfo`),
//! as `paddock serve` does.

use super::TestApp;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use tower::ServiceExt;

const EMAIL: &str = "victim@example.com";
const PASSWORD: &str = "correct horse battery";
const ATTACKER: &str = "203.0.113.7:40000";
const MEMBER: &str = "198.51.100.20:50000";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn retry_after(&self) -> Option<u64> {
        self.headers
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().parse().unwrap())
    }
}

async fn login_from(app: &TestApp, from: &str, email: &str, password: &str) -> Reply {
    let mut req = Request::post("/v1/sessions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            serde_json::to_vec(&json!({"email": email, "password": password})).unwrap(),
        ))
        .unwrap();
    let addr: SocketAddr = from.parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(addr));
    let resp = app.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

async fn add_member(app: &TestApp) {
    let (status, _, body) = app
        .post(
            "/v1/members",
            &json!({"email": EMAIL, "password": PASSWORD, "role": "viewer"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn an_attacker_hammering_an_email_cannot_lock_its_member_out() {
    let app = TestApp::new().await;
    add_member(&app).await;
    let (mut failed, mut throttled) = (0, 0);
    for i in 0..50 {
        let r = login_from(&app, ATTACKER, EMAIL, &format!("guess number {i:04}")).await;
        match r.status {
            StatusCode::UNAUTHORIZED => failed += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                throttled += 1;
                assert_eq!(r.body["code"], "too_many_attempts", "{}", r.body);
                let wait = r.retry_after().expect("a 429 without Retry-After");
                assert!((1..=60).contains(&wait), "Retry-After {wait}");
            }
            other => panic!("attempt {i}: {other} {}", r.body),
        }
    }
    assert!(
        throttled > 0,
        "50 wrong passwords from one address were never slowed down"
    );
    assert!(failed < 50, "{failed} passwords were checked");
    // The attacker is still slowed down when it tries the right password now (a guess that
    // happens to be right waits like the others: the throttle does not leak which one is).
    let r = login_from(&app, ATTACKER, EMAIL, PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.retry_after().is_some());

    // The member, from their own address, logs in at once.
    let r = login_from(&app, MEMBER, EMAIL, PASSWORD).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "the member was locked out: {}",
        r.body
    );
}
