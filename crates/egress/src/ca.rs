//! The per-installation interception CA and the leaf certificates it mints for intercepted hosts.
//!
//! The CA's key is handed in by the caller (the vault keeps it); this module only holds it in
//! memory while the broker lives.

use crate::error::EgressError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use rustls::ServerConfig;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A CA certificate and its private key, both PEM. The key is a secret: store it in the vault.
#[derive(Clone, Serialize, Deserialize)]
pub struct CaPem {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CaPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaPem")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// Creates a new interception CA (ECDSA P-256, valid until 4096, path length 0). The sandbox
/// trusts `cert_pem`; the broker signs leaf certificates with `key_pem`.
pub fn generate_ca(common_name: &str) -> Result<CaPem, EgressError> {
    let key = KeyPair::generate().map_err(|e| EgressError::Config(format!("ca key: {e}")))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Paddock egress broker");
    params.distinguished_name = dn;
    // Path length 0: the CA can sign leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    let cert = params
        .self_signed(&key)
        .map_err(|e| EgressError::Config(format!("ca certificate: {e}")))?;
    Ok(CaPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn random_serial() -> Result<SerialNumber, EgressError> {
    let mut bytes = [0u8; 16];
    crate::random_fill(&mut bytes)?;
    // Positive INTEGER: clear the top bit.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

/// How many minted server configs are kept before the cache is emptied.
const LEAF_CACHE_CAP: usize = 1024;

/// Signs leaf certificates for intercepted hosts and caches the resulting TLS server configs.
pub(crate) struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// One key for every leaf: minting is then a signature, not a key generation. The leaf key
    /// never leaves the process and the leaves are only trusted by sandboxes holding our CA.
    leaf_key: KeyPair,
    ca_der: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
    cache: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

impl CertAuthority {
    pub(crate) fn new(ca: &CaPem, provider: Arc<CryptoProvider>) -> Result<Self, EgressError> {
        let cfg = |m: String| EgressError::Config(m);
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes())
            .map_err(|e| cfg(format!("ca certificate pem: {e}")))?;
        let key = KeyPair::from_pem(&ca.key_pem).map_err(|e| cfg(format!("ca key pem: {e}")))?;
        let tbs = der::parse_tbs(&ca_der).ok_or_else(|| cfg("ca certificate: bad der".into()))?;
        if tbs.spki != key.subject_public_key_info().as_slice() {
            return Err(cfg("ca key does not belong to the ca certificate".into()));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = tbs.subject;
        let issuer = Issuer::new(params, key);
        let leaf_key = KeyPair::generate().map_err(|e| cfg(format!("leaf key: {e}")))?;
        let this = Self {
            issuer,
            leaf_key,
            ca_der,
            provider,
            cache: Mutex::new(HashMap::new()),
        };
        this.self_check()?;
        Ok(this)
    }

    /// Mints a leaf and verifies it against the CA with rustls' own verifier, so a CA whose
    /// subject we could not reproduce exactly fails at startup rather than in every sandbox.
    fn self_check(&self) -> Result<(), EgressError> {
        let leaf = self.mint("paddock-self-check.invalid")?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .map_err(|e| EgressError::Config(format!("ca certificate: {e}")))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| EgressError::Config(format!("ca verifier: {e}")))?;
        let name = rustls_pki_types::ServerName::try_from("paddock-self-check.invalid")
            .map_err(|e| EgressError::Config(format!("self check name: {e}")))?;
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], rustls_pki_types::UnixTime::now())
            .map_err(|e| {
                EgressError::Config(format!(
                    "leaf certificates signed by this ca do not verify: {e}"
                ))
            })?;
        Ok(())
    }

    fn mint(&self, host: &str) -> Result<CertificateDer<'static>, EgressError> {
        let mut params = CertificateParams::new(vec![host.to_owned()])
            .map_err(|e| EgressError::Config(format!("leaf certificate for {host}: {e}")))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial()?);
        let cert = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|e| EgressError::Config(format!("leaf certificate for {host}: {e}")))?;
        Ok(cert.der().clone())
    }

    /// A TLS server config presenting a leaf for `host` (minted on first use, then cached).
    /// Offers only HTTP/1.1 in ALPN, since intercepted connections are parsed as HTTP/1.1.
    pub(crate) fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, EgressError> {
        if let Ok(cache) = self.cache.lock()
            && let Some(cfg) = cache.get(host)
        {
            return Ok(cfg.clone());
        }
        let leaf = self.mint(host)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| EgressError::Config(format!("tls server config: {e}")))?
            .with_no_client_auth()
            .with_single_cert(vec![leaf, self.ca_der.clone()], key)
            .map_err(|e| EgressError::Config(format!("tls server config: {e}")))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= LEAF_CACHE_CAP {
                cache.clear();
            }
            cache.insert(host.to_owned(), cfg.clone());
        }
        Ok(cfg)
    }
}

/// Just enough DER to read a certificate's subject and public key. rcgen can parse a CA
/// certificate only with its `x509-parser` feature, which this workspace does not enable.
mod der {
    use rcgen::{DistinguishedName, DnType, DnValue};

    pub(super) struct Tbs {
        pub subject: DistinguishedName,
        pub spki: Vec<u8>,
    }

    /// One TLV: (tag, contents, the whole encoding, the rest).
    struct Tlv<'a>(u8, &'a [u8], &'a [u8], &'a [u8]);

    fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
        let tag = *input.first()?;
        let first = *input.get(1)?;
        let (len, header) = if first < 0x80 {
            (first as usize, 2)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *input.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let end = header.checked_add(len)?;
        let contents = input.get(header..end)?;
        Some(Tlv(tag, contents, input.get(..end)?, input.get(end..)?))
    }

    fn oid(bytes: &[u8]) -> Option<Vec<u64>> {
        let (&first, rest) = bytes.split_first()?;
        let mut out = vec![u64::from(first / 40), u64::from(first % 40)];
        let mut acc: u64 = 0;
        for &b in rest {
            acc = acc.checked_mul(128)? | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                out.push(acc);
                acc = 0;
            }
        }
        Some(out)
    }

    fn name(contents: &[u8]) -> Option<DistinguishedName> {
        let mut dn = DistinguishedName::new();
        let mut rest = contents;
        while !rest.is_empty() {
            let Tlv(tag, set, _, after) = tlv(rest)?;
            if tag != 0x31 {
                return None;
            }
            let Tlv(tag, atv, _, more_in_set) = tlv(set)?;
            // Multi-valued RDNs cannot be reproduced by rcgen: refuse rather than mis-sign.
            if tag != 0x30 || !more_in_set.is_empty() {
                return None;
            }
            let Tlv(tag, oid_bytes, _, value) = tlv(atv)?;
            if tag != 0x06 {
                return None;
            }
            let Tlv(vtag, vbytes, _, _) = tlv(value)?;
            let text = std::str::from_utf8(vbytes).ok()?;
            let value = match vtag {
                0x0c => DnValue::Utf8String(text.to_owned()),
                0x13 => DnValue::PrintableString(text.try_into().ok()?),
                0x16 => DnValue::Ia5String(text.try_into().ok()?),
                _ => return None,
            };
            dn.push(DnType::CustomDnType(oid(oid_bytes)?), value);
            rest = after;
        }
        Some(dn)
    }

    pub(super) fn parse_tbs(cert: &[u8]) -> Option<Tbs> {
        let Tlv(_, cert_seq, _, _) = tlv(cert)?;
        let Tlv(_, tbs, _, _) = tlv(cert_seq)?;
        let mut rest = tbs;
        // [0] EXPLICIT version is optional.
        if rest.first() == Some(&0xa0) {
            rest = tlv(rest)?.3;
        }
        let Tlv(_, _, _, rest) = tlv(rest)?; // serialNumber
        let Tlv(_, _, _, rest) = tlv(rest)?; // signature algorithm
        let Tlv(_, _, _, rest) = tlv(rest)?; // issuer
        let Tlv(_, _, _, rest) = tlv(rest)?; // validity
        let Tlv(tag, subject, _, rest) = tlv(rest)?;
        if tag != 0x30 {
            return None;
        }
        let Tlv(tag, _, spki, _) = tlv(rest)?;
        if tag != 0x30 {
            return None;
        }
        Some(Tbs {
            subject: name(subject)?,
            spki: spki.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    #[test]
    fn generated_ca_loads_and_mints() {
        let ca = generate_ca("Paddock test CA").unwrap();
        let auth = CertAuthority::new(&ca, provider()).unwrap();
        auth.server_config("api.example.com").unwrap();
        auth.server_config("127.0.0.1").unwrap();
        assert!(format!("{ca:?}").contains("[redacted]"));
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn mismatched_key_is_refused() {
        let a = generate_ca("a").unwrap();
        let b = generate_ca("b").unwrap();
        let mixed = CaPem {
            cert_pem: a.cert_pem,
            key_pem: b.key_pem,
        };
        let err = CertAuthority::new(&mixed, provider()).err().unwrap();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn garbage_is_refused() {
        let bad = CaPem {
            cert_pem: "nope".into(),
            key_pem: "nope".into(),
        };
        assert!(CertAuthority::new(&bad, provider()).is_err());
    }
}
