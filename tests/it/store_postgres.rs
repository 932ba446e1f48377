//! The event store contract on PostgreSQL (the same suite as SQLite's), and what only a shared log
//! has to hold: two gateways' writers on one database.

use std::sync::Arc;

use futures_util::future::join_all;
use meshgate::store::postgres::{PostgresOptions, PostgresStore, APPEND_STATEMENT, WRITER_SESSION};
use meshgate::store::{EventStore, NewEvent, StoreError, StoredEvent, StreamAppend};
use meshgate_domain::ExpectedVersion;

use crate::postgres::database;
use crate::store::{append, contract, event, one_request_names_a_stream_twice, two_stores_keep_one_log};

async fn open(url: &str, max_batch: usize) -> Arc<dyn EventStore> {
    let options = PostgresOptions { max_batch, ..PostgresOptions::default() };
    Arc::new(PostgresStore::open(url, options).await.unwrap())
}

#[tokio::test]
async fn the_postgres_store_with_group_commit_keeps_the_contract() {
    contract(open(&database().await, 512).await).await;
}

#[tokio::test]
async fn the_postgres_store_with_one_commit_per_request_keeps_the_contract() {
    contract(open(&database().await, 1).await).await;
}

#[tokio::test]
async fn a_reopened_postgres_store_continues_positions_and_versions() {
    let url = database().await;
    open(&url, 512).await.append(vec![append("s", ExpectedVersion::NoStream, 3)]).await.unwrap();
    let store = open(&url, 512).await;
    assert_eq!(*store.head().borrow(), 3);
    assert_eq!(store.append(vec![append("s", ExpectedVersion::Exact(2), 1)]).await.unwrap().last_position, 4);
}

#[tokio::test]
async fn an_event_id_is_appended_once() {
    let store = open(&database().await, 512).await;
    let first = append("d", ExpectedVersion::Any, 2);
    store.append(vec![first.clone()]).await.unwrap();
    let again = store.append(vec![first]).await.unwrap_err();
    assert!(matches!(&again, StoreError::Failed { message, .. } if message.contains("already in the log")), "{again}");
    assert_eq!(store.read_stream("d").await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_database_keep_one_log() {
    let url = database().await;
    let (a, b) = (open(&url, 512).await, open(&url, 512).await);
    two_stores_keep_one_log(&a, &b, 30).await;
}

/// A gateway's followers fold some event types only: of another gateway's commits it reads those,
/// and its feed still covers every position, so its followers see no gap. Its own commit may come
/// whole, as its writer made it, or read from the log with the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_reads_of_anothers_commits_only_the_types_it_follows() {
    let url = database().await;
    let a = open(&url, 512).await;
    let poll = std::time::Duration::from_millis(100);
    let options = PostgresOptions { followed: Some(vec!["BuildCancelled"]), poll, ..PostgresOptions::default() };
    let b: Arc<dyn EventStore> = Arc::new(PostgresStore::open(&url, options).await.unwrap());
    let mut feed = b.committed().unwrap();
    let other = |stream: &str, n: u128| StreamAppend {
        stream: stream.into(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent { event_type: "WebhookIgnored", ..event(n) }],
    };
    a.append(vec![append("kept", ExpectedVersion::Any, 1), other("left", 1)]).await.unwrap();
    a.append(vec![other("left", 2), other("left", 3)]).await.unwrap();
    a.append(vec![other("left", 4), append("kept", ExpectedVersion::Any, 2)]).await.unwrap();
    let mut head = b.head();
    // (The value `wait_for` answers holds the head's lock: not kept.)
    let reached = tokio::time::timeout(std::time::Duration::from_secs(10), head.wait_for(|h| *h == 7)).await.is_ok();
    assert!(reached, "b follows a's commits to their head");
    b.append(vec![other("own", 5)]).await.unwrap();
    let log = a.read_all(0, 100).await.unwrap();
    assert_eq!(log.len(), 8);

    let (mut seen, mut through) = (Vec::new(), 0);
    while through < 8 {
        let commit = tokio::time::timeout(std::time::Duration::from_secs(10), feed.recv())
            .await
            .expect("the feed reaches the head")
            .unwrap();
        assert_eq!(commit.after, through, "each commit follows the last");
        seen.extend(commit.events.iter().cloned());
        through = commit.through;
    }
    let followed = |events: &[StoredEvent]| -> Vec<StoredEvent> {
        events.iter().filter(|e| e.event_type == "BuildCancelled").cloned().collect()
    };
    assert_eq!(followed(&seen), followed(&log));
    // Of the rest, only b's own commit may be there: handed on as its writer made it (unless a
    // poll read it from the log first).
    assert!(seen.iter().all(|e| e.event_type == "BuildCancelled" || e.stream == "own"), "{seen:?}");
    assert_eq!(*b.head().borrow(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_appending_at_once_never_share_a_position() {
    let url = database().await;
    let (a, b) = (open(&url, 512).await, open(&url, 512).await);
    let attempts = (0..400).map(|i| {
        let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
        async move {
            store
                .append(vec![
                    append("x", ExpectedVersion::Any, 1),
                    append(&format!("y{i}"), ExpectedVersion::NoStream, 1),
                ])
                .await
        }
    });
    let results = join_all(attempts).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let log = a.read_all(0, 10_000).await.unwrap();
    assert_eq!(log.len(), 800);
}

async fn leader(store: &Arc<dyn EventStore>) -> i64 {
    let mut leading = store.leadership();
    let term = tokio::time::timeout(std::time::Duration::from_secs(20), leading.wait_for(|t| t.is_some()))
        .await
        .expect("a lease in time")
        .unwrap();
    term.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateway_holds_the_lease_and_a_former_leaders_appends_are_fenced() {
    let url = database().await;
    let options = PostgresOptions {
        lease: std::time::Duration::from_secs(1),
        renew: std::time::Duration::from_millis(200),
        ..PostgresOptions::default()
    };
    let first: Arc<dyn EventStore> = Arc::new(PostgresStore::open(&url, options.clone()).await.unwrap());
    let term = leader(&first).await;
    let second: Arc<dyn EventStore> = Arc::new(PostgresStore::open(&url, options).await.unwrap());
    first.append_fenced(vec![append("job", ExpectedVersion::NoStream, 1)], term).await.unwrap();

    // The holder dies: within the lease the other takes over, in a new term.
    drop(first);
    let next = leader(&second).await;
    assert!(next > term, "{next} after {term}");
    let refused = second.append_fenced(vec![append("job", ExpectedVersion::Exact(0), 1)], term).await.unwrap_err();
    assert!(refused.to_string().contains("fenced"), "{refused}");
    second.append_fenced(vec![append("job", ExpectedVersion::Exact(0), 1)], next).await.unwrap();
    assert_eq!(second.read_stream("job").await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_request_may_name_one_stream_twice() {
    one_request_names_a_stream_twice(open(&database().await, 512).await).await;
}

#[tokio::test]
async fn a_batch_past_the_savepoint_limit_refuses_only_the_request_already_in_the_log() {
    let store = open(&database().await, 512).await;
    let first = append("seen", ExpectedVersion::Any, 1);
    store.append(vec![first.clone()]).await.unwrap();
    // Sent at once, so that they meet in batches larger than one transaction's savepoints.
    let requests = (0..150).map(|i| {
        let store = Arc::clone(&store);
        let append = if i == 75 { first.clone() } else { append(&format!("n{i}"), ExpectedVersion::NoStream, 1) };
        async move { store.append(vec![append]).await }
    });
    let results = join_all(requests).await;
    for (i, result) in results.iter().enumerate() {
        match result {
            Err(StoreError::Failed { message, .. }) if i == 75 => assert!(message.contains("already in the log")),
            Ok(_) if i != 75 => {}
            other => panic!("request {i}: {other:?}"),
        }
    }
    let log = store.read_all(0, 1_000).await.unwrap();
    assert_eq!(log.len(), 150);
    assert!(log.iter().enumerate().all(|(i, e)| e.position == i as u64 + 1), "gap-free");
}

#[tokio::test]
async fn a_batch_whose_expectations_do_not_hold_is_judged_against_the_log() {
    let store = open(&database().await, 512).await;
    store.append(vec![append("s", ExpectedVersion::NoStream, 3)]).await.unwrap();
    // In one batch (sent at once): one request expects `s` further on than it is, the next one
    // where it is, and one opens a new stream.
    let (ahead, right, fresh) = tokio::join!(
        store.append(vec![append("s", ExpectedVersion::Exact(7), 1), append("t", ExpectedVersion::NoStream, 1)]),
        store.append(vec![append("s", ExpectedVersion::Exact(2), 1)]),
        store.append(vec![append("u", ExpectedVersion::NoStream, 1)]),
    );
    match ahead.unwrap_err() {
        StoreError::Conflict { stream, expected: ExpectedVersion::Exact(7), actual } => {
            assert_eq!(stream, "s");
            assert!(matches!(actual, Some(2) | Some(3)), "{actual:?}");
        }
        other => panic!("{other:?}"),
    }
    right.unwrap();
    fresh.unwrap();
    assert_eq!(store.read_stream("s").await.unwrap().len(), 4);
    assert!(store.read_stream("t").await.unwrap().is_empty(), "a refused request writes nothing");
    assert_eq!(*store.head().borrow(), 5);
}

/// The writer's append is planned for the log as it stands. A prepared statement is planned once
/// for all after its fifth execution; planned while the table was nearly empty, the check of a
/// batch's expected versions scanned the whole table at every append (found by the shared-log
/// benchmark: appends slowed down as the log grew, to a sixth of the rate). Here the statement
/// runs in a session set up as the writer's, on a table that grows after its first executions.
#[tokio::test]
async fn the_append_finds_streams_through_the_index_however_the_log_has_grown() {
    let url = database().await;
    drop(PostgresStore::open(&url, PostgresOptions::default()).await.unwrap());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    // No statistics but the table's size, as before autovacuum first looks at a new log.
    client.batch_execute("ALTER TABLE meshgate_events SET (autovacuum_enabled = false)").await.unwrap();
    client.batch_execute(WRITER_SESSION).await.unwrap();
    client.batch_execute(&format!("PREPARE append AS {APPEND_STATEMENT}")).await.unwrap();
    // (stream, version, …) of the events; then the streams expected, their versions, whether written.
    let execute = |events: &[(String, i64)], expected: &[(String, i64)]| {
        let list = |items: Vec<String>, cast: &str| format!("ARRAY[{}]::{cast}[]", items.join(","));
        let n = events.len();
        let texts = |v: &[(String, i64)]| v.iter().map(|(s, _)| format!("'{s}'")).collect::<Vec<_>>();
        let numbers = |v: &[(String, i64)]| v.iter().map(|(_, n)| n.to_string()).collect::<Vec<_>>();
        let repeat = |value: &str| vec![value.to_owned(); n];
        format!(
            "append({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, ARRAY[]::bigint[])",
            list(texts(events), "text"),
            list(numbers(events), "bigint"),
            list(repeat("gen_random_uuid()"), "uuid"),
            list(repeat("'BuildCancelled'"), "text"),
            list(repeat("1"), "integer"),
            list(repeat("repeat('x', 1500)"), "text"),
            list(repeat("gen_random_uuid()"), "uuid"),
            list(repeat("NULL"), "uuid"),
            list(repeat("now()"), "timestamptz"),
            list(texts(expected), "text"),
            list(numbers(expected), "bigint"),
            list(vec!["true".to_owned(); expected.len()], "boolean"),
        )
    };
    let run = |sql: String| {
        let client = &client;
        async move {
            client
                .batch_execute(&format!(
                    "BEGIN; SELECT last FROM meshgate_head WHERE id = 1 FOR UPDATE; EXECUTE {sql}; COMMIT"
                ))
                .await
                .unwrap()
        }
    };
    // Executed while the table is nearly empty, past the fifth time...
    for i in 0..8 {
        let stream = (format!("early{i}"), 0);
        run(execute(std::slice::from_ref(&stream), &[(stream.0.clone(), -1)])).await;
    }
    // ... then the log grows to thousands of pages.
    for chunk in 0..10 {
        let events: Vec<(String, i64)> = (0..500).map(|i| (format!("s{}", chunk * 500 + i), 0)).collect();
        let expected: Vec<(String, i64)> = events.iter().map(|(s, _)| (s.clone(), -1)).collect();
        run(execute(&events, &expected)).await;
    }
    // A batch appending to existing streams checks their versions through the index.
    let events: Vec<(String, i64)> = (0..100).map(|i| (format!("s{}", i * 50), 1)).collect();
    let expected: Vec<(String, i64)> = events.iter().map(|(s, _)| (s.clone(), 0)).collect();
    let plan = client.simple_query(&format!("EXPLAIN EXECUTE {}", execute(&events, &expected))).await.unwrap();
    let plan: Vec<String> = plan
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert!(plan.iter().any(|line| line.contains("meshgate_events_stream_version_key")), "{plan:#?}");
    assert!(!plan.iter().any(|line| line.contains("Seq Scan on meshgate_events")), "{plan:#?}");
    run(execute(&events, &expected)).await;
    let head: i64 = client.query_one("SELECT last FROM meshgate_head", &[]).await.unwrap().get(0);
    assert_eq!(head, 8 + 5_000 + 100);
}
