//! `paddock audit verify --data-dir` against a live server's data folder: ok while the chain is
//! intact, non-zero naming the first broken entry once an entry is edited in the database.

use super::{bin, start};
use paddock_test_support::MockLlm;
use serde_json::json;
use std::process::Command;

fn paddock(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PADDOCK_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_verify_finds_an_edited_entry_in_a_live_data_folder() {
    let mock = MockLlm::start(bin(), 0).await;
    let server = start(&mock, vec![]).await;
    let api = server.api();
    for name in ["one", "two", "three"] {
        let r = api
            .send(
                api.http()
                    .put(api.url(&format!("/v1/secrets/{name}")))
                    .json(&json!({ "value": "v" })),
            )
            .await;
        assert_eq!(r.status, 201);
    }
    let data = server.data_dir().to_str().unwrap().to_owned();

    let out = paddock(&["audit", "verify", "--data-dir", &data]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The start's `config.changed`, then the three writes.
    assert!(stdout.contains("ok (4 entries)"), "{stdout}");

    // Online, through the API, with the same verdict.
    let url = server.url();
    let online = paddock(&[
        "audit",
        "--server",
        &url,
        "--api-key",
        server.admin_key(),
        "verify",
    ]);
    assert!(
        online.status.success(),
        "{}",
        String::from_utf8_lossy(&online.stderr)
    );
    let list = paddock(&[
        "audit",
        "--server",
        &url,
        "--api-key",
        server.admin_key(),
        "list",
        "--action",
        "secret.written",
    ]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 3);

    // A checkpoint, kept outside, verifies while the chain is intact (online and offline).
    let cp = paddock(&[
        "audit",
        "--server",
        &url,
        "--api-key",
        server.admin_key(),
        "checkpoint",
    ]);
    assert!(
        cp.status.success(),
        "{}",
        String::from_utf8_lossy(&cp.stderr)
    );
    let saved: serde_json::Value = serde_json::from_slice(&cp.stdout).unwrap();
    assert_eq!(saved["seq"], 4, "{saved}");
    let cp_file = server.data_dir().parent().unwrap().join("checkpoint.json");
    std::fs::write(&cp_file, &cp.stdout).unwrap();
    let cp_path = cp_file.to_str().unwrap();
    let held = paddock(&[
        "audit",
        "--server",
        &url,
        "--api-key",
        server.admin_key(),
        "verify",
        "--checkpoint",
        cp_path,
    ]);
    assert!(
        held.status.success(),
        "{}",
        String::from_utf8_lossy(&held.stdout)
    );
    let held = paddock(&[
        "audit",
        "verify",
        "--data-dir",
        &data,
        "--checkpoint",
        cp_path,
    ]);
    assert!(
        held.status.success(),
        "{}",
        String::from_utf8_lossy(&held.stdout)
    );

    // Tamper with entry 2 behind the server's back.
    let db = rusqlite::Connection::open(server.data_dir().join("paddock.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let n = db
        .execute(
            "UPDATE audit SET resource = 'secret/forged' WHERE seq = 2",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(db);

    let out = paddock(&["audit", "verify", "--data-dir", &data]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "tampering went unnoticed: {stdout}");
    assert!(
        stdout.contains("BROKEN at seq 2: hash mismatch"),
        "{stdout}"
    );
    let online = paddock(&[
        "audit",
        "--server",
        &url,
        "--api-key",
        server.admin_key(),
        "--output",
        "json",
        "verify",
    ]);
    assert!(!online.status.success());
    let v: serde_json::Value = serde_json::from_slice(&online.stdout).unwrap();
    assert_eq!(
        v["first_broken"],
        json!({"seq": 2, "reason": "hash mismatch"})
    );

    // Deleting the newest entries leaves a chain that verifies on its own; the checkpoint
    // catches it.
    let db = rusqlite::Connection::open(server.data_dir().join("paddock.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    db.execute("UPDATE audit SET resource = 'secret/one' WHERE seq = 2", [])
        .unwrap();
    db.execute("DELETE FROM audit WHERE seq >= 3", []).unwrap();
    drop(db);
    let out = paddock(&["audit", "verify", "--data-dir", &data]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = paddock(&[
        "audit",
        "verify",
        "--data-dir",
        &data,
        "--checkpoint",
        cp_path,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "truncation went unnoticed: {stdout}");
    assert!(
        stdout.contains("BROKEN at seq 4: checkpoint entry missing"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_a_changed_configuration_is_audited() {
    let mock = MockLlm::start(bin(), 0).await;
    let mut server = start(&mock, vec![]).await;
    let changes = |server: &paddock_test_support::Server| {
        let api = server.api();
        async move {
            let r = api.get_json("/v1/audit?action=config.changed").await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.body["data"].as_array().unwrap().clone()
        }
    };
    let first = changes(&server).await;
    assert_eq!(first.len(), 1, "the first start records its configuration");
    assert_eq!(first[0]["actor"]["kind"], "system");
    // The first start listened on port 0, a restart on the port it got: `listen` changed.
    server.restart().await;
    let second = changes(&server).await;
    assert_eq!(second.len(), 2, "{second:#?}");
    assert_eq!(second[1]["detail"]["changed"], json!(["listen"]));
    // Restarting with the same configuration records nothing.
    server.restart().await;
    assert_eq!(changes(&server).await.len(), 2);
    // A changed section is named, with the previous configuration's hash.
    let mut toml = std::fs::read_to_string(server.config_path()).unwrap();
    toml.push_str("\n[engine]\nlease_secs = 7\n");
    std::fs::write(server.config_path(), toml).unwrap();
    server.restart().await;
    let all = changes(&server).await;
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_eq!(all[2]["detail"]["changed"], json!(["engine"]));
    assert_eq!(
        all[2]["detail"]["previous_sha256"],
        second[1]["detail"]["sha256"]
    );
    assert!(
        !all[2]["detail"].to_string().contains("lease_secs"),
        "values stay out of the trail"
    );
    let v = server.api().get_json("/v1/audit/verify").await;
    assert_eq!(v.body["ok"], true, "{}", v.body);
}
