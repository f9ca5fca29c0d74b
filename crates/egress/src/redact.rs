//! Redaction of a run's secrets from what upstreams send back, in one piece or as a stream.

use crate::credentials::{ResolvedCredential, URL_VALUE};
use aho_corasick::{AhoCorasick, MatchKind};
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use percent_encoding::utf8_percent_encode;

/// Secrets shorter than this are injected but not redacted from responses: redacting every
/// occurrence of a 3-byte string would mangle bodies without protecting much.
const MIN_REDACT_LEN: usize = 4;

/// Replaces a run's secret values (raw and URL-encoded) with `[REDACTED:<name>]`.
#[derive(Clone)]
pub(crate) struct Redactor {
    ac: AhoCorasick,
    replacements: Vec<Vec<u8>>,
    /// Longest needle, in bytes: a streamed body keeps this many bytes minus one in hand so a
    /// secret split across chunks is still caught.
    max_len: usize,
}

impl Redactor {
    /// None when the run has no secret long enough to redact.
    pub(crate) fn new(creds: &[ResolvedCredential]) -> Option<Self> {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        let mut replacements = Vec::new();
        for c in creds {
            if c.value.len() < MIN_REDACT_LEN {
                continue;
            }
            let repl = format!("[REDACTED:{}]", c.binding.secret).into_bytes();
            let encoded = utf8_percent_encode(&c.value, URL_VALUE).to_string();
            for n in [c.value.clone(), encoded] {
                if !needles.iter().any(|x| x == n.as_bytes()) {
                    needles.push(n.into_bytes());
                    replacements.push(repl.clone());
                }
            }
        }
        if needles.is_empty() {
            return None;
        }
        let max_len = needles.iter().map(Vec::len).max().unwrap_or(0);
        // Never a DFA: for a few long values (a 64 KiB secret) building one takes minutes.
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(aho_corasick::AhoCorasickKind::ContiguousNFA))
            .build(&needles)
            .ok()?;
        Some(Self {
            ac,
            replacements,
            max_len,
        })
    }

    /// The redacted copy, or None when nothing matched.
    pub(crate) fn redact(&self, hay: &[u8]) -> Option<Vec<u8>> {
        if !self.ac.is_match(hay) {
            return None;
        }
        let mut out = Vec::with_capacity(hay.len());
        self.ac.replace_all_with_bytes(hay, &mut out, |m, _, dst| {
            if let Some(r) = self.replacements.get(m.pattern().as_usize()) {
                dst.extend_from_slice(r);
            }
            true
        });
        Some(out)
    }

    /// Redacts header values in place.
    pub(crate) fn redact_headers(&self, headers: &mut HeaderMap) {
        for value in headers.values_mut() {
            if let Some(r) = self.redact(value.as_bytes())
                && let Ok(v) = HeaderValue::from_bytes(&r)
            {
                *value = v;
            }
        }
    }

    pub(crate) fn stream(&self) -> StreamRedactor {
        StreamRedactor {
            redactor: self.clone(),
            carry: Vec::new(),
        }
    }
}

/// Redacts a body chunk by chunk. It holds back the last `max_len - 1` bytes of each chunk until
/// the next one arrives; if the stream is cut, what is held back (possibly the start of a
/// secret) is never released.
pub(crate) struct StreamRedactor {
    redactor: Redactor,
    carry: Vec<u8>,
}

impl StreamRedactor {
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Bytes {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(buf.len());
        let mut last = 0;
        for m in self.redactor.ac.find_iter(&buf) {
            out.extend_from_slice(&buf[last..m.start()]);
            if let Some(r) = self.redactor.replacements.get(m.pattern().as_usize()) {
                out.extend_from_slice(r);
            }
            last = m.end();
        }
        let tail = &buf[last..];
        let keep = tail.len().min(self.redactor.max_len.saturating_sub(1));
        let (emit, hold) = tail.split_at(tail.len() - keep);
        out.extend_from_slice(emit);
        self.carry = hold.to_vec();
        Bytes::from(out)
    }

    pub(crate) fn redact_headers(&self, headers: &mut HeaderMap) {
        self.redactor.redact_headers(headers);
    }

    /// The held-back bytes at the real end of the body.
    pub(crate) fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.carry);
        match self.redactor.redact(&rest) {
            Some(r) => Bytes::from(r),
            None => Bytes::from(rest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_types::manifest::CredentialBinding;

    fn binding(secret: &str, host: &str) -> CredentialBinding {
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
    fn redacts_across_chunk_boundaries() {
        let creds = vec![ResolvedCredential::new(
            binding("tok", "a.com"),
            "SECRET-123/x",
        )];
        let r = Redactor::new(&creds).unwrap();
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
        assert_eq!(&out[..], b"h");
    }
}
