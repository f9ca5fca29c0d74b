//! Storing, reading, listing and deleting secrets; ciphertexts bound to their place.

use super::{open, scope};
use paddock_store::{DynStore, SecretRecord};
use paddock_types::Scope;
use paddock_types::ids::EndUserId;
use paddock_vault::{MAX_SECRET_BYTES, VaultError};

#[tokio::test]
async fn secrets_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, vault) = open(dir.path()).await;
    let s = Scope::default_workspace();

    assert!(vault.get(&s, "token").await.unwrap().is_none());
    let first = vault.put(&s, "token", "ghp_first-value").await.unwrap();
    assert_eq!(
        vault.get(&s, "token").await.unwrap().unwrap().expose(),
        "ghp_first-value"
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = vault.put(&s, "token", "ghp_second-value").await.unwrap();
    assert_eq!(second.created_at, first.created_at);
    assert!(second.updated_at > first.updated_at);
    assert_eq!(
        vault.get(&s, "token").await.unwrap().unwrap().expose(),
        "ghp_second-value"
    );

    // Dotted names (the egress CA key lives as `paddock.egress-ca-key`), unicode values, and
    // exactly the size limit are fine.
    let pem = "-----BEGIN PRIVATE KEY-----\nMIIE…\n-----END PRIVATE KEY-----\n";
    vault.put(&s, "paddock.egress-ca-key", pem).await.unwrap();
    let big = "x".repeat(MAX_SECRET_BYTES);
    vault.put(&s, "big", &big).await.unwrap();
    assert_eq!(vault.get(&s, "big").await.unwrap().unwrap().expose(), big);
    assert_eq!(
        vault
            .get(&s, "paddock.egress-ca-key")
            .await
            .unwrap()
            .unwrap()
            .expose(),
        pem
    );

    let names: Vec<String> = vault
        .list(&s)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["big", "paddock.egress-ca-key", "token"]);

    // An end-user acting in the workspace uses the workspace's secrets.
    let eu = Scope {
        end_user: Some(EndUserId::parse("eu_alice").unwrap()),
        ..s.clone()
    };
    assert_eq!(
        vault.get(&eu, "token").await.unwrap().unwrap().expose(),
        "ghp_second-value"
    );
    // Until it stores its own, which shadows the workspace's for that end-user only.
    vault.put(&eu, "token", "alice-own-token").await.unwrap();
    assert_eq!(
        vault.get(&eu, "token").await.unwrap().unwrap().expose(),
        "alice-own-token"
    );
    assert_eq!(
        vault.get(&s, "token").await.unwrap().unwrap().expose(),
        "ghp_second-value"
    );
    let bob = Scope {
        end_user: Some(EndUserId::parse("eu_bob").unwrap()),
        ..s.clone()
    };
    assert_eq!(
        vault.get(&bob, "token").await.unwrap().unwrap().expose(),
        "ghp_second-value"
    );
    // Alice's runs redact both values; Bob's never learn Alice's.
    let redacted = vault
        .redactor(&eu)
        .await
        .unwrap()
        .redact("alice-own-token ghp_second-value");
    assert!(!redacted.contains("alice-own-token") && !redacted.contains("ghp_second"));
    assert!(vault.delete(&eu, "token").await.unwrap());

    assert!(vault.delete(&s, "token").await.unwrap());
    assert!(!vault.delete(&s, "token").await.unwrap());
    assert!(vault.get(&s, "token").await.unwrap().is_none());
}

#[tokio::test]
async fn bad_names_and_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, vault) = open(dir.path()).await;
    let s = Scope::default_workspace();
    for name in [
        "",
        "1abc",
        "has space",
        "semi;colon",
        "a/b",
        &"a".repeat(129),
    ] {
        assert!(
            matches!(
                vault.put(&s, name, "value").await,
                Err(VaultError::InvalidName(_))
            ),
            "{name:?}"
        );
    }
    let err = vault
        .put(&s, "big", &"x".repeat(MAX_SECRET_BYTES + 1))
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("65537"), "{err}");
    // Nothing was written, not even a data key.
    assert!(store.all_data_keys().await.unwrap().is_empty());
}

#[tokio::test]
async fn workspaces_do_not_see_each_others_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (store, vault) = open(dir.path()).await;
    let (a, b) = (scope("org_a", "ws_a"), scope("org_a", "ws_b"));
    let same_ws_other_org = scope("org_b", "ws_a");
    vault.put(&a, "token", "value-of-a").await.unwrap();
    vault.put(&b, "token", "value-of-b").await.unwrap();
    assert_eq!(
        vault.get(&a, "token").await.unwrap().unwrap().expose(),
        "value-of-a"
    );
    assert_eq!(
        vault.get(&b, "token").await.unwrap().unwrap().expose(),
        "value-of-b"
    );
    assert!(
        vault
            .get(&same_ws_other_org, "token")
            .await
            .unwrap()
            .is_none()
    );
    assert!(vault.list(&same_ws_other_org).await.unwrap().is_empty());
    assert!(vault.delete(&b, "token").await.unwrap());
    assert_eq!(
        vault.get(&a, "token").await.unwrap().unwrap().expose(),
        "value-of-a"
    );
    // One data key per workspace.
    assert_eq!(store.all_data_keys().await.unwrap().len(), 2);
}

async fn copy_row(store: &DynStore, from: (&Scope, &str), to: (&Scope, &str)) {
    let rec = store.get_secret(from.0, from.1).await.unwrap().unwrap();
    store
        .put_secret(
            to.0,
            SecretRecord {
                name: to.1.to_owned(),
                ..rec
            },
        )
        .await
        .unwrap();
}

fn undecryptable(r: Result<Option<paddock_vault::SecretValue>, VaultError>) -> bool {
    matches!(r, Err(VaultError::Undecryptable(_)))
}

/// Someone with write access to the database moves ciphertexts around: none of them opens
/// where it does not belong.
#[tokio::test]
async fn a_ciphertext_moved_to_another_name_or_workspace_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let (store, vault) = open(dir.path()).await;
    let (a, b) = (scope("org_a", "ws_a"), scope("org_a", "ws_b"));
    vault.put(&a, "token", "value-of-a").await.unwrap();
    vault.put(&a, "other", "other-of-a").await.unwrap();
    vault.put(&b, "token", "value-of-b").await.unwrap();

    // Another name in the same workspace (same data key): the name is bound.
    copy_row(&store, (&a, "token"), (&a, "other")).await;
    assert!(undecryptable(vault.get(&a, "other").await));
    copy_row(&store, (&a, "token"), (&a, "stolen")).await;
    assert!(undecryptable(vault.get(&a, "stolen").await));

    // Another workspace, over its own secret of the same name.
    copy_row(&store, (&a, "token"), (&b, "token")).await;
    assert!(undecryptable(vault.get(&b, "token").await));

    // Another workspace, taking the data key along: the wrapped key is bound to its workspace.
    let c = scope("org_a", "ws_c");
    let dk = store.data_keys(&a).await.unwrap().remove(0);
    assert!(store.put_data_key(&c, dk).await.unwrap());
    copy_row(&store, (&a, "token"), (&c, "token")).await;
    assert!(undecryptable(vault.get(&c, "token").await));
    // Same workspace id under another org.
    let a2 = scope("org_b", "ws_a");
    let dk = store.data_keys(&a).await.unwrap().remove(0);
    assert!(store.put_data_key(&a2, dk).await.unwrap());
    copy_row(&store, (&a, "token"), (&a2, "token")).await;
    assert!(undecryptable(vault.get(&a2, "token").await));

    // A redactor is all or nothing: a workspace with a bad secret gets none.
    assert!(matches!(
        vault.redactor(&b).await,
        Err(VaultError::Undecryptable(_))
    ));
    // The untouched secret still opens.
    assert_eq!(
        vault.get(&a, "token").await.unwrap().unwrap().expose(),
        "value-of-a"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_writes_share_one_data_key() {
    let dir = tempfile::tempdir().unwrap();
    let (store, vault) = open(dir.path()).await;
    let vault = std::sync::Arc::new(vault);
    let s = scope("org_a", "ws_new");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let (vault, s) = (std::sync::Arc::clone(&vault), s.clone());
        tasks.spawn(async move {
            vault
                .put(&s, &format!("s{i:02}"), &format!("value-{i}"))
                .await
                .unwrap();
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    assert_eq!(store.data_keys(&s).await.unwrap().len(), 1);
    for i in 0..16 {
        let v = vault.get(&s, &format!("s{i:02}")).await.unwrap().unwrap();
        assert_eq!(v.expose(), format!("value-{i}"));
    }
}
