//! Egress records through the real `paddock serve`: every request the broker forwarded is in the
//! journal whatever ends the tool call (its deadline, a SIGKILL of the server), and a sandbox
//! that makes a flood of requests cannot make the journal grow without bound.

use super::hostile::{launch, shell};
use super::{bin, of_type};
use paddock_test_support::{Api, MOCK_PROMPT, Server, ServerOptions, WAIT};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A plain HTTP upstream on 127.0.0.1 that reads each request head, reports its request line,
/// and never answers (it holds the connection open until the test ends).
struct Holder {
    port: u16,
    seen: mpsc::UnboundedReceiver<String>,
}

impl Holder {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let _ = tx.send(text.lines().next().unwrap_or_default().to_owned());
                held.push(socket);
            }
        });
        Self { port, seen }
    }

    /// The request line of the next request the upstream received.
    async fn next(&mut self) -> String {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("the upstream received no request")
            .expect("the upstream stopped")
    }
}

/// A server that may reach `localhost:<port>` (the holder) over plain HTTP.
fn server_options(port: u16) -> ServerOptions {
    ServerOptions::new(bin())
        .config(&format!(
            "[egress]\nallow_private = [\"localhost:{port}\"]\n\n[engine]\nlease_secs = 3\n"
        ))
        .log_filter("info")
}

/// `PUT /v1/agents/{name}`: a scripted agent with the `shell` tool, allowed to reach
/// `http://localhost:<port>/`, with this run timeout.
async fn put_agent(api: &Api, name: &str, port: u16, timeout: &str) {
    let def = json!({
        "manifest": {
            "name": name,
            "version": "1.0.0",
            "description": "test agent",
            "model": {"provider": "scripted", "name": "mock-model"},
            "limits": {"max_steps": 20, "timeout": timeout},
            "tools": {"shell": {}},
            "egress": [{"scheme": "http", "host": "localhost", "port": port}],
        },
        "prompt": MOCK_PROMPT,
    });
    let r = api
        .send(
            api.http()
                .put(api.url(&format!("/v1/agents/{name}")))
                .json(&def),
        )
        .await;
    assert_eq!(r.status, 200, "PUT agent {name}: {r:?}");
}

/// A server whose agent `name` (run timeout `timeout`) has a run whose `shell` call made a
/// `GET path` that the upstream now holds unanswered: (the upstream, the server, the run id).
async fn hold_a_request(name: &str, timeout: &str, path: &str) -> (Holder, Server, String) {
    let mut upstream = Holder::start().await;
    let port = upstream.port;
    let server = Server::start(server_options(port)).await;
    let api = server.api();
    put_agent(&api, name, port, timeout).await;
    let id = launch(
        &api,
        name,
        &[shell(&format!(
            "curl -sS --max-time 600 http://localhost:{port}{path}"
        ))],
    )
    .await;
    let line = upstream.next().await;
    assert_eq!(
        line,
        format!("GET {path} HTTP/1.1"),
        "what the upstream got"
    );
    (upstream, server, id)
}

/// The `egress_started` and `egress_request` events of `journal` whose path is `path`.
fn records_of<'a>(journal: &'a [Value], path: &str) -> (Vec<&'a Value>, Vec<&'a Value>) {
    let of = |ty: &str| -> Vec<&'a Value> {
        of_type(journal, ty)
            .into_iter()
            .filter(|e| e["request"]["path"] == path)
            .collect()
    };
    (of("egress_started"), of("egress_request"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_past_the_run_deadline_is_journaled() {
    let path = "/held/deadline";
    let (_upstream, server, id) = hold_a_request("held", "15s", path).await;
    let api = server.api();

    let run = api.wait_terminal(&id).await;
    let journal = api.events(&id).await;
    assert_eq!(run["status"], "timed_out", "{run}\n{journal:#?}");
    let (started, requests) = records_of(&journal, path);
    assert_eq!(requests.len(), 1, "egress_request: {journal:#?}");
    assert_eq!(started.len(), 1, "egress_started: {journal:#?}");
    let (started, request) = (started[0], requests[0]);
    assert_eq!(request["request"]["host"], "localhost", "{request}");
    assert_eq!(request["request"]["decision"], "allowed", "{request}");
    assert_eq!(request["started"], started["seq"], "{request}");
    let reason = request["request"]["reason"].as_str().unwrap();
    assert!(reason.ends_with("error:cut_by_deadline"), "{request}");
    // Both before the run ended, and the record before its outcome.
    let end = journal.iter().position(|e| e["type"] == "run_timed_out");
    let at = |e: &Value| journal.iter().position(|x| x["seq"] == e["seq"]);
    assert!(
        at(started) < at(request) && at(request) < end,
        "{journal:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_when_the_server_is_killed_is_journaled_after_restart() {
    let path = "/held/sigkill";
    let (mut upstream, mut server, id) = hold_a_request("killed", "5m", path).await;
    // The upstream has the request: the server dies while it is held.
    server.kill_9();
    server.restart().await;
    let api = server.api();

    let run = api.wait_terminal(&id).await;
    let journal = api.events(&id).await;
    // `shell` is not idempotent: the recovered run does not run it again.
    assert_eq!(run["status"], "failed", "{run}\n{journal:#?}");
    assert_eq!(run["error"]["code"], "tool_outcome_unknown", "{run}");
    let (started, requests) = records_of(&journal, path);
    assert_eq!(requests.len(), 1, "egress_request: {journal:#?}");
    assert_eq!(started.len(), 1, "egress_started: {journal:#?}");
    assert_eq!(requests[0]["started"], started[0]["seq"], "{}", requests[0]);
    let reason = requests[0]["request"]["reason"].as_str().unwrap();
    assert!(reason.ends_with("error:outcome_unknown"), "{}", requests[0]);
    // The record was durable before the kill; the outcome was written by the recovery.
    let recovered = journal
        .iter()
        .position(|e| e["type"] == "run_started" && e["recovered"] == true)
        .unwrap_or_else(|| panic!("no recovery: {journal:#?}"));
    let at = |e: &Value| journal.iter().position(|x| x["seq"] == e["seq"]).unwrap();
    assert!(at(started[0]) < recovered, "{journal:#?}");
    assert!(at(requests[0]) > recovered, "{journal:#?}");
    // Nothing was sent twice.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), upstream.seen.recv())
            .await
            .is_err(),
        "the upstream got a second request"
    );
}

/// Denied requests with 60 KB paths, made as fast as the sandbox can, in one call.
const FLOOD: usize = 500;
const FLOOD_TO_A: usize = 300;
const LONG_PATH: usize = 60_000;
/// What one run's whole journal may weigh after the flood (JSON of every event).
const JOURNAL_BUDGET: usize = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_denied_requests_with_long_paths_is_capped_and_counted() {
    let mut upstream = Holder::start().await;
    let server = Server::start(server_options(upstream.port)).await;
    let api = server.api();
    put_agent(&api, "flood", upstream.port, "5m").await;
    let program = format!(
        "import http.client\n\
         c = http.client.HTTPConnection('127.0.0.1', 3128)\n\
         path = '/' + 'p' * {LONG_PATH}\n\
         denied = 0\n\
         for i in range({FLOOD}):\n    \
             host = 'a.flood.example' if i < {FLOOD_TO_A} else 'b.flood.example'\n    \
             c.request('GET', 'http://' + host + path)\n    \
             r = c.getresponse()\n    \
             r.read()\n    \
             denied += r.status == 403\n\
         print('denied', denied)\n"
    );
    let turn = shell(&format!("python3 - <<'PYEOF'\n{program}\nPYEOF"));
    let id = launch(&api, "flood", &[turn]).await;
    let run = api.wait_terminal(&id).await;
    let journal = api.events(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let output = of_type(&journal, "tool_call_completed")[0]["output"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(output.contains(&format!("denied {FLOOD}")), "{output}");

    let size = serde_json::to_string(&journal).unwrap().len();
    eprintln!(
        "journal of the flood run: {size} bytes, {} events",
        journal.len()
    );
    assert!(size < JOURNAL_BUDGET, "the journal holds {size} bytes");
    let requests = of_type(&journal, "egress_request");
    assert_eq!(requests.len(), 100, "one call journals at most 100 records");
    for r in &requests {
        let req = &r["request"];
        assert_eq!(req["decision"], "denied", "{r}");
        assert_eq!(req["host"], "a.flood.example", "{r}");
        assert!(req["path"].as_str().unwrap().len() <= 512, "{r}");
        assert!(req["path"].as_str().unwrap().ends_with("…[cut]"), "{r}");
        assert_eq!(req["path_len"], LONG_PATH + 1, "{r}");
    }
    let omitted = of_type(&journal, "egress_omitted");
    assert_eq!(omitted.len(), 1, "{journal:#?}");
    assert_eq!(
        omitted[0]["counts"],
        json!([
            {"host": "a.flood.example", "decision": "denied", "count": FLOOD_TO_A - 100},
            {"host": "b.flood.example", "decision": "denied", "count": FLOOD - FLOOD_TO_A},
        ]),
        "{}",
        omitted[0]
    );
    // The audit trail follows the journal: one entry per journaled denial, none past the cap.
    let trail = api
        .get_json(&format!(
            "/v1/audit?action=egress.denied&resource=run/{id}/&limit=1000"
        ))
        .await;
    assert_eq!(trail.status, 200, "{}", trail.body);
    assert_eq!(trail.body["data"].as_array().unwrap().len(), 100);
    assert!(
        upstream.seen.try_recv().is_err(),
        "nothing reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_when_the_run_is_cancelled_stays_on_record() {
    let path = "/held/cancel";
    let (_upstream, server, id) = hold_a_request("cancelled", "5m", path).await;
    let api = server.api();
    let r = api
        .post_json(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let run = api.wait_terminal(&id).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    // The journal closed with the cancel: the request's outcome cannot follow, but the request
    // itself was journaled before it left.
    let journal = api.events(&id).await;
    let (started, _) = records_of(&journal, path);
    assert_eq!(started.len(), 1, "egress_started: {journal:#?}");
    assert_eq!(
        started[0]["request"]["decision"], "allowed",
        "{}",
        started[0]
    );
    let cancel = journal
        .iter()
        .position(|e| e["type"] == "run_cancelled")
        .unwrap();
    let at = journal
        .iter()
        .position(|e| e["seq"] == started[0]["seq"])
        .unwrap();
    assert!(at < cancel, "{journal:#?}");
}
