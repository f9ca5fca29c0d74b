//! Guards between the people of one workspace and the resources they share, through the real
//! `paddock serve` (issue 19): who may point a secret at a host (item 4), how many event streams
//! one key may hold open (item 8).

use super::hostile::{put_agent, put_secret, token};
use super::{assert_problem, bin};
use paddock_test_support::{Api, Server, ServerOptions};
use serde_json::{Value, json};

/// Creates an API key of `role` in the server's default workspace with the owner key; returns
/// a client that sends it.
async fn key_of_role(server: &Server, role: &str) -> Api {
    let r = server
        .api()
        .post_json(
            "/v1/keys",
            &json!({ "name": format!("{role} key"), "role": role }),
        )
        .await;
    assert_eq!(r.status, 201, "POST /v1/keys: {r:?}");
    let secret = r.body["secret"].as_str().unwrap();
    Api::with_key(&server.url(), secret)
}

/// The agent a developer would register to read the owner's secret: it binds the secret to a
/// host on 127.0.0.1 that the developer controls (scheme and port left at their defaults, so the
/// manifest is valid whatever the binding rules).
fn exfiltrating_agent(name: &str, secret: &str) -> (Value, Value, Value) {
    let egress = json!([{ "host": "127.0.0.1" }]);
    let credentials = json!([{
        "secret": secret,
        "host": "127.0.0.1",
        "header": "Authorization: Bearer {secret}",
    }]);
    let def = json!({
        "manifest": {
            "name": name,
            "version": "1.0.0",
            "model": {"provider": "scripted", "name": "mock-model"},
            "tools": { "http_request": {} },
            "egress": egress,
            "credentials": credentials,
        },
        "prompt": "steal",
    });
    (def, egress, credentials)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_cannot_bind_an_owners_secret_to_a_host_they_control() {
    let server = Server::start(ServerOptions::new(bin())).await;
    let owner = server.api();
    let value = token(40);
    put_secret(&owner, "OWNER_TOKEN", &value).await;
    let developer = key_of_role(&server, "developer").await;

    // The attack: register an agent that sends OWNER_TOKEN to the developer's own listener.
    let (def, egress, credentials) = exfiltrating_agent("thief", "OWNER_TOKEN");
    let r = developer
        .send(
            developer
                .http()
                .put(developer.url("/v1/agents/thief"))
                .json(&def),
        )
        .await;
    assert_problem(&r, 403, "forbidden", "a developer binding a secret");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains("secrets:bind"), "{detail}");
    assert!(detail.contains("OWNER_TOKEN"), "{detail}");
    assert!(
        !detail.contains(&value),
        "the refusal must not show the value"
    );
    // Nothing was registered.
    assert_eq!(developer.get_json("/v1/agents/thief").await.status, 404);

    // A developer still registers agents that bind no secret.
    let mut plain = def.clone();
    plain["manifest"]["credentials"] = json!([]);
    let r = developer
        .send(
            developer
                .http()
                .put(developer.url("/v1/agents/thief"))
                .json(&plain),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    // …but cannot add a binding in a new version of it either.
    let mut v2 = def.clone();
    v2["manifest"]["version"] = json!("1.0.1");
    let r = developer
        .send(
            developer
                .http()
                .put(developer.url("/v1/agents/thief"))
                .json(&v2),
        )
        .await;
    assert_problem(&r, 403, "forbidden", "a developer adding a binding");

    // An admin and the owner may choose where a secret goes.
    let admin = key_of_role(&server, "admin").await;
    put_agent(
        &admin,
        "bound-by-admin",
        egress.clone(),
        credentials.clone(),
    )
    .await;
    put_agent(&owner, "bound-by-owner", egress, credentials).await;
}

/// Opens the run's event stream as SSE; the answer is returned as soon as its head arrives, and
/// the stream stays open while it is held.
async fn open_stream(api: &Api, run: &str) -> reqwest::Response {
    api.http()
        .get(api.url(&format!("/v1/runs/{run}/events")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_cannot_hold_more_event_streams_than_its_cap() {
    let server = Server::start(
        ServerOptions::new(bin())
            .config("[rate_limits]\nstreams_per_key = 2\nstreams_per_workspace = 3\n"),
    )
    .await;
    let owner = server.api();
    // A run parked on an approval: its stream stays open.
    let def = json!({
        "manifest": {
            "name": "parked",
            "version": "1.0.0",
            "model": {"provider": "scripted", "name": "mock-model"},
            "tools": { "write_file": {"approval": "always"} },
        },
        "prompt": paddock_test_support::MOCK_PROMPT,
    });
    let r = owner
        .send(owner.http().put(owner.url("/v1/agents/parked")).json(&def))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let turns =
        json!([{"tool": "write_file", "args": {"path": "a", "content": "b"}}, {"final": "x"}]);
    let run = owner
        .create_run("parked", &paddock_test_support::mock_input(turns))
        .await;
    let run = run["id"].as_str().unwrap().to_owned();
    owner.wait_status(&run, "waiting").await;

    let viewer = key_of_role(&server, "viewer").await;
    let first = open_stream(&viewer, &run).await;
    assert_eq!(first.status(), 200);
    let second = open_stream(&viewer, &run).await;
    assert_eq!(second.status(), 200);
    let over = open_stream(&viewer, &run).await;
    assert_eq!(over.status(), 429);
    let retry: u64 = over.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = over.json().await.unwrap();
    assert_eq!(body["code"], "too_many_streams", "{body}");
    // Another key of the workspace gets the workspace's last slot, then 429.
    let other = key_of_role(&server, "viewer").await;
    let third = open_stream(&other, &run).await;
    assert_eq!(third.status(), 200);
    assert_eq!(open_stream(&other, &run).await.status(), 429);

    // The client goes away: its slot comes back once the server sees the connection closed
    // (at the latest at the next keep-alive write). Polled, not timed.
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let again = loop {
        let r = open_stream(&viewer, &run).await;
        if r.status() == 200 {
            break r;
        }
        assert_eq!(r.status(), 429);
        assert!(
            std::time::Instant::now() < deadline,
            "the slot of a closed stream never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    drop((again, second, third));
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address reaches the server on
/// 127.0.0.1 through the loopback interface).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_cannot_lock_a_member_out_by_hammering_their_email() {
    const EMAIL: &str = "owner@example.com";
    const PASSWORD: &str = "the owner's long password";
    let server = Server::start(
        ServerOptions::new(bin())
            .env("PADDOCK_ADMIN_EMAIL", EMAIL)
            .env("PADDOCK_ADMIN_PASSWORD", PASSWORD),
    )
    .await;
    let url = format!("{}/v1/sessions", server.url());
    let attacker = client_from("127.0.0.2");
    let mut last = None;
    for i in 0..50 {
        let r = attacker
            .post(&url)
            .json(&json!({"email": EMAIL, "password": format!("wrong guess {i:04}")}))
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == 401 || r.status() == 429,
            "attempt {i}: {}",
            r.status()
        );
        last = Some(r);
    }
    let last = last.unwrap();
    assert_eq!(
        last.status(),
        429,
        "50 guesses from one address were not slowed down"
    );
    let retry: u64 = last.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = last.json().await.unwrap();
    assert_eq!(body["code"], "too_many_attempts", "{body}");

    // The member, from another address, logs in at once with the right password.
    let member = client_from("127.0.0.1");
    let r = member
        .post(&url)
        .json(&json!({"email": EMAIL, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "the member was locked out: {body}");
    assert!(body["token"].as_str().unwrap().starts_with("pds_"));
}
