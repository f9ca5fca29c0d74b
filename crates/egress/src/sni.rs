//! The TLS server name a client asks for inside a `CONNECT` tunnel, read without terminating
//! TLS: the broker buffers the first bytes the client sends, has rustls parse them as a
//! ClientHello (its `Acceptor` only parses here; nothing it produces is ever sent), and forwards
//! the buffered bytes unchanged when the name is the tunnel's. Must not decide anything else.

use crate::error::DenyReason;
use rustls::server::Acceptor;
use std::net::IpAddr;
use tokio::io::{AsyncRead, AsyncReadExt};

/// At most this many bytes are buffered looking for a complete ClientHello. Real ones are well
/// under 4 KiB (about 1.8 KiB with a post-quantum key share); the cap bounds what a hostile
/// client can make the broker hold.
pub(crate) const MAX_CLIENT_HELLO: usize = 32 * 1024;

/// What the client's first bytes turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    /// A complete ClientHello with this server name (`None`: no SNI extension, or an IP address
    /// in it, which rustls does not report as a name).
    Tls(Option<String>),
    /// Not a TLS ClientHello, or not a complete one within [`MAX_CLIENT_HELLO`] bytes, or the
    /// client closed first.
    NotTls,
}

/// Reads from `client` until a whole ClientHello is buffered; returns it with every byte read
/// (all of which must still be forwarded). The caller bounds the time this may take.
pub(crate) async fn read_client_hello<R: AsyncRead + Unpin>(client: &mut R) -> (Hello, Vec<u8>) {
    let mut buf = Vec::new();
    let mut acceptor = Acceptor::default();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return (Hello::NotTls, buf),
            Ok(n) => n,
        };
        let fresh = &chunk[..n];
        buf.extend_from_slice(fresh);
        // A TLS record carrying a handshake starts with 0x16; anything else is not TLS, and
        // refusing on the first byte keeps rustls out of it entirely.
        if buf.first() != Some(&0x16) || buf.len() > MAX_CLIENT_HELLO {
            return (Hello::NotTls, buf);
        }
        match feed(&mut acceptor, fresh) {
            Some(hello) => return (hello, buf),
            None => continue,
        }
    }
}

/// Hands `bytes` to the acceptor; `Some` once it has decided, `None` when it needs more.
fn feed(acceptor: &mut Acceptor, bytes: &[u8]) -> Option<Hello> {
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => return Some(Hello::NotTls),
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(None) => None,
        Ok(Some(accepted)) => Some(Hello::Tls(
            accepted.client_hello().server_name().map(str::to_owned),
        )),
        // The alert is dropped unsent: the tunnel is closed instead.
        Err(_) => Some(Hello::NotTls),
    }
}

/// Whether a ClientHello's server name fits a `CONNECT` to `host` (normalised: lower case, no
/// brackets, no trailing dot): the same name, any case; or no name when `host` is an IP
/// literal (clients send none for addresses).
pub(crate) fn check_server_name(host: &str, sni: Option<&str>) -> Result<(), DenyReason> {
    match sni {
        Some(name) if name.trim_end_matches('.').eq_ignore_ascii_case(host) => Ok(()),
        None if host.parse::<IpAddr>().is_ok() => Ok(()),
        _ => Err(DenyReason::SniMismatch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::ServerName;
    use std::sync::Arc;

    /// The bytes a real rustls client sends first for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(cfg),
            ServerName::try_from(name.to_owned()).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    async fn read_all_of(bytes: &[u8], chunk: usize) -> (Hello, Vec<u8>) {
        let (mut tx, mut rx) = tokio::io::duplex(64 * 1024);
        let bytes = bytes.to_vec();
        let writer = tokio::spawn(async move {
            for piece in bytes.chunks(chunk.max(1)) {
                if tokio::io::AsyncWriteExt::write_all(&mut tx, piece)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // Dropping `tx` ends the stream.
        });
        let got = read_client_hello(&mut rx).await;
        writer.abort();
        got
    }

    #[tokio::test]
    async fn reads_the_server_name_and_keeps_every_byte() {
        let hello = client_hello("api.example.com");
        for chunk in [1, 5, 100, hello.len()] {
            let (got, buf) = read_all_of(&hello, chunk).await;
            assert_eq!(
                got,
                Hello::Tls(Some("api.example.com".into())),
                "chunk {chunk}"
            );
            assert_eq!(buf, hello, "chunk {chunk}");
        }
        let (got, _) = read_all_of(&client_hello("127.0.0.1"), 4096).await;
        assert_eq!(got, Hello::Tls(None));
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_complete_client_hello() {
        let hello = client_hello("api.example.com");
        for bad in [
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
            hello[..hello.len() / 2].to_vec(),
            Vec::new(),
        ] {
            assert_eq!(read_all_of(&bad, 7).await.0, Hello::NotTls, "{bad:?}");
        }
        // A handshake record that never completes is cut at the cap.
        let mut endless = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
        endless.resize(MAX_CLIENT_HELLO + 10, 0);
        assert_eq!(read_all_of(&endless, 4096).await.0, Hello::NotTls);
    }

    /// A small deterministic fuzzer (xorshift): random bytes and mutated real ClientHellos must
    /// give an answer, never a panic or a hang.
    #[tokio::test]
    async fn random_and_mutated_input_never_panics() {
        let hello = client_hello("fuzz.example.com");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..2000 {
            let input = if round % 2 == 0 {
                let len = (next() % 600) as usize;
                let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if let Some(b) = v.first_mut() {
                    *b = 0x16;
                }
                v
            } else {
                let mut v = hello.clone();
                for _ in 0..(1 + next() % 8) {
                    let i = (next() as usize) % v.len();
                    v[i] = next() as u8;
                }
                let keep = (next() as usize) % (v.len() + 1);
                v.truncate(keep.max(1));
                v
            };
            let _ = read_all_of(&input, 1 + (next() % 64) as usize).await;
        }
    }

    #[test]
    fn server_names_must_be_the_connect_host() {
        assert_eq!(check_server_name("api.x.com", Some("API.x.com.")), Ok(()));
        assert_eq!(check_server_name("127.0.0.1", None), Ok(()));
        assert_eq!(check_server_name("::1", None), Ok(()));
        for (host, sni) in [
            ("api.x.com", Some("evil.com")),
            ("api.x.com", Some("x.com")),
            ("api.x.com", None),
            ("127.0.0.1", Some("evil.com")),
        ] {
            assert_eq!(
                check_server_name(host, sni),
                Err(DenyReason::SniMismatch),
                "{host} {sni:?}"
            );
        }
    }
}
