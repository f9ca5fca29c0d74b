//! DNS resolution and the address policy. The broker resolves names itself and connects to the
//! address it checked (pinning), so a name cannot be re-resolved to an internal address between
//! the check and the connect (DNS rebinding).

use crate::error::{DenyReason, EgressError};
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// IPv4 ranges that are never a public internet service.
const REFUSED_V4: &[Ipv4Net] = &[
    Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8), // "this network"
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8), // private
    Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10), // CGNAT
    Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8), // loopback
    Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16), // link-local, cloud metadata
    Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12), // private
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 0, 0), 24), // IETF protocol assignments
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 2, 0), 24), // documentation
    Ipv4Net::new_assert(Ipv4Addr::new(192, 88, 99, 0), 24), // 6to4 relay anycast
    Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16), // private
    Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 15), // benchmarking
    Ipv4Net::new_assert(Ipv4Addr::new(198, 51, 100, 0), 24), // documentation
    Ipv4Net::new_assert(Ipv4Addr::new(203, 0, 113, 0), 24), // documentation
    Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4), // multicast
    Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4), // reserved, incl. broadcast
];

/// IPv6 ranges refused outright (embedded-IPv4 forms are handled separately).
const REFUSED_V6: &[Ipv6Net] = &[
    Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96), // ::/96 incl. ::, ::1, compat
    Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96), // IPv4-translated
    Ipv6Net::new_assert(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // local NAT64
    Ipv6Net::new_assert(Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), // discard
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32), // Teredo
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    Ipv6Net::new_assert(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), // ULA, incl. fd00:ec2::254
    Ipv6Net::new_assert(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    Ipv6Net::new_assert(Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), // site-local (old)
    Ipv6Net::new_assert(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), // multicast
];

/// True if connecting to `ip` could reach something that is not a public internet service.
pub fn is_refused_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => REFUSED_V4.iter().any(|n| n.contains(&v4)),
        IpAddr::V6(v6) => {
            // Forms that carry an IPv4 address: judge the IPv4 address they lead to.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_refused_address(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
            };
            // NAT64 well-known prefix 64:ff9b::/96.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_refused_address(IpAddr::V4(embedded(s[6], s[7])));
            }
            // 6to4 2002::/16 carries the IPv4 address in bits 16..48.
            if s[0] == 0x2002 {
                return is_refused_address(IpAddr::V4(embedded(s[1], s[2])));
            }
            REFUSED_V6.iter().any(|n| n.contains(&v6))
        }
    }
}

/// Operator exceptions: `host:port` pairs reachable even though they resolve to refused
/// addresses. A pair matches the request's host name as written, or a resolved IP address.
#[derive(Debug, Clone, Default)]
pub(crate) struct AllowPrivate {
    entries: Vec<(String, u16)>,
}

impl AllowPrivate {
    pub(crate) fn parse(entries: &[String]) -> Result<Self, EgressError> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let bad =
                || EgressError::Config(format!("allow_private entry {entry:?} is not host:port"));
            let (host, port) = entry.trim().rsplit_once(':').ok_or_else(bad)?;
            let port: u16 = port.parse().map_err(|_| bad())?;
            let host = normalize_host(host).ok_or_else(bad)?;
            out.push((host, port));
        }
        Ok(Self { entries: out })
    }

    fn allows(&self, host: &str, ip: IpAddr, port: u16) -> bool {
        let ip = ip.to_string();
        self.entries
            .iter()
            .any(|(h, p)| *p == port && (h == host || *h == ip))
    }
}

/// Lower-cases a host, strips IPv6 brackets and a trailing dot. None if empty or if it has
/// characters no DNS name or IP literal has (those would otherwise reach the resolver).
pub(crate) fn normalize_host(host: &str) -> Option<String> {
    let h = host.trim();
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    let h = h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase();
    if h.is_empty() || h.len() > 253 {
        return None;
    }
    if h.parse::<IpAddr>().is_ok() {
        return Some(h);
    }
    let ok = h
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    ok.then_some(h)
}

/// Resolves `host` (already normalised) and checks every address. Refuses when ANY address is
/// refused, because the client could otherwise steer which one gets used.
pub(crate) async fn resolve_checked(
    host: &str,
    port: u16,
    allow: &AllowPrivate,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, DenyReason> {
    let addrs: Vec<SocketAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, port)]
    } else {
        match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(it)) => it.collect(),
            Ok(Err(_)) | Err(_) => return Err(DenyReason::DnsFailure),
        }
    };
    if addrs.is_empty() {
        return Err(DenyReason::DnsFailure);
    }
    for a in &addrs {
        if is_refused_address(a.ip()) && !allow.allows(host, a.ip(), port) {
            return Err(DenyReason::PrivateAddress);
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        is_refused_address(s.parse().unwrap())
    }

    #[test]
    fn refuses_internal_addresses() {
        for a in [
            "127.0.0.1",
            "127.5.5.5",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.1.2.3",
            "::127.0.0.1",
            "::8.8.8.8",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:0:4136:e378::1",
            "::ffff:0:808:808",
        ] {
            assert!(refused(a), "{a} should be refused");
        }
    }

    #[test]
    fn allows_public_addresses() {
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert!(!refused(a), "{a} should be allowed");
        }
    }

    #[test]
    fn allow_private_matches_name_or_ip() {
        let a = AllowPrivate::parse(&["localhost:8443".into(), "[::1]:9000".into()]).unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(a.allows("localhost", lo, 8443));
        assert!(!a.allows("localhost", lo, 8444));
        assert!(a.allows("other", "::1".parse().unwrap(), 9000));
        assert!(AllowPrivate::parse(&["nope".into()]).is_err());
        assert!(AllowPrivate::parse(&["a b:1".into()]).is_err());
    }

    #[test]
    fn normalizes_hosts() {
        assert_eq!(
            normalize_host("API.Example.COM.").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(normalize_host("[::1]").as_deref(), Some("::1"));
        assert_eq!(normalize_host("a%2fb"), None);
        assert_eq!(normalize_host(""), None);
    }
}
