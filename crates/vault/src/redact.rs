//! Redaction of secret values from text: the raw value and the encodings it commonly travels in.

use crate::{Result, VaultError};
use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// Percent-encoding as URL components are usually encoded: the RFC 3986 unreserved characters
/// stay as they are.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Replaces secret values in text with `[REDACTED:<name>]`.
///
/// Each value is matched raw and in its standard and URL-safe base64 forms (with and without
/// padding), percent-encoded (every non-alphanumeric byte, or only reserved ones; upper- or
/// lower-case hex; `+` for space) and JSON-escaped. Matching is leftmost-longest, so a value
/// that contains another secret is redacted whole.
///
/// Values shorter than [`Redactor::MIN_LEN`] characters are not redacted: a 1–3 character
/// "secret" would match all over ordinary text and destroy it, and such a value protects nothing
/// anyway. When two secrets share a value, the first one given names the replacement.
///
/// The automaton holds every form of every value in memory, unzeroed; build a redactor when
/// needed and drop it with the run.
pub struct Redactor {
    matcher: Option<AhoCorasick>,
    /// The replacement for each pattern, by pattern index.
    replacements: Vec<String>,
}

impl Redactor {
    /// Shortest value (in characters) that is redacted.
    pub const MIN_LEN: usize = 4;

    /// Builds a redactor from `(name, value)` pairs.
    pub fn new<I, N, V>(secrets: I) -> Result<Redactor>
    where
        I: IntoIterator<Item = (N, V)>,
        N: AsRef<str>,
        V: AsRef<str>,
    {
        // Pattern → name; the first secret to claim a pattern keeps it.
        let mut patterns: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in secrets {
            let value = value.as_ref();
            if value.chars().count() < Self::MIN_LEN {
                continue;
            }
            for form in forms(value) {
                patterns
                    .entry(form)
                    .or_insert_with(|| name.as_ref().to_owned());
            }
        }
        if patterns.is_empty() {
            return Ok(Redactor::empty());
        }
        let (patterns, names): (Vec<String>, Vec<String>) = patterns.into_iter().unzip();
        // Never a DFA: `build` picks one for few patterns however long they are, and building
        // it for a 64 KiB value (every form of it) takes minutes. The contiguous NFA builds in
        // time linear in the patterns and redacts tool outputs fast enough.
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(&patterns)
            .map_err(|e| VaultError::Redactor(e.to_string()))?;
        Ok(Redactor {
            matcher: Some(matcher),
            replacements: names
                .into_iter()
                .map(|n| format!("[REDACTED:{n}]"))
                .collect(),
        })
    }

    /// A redactor that changes nothing (a workspace without secrets).
    pub fn empty() -> Redactor {
        Redactor {
            matcher: None,
            replacements: Vec::new(),
        }
    }

    /// True if there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// The text with every secret form replaced; borrowed (no copy) when nothing matched.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let Some(matcher) = &self.matcher else {
            return Cow::Borrowed(text);
        };
        let mut out: Option<String> = None;
        let mut last = 0;
        for m in matcher.find_iter(text) {
            let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
            buf.push_str(&text[last..m.start()]);
            buf.push_str(&self.replacements[m.pattern().as_usize()]);
            last = m.end();
        }
        match out {
            None => Cow::Borrowed(text),
            Some(mut buf) => {
                buf.push_str(&text[last..]);
                Cow::Owned(buf)
            }
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
            .field("patterns", &self.replacements.len())
            .finish()
    }
}

/// Every form of `value` to look for (duplicates are fine: the caller dedupes).
fn forms(value: &str) -> Vec<String> {
    let bytes = value.as_bytes();
    let mut out = vec![
        value.to_owned(),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
    ];
    for set in [NON_ALPHANUMERIC, COMPONENT] {
        let upper = utf8_percent_encode(value, set).to_string();
        if upper != value {
            out.push(lower_hex(&upper));
            // Form encoding writes a space as '+'.
            if value.contains(' ') {
                out.push(upper.replace("%20", "+"));
            }
            out.push(upper);
        }
    }
    if let Ok(json) = serde_json::to_string(value)
        && let Some(inner) = json.strip_prefix('"').and_then(|j| j.strip_suffix('"'))
        && inner != value
    {
        out.push(inner.to_owned());
    }
    out
}

/// `%2F` → `%2f`: some encoders use lower-case hex digits.
fn lower_hex(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut after_percent = 0;
    for c in encoded.chars() {
        if c == '%' {
            after_percent = 2;
            out.push(c);
        } else if after_percent > 0 {
            after_percent -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use serde_json::json;

    #[test]
    fn lower_hex_only_touches_escapes() {
        assert_eq!(lower_hex("AB%2FCD%3a"), "AB%2fCD%3a");
    }

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
