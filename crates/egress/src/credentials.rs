//! Credential injection and placeholders.
//!
//! The broker never stores a secret: the caller resolves the run's secrets from the vault and
//! hands them in a [`crate::RunEgress`], which lives as long as the run.

use crate::error::UpstreamFailure;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use paddock_types::manifest::CredentialBinding;
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
    /// The stand-in the sandbox sees in `binding.placeholder_env`. Never swapped for `value`:
    /// accepted only in the field the binding names (which the broker sets itself) on the bound
    /// target, refused elsewhere on it, sent as is to other targets.
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

/// The credentials that apply to one request's exact `scheme://host:port`.
///
/// The broker never swaps a placeholder for the secret where the sandbox put it: it sets the
/// one field each binding names (its header, or its query parameter) and refuses a request that
/// carries a placeholder anywhere else. So the agent cannot choose where the secret goes (the
/// URL, a header the upstream logs or echoes).
pub(crate) struct Injection<'a> {
    creds: Vec<&'a ResolvedCredential>,
}

impl<'a> Injection<'a> {
    pub(crate) fn for_target(
        all: &'a [ResolvedCredential],
        scheme: &str,
        host: &str,
        port: u16,
    ) -> Self {
        Self {
            creds: all
                .iter()
                .filter(|c| c.binding.applies_to(scheme, host, port))
                .collect(),
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

    /// True when some applying credential's placeholder is outside the field its binding names:
    /// in the path (raw or percent-decoded), in another query parameter, or in another header.
    /// Nothing is swapped there, so this is not what keeps the secret in place; it tells the
    /// agent its request would not work as meant instead of sending a placeholder upstream.
    pub(crate) fn placeholder_misplaced(&self, path_and_query: &str, headers: &HeaderMap) -> bool {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        self.creds.iter().any(|c| {
            let Some(p) = c.placeholder.as_deref().filter(|p| !p.is_empty()) else {
                return false;
            };
            let holds = |text: &str| {
                text.contains(p) || percent_decode_str(text).decode_utf8_lossy().contains(p)
            };
            if holds(path) {
                return true;
            }
            let own_param = c.binding.query.as_deref();
            let in_query = query.is_some_and(|q| {
                q.split('&').any(|pair| {
                    let key = pair.split('=').next().unwrap_or(pair);
                    let own = own_param
                        .is_some_and(|name| percent_decode_str(key).decode_utf8_lossy() == name);
                    !own && holds(pair)
                })
            });
            if in_query {
                return true;
            }
            let own_header = c
                .binding
                .header
                .as_deref()
                .and_then(|t| t.split_once(':'))
                .map(|(name, _)| name.trim());
            let finder = memfind(p.as_bytes());
            headers.iter().any(|(name, value)| {
                let own = own_header.is_some_and(|h| name.as_str().eq_ignore_ascii_case(h));
                !own && finder(value.as_bytes())
            })
        })
    }

    /// Removes the query parameters these credentials are injected into: an upstream that echoes
    /// the request's query in a `Location` hands the secret back, and the next hop must not
    /// carry it on (the broker injects it again where a binding applies).
    pub(crate) fn strip_own_params(&self, path_and_query: &str) -> String {
        let mut pq = path_and_query.to_owned();
        for c in &self.creds {
            if let Some(param) = &c.binding.query {
                pq = remove_query_param(&pq, param);
            }
        }
        pq
    }

    /// Sets query-parameter credentials (replacing any parameter of that name the client sent).
    pub(crate) fn apply_to_target(&self, path_and_query: &str) -> String {
        let mut pq = path_and_query.to_owned();
        for c in &self.creds {
            if let Some(param) = &c.binding.query {
                pq = set_query_param(&pq, param, &c.value);
            }
        }
        pq
    }

    /// Sets header credentials (replacing whatever the client sent under that name, the
    /// placeholder included).
    pub(crate) fn apply_to_headers(&self, headers: &mut HeaderMap) -> Result<(), UpstreamFailure> {
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

/// The query's pairs other than `name=…` (the key compared percent-decoded).
fn other_pairs<'q>(query: Option<&'q str>, name: &str) -> Vec<&'q str> {
    query
        .map(|q| {
            q.split('&')
                .filter(|pair| {
                    let key = pair.split('=').next().unwrap_or(pair);
                    !pair.is_empty() && percent_decode_str(key).decode_utf8_lossy() != name
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Removes every `name=…` pair from the query (and the `?` when nothing is left).
pub(crate) fn remove_query_param(path_and_query: &str, name: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let pairs = other_pairs(Some(query), name);
    if pairs.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", pairs.join("&"))
    }
}

/// Removes every `name=…` pair from the query and appends `name=<value>` (percent-encoded).
fn set_query_param(path_and_query: &str, name: &str, value: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut pairs = other_pairs(query, name);
    let injected = format!(
        "{}={}",
        utf8_percent_encode(name, URL_VALUE),
        utf8_percent_encode(value, URL_VALUE)
    );
    pairs.push(&injected);
    format!("{path}?{}", pairs.join("&"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An https `Authorization: Bearer` binding with placeholder `API_KEY`.
    pub(crate) fn binding(secret: &str, host: &str) -> CredentialBinding {
        CredentialBinding {
            secret: secret.into(),
            scheme: "https".into(),
            host: host.into(),
            port: None,
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
    fn injection_sets_the_named_header_on_the_bound_target_only() {
        let mut cred = ResolvedCredential::new(binding("gh", "api.github.com"), "s3cr3t-value");
        cred.placeholder = Some("PLACEHOLDER1".into());
        let creds = vec![cred];
        let inj = Injection::for_target(&creds, "https", "api.github.com", 443);
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer PLACEHOLDER1"),
        );
        assert!(!inj.placeholder_misplaced("/a?x=1", &h));
        inj.apply_to_headers(&mut h).unwrap();
        assert_eq!(h["authorization"], "Bearer s3cr3t-value");
        assert_eq!(inj.apply_to_target("/a?x=1"), "/a?x=1");
        assert_eq!(inj.names().as_deref(), Some("gh"));

        let mut other = HeaderMap::new();
        other.insert("x-key", HeaderValue::from_static("k=PLACEHOLDER1"));
        assert!(inj.placeholder_misplaced("/a", &other));
        assert!(inj.placeholder_misplaced("/a?x=PLACEHOLDER1", &HeaderMap::new()));
        assert!(inj.placeholder_misplaced("/PLACEHOLDER1", &HeaderMap::new()));
        assert!(inj.placeholder_misplaced("/%50LACEHOLDER1", &HeaderMap::new()));

        for (scheme, host, port) in [
            ("https", "evil.com", 443),
            ("http", "api.github.com", 443),
            ("https", "api.github.com", 8443),
        ] {
            assert!(Injection::for_target(&creds, scheme, host, port).is_empty());
        }
    }

    #[test]
    fn query_param_is_removed() {
        assert_eq!(remove_query_param("/p?key=s", "key"), "/p");
        assert_eq!(
            remove_query_param("/p?a=1&k%65y=s&b=2", "key"),
            "/p?a=1&b=2"
        );
        assert_eq!(remove_query_param("/p", "key"), "/p");
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
            Injection::for_target(&creds, "https", "a.com", 443).apply_to_headers(&mut h),
            Err(UpstreamFailure::CredentialInvalid)
        );
    }
}
