#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

// Has `/`, `+`-producing bytes, a space, `<`, `&`, `'`, `=` and a non-ASCII character, so that
// every escaping scheme changes it.
const VALUE: &str = "sk-live/Ab9<x>&'q=Z ÿ~Q7pL2";

fn matcher() -> SecretMatcher {
    SecretMatcher::new([("api_key", VALUE)]).unwrap()
}

/// `form` embedded in text is replaced, and nothing of the surrounding text is touched.
fn assert_redacted(m: &SecretMatcher, form: &str, what: &str) {
    let text = format!("before {form} after");
    let out = m
        .redact(text.as_bytes())
        .unwrap_or_else(|| text.clone().into_bytes());
    assert_eq!(
        String::from_utf8_lossy(&out),
        "before [REDACTED:api_key] after",
        "{what} form {form:?} leaked"
    );
}

fn b64_blob(engine: &impl Engine, lead: &[u8]) -> String {
    let mut blob = lead.to_vec();
    blob.extend_from_slice(VALUE.as_bytes());
    blob.extend_from_slice(b"-trailing bytes");
    engine.encode(&blob)
}

#[test]
fn the_raw_and_reversed_value_is_found() {
    let m = matcher();
    assert_redacted(&m, VALUE, "raw");
    assert_redacted(&m, &VALUE.chars().rev().collect::<String>(), "reversed");
}

#[test]
fn case_folded_forms_are_found() {
    let m = matcher();
    assert_redacted(&m, &VALUE.to_ascii_uppercase(), "upper-case");
    assert_redacted(&m, &VALUE.to_ascii_lowercase(), "lower-case");
}

#[test]
fn percent_encoded_forms_are_found() {
    let m = matcher();
    let upper = utf8_percent_encode(VALUE, NON_ALPHANUMERIC).to_string();
    assert_redacted(&m, &upper, "percent");
    assert_redacted(&m, &upper.to_ascii_lowercase(), "percent lower hex");
    let component = utf8_percent_encode(VALUE, COMPONENT).to_string();
    assert!(component.contains("%2F") && component.contains('~'));
    assert_redacted(&m, &component, "component");
    let form = utf8_percent_encode(VALUE, FORM)
        .to_string()
        .replace("%20", "+");
    assert!(form.contains('+'));
    assert_redacted(&m, &form, "form");
}

#[test]
fn json_escaped_forms_are_found() {
    let m = matcher();
    let serde = serde_json::to_string(VALUE).unwrap();
    let serde = serde.trim_matches('"');
    assert_redacted(&m, serde, "serde");
    let slashes = serde.replace('/', "\\/");
    assert_redacted(&m, &slashes, "escaped slashes");
    // Python's json.dumps (ensure_ascii) and PHP's json_encode.
    let ascii = slashes.replace('ÿ', "\\u00ff");
    assert_redacted(&m, &ascii, "ascii-only");
    assert_redacted(
        &m,
        &ascii.replace("\\u00ff", "\\u00FF"),
        "ascii-only upper hex",
    );
    // Go's encoding/json.
    let go = serde
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\'', "\\u0027");
    assert_redacted(&m, &go, "html-safe json");
}

#[test]
fn json_escaping_uses_surrogate_pairs_beyond_the_bmp() {
    let m = SecretMatcher::new([("api_key", "tok😀en-value")]).unwrap();
    assert_redacted(&m, "tok\\ud83d\\ude00en-value", "surrogate pair");
}

#[test]
fn html_escaped_forms_are_found() {
    let m = matcher();
    let base = VALUE
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert_redacted(&m, &base, "html minimal");
    assert_redacted(&m, &base.replace('\'', "&#x27;"), "html &#x27;");
    assert_redacted(&m, &base.replace('\'', "&#39;"), "html &#39;");
    assert_redacted(&m, &base.replace('\'', "&#039;"), "html &#039;");
    assert_redacted(&m, &base.replace('\'', "&apos;"), "html &apos;");
    assert_redacted(
        &m,
        &base.replace('\'', "&#39;").replace('/', "&#47;"),
        "html &#47;",
    );
    assert_redacted(
        &m,
        &base
            .replace('\'', "&#x27;")
            .replace('/', "&#x2F;")
            .replace('=', "&#x3D;"),
        "html &#x2F;",
    );
}

#[test]
fn base64_at_every_offset_of_a_larger_blob_is_found() {
    let m = matcher();
    for (engine, what) in [(&STANDARD, "base64"), (&URL_SAFE, "base64url")] {
        for lead in [&b""[..], b"x", b"xy", b"xyz", b"\xff\xfe"] {
            let blob = b64_blob(engine, lead);
            let out = m.redact(blob.as_bytes()).expect("nothing found");
            let out = String::from_utf8(out).unwrap();
            assert!(out.contains("[REDACTED:api_key]"), "{what} lead {lead:?}");
            // At most the characters that mix in a neighbouring byte are left of the value.
            let left = out.replace("[REDACTED:api_key]", "");
            assert!(
                left.len() + VALUE.len() * 4 / 3 - 4 <= blob.len(),
                "{what} lead {lead:?}: {out}"
            );
        }
        // The whole value encoded alone, padded or not.
        assert_redacted(&m, &engine.encode(VALUE), what);
    }
}

#[test]
fn hex_in_both_cases_is_found() {
    let m = matcher();
    let lower = hex(VALUE.as_bytes());
    assert_redacted(&m, &lower, "hex");
    assert_redacted(&m, &lower.to_ascii_uppercase(), "HEX");
}

#[test]
fn a_long_enough_fragment_is_the_secret() {
    let m = matcher();
    let chars: Vec<char> = VALUE.chars().collect();
    let cut_end: String = chars[..chars.len() - 1].iter().collect();
    let cut_start: String = chars[1..].iter().collect();
    // The vendor prefix (`sk-`) is not secret, and not a fragment: it is left as it is.
    let text = format!("before {cut_end} after");
    assert_eq!(
        String::from_utf8(m.redact(text.as_bytes()).unwrap()).unwrap(),
        "before sk-[REDACTED:api_key] after"
    );
    let text = format!("before {cut_start} after");
    assert_eq!(
        String::from_utf8(m.redact(text.as_bytes()).unwrap()).unwrap(),
        "before k-[REDACTED:api_key] after"
    );
    let middle: String = chars[5..5 + FRAGMENT_LEN].iter().collect();
    assert_redacted(&m, &middle, "a window");
    // One character short of a window is ordinary text.
    let short: String = chars[5..5 + FRAGMENT_LEN - 1].iter().collect();
    assert!(m.redact(short.as_bytes()).is_none());
}

#[test]
fn short_secrets_are_matched_whole_only() {
    let m = SecretMatcher::new([("short", "abcdefghij"), ("tiny", "xyz")]).unwrap();
    assert_eq!(m.secrets(), 1);
    assert_eq!(
        m.redact(b"abcdefghij abcdefghi xyz").unwrap(),
        b"[REDACTED:short] abcdefghi xyz".to_vec()
    );
}

#[test]
fn overlapping_matches_make_one_region_named_after_the_longest() {
    let m = SecretMatcher::new([("outer", "abcd-efgh-ijkl"), ("inner", "efgh")]).unwrap();
    assert_eq!(
        m.redact(b"x abcd-efgh-ijkl y efgh").unwrap(),
        b"x [REDACTED:outer] y [REDACTED:inner]".to_vec()
    );
    // Back to back occurrences stay two.
    let v = "0123456789abcdefghij";
    let m = SecretMatcher::new([("k", v)]).unwrap();
    assert_eq!(
        m.redact(format!("{v}{v}").as_bytes()).unwrap(),
        b"[REDACTED:k][REDACTED:k]".to_vec()
    );
}

#[test]
fn forms_split_across_chunks_are_redacted_at_every_split() {
    let m = matcher();
    let b64 = b64_blob(&STANDARD, b"x");
    let cut: String = VALUE.chars().skip(1).collect();
    for form in [VALUE.to_owned(), b64, cut] {
        let body = format!("head {form} mid {form} tail");
        let whole = m.redact(body.as_bytes()).unwrap();
        for split in 0..body.len() {
            let mut s = m.stream();
            let mut out = s.push(&body.as_bytes()[..split]);
            out.extend(s.push(&body.as_bytes()[split..]));
            out.extend(s.finish());
            assert_eq!(out, whole, "{form:?} split at {split}");
        }
    }
    // A cut stream never releases the start of a secret.
    let mut s = m.stream();
    let out = s.push(format!("hello {}", &VALUE[..6]).as_bytes());
    assert!(!String::from_utf8_lossy(&out).contains("sk-"));
}

#[test]
fn the_scanner_never_releases_a_whole_form() {
    let m = matcher();
    let body = format!("{{\"k\": \"{}\"}}", hex(VALUE.as_bytes()));
    for split in 0..body.len() {
        let mut s = StreamScanner::new(m.clone());
        let found = match s.push(&body.as_bytes()[..split]) {
            Err(name) => name,
            Ok(released) => {
                assert!(m.find(&released).is_none(), "split {split} released a form");
                s.push(&body.as_bytes()[split..]).unwrap_err()
            }
        };
        assert_eq!(found, "api_key", "split {split}");
    }
    let mut s = StreamScanner::new(m);
    let mut out = s.push(b"harmless ").unwrap();
    out.extend(s.push(b"body").unwrap());
    out.extend(s.finish());
    assert_eq!(out, b"harmless body");
}

#[test]
fn a_64_kib_secret_builds_and_matches() {
    let big: String = (0..64 * 1024)
        .map(|i| char::from(b'a' + ((i * 7 + i / 26) % 26) as u8))
        .collect();
    let m = SecretMatcher::new([("big", big.as_str())]).unwrap();
    let text = format!("x {} y", &big[100..200]);
    assert_eq!(m.redact(text.as_bytes()).unwrap(), b"x [REDACTED:big] y");
}

#[test]
fn debug_shows_no_value() {
    let m = matcher();
    assert!(!format!("{m:?}").contains("sk-live"));
}

/// Deterministic pseudo-random characters from `alphabet` (no dependency on a RNG crate).
fn random_token(seed: u64, len: usize, alphabet: &[u8]) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(alphabet[(x % alphabet.len() as u64) as usize])
        })
        .collect()
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn hs256_jwt(payload: &str, seed: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(payload);
    format!("{header}.{payload}.{}", random_token(seed, 43, B64URL))
}

#[test]
fn an_hs256_jwt_secret_does_not_match_another_hs256_jwt() {
    let service = hs256_jwt(
        r#"{"iss":"supabase","ref":"abcdefghijklmnopqrst","role":"service_role","iat":1700000000,"exp":2000000000}"#,
        1,
    );
    let anon = hs256_jwt(
        r#"{"iss":"supabase","ref":"abcdefghijklmnopqrst","role":"anon","iat":1700000000,"exp":2000000000}"#,
        2,
    );
    let m = SecretMatcher::new([("service_key", service.as_str())]).unwrap();
    let text = format!("Authorization: Bearer {anon}");
    assert_eq!(m.find(text.as_bytes()), None, "another HS256 JWT matched");
    assert!(m.redact(text.as_bytes()).is_none());
    // The secret itself still matches whole, in its encodings, and cut short.
    let whole = format!("Bearer {service}");
    assert_eq!(
        m.redact(whole.as_bytes()).unwrap(),
        b"Bearer [REDACTED:service_key]"
    );
    assert_eq!(
        m.find(STANDARD.encode(&service).as_bytes()),
        Some("service_key")
    );
    let cut = &service[..service.len() - 1];
    assert_eq!(m.find(cut.as_bytes()), Some("service_key"));
}

#[test]
fn a_github_pat_secret_does_not_match_another_github_pat() {
    let pat = |seed| {
        format!(
            "github_pat_11{}_{}",
            random_token(seed, 20, ALNUM),
            random_token(seed + 100, 59, ALNUM)
        )
    };
    let (mine, theirs) = (pat(1), pat(2));
    let m = SecretMatcher::new([("gh", mine.as_str())]).unwrap();
    assert_eq!(m.find(theirs.as_bytes()), None);
    assert_eq!(m.find(&mine.as_bytes()[..mine.len() - 1]), Some("gh"));

    // The same for other vendor prefixes: OpenAI project keys, and Slack bot tokens of the
    // same team and bot user (the ids are public; only the last part is secret).
    for (mine, theirs) in [
        (
            format!("sk-proj-{}", random_token(3, 48, B64URL)),
            format!("sk-proj-{}", random_token(4, 48, B64URL)),
        ),
        (
            format!(
                "xoxb-1234567890123-9876543210987-{}",
                random_token(5, 24, ALNUM)
            ),
            format!(
                "xoxb-1234567890123-9876543210987-{}",
                random_token(6, 24, ALNUM)
            ),
        ),
    ] {
        let m = SecretMatcher::new([("k", mine.as_str())]).unwrap();
        assert_eq!(m.find(theirs.as_bytes()), None, "{theirs} matched {mine}");
        assert_eq!(m.find(&mine.as_bytes()[..mine.len() - 1]), Some("k"));
    }
}

#[test]
fn a_random_40_character_token_cut_by_one_is_still_caught() {
    for seed in 0..50 {
        for token in [
            random_token(seed, 40, ALNUM),
            format!("ghp_{}", random_token(seed, 36, ALNUM)),
            random_token(seed, 40, B64URL),
        ] {
            let m = SecretMatcher::new([("t", token.as_str())]).unwrap();
            assert_eq!(
                m.find(&token.as_bytes()[1..]),
                Some("t"),
                "{token} cut at the start"
            );
            let end = &token[..token.len() - 1];
            assert_eq!(m.find(end.as_bytes()), Some("t"), "{token} cut at the end");
        }
    }
}

#[test]
fn low_diversity_and_numeric_windows_are_not_fragments() {
    let value = "0000000000000000abcdefgh";
    let frags = fragments(value);
    assert!(!frags.is_empty());
    for f in &frags {
        let mut distinct: Vec<char> = f.chars().collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() >= FRAGMENT_MIN_DISTINCT, "{f}");
    }
    let m = SecretMatcher::new([("k", value)]).unwrap();
    assert_eq!(m.find(b"id 000000000000 and 111111111111"), None);
    // A secret made of digits only keeps its digit windows.
    let pin = "4829105736184920";
    assert_eq!(
        SecretMatcher::new([("pin", pin)])
            .unwrap()
            .find(&pin.as_bytes()[1..]),
        Some("pin")
    );
}

#[test]
fn go_html_escaping_is_found() {
    let value = "pa\"ss+word'1234";
    let m = SecretMatcher::new([("api_key", value)]).unwrap();
    // html.EscapeString, then html/template.
    let escape = value.replace('"', "&#34;").replace('\'', "&#39;");
    let template = escape.replace('+', "&#43;");
    for form in [escape, template] {
        let text = format!("before {form} after");
        assert_eq!(
            String::from_utf8(m.redact(text.as_bytes()).unwrap()).unwrap(),
            "before [REDACTED:api_key] after",
            "{form}"
        );
    }
}

#[test]
fn base64_inside_json_or_a_url_is_found() {
    // Shorter than a fragment, so only the base64 forms can catch it; its base64 has `/`, `+`
    // and padding at offset 0, `/` and padding inside a blob at offset 1.
    let value = "p@ss w?rd/\u{ff}\u{ff}>~";
    let m = SecretMatcher::new([("api_key", value)]).unwrap();
    let escape = |b64: &str, json: bool| {
        if json {
            b64.replace('/', "\\/")
        } else {
            b64.replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        }
    };
    let b64 = STANDARD.encode(value);
    let mut blob = b"x".to_vec();
    blob.extend_from_slice(value.as_bytes());
    blob.extend_from_slice(b"-trailing bytes");
    let blob = STANDARD.encode(blob);
    for (encoded, what) in [(b64, "whole"), (blob, "in a blob")] {
        assert!(encoded.contains('/') && encoded.contains('='), "{encoded}");
        for json in [true, false] {
            let text = escape(&encoded, json);
            for text in [text.clone(), text.to_ascii_lowercase()] {
                let out = m.redact(text.as_bytes());
                let out = String::from_utf8(out.unwrap_or_default()).unwrap();
                assert!(
                    out.contains("[REDACTED:api_key]"),
                    "{what} json={json}: {text}"
                );
            }
        }
    }
}

/// A body made of many forms, with enough bytes to pass the coalescing threshold a few times.
fn long_body() -> String {
    let filler = "lorem ipsum dolor sit amet ".repeat(1500);
    let b64 = b64_blob(&STANDARD, b"xy");
    let cut: String = VALUE.chars().skip(1).collect();
    format!(
        "{filler}{VALUE}{filler}{b64}|{filler}{cut} end {}",
        VALUE.to_ascii_uppercase()
    )
}

#[test]
fn a_body_of_one_byte_chunks_is_redacted_like_the_whole() {
    let m = matcher();
    let body = long_body();
    let whole = m.redact(body.as_bytes()).unwrap();
    let mut s = m.stream();
    let mut out = Vec::new();
    let mut released_early = false;
    for byte in body.as_bytes() {
        let part = s.push(std::slice::from_ref(byte));
        released_early |= !part.is_empty();
        out.extend(part);
    }
    assert!(released_early, "a long body must not be held back whole");
    out.extend(s.finish());
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&whole)
    );
}

#[test]
fn a_body_of_one_byte_chunks_is_scanned_and_never_releases_a_form() {
    let m = matcher();
    let filler = "lorem ipsum dolor sit amet ".repeat(3000);
    let clean = format!("{filler}{filler}");
    let mut s = StreamScanner::new(m.clone());
    let mut out = Vec::new();
    for byte in clean.as_bytes() {
        out.extend(s.push(std::slice::from_ref(byte)).unwrap());
    }
    assert!(
        !out.is_empty(),
        "a long clean body must be released as it goes"
    );
    out.extend(s.finish());
    assert_eq!(out, clean.as_bytes());

    let form = hex(VALUE.as_bytes()).to_ascii_uppercase();
    let body = format!("{filler}{form}{filler}");
    let mut s = StreamScanner::new(m.clone());
    let mut released = Vec::new();
    let mut found = None;
    for byte in body.as_bytes() {
        match s.push(std::slice::from_ref(byte)) {
            Ok(part) => released.extend(part),
            Err(name) => {
                found = Some(name);
                break;
            }
        }
    }
    assert_eq!(found.as_deref(), Some("api_key"));
    assert!(m.find(&released).is_none(), "a form was released");
    assert!(released.len() < filler.len() + form.len());
}
