//! The event store contract on PostgreSQL (the same suite as SQLite's), and what only a shared log
//! has to hold: two gateways' writers on one database.

use std::sync::Arc;

use futures_util::future::join_all;
use meshgate::store::postgres::{PostgresOptions, PostgresStore};
use meshgate::store::{EventStore, StoreError};
use meshgate_domain::ExpectedVersion;

use crate::postgres::database;
use crate::store::{append, contract, one_request_names_a_stream_twice, two_stores_keep_one_log};

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
    let first: Arc<dyn EventStore> = Arc::new(PostgresStore::open(&url, options).await.unwrap());
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
