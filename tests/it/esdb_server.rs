//! EventStoreDB as a real server behaves, against the stand-in of `crate::esdb` doing what KurrentDB
//! does: a `MaxAppendSize` (1 MiB), reads of missing streams that end with their trailers after
//! `stream_not_found` (a client that resets them first is counted), answers lost with the append
//! written, every append refused, and a server that goes away mid-append. What is checked: no
//! delivery answered 200 is lost, none answered 503 is recorded twice, and a body the log can never
//! hold is refused at once.

use std::sync::Arc;
use std::time::Duration;

use meshgate::config::StoreBackend;
use meshgate::store::eventstoredb::{EventStoreDbOptions, EventStoreDbStore};
use meshgate::store::EventStore;
use serde_json::{json, Value};

use crate::esdb::Server;
use crate::helpers::*;
use crate::store_esdb::fresh_prefix;

/// A gateway on the stand-in (its own prefix), as `spawn_app` makes one.
async fn gateway(server: &Server, tweak: impl FnOnce(&mut meshgate::config::Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.store.backend = StoreBackend::EventStoreDb;
    config.store.url = Some(server.url.clone());
    config.store.stream_prefix = fresh_prefix();
    tweak(&mut config);
    spawn_with(dir, config).await
}

/// A delivery for `issue` whose description makes the body about `bytes` long.
fn delivery(issue: &str, bytes: usize) -> String {
    let base = with(&fixture("mob-issueUpdated-state-building.json"), &json!({"id": issue, "description": ""}));
    let pad = bytes.saturating_sub(base.len());
    with(&base, &json!({"description": "d".repeat(pad)}))
}

fn stand_in(server: &Server) -> &crate::esdb::StandIn {
    server.stand_in.as_deref().expect("the stand-in (these faults cannot be asked of a real server)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_deliveries_of_six_kilobytes_at_once_are_all_recorded_within_the_servers_append_size() {
    let server = crate::esdb::server().await;
    let app = gateway(&server, |_| {}).await;
    let sent = (0..200).map(|n| {
        let body = delivery(&format!("MOB-{}", 1000 + n), 6 * 1024);
        let app = &app;
        async move { app.post(&body).await.status().as_u16() }
    });
    let statuses = futures_util::future::join_all(sent).await;
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(accepted, 200, "{:?}", statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>());
    assert_eq!(app.count("BuildRequested").await, 200);
    assert_eq!(stand_in(&server).too_large(), 0, "an append passed the server's MaxAppendSize");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_whose_record_cannot_fit_the_log_is_refused_with_413_at_once_and_recorded_nowhere() {
    let server = crate::esdb::server().await;
    let app = gateway(&server, |_| {}).await;
    // Under max_body_bytes (1 MiB), but its decision is over the server's 1 MiB.
    let body = delivery("MOB-1", 1_047_865);
    assert!(body.len() < app.config.webhook.max_body_bytes);
    let head = *app.store().head().borrow();
    let refused = app.post(&body).await;
    assert_eq!(refused.status(), 413);
    let said: Value = refused.json().await.unwrap();
    assert!(said["message"].as_str().unwrap().contains("max_append_bytes"), "{said}");
    assert_eq!(*app.store().head().borrow(), head, "nothing recorded");
    assert_eq!(stand_in(&server).too_large(), 0, "refused before it reached the server");
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["deliveries"]["too_large"], 1);
    // A large body that fits is recorded, beside small ones in the same moment.
    let (large, small) = (delivery("MOB-2", 900 * 1024), delivery("MOB-3", 2048));
    let (a, b) = tokio::join!(app.post(&large), app.post(&small));
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    assert_eq!(app.count("BuildRequested").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_missing_streams_are_read_to_their_end_under_load() {
    let server = crate::esdb::server().await;
    let app = gateway(&server, |_| {}).await;
    // Every new delivery reads streams that do not exist yet (its fingerprint's, its intent's).
    let sent = (0..64).map(|n| {
        let body = delivery(&format!("MOB-{}", 2000 + n), 1500);
        let app = &app;
        async move { app.post(&body).await.status().as_u16() }
    });
    let statuses = futures_util::future::join_all(sent).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // Reads of streams that are not there either, by hand.
    for n in 0..20 {
        assert!(app.store().read_stream(&format!("nothing-{n}")).await.unwrap().is_empty());
        assert!(app.store().read_last(&format!("nothing-{n}")).await.unwrap().is_none());
    }
    // The server ends a not-found read a moment after its answer: every one was let end.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(stand_in(&server).cancelled_reads(), 0, "reads reset before their trailers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_renewed_seldom_and_released_when_its_gateway_stops() {
    let server = crate::esdb::server().await;
    let prefix = fresh_prefix();
    let options = EventStoreDbOptions { prefix: prefix.clone(), ..EventStoreDbOptions::default() };
    let a = Arc::new(EventStoreDbStore::open(&server.url, options.clone()).await.unwrap());
    let mut leads_a = a.leadership();
    leads_a.wait_for(Option::is_some).await.unwrap();
    let b = Arc::new(EventStoreDbStore::open(&server.url, options).await.unwrap());
    let mut leads_b = b.leadership();
    // A holds it for a few seconds: reads by B cost nothing, A's renewals are a few a minute.
    let taken = tokio::time::timeout(Duration::from_secs(3), leads_b.wait_for(Option::is_some)).await.is_err();
    assert!(taken, "two gateways held the lease at once");
    let leases = stand_in(&server).events_of(&format!("{prefix}leader"));
    assert_eq!(leases.len(), 1, "the lease stream grew while nothing changed: {leases:?}");
    // A stops: it lets the lease go, and B takes it long before the lease would have run out.
    let stopped = std::time::Instant::now();
    a.close().await;
    leads_b.wait_for(Option::is_some).await.unwrap();
    assert!(stopped.elapsed() < Duration::from_secs(5), "took {:?}", stopped.elapsed());
    assert_eq!(stand_in(&server).events_of(&format!("{prefix}leader")).len(), 3, "taken, released, taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_connection_drops_after_it_was_written_is_found_and_answered_200() {
    let server = crate::esdb::server().await;
    let app = gateway(&server, |_| {}).await;
    let stand_in = stand_in(&server);
    stand_in.faults_only_on("log");
    // The append is written; its answer is a reset (RESOURCE_EXHAUSTED, as h2 reports it).
    stand_in.lose_answers_with(1, tonic::Code::ResourceExhausted);
    let answer = app.post(&delivery("MOB-1", 1500)).await;
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    assert_eq!(app.count("WebhookReceived").await, 1);
    assert_eq!(app.count("BuildRequested").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_gone_mid_append_answers_503_and_the_delivery_sent_again_is_recorded_once() {
    let server = crate::esdb::server().await;
    let app = gateway(&server, |_| {}).await;
    let stand_in = stand_in(&server);
    stand_in.faults_only_on("log");
    let body = delivery("MOB-1", 1500);
    // Written, then the server is gone before it answers: the outcome cannot be known.
    stand_in.go_down_after_next_write();
    assert_eq!(app.post(&body).await.status(), 503);
    stand_in.set_down(false);
    // Sent again (a proxy, a replay): it is found, folded into the build it made, not made twice.
    let again = app.post(&body).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(app.count("BuildRequested").await, 1);
    let received = app.count("WebhookReceived").await;
    assert_eq!(received, 2, "the first delivery is in the log once, the second beside it");
    assert_eq!(again["outcome"], "folded", "{again}");
    let ids: Vec<_> = app.all_events().await.into_iter().map(|e| e.id).collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an event recorded twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_every_append_gets_503s_and_nothing_is_recorded() {
    let server = crate::esdb::server().await;
    let app = gateway(&server, |_| {}).await;
    let head = *app.store().head().borrow();
    stand_in(&server).refuse_appends(true);
    let started = std::time::Instant::now();
    let answer = app.post(&delivery("MOB-1", 1500)).await;
    assert_eq!(answer.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(30), "answered after {:?}", started.elapsed());
    assert_eq!(*app.store().head().borrow(), head);
    stand_in(&server).refuse_appends(false);
    assert_eq!(app.post(&delivery("MOB-1", 1500)).await.status(), 200);
    assert_eq!(app.count("WebhookReceived").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_max_append_size_is_smaller_than_configured_still_takes_every_delivery_that_fits_it() {
    let server = crate::esdb::server().await;
    stand_in(&server).set_max_append_size(256 * 1024);
    let app = gateway(&server, |_| {}).await;
    let sent = (0..120).map(|n| {
        let body = delivery(&format!("MOB-{}", 3000 + n), 6 * 1024);
        let app = &app;
        async move { app.post(&body).await.status().as_u16() }
    });
    let statuses = futures_util::future::join_all(sent).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(app.count("BuildRequested").await, 120);
    // One that fits max_append_bytes but not the server: refused at once, not retried as 503.
    let refused = app.post(&delivery("MOB-1", 300 * 1024)).await;
    assert_eq!(refused.status(), 413);
    assert_eq!(app.count("BuildRequested").await, 120);
}
