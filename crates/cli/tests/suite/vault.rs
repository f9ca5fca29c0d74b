//! Master-key rotation while `paddock serve` runs: `paddock vault rotate-master-key --server`
//! rewraps every data key without a restart; secrets stay usable, the server keeps its key file
//! in step (a restart opens with the new key), and a non-owner key is refused.

use super::{bin, start};
use paddock_test_support::MockLlm;
use serde_json::{Value, json};
use std::process::Command;

fn rotate(url: &str, key: &str) -> std::process::Output {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PADDOCK_") {
            cmd.env_remove(k);
        }
    }
    cmd.args([
        "vault",
        "rotate-master-key",
        "--server",
        url,
        "--api-key",
        key,
        "--output",
        "json",
    ])
    .output()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_key_rotates_online_and_survives_a_restart() {
    let mock = MockLlm::start(bin(), 0).await;
    let mut server = start(&mock, vec![]).await;
    let api = server.api();
    let put = |name: &str, value: &str| {
        let api = api.clone();
        let (name, value) = (name.to_owned(), value.to_owned());
        async move {
            api.send(
                api.http()
                    .put(api.url(&format!("/v1/secrets/{name}")))
                    .json(&json!({ "value": value })),
            )
            .await
        }
    };
    assert_eq!(put("before", "value-before-rotation").await.status, 201);
    let key_file = server.data_dir().join("master.key");
    let old_key = std::fs::read_to_string(&key_file).unwrap();

    let out = rotate(&server.url(), server.admin_key());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(
        report["old_master_key_id"], report["new_master_key_id"],
        "{report}"
    );
    assert!(report["data_keys"].as_u64().unwrap() >= 1, "{report}");
    assert_ne!(std::fs::read_to_string(&key_file).unwrap(), old_key);
    assert!(!server.data_dir().join("master.key.old").exists());

    // Still serving: writes work, and the server comes back up on the rotated key.
    assert_eq!(put("after", "value-after-rotation").await.status, 201);
    server.restart().await;
    let api = server.api();
    let list = api.get_json("/v1/secrets").await;
    assert_eq!(list.status, 200, "{list:?}");
    let names: Vec<&str> = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["after", "before"]);

    // Only an owner may rotate.
    let r = api
        .post_json("/v1/keys", &json!({"name": "dev", "role": "developer"}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let dev = r.body["secret"].as_str().unwrap();
    let out = rotate(&server.url(), dev);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("403") && err.contains("forbidden"), "{err}");
}
