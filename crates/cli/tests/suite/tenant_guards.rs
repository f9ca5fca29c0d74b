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
