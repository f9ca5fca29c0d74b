//! The redactor: every encoded form of a secret, short values left alone.

use super::{open, scope};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use paddock_vault::Redactor;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::json;

// Chosen so its base64 has `+` and `/` (which URL-safe base64 spells `-` and `_`) and padding,
// and it has characters percent-encoding changes.
const VALUE: &str = "p@ss w?rd/ÿÿ>~";

#[test]
fn every_form_of_a_secret_is_redacted() {
    let r = Redactor::new([("api_key", VALUE)]).unwrap();
    let std = STANDARD.encode(VALUE);
    let url = URL_SAFE.encode(VALUE);
    assert!(std.contains('+') || std.contains('/'), "{std}");
    assert_ne!(std, url);
    assert!(std.ends_with('='), "{std}");
    let forms = [
        VALUE.to_owned(),
        std,
        STANDARD_NO_PAD.encode(VALUE),
        url,
        URL_SAFE_NO_PAD.encode(VALUE),
        utf8_percent_encode(VALUE, NON_ALPHANUMERIC).to_string(),
        utf8_percent_encode(VALUE, NON_ALPHANUMERIC)
            .to_string()
            .to_lowercase(),
        // encodeURIComponent-style: unreserved characters left as they are.
        "p%40ss%20w%3Frd%2F%C3%BF%C3%BF%3E~".to_owned(),
        // Form encoding.
        "p%40ss+w%3Frd%2F%C3%BF%C3%BF%3E~".to_owned(),
    ];
    for form in forms {
        let text = format!("before {form} after");
        assert_eq!(
            r.redact(&text),
            "before [REDACTED:api_key] after",
            "form {form:?} leaked"
        );
    }
    // Several occurrences, back to back.
    assert_eq!(
        r.redact(&format!("{VALUE}{VALUE}")),
        "[REDACTED:api_key][REDACTED:api_key]"
    );
}

#[test]
fn short_values_are_left_alone() {
    let r = Redactor::new([("pin", "123"), ("flag", "on"), ("ok", "abcd")]).unwrap();
    assert_eq!(
        r.redact("pin 123 is on, abcd is not"),
        "pin 123 is on, [REDACTED:ok] is not"
    );
    // Counted in characters, not bytes: three two-byte characters are still too short.
    let r = Redactor::new([("x", "ééé")]).unwrap();
    assert!(r.is_empty());
    assert_eq!(r.redact("ééé"), "ééé");
}

#[test]
fn json_strings_are_redacted_recursively() {
    let r = Redactor::new([("tok", "sk-live-123456")]).unwrap();
    let b64 = STANDARD.encode("sk-live-123456");
    let event = json!({
        "type": "tool_call_completed",
        "output": {"stdout": "token=sk-live-123456\n", "lines": ["a", format!("Basic {b64}")]},
        "exit": 0,
    });
    assert_eq!(
        r.redact_json(&event),
        json!({
            "type": "tool_call_completed",
            "output": {"stdout": "token=[REDACTED:tok]\n", "lines": ["a", "Basic [REDACTED:tok]"]},
            "exit": 0,
        })
    );
}

#[tokio::test]
async fn a_workspace_redactor_covers_its_own_secrets_only() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, vault) = open(dir.path()).await;
    let (a, b) = (scope("org_a", "ws_a"), scope("org_a", "ws_b"));
    vault.put(&a, "gh", "ghp_aaaaaaaaaaaa").await.unwrap();
    vault.put(&a, "slack", "xoxb-bbbbbbbbbbbb").await.unwrap();
    vault.put(&b, "theirs", "theirs-cccccccccc").await.unwrap();

    let r = vault.redactor(&a).await.unwrap();
    let text = "ghp_aaaaaaaaaaaa xoxb-bbbbbbbbbbbb theirs-cccccccccc";
    assert_eq!(
        r.redact(text),
        "[REDACTED:gh] [REDACTED:slack] theirs-cccccccccc"
    );
    assert!(
        vault
            .redactor(&scope("org_a", "ws_empty"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!format!("{r:?}").contains("ghp_"));
}

#[tokio::test]
async fn a_kept_redactor_follows_every_write_to_the_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (store, vault) = open(dir.path()).await;
    let a = scope("org_a", "ws_a");
    vault.put(&a, "gh", "ghp_first_value_1234").await.unwrap();
    let first = vault.redactor(&a).await.unwrap();
    assert_eq!(first.redact("ghp_first_value_1234"), "[REDACTED:gh]");

    // A new value under the same name: the next redactor knows it, not the old one.
    vault.put(&a, "gh", "ghp_second_value_5678").await.unwrap();
    let second = vault.redactor(&a).await.unwrap();
    assert_eq!(second.redact("ghp_second_value_5678"), "[REDACTED:gh]");
    assert_eq!(
        second.redact("ghp_first_value_1234"),
        "ghp_first_value_1234"
    );

    // A write by another process sharing the database (another node) is seen too.
    let other = paddock_vault::Vault::open_with(store, dir.path(), paddock_vault::KeySource::File)
        .await
        .unwrap();
    other
        .put(&a, "slack", "xoxb-third-value-9012")
        .await
        .unwrap();
    let third = vault.redactor(&a).await.unwrap();
    assert_eq!(
        third.redact("ghp_second_value_5678 xoxb-third-value-9012"),
        "[REDACTED:gh] [REDACTED:slack]"
    );

    vault.delete(&a, "gh").await.unwrap();
    let fourth = vault.redactor(&a).await.unwrap();
    assert_eq!(
        fourth.redact("ghp_second_value_5678"),
        "ghp_second_value_5678"
    );
}
