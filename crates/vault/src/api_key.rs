//! API key secrets: `pdk_` and 32 random bytes in unpadded base64url. Only their SHA-256 is
//! stored; the secret is shown once, at creation.

use crate::Result;
use base64::Engine;
use sha2::{Digest, Sha256};

/// Every API key secret starts with this.
pub const API_KEY_PREFIX: &str = "pdk_";
/// Fewest characters after the prefix an accepted secret may have (a supplied bootstrap key
/// must be at least this long; generated ones have 43).
pub const API_KEY_MIN_LEN: usize = 24;
/// Characters of the secret kept in the clear to recognise a key in listings.
const SHOWN_PREFIX: usize = 12;

/// A fresh secret from the operating system's random source.
pub fn new_api_key_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    crate::crypto::fill_random(&mut bytes)?;
    Ok(format!(
        "{API_KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Whether `s` has the shape of a key secret: the prefix, then at least
/// [`API_KEY_MIN_LEN`] (and at most 256) base64url characters.
pub fn is_api_key_secret(s: &str) -> bool {
    s.strip_prefix(API_KEY_PREFIX).is_some_and(|rest| {
        (API_KEY_MIN_LEN..=256).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Lowercase hex SHA-256 of the whole secret: what the store keeps and looks keys up by. No
/// salt is needed: the secret has 256 random bits.
pub fn hash_api_key(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// The part of the secret shown in listings.
pub fn api_key_display_prefix(secret: &str) -> String {
    secret.chars().take(SHOWN_PREFIX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_well_formed_distinct_and_hashed() {
        let a = new_api_key_secret().unwrap_or_default();
        let b = new_api_key_secret().unwrap_or_default();
        assert!(is_api_key_secret(&a), "{a}");
        assert_ne!(a, b);
        assert_eq!(hash_api_key(&a).len(), 64);
        assert_ne!(hash_api_key(&a), hash_api_key(&b));
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(!is_api_key_secret("pdk_short"));
        assert!(!is_api_key_secret("xyz_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
        assert!(!is_api_key_secret("pdk_aaaaaaaaaaaaaaaaaaaaaaaa aaaaaa"));
    }
}
