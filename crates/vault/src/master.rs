//! The master key: where it comes from, how it is identified, and its file on disk.
//!
//! The file `<data_dir>/master.key` holds the key as standard base64 and a newline, mode 0600.
//! It is only ever replaced atomically (write a temporary file with mode 0600, fsync, rename,
//! fsync the folder), so a crash leaves either the old or the new file, never a torn one.

use crate::crypto::{self, KEY_LEN, KeyBytes};
use crate::{Result, VaultError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::XNonce;
use chacha20poly1305::aead::{Aead, Payload};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The environment variable holding the master key (standard base64 of 32 bytes). When set, no
/// key file is read or written.
pub const ENV_MASTER_KEY: &str = "PADDOCK_MASTER_KEY";
/// The previous master key while rotating an environment-managed key: data keys still wrapped by
/// it are rewrapped with [`ENV_MASTER_KEY`] when the vault opens.
pub const ENV_MASTER_KEY_OLD: &str = "PADDOCK_MASTER_KEY_OLD";

pub(crate) const KEY_FILE: &str = "master.key";
/// The previous key, kept only while a rotation is in progress (see [`crate::Vault`]).
pub(crate) const OLD_KEY_FILE: &str = "master.key.old";

/// The installation's master key: 32 bytes, wiped from memory on drop. `Debug` shows its id only.
pub struct MasterKey {
    key: KeyBytes,
    id: String,
}

impl MasterKey {
    /// A new random key.
    pub fn generate() -> Result<MasterKey> {
        MasterKey::from_bytes(crypto::random_key()?)
    }

    /// Parses standard base64 of exactly 32 bytes (surrounding whitespace is ignored).
    pub fn from_base64(text: &str) -> Result<MasterKey> {
        MasterKey::parse(text, "the given text")
    }

    pub(crate) fn parse(text: &str, origin: &str) -> Result<MasterKey> {
        let invalid = |reason: String| VaultError::InvalidMasterKey {
            origin: origin.to_owned(),
            reason,
        };
        let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| {
            invalid(format!(
                "expected standard base64 of {KEY_LEN} bytes (e.g. from `head -c {KEY_LEN} /dev/urandom | base64`)"
            ))
        })?);
        if bytes.len() != KEY_LEN {
            return Err(invalid(format!(
                "expected {KEY_LEN} bytes once base64-decoded, got {}",
                bytes.len()
            )));
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&bytes);
        MasterKey::from_bytes(key)
    }

    fn from_bytes(key: KeyBytes) -> Result<MasterKey> {
        let id = fingerprint(&key)?;
        Ok(MasterKey { key, id })
    }

    /// The key as standard base64 (what `PADDOCK_MASTER_KEY` and `master.key` hold).
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.key.as_slice()))
    }

    /// 16 hex characters identifying the key: the first 8 bytes of a Poly1305 tag computed with
    /// the key over a fixed label. Deterministic, so the same key always has the same id, and
    /// keyed, so it tells nothing about the key. Stored with every wrapped data key.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// An AEAD tag over a fixed label under a fixed all-zero nonce. That (key, nonce) pair only ever
/// authenticates this one message, and real ciphertexts use random 24-byte nonces, so reusing
/// it for every id computation gives nothing away.
fn fingerprint(key: &[u8; KEY_LEN]) -> Result<String> {
    let tag = crypto::cipher(key)
        .encrypt(
            XNonce::from_slice(&[0u8; crypto::NONCE_LEN]),
            Payload {
                msg: b"",
                aad: b"paddock-master-key-id\0v1",
            },
        )
        .map_err(|e| VaultError::Encrypt(e.to_string()))?;
    Ok(tag.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// Where the master key comes from.
pub enum KeySource {
    /// `<data_dir>/master.key`, created (mode 0600) on first start. Rotatable with
    /// [`crate::Vault::rotate_master_key`].
    File,
    /// Base64 text from the environment. `previous`, if set, is the key being rotated away
    /// from: data keys still wrapped by it are rewrapped with `key` when the vault opens.
    Env {
        key: Zeroizing<String>,
        previous: Option<Zeroizing<String>>,
    },
}

impl KeySource {
    /// [`KeySource::Env`] if [`ENV_MASTER_KEY`] is set (with [`ENV_MASTER_KEY_OLD`] as the
    /// previous key), else [`KeySource::File`].
    pub fn from_env() -> Result<KeySource> {
        let key = env_var(ENV_MASTER_KEY)?;
        let previous = env_var(ENV_MASTER_KEY_OLD)?;
        match (key, previous) {
            (Some(key), previous) => Ok(KeySource::Env { key, previous }),
            (None, None) => Ok(KeySource::File),
            (None, Some(_)) => Err(VaultError::InvalidMasterKey {
                origin: ENV_MASTER_KEY_OLD.to_owned(),
                reason: format!("it is set but {ENV_MASTER_KEY} is not"),
            }),
        }
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File => f.write_str("File"),
            KeySource::Env { previous, .. } => f
                .debug_struct("Env")
                .field("previous", &previous.is_some())
                .finish_non_exhaustive(),
        }
    }
}

fn env_var(name: &str) -> Result<Option<Zeroizing<String>>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(Zeroizing::new(v))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(VaultError::InvalidMasterKey {
            origin: name.to_owned(),
            reason: "not valid UTF-8".to_owned(),
        }),
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VaultError {
    let path = path.to_owned();
    move |source| VaultError::Io { op, path, source }
}

/// Reads a key file; `None` if it does not exist. Refuses a file that group or others can read:
/// on a shared host that is the key to every secret.
pub(crate) fn read_key_file(path: &Path) -> Result<Option<MasterKey>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("open", path)(e)),
    };
    // The mode of the file actually opened, not of whatever the path pointed to a moment ago.
    let meta = file.metadata().map_err(io("inspect", path))?;
    if !meta.is_file() {
        return Err(VaultError::InvalidMasterKey {
            origin: path.display().to_string(),
            reason: "not a regular file".to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(VaultError::InsecureKeyFile {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = Zeroizing::new(Vec::with_capacity(64));
    file.read_to_end(&mut text).map_err(io("read", path))?;
    let text = std::str::from_utf8(&text).map_err(|_| VaultError::InvalidMasterKey {
        origin: path.display().to_string(),
        reason: "not UTF-8 text".to_owned(),
    })?;
    MasterKey::parse(text, &path.display().to_string()).map(Some)
}

fn temp_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// Atomically replaces (or creates) `dir/name` with the key, mode 0600, and makes the change
/// durable before returning.
pub(crate) fn write_key_file(dir: &Path, name: &str, key: &MasterKey) -> Result<()> {
    let tmp = dir.join(temp_name(name));
    let target = dir.join(name);
    remove_if_exists(&tmp)?;
    // create_new: never follow a link or reuse a file someone else prepared.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    let mut text = key.to_base64();
    text.push('\n');
    file.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("sync", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, &target).map_err(io("rename", &tmp))?;
    sync_dir(dir)
}

/// True if the file existed.
pub(crate) fn remove_if_exists(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("remove", path)(e)),
    }
}

/// Renames and removals are durable only once the folder itself is synced.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

/// Removes leftovers of an interrupted write or rotation: temporary files, and the previous key
/// once nothing needs it. Returns what was removed.
pub(crate) fn clean_up(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for name in [
        temp_name(KEY_FILE),
        temp_name(OLD_KEY_FILE),
        OLD_KEY_FILE.to_owned(),
    ] {
        let path = dir.join(name);
        if remove_if_exists(&path)? {
            removed.push(path);
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = MasterKey::generate().unwrap();
        let b = MasterKey::generate().unwrap();
        assert_eq!(a.id().len(), 16);
        assert_ne!(a.id(), b.id());
        let again = MasterKey::from_base64(&a.to_base64()).unwrap();
        assert_eq!(again.id(), a.id());
        assert_eq!(again.bytes(), a.bytes());
        assert!(!format!("{a:?}").contains(a.to_base64().as_str()));
    }

    #[test]
    fn bad_base64_and_lengths_are_clear_errors() {
        for (text, needle) in [
            ("not base64!", "standard base64"),
            (&STANDARD.encode([1u8; 16]), "got 16"),
            (&STANDARD.encode([1u8; 33]), "got 33"),
            ("", "got 0"),
        ] {
            let err = MasterKey::parse(text, "TEST_VAR").unwrap_err().to_string();
            assert!(err.contains("TEST_VAR") && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn the_key_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate().unwrap();
        write_key_file(dir.path(), KEY_FILE, &key).unwrap();
        let path = dir.path().join(KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", key.to_base64().as_str()));
        assert_eq!(read_key_file(&path).unwrap().unwrap().id(), key.id());
        assert!(read_key_file(&dir.path().join("absent")).unwrap().is_none());
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(KEY_FILE)]);
    }
}
