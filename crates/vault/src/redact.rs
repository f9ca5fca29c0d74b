//! Redaction of secret values from text (tool outputs, the journal, logs): the raw value, the
//! encodings it commonly travels in and long enough fragments, as [`paddock_types::redact`]
//! defines them.

use crate::{Result, VaultError};
use paddock_types::redact::SecretMatcher;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// Replaces secret values in text with `[REDACTED:<name>]`.
///
/// The forms looked for (raw, percent-, JSON- and HTML-escaped, base64 and base64url at every
/// offset, hex, reversed, case-folded, and long enough fragments) come from
/// [`paddock_types::redact`], the one generator the egress broker uses too. Overlapping
/// matches are redacted as one region named after the longest, so a value that contains
/// another secret is redacted whole.
///
/// Values shorter than [`Redactor::MIN_LEN`] characters are not redacted: a 1–3 character
/// "secret" would match all over ordinary text and destroy it, and such a value protects nothing
/// anyway. When two secrets share a value, the first one given names the replacement.
///
/// The automaton holds every form of every value in memory, unzeroed. Cloning is cheap (the
/// automaton is shared).
#[derive(Clone)]
pub struct Redactor {
    matcher: SecretMatcher,
}

impl Redactor {
    /// Shortest value (in characters) that is redacted.
    pub const MIN_LEN: usize = paddock_types::redact::MIN_LEN;

    /// Builds a redactor from `(name, value)` pairs.
    pub fn new<I, N, V>(secrets: I) -> Result<Redactor>
    where
        I: IntoIterator<Item = (N, V)>,
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let matcher =
            SecretMatcher::new(secrets).map_err(|e| VaultError::Redactor(e.to_string()))?;
        Ok(Redactor { matcher })
    }

    /// A redactor that changes nothing (a workspace without secrets).
    pub fn empty() -> Redactor {
        Redactor {
            matcher: SecretMatcher::empty(),
        }
    }

    /// True if there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_empty()
    }

    /// The matcher behind this redactor, e.g. for the egress broker to refuse requests that
    /// carry one of these secrets.
    pub fn matcher(&self) -> &SecretMatcher {
        &self.matcher
    }

    /// The text with every secret form replaced; borrowed (no copy) when nothing matched.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.matcher.redact(text.as_bytes()) {
            None => Cow::Borrowed(text),
            // Patterns are whole UTF-8 strings, so matches fall on character boundaries; lossy
            // conversion is only a guard.
            Some(out) => Cow::Owned(
                String::from_utf8(out)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }

    /// The value with every string in it (object keys included) redacted, recursively.
    pub fn redact_json(&self, value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.redact(s).into_owned()),
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.redact_json(v)).collect())
            }
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (self.redact(k).into_owned(), self.redact_json(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::empty()
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.matcher.secrets())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use serde_json::json;

    #[test]
    fn a_secret_inside_another_is_redacted_whole() {
        let r = Redactor::new([("outer", "abcd-efgh-ijkl"), ("inner", "efgh")]).unwrap();
        assert_eq!(r.redact("x abcd-efgh-ijkl y"), "x [REDACTED:outer] y");
        assert_eq!(r.redact("x efgh y"), "x [REDACTED:inner] y");
    }

    #[test]
    fn nothing_to_redact_borrows() {
        let r = Redactor::new([("a", "secret-value")]).unwrap();
        assert!(matches!(r.redact("plain text"), Cow::Borrowed(_)));
        assert!(matches!(Redactor::empty().redact("x"), Cow::Borrowed(_)));
        assert!(
            Redactor::new(Vec::<(&str, &str)>::new())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn json_keys_and_nested_strings_are_redacted() {
        let r = Redactor::new([("k", "tok-123456")]).unwrap();
        let v = json!({"a": ["x tok-123456", {"tok-123456": 1, "n": null}], "b": 2});
        assert_eq!(
            r.redact_json(&v),
            json!({"a": ["x [REDACTED:k]", {"[REDACTED:k]": 1, "n": null}], "b": 2})
        );
    }
}
