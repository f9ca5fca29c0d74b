//! The allow-list: pure functions over the manifest's `[[egress]]` rules. No I/O here, so the
//! decision is the same whichever way a request arrives (proxy, intercepted TLS, `request()`).

use crate::error::DenyReason;
use paddock_types::manifest::{EgressRule, host_matches};
use percent_encoding::percent_decode_str;

/// The outcome of checking one request against the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Allowed by the rule at this index.
    Allow(usize),
    Deny(DenyReason),
}

/// What to do with a `CONNECT host:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectVerdict {
    Deny(DenyReason),
    /// Every request inside would be allowed by this rule: a blind tunnel is enough.
    Tunnel(usize),
    /// Some request inside could be allowed, but the decision depends on path or method, so the
    /// broker must see the requests (terminate TLS).
    Inspect,
}

fn rule_is_unrestricted(rule: &EgressRule) -> bool {
    rule.path_prefix == "/" && rule.methods.is_empty()
}

fn method_matches(rule: &EgressRule, method: &str) -> bool {
    rule.methods.is_empty() || rule.methods.iter().any(|m| m == method)
}

/// Checks one fully visible request. `host` is already normalised (lower case, no brackets, no
/// trailing dot); `path` is the path before `?`.
pub(crate) fn check_request(
    rules: &[EgressRule],
    scheme: &str,
    host: &str,
    port: u16,
    path: &str,
    method: &str,
) -> Verdict {
    if has_traversal(path) {
        return Verdict::Deny(DenyReason::PathTraversal);
    }
    let matches_all = |r: &EgressRule| {
        host_matches(&r.host, host)
            && r.scheme == scheme
            && r.effective_port() == port
            && path.starts_with(r.path_prefix.as_str())
            && method_matches(r, method)
    };
    if rules.iter().any(|r| r.deny && matches_all(r)) {
        return Verdict::Deny(DenyReason::DeniedByRule);
    }
    if let Some(i) = rules.iter().position(|r| !r.deny && matches_all(r)) {
        return Verdict::Allow(i);
    }
    // Nothing allows it: narrow down which part failed, so the model (and the operator reading
    // the journal) learn what to change.
    let allow = || rules.iter().filter(|r| !r.deny);
    let reason = if !allow().any(|r| host_matches(&r.host, host)) {
        DenyReason::NoRule
    } else if !allow().any(|r| host_matches(&r.host, host) && r.scheme == scheme) {
        DenyReason::SchemeNotAllowed
    } else if !allow()
        .any(|r| host_matches(&r.host, host) && r.scheme == scheme && r.effective_port() == port)
    {
        DenyReason::PortNotAllowed
    } else if !allow().any(|r| {
        host_matches(&r.host, host)
            && r.scheme == scheme
            && r.effective_port() == port
            && path.starts_with(r.path_prefix.as_str())
    }) {
        DenyReason::PathNotAllowed
    } else {
        DenyReason::MethodNotAllowed
    };
    Verdict::Deny(reason)
}

/// Checks a `CONNECT` (scheme https) where only host and port are visible.
pub(crate) fn check_connect(rules: &[EgressRule], host: &str, port: u16) -> ConnectVerdict {
    let target = |r: &EgressRule| {
        host_matches(&r.host, host) && r.scheme == "https" && r.effective_port() == port
    };
    // A deny rule that covers every path and method of this target refuses the whole tunnel.
    if rules
        .iter()
        .any(|r| r.deny && target(r) && rule_is_unrestricted(r))
    {
        return ConnectVerdict::Deny(DenyReason::DeniedByRule);
    }
    let partial_deny = rules
        .iter()
        .any(|r| r.deny && target(r) && !rule_is_unrestricted(r));
    let unrestricted = rules
        .iter()
        .position(|r| !r.deny && target(r) && rule_is_unrestricted(r));
    match unrestricted {
        Some(i) if !partial_deny => return ConnectVerdict::Tunnel(i),
        _ => {}
    }
    if rules.iter().any(|r| !r.deny && target(r)) {
        return ConnectVerdict::Inspect;
    }
    let allow = || rules.iter().filter(|r| !r.deny);
    let reason = if !allow().any(|r| host_matches(&r.host, host)) {
        DenyReason::NoRule
    } else if !allow().any(|r| host_matches(&r.host, host) && r.scheme == "https") {
        DenyReason::SchemeNotAllowed
    } else {
        DenyReason::PortNotAllowed
    };
    ConnectVerdict::Deny(reason)
}

/// True when the path contains a segment that a server may resolve as "parent directory", even
/// after percent-decoding (up to three rounds, against double encoding), or with `\` as a
/// separator or a `;` parameter (`..;`), or contains control bytes. Prefix rules compare the raw
/// path, so such a path could otherwise escape its prefix on the server side.
pub(crate) fn has_traversal(path: &str) -> bool {
    let mut current = path.to_owned();
    for _ in 0..4 {
        let bad_segment = current.split(['/', '\\']).any(|seg| {
            let seg = seg.split(';').next().unwrap_or(seg);
            seg == ".."
        });
        if bad_segment || current.bytes().any(|b| b.is_ascii_control()) {
            return true;
        }
        let decoded = percent_decode_str(&current)
            .decode_utf8_lossy()
            .into_owned();
        if decoded == current {
            return false;
        }
        current = decoded;
    }
    // Still changing after several rounds of decoding: nobody legitimate does that.
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(scheme: &str, host: &str, prefix: &str, methods: &[&str], deny: bool) -> EgressRule {
        EgressRule {
            scheme: scheme.into(),
            host: host.into(),
            port: None,
            path_prefix: prefix.into(),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            deny,
        }
    }

    #[test]
    fn no_rules_allow_nothing() {
        assert_eq!(
            check_request(&[], "https", "a.com", 443, "/", "GET"),
            Verdict::Deny(DenyReason::NoRule)
        );
        assert_eq!(
            check_connect(&[], "a.com", 443),
            ConnectVerdict::Deny(DenyReason::NoRule)
        );
    }

    #[test]
    fn reasons_narrow_down() {
        let rules = vec![rule("https", "api.x.com", "/v1/", &["GET"], false)];
        let c =
            |s: &str, h: &str, p: u16, path: &str, m: &str| check_request(&rules, s, h, p, path, m);
        assert_eq!(
            c("https", "api.x.com", 443, "/v1/a", "GET"),
            Verdict::Allow(0)
        );
        assert_eq!(
            c("https", "other.com", 443, "/v1/a", "GET"),
            Verdict::Deny(DenyReason::NoRule)
        );
        assert_eq!(
            c("http", "api.x.com", 80, "/v1/a", "GET"),
            Verdict::Deny(DenyReason::SchemeNotAllowed)
        );
        assert_eq!(
            c("https", "api.x.com", 8443, "/v1/a", "GET"),
            Verdict::Deny(DenyReason::PortNotAllowed)
        );
        assert_eq!(
            c("https", "api.x.com", 443, "/v2/a", "GET"),
            Verdict::Deny(DenyReason::PathNotAllowed)
        );
        assert_eq!(
            c("https", "api.x.com", 443, "/v1/a", "POST"),
            Verdict::Deny(DenyReason::MethodNotAllowed)
        );
    }

    #[test]
    fn deny_wins() {
        let rules = vec![
            rule("https", "*.x.com", "/", &[], false),
            rule("https", "admin.x.com", "/", &[], true),
            rule("https", "api.x.com", "/admin", &[], true),
        ];
        assert_eq!(
            check_request(&rules, "https", "api.x.com", 443, "/ok", "GET"),
            Verdict::Allow(0)
        );
        assert_eq!(
            check_request(&rules, "https", "api.x.com", 443, "/admin/x", "GET"),
            Verdict::Deny(DenyReason::DeniedByRule)
        );
        assert_eq!(
            check_connect(&rules, "admin.x.com", 443),
            ConnectVerdict::Deny(DenyReason::DeniedByRule)
        );
        // A partial deny rule forces inspection even though an unrestricted allow exists.
        assert_eq!(
            check_connect(&rules, "api.x.com", 443),
            ConnectVerdict::Inspect
        );
        assert_eq!(
            check_connect(&rules, "www.x.com", 443),
            ConnectVerdict::Tunnel(0)
        );
    }

    #[test]
    fn connect_with_restricted_rules_inspects() {
        let rules = vec![rule("https", "api.x.com", "/v1/", &[], false)];
        assert_eq!(
            check_connect(&rules, "api.x.com", 443),
            ConnectVerdict::Inspect
        );
        assert_eq!(
            check_connect(&rules, "api.x.com", 444),
            ConnectVerdict::Deny(DenyReason::PortNotAllowed)
        );
        let http_only = vec![rule("http", "api.x.com", "/", &[], false)];
        assert_eq!(
            check_connect(&http_only, "api.x.com", 443),
            ConnectVerdict::Deny(DenyReason::SchemeNotAllowed)
        );
    }

    #[test]
    fn traversal_is_refused_in_every_spelling() {
        for p in [
            "/v1/../admin",
            "/v1/%2e%2e/admin",
            "/v1/%2E%2e/admin",
            "/v1/.%2e/admin",
            "/v1/%252e%252e/admin",
            "/v1/..%2fadmin",
            "/v1/..\\admin",
            "/v1/%2e%2e%5cadmin",
            "/v1/..;/admin",
            "/v1/%00",
            "/..",
        ] {
            assert!(has_traversal(p), "{p}");
        }
        for p in ["/v1/a..b", "/v1/...", "/v1/.well-known", "/", "/a%20b"] {
            assert!(!has_traversal(p), "{p}");
        }
        let rules = vec![rule("https", "a.com", "/v1/", &[], false)];
        assert_eq!(
            check_request(&rules, "https", "a.com", 443, "/v1/%2e%2e/admin", "GET"),
            Verdict::Deny(DenyReason::PathTraversal)
        );
    }
}
