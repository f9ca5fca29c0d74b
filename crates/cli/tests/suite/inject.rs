//! Where a bound credential may go, through the real `paddock serve`: a hostile agent tries to
//! put the secret into a URL (`?token=$PLACEHOLDER`), into a header the binding does not name,
//! onto another port of the bound host, and over plain `http` to a target the operator did not
//! list in `[egress] plaintext_credentials`. Each attempt is refused (or gets no secret), and the
//! upstreams never see the secret anywhere but the binding's own header on its own target.

use super::bin;
use super::hostile::{
    assert_blocked, assert_ok, assert_one_denial, attack, put_agent, put_secret, shell, token,
};
use paddock_test_support::{SeenRequest, Server, ServerOptions, Upstream};
use serde_json::json;

const AGENT: &str = "inject";
/// Bound to plain http on `allowed`, which the operator lists in `plaintext_credentials`.
const TOKEN_A: &str = "TOKEN_A";
/// Bound to plain http on `unlisted`, which the operator does not list.
const TOKEN_B: &str = "TOKEN_B";

/// No request `up` received holds `secret`, except in the `authorization` header when `auth_ok`.
#[track_caller]
fn assert_never_saw(up: &Upstream, secret: &str, auth_ok: bool) -> Vec<SeenRequest> {
    let seen = up.requests();
    for r in &seen {
        assert!(!r.target.contains(secret), "secret in the target: {r:?}");
        for (k, v) in &r.headers {
            if !(auth_ok && k == "authorization") {
                assert!(!v.contains(secret), "secret in {k}: {r:?}");
            }
        }
        assert!(
            !String::from_utf8_lossy(&r.body).contains(secret),
            "secret in the body: {r:?}"
        );
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_cannot_choose_where_a_bound_secret_goes() {
    let allowed = Upstream::plain();
    let unlisted = Upstream::plain();
    let other_port = Upstream::plain();
    let (a, b, c) = (allowed.port(), unlisted.port(), other_port.port());
    let config = format!(
        "[egress]\nallow_private = [\"localhost:{a}\", \"localhost:{b}\", \"localhost:{c}\"]\n\
         plaintext_credentials = [\"localhost:{a}\"]\n"
    );
    let server = Server::start(ServerOptions::new(bin()).config(&config)).await;
    let api = server.api();
    let (secret_a, secret_b) = (token(40), token(40));
    put_secret(&api, TOKEN_A, &secret_a).await;
    put_secret(&api, TOKEN_B, &secret_b).await;
    let http = |port: u16| json!({"scheme": "http", "host": "localhost", "port": port});
    let bind = |name: &str, port: u16| {
        json!({
            "secret": name, "scheme": "http", "host": "localhost", "port": port,
            "header": "Authorization: Bearer {secret}", "placeholder_env": name,
        })
    };
    put_agent(
        &api,
        AGENT,
        json!([http(a), http(b), http(c)]),
        json!([bind(TOKEN_A, a), bind(TOKEN_B, b)]),
    )
    .await;

    let m = token(10);
    let curl = "curl -sS --fail-with-body";
    let turns = [
        // The placeholder in the query of the bound target: the secret would land in its URL.
        shell(&format!(
            "{curl} \"http://localhost:{a}/api/query-{m}?token=${TOKEN_A}\""
        )),
        // In a header the binding does not name.
        shell(&format!(
            "{curl} -H \"X-Api-Key: ${TOKEN_A}\" http://localhost:{a}/api/header-{m}"
        )),
        // In the path.
        shell(&format!(
            "{curl} \"http://localhost:{a}/api/${TOKEN_A}/path-{m}\""
        )),
        // Where the binding says: fine, the broker sets that header itself.
        shell(&format!(
            "{curl} -H \"Authorization: Bearer ${TOKEN_A}\" http://localhost:{a}/quiet/ok-{m}"
        )),
        // Another port of the bound host gets what the sandbox sent, no secret.
        shell(&format!(
            "{curl} -H \"Authorization: Bearer ${TOKEN_A}\" http://localhost:{c}/quiet/port-{m}"
        )),
        // Plain http to a bound target the operator did not list.
        shell(&format!("{curl} http://localhost:{b}/quiet/plain-{m}")),
    ];
    let run = attack(&api, AGENT, &turns).await;
    for (i, what) in [(0, "query"), (1, "header"), (2, "path")] {
        assert_blocked(&run, i, what, &["placeholder_misplaced"]);
        assert_one_denial(&run, i, what, "placeholder_misplaced");
    }
    assert_ok(&run, 3, "the placeholder in the bound header");
    assert_ok(&run, 4, "another port of the bound host");
    assert_blocked(
        &run,
        5,
        "plain http without the operator",
        &["plaintext_credential"],
    );
    assert_one_denial(&run, 5, "plain http", "plaintext_credential");

    let seen_a = assert_never_saw(&allowed, &secret_a, true);
    assert_eq!(
        seen_a.len(),
        1,
        "only the well-placed request arrives: {seen_a:#?}"
    );
    assert_eq!(
        seen_a[0].header("authorization"),
        Some(format!("Bearer {secret_a}").as_str())
    );
    let rec = run.egress(3);
    assert_eq!(rec[0]["credential"], TOKEN_A, "{rec:?}");

    let seen_c = assert_never_saw(&other_port, &secret_a, false);
    assert_eq!(seen_c.len(), 1, "{seen_c:#?}");
    let sent = seen_c[0].header("authorization").unwrap_or_default();
    assert!(
        sent.starts_with("Bearer ") && sent.len() == 7 + secret_a.len(),
        "{sent}"
    );
    assert!(
        run.egress(4)[0]
            .get("credential")
            .is_none_or(|c| c.is_null())
    );

    assert!(unlisted.requests().is_empty(), "{:#?}", unlisted.requests());
    for secret in [&secret_a, &secret_b] {
        assert!(
            !run.text().contains(secret.as_str()),
            "the journal holds a secret"
        );
        assert!(!server.stderr_text().contains(secret.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_to_an_allowed_name_cannot_carry_tls_for_another() {
    let up = Upstream::https();
    let p = up.port();
    let config = format!("[egress]\nallow_private = [\"localhost:{p}\"]\n");
    let server = Server::start(ServerOptions::new(bin()).config(&config)).await;
    let api = server.api();
    // Unrestricted and unbound: a blind tunnel, the kind a CDN-hosted name gets.
    put_agent(
        &api,
        "fronting",
        json!([{"scheme": "https", "host": "localhost", "port": p}]),
        json!([]),
    )
    .await;
    let m = token(10);
    // `--connect-to` makes curl send `CONNECT localhost:p` and then a ClientHello for
    // evil.example: what a sandbox does to reach another site behind the allowed name's CDN.
    let turns = [
        shell(&format!(
            "curl -sS -k --connect-to evil.example:{p}:localhost:{p} \
             https://evil.example:{p}/quiet/fronted-{m}"
        )),
        shell(&format!(
            "curl -sS -k https://localhost:{p}/quiet/direct-{m}"
        )),
    ];
    let run = attack(&api, "fronting", &turns).await;
    assert_blocked(
        &run,
        0,
        "another server name in the tunnel",
        &["SSL", "TLS", "reset", "closed"],
    );
    let rec = run.egress(0);
    assert_eq!(rec.len(), 1, "{rec:#?}");
    assert_eq!(rec[0]["method"], "CONNECT", "{rec:?}");
    assert_eq!(rec[0]["host"], "localhost", "{rec:?}");
    assert_eq!(rec[0]["decision"], "denied", "{rec:?}");
    assert_eq!(rec[0]["reason"], "sni_mismatch", "{rec:?}");
    assert_ok(&run, 1, "the allowed name itself");
    let seen = up.requests();
    assert!(
        seen.iter()
            .all(|r| !r.target.contains(&format!("fronted-{m}"))),
        "the fronted request arrived: {seen:#?}"
    );
    assert_eq!(seen.len(), 1, "{seen:#?}");
}
