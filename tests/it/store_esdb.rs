//! The event store contract on EventStoreDB (the same suite as SQLite's and PostgreSQL's), against
//! the stand-in of `crate::esdb` (or the real server of `MESHGATE_ESDB_URL`), and what only this
//! backend has to show: a decision in the log but not yet in its streams is copied by whoever comes
//! next, an append whose answer was lost is recognised when sent again, and two gateways on one
//! server keep one log.

use std::sync::Arc;

use eventstore::{AppendToStreamOptions, Client, EventData, ExpectedRevision, ReadStreamOptions, StreamPosition};
use meshgate::store::eventstoredb::{EventStoreDbOptions, EventStoreDbStore};
use meshgate::store::{EventStore, StoreError};
use meshgate_domain::ExpectedVersion;

use crate::store::{append, contract, one_request_names_a_stream_twice, two_stores_keep_one_log};

/// A prefix no other test uses, so tests can share one real server.
pub use crate::helpers::fresh_prefix;

async fn open(url: &str, prefix: &str) -> Arc<dyn EventStore> {
    let options = EventStoreDbOptions { prefix: prefix.to_owned(), ..EventStoreDbOptions::default() };
    Arc::new(EventStoreDbStore::open(url, options).await.unwrap())
}

/// Every event id of an EventStoreDB stream, in order.
async fn ids_in(client: &Client, stream: &str) -> Vec<uuid::Uuid> {
    let mut read = client.read_stream(stream, &ReadStreamOptions::default()).await.unwrap();
    let mut ids = Vec::new();
    loop {
        match read.next().await {
            Ok(Some(e)) => ids.push(e.get_original_event().id),
            Ok(None) | Err(eventstore::Error::ResourceNotFound) => return ids,
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn the_eventstoredb_store_keeps_the_contract() {
    let server = crate::esdb::server().await;
    contract(open(&server.url, &fresh_prefix()).await).await;
}

#[tokio::test]
async fn a_request_may_name_one_stream_twice() {
    let server = crate::esdb::server().await;
    one_request_names_a_stream_twice(open(&server.url, &fresh_prefix()).await).await;
}

#[tokio::test]
async fn every_event_is_in_the_log_and_in_its_own_stream_with_its_id() {
    let server = crate::esdb::server().await;
    let prefix = fresh_prefix();
    let store = open(&server.url, &prefix).await;
    let decision =
        vec![append("delivery-x", ExpectedVersion::NoStream, 1), append("build-y", ExpectedVersion::NoStream, 2)];
    let ids: Vec<_> = decision.iter().flat_map(|a| a.events.iter().map(|e| e.id)).collect();
    store.append(decision).await.unwrap();
    let client = Client::new(server.url.parse().unwrap()).unwrap();
    assert_eq!(ids_in(&client, &format!("{prefix}log")).await, ids);
    assert_eq!(ids_in(&client, &format!("{prefix}delivery-x")).await, ids[..1]);
    assert_eq!(ids_in(&client, &format!("{prefix}build-y")).await, ids[1..]);
    let build = store.read_stream("build-y").await.unwrap();
    assert_eq!(build.iter().map(|e| (e.position, e.version)).collect::<Vec<_>>(), [(2, 0), (3, 1)]);
}

#[tokio::test]
async fn a_reopened_eventstoredb_store_continues_positions_and_versions() {
    let server = crate::esdb::server().await;
    let prefix = fresh_prefix();
    open(&server.url, &prefix).await.append(vec![append("s", ExpectedVersion::NoStream, 3)]).await.unwrap();
    let store = open(&server.url, &prefix).await;
    assert_eq!(*store.head().borrow(), 3);
    assert_eq!(store.append(vec![append("s", ExpectedVersion::Exact(2), 1)]).await.unwrap().last_position, 4);
}

#[tokio::test]
async fn a_decision_in_the_log_but_not_in_its_streams_is_copied_by_the_next_gateway() {
    let server = crate::esdb::server().await;
    let prefix = fresh_prefix();
    let store = open(&server.url, &prefix).await;
    store.append(vec![append("a", ExpectedVersion::NoStream, 1)]).await.unwrap();
    let first = store.read_all(0, 1).await.unwrap().remove(0);
    drop(store);

    // What a gateway killed between its append to the log and its copies leaves: the decision
    // whole in the log (version 1 of `a`, version 0 of `b`), in neither stream.
    let client = Client::new(server.url.parse().unwrap()).unwrap();
    let decision = [("a", 1), ("b", 0)].map(|(stream, version)| {
        let meta = serde_json::json!({
            "stream": stream, "version": version, "schemaVersion": first.schema_version,
            "correlationId": first.correlation_id, "recordedAt": first.recorded_at, "decision": 2,
        });
        EventData::json(&first.event_type, &serde_json::from_str::<serde_json::Value>(&first.data).unwrap())
            .unwrap()
            .id(uuid::Uuid::now_v7())
            .metadata(serde_json::to_vec(&meta).unwrap().into())
    });
    let options = AppendToStreamOptions::default().expected_revision(ExpectedRevision::Exact(0));
    client.append_to_stream(format!("{prefix}log"), &options, decision.to_vec()).await.unwrap();
    assert_eq!(ids_in(&client, &format!("{prefix}a")).await.len(), 1);

    let store = open(&server.url, &prefix).await;
    assert_eq!(store.read_stream("a").await.unwrap().iter().map(|e| e.position).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(store.read_stream("b").await.unwrap().iter().map(|e| e.position).collect::<Vec<_>>(), [3]);
    let log = store.read_all(0, 10).await.unwrap();
    assert_eq!(ids_in(&client, &format!("{prefix}b")).await, [log[2].id]);
    // The versions the copies gave are the ones every later decision is checked against.
    assert!(matches!(
        store.append(vec![append("b", ExpectedVersion::NoStream, 1)]).await,
        Err(StoreError::Conflict { actual: Some(0), .. })
    ));
    store.append(vec![append("b", ExpectedVersion::Exact(0), 1)]).await.unwrap();
}

#[tokio::test]
async fn an_append_whose_answer_was_lost_is_recognised_when_sent_again() {
    let server = crate::esdb::server().await;
    let Some(stand_in) = &server.stand_in else { return };
    let store = open(&server.url, &fresh_prefix()).await;
    store.append(vec![append("a", ExpectedVersion::NoStream, 1)]).await.unwrap();
    stand_in.lose_answers(1);
    let appended = store.append(vec![append("b", ExpectedVersion::NoStream, 2)]).await.unwrap();
    assert_eq!(appended.last_position, 3);
    let log = store.read_all(0, 10).await.unwrap();
    assert_eq!(log.iter().map(|e| e.position).collect::<Vec<_>>(), [1, 2, 3], "written once");
    assert_eq!(store.read_stream("b").await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_server_keep_one_log() {
    let server = crate::esdb::server().await;
    let prefix = fresh_prefix();
    let (a, b) = (open(&server.url, &prefix).await, open(&server.url, &prefix).await);
    two_stores_keep_one_log(&a, &b, 20).await;
}

#[tokio::test]
async fn a_stream_written_by_something_else_is_reported_not_overwritten() {
    let server = crate::esdb::server().await;
    let prefix = fresh_prefix();
    let client = Client::new(server.url.parse().unwrap()).unwrap();
    let stranger = EventData::json("Stranger", &serde_json::json!({})).unwrap();
    client.append_to_stream(format!("{prefix}a"), &AppendToStreamOptions::default(), stranger).await.unwrap();
    let store = open(&server.url, &prefix).await;
    let refused = store.append(vec![append("a", ExpectedVersion::NoStream, 1)]).await.unwrap_err();
    assert!(refused.to_string().contains("no meshgate metadata"), "{refused}");
    let options = ReadStreamOptions::default().position(StreamPosition::Start);
    assert!(client.read_stream(format!("{prefix}log"), &options).await.unwrap().next().await.is_err());
}

/// The type of every event of the log, and whether its stream holds it at its version.
async fn copies(url: &str, prefix: &str) -> Vec<(String, bool)> {
    let client = Client::new(url.parse().unwrap()).unwrap();
    let mut read = client.read_stream(format!("{prefix}log"), &ReadStreamOptions::default()).await.unwrap();
    let mut found = Vec::new();
    while let Ok(Some(e)) = read.next().await {
        let recorded = e.get_original_event();
        let meta: serde_json::Value = serde_json::from_slice(&recorded.custom_metadata).unwrap();
        let stream = format!("{prefix}{}", meta["stream"].as_str().unwrap());
        let version = meta["version"].as_u64().unwrap() as usize;
        let copied = ids_in(&client, &stream).await.get(version) == Some(&recorded.id);
        found.push((recorded.event_type.clone(), copied));
    }
    found
}

/// A gateway killed with SIGKILL between the appends of one decision (after the log, before its
/// streams; after the first stream's copy), at a failpoint of the store adapter: after a restart
/// the decision is whole in every stream, the sender's resend folds into the build it made, and
/// the read model rebuilds to what the gateway kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_between_the_appends_of_a_decision_leaves_nothing_half_recorded() {
    use std::io::{BufRead, BufReader};
    let server = crate::esdb::server().await;
    for failpoint in ["eventstoredb-after-log-append", "eventstoredb-after-first-copy"] {
        let dir = tempfile::tempdir().unwrap();
        let prefix = fresh_prefix();
        let mut config = crate::helpers::test_config(dir.path(), vec![crate::helpers::ios_trigger()]);
        let url_file = dir.path().join("esdb.url");
        crate::pki::write_private(&url_file, &server.url);
        config.store.backend = meshgate::config::StoreBackend::EventStoreDb;
        config.store.url_file = Some(url_file);
        config.store.stream_prefix = prefix.clone();
        let file = dir.path().join("meshgate.toml");
        std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
        let args = ["--config", file.to_str().unwrap()];

        let mut gateway = crate::process::launch(
            dir.path(),
            &args,
            &[("MESHGATE_FAILPOINT", failpoint)],
            std::process::Stdio::piped(),
        );
        let (reached, at_failpoint) = std::sync::mpsc::channel();
        let stderr = BufReader::new(gateway.child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains("failpoint") && line.contains("reached") {
                    let _ = reached.send(());
                }
            }
        });
        let webhook = crate::process::token(dir.path(), "webhook.token");
        let body = crate::helpers::fixture("mob-issueUpdated-state-building.json");
        let client = reqwest::Client::new();
        let send = |url: String| {
            client
                .post(url)
                .header("X-YouTrack-Token", &webhook)
                .header("Content-Type", "application/json")
                .body(body.clone())
                .send()
        };
        let unanswered = tokio::spawn(send(gateway.url("/youtrack/webhook")));
        tokio::task::spawn_blocking(move || at_failpoint.recv().unwrap()).await.unwrap();
        gateway.child.kill().unwrap(); // SIGKILL, at the failpoint
        gateway.child.wait().unwrap();
        assert!(unanswered.await.unwrap().is_err(), "{failpoint}: the sender got no answer");

        let before = copies(&server.url, &prefix).await;
        assert!(!before.is_empty() && before.iter().any(|(_, copied)| !copied), "{failpoint}: {before:?}");

        // Restarted: the decision is whole everywhere before the gateway answers anything.
        let gateway = crate::process::start(dir.path(), &args, &[]);
        let after = copies(&server.url, &prefix).await;
        assert_eq!(after.len(), before.len(), "{failpoint}");
        assert!(after.iter().all(|(_, copied)| *copied), "{failpoint}: {after:?}");

        // The sender's resend (another URL, a proxy) folds into the build the decision made.
        let answer = send(gateway.url("/youtrack/webhook")).await.unwrap();
        assert_eq!(answer.status(), 200, "{failpoint}");
        let log = copies(&server.url, &prefix).await;
        let requested = log.iter().filter(|(event_type, _)| event_type == "BuildRequested").count();
        assert_eq!(requested, 1, "{failpoint}: one build for one change");
        assert!(log.iter().all(|(_, copied)| *copied), "{failpoint}");
        gateway.stop();
        let verify = std::process::Command::new(crate::process::BIN)
            .args(args)
            .args(["projections", "rebuild", "--verify"])
            .output()
            .unwrap();
        assert!(verify.status.success(), "{failpoint}: {}", String::from_utf8_lossy(&verify.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateway_holds_the_lease_and_another_takes_over_when_it_is_gone() {
    let server = crate::esdb::server().await;
    let prefix = fresh_prefix();
    let options = EventStoreDbOptions {
        prefix: prefix.clone(),
        lease: std::time::Duration::from_millis(1500),
        renew: std::time::Duration::from_millis(300),
        ..EventStoreDbOptions::default()
    };
    let a: Arc<dyn EventStore> = Arc::new(EventStoreDbStore::open(&server.url, options.clone()).await.unwrap());
    let mut leads_a = a.leadership();
    let term = leads_a.wait_for(Option::is_some).await.unwrap().unwrap();
    let b: Arc<dyn EventStore> = Arc::new(EventStoreDbStore::open(&server.url, options).await.unwrap());
    let mut leads_b = b.leadership();
    // B tries several times while A renews: it never leads.
    let tries = tokio::time::timeout(std::time::Duration::from_millis(1200), leads_b.wait_for(Option::is_some));
    assert!(tries.await.is_err(), "two gateways held the lease at once");
    a.append_fenced(vec![append("a", ExpectedVersion::NoStream, 1)], term).await.unwrap();

    // A is gone: B takes over in a new term within the lease, and A's term is fenced off.
    drop(a);
    let next = leads_b.wait_for(Option::is_some).await.unwrap().unwrap();
    assert!(next > term);
    let fenced = b.append_fenced(vec![append("b", ExpectedVersion::NoStream, 1)], term).await.unwrap_err();
    assert!(fenced.to_string().contains("fenced"), "{fenced}");
    b.append_fenced(vec![append("b", ExpectedVersion::NoStream, 1)], next).await.unwrap();
}
