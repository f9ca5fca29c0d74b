//! The vault: secrets in, secrets out, and master-key rotation.
//!
//! # Rotation and crashes
//!
//! Every wrapped data key records the id of the master key that wrapped it, and a rotation only
//! ever moves between two keys, each of which is on disk before anything depends on it:
//!
//! 1. the current key is saved as `master.key.old` (atomically, 0600);
//! 2. `master.key` is atomically replaced by the new key;
//! 3. every data key is rewrapped with the new key in one store transaction;
//! 4. `master.key.old` is removed.
//!
//! Whatever step a crash interrupts, [`Vault::open`] finds every data key wrapped either by
//! `master.key` or by `master.key.old`. If some are wrapped by the old key it rewraps them (in
//! one transaction) and so finishes the rotation; then it removes `master.key.old`. Secrets'
//! ciphertexts never change, so no secret is ever in flight.
//!
//! Within the process a lock keeps secret writes (which may create data keys) out while a
//! rotation runs; the store's folder lock keeps other processes out.

use crate::crypto::{self, DataKey};
use crate::master::{
    self, ENV_MASTER_KEY, ENV_MASTER_KEY_OLD, KEY_FILE, KeySource, MasterKey, OLD_KEY_FILE,
};
use crate::{Redactor, Result, SecretValue, VaultError};
use paddock_store::{DataKeyRecord, DynStore, Rewrap, SecretMeta, SecretRecord, StoreError};
use paddock_types::Scope;
use paddock_types::manifest::validate_secret_name;
use paddock_types::time::now_ms;
use std::collections::hash_map::Entry;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::RwLock;

/// Largest secret value accepted, in bytes: credentials and keys, not files.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// The data key id a workspace's first key gets.
const FIRST_KEY_ID: u32 = 1;

/// Secrets of every workspace, encrypted under per-workspace data keys wrapped by the master key.
pub struct Vault {
    store: DynStore,
    data_dir: PathBuf,
    /// The key came from the environment: never read or write key files.
    from_env: bool,
    /// Read-locked by every operation, write-locked by a rotation.
    master: RwLock<MasterKey>,
    /// The last redactor built for each scope, with the fingerprint of the secret rows it was
    /// built from (see [`Vault::redactor`]).
    redactors: Mutex<RedactorCache>,
    /// Keys the fingerprints: per process and random, so nobody outside can aim for a collision.
    fingerprint_keys: RandomState,
    /// Redactors built (not taken from the cache), for tests and diagnostics.
    redactor_builds: AtomicU64,
}

/// Scopes whose redactor is kept, at most. Past this (or [`REDACTOR_CACHE_BYTES`]), the least
/// recently used one is dropped: the cache only saves building time, and a dropped scope is
/// rebuilt at its next tool call.
const REDACTOR_CACHE_SCOPES: usize = 256;

/// Memory of the kept automatons, at most (bytes, as the automatons count them). One 64 KiB
/// secret makes an automaton of tens of MiB, so the scope count alone does not bound memory.
/// The most recent redactor is kept even if it alone is larger.
const REDACTOR_CACHE_BYTES: usize = 512 * 1024 * 1024;

/// The kept redactors, least recently used dropped first.
#[derive(Default)]
struct RedactorCache {
    entries: HashMap<Scope, KeptRedactor>,
    /// Bumped at every use: an entry's `used` is the tick of its last use.
    tick: u64,
    bytes: usize,
}

struct KeptRedactor {
    fingerprint: u64,
    redactor: Redactor,
    used: u64,
    bytes: usize,
}

impl RedactorCache {
    fn get(&mut self, key: &Scope, fingerprint: u64) -> Option<Redactor> {
        self.tick += 1;
        let entry = self.entries.get_mut(key)?;
        if entry.fingerprint != fingerprint {
            return None;
        }
        entry.used = self.tick;
        Some(entry.redactor.clone())
    }

    fn insert(&mut self, key: Scope, fingerprint: u64, redactor: Redactor) {
        self.tick += 1;
        let bytes = redactor.matcher().memory_usage();
        let kept = KeptRedactor {
            fingerprint,
            redactor,
            used: self.tick,
            bytes,
        };
        self.bytes += bytes;
        if let Some(old) = self.entries.insert(key, kept) {
            self.bytes -= old.bytes;
        }
        while self.entries.len() > REDACTOR_CACHE_SCOPES
            || (self.bytes > REDACTOR_CACHE_BYTES && self.entries.len() > 1)
        {
            // Linear in the (at most 256) entries, and only when a new redactor was built,
            // which costs far more.
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(old) = self.entries.remove(&oldest) {
                self.bytes -= old.bytes;
            }
        }
    }
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("data_dir", &self.data_dir)
            .field("from_env", &self.from_env)
            .finish_non_exhaustive()
    }
}

/// What [`Vault::rotate_master_key`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    pub old_master_key_id: String,
    pub new_master_key_id: String,
    /// Workspaces whose data keys were rewrapped.
    pub workspaces: usize,
    pub data_keys: usize,
}

enum Wrapping {
    Old,
    New,
}

/// Where a test stops a rotation, to play a crash right after each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
enum StopAfter {
    OldKeySaved,
    KeyReplaced,
    Rewrapped,
}

impl Vault {
    /// Opens the vault with the master key from [`KeySource::from_env`]: `PADDOCK_MASTER_KEY` if
    /// set, else `<data_dir>/master.key` (created on first start). Finishes an interrupted
    /// rotation. Fails if the key does not match the stored data keys.
    pub async fn open(store: DynStore, data_dir: &Path) -> Result<Vault> {
        Vault::open_with(store, data_dir, KeySource::from_env()?).await
    }

    /// [`Vault::open`] with an explicit key source.
    pub async fn open_with(store: DynStore, data_dir: &Path, source: KeySource) -> Result<Vault> {
        std::fs::create_dir_all(data_dir).map_err(|source| VaultError::Io {
            op: "create",
            path: data_dir.to_owned(),
            source,
        })?;
        let records = store.all_data_keys().await?;
        let (master, previous, from_env) = match source {
            KeySource::Env { key, previous } => {
                let master = MasterKey::parse(&key, ENV_MASTER_KEY)?;
                let previous = previous
                    .map(|p| MasterKey::parse(&p, ENV_MASTER_KEY_OLD))
                    .transpose()?;
                if data_dir.join(KEY_FILE).exists() {
                    tracing::warn!(
                        path = %data_dir.join(KEY_FILE).display(),
                        "ignoring the master key file: PADDOCK_MASTER_KEY is set"
                    );
                }
                (master, previous, true)
            }
            KeySource::File => {
                let path = data_dir.join(KEY_FILE);
                let master = match master::read_key_file(&path)? {
                    Some(key) => key,
                    None => {
                        // A fresh key over existing data keys would make every secret
                        // unreadable for good: only an empty vault gets one.
                        if let Some((_, rec)) = records.first() {
                            return Err(VaultError::MissingKeyFile {
                                path,
                                wanted: rec.master_key_id.clone(),
                            });
                        }
                        let key = MasterKey::generate()?;
                        master::write_key_file(data_dir, KEY_FILE, &key)?;
                        tracing::info!(
                            path = %path.display(),
                            master_key_id = key.id(),
                            "created a new master key; back it up: without it no secret can be read"
                        );
                        key
                    }
                };
                let previous = master::read_key_file(&data_dir.join(OLD_KEY_FILE))?;
                (master, previous, false)
            }
        };
        finish_rotation(&*store, &master, previous.as_ref(), records).await?;
        if !from_env {
            for path in master::clean_up(data_dir)? {
                tracing::debug!(path = %path.display(), "removed a leftover key file");
            }
        }
        tracing::debug!(master_key_id = master.id(), from_env, "vault opened");
        Ok(Vault {
            store,
            data_dir: data_dir.to_owned(),
            from_env,
            master: RwLock::new(master),
            redactors: Mutex::new(RedactorCache::default()),
            fingerprint_keys: RandomState::new(),
            redactor_builds: AtomicU64::new(0),
        })
    }

    /// The id of the master key in use (see [`MasterKey::id`]).
    pub async fn master_key_id(&self) -> String {
        self.master.read().await.id().to_owned()
    }

    /// Creates or replaces the secret `name` of the scope's workspace, or of its end-user when
    /// `scope.end_user` is set (that secret then shadows the workspace's of the same name in
    /// the end-user's runs).
    pub async fn put(&self, scope: &Scope, name: &str, value: &str) -> Result<SecretMeta> {
        validate_secret_name(name).map_err(VaultError::InvalidName)?;
        if value.len() > MAX_SECRET_BYTES {
            return Err(VaultError::TooLarge {
                size: value.len(),
                max: MAX_SECRET_BYTES,
            });
        }
        let master = self.master.read().await;
        let (key_id, dk) = self.sealing_key(&master, scope).await?;
        let (nonce, ciphertext) = crypto::seal(&dk, scope, name, value.as_bytes())?;
        let now = now_ms();
        let meta = self
            .store
            .put_secret(
                scope,
                SecretRecord {
                    name: name.to_owned(),
                    end_user: scope.end_user.clone(),
                    key_id,
                    nonce,
                    ciphertext,
                    created_at: now,
                    updated_at: now,
                },
            )
            .await?;
        tracing::debug!(workspace = %scope.workspace, secret = name, "secret stored");
        Ok(meta)
    }

    /// The plaintext of the secret: the scope's end-user's if it has one by this name, else the
    /// workspace's.
    pub async fn get(&self, scope: &Scope, name: &str) -> Result<Option<SecretValue>> {
        let master = self.master.read().await;
        let Some(rec) = self.store.get_secret(scope, name).await? else {
            return Ok(None);
        };
        let keys = self.store.data_keys(scope).await?;
        let dk = unwrap_for(&master, scope, &keys, &rec)?;
        open_value(&dk, scope, &rec).map(Some)
    }

    /// The scope owner's own secrets (the workspace's, or its end-user's) by name, without
    /// values.
    pub async fn list(&self, scope: &Scope) -> Result<Vec<SecretMeta>> {
        Ok(self.store.list_secrets(scope).await?)
    }

    /// False if there was no such secret.
    pub async fn delete(&self, scope: &Scope, name: &str) -> Result<bool> {
        let deleted = self.store.delete_secret(scope, name).await?;
        if deleted {
            tracing::debug!(workspace = %scope.workspace, secret = name, "secret deleted");
        }
        Ok(deleted)
    }

    /// A redactor for every secret of the workspace and of the scope's end-user. Fails (rather
    /// than leaving one out) if any secret cannot be decrypted.
    ///
    /// Building one costs time linear in the forms of every secret (up to about a second for
    /// 1,000 secrets), and the engine asks for one at every tool call; so the redactors built
    /// are kept (the least recently used dropped past 256 scopes or 512 MiB of automatons) and
    /// reused while the secret rows are unchanged. The check reads the rows every time and
    /// compares a fingerprint of them (names, owners, keys, nonces, ciphertexts: every write
    /// gives a fresh nonce), so it is exact whoever wrote the secret, this process or another
    /// sharing the database. A master-key rotation rewraps data keys only, so the values, and
    /// the redactor, stay the same. An end-user without secrets of their own shares the
    /// workspace's redactor, so one key acting for many end-users keeps one automaton. A
    /// build runs on the blocking pool, not on the async worker that asked.
    pub async fn redactor(&self, scope: &Scope) -> Result<Redactor> {
        let master = self.master.read().await;
        let secrets = self.store.all_secrets(scope).await?;
        if secrets.is_empty() {
            return Ok(Redactor::empty());
        }
        let fingerprint = self.fingerprint(&secrets);
        // Same rows, same redactor: key by the workspace unless the end-user has secrets.
        let key = if secrets.iter().any(|rec| rec.end_user.is_some()) {
            scope.clone()
        } else {
            Scope {
                end_user: None,
                ..scope.clone()
            }
        };
        if let Some(redactor) = self.cached_redactors().get(&key, fingerprint) {
            return Ok(redactor);
        }
        let keys = self.store.data_keys(scope).await?;
        let mut unwrapped: HashMap<u32, DataKey> = HashMap::new();
        let mut values = Vec::with_capacity(secrets.len());
        for rec in &secrets {
            let dk = match unwrapped.entry(rec.key_id) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(unwrap_for(&master, scope, &keys, rec)?),
            };
            values.push((rec.name.clone(), open_value(dk, scope, rec)?));
        }
        drop(master);
        self.redactor_builds.fetch_add(1, Ordering::Relaxed);
        let built = tokio::task::spawn_blocking(move || {
            Redactor::new(values.iter().map(|(name, v)| (name.as_str(), v.expose())))
        })
        .await
        .map_err(|e| VaultError::Redactor(format!("the build task failed: {e}")))??;
        self.cached_redactors()
            .insert(key, fingerprint, built.clone());
        Ok(built)
    }

    fn cached_redactors(&self) -> std::sync::MutexGuard<'_, RedactorCache> {
        // A panic while holding the lock cannot leave a wrong entry: inserts are whole.
        self.redactors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fingerprint(&self, secrets: &[SecretRecord]) -> u64 {
        let mut h = self.fingerprint_keys.build_hasher();
        for rec in secrets {
            rec.name.hash(&mut h);
            rec.end_user.as_ref().map(|e| e.as_str()).hash(&mut h);
            rec.key_id.hash(&mut h);
            rec.nonce.hash(&mut h);
            rec.ciphertext.hash(&mut h);
        }
        h.finish()
    }

    /// Replaces the master key: a new random key, every data key of every workspace rewrapped
    /// in one store transaction, `master.key` replaced atomically (see the module docs for the
    /// order and how a crash at any point is recovered). Secrets' ciphertexts do not change.
    ///
    /// Refused ([`VaultError::EnvManagedKey`]) when the key comes from `PADDOCK_MASTER_KEY`.
    /// Database backups taken before the rotation need the old key: keep it with them.
    pub async fn rotate_master_key(&self) -> Result<RotationReport> {
        self.rotate(None).await
    }

    async fn rotate(&self, stop: Option<StopAfter>) -> Result<RotationReport> {
        if self.from_env {
            return Err(VaultError::EnvManagedKey);
        }
        let mut master = self.master.write().await;
        let new = MasterKey::generate()?;
        let records = self.store.all_data_keys().await?;
        let mut workspaces = BTreeSet::new();
        // Everything is unwrapped and rewrapped before any file changes: a key that does not
        // open aborts the rotation with nothing touched.
        let rewraps = records
            .iter()
            .map(|(scope, rec)| {
                workspaces.insert((scope.org.as_str(), scope.workspace.as_str()));
                if rec.master_key_id != master.id() {
                    return Err(VaultError::WrongMasterKey {
                        have: master.id().to_owned(),
                        wanted: rec.master_key_id.clone(),
                    });
                }
                rewrap(&master, &new, scope, rec)
            })
            .collect::<Result<Vec<_>>>()?;
        let report = RotationReport {
            old_master_key_id: master.id().to_owned(),
            new_master_key_id: new.id().to_owned(),
            workspaces: workspaces.len(),
            data_keys: rewraps.len(),
        };
        let dir = &self.data_dir;

        master::write_key_file(dir, OLD_KEY_FILE, &master)?;
        if stop == Some(StopAfter::OldKeySaved) {
            return Ok(report);
        }
        // On failure the files are left alone: master.key is the old or the new key (rename is
        // atomic) and master.key.old the old one, which the next start sorts out either way.
        master::write_key_file(dir, KEY_FILE, &new)?;
        if stop == Some(StopAfter::KeyReplaced) {
            return Ok(report);
        }
        if let Err(e) = self.store.rewrap_data_keys(rewraps).await {
            // The error does not say whether the transaction landed (the answer may have been
            // lost after the commit): look.
            match self.wrapped_by(&master, &new).await {
                Some(Wrapping::Old) => {
                    self.restore_old_key_file();
                    return Err(e.into());
                }
                Some(Wrapping::New) => {
                    tracing::warn!(error = %e, "the rewrap reported an error but committed");
                }
                None => {
                    tracing::error!(
                        error = %e,
                        "master key rotation failed midway; restart paddock to finish it"
                    );
                    return Err(e.into());
                }
            }
        }
        if stop == Some(StopAfter::Rewrapped) {
            return Ok(report);
        }
        *master = new;
        // The database no longer needs the old key; leaving it on disk beside the database
        // would defeat the rotation.
        if let Err(e) =
            master::remove_if_exists(&dir.join(OLD_KEY_FILE)).and_then(|_| master::sync_dir(dir))
        {
            tracing::error!(
                error = %e,
                "rotation committed but the old key file could not be removed; delete master.key.old by hand"
            );
        }
        tracing::info!(
            old_master_key_id = report.old_master_key_id,
            new_master_key_id = report.new_master_key_id,
            workspaces = report.workspaces,
            data_keys = report.data_keys,
            "master key rotated"
        );
        Ok(report)
    }

    /// Which of the two keys wraps every data key, if one does (an empty store counts as old).
    async fn wrapped_by(&self, old: &MasterKey, new: &MasterKey) -> Option<Wrapping> {
        let keys = self.store.all_data_keys().await.ok()?;
        if keys.iter().all(|(_, r)| r.master_key_id == old.id()) {
            Some(Wrapping::Old)
        } else if keys.iter().all(|(_, r)| r.master_key_id == new.id()) {
            Some(Wrapping::New)
        } else {
            None
        }
    }

    /// After a rewrap that did not land: puts the old key back in `master.key` so the files match
    /// the database again. If that fails too, the files stay as they are, which the next start
    /// recovers from (it finishes the rotation with `master.key.old`).
    fn restore_old_key_file(&self) {
        let dir = &self.data_dir;
        let restored = std::fs::rename(dir.join(OLD_KEY_FILE), dir.join(KEY_FILE))
            .map_err(|source| VaultError::Io {
                op: "rename",
                path: dir.join(OLD_KEY_FILE),
                source,
            })
            .and_then(|()| master::sync_dir(dir));
        if let Err(e) = restored {
            tracing::error!(
                error = %e,
                "master key rotation failed; restart paddock to finish it"
            );
        }
    }

    /// The workspace's newest data key, created on first use.
    async fn sealing_key(&self, master: &MasterKey, scope: &Scope) -> Result<(u32, DataKey)> {
        // Two rounds: if another writer creates the first key between our read and our insert,
        // the second round reads theirs.
        for _ in 0..2 {
            let keys = self.store.data_keys(scope).await?;
            if let Some(rec) = keys.last() {
                return Ok((rec.key_id, unwrap_checked(master, scope, rec)?));
            }
            let dk = DataKey::generate()?;
            let (wrapped, nonce) = crypto::wrap(master.bytes(), scope, FIRST_KEY_ID, &dk)?;
            let rec = DataKeyRecord {
                key_id: FIRST_KEY_ID,
                master_key_id: master.id().to_owned(),
                wrapped,
                nonce,
                created_at: now_ms(),
            };
            if self.store.put_data_key(scope, rec).await? {
                tracing::debug!(workspace = %scope.workspace, "workspace data key created");
                return Ok((FIRST_KEY_ID, dk));
            }
        }
        Err(StoreError::NotFound("data key").into())
    }
}

/// Rewraps the data keys left wrapped by `previous` (an interrupted rotation, or an operator
/// rotating `PADDOCK_MASTER_KEY`) with `master`, in one transaction.
async fn finish_rotation(
    store: &dyn paddock_store::Store,
    master: &MasterKey,
    previous: Option<&MasterKey>,
    records: Vec<(Scope, DataKeyRecord)>,
) -> Result<()> {
    let mut rewraps = Vec::new();
    for (scope, rec) in &records {
        if rec.master_key_id == master.id() {
            continue;
        }
        let Some(from) = previous.filter(|p| p.id() == rec.master_key_id) else {
            return Err(VaultError::WrongMasterKey {
                have: master.id().to_owned(),
                wanted: rec.master_key_id.clone(),
            });
        };
        rewraps.push(rewrap(from, master, scope, rec)?);
    }
    if rewraps.is_empty() {
        return Ok(());
    }
    let count = rewraps.len();
    store.rewrap_data_keys(rewraps).await?;
    tracing::warn!(
        data_keys = count,
        new_master_key_id = master.id(),
        "finished a master key rotation: data keys rewrapped with the current master key"
    );
    Ok(())
}

fn rewrap(from: &MasterKey, to: &MasterKey, scope: &Scope, rec: &DataKeyRecord) -> Result<Rewrap> {
    let dk = crypto::unwrap(from.bytes(), scope, rec)?;
    let (wrapped, nonce) = crypto::wrap(to.bytes(), scope, rec.key_id, &dk)?;
    Ok(Rewrap {
        scope: scope.clone(),
        key_id: rec.key_id,
        from_master_key_id: rec.master_key_id.clone(),
        master_key_id: to.id().to_owned(),
        wrapped,
        nonce,
    })
}

fn unwrap_checked(master: &MasterKey, scope: &Scope, rec: &DataKeyRecord) -> Result<DataKey> {
    if rec.master_key_id != master.id() {
        return Err(VaultError::WrongMasterKey {
            have: master.id().to_owned(),
            wanted: rec.master_key_id.clone(),
        });
    }
    crypto::unwrap(master.bytes(), scope, rec)
}

/// The data key that sealed `secret`, unwrapped.
fn unwrap_for(
    master: &MasterKey,
    scope: &Scope,
    keys: &[DataKeyRecord],
    secret: &SecretRecord,
) -> Result<DataKey> {
    let rec = keys
        .iter()
        .find(|k| k.key_id == secret.key_id)
        .ok_or_else(|| VaultError::Undecryptable(secret_label(scope, &secret.name)))?;
    unwrap_checked(master, scope, rec)
}

fn open_value(dk: &DataKey, scope: &Scope, rec: &SecretRecord) -> Result<SecretValue> {
    let plain = crypto::open(dk, scope, rec)?;
    // Values go in as &str, so anything else means the ciphertext is not what we sealed.
    let text = std::str::from_utf8(&plain)
        .map_err(|_| VaultError::Undecryptable(secret_label(scope, &rec.name)))?;
    Ok(SecretValue::new(text.to_owned()))
}

fn secret_label(scope: &Scope, name: &str) -> String {
    format!("secret {name} of workspace {}", scope.workspace)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use paddock_store::SqliteStore;
    use paddock_types::{OrgId, WorkspaceId};
    use std::sync::Arc;

    fn scope(ws: &str) -> Scope {
        Scope {
            org: OrgId::parse("org_default").unwrap(),
            workspace: WorkspaceId::parse(ws).unwrap(),
            end_user: None,
        }
    }

    async fn open(dir: &Path) -> Vault {
        let store: DynStore = SqliteStore::open(dir).unwrap();
        Vault::open_with(store, dir, KeySource::File).await.unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("key"))
            .collect();
        names.sort();
        names
    }

    /// A workspace that runs tools all the time keeps its redactor while hundreds of other
    /// scopes come and go (it was dropped with everything else when the cache filled up).
    #[tokio::test]
    async fn eviction_does_not_drop_a_hot_redactor() {
        let dir = tempfile::tempdir().unwrap();
        let vault = open(dir.path()).await;
        let hot = scope("ws_hot");
        vault.put(&hot, "k", "hot-secret-value").await.unwrap();
        vault.redactor(&hot).await.unwrap();
        let mut builds = 1;
        for n in 0..REDACTOR_CACHE_SCOPES + 40 {
            let cold = scope(&format!("ws_cold{n}"));
            vault
                .put(&cold, "k", &format!("cold-value-{n}"))
                .await
                .unwrap();
            vault.redactor(&cold).await.unwrap();
            builds += 1;
            if n % 10 == 0 {
                let r = vault.redactor(&hot).await.unwrap();
                assert_eq!(r.redact("hot-secret-value"), "[REDACTED:k]");
            }
        }
        assert_eq!(
            vault.redactor_builds.load(Ordering::Relaxed),
            builds,
            "the hot redactor was rebuilt"
        );
        let cache = vault.cached_redactors();
        assert_eq!(cache.entries.len(), REDACTOR_CACHE_SCOPES);
        assert!(cache.entries.contains_key(&hot));
        assert!(!cache.entries.contains_key(&scope("ws_cold0")));
    }

    /// One key acting for many end-users: those without secrets of their own share the
    /// workspace's redactor; one with its own secrets gets its own.
    #[tokio::test]
    async fn end_users_without_secrets_share_the_workspace_redactor() {
        let dir = tempfile::tempdir().unwrap();
        let vault = open(dir.path()).await;
        let ws = scope("ws_a");
        vault.put(&ws, "k", "workspace-secret").await.unwrap();
        for n in 0..20 {
            let eu = Scope {
                end_user: Some(paddock_types::EndUserId::parse(&format!("eu_{n:04}")).unwrap()),
                ..ws.clone()
            };
            let r = vault.redactor(&eu).await.unwrap();
            assert_eq!(r.redact("workspace-secret"), "[REDACTED:k]");
        }
        assert_eq!(vault.redactor_builds.load(Ordering::Relaxed), 1);
        let own = Scope {
            end_user: Some(paddock_types::EndUserId::parse("eu_own").unwrap()),
            ..ws.clone()
        };
        vault.put(&own, "mine", "end-user-secret").await.unwrap();
        let r = vault.redactor(&own).await.unwrap();
        assert_eq!(
            r.redact("workspace-secret end-user-secret"),
            "[REDACTED:k] [REDACTED:mine]"
        );
        let r = vault.redactor(&ws).await.unwrap();
        assert_eq!(r.redact("end-user-secret"), "end-user-secret");
        assert_eq!(vault.redactor_builds.load(Ordering::Relaxed), 2);
    }

    /// A crash right after each step of a rotation: the next start opens every secret, leaves
    /// every data key wrapped by the key in master.key, and no old key on disk.
    #[tokio::test]
    async fn a_crash_at_any_step_of_a_rotation_recovers() {
        for at in [
            StopAfter::OldKeySaved,
            StopAfter::KeyReplaced,
            StopAfter::Rewrapped,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (a, b) = (scope("ws_a"), scope("ws_b"));
            let (old_id, new_id) = {
                let vault = open(dir.path()).await;
                vault.put(&a, "one", "value-one").await.unwrap();
                vault.put(&b, "two", "value-two").await.unwrap();
                let report = vault.rotate(Some(at)).await.unwrap();
                (report.old_master_key_id, report.new_master_key_id)
            };
            assert!(
                names(dir.path()).contains(&OLD_KEY_FILE.to_owned()),
                "{at:?}"
            );

            let store: DynStore = SqliteStore::open(dir.path()).unwrap();
            let vault = Vault::open_with(Arc::clone(&store), dir.path(), KeySource::File)
                .await
                .unwrap();
            let expected = if at == StopAfter::OldKeySaved {
                old_id
            } else {
                new_id
            };
            assert_eq!(vault.master_key_id().await, expected, "{at:?}");
            for (_, rec) in store.all_data_keys().await.unwrap() {
                assert_eq!(rec.master_key_id, expected, "{at:?}");
            }
            assert_eq!(names(dir.path()), vec![KEY_FILE.to_owned()], "{at:?}");
            assert_eq!(
                vault.get(&a, "one").await.unwrap().unwrap().expose(),
                "value-one"
            );
            assert_eq!(
                vault.get(&b, "two").await.unwrap().unwrap().expose(),
                "value-two"
            );
            // And a full rotation still works afterwards.
            vault.rotate_master_key().await.unwrap();
            assert_eq!(
                vault.get(&b, "two").await.unwrap().unwrap().expose(),
                "value-two"
            );
        }
    }
}
