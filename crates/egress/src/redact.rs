//! Redaction of a run's secrets from what upstreams send back (in one piece or as a stream), and
//! the scan of what the sandbox sends out for the workspace's secrets. Both use the one
//! generator of a secret's forms in [`paddock_types::redact`].

use crate::credentials::ResolvedCredential;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use paddock_types::redact::{MatcherError, SecretMatcher, StreamRedactor as Inner};

/// Replaces a run's bound secret values, in every form the generator knows, with
/// `[REDACTED:<name>]`.
#[derive(Clone)]
pub(crate) struct Redactor {
    matcher: SecretMatcher,
}

impl Redactor {
    /// `Ok(None)` when the run has no secret long enough to redact. An error (the automaton
    /// cannot be built) must stop the run's egress: without a redactor an echoed secret would
    /// reach the sandbox.
    pub(crate) fn new(creds: &[ResolvedCredential]) -> Result<Option<Self>, MatcherError> {
        let matcher = SecretMatcher::new(
            creds
                .iter()
                .map(|c| (c.binding.secret.as_str(), c.value.as_str())),
        )?;
        Ok((!matcher.is_empty()).then_some(Self { matcher }))
    }

    pub(crate) fn matcher(&self) -> &SecretMatcher {
        &self.matcher
    }

    /// The redacted copy, or None when nothing matched.
    pub(crate) fn redact(&self, hay: &[u8]) -> Option<Vec<u8>> {
        self.matcher.redact(hay)
    }

    /// Redacts header values in place. A value whose redacted bytes are not a valid header
    /// value is dropped with its header: keeping the original would pass the secret on.
    pub(crate) fn redact_headers(&self, headers: &mut HeaderMap) {
        let mut invalid = Vec::new();
        for (name, value) in headers.iter_mut() {
            if let Some(r) = self.redact(value.as_bytes()) {
                match HeaderValue::from_bytes(&r) {
                    Ok(v) => *value = v,
                    Err(_) => invalid.push(name.clone()),
                }
            }
        }
        for name in invalid {
            headers.remove(name);
        }
    }

    pub(crate) fn stream(&self) -> StreamRedactor {
        StreamRedactor {
            redactor: self.clone(),
            inner: self.matcher.stream(),
        }
    }
}

/// Redacts a body chunk by chunk; see [`paddock_types::redact::StreamRedactor`]: what is held
/// back of a cut stream (possibly the start of a secret) is never released.
pub(crate) struct StreamRedactor {
    redactor: Redactor,
    inner: Inner,
}

impl StreamRedactor {
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Bytes {
        Bytes::from(self.inner.push(chunk))
    }

    pub(crate) fn redact_headers(&self, headers: &mut HeaderMap) {
        self.redactor.redact_headers(headers);
    }

    /// The held-back bytes at the real end of the body.
    pub(crate) fn finish(&mut self) -> Bytes {
        Bytes::from(self.inner.finish())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::credentials::tests::binding;

    #[test]
    fn redacts_across_chunk_boundaries() {
        let creds = vec![ResolvedCredential::new(
            binding("tok", "a.com"),
            "SECRET-123/x",
        )];
        let r = Redactor::new(&creds).unwrap().unwrap();
        assert_eq!(
            r.redact(b"a SECRET-123/x b SECRET-123%2Fx").unwrap(),
            b"a [REDACTED:tok] b [REDACTED:tok]".to_vec()
        );
        let body = b"xxSECRET-123/xyySECRET-123/x";
        for split in 0..body.len() {
            let mut s = r.stream();
            let mut out = Vec::new();
            out.extend_from_slice(&s.push(&body[..split]));
            out.extend_from_slice(&s.push(&body[split..]));
            out.extend_from_slice(&s.finish());
            assert_eq!(
                out,
                b"xx[REDACTED:tok]yy[REDACTED:tok]".to_vec(),
                "split {split}"
            );
        }
        // A cut stream never releases the start of a secret.
        let mut s = r.stream();
        let out = s.push(b"hello SECRET-1");
        assert!(!out.windows(6).any(|w| w == b"SECRET"), "{out:?}");
    }

    #[test]
    fn a_header_whose_redacted_value_is_not_a_valid_value_is_dropped() {
        // The replacement carries the secret's name; one with a DEL byte makes the redacted
        // value invalid, and the original (holding the secret) must not be kept instead.
        let creds = vec![ResolvedCredential::new(
            binding("bad\u{7f}name", "a.com"),
            "SECRET-123/x",
        )];
        let r = Redactor::new(&creds).unwrap().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-echo", HeaderValue::from_static("got SECRET-123/x"));
        headers.insert("x-other", HeaderValue::from_static("fine"));
        r.redact_headers(&mut headers);
        assert!(headers.get("x-echo").is_none(), "{headers:?}");
        assert_eq!(headers.get("x-other").unwrap(), "fine");
    }
}
