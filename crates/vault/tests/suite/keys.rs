//! The master key: file, environment, mismatches and rotation.

use super::{env, key_files, mode, open, open_err, open_with, scope, set_mode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use paddock_store::DataKeyRecord;
use paddock_types::Scope;
use paddock_vault::{KeySource, MasterKey, VaultError};
use std::collections::BTreeMap;

#[tokio::test]
async fn the_key_file_is_created_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let s = Scope::default_workspace();
    let id = {
        let (_store, vault) = open(dir.path()).await;
        vault.put(&s, "token", "value-1234").await.unwrap();
        vault.master_key_id().await
    };
    assert_eq!(mode(&path), 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
    assert_eq!(STANDARD.decode(text.trim()).unwrap().len(), 32);
    assert_eq!(MasterKey::from_base64(&text).unwrap().id(), id);

    let (_store, vault) = open(dir.path()).await;
    assert_eq!(vault.master_key_id().await, id);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    assert_eq!(
        vault.get(&s, "token").await.unwrap().unwrap().expose(),
        "value-1234"
    );
}

#[tokio::test]
async fn a_key_file_others_can_read_is_refused() {
    for bad in [0o640, 0o604, 0o644, 0o660] {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()).await);
        let path = dir.path().join("master.key");
        set_mode(&path, bad);
        let err = open_err(dir.path(), KeySource::File).await;
        assert!(matches!(err, VaultError::InsecureKeyFile { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("chmod 600") && msg.contains("master.key"),
            "{msg}"
        );
        // Owner-only modes are fine, read-only included.
        set_mode(&path, 0o400);
        open_with(dir.path(), KeySource::File).await.unwrap();
    }
}

#[tokio::test]
async fn a_broken_or_missing_key_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    {
        let (_store, vault) = open(dir.path()).await;
        vault
            .put(&Scope::default_workspace(), "token", "value-1234")
            .await
            .unwrap();
    }
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, STANDARD.encode([7u8; 16]) + "\n").unwrap();
    let err = open_err(dir.path(), KeySource::File).await;
    assert!(err.to_string().contains("got 16"), "{err}");

    // A fresh key must never be generated over existing data keys.
    std::fs::remove_file(&path).unwrap();
    let err = open_err(dir.path(), KeySource::File).await;
    assert!(matches!(err, VaultError::MissingKeyFile { .. }), "{err}");
    assert!(!path.exists());

    // Another valid key is not silently accepted either.
    std::fs::write(&path, MasterKey::generate().unwrap().to_base64().as_str()).unwrap();
    set_mode(&path, 0o600);
    let err = open_err(dir.path(), KeySource::File).await;
    assert!(matches!(err, VaultError::WrongMasterKey { .. }), "{err}");

    std::fs::write(&path, good).unwrap();
    open_with(dir.path(), KeySource::File).await.unwrap();
}

#[tokio::test]
async fn the_environment_key_is_used_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate().unwrap();
    let b64 = key.to_base64();
    let s = Scope::default_workspace();
    {
        let (_store, vault) = open_with(dir.path(), env(&b64, None)).await.unwrap();
        assert_eq!(vault.master_key_id().await, key.id());
        vault.put(&s, "token", "value-1234").await.unwrap();
        // The operator manages an environment key: paddock will not replace it.
        let err = vault.rotate_master_key().await.unwrap_err();
        assert!(matches!(err, VaultError::EnvManagedKey), "{err}");
        assert!(err.to_string().contains("PADDOCK_MASTER_KEY_OLD"), "{err}");
    }
    assert!(
        key_files(dir.path()).is_empty(),
        "{:?}",
        key_files(dir.path())
    );

    let (_store, vault) = open_with(dir.path(), env(&b64, None)).await.unwrap();
    assert_eq!(
        vault.get(&s, "token").await.unwrap().unwrap().expose(),
        "value-1234"
    );
    drop((_store, vault));

    let other = MasterKey::generate().unwrap();
    let err = open_err(dir.path(), env(&other.to_base64(), None)).await;
    assert!(matches!(err, VaultError::WrongMasterKey { .. }), "{err}");
    // No key file fallback either: the store holds data keys of the env key.
    let err = open_err(dir.path(), KeySource::File).await;
    assert!(matches!(err, VaultError::MissingKeyFile { .. }), "{err}");

    let short = STANDARD.encode([1u8; 31]);
    let err = open_err(dir.path(), env(&short, None)).await;
    let msg = err.to_string();
    assert!(
        msg.contains("PADDOCK_MASTER_KEY") && msg.contains("got 31"),
        "{msg}"
    );
    let err = open_err(dir.path(), env("definitely not base64", None)).await;
    assert!(err.to_string().contains("base64"), "{err}");
}

#[tokio::test]
async fn an_environment_key_is_rotated_with_the_previous_key() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        MasterKey::generate().unwrap(),
        MasterKey::generate().unwrap(),
    );
    let (a, b) = (scope("org_a", "ws_a"), scope("org_b", "ws_b"));
    {
        let (_store, vault) = open_with(dir.path(), env(&old.to_base64(), None))
            .await
            .unwrap();
        vault.put(&a, "one", "value-one").await.unwrap();
        vault.put(&b, "two", "value-two").await.unwrap();
    }
    {
        let (store, vault) = open_with(dir.path(), env(&new.to_base64(), Some(&old.to_base64())))
            .await
            .unwrap();
        for (_, k) in store.all_data_keys().await.unwrap() {
            assert_eq!(k.master_key_id, new.id());
        }
        assert_eq!(
            vault.get(&b, "two").await.unwrap().unwrap().expose(),
            "value-two"
        );
    }
    // The previous key can go now; and it alone no longer opens anything.
    let (_store, vault) = open_with(dir.path(), env(&new.to_base64(), None))
        .await
        .unwrap();
    assert_eq!(
        vault.get(&a, "one").await.unwrap().unwrap().expose(),
        "value-one"
    );
    drop((_store, vault));
    let err = open_err(dir.path(), env(&old.to_base64(), None)).await;
    assert!(matches!(err, VaultError::WrongMasterKey { .. }), "{err}");
}

fn by_workspace(keys: Vec<(Scope, DataKeyRecord)>) -> BTreeMap<String, DataKeyRecord> {
    keys.into_iter()
        .map(|(s, k)| (format!("{}/{}/{}", s.org, s.workspace, k.key_id), k))
        .collect()
}

#[tokio::test]
async fn rotation_rewraps_every_data_key_and_keeps_every_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let (store, vault) = open(dir.path()).await;
    let scopes = [
        scope("org_a", "ws_1"),
        scope("org_a", "ws_2"),
        scope("org_b", "ws_1"),
    ];
    for (i, s) in scopes.iter().enumerate() {
        for j in 0..3 {
            vault
                .put(s, &format!("s{j}"), &format!("value-{i}-{j}"))
                .await
                .unwrap();
        }
    }
    let old_text = std::fs::read_to_string(&path).unwrap();
    let keys_before = by_workspace(store.all_data_keys().await.unwrap());
    let mut secrets_before = Vec::new();
    for s in &scopes {
        secrets_before.push(store.all_secrets(s).await.unwrap());
    }

    let report = vault.rotate_master_key().await.unwrap();
    assert_eq!(report.workspaces, 3);
    assert_eq!(report.data_keys, 3);
    assert_ne!(report.old_master_key_id, report.new_master_key_id);
    assert_eq!(vault.master_key_id().await, report.new_master_key_id);

    // Ciphertexts untouched; every data key rewrapped by the new key.
    for (s, before) in scopes.iter().zip(&secrets_before) {
        assert_eq!(&store.all_secrets(s).await.unwrap(), before);
    }
    let keys_after = by_workspace(store.all_data_keys().await.unwrap());
    assert_eq!(keys_after.len(), keys_before.len());
    for (id, after) in &keys_after {
        let before = &keys_before[id];
        assert_eq!(before.master_key_id, report.old_master_key_id);
        assert_eq!(after.master_key_id, report.new_master_key_id);
        assert_ne!(after.wrapped, before.wrapped);
        assert_ne!(after.nonce, before.nonce);
        assert_eq!(after.created_at, before.created_at);
    }
    // The key file holds the new key, privately, and the old one is gone.
    let new_text = std::fs::read_to_string(&path).unwrap();
    assert_ne!(new_text, old_text);
    assert_eq!(
        MasterKey::from_base64(&new_text).unwrap().id(),
        report.new_master_key_id
    );
    assert_eq!(mode(&path), 0o600);
    assert_eq!(key_files(dir.path()), ["master.key"]);

    // Readable now and after a restart; new secrets use the new key too.
    for (i, s) in scopes.iter().enumerate() {
        assert_eq!(
            vault.get(s, "s1").await.unwrap().unwrap().expose(),
            format!("value-{i}-1")
        );
    }
    vault
        .put(&scopes[0], "after", "written-after")
        .await
        .unwrap();
    vault
        .put(&scope("org_c", "ws_new"), "fresh", "fresh-value")
        .await
        .unwrap();
    drop((store, vault));
    let (_store, vault) = open(dir.path()).await;
    for (i, s) in scopes.iter().enumerate() {
        assert_eq!(
            vault.get(s, "s2").await.unwrap().unwrap().expose(),
            format!("value-{i}-2")
        );
    }
    assert_eq!(
        vault
            .get(&scope("org_c", "ws_new"), "fresh")
            .await
            .unwrap()
            .unwrap()
            .expose(),
        "fresh-value"
    );
    drop((_store, vault));

    // The old key opens nothing any more.
    let err = open_err(dir.path(), env(&old_text, None)).await;
    assert!(matches!(err, VaultError::WrongMasterKey { .. }), "{err}");
}

#[tokio::test]
async fn rotating_an_empty_vault_works() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, vault) = open(dir.path()).await;
    let report = vault.rotate_master_key().await.unwrap();
    assert_eq!((report.workspaces, report.data_keys), (0, 0));
    assert_eq!(vault.master_key_id().await, report.new_master_key_id);
    vault
        .put(&Scope::default_workspace(), "a", "value-a")
        .await
        .unwrap();
}

/// What a crash leaves between replacing `master.key` and committing the rewrap, made by hand:
/// the new key in `master.key`, the old one in `master.key.old`, the database still on the old.
/// The next start uses the old key to finish the rotation. Stray temporary files go too.
#[tokio::test]
async fn a_start_after_an_interrupted_rotation_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let s = Scope::default_workspace();
    let old_id = {
        let (_store, vault) = open(dir.path()).await;
        vault.put(&s, "token", "value-1234").await.unwrap();
        vault.master_key_id().await
    };
    std::fs::rename(&path, dir.path().join("master.key.old")).unwrap();
    let new = MasterKey::generate().unwrap();
    std::fs::write(&path, format!("{}\n", new.to_base64().as_str())).unwrap();
    set_mode(&path, 0o600);
    std::fs::write(dir.path().join(".master.key.tmp"), "half-written").unwrap();

    let (store, vault) = open(dir.path()).await;
    assert_eq!(vault.master_key_id().await, new.id());
    assert_ne!(new.id(), old_id);
    for (_, k) in store.all_data_keys().await.unwrap() {
        assert_eq!(k.master_key_id, new.id());
    }
    assert_eq!(
        vault.get(&s, "token").await.unwrap().unwrap().expose(),
        "value-1234"
    );
    assert_eq!(key_files(dir.path()), ["master.key"]);
}
