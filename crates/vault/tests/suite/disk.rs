//! What reaches the disk: never a plaintext secret, never the master key outside its file.

use super::{open, scope};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file of the folder that holds any of the needles, with which one.
fn leaks(dir: &Path, needles: &[Vec<u8>], skip: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for path in files(dir) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if skip.contains(&name.as_str()) {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for (i, n) in needles.iter().enumerate() {
            if contains(&bytes, n) {
                found.push(format!("{name}: needle {i}"));
            }
        }
    }
    found
}

#[tokio::test]
async fn no_plaintext_reaches_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let canary = "PADDOCK-CANARY-c0ffee-5eb1-4d7a-9f2e-only-in-memory";
    let needles: Vec<Vec<u8>> = vec![
        canary.as_bytes().to_vec(),
        STANDARD.encode(canary).into_bytes(),
        URL_SAFE_NO_PAD.encode(canary).into_bytes(),
        // A distinctive slice, in case something stored it split or truncated.
        b"c0ffee-5eb1-4d7a".to_vec(),
    ];
    let (master_needles, names) = {
        let (store, vault) = open(dir.path()).await;
        let s = scope("org_a", "ws_a");
        vault.put(&s, "canary", canary).await.unwrap();
        vault
            .put(&scope("org_a", "ws_b"), "canary", canary)
            .await
            .unwrap();
        vault.put(&s, "canary", canary).await.unwrap(); // an update, through the WAL again
        assert_eq!(
            vault.get(&s, "canary").await.unwrap().unwrap().expose(),
            canary
        );
        vault.rotate_master_key().await.unwrap();

        // While the store is open, the WAL holds the recent writes.
        let names: Vec<String> = files(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n == "paddock.db-wal"), "{names:?}");
        // Control: the scan does see what is stored in clear (secret names are not secret).
        let control = leaks(dir.path(), &[b"canary".to_vec()], &[]);
        assert!(!control.is_empty(), "the scan found nothing at all");
        assert_eq!(leaks(dir.path(), &needles, &[]), Vec::<String>::new());

        let key_text = std::fs::read_to_string(dir.path().join("master.key")).unwrap();
        let key = STANDARD.decode(key_text.trim()).unwrap();
        let master_needles = vec![key.clone(), key_text.trim().as_bytes().to_vec()];
        assert_eq!(
            leaks(dir.path(), &master_needles, &["master.key"]),
            Vec::<String>::new()
        );
        drop((store, vault));
        (master_needles, names)
    };
    // And after the close has checkpointed the WAL into the database file.
    assert!(names.iter().any(|n| n == "paddock.db"), "{names:?}");
    assert_eq!(leaks(dir.path(), &needles, &[]), Vec::<String>::new());
    assert_eq!(
        leaks(dir.path(), &master_needles, &["master.key"]),
        Vec::<String>::new()
    );
}
