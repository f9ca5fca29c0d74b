//! Paddock's secret vault: envelope encryption of workspace secrets, master-key management and
//! rotation, and redaction of secret values from text the model, logs or journal may see.
//!
//! Layout of the keys:
//!
//! - one **master key** (32 bytes) per installation, from `PADDOCK_MASTER_KEY` or
//!   `<data_dir>/master.key` ([`MasterKey`], [`KeySource`]); it never reaches the database;
//! - one **data key** (32 random bytes) per workspace, stored wrapped by the master key with
//!   XChaCha20-Poly1305, the org, workspace and key id bound as associated data;
//! - each **secret** sealed by its workspace's data key with XChaCha20-Poly1305, the org,
//!   workspace and secret name bound as associated data, so a ciphertext copied to another
//!   workspace or renamed no longer opens.
//!
//! Rotating the master key rewraps the data keys only: secrets' ciphertexts never change.
//!
//! The API is write-only towards users: [`Vault::list`] never returns values; [`Vault::get`] is
//! for the egress broker, which injects credentials on the network side, and
//! [`Vault::redactor`] for whatever shows text to the model, the logs or the journal.
//!
//! This crate must not know HTTP, and must not log a secret value, a key, or a wrapped key.

mod api_key;
mod crypto;
mod master;
mod redact;
mod secret;
mod vault;

pub use api_key::{
    API_KEY_MIN_LEN, API_KEY_PREFIX, api_key_display_prefix, hash_api_key, is_api_key_secret,
    new_api_key_secret,
};
pub use master::{ENV_MASTER_KEY, ENV_MASTER_KEY_OLD, KeySource, MasterKey};
pub use redact::Redactor;
pub use secret::SecretValue;
pub use vault::{MAX_SECRET_BYTES, RotationReport, Vault};

use paddock_store::StoreError;
use std::path::PathBuf;

/// What went wrong, and what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The secret name breaks the naming rules. Reject the request as bad input.
    #[error("{0}")]
    InvalidName(String),
    /// The secret value is over [`MAX_SECRET_BYTES`]. Reject the request as bad input.
    #[error("secret value is {size} bytes, more than the {max} allowed")]
    TooLarge { size: usize, max: usize },
    /// The configured master key is unusable (not base64, not 32 bytes). Refuse to start and tell
    /// the operator which setting to fix.
    #[error("invalid master key in {origin}: {reason}")]
    InvalidMasterKey { origin: String, reason: String },
    /// The master key file can be read by group or others. Refuse to start; the operator must
    /// restrict it (the message says how).
    #[error("{} is readable by group or others (mode {mode:o}); run `chmod 600 {}`", path.display(), path.display())]
    InsecureKeyFile { path: PathBuf, mode: u32 },
    /// The master key is not the one the stored data keys were wrapped with, and no previous key
    /// that is was found. Refuse to start: the operator must supply the right key (secrets are
    /// unreadable otherwise; never generate a new one over it).
    #[error(
        "the master key {have} cannot open data keys wrapped by master key {wanted}; \
         restore that key (master.key or PADDOCK_MASTER_KEY)"
    )]
    WrongMasterKey { have: String, wanted: String },
    /// `master.key` is missing although the store holds data keys. Refuse to start: the operator
    /// must restore the file from a backup (or set `PADDOCK_MASTER_KEY`).
    #[error(
        "master key file {} is missing but the store holds data keys wrapped by master key \
         {wanted}; restore it from a backup or set PADDOCK_MASTER_KEY", path.display()
    )]
    MissingKeyFile { path: PathBuf, wanted: String },
    /// Rotation was asked for but the master key comes from the environment. Tell the operator to
    /// rotate the variables instead (the message says how).
    #[error(
        "the master key comes from PADDOCK_MASTER_KEY, so paddock cannot replace it: set \
         PADDOCK_MASTER_KEY_OLD to the current key and PADDOCK_MASTER_KEY to a new one, restart \
         (the data keys are rewrapped at start), then remove PADDOCK_MASTER_KEY_OLD"
    )]
    EnvManagedKey,
    /// A stored ciphertext did not authenticate: it was altered, copied to another workspace or
    /// name, or its data key is gone. Treat as corruption or tampering: alert, do not retry.
    #[error("{0} cannot be decrypted: it was altered, moved, or its key is missing")]
    Undecryptable(String),
    /// Encryption itself failed (only possible for absurd sizes). Report a bug.
    #[error("encryption failed: {0}")]
    Encrypt(String),
    /// The operating system gave no randomness. Retry later; the host is broken.
    #[error("no randomness from the operating system: {0}")]
    Random(String),
    /// The redaction automaton could not be built (too many or too large secrets). Do not show
    /// the text unredacted: fail the operation that needed it.
    #[error("cannot build the redactor: {0}")]
    Redactor(String),
    /// Reading or writing a key file failed. Fix the data folder (permissions, disk) and retry.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The store failed; react as to that [`StoreError`].
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = VaultError> = std::result::Result<T, E>;
