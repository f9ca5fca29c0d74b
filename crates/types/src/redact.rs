//! What a secret looks like on the wire, in one place: the generator of a secret's encoded forms
//! and fragments, and the matcher built from them. The vault's redactor (tool outputs, journal)
//! and the egress broker (responses in, requests out) both use it, so the two cannot drift.
//!
//! It lives here, not in `paddock-vault`, because the broker must not link the vault (it must
//! not store secrets, and the vault drags in the store); both already depend on this crate. It
//! is pure computation over values it is handed: no I/O, no storage.
//!
//! Covered for each value of at least [`MIN_LEN`] characters (matching is ASCII
//! case-insensitive, so every form is also matched upper-, lower- or mixed-case):
//! - raw, and reversed;
//! - percent-encoded: every non-alphanumeric byte, RFC 3986 component style (unreserved kept),
//!   form style (`*-._` kept); each also with `+` for space; upper or lower hex;
//! - JSON-escaped: serde's escaping, with `\/` for `/`, with `\uXXXX` for every non-ASCII
//!   character (surrogate pairs beyond the BMP), with `<`, `>`, `&`, `'` as `\u003c`… (Go's
//!   encoder), in every combination;
//! - HTML-escaped: `&amp; &lt; &gt; &quot;`, with `'` as `&#x27;`, `&#39;`, `&#039;` or `&apos;`,
//!   `/` as `&#x2F;` or `&#47;`, and `` ` `` / `=` as `&#x60;` / `&#x3D;`; Go's
//!   `html.EscapeString` (`&#34; &#39;`) and `html/template` (also `+` as `&#43;`);
//! - base64 and base64url, the value starting at byte offset 0, 1 or 2 of a larger encoded
//!   blob (the stable middle of the encoding; at offset 0 also the whole padded form), each
//!   also JSON-escaped (`\/`) and percent-encoded (`%2B %2F %3D`);
//! - hex;
//! - fragments: windows of [`FRAGMENT_LEN`] characters of a raw value of at least
//!   [`FRAGMENT_MIN_SECRET`] characters, so a secret cut short (or a long enough piece of it)
//!   is still the secret; but only windows of what is secret in it (see [`fragments`]: not a
//!   JWT's header and payload, not a vendor prefix, not an all-digit id, not a run of few
//!   distinct characters), so that tokens sharing public structure with a secret do not count
//!   as it.
//!
//! Not covered: compressed or encrypted bodies, other transforms (rot13, XOR, split with
//! separators, interleaved), fragments of encoded forms, fragments shorter than
//! [`FRAGMENT_LEN`], and any form of a value shorter than [`MIN_LEN`]. A cut secret is redacted
//! from its first fragment on: a vendor prefix before it (`sk-`) is left in place.

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::nfa::contiguous::{Builder as NfaBuilder, NFA};
use aho_corasick::{Anchored, Input, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Shortest value (in characters) that is matched at all: a 1–3 character "secret" would match
/// all over ordinary text and destroy it, and such a value protects nothing anyway.
pub const MIN_LEN: usize = 4;

/// Length (in characters) of the fragments of a value that count as the value. Twelve
/// characters of a random token carry 48 bits (hex) or more, so ordinary text does not contain
/// one by chance; fewer would start matching common words and URL pieces of
/// low-entropy secrets; more would let longer pieces of a secret through.
pub const FRAGMENT_LEN: usize = 12;

/// Values shorter than this (in characters) are matched whole only. At this length a window of
/// [`FRAGMENT_LEN`] characters is still three quarters of the value, and the value cut by one
/// character is always caught.
pub const FRAGMENT_MIN_SECRET: usize = 16;

/// Percent-encoding as URL components are usually encoded: RFC 3986 unreserved characters stay.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `application/x-www-form-urlencoded` as browsers and `URLSearchParams` write it (space is `+`).
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// The matcher could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the secret matcher: {0}")]
pub struct MatcherError(String);

/// Every whole (not fragment) form of `value` to look for, duplicates removed. Empty when the
/// value is shorter than [`MIN_LEN`].
pub fn encoded_forms(value: &str) -> Vec<String> {
    if value.chars().count() < MIN_LEN {
        return Vec::new();
    }
    let bytes = value.as_bytes();
    let mut out = vec![
        value.to_owned(),
        value.chars().rev().collect(),
        hex(bytes),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
    ];
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3 {
            out.push(base64_middle(engine, bytes, offset));
        }
    }
    // A base64 form inside JSON (`\/`) or a URL (`%2B %2F %3D`): only the forms that hold one of
    // those characters give a new pattern (the rest are removed as duplicates below).
    for n in 3..out.len() {
        let Some(b64) = out.get(n) else { continue };
        let json = b64.replace('/', "\\/");
        let percent = b64
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        out.push(json);
        out.push(percent);
    }
    for set in [NON_ALPHANUMERIC, COMPONENT, FORM] {
        let encoded = utf8_percent_encode(value, set).to_string();
        // Form encoding writes a space as '+' (whichever set the encoder keeps).
        out.push(encoded.replace("%20", "+"));
        out.push(encoded);
    }
    for escape_slash in [false, true] {
        for ascii_only in [false, true] {
            for html_safe in [false, true] {
                out.push(json_escape(value, escape_slash, ascii_only, html_safe));
            }
        }
    }
    for entities in &HTML_STYLES {
        out.push(html_escape(value, entities));
    }
    // Matching ignores ASCII case, so forms that differ only in case are one pattern.
    let mut seen = std::collections::HashSet::new();
    out.retain(|f| !f.is_empty() && seen.insert(f.to_ascii_lowercase()));
    out
}

/// The windows of [`FRAGMENT_LEN`] characters of `value` that count as the value, when it has
/// at least [`FRAGMENT_MIN_SECRET`] characters (otherwise none).
///
/// A window counts only if it is made of what is secret in the value, not of structure that
/// other, unrelated values share (which would make every such value count as this secret):
/// - a JWT (`eyJ….eyJ….sig`, base64url segments) yields windows of its signature only: its
///   header (`eyJhbGciOiJI…` is the same in every HS256 token) and payload (issuer, project,
///   role) are not secret. The whole token is still matched in every form;
/// - windows start after a leading vendor prefix: after the last `_`, `-` or `.` within the
///   first [`PREFIX_SCAN`] characters (`sk-proj-`, `ghp_`, `github_pat_`, `xoxb-`), which
///   every token of that vendor shares;
/// - a window of digits and separators only is an identifier in the token formats seen in the
///   wild (Slack team and user ids, account numbers, timestamps) and is skipped, unless the
///   whole value is made of them;
/// - a window of fewer than [`FRAGMENT_MIN_DISTINCT`] distinct characters (`000000000000`,
///   `abababababab`) carries too little to be the secret's and is skipped.
pub fn fragments(value: &str) -> Vec<String> {
    if let Some(signature) = jwt_signature(value) {
        return windows(signature, 0);
    }
    let skip = value
        .chars()
        .take(PREFIX_SCAN)
        .enumerate()
        .filter(|(_, c)| is_separator(*c))
        .map(|(i, _)| i + 1)
        .last()
        .unwrap_or(0);
    windows(value, skip)
}

/// Characters at the start of a value searched for a vendor prefix's last separator.
pub const PREFIX_SCAN: usize = 16;

/// Fewest distinct characters a fragment must have to count as the secret.
pub const FRAGMENT_MIN_DISTINCT: usize = 6;

fn is_separator(c: char) -> bool {
    matches!(c, '_' | '-' | '.')
}

/// The signature segment of `value` when it has the shape of a JWT (three base64url segments,
/// the first two JSON objects, so starting with `eyJ`).
fn jwt_signature(value: &str) -> Option<&str> {
    let mut parts = value.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    let base64url = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (parts.next().is_none()
        && header.starts_with("eyJ")
        && payload.starts_with("eyJ")
        && [header, payload, signature].into_iter().all(base64url))
    .then_some(signature)
}

/// Distinct characters of `window`, ASCII case-folded (matching ignores case).
fn distinct_chars(window: &str) -> usize {
    // A bit per ASCII character; the (rare) others compared pairwise.
    let mut ascii = 0u128;
    let mut other: Vec<char> = Vec::new();
    for c in window.chars() {
        if c.is_ascii() {
            ascii |= 1u128 << u32::from(c.to_ascii_lowercase());
        } else if !other.contains(&c) {
            other.push(c);
        }
    }
    ascii.count_ones() as usize + other.len()
}

/// The windows of `value` that start at character `skip` or later and pass the filters of
/// [`fragments`]; none when `value` is shorter than [`FRAGMENT_MIN_SECRET`].
fn windows(value: &str, skip: usize) -> Vec<String> {
    let starts: Vec<usize> = value.char_indices().map(|(i, _)| i).collect();
    if starts.len() < FRAGMENT_MIN_SECRET {
        return Vec::new();
    }
    let numeric = |s: &str| s.chars().all(|c| c.is_ascii_digit() || is_separator(c));
    let all_numeric = numeric(value);
    let mut out = Vec::with_capacity(starts.len() + 1 - FRAGMENT_LEN);
    for n in skip..=starts.len().saturating_sub(FRAGMENT_LEN) {
        let start = starts.get(n).copied().unwrap_or(0);
        let end = starts.get(n + FRAGMENT_LEN).copied().unwrap_or(value.len());
        let window = value.get(start..end).unwrap_or_default();
        if window.chars().count() < FRAGMENT_LEN || (numeric(window) && !all_numeric) {
            continue;
        }
        if distinct_chars(window) >= FRAGMENT_MIN_DISTINCT {
            out.push(window.to_owned());
        }
    }
    out
}

/// Lower-case hex of the bytes (upper case is matched too: matching ignores ASCII case).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// The base64 characters of `bytes` that do not depend on what surrounds it when it starts at
/// byte `offset` (0–2) of a larger encoded blob: characters that mix in bits of a neighbouring
/// byte are dropped at both ends.
fn base64_middle(engine: &impl Engine, bytes: &[u8], offset: usize) -> String {
    let mut buf = vec![0u8; offset];
    buf.extend_from_slice(bytes);
    let encoded = engine.encode(&buf);
    let first = (8 * offset).div_ceil(6);
    let last = 8 * buf.len() / 6;
    encoded.get(first..last).unwrap_or_default().to_owned()
}

/// JSON string escaping (without the quotes) as the common encoders write it.
fn json_escape(value: &str, escape_slash: bool, ascii_only: bool, html_safe: bool) -> String {
    let mut s = String::with_capacity(value.len() + 8);
    let unit = |s: &mut String, u: u16| s.push_str(&format!("\\u{u:04x}"));
    for c in value.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '/' if escape_slash => s.push_str("\\/"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            '\u{8}' => s.push_str("\\b"),
            '\u{c}' => s.push_str("\\f"),
            '<' | '>' | '&' | '\'' if html_safe => unit(&mut s, c as u16),
            c if (c as u32) < 0x20 => unit(&mut s, c as u16),
            c if ascii_only && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    unit(&mut s, *u);
                }
            }
            c => s.push(c),
        }
    }
    s
}

/// Entity spellings of `" ' / \` = +` in the HTML escapers found in the wild (None: left as
/// is); `& < >` are `&amp; &lt; &gt;` everywhere.
type HtmlStyle = [Option<&'static str>; 6];
const HTML_STYLES: [HtmlStyle; 9] = [
    // " ' / ` = +
    [Some("&quot;"), None, None, None, None, None],
    [Some("&quot;"), Some("&#x27;"), None, None, None, None],
    [
        Some("&quot;"),
        Some("&#39;"),
        Some("&#47;"),
        None,
        None,
        None,
    ],
    [Some("&quot;"), Some("&#39;"), None, None, None, None],
    [Some("&quot;"), Some("&#039;"), None, None, None, None],
    [Some("&quot;"), Some("&apos;"), None, None, None, None],
    [
        Some("&quot;"),
        Some("&#x27;"),
        Some("&#x2F;"),
        Some("&#x60;"),
        Some("&#x3D;"),
        None,
    ],
    // Go's html.EscapeString.
    [Some("&#34;"), Some("&#39;"), None, None, None, None],
    // Go's html/template.
    [
        Some("&#34;"),
        Some("&#39;"),
        None,
        None,
        None,
        Some("&#43;"),
    ],
];

fn html_escape(value: &str, style: &HtmlStyle) -> String {
    let mut s = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        let entity = match c {
            '&' => Some("&amp;"),
            '<' => Some("&lt;"),
            '>' => Some("&gt;"),
            '"' => style[0],
            '\'' => style[1],
            '/' => style[2],
            '`' => style[3],
            '=' => style[4],
            '+' => style[5],
            _ => None,
        };
        match entity {
            Some(e) => s.push_str(e),
            None => s.push(c),
        }
    }
    s
}

/// `hay` with ASCII upper case folded to lower case (borrowed when there is none).
fn fold(hay: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if hay.iter().any(u8::is_ascii_uppercase) {
        std::borrow::Cow::Owned(hay.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(hay)
    }
}

/// A matched region of a haystack: the union of overlapping matches of one or more forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    /// Index of the secret (in the order given to [`SecretMatcher::new`]) whose longest form
    /// matched in the span; [`SecretMatcher::name`] gives its name.
    pub secret: usize,
}

/// Finds every form and fragment of a set of secrets in bytes. Build it per run or tool call
/// and drop it with them: it holds every form of every value in memory, unzeroed.
#[derive(Clone)]
pub struct SecretMatcher {
    /// Shared: clones (one per stream) must not copy the automaton.
    ac: Option<Arc<NFA>>,
    /// Secret index of each pattern.
    owner: Vec<usize>,
    /// Name of each secret.
    names: Vec<String>,
    max_len: usize,
    /// Total length of the patterns, in bytes: what the automaton grows with.
    pattern_bytes: usize,
}

impl SecretMatcher {
    /// Builds a matcher from `(name, value)` pairs. When two secrets share a form, the first one
    /// given owns it.
    pub fn new<I, N, V>(secrets: I) -> Result<Self, MatcherError>
    where
        I: IntoIterator<Item = (N, V)>,
        N: AsRef<str>,
        V: AsRef<str>,
    {
        // Pattern (case-folded, since matching ignores ASCII case) → owning secret.
        let mut patterns: BTreeMap<String, usize> = BTreeMap::new();
        let mut names = Vec::new();
        for (name, value) in secrets {
            let value = value.as_ref();
            let forms = encoded_forms(value);
            if forms.is_empty() {
                continue;
            }
            let idx = names.len();
            names.push(name.as_ref().to_owned());
            for form in forms.into_iter().chain(fragments(value)) {
                patterns.entry(form.to_ascii_lowercase()).or_insert(idx);
            }
        }
        if patterns.is_empty() {
            return Ok(Self::empty());
        }
        let max_len = patterns.keys().map(String::len).max().unwrap_or(0);
        let pattern_bytes = patterns.keys().map(String::len).sum();
        let (patterns, owner): (Vec<String>, Vec<usize>) = patterns.into_iter().unzip();
        // Never a DFA: `build` picks one for few patterns however long they are, and building
        // it for a 64 KiB value (every form of it) takes minutes. The contiguous NFA builds in
        // time linear in the patterns and scans fast enough. Standard semantics so that
        // overlapping matches can be found and merged (a fragment overlaps the whole value).
        // Patterns are lower-cased and haystacks are lower-cased before the search (same
        // offsets: ASCII only), rather than `ascii_case_insensitive`, which makes the build for
        // 1,000 secrets about three times slower.
        // The NFA itself rather than `AhoCorasick` so that a stream scanner can step it byte by
        // byte and keep its state between chunks (no rescanning).
        let ac = NfaBuilder::new()
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .map_err(|e| MatcherError(e.to_string()))?;
        Ok(Self {
            ac: Some(Arc::new(ac)),
            owner,
            names,
            max_len,
            pattern_bytes,
        })
    }

    /// A matcher that finds nothing.
    pub fn empty() -> Self {
        Self {
            ac: None,
            owner: Vec::new(),
            names: Vec::new(),
            max_len: 0,
            pattern_bytes: 0,
        }
    }

    /// True when there is nothing to find.
    pub fn is_empty(&self) -> bool {
        self.ac.is_none()
    }

    /// Number of secrets matched for.
    pub fn secrets(&self) -> usize {
        self.names.len()
    }

    /// Longest pattern, in bytes: a stream scanner keeps this many bytes minus one in hand.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Total length of the patterns in bytes (the automaton's memory grows with it).
    pub fn pattern_bytes(&self) -> usize {
        self.pattern_bytes
    }

    /// Memory the automaton uses, in bytes.
    pub fn memory_usage(&self) -> usize {
        self.ac.as_ref().map_or(0, |ac| ac.memory_usage())
    }

    /// Number of patterns (forms and fragments of every secret).
    pub fn patterns(&self) -> usize {
        self.owner.len()
    }

    /// The name of a secret by index (see [`Span::secret`]).
    pub fn name(&self, secret: usize) -> &str {
        self.names.get(secret).map(String::as_str).unwrap_or("")
    }

    /// The name of the first secret found in `hay`, if any (cheaper than [`Self::spans`]).
    pub fn find(&self, hay: &[u8]) -> Option<&str> {
        let hay = fold(hay);
        // Unanchored searches with Standard semantics cannot fail.
        let m = self.ac.as_ref()?.try_find(&Input::new(&*hay)).ok()??;
        Some(self.name(self.owner.get(m.pattern().as_usize()).copied()?))
    }

    /// Every matched region, in order, overlapping matches merged into one span (so a fragment
    /// match and the whole value, or two overlapping fragments, make one region).
    pub fn spans(&self, hay: &[u8]) -> Vec<Span> {
        let Some(ac) = &self.ac else {
            return Vec::new();
        };
        let hay = fold(hay);
        let hay = &*hay;
        if !matches!(ac.try_find(&Input::new(hay)), Ok(Some(_))) {
            return Vec::new();
        }
        let mut found: Vec<(usize, usize, usize)> =
            match ac.try_find_overlapping_iter(Input::new(hay)) {
                Ok(it) => it
                    .map(|m| (m.start(), m.end(), m.pattern().as_usize()))
                    .collect(),
                // Unreachable with Standard semantics; fall back to non-overlapping matches rather
                // than missing any.
                Err(_) => match ac.try_find_iter(Input::new(hay)) {
                    Ok(it) => it
                        .map(|m| (m.start(), m.end(), m.pattern().as_usize()))
                        .collect(),
                    Err(_) => Vec::new(),
                },
            };
        found.sort_unstable();
        let mut spans: Vec<Span> = Vec::new();
        let mut best_len = 0;
        for (start, end, pattern) in found {
            let secret = self.owner.get(pattern).copied().unwrap_or(0);
            match spans.last_mut() {
                Some(last) if start < last.end => {
                    if end - start > best_len {
                        best_len = end - start;
                        last.secret = secret;
                    }
                    last.end = last.end.max(end);
                }
                _ => {
                    best_len = end - start;
                    spans.push(Span { start, end, secret });
                }
            }
        }
        spans
    }

    /// `hay` with every span replaced by `[REDACTED:<name>]`, or None when nothing matched.
    pub fn redact(&self, hay: &[u8]) -> Option<Vec<u8>> {
        let spans = self.spans(hay);
        if spans.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(hay.len());
        let mut last = 0;
        for s in &spans {
            out.extend_from_slice(hay.get(last..s.start).unwrap_or_default());
            self.push_replacement(&mut out, s.secret);
            last = s.end;
        }
        out.extend_from_slice(hay.get(last..).unwrap_or_default());
        Some(out)
    }

    fn push_replacement(&self, out: &mut Vec<u8>, secret: usize) {
        out.extend_from_slice(b"[REDACTED:");
        out.extend_from_slice(self.name(secret).as_bytes());
        out.push(b']');
    }

    /// A redactor for a body that arrives in chunks.
    pub fn stream(&self) -> StreamRedactor {
        StreamRedactor {
            matcher: self.clone(),
            carry: Vec::new(),
        }
    }
}

impl fmt::Debug for SecretMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretMatcher")
            .field("secrets", &self.names.len())
            .field("patterns", &self.owner.len())
            .finish()
    }
}

/// Whether a stream holding `carry` bytes, of which it must hold back `hold`, releases now:
/// only once at least as many bytes can go as are held back. Then each release (which moves
/// the held-back bytes to the front of the buffer, and for the redactor rescans them) is paid
/// for by as many released bytes, so the cost stays linear in the body however small its
/// frames are; and a streamed body is delayed by at most `2 * hold` bytes.
fn ready_to_release(carry: usize, hold: usize) -> bool {
    carry >= hold.max(1).saturating_mul(2)
}

/// Redacts a body chunk by chunk. It holds back the last `max_len - 1` bytes (and a match
/// running into them) until the next chunk arrives, so a form split across chunks is still
/// caught; if the stream is cut, what is held back (possibly the start of a secret) is never
/// released. Small chunks are coalesced: nothing is scanned or released until as many bytes as
/// it holds back have piled up beyond them, so the cost stays linear in the body however it is
/// framed.
pub struct StreamRedactor {
    matcher: SecretMatcher,
    carry: Vec<u8>,
}

impl StreamRedactor {
    /// The redacted bytes that can be released after `chunk` (often none, for small chunks).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.carry.extend_from_slice(chunk);
        let hold = self.matcher.max_len.saturating_sub(1);
        if !ready_to_release(self.carry.len(), hold) {
            return Vec::new();
        }
        let buf = &self.carry;
        let spans = self.matcher.spans(buf);
        // A match still to come starts in the last `max_len - 1` bytes; one that overlaps a
        // span found now would extend it, so that span is held back too (up to a bound, so a
        // pathological body cannot make the carry grow without end).
        let hold_from = buf.len().saturating_sub(hold);
        let bound = self.matcher.max_len.saturating_mul(4).max(64 * 1024);
        let mut cut = hold_from;
        if let Some(s) = spans.iter().find(|s| s.end > hold_from)
            && s.start < hold_from
            && buf.len() - s.start <= bound
        {
            cut = s.start;
        }
        let mut out = Vec::with_capacity(cut + 64);
        let mut last = 0;
        for s in spans.iter().filter(|s| s.start < cut) {
            out.extend_from_slice(buf.get(last..s.start).unwrap_or_default());
            self.matcher.push_replacement(&mut out, s.secret);
            last = s.end;
        }
        let cut = cut.max(last).min(buf.len());
        out.extend_from_slice(buf.get(last..cut).unwrap_or_default());
        // Keeps the buffer (and its capacity) for the next chunks.
        self.carry.drain(..cut);
        out
    }

    /// The held-back bytes, redacted, at the real end of the body.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.carry);
        self.matcher.redact(&rest).unwrap_or(rest)
    }
}

/// Checks a body that is on its way out, chunk by chunk, for any form of a secret. Every byte
/// is checked once, as it arrives, by stepping the automaton (its state is kept between
/// chunks, so a form split across chunks is found and nothing is scanned twice). Bytes are
/// released only once no form can start in them, so a complete form never leaves; small
/// chunks are coalesced (as for [`StreamRedactor`]) so that releasing stays linear too.
pub struct StreamScanner {
    matcher: SecretMatcher,
    state: Option<StateID>,
    carry: Vec<u8>,
}

impl StreamScanner {
    pub fn new(matcher: SecretMatcher) -> Self {
        let state = matcher
            .ac
            .as_ref()
            .and_then(|ac| ac.start_state(Anchored::No).ok());
        Self {
            matcher,
            state,
            carry: Vec::new(),
        }
    }

    /// The bytes that may be released after `chunk` (often none, for small chunks), or the
    /// name of the secret found.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, String> {
        if let (Some(ac), Some(mut sid)) = (self.matcher.ac.as_deref(), self.state) {
            for &byte in chunk {
                sid = ac.next_state(Anchored::No, sid, byte.to_ascii_lowercase());
                if ac.is_match(sid) {
                    let pattern = ac.match_pattern(sid, 0).as_usize();
                    let secret = self.matcher.owner.get(pattern).copied().unwrap_or(0);
                    return Err(self.matcher.name(secret).to_owned());
                }
            }
            self.state = Some(sid);
        }
        self.carry.extend_from_slice(chunk);
        let hold = self.matcher.max_len.saturating_sub(1);
        if !ready_to_release(self.carry.len(), hold) {
            return Ok(Vec::new());
        }
        let cut = self.carry.len() - hold;
        Ok(self.carry.drain(..cut).collect())
    }

    /// The held-back bytes at the real end of the body (already checked, as they arrived).
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.carry)
    }
}

#[cfg(test)]
#[path = "redact_tests.rs"]
mod tests;
