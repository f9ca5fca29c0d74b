mod api;
mod audit;
mod auth;
mod billing;
mod idempotency;
mod login_throttle;
mod members;
mod ratelimit;
mod streams;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use paddock_engine::{Engine, EngineConfig};
use paddock_harness::WorkspaceTools;
use paddock_models::Models;
use paddock_server::{AppState, router};
use paddock_store::SqliteStore;
use paddock_types::api::AgentDefinition;
use paddock_types::{AgentManifest, KeyId, Role, Scope};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use tower::ServiceExt;

/// Status, content type and JSON body of an answer.
pub type Answer = (StatusCode, Option<String>, Value);

pub struct TestApp {
    pub app: Router,
    pub store: paddock_store::DynStore,
    /// An owner key of the default workspace, sent by every helper but [`TestApp::request_raw`].
    pub key: String,
    pub vault: Arc<paddock_vault::Vault>,
    _dir: tempfile::TempDir,
}

/// Creates a key with `role` in `scope`'s workspace (creating the workspace if needed) straight
/// in the store; returns its secret.
pub async fn make_key(
    store: &paddock_store::DynStore,
    scope: &Scope,
    role: Role,
    expires_at: Option<i64>,
) -> String {
    store.ensure_workspace(scope, "test").await.unwrap();
    let secret = paddock_vault::new_api_key_secret().unwrap();
    let record = paddock_store::KeyRecord {
        id: KeyId::new(),
        name: format!("{role} key"),
        role,
        prefix: paddock_vault::api_key_display_prefix(&secret),
        secret_hash: paddock_vault::hash_api_key(&secret),
        created_at: paddock_types::time::now_ms(),
        expires_at,
        revoked_at: None,
        last_used_at: None,
        scopes: None,
    };
    store.create_api_key(scope, record).await.unwrap();
    secret
}

pub const AGENT: &str = r#"
name = "notes"
version = "1.0.0"
description = "test agent"
[model]
provider = "scripted"
name = "scripted-model"
[limits]
max_steps = 50
[tools.write_file]
[tools.read_file]
[tools.list_files]
[input_schema]
type = "object"
required = ["mock"]
"#;

pub const GATED: &str = r#"
name = "gated"
version = "1.0.0"
[model]
provider = "scripted"
name = "scripted-model"
[tools.write_file]
approval = "always"
"#;

pub const PROMPT: &str = "Test.\n```mock\n{{ input.mock | tojson }}\n```\n";

impl TestApp {
    pub async fn new() -> Self {
        Self::with_models(Models::new(&BTreeMap::new()).unwrap()).await
    }

    /// With the scripted model priced (`scripted-model`: $1 per million input and output
    /// tokens), so runs cost money and budgets bite.
    pub async fn priced() -> Self {
        let price = paddock_models::Price {
            input_per_mtok: 1.0,
            output_per_mtok: 1.0,
        };
        let models = Models::new(&BTreeMap::new())
            .unwrap()
            .with_scripted_prices(BTreeMap::from([("scripted-model".to_owned(), price)]));
        Self::with_models(models).await
    }

    async fn with_models(models: Models) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: paddock_store::DynStore = SqliteStore::open(dir.path()).unwrap();
        let vault = Arc::new(
            paddock_vault::Vault::open(Arc::clone(&store), dir.path())
                .await
                .unwrap(),
        );
        let tools = WorkspaceTools::new(dir.path().join("workspaces"));
        let engine = Engine::new(
            store,
            Arc::new(models),
            Arc::new(tools),
            EngineConfig::default(),
        );
        for m in [AGENT, GATED] {
            let def = AgentDefinition {
                manifest: AgentManifest::from_toml(m).unwrap(),
                prompt: PROMPT.to_owned(),
            };
            engine
                .put_agent(&Scope::default_workspace(), def)
                .await
                .unwrap();
        }
        engine.start();
        let store = Arc::clone(engine.store());
        let key = make_key(&store, &Scope::default_workspace(), Role::Owner, None).await;
        let app = router(AppState {
            engine: Arc::clone(&engine),
            vault: Arc::clone(&vault),
            // 64 open `?wait=` requests per key: `billing` races 50 waiting run creations on the
            // owner key (the default cap, 32, is tested in `streams`).
            rate_limiter: Arc::new(
                paddock_server::RateLimiter::new(Default::default()).with_stream_caps(
                    paddock_server::StreamCaps {
                        per_key: Some(64),
                        ..Default::default()
                    },
                ),
            ),
            sessions: Arc::new(paddock_server::Sessions::default()),
        });
        Self {
            app,
            store,
            key,
            vault,
            _dir: dir,
        }
    }

    /// Sends `req` with the app's owner key unless it already carries an Authorization header.
    pub async fn request(&self, mut req: Request<Body>) -> Answer {
        if !req.headers().contains_key(header::AUTHORIZATION) {
            req.headers_mut().insert(
                header::AUTHORIZATION,
                format!("Bearer {}", self.key).parse().unwrap(),
            );
        }
        self.request_raw(req).await
    }

    /// Sends `req` exactly as given (no key added).
    pub async fn request_raw(&self, req: Request<Body>) -> Answer {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, ctype, body)
    }

    pub async fn get(&self, uri: &str) -> Answer {
        self.request(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    pub async fn post(&self, uri: &str, body: &Value) -> Answer {
        self.request(
            Request::post(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        )
        .await
    }

    pub async fn post_raw(&self, uri: &str, ctype: &str, body: impl Into<Body>) -> Answer {
        self.request(
            Request::post(uri)
                .header(header::CONTENT_TYPE, ctype)
                .body(body.into())
                .unwrap(),
        )
        .await
    }
}
