//! Credential injection and placeholders.
//!
//! The broker never stores a secret: the caller resolves the run's secrets from the vault and
//! hands them in a [`crate::RunEgress`], which lives as long as the run.

use crate::error::UpstreamFailure;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use paddock_types::manifest::{CredentialBinding, host_matches};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use std::fmt;

/// Characters percent-encoded when a secret goes into a URL: everything but RFC 3986 unreserved.
pub(crate) const URL_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One credential binding with its secret resolved for a run.
#[derive(Clone)]
pub struct ResolvedCredential {
    pub binding: CredentialBinding,
    /// The secret itself. Never logged, never recorded.
    pub value: String,
    /// The stand-in the sandbox sees in `binding.placeholder_env`, swapped for `value` only on
    /// requests to the bound host.
    pub placeholder: Option<String>,
}

impl ResolvedCredential {
    /// Makes a placeholder (see [`placeholder_for`]) when the binding asks for one.
    pub fn new(binding: CredentialBinding, value: impl Into<String>) -> Self {
        let value = value.into();
        let placeholder = binding
            .placeholder_env
            .as_ref()
            .map(|_| placeholder_for(&value));
        Self {
            binding,
            value,
            placeholder,
        }
    }

    fn applies_to(&self, host: &str) -> bool {
        host_matches(&self.binding.host, host)
    }
}

impl fmt::Debug for ResolvedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedCredential")
            .field("binding", &self.binding)
            .field("value", &"[redacted]")
            .field("placeholder", &self.placeholder)
            .finish()
    }
}

/// A stand-in for `secret` with the same length (in characters) and alphabet: letters stay
/// letters of the classes the secret uses, digits stay digits, hex stays hex, punctuation stays
/// where it is (so `sk-…`/`ghp_…`-shaped tokens keep their shape and pass client-side format
/// checks). When the secret has a long enough alphanumeric run, the placeholder carries
/// `paddock` (or `PADDOCK`) there so a human can recognise it. Random, never equal to `secret`.
pub fn placeholder_for(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let alnum: Vec<char> = chars
        .iter()
        .copied()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let has = |f: fn(&char) -> bool| alnum.iter().any(f);
    let (lower, upper, digit) = (
        has(char::is_ascii_lowercase),
        has(char::is_ascii_uppercase),
        has(char::is_ascii_digit),
    );
    let hex_lower = alnum.iter().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
    let hex_upper = alnum.iter().all(|c| matches!(c, '0'..='9' | 'A'..='F'));
    let alphabet: Vec<u8> = if !alnum.is_empty() && hex_lower && lower {
        b"0123456789abcdef".to_vec()
    } else if !alnum.is_empty() && hex_upper && upper {
        b"0123456789ABCDEF".to_vec()
    } else {
        let mut a = Vec::new();
        if lower || alnum.is_empty() {
            a.extend(b'a'..=b'z');
        }
        if upper {
            a.extend(b'A'..=b'Z');
        }
        if digit {
            a.extend(b'0'..=b'9');
        }
        a
    };
    let marker: Option<&[u8]> = if alphabet.len() == 16 {
        None
    } else if lower {
        Some(b"paddock")
    } else if upper {
        Some(b"PADDOCK")
    } else {
        None
    };
    // The first alphanumeric run long enough for the marker plus 8 random characters.
    let marker_at = marker.and_then(|m| {
        let mut start = 0;
        for i in 0..=chars.len() {
            let alnum_here = chars
                .get(i)
                .is_some_and(|c| !c.is_ascii_punctuation() && !c.is_whitespace());
            if !alnum_here {
                if i - start >= m.len() + 8 {
                    return Some(start);
                }
                start = i + 1;
            }
        }
        None
    });
    for _ in 0..16 {
        let mut random = vec![0u8; chars.len()];
        crate::random_fill_infallible(&mut random);
        let mut out = String::with_capacity(secret.len());
        for (i, c) in chars.iter().enumerate() {
            let from_marker = match (marker, marker_at) {
                (Some(m), Some(at)) if i >= at && i < at + m.len() => Some(m[i - at] as char),
                _ => None,
            };
            if let Some(mc) = from_marker {
                out.push(mc);
            } else if c.is_ascii_punctuation() || c.is_ascii_whitespace() {
                out.push(*c);
            } else {
                let idx = random[i] as usize % alphabet.len().max(1);
                out.push(alphabet.get(idx).copied().unwrap_or(b'x') as char);
            }
        }
        if out != secret {
            return out;
        }
    }
    // Only reachable for secrets with no random positions at all (punctuation only).
    "paddock-placeholder"
        .chars()
        .take(chars.len().max(1))
        .collect()
}

/// The credentials that apply to one request's host.
pub(crate) struct Injection<'a> {
    creds: Vec<&'a ResolvedCredential>,
}

impl<'a> Injection<'a> {
    pub(crate) fn for_host(all: &'a [ResolvedCredential], host: &str) -> Self {
        Self {
            creds: all.iter().filter(|c| c.applies_to(host)).collect(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.creds.is_empty()
    }

    /// Names of the injected secrets, comma-separated, for the record.
    pub(crate) fn names(&self) -> Option<String> {
        if self.creds.is_empty() {
            return None;
        }
        let mut names: Vec<&str> = self
            .creds
            .iter()
            .map(|c| c.binding.secret.as_str())
            .collect();
        names.dedup();
        Some(names.join(","))
    }

    /// Swaps placeholders in the path and query, then sets query-parameter credentials.
    pub(crate) fn apply_to_target(&self, path_and_query: &str) -> String {
        let mut pq = path_and_query.to_owned();
        for c in &self.creds {
            if let Some(p) = &c.placeholder
                && !p.is_empty()
                && pq.contains(p.as_str())
            {
                let encoded = utf8_percent_encode(&c.value, URL_VALUE).to_string();
                pq = pq.replace(p.as_str(), &encoded);
            }
        }
        for c in &self.creds {
            if let Some(param) = &c.binding.query {
                pq = set_query_param(&pq, param, &c.value);
            }
        }
        pq
    }

    /// Swaps placeholders in header values, then sets header credentials (replacing whatever the
    /// client sent under that name).
    pub(crate) fn apply_to_headers(&self, headers: &mut HeaderMap) -> Result<(), UpstreamFailure> {
        for c in &self.creds {
            let Some(p) = c.placeholder.as_deref().filter(|p| !p.is_empty()) else {
                continue;
            };
            let finder = memfind(p.as_bytes());
            for value in headers.values_mut() {
                if finder(value.as_bytes()) {
                    let replaced =
                        replace_bytes(value.as_bytes(), p.as_bytes(), c.value.as_bytes());
                    let mut v = HeaderValue::from_bytes(&replaced)
                        .map_err(|_| UpstreamFailure::CredentialInvalid)?;
                    v.set_sensitive(true);
                    *value = v;
                }
            }
        }
        for c in &self.creds {
            let Some(template) = &c.binding.header else {
                continue;
            };
            let (name, value) = template
                .split_once(':')
                .ok_or(UpstreamFailure::CredentialInvalid)?;
            let name = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
                .map_err(|_| UpstreamFailure::CredentialInvalid)?;
            let value = value.trim().replace("{secret}", &c.value);
            let mut value =
                HeaderValue::from_str(&value).map_err(|_| UpstreamFailure::CredentialInvalid)?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(())
    }
}

fn memfind(needle: &[u8]) -> impl Fn(&[u8]) -> bool + '_ {
    move |hay: &[u8]| !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn replace_bytes(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// Removes every `name=…` pair from the query and appends `name=<value>` (percent-encoded).
fn set_query_param(path_and_query: &str, name: &str, value: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut pairs: Vec<&str> = query
        .map(|q| {
            q.split('&')
                .filter(|pair| {
                    let key = pair.split('=').next().unwrap_or(pair);
                    !pair.is_empty() && percent_decode_str(key).decode_utf8_lossy() != name
                })
                .collect()
        })
        .unwrap_or_default();
    let injected = format!(
        "{}={}",
        utf8_percent_encode(name, URL_VALUE),
        utf8_percent_encode(value, URL_VALUE)
    );
    pairs.push(&injected);
    format!("{path}?{}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(secret: &str, host: &str) -> CredentialBinding {
        CredentialBinding {
            secret: secret.into(),
            host: host.into(),
            header: Some("Authorization: Bearer {secret}".into()),
            query: None,
            placeholder_env: Some("API_KEY".into()),
        }
    }

    #[test]
    fn placeholder_keeps_shape() {
        for secret in [
            "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD",
            "ghp_0123456789abcdefghijABCDEFGHIJ012345",
            "deadbeefcafebabe0123456789abcdef",
            "DEADBEEF0123",
            "12345678",
            "xoxb-1234-5678-abcdEFGH",
            "pässwörd-with-ünicode",
            "ab",
        ] {
            let p = placeholder_for(secret);
            assert_ne!(p, secret);
            assert_eq!(p.chars().count(), secret.chars().count(), "{secret} -> {p}");
            for (a, b) in secret.chars().zip(p.chars()) {
                if a.is_ascii_punctuation() {
                    assert_eq!(a, b, "{secret} -> {p}");
                } else if a.is_ascii_digit() && secret.chars().all(|c| c.is_ascii_digit()) {
                    assert!(b.is_ascii_digit(), "{secret} -> {p}");
                }
            }
        }
        let p = placeholder_for("sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD");
        assert_eq!(&p[8..15], "paddock", "{p}");
        let hex = placeholder_for("deadbeefcafebabe0123456789abcdef");
        assert!(
            hex.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{hex}"
        );
        let digits = placeholder_for("12345678");
        assert!(digits.chars().all(|c| c.is_ascii_digit()));
        assert_ne!(
            placeholder_for("abcdefghijkl"),
            placeholder_for("abcdefghijkl")
        );
    }

    #[test]
    fn injection_sets_header_and_swaps_placeholder_on_bound_host_only() {
        let mut cred = ResolvedCredential::new(binding("gh", "api.github.com"), "s3cr3t-value");
        cred.placeholder = Some("PLACEHOLDER1".into());
        let creds = vec![cred];
        let inj = Injection::for_host(&creds, "api.github.com");
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer client"));
        h.insert("x-key", HeaderValue::from_static("k=PLACEHOLDER1"));
        inj.apply_to_headers(&mut h).unwrap();
        assert_eq!(h["authorization"], "Bearer s3cr3t-value");
        assert_eq!(h["x-key"], "k=s3cr3t-value");
        assert_eq!(
            inj.apply_to_target("/a?x=PLACEHOLDER1"),
            "/a?x=s3cr3t-value"
        );
        assert_eq!(inj.names().as_deref(), Some("gh"));

        let other = Injection::for_host(&creds, "evil.com");
        assert!(other.is_empty());
        assert_eq!(
            other.apply_to_target("/a?x=PLACEHOLDER1"),
            "/a?x=PLACEHOLDER1"
        );
    }

    #[test]
    fn query_param_is_replaced() {
        assert_eq!(set_query_param("/p", "key", "a b&c"), "/p?key=a%20b%26c");
        assert_eq!(
            set_query_param("/p?key=mine&x=1&k%65y=2", "key", "s"),
            "/p?x=1&key=s"
        );
    }

    #[test]
    fn header_with_newline_is_refused() {
        let creds = vec![ResolvedCredential::new(
            binding("gh", "a.com"),
            "bad\r\nx: y",
        )];
        let mut h = HeaderMap::new();
        assert_eq!(
            Injection::for_host(&creds, "a.com").apply_to_headers(&mut h),
            Err(UpstreamFailure::CredentialInvalid)
        );
    }
}
