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
