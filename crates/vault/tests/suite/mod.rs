#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod disk;
mod faults;
mod keys;
mod redaction;
mod secrets;

use paddock_store::{DynStore, SqliteStore};
use paddock_types::{OrgId, Scope, WorkspaceId};
use paddock_vault::{KeySource, Vault};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

pub fn scope(org: &str, ws: &str) -> Scope {
    Scope {
        org: OrgId::parse(org).unwrap(),
        workspace: WorkspaceId::parse(ws).unwrap(),
        end_user: None,
    }
}

/// A store and a vault on `dir`, the key in `master.key`.
pub async fn open(dir: &Path) -> (DynStore, Vault) {
    open_with(dir, KeySource::File).await.unwrap()
}

pub async fn open_with(
    dir: &Path,
    source: KeySource,
) -> Result<(DynStore, Vault), paddock_vault::VaultError> {
    let store: DynStore = SqliteStore::open(dir).unwrap();
    let vault = Vault::open_with(Arc::clone(&store), dir, source).await?;
    Ok((store, vault))
}

/// The error opening fails with (the store and vault themselves cannot be printed).
pub async fn open_err(dir: &Path, source: KeySource) -> paddock_vault::VaultError {
    match open_with(dir, source).await {
        Ok(_) => panic!("the vault opened"),
        Err(e) => e,
    }
}

pub fn env(key: &str, previous: Option<&str>) -> KeySource {
    KeySource::Env {
        key: key.to_owned().into(),
        previous: previous.map(|p| p.to_owned().into()),
    }
}

pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

pub fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Key-related files in the folder, sorted.
pub fn key_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("key"))
        .collect();
    names.sort();
    names
}
