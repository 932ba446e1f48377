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

/// Delivers 40 changes, then 120 more while `backup` runs; returns the correlation ids of the 40
/// acknowledged before the backup began.
async fn backed_up_under_load(
    gateway: &crate::process::Gateway,
    dir: &Path,
    backup: impl FnOnce() -> std::process::Output + Send + 'static,
) -> Vec<String> {
    let webhook = token(dir, "webhook.token");
    let building = fixture("mob-issueUpdated-state-building.json");
    let (client, url) = (reqwest::Client::new(), gateway.url("/youtrack/webhook"));
    let deliver = move |n: usize| {
        let body = with(&building, &json!({"id": format!("MOB-{n}")}));
        let request = client.post(&url).header("X-YouTrack-Token", &webhook).header("Content-Type", "application/json");
        async move {
            let answer = request.body(body).send().await.unwrap();
            assert_eq!(answer.status(), 200);
            answer.json::<Value>().await.unwrap()["correlation_id"].as_str().unwrap().to_owned()
        }
    };
    let mut acknowledged = Vec::new();
    for n in 0..40 {
        acknowledged.push(deliver(n).await);
    }
    // Deliveries go on while the backup is taken.
    let load = tokio::spawn(async move {
        for n in 40..160 {
            deliver(n).await;
        }
    });
    let backed_up = tokio::task::spawn_blocking(backup).await.unwrap();
    assert!(backed_up.status.success(), "{}", String::from_utf8_lossy(&backed_up.stderr));
    load.await.unwrap();
    acknowledged
}

/// Every delivery in `acknowledged` is in the log `gateway` serves, with the build it requested.
async fn assert_holds(gateway: &crate::process::Gateway, dir: &Path, acknowledged: &[String]) {
    let admin = token(dir, "admin.token");
    let client = reqwest::Client::new();
    for correlation in acknowledged {
        let url = gateway.url(&format!("/api/v1/events?correlation={correlation}&limit=10"));
        let found = answer_of(client.get(url).bearer_auth(&admin)).await;
        let types: Vec<&str> =
            found["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert!(types.contains(&"WebhookReceived") && types.contains(&"BuildRequested"), "{correlation}: {types:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_into_a_gateway_that_holds_every_acknowledged_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let gateway = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let backup_dir = dir.path().join("backup");
    let acknowledged = backed_up_under_load(&gateway, dir.path(), {
        let (config, backup_dir) = (config.clone(), backup_dir.clone());
        move || meshgate(&config, &["store", "backup", backup_dir.to_str().unwrap()])
    })
    .await;
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
    assert_holds(&gateway, restored.path(), &acknowledged).await;
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

/// `meshgate` with the client tools of the tests' PostgreSQL server first on the `PATH`, as a
/// host has its server's own (`pg_dump` refuses a server newer than itself).
fn with_pg_tools(config: &Path, args: &[&str]) -> std::process::Output {
    let path = format!("{}:{}", crate::postgres::bindir().display(), std::env::var("PATH").unwrap_or_default());
    Command::new(BIN).arg("--config").arg(config).args(args).env("PATH", path).output().unwrap()
}

/// A log in PostgreSQL, backed up with `pg_dump` beside a gateway taking deliveries, restored with
/// `pg_restore` into an empty database that a new gateway then serves; a restore into a database
/// that holds a log, or a SQLite backup restored into PostgreSQL, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_log_backed_up_under_load_restores_into_an_empty_database() {
    let dir = tempfile::tempdir().unwrap();
    let toml = std::fs::read_to_string(write_config(dir.path())).unwrap();
    let pg_config = |dir: &Path, url: &str| {
        crate::pki::write_private(&dir.join("log.url"), url);
        let config = dir.join("pg.toml");
        std::fs::write(&config, format!("{toml}\n[store]\nbackend = \"postgres\"\nurl_file = \"log.url\"\n")).unwrap();
        config
    };
    let config = pg_config(dir.path(), &crate::postgres::database().await);
    let gateway = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let backup_dir = dir.path().join("backup");
    let acknowledged = backed_up_under_load(&gateway, dir.path(), {
        let (config, backup_dir) = (config.clone(), backup_dir.clone());
        move || with_pg_tools(&config, &["store", "backup", backup_dir.to_str().unwrap()])
    })
    .await;
    gateway.stop();
    let manifest: Value = serde_json::from_slice(&std::fs::read(backup_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["backend"], "postgres");
    assert!(manifest["files"]["meshgate.dump"].is_string());

    // Restored into a new database, served by a gateway of its own folder.
    let restored = tempfile::tempdir().unwrap();
    write_config(restored.path());
    for name in ["webhook.token", "admin.token", "nodes.token"] {
        std::fs::copy(dir.path().join(name), restored.path().join(name)).unwrap();
    }
    let restored_config = pg_config(restored.path(), &crate::postgres::database().await);
    let done = with_pg_tools(&restored_config, &["store", "restore", backup_dir.to_str().unwrap()]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let again = with_pg_tools(&restored_config, &["store", "restore", backup_dir.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a meshgate log"), "{again:?}");
    let gateway = start(restored.path(), &["--config", restored_config.to_str().unwrap()], &[]);
    assert_holds(&gateway, restored.path(), &acknowledged).await;
    gateway.stop();
    let verify = with_pg_tools(&restored_config, &["projections", "rebuild", "--verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));

    // A SQLite backup is not restored into PostgreSQL.
    let sqlite = tempfile::tempdir().unwrap();
    let sqlite_config = write_config(sqlite.path());
    std::fs::create_dir_all(sqlite.path().join("data")).unwrap();
    crate::stats::seed_history(&sqlite.path().join("data/events.sqlite"), 1).await;
    let sqlite_backup = sqlite.path().join("backup");
    assert!(with_pg_tools(&sqlite_config, &["store", "backup", sqlite_backup.to_str().unwrap()]).status.success());
    let empty = pg_config(sqlite.path(), &crate::postgres::database().await);
    let wrong = with_pg_tools(&empty, &["store", "restore", sqlite_backup.to_str().unwrap()]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("not of a postgres one"), "{wrong:?}");
}
