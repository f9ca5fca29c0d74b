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
    assert_redacted(&m, &cut_end, "cut by one at the end");
    assert_redacted(&m, &cut_start, "cut by one at the start");
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
