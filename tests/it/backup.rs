//! `meshgate store backup` beside a gateway serving deliveries, and `store restore` into a new
//! folder: the restored gateway holds every delivery acknowledged before the backup began, its
//! read model equals a rebuild, and bad backups or targets are refused with nothing changed.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::helpers::*;
use crate::process::{start, token, write_config, BIN};

fn meshgate(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("--config").arg(config).args(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_into_a_gateway_that_holds_every_acknowledged_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let gateway = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let webhook = token(dir.path(), "webhook.token");
    let client = reqwest::Client::new();
    let building = fixture("mob-issueUpdated-state-building.json");
    let url = gateway.url("/youtrack/webhook");
    let deliver = move |n: usize| {
        let body = with(&building, &json!({"id": format!("MOB-{n}")}));
        let request = client.post(&url).header("X-YouTrack-Token", &webhook);
        async move {
            let answer = request.header("Content-Type", "application/json").body(body).send().await.unwrap();
            assert_eq!(answer.status(), 200);
            answer.json::<Value>().await.unwrap()["correlation_id"].as_str().unwrap().to_owned()
        }
    };
    let mut acknowledged = Vec::new();
    for n in 0..40 {
        acknowledged.push(deliver(n).await);
    }
    // Deliveries go on while the backup is taken.
    let load = {
        let deliver = deliver.clone();
        tokio::spawn(async move {
            for n in 40..160 {
                deliver(n).await;
            }
        })
    };
    let backup_dir = dir.path().join("backup");
    let backed_up = tokio::task::spawn_blocking({
        let (config, backup_dir) = (config.clone(), backup_dir.clone());
        move || meshgate(&config, &["store", "backup", backup_dir.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert!(backed_up.status.success(), "{}", String::from_utf8_lossy(&backed_up.stderr));
    load.await.unwrap();
    gateway.stop();

    // Restored into a new folder, its configuration elsewhere than its working directory.
    let restored = tempfile::tempdir().unwrap();
    let restored_config = write_config(restored.path());
    for name in ["webhook.token", "admin.token", "nodes.token"] {
        std::fs::copy(dir.path().join(name), restored.path().join(name)).unwrap();
    }
    let done = meshgate(&restored_config, &["store", "restore", backup_dir.to_str().unwrap()]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    // Restoring again over it is refused.
    let again = meshgate(&restored_config, &["store", "restore", backup_dir.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a log"));

    let gateway = start(restored.path(), &["--config", restored_config.to_str().unwrap()], &[]);
    let admin = token(restored.path(), "admin.token");
    let client = reqwest::Client::new();
    for correlation in &acknowledged {
        let url = gateway.url(&format!("/api/v1/events?correlation={correlation}&limit=10"));
        let found = answer_of(client.get(url).bearer_auth(&admin)).await;
        let types: Vec<&str> =
            found["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert!(types.contains(&"WebhookReceived") && types.contains(&"BuildRequested"), "{correlation}: {types:?}");
    }
    // Links signed before the backup open on the restored gateway (the same log-link key).
    let key_before = std::fs::read_to_string(dir.path().join("data/secrets/log-links.key")).unwrap();
    let key_after = std::fs::read_to_string(restored.path().join("data/secrets/log-links.key")).unwrap();
    assert_eq!(key_before, key_after);
    gateway.stop();
    let verify = meshgate(&restored_config, &["projections", "rebuild", "--verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}

#[tokio::test]
async fn a_folder_that_is_not_a_backup_or_a_damaged_one_is_refused_and_nothing_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let not_a_backup = dir.path().join("elsewhere");
    std::fs::create_dir_all(&not_a_backup).unwrap();
    let refused = meshgate(&config, &["store", "restore", not_a_backup.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not a meshgate backup"), "{refused:?}");
    assert!(!dir.path().join("data/events.sqlite").exists());

    // A real backup of a log, then damaged.
    let source = tempfile::tempdir().unwrap();
    let source_config = write_config(source.path());
    std::fs::create_dir_all(source.path().join("data")).unwrap();
    crate::stats::seed_history(&source.path().join("data/events.sqlite"), 2).await;
    let backup_dir = source.path().join("backup");
    assert!(meshgate(&source_config, &["store", "backup", backup_dir.to_str().unwrap()]).status.success());
    let busy = meshgate(&source_config, &["store", "backup", backup_dir.to_str().unwrap()]);
    assert!(!busy.status.success() && String::from_utf8_lossy(&busy.stderr).contains("not empty"));
    let log = backup_dir.join("events.sqlite");
    let mut bytes = std::fs::read(&log).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 0xff;
    std::fs::write(&log, bytes).unwrap();
    let damaged = meshgate(&config, &["store", "restore", backup_dir.to_str().unwrap()]);
    assert!(!damaged.status.success());
    assert!(String::from_utf8_lossy(&damaged.stderr).contains("does not match its checksum"), "{damaged:?}");
    assert!(!dir.path().join("data/events.sqlite").exists(), "nothing restored");
}
