//! `meshgate store migrate`: a SQLite log copied into PostgreSQL, or into EventStoreDB, as it is,
//! and a gateway started on the copy serving what the original served.

use std::process::Command;
use std::sync::Arc;

use meshgate::config::StoreBackend;
#[cfg(feature = "eventstoredb")]
use meshgate::store::eventstoredb::{EventStoreDbOptions, EventStoreDbStore};
use meshgate::store::postgres::{PostgresOptions, PostgresStore};
use meshgate::store::sqlite::{SqliteStore, WriterOptions};
use meshgate::store::EventStore;
use serde_json::json;

use crate::helpers::*;
use crate::process::{start, token, write_config, BIN};

#[tokio::test]
async fn a_sqlite_log_moves_to_postgres_whole() {
    moves_whole(StoreBackend::Postgres).await;
}

#[cfg(feature = "eventstoredb")]
#[tokio::test]
async fn a_sqlite_log_moves_to_eventstoredb_whole() {
    moves_whole(StoreBackend::EventStoreDb).await;
}

async fn moves_whole(backend: StoreBackend) {
    let source = tempfile::tempdir().unwrap();
    let config = write_config(source.path());
    let gateway = start(source.path(), &["--config", config.to_str().unwrap()], &[]);
    let client = reqwest::Client::new();
    let building = fixture("mob-issueUpdated-state-building.json");
    for n in [1, 2, 3, 1] {
        let answer = client
            .post(gateway.url("/youtrack/webhook"))
            .header("X-YouTrack-Token", token(source.path(), "webhook.token"))
            .header("Content-Type", "application/json")
            .body(with(&building, &json!({"id": format!("MOB-{n}")})))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    gateway.stop();

    // The target: the same gateway's settings, with the log in PostgreSQL or EventStoreDB.
    let target = tempfile::tempdir().unwrap();
    let prefix = crate::helpers::fresh_prefix();
    let url = match backend {
        #[cfg(feature = "eventstoredb")]
        StoreBackend::EventStoreDb => crate::esdb::server().await.url,
        _ => crate::postgres::database().await,
    };
    for name in ["webhook.token", "admin.token", "nodes.token"] {
        std::fs::copy(source.path().join(name), target.path().join(name)).unwrap();
    }
    crate::pki::write_private(&target.path().join("log.url"), &url);
    let toml = std::fs::read_to_string(&config).unwrap()
        + &format!(
            "\n[store]\nbackend = \"{}\"\nurl_file = \"log.url\"\nstream_prefix = \"{prefix}\"\n",
            backend.name()
        );
    let target_config = target.path().join("meshgate.toml");
    std::fs::write(&target_config, toml).unwrap();

    let migrate = || {
        Command::new(BIN)
            .args(["--config", config.to_str().unwrap(), "store", "migrate", "--to-config"])
            .arg(&target_config)
            .output()
            .unwrap()
    };
    let moved = migrate();
    assert!(moved.status.success(), "{}", String::from_utf8_lossy(&moved.stderr));
    assert!(
        String::from_utf8_lossy(&moved.stdout).starts_with("copied 14 events"),
        "{}",
        String::from_utf8_lossy(&moved.stdout)
    );
    let again = migrate();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"), "{}", String::from_utf8_lossy(&again.stderr));

    // Event for event, field for field.
    let original: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(&source.path().join("data/events.sqlite"), WriterOptions::default()).unwrap());
    let copy: Arc<dyn EventStore> = match backend {
        #[cfg(feature = "eventstoredb")]
        StoreBackend::EventStoreDb => {
            let options = EventStoreDbOptions { prefix, ..EventStoreDbOptions::default() };
            Arc::new(EventStoreDbStore::open(&url, options).await.unwrap())
        }
        _ => Arc::new(PostgresStore::open(&url, PostgresOptions::default()).await.unwrap()),
    };
    assert_eq!(read_everything(copy.as_ref()).await, read_everything(original.as_ref()).await);
    drop(copy);

    // A gateway on the copy serves the same builds; a copy of a delivery still folds.
    let gateway = start(target.path(), &["--config", target_config.to_str().unwrap()], &[]);
    let builds =
        answer_of(client.get(gateway.url("/api/v1/builds")).bearer_auth(token(target.path(), "admin.token"))).await;
    assert_eq!(builds["builds"].as_array().unwrap().len(), 3, "{builds}");
    let copy = with(&building, &json!({"id": "MOB-2", "timestamp": "2026-08-24T23:00:00.000Z"}));
    let answer = answer_of(
        client
            .post(gateway.url("/youtrack/webhook"))
            .header("X-YouTrack-Token", token(target.path(), "webhook.token"))
            .header("Content-Type", "application/json")
            .body(copy),
    )
    .await;
    assert_eq!(answer["outcome"], "folded");
    gateway.stop();

    // The operator's commands work on the shared log too: the audit, and a rebuild that then
    // verifies.
    let run = |args: &[&str]| {
        let output = Command::new(BIN).args(["--config", target_config.to_str().unwrap()]).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let audit = run(&["events", "--issue", "MOB-2", "--json"]);
    let types: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        [
            "WebhookReceived",
            "WebhookRouted",
            "IntentActivated",
            "BuildRequested",
            "WebhookReceived",
            "BuildRequestFolded"
        ]
    );
    let requested = audit.lines().find(|l| l.contains("\"BuildRequested\"")).unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(requested).unwrap()["build"], "ios-build #2", "{requested}");
    let text = run(&["events", "--issue", "MOB-2"]);
    assert!(text.lines().any(|l| l.contains("BuildRequested") && l.ends_with("ios-build #2")), "{text}");
    // No gateway runs: the command opens the log; the name comes from the read model it saved.
    let asked = run(&["builds", "rebuild", "ios-build#2"]);
    assert!(asked.starts_with("nothing started: "), "MOB-2's build is still queued: {asked}");
    let rebuilt = run(&["projections", "rebuild"]);
    assert!(rebuilt.starts_with("rebuilt the read model from 16 events"), "{rebuilt}");
    assert!(run(&["projections", "rebuild", "--verify"]).contains("the read model matches the log"));
}
