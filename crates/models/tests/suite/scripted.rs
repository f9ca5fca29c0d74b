//! The in-process scripted provider: same directive, same retry loop, no HTTP.

use super::{answer_tools, call, conversation};
use paddock_models::{ModelRequest, Models};
use paddock_types::Message;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn models() -> Models {
    Models::new(&BTreeMap::new()).unwrap()
}

#[tokio::test]
async fn it_follows_the_directive_with_stable_call_ids() {
    let models = models();
    let mut messages = conversation(json!([
        {"tool": "write_file", "args": {"path": "a"}, "repeat": 2},
        {"final": {"ok": true}},
    ]));
    let first = call(&models, "scripted", &messages, "r1", 0).await.unwrap();
    let again = call(&models, "scripted", &messages, "r1", 0).await.unwrap();
    assert_eq!(
        first.response, again.response,
        "a re-issued call answers the same"
    );
    let r = &first.response;
    assert_eq!(r.model, "m");
    assert_eq!(r.tool_calls[0].id, "call_0");
    assert_eq!(r.tool_calls[0].name, "write_file");
    assert_eq!(r.tool_calls[0].arguments, json!({"path": "a"}));
    assert_eq!(r.stop_reason.as_deref(), Some("tool_calls"));
    assert!(r.usage.input_tokens > 0 && r.usage.output_tokens > 0);
    assert_eq!((first.retries, first.cost_usd), (0, 0.0));

    answer_tools(&mut messages, &r.tool_calls);
    let second = call(&models, "scripted", &messages, "r1", 1).await.unwrap();
    assert_eq!(second.response.tool_calls[0].id, "call_1");
    answer_tools(&mut messages, &second.response.tool_calls);
    let third = call(&models, "scripted", &messages, "r1", 2).await.unwrap();
    assert_eq!(third.response.content.as_deref(), Some(r#"{"ok":true}"#));
    assert!(third.response.tool_calls.is_empty());
    assert_eq!(third.response.stop_reason.as_deref(), Some("stop"));
}

#[tokio::test]
async fn transient_faults_are_retried_per_request_key() {
    let models = models();
    let messages = conversation(json!([
        {"error": 500, "times": 2},
        {"drop": true},
        {"final": "ok"},
    ]));
    for run in ["a", "b"] {
        let out = call(&models, "scripted", &messages, run, 0).await.unwrap();
        assert_eq!(out.retries, 3, "run {run}");
        assert_eq!(out.response.content.as_deref(), Some("ok"));
    }
    // The same request key has used up its faults.
    let out = call(&models, "scripted", &messages, "a", 0).await.unwrap();
    assert_eq!(out.retries, 0);
}

#[tokio::test]
async fn retry_after_really_sleeps() {
    let models = models();
    let messages =
        conversation(json!([{"error": 429, "times": 1, "retry_after": 1}, {"final": "ok"}]));
    let started = Instant::now();
    let out = call(&models, "scripted", &messages, "r", 0).await.unwrap();
    assert_eq!(out.retries, 1);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(out.latency_ms >= 1000);
}

#[tokio::test]
async fn the_budget_and_fatal_statuses_end_the_call() {
    let models = models();
    let messages = conversation(json!([{"error": 503, "times": 10}, {"final": "ok"}]));
    let e = call(&models, "scripted", &messages, "r", 0)
        .await
        .unwrap_err();
    assert_eq!(e.retries, 4);
    assert!(
        e.message
            .starts_with("retry budget spent after 4 retries: scripted provider answered 503"),
        "{}",
        e.message
    );

    let messages = conversation(json!([{"error": 401}, {"final": "ok"}]));
    let e = call(&models, "scripted", &messages, "r2", 0)
        .await
        .unwrap_err();
    assert_eq!(e.retries, 0);
    assert!(e.message.contains("answered 401"), "{}", e.message);
}

#[tokio::test]
async fn a_malformed_directive_is_fatal_and_says_why() {
    let models = models();
    let messages = vec![Message::System {
        content: "```mock\n{\"turns\": [{\"tool\": \"x\", \"repeat\": \"2\"}]}\n```".into(),
    }];
    let e = call(&models, "scripted", &messages, "r", 0)
        .await
        .unwrap_err();
    assert_eq!(e.retries, 0);
    assert_eq!(
        e.message,
        "scripted provider: invalid mock directive: turns[0]: \"repeat\" must be a non-negative integer"
    );
}

#[tokio::test]
async fn no_directive_echoes_the_last_user_message() {
    let models = models();
    let messages = vec![
        Message::System {
            content: "Be nice.".into(),
        },
        Message::User {
            content: "first".into(),
        },
        Message::Assistant {
            content: Some("hm".into()),
            tool_calls: vec![],
        },
        Message::User {
            content: "second".into(),
        },
    ];
    let out = call(&models, "scripted", &messages, "r", 0).await.unwrap();
    assert_eq!(out.response.content.as_deref(), Some("echo: second"));
}

#[tokio::test]
async fn cancellation_interrupts_the_backoff() {
    let models = models();
    let messages =
        conversation(json!([{"error": 429, "times": 5, "retry_after": 30}, {"final": "ok"}]));
    let req = ModelRequest {
        model: "m",
        messages: &messages,
        tools: &[],
        temperature: None,
        top_p: None,
        max_output_tokens: 10,
        run_id: "r",
        call_index: 0,
    };
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        trigger.cancel();
    });
    let started = Instant::now();
    let e = models.call("scripted", &req, &cancel).await.unwrap_err();
    assert_eq!(e.message, "cancelled");
    assert_eq!(e.retries, 0);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn many_steps_are_cheap() {
    let models = models();
    let mut messages = conversation(json!([
        {"tool": "write_file", "args": {"path": "a"}, "repeat": 1000},
        {"final": "done"},
    ]));
    for i in 0..1000u32 {
        let out = call(&models, "scripted", &messages, "r", i).await.unwrap();
        let calls = out.response.tool_calls;
        assert_eq!(calls[0].id, format!("call_{i}"));
        answer_tools(&mut messages, &calls);
    }
    let out = call(&models, "scripted", &messages, "r", 1000)
        .await
        .unwrap();
    assert_eq!(out.response.content.as_deref(), Some("done"));
}
