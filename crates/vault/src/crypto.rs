//! The AEAD layer: wrapping data keys with the master key and sealing secrets with a data key,
//! both XChaCha20-Poly1305 with random 24-byte nonces (large enough that random nonces never
//! collide in practice, so no counter state has to survive crashes).
//!
//! The associated data binds each ciphertext to where it belongs; ids and names cannot contain
//! NUL, so the NUL-separated encoding is unambiguous.

use crate::{Result, VaultError};
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use paddock_store::{DataKeyRecord, SecretRecord};
use paddock_types::{EndUserId, Scope};
use zeroize::Zeroizing;

pub(crate) const KEY_LEN: usize = 32;
pub(crate) const NONCE_LEN: usize = 24;

/// 32 secret bytes, wiped on drop.
pub(crate) type KeyBytes = Zeroizing<[u8; KEY_LEN]>;

/// A workspace's unwrapped data key.
pub(crate) struct DataKey(KeyBytes);

impl DataKey {
    pub(crate) fn generate() -> Result<DataKey> {
        Ok(DataKey(random_key()?))
    }
}

pub(crate) fn random_key() -> Result<KeyBytes> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    fill_random(key.as_mut_slice())?;
    Ok(key)
}

pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|e| VaultError::Random(e.to_string()))
}

fn random_nonce() -> Result<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    Ok(nonce)
}

/// The cipher holds a copy of the key and wipes it on drop (chacha20poly1305's own `Drop`).
pub(crate) fn cipher(key: &[u8; KEY_LEN]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(Key::from_slice(key))
}

fn data_key_aad(scope: &Scope, key_id: u32) -> Vec<u8> {
    format!(
        "paddock-dk\0{}\0{}\0{key_id}",
        scope.org.as_str(),
        scope.workspace.as_str()
    )
    .into_bytes()
}

/// Binds a sealed value to its workspace, its owner (the workspace, or one end-user) and its
/// name, so a ciphertext copied to another row does not open.
fn secret_aad(scope: &Scope, owner: Option<&EndUserId>, name: &str) -> Vec<u8> {
    let (org, ws) = (scope.org.as_str(), scope.workspace.as_str());
    match owner {
        None => format!("paddock-secret\0{org}\0{ws}\0{name}"),
        Some(eu) => format!("paddock-eu-secret\0{org}\0{ws}\0{}\0{name}", eu.as_str()),
    }
    .into_bytes()
}

/// Encrypts with a fresh random nonce; returns (nonce, ciphertext).
fn encrypt(key: &[u8; KEY_LEN], msg: &[u8], aad: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let nonce = random_nonce()?;
    let ciphertext = cipher(key)
        .encrypt(XNonce::from_slice(&nonce), Payload { msg, aad })
        .map_err(|e| VaultError::Encrypt(e.to_string()))?;
    Ok((nonce.to_vec(), ciphertext))
}

fn decrypt(
    key: &[u8; KEY_LEN],
    nonce: &[u8],
    ciphertext: &[u8],
    aad: &[u8],
    what: impl FnOnce() -> String,
) -> Result<Zeroizing<Vec<u8>>> {
    if nonce.len() != NONCE_LEN {
        return Err(VaultError::Undecryptable(what()));
    }
    cipher(key)
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| VaultError::Undecryptable(what()))
}

/// Wraps a data key with the master key; returns (wrapped, nonce).
pub(crate) fn wrap(
    master: &[u8; KEY_LEN],
    scope: &Scope,
    key_id: u32,
    dk: &DataKey,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let (nonce, wrapped) = encrypt(master, dk.0.as_slice(), &data_key_aad(scope, key_id))?;
    Ok((wrapped, nonce))
}

pub(crate) fn unwrap(
    master: &[u8; KEY_LEN],
    scope: &Scope,
    rec: &DataKeyRecord,
) -> Result<DataKey> {
    let what = || format!("data key {} of workspace {}", rec.key_id, scope.workspace);
    let plain = decrypt(
        master,
        &rec.nonce,
        &rec.wrapped,
        &data_key_aad(scope, rec.key_id),
        what,
    )?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if plain.len() != KEY_LEN {
        return Err(VaultError::Undecryptable(what()));
    }
    key.copy_from_slice(&plain);
    Ok(DataKey(key))
}

/// Seals a secret value for the scope's owner (its end-user, or the workspace); returns
/// (nonce, ciphertext).
pub(crate) fn seal(
    dk: &DataKey,
    scope: &Scope,
    name: &str,
    value: &[u8],
) -> Result<(Vec<u8>, Vec<u8>)> {
    encrypt(
        &dk.0,
        value,
        &secret_aad(scope, scope.end_user.as_ref(), name),
    )
}

pub(crate) fn open(dk: &DataKey, scope: &Scope, rec: &SecretRecord) -> Result<Zeroizing<Vec<u8>>> {
    decrypt(
        &dk.0,
        &rec.nonce,
        &rec.ciphertext,
        &secret_aad(scope, rec.end_user.as_ref(), &rec.name),
        || format!("secret {} of workspace {}", rec.name, scope.workspace),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use paddock_types::{OrgId, WorkspaceId};

    fn scope(org: &str, ws: &str) -> Scope {
        Scope {
            org: OrgId::parse(org).unwrap(),
            workspace: WorkspaceId::parse(ws).unwrap(),
            end_user: None,
        }
    }

    fn record(name: &str, (nonce, ciphertext): (Vec<u8>, Vec<u8>)) -> SecretRecord {
        SecretRecord {
            name: name.into(),
            end_user: None,
            key_id: 1,
            nonce,
            ciphertext,
            created_at: 0,
            updated_at: 0,
        }
    }

    // The same data key in another workspace or org, or under another name, must not open the
    // ciphertext: only the associated data differs here, so this pins the binding itself.
    #[test]
    fn a_sealed_value_opens_only_where_it_was_sealed() {
        let dk = DataKey::generate().unwrap();
        let home = scope("org_a", "ws_a");
        let rec = record("token", seal(&dk, &home, "token", b"s3cret").unwrap());
        assert_eq!(open(&dk, &home, &rec).unwrap().as_slice(), b"s3cret");

        for elsewhere in [scope("org_a", "ws_b"), scope("org_b", "ws_a")] {
            assert!(matches!(
                open(&dk, &elsewhere, &rec),
                Err(VaultError::Undecryptable(_))
            ));
        }
        let renamed = SecretRecord {
            name: "token2".into(),
            ..rec.clone()
        };
        assert!(open(&dk, &home, &renamed).is_err());
        // Moved to an end-user's row, or from one end-user to another: does not open.
        let alice = EndUserId::parse("eu_alice").unwrap();
        let moved = SecretRecord {
            end_user: Some(alice.clone()),
            ..rec.clone()
        };
        assert!(open(&dk, &home, &moved).is_err());
        let alices = Scope {
            end_user: Some(alice.clone()),
            ..home.clone()
        };
        let rec_a = SecretRecord {
            end_user: Some(alice),
            ..record("token", seal(&dk, &alices, "token", b"a").unwrap())
        };
        assert_eq!(open(&dk, &home, &rec_a).unwrap().as_slice(), b"a");
        let to_bob = SecretRecord {
            end_user: Some(EndUserId::parse("eu_bob").unwrap()),
            ..rec_a.clone()
        };
        assert!(open(&dk, &home, &to_bob).is_err());
        let to_workspace = SecretRecord {
            end_user: None,
            ..rec_a
        };
        assert!(open(&dk, &home, &to_workspace).is_err());
        let mut flipped = rec.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(open(&dk, &home, &flipped).is_err());
        let short_nonce = SecretRecord {
            nonce: vec![0; 12],
            ..rec
        };
        assert!(open(&dk, &home, &short_nonce).is_err());
    }

    #[test]
    fn a_wrapped_key_opens_only_for_its_workspace_and_id() {
        let master = random_key().unwrap();
        let dk = DataKey::generate().unwrap();
        let home = scope("org_a", "ws_a");
        let (wrapped, nonce) = wrap(&master, &home, 1, &dk).unwrap();
        let rec = DataKeyRecord {
            key_id: 1,
            master_key_id: "m".into(),
            wrapped,
            nonce,
            created_at: 0,
        };
        assert_eq!(*unwrap(&master, &home, &rec).unwrap().0, *dk.0);
        assert!(unwrap(&master, &scope("org_a", "ws_b"), &rec).is_err());
        assert!(unwrap(&master, &scope("org_b", "ws_a"), &rec).is_err());
        let other_id = DataKeyRecord {
            key_id: 2,
            ..rec.clone()
        };
        assert!(unwrap(&master, &home, &other_id).is_err());
        let other_master = random_key().unwrap();
        assert!(unwrap(&other_master, &home, &rec).is_err());
    }

    #[test]
    fn nonces_are_fresh() {
        let dk = DataKey::generate().unwrap();
        let s = scope("org_a", "ws_a");
        let (n1, c1) = seal(&dk, &s, "x", b"same").unwrap();
        let (n2, c2) = seal(&dk, &s, "x", b"same").unwrap();
        assert_ne!(n1, n2);
        assert_ne!(c1, c2);
    }
}
