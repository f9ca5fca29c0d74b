//! Both wire formats, streaming and not, against the mock server through real sockets.

use super::{HTTP_PROVIDERS, MAX_RETRIES, Mock, answer_tools, call, call_model, conversation};
use paddock_models::{Models, ProviderKind};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_tool_turn_then_a_final_turn_parse_in_every_format() {
    let mock = Mock::start().await;
    for p in HTTP_PROVIDERS {
        let mut messages = conversation(json!([
            {"tool": "write_file", "args": {"path": "notes/a.txt", "content": "héllo wörld"}},
            {"final": "all done ✓ — see notes/a.txt"},
        ]));
        let run = format!("run-{p}");
        let first = call(&mock.models, p, &messages, &run, 0).await.unwrap();
        let r = &first.response;
        assert_eq!(r.model, "m", "{p}");
        assert_eq!(r.content, None, "{p}");
        assert_eq!(r.tool_calls.len(), 1, "{p}: {r:?}");
        let tc = &r.tool_calls[0];
        assert_eq!(tc.id, "call_0", "{p}");
        assert_eq!(tc.name, "write_file", "{p}");
        assert_eq!(
            tc.arguments,
            json!({"path": "notes/a.txt", "content": "héllo wörld"}),
            "{p}"
        );
        let tool_stop = if p.starts_with("oai") {
            "tool_calls"
        } else {
            "tool_use"
        };
        assert_eq!(r.stop_reason.as_deref(), Some(tool_stop), "{p}");
        assert!(
            r.usage.input_tokens > 0 && r.usage.output_tokens > 0,
            "{p}: {r:?}"
        );
        assert_eq!(first.retries, 0);
        assert_eq!(first.cost_usd, 0.0, "an unpriced model costs nothing");

        answer_tools(&mut messages, &r.tool_calls);
        let second = call(&mock.models, p, &messages, &run, 1).await.unwrap();
        let r = &second.response;
        assert_eq!(
            r.content.as_deref(),
            Some("all done ✓ — see notes/a.txt"),
            "{p}"
        );
        assert!(r.tool_calls.is_empty(), "{p}");
        let end_stop = if p.starts_with("oai") {
            "stop"
        } else {
            "end_turn"
        };
        assert_eq!(r.stop_reason.as_deref(), Some(end_stop), "{p}");
        assert!(
            r.usage.input_tokens > first.response.usage.input_tokens,
            "{p}: the conversation grew"
        );
    }
    let stats = mock.stats().await;
    assert_eq!(stats["requests"], 8, "{stats}");
    assert_eq!(stats["duplicate_keys"], json!({}), "{stats}");
}

#[tokio::test]
async fn json_finals_are_compact_and_the_script_repeats_its_last_answer() {
    let mock = Mock::start().await;
    for p in HTTP_PROVIDERS {
        let mut messages = conversation(json!([{"final": {"ok": true, "n": [1, 2]}}]));
        let r = call(&mock.models, p, &messages, "r", 0).await.unwrap();
        let text = r.response.content.clone().unwrap();
        assert!(!text.contains(' '), "{p}: not compact: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v, json!({"ok": true, "n": [1, 2]}), "{p}");
        messages.push(paddock_types::Message::Assistant {
            content: r.response.content.clone(),
            tool_calls: vec![],
        });
        messages.push(paddock_types::Message::User {
            content: "fix it".into(),
        });
        let r = call(&mock.models, p, &messages, "r", 1).await.unwrap();
        assert_eq!(r.response.content.as_deref(), Some(text.as_str()), "{p}");
    }
}

#[tokio::test]
async fn a_429_with_retry_after_is_honoured_with_the_same_key() {
    let mock = Mock::start().await;
    let messages = conversation(json!([
        {"error": 429, "times": 2, "retry_after": 1},
        {"final": "ok"},
    ]));
    let started = Instant::now();
    let out = call(&mock.models, "oai", &messages, "run-429", 0)
        .await
        .unwrap();
    assert_eq!(out.response.content.as_deref(), Some("ok"));
    assert_eq!(out.retries, 2);
    // retry_max_ms is 40, but the server asked for a second each time.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(out.latency_ms >= 2000, "{}", out.latency_ms);
    assert_eq!(mock.sends("run-429/0").await, 3);
}

#[tokio::test]
async fn transient_statuses_back_off_in_the_anthropic_format_too() {
    let mock = Mock::start().await;
    for (i, p) in ["ant", "ant_json"].into_iter().enumerate() {
        let messages = conversation(json!([
            {"error": 529, "times": 1},
            {"error": 503, "times": 1},
            {"final": "ok"},
        ]));
        let run = format!("run-{i}");
        let out = call(&mock.models, p, &messages, &run, 0).await.unwrap();
        assert_eq!(out.response.content.as_deref(), Some("ok"), "{p}");
        assert_eq!(out.retries, 2, "{p}");
        assert_eq!(mock.sends(&format!("{run}/0")).await, 3, "{p}");
    }
}

#[tokio::test]
async fn a_500_beyond_the_budget_fails_after_max_retries() {
    let mock = Mock::start().await;
    for p in HTTP_PROVIDERS {
        let messages = conversation(json!([{"error": 500, "times": 10}, {"final": "ok"}]));
        let run = format!("run-{p}");
        let e = call(&mock.models, p, &messages, &run, 0).await.unwrap_err();
        assert_eq!(e.retries, MAX_RETRIES, "{p}");
        assert!(
            e.message
                .starts_with(&format!("retry budget spent after {MAX_RETRIES} retries")),
            "{p}: {}",
            e.message
        );
        assert!(e.message.contains("answered 500"), "{p}: {}", e.message);
        assert!(
            e.message.contains("injected by the mock directive"),
            "{p}: {}",
            e.message
        );
        assert_eq!(
            mock.sends(&format!("{run}/0")).await,
            u64::from(1 + MAX_RETRIES),
            "{p}"
        );
    }
}

#[tokio::test]
async fn a_400_fails_at_once() {
    let mock = Mock::start().await;
    for p in HTTP_PROVIDERS {
        let messages = conversation(json!([{"error": 400, "times": 1}, {"final": "ok"}]));
        let run = format!("run-{p}");
        let e = call(&mock.models, p, &messages, &run, 0).await.unwrap_err();
        assert_eq!(e.retries, 0, "{p}");
        let kind = if p.starts_with("oai") {
            "openai"
        } else {
            "anthropic"
        };
        assert!(
            e.message
                == format!("{kind} provider \"{p}\" answered 400: injected by the mock directive"),
            "{p}: {}",
            e.message
        );
    }
    let stats = mock.stats().await;
    assert_eq!(stats["requests"], 4, "{stats}");
    assert_eq!(
        stats["duplicate_keys"],
        json!({}),
        "a 400 was retried: {stats}"
    );
}

#[tokio::test]
async fn a_dropped_connection_is_retried_then_succeeds() {
    let mock = Mock::start().await;
    for p in HTTP_PROVIDERS {
        let mut messages = conversation(json!([
            {"drop": true, "times": 1},
            {"tool": "write_file", "args": {"path": "a"}},
            {"drop": true, "times": 2},
            {"final": "recovered"},
        ]));
        let run = format!("run-{p}");
        let out = call(&mock.models, p, &messages, &run, 0).await.unwrap();
        assert_eq!(out.retries, 1, "{p}");
        assert_eq!(
            out.response.tool_calls[0].arguments,
            json!({"path": "a"}),
            "{p}"
        );
        answer_tools(&mut messages, &out.response.tool_calls);
        let out = call(&mock.models, p, &messages, &run, 1).await.unwrap();
        assert_eq!(out.retries, 2, "{p}");
        assert_eq!(out.response.content.as_deref(), Some("recovered"), "{p}");
        assert_eq!(mock.sends(&format!("{run}/0")).await, 2, "{p}");
        assert_eq!(mock.sends(&format!("{run}/1")).await, 3, "{p}");
    }
}

#[tokio::test]
async fn cost_comes_from_the_price_table() {
    let mock = Mock::start().await;
    for p in HTTP_PROVIDERS {
        let messages = conversation(json!([{"final": "a fairly long answer to be priced"}]));
        let out = call_model(&mock.models, p, "priced-model", &messages, "r", 0)
            .await
            .unwrap();
        let u = out.response.usage;
        let want = (u.input_tokens as f64 * 1.0 + u.output_tokens as f64 * 2.0) / 1e6;
        assert!(want > 0.0);
        assert!(
            (out.cost_usd - want).abs() < 1e-15,
            "{p}: {} vs {want}",
            out.cost_usd
        );
        assert_eq!(out.response.model, "priced-model");
    }
}

#[tokio::test]
async fn a_malformed_directive_is_a_fatal_400() {
    let mock = Mock::start().await;
    for p in HTTP_PROVIDERS {
        let messages = conversation(json!([{"final": "ok", "repeat": 2}]));
        let e = call(&mock.models, p, &messages, "r", 0).await.unwrap_err();
        assert_eq!(e.retries, 0, "{p}");
        assert!(e.message.contains("answered 400"), "{p}: {}", e.message);
        assert!(
            e.message.contains(
                "invalid mock directive: turns[0]: unknown field \"repeat\" in a \"final\" turn"
            ),
            "{p}: {}",
            e.message
        );
    }
}

#[tokio::test]
async fn without_a_directive_the_mock_echoes_the_user() {
    let mock = Mock::start().await;
    for p in HTTP_PROVIDERS {
        let messages = vec![
            paddock_types::Message::System {
                content: "You are helpful.".into(),
            },
            paddock_types::Message::User {
                content: "ping?".into(),
            },
        ];
        let out = call(&mock.models, p, &messages, "r", 0).await.unwrap();
        assert_eq!(out.response.content.as_deref(), Some("echo: ping?"), "{p}");
    }
}

#[tokio::test]
async fn health_and_stats_answer() {
    let mock = Mock::start().await;
    assert_eq!(mock.get("/healthz").await, (200, "ok".into()));
    assert_eq!(
        mock.stats().await,
        json!({"requests": 0, "duplicate_keys": {}})
    );
    assert_eq!(mock.get("/nope").await.0, 404);
}

#[tokio::test]
async fn an_unreachable_server_is_retried_then_reported() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A port that was free a moment ago: connecting is refused.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let providers = BTreeMap::from([(
        "down".to_owned(),
        super::provider(ProviderKind::Openai, format!("http://{addr}/v1"), true),
    )]);
    let models = Models::new(&providers).unwrap();
    let e = call(&models, "down", &conversation(json!([])), "r", 0)
        .await
        .unwrap_err();
    assert_eq!(e.retries, MAX_RETRIES);
    assert!(e.message.contains("request failed"), "{}", e.message);
}

#[tokio::test]
async fn a_slow_answer_times_out_per_attempt_and_is_retried() {
    let mock = Mock::with_latency(1500, |c| {
        c.timeout_secs = 1;
        c.max_retries = 1;
    })
    .await;
    let started = Instant::now();
    let e = call(
        &mock.models,
        "oai",
        &conversation(json!([{"final": "late"}])),
        "slow",
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(e.retries, 1);
    assert!(
        e.message.contains("no complete answer within 1 s"),
        "{}",
        e.message
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(mock.sends("slow/0").await, 2);
}

#[tokio::test]
async fn an_unknown_provider_is_an_error_not_a_panic() {
    let models = Models::new(&BTreeMap::new()).unwrap();
    assert!(models.has("scripted"));
    assert!(!models.has("oai"));
    let e = call(&models, "oai", &conversation(json!([])), "r", 0)
        .await
        .unwrap_err();
    assert_eq!(e.retries, 0);
    assert_eq!(e.message, "unknown model provider \"oai\"");
}

#[tokio::test]
async fn a_drop_is_reported_as_a_cut_answer() {
    let mock = Mock::with_latency(0, |c| c.max_retries = 0).await;
    for p in HTTP_PROVIDERS {
        let messages = conversation(json!([{"drop": true}, {"final": "never seen"}]));
        let e = call(&mock.models, p, &messages, p, 0).await.unwrap_err();
        assert_eq!(e.retries, 0, "{p}");
        assert!(
            e.message
                .starts_with("retry budget spent after 0 retries: "),
            "{p}: {}",
            e.message
        );
        // A plain answer is dropped before its head, a stream after a few events.
        let cut = if p.ends_with("_json") {
            "request failed"
        } else {
            "stream cut"
        };
        assert!(e.message.contains(cut), "{p}: {}", e.message);
    }
}
