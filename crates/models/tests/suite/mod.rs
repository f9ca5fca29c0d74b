mod config;
mod http;
mod scripted;

use paddock_models::mock_server::{MockOptions, serve};
use paddock_models::{
    CallError, CallOutcome, ModelRequest, Models, Price, ProviderConfig, ProviderKind,
};
use paddock_types::{Message, ToolCall, ToolSpec};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

/// Provider names configured against the mock: (name, streaming).
pub const HTTP_PROVIDERS: [&str; 4] = ["oai", "oai_json", "ant", "ant_json"];

pub const MAX_RETRIES: u32 = 3;

pub fn prompt(turns: Value) -> String {
    format!("Test agent.\n```mock\n{}\n```\n", json!({ "turns": turns }))
}

/// A fresh conversation scripted with `turns`.
pub fn conversation(turns: Value) -> Vec<Message> {
    vec![
        Message::System {
            content: prompt(turns),
        },
        Message::User {
            content: "please do it".into(),
        },
    ]
}

pub fn tools() -> Vec<ToolSpec> {
    vec![ToolSpec {
        name: "write_file".into(),
        description: "Writes a file".into(),
        parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}}),
    }]
}

/// Appends the model's tool calls and a result for each, as the harness would.
pub fn answer_tools(messages: &mut Vec<Message>, calls: &[ToolCall]) {
    messages.push(Message::Assistant {
        content: None,
        tool_calls: calls.to_vec(),
    });
    for c in calls {
        messages.push(Message::Tool {
            call_id: c.id.clone(),
            name: c.name.clone(),
            content: "written".into(),
            is_error: false,
        });
    }
}

pub fn provider(kind: ProviderKind, base_url: String, stream: bool) -> ProviderConfig {
    ProviderConfig {
        kind,
        base_url: Some(base_url),
        api_key_env: None,
        max_retries: MAX_RETRIES,
        retry_base_ms: 5,
        retry_max_ms: 40,
        timeout_secs: 10,
        stream,
        prices: BTreeMap::from([(
            "priced-model".to_owned(),
            Price {
                input_per_mtok: 1.0,
                output_per_mtok: 2.0,
            },
        )]),
    }
}

/// A mock server on its own port and `Models` pointing at it in all four flavours.
pub struct Mock {
    pub addr: SocketAddr,
    pub models: Models,
    http: reqwest::Client,
}

impl Mock {
    pub async fn start() -> Mock {
        Self::with_latency(0, |_| {}).await
    }

    pub async fn with_latency(latency_ms: u64, tweak: impl Fn(&mut ProviderConfig)) -> Mock {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, MockOptions { latency_ms }));
        let openai = format!("http://{addr}/v1");
        let anthropic = format!("http://{addr}/");
        let mut providers = BTreeMap::new();
        for (name, kind, url, stream) in [
            ("oai", ProviderKind::Openai, &openai, true),
            ("oai_json", ProviderKind::Openai, &openai, false),
            ("ant", ProviderKind::Anthropic, &anthropic, true),
            ("ant_json", ProviderKind::Anthropic, &anthropic, false),
        ] {
            let mut cfg = provider(kind, url.clone(), stream);
            tweak(&mut cfg);
            providers.insert(name.to_owned(), cfg);
        }
        Mock {
            addr,
            models: Models::new(&providers).unwrap(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn stats(&self) -> Value {
        let (status, body) = self.get("/stats").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// How many times `key` reached the mock, given it was sent at least once.
    pub async fn sends(&self, key: &str) -> u64 {
        self.stats().await["duplicate_keys"][key]
            .as_u64()
            .unwrap_or(1)
    }
}

pub async fn call(
    models: &Models,
    provider: &str,
    messages: &[Message],
    run_id: &str,
    call_index: u32,
) -> Result<CallOutcome, CallError> {
    call_model(models, provider, "m", messages, run_id, call_index).await
}

pub async fn call_model(
    models: &Models,
    provider: &str,
    model: &str,
    messages: &[Message],
    run_id: &str,
    call_index: u32,
) -> Result<CallOutcome, CallError> {
    let tools = tools();
    let req = ModelRequest {
        model,
        messages,
        tools: &tools,
        temperature: Some(0.0),
        top_p: None,
        max_output_tokens: 256,
        run_id,
        call_index,
    };
    models.call(provider, &req, &CancellationToken::new()).await
}
