//! `Models::new` refuses configurations it cannot use.

use super::provider;
use paddock_models::{Models, ModelsError, ProviderConfig, ProviderKind};
use std::collections::BTreeMap;

fn new_with(name: &str, cfg: ProviderConfig) -> Result<Models, ModelsError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Models::new(&BTreeMap::from([(name.to_owned(), cfg)]))
}

#[test]
fn scripted_is_reserved() {
    let cfg = provider(ProviderKind::Openai, "http://127.0.0.1:1/v1".into(), true);
    let e = new_with("scripted", cfg).unwrap_err();
    assert!(matches!(e, ModelsError::ReservedName), "{e}");
}

#[test]
fn bad_base_urls_are_named() {
    for url in ["not a url", "ftp://example.com", "http://h/v1?x=1"] {
        let cfg = provider(ProviderKind::Anthropic, url.into(), true);
        let e = new_with("p", cfg).unwrap_err();
        assert!(matches!(e, ModelsError::BadBaseUrl { .. }), "{url}: {e}");
        assert!(e.to_string().contains(url), "{e}");
    }
}

#[test]
fn a_missing_key_variable_is_named() {
    let mut cfg = provider(ProviderKind::Openai, "http://127.0.0.1:1/v1".into(), true);
    cfg.api_key_env = Some("PADDOCK_TEST_SURELY_UNSET_KEY_4711".into());
    let e = new_with("p", cfg).unwrap_err();
    assert!(
        e.to_string().contains("PADDOCK_TEST_SURELY_UNSET_KEY_4711"),
        "{e}"
    );
}

#[test]
fn a_zero_timeout_is_refused() {
    let mut cfg = provider(ProviderKind::Openai, "http://127.0.0.1:1/v1".into(), true);
    cfg.timeout_secs = 0;
    let e = new_with("p", cfg).unwrap_err();
    assert!(e.to_string().contains("timeout_secs"), "{e}");
}

#[test]
fn default_base_urls_are_accepted() {
    let mut cfg = provider(ProviderKind::Openai, String::new(), true);
    cfg.base_url = None;
    let models = new_with("openai", cfg).unwrap();
    assert!(models.has("openai") && models.has("scripted"));
}

/// The hold for budgets is an upper bound: by the model's price, or by the dearest price of
/// the table when the requested name is not in it (the call may be billed under another name
/// the provider reports); nothing without prices.
#[test]
fn the_most_a_call_can_cost_never_undercounts() {
    let mut cfg = provider(ProviderKind::Openai, "http://127.0.0.1:1/v1".into(), true);
    cfg.prices.insert(
        "dear-model-2024".to_owned(),
        paddock_models::Price {
            input_per_mtok: 5.0,
            output_per_mtok: 1.0,
        },
    );
    let models = new_with("p", cfg).unwrap();
    let req = |model| paddock_models::ModelRequest {
        model,
        messages: &[],
        tools: &[],
        temperature: None,
        top_p: None,
        max_output_tokens: 1_000_000,
        run_id: "r",
        call_index: 0,
    };
    // priced-model: $2 per million output tokens, plus 20 input tokens ("[]" twice and 16 of
    // framing) at $1 per million.
    let exact = models.max_cost_usd("p", &req("priced-model"));
    assert!((exact - (2.0 + 20e-6)).abs() < 1e-9, "{exact}");
    // Unknown name: the dearest output ($2) and input ($5) prices of the table.
    let unknown = models.max_cost_usd("p", &req("priced-model-latest"));
    assert!((unknown - (2.0 + 5.0 * 20e-6)).abs() < 1e-9, "{unknown}");
    assert_eq!(models.max_cost_usd("scripted", &req("any")), 0.0);
}
