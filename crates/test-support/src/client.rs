//! A small JSON client for the API, and waits on run states built on it.

use crate::{POLL, WAIT};
use reqwest::header::HeaderMap;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Longest a single request may take: above the API's 60 s `?wait=` ceiling.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A response: status, headers and the body as JSON (`Null` when empty, a JSON string when the
/// body is not JSON).
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn content_type(&self) -> &str {
        self.headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// An unauthenticated client for the server at `base` (`http://127.0.0.1:PORT`, no trailing
    /// slash): for public routes, other processes, and checking that `/v1` refuses it.
    pub fn new(base: &str) -> Self {
        Self::build(base, None)
    }

    /// A client that sends `key` as `Authorization: Bearer` on every request, including the
    /// ones built from [`Api::http`].
    pub fn with_key(base: &str, key: &str) -> Self {
        Self::build(base, Some(key))
    }

    fn build(base: &str, key: Option<&str>) -> Self {
        // reqwest is built without a bundled TLS provider; the binary installs ring, so must we.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut headers = HeaderMap::new();
        if let Some(k) = key {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {k}")
                    .parse()
                    .expect("key is not a header value"),
            );
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .no_proxy()
            // No pooled connections: a killed server must not leave dead sockets to reuse.
            .pool_max_idle_per_host(0)
            .build()
            .expect("cannot build the HTTP client");
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The absolute URL of `path` (`/v1/...`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The underlying client, for requests the helpers do not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends any request and reads the whole answer.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let described = format!("{req:?}");
        let fut = async {
            let r = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("request failed: {e:?}\nrequest: {described}"));
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let bytes = r
                .bytes()
                .await
                .unwrap_or_else(|e| panic!("reading the body failed: {e:?}\nrequest: {described}"));
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
            };
            Resp {
                status,
                headers,
                body,
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| panic!("no answer within {REQUEST_TIMEOUT:?}: {described}"))
    }

    pub async fn get_json(&self, path: &str) -> Resp {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Resp {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    /// `POST /v1/runs`; panics unless it answers 201. Returns the run.
    pub async fn create_run(&self, agent: &str, input: &Value) -> Value {
        let r = self
            .post_json(
                "/v1/runs",
                &serde_json::json!({ "agent": agent, "input": input }),
            )
            .await;
        assert_eq!(r.status, 201, "creating a run of {agent}: {r:?}");
        r.body
    }

    /// `GET /v1/runs/{id}`; panics unless it answers 200.
    pub async fn get_run(&self, id: &str) -> Value {
        let r = self.get_json(&format!("/v1/runs/{id}")).await;
        assert_eq!(r.status, 200, "GET run {id}: {r:?}");
        r.body
    }

    /// Blocks on `?wait=` until the run is terminal; panics after [`WAIT`].
    pub async fn wait_terminal(&self, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let r = self.get_json(&format!("/v1/runs/{id}?wait=30")).await;
            assert_eq!(r.status, 200, "GET run {id}?wait=30: {r:?}");
            if is_terminal(&r.body) {
                return r.body;
            }
            if start.elapsed() > WAIT {
                panic!(
                    "run {id} did not end within {WAIT:?}; last seen: {}",
                    r.body
                );
            }
        }
    }

    /// Polls the run until its status is `status`; panics if it ends in another state or after
    /// [`WAIT`].
    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        let start = Instant::now();
        loop {
            let run = self.get_run(id).await;
            if run["status"] == status {
                return run;
            }
            if is_terminal(&run) {
                panic!("run {id} ended before reaching {status}: {run}");
            }
            if start.elapsed() > WAIT {
                panic!("run {id} did not reach {status} within {WAIT:?}; last seen: {run}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The run's whole journal through the JSON listing (every page).
    pub async fn events(&self, id: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0u64;
        loop {
            let r = self
                .send(
                    self.http
                        .get(self.url(&format!("/v1/runs/{id}/events?after={after}")))
                        .header(reqwest::header::ACCEPT, "application/json"),
                )
                .await;
            assert_eq!(r.status, 200, "events of {id}: {r:?}");
            let page = r.body["data"]
                .as_array()
                .unwrap_or_else(|| panic!("events of {id} have no data array: {r:?}"))
                .clone();
            let more = r.body.get("next_cursor").is_some_and(|c| !c.is_null());
            if let Some(last) = page.last() {
                after = last["seq"].as_u64().expect("event without seq");
            }
            let empty = page.is_empty();
            all.extend(page);
            if !more || empty {
                return all;
            }
        }
    }

    /// Every run matching `query` (e.g. `agent=e2e`), following `next_cursor`.
    pub async fn list_runs(&self, query: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = "/v1/runs?limit=100".to_owned();
            if !query.is_empty() {
                path.push_str(&format!("&{query}"));
            }
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let r = self.get_json(&path).await;
            assert_eq!(r.status, 200, "GET {path}: {r:?}");
            let page = r.body["data"]
                .as_array()
                .unwrap_or_else(|| panic!("GET {path} has no data array: {r:?}"))
                .clone();
            all.extend(page);
            match r.body.get("next_cursor").and_then(Value::as_str) {
                Some(c) => cursor = Some(c.to_owned()),
                None => return all,
            }
        }
    }
}

pub fn is_terminal(run: &Value) -> bool {
    matches!(
        run["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled" | "timed_out")
    )
}
