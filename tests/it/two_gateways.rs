//! Two gateways on one PostgreSQL log behave as one: a delivery sent to both starts one build,
//! and each gateway's projections fold the other's appends.

use std::time::Duration;

use futures_util::future::join_all;
use meshgate::config::StoreBackend;
use serde_json::{json, Value};

use crate::helpers::*;

async fn gateway(url: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.store.backend = StoreBackend::Postgres;
    config.store.url = Some(url.to_owned());
    spawn_with(dir, config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_sent_to_two_gateways_on_one_log_starts_one_build() {
    let url = crate::postgres::database().await;
    let (a, b) = (gateway(&url).await, gateway(&url).await);
    let building = fixture("mob-issueUpdated-state-building.json");
    let bodies: Vec<String> = (0..20).map(|n| with(&building, &json!({"id": format!("MOB-{n}")}))).collect();
    // Every body to both at once (two URLs, as a proxy or a second webhook would).
    let answers: Vec<(Value, Value)> =
        join_all(bodies.iter().map(|body| async { tokio::join!(a.deliver(body), b.deliver(body)) })).await;
    for (one, other) in &answers {
        let mut outcomes = [one["outcome"].as_str().unwrap(), other["outcome"].as_str().unwrap()];
        outcomes.sort();
        assert_eq!(outcomes, ["enqueued", "folded"], "{one} {other}");
        assert_eq!(one["build_ids"], other["build_ids"]);
    }

    // Each gateway folds the whole shared log.
    let head = (*a.store().head().borrow()).max(*b.store().head().borrow());
    for app in [&a, &b] {
        assert!(app.state.projections.caught_up_to(head, Duration::from_secs(10)).await);
    }
    let (on_a, on_b) = (a.live().await, b.live().await);
    assert_eq!(on_a.builds.len(), 20);
    assert_eq!(on_a, on_b);
    assert_eq!(on_a, a.rebuilt().await);
}

/// Both gateways with the same chat sink: one line per build and milestone, whichever gateway
/// took the delivery, and still after the gateway that sends them stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leaseholder_sends_and_another_gateway_takes_over_when_it_stops() {
    use crate::stand_in::stand_in;
    use meshgate::config::{ChatConfig, ChatKind};
    let url = crate::postgres::database().await;
    let mut slack = stand_in(vec![]).await;
    let gateway = |url: String, hook: String| async move {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), vec![ios_trigger()]);
        config.store.backend = StoreBackend::Postgres;
        config.store.url = Some(url);
        config.store.lease_seconds = 1;
        let chat = ChatConfig { url: Some(hook), max_attempts: 3, ..ChatConfig::new("team", ChatKind::SlackWebhook) };
        config.chat = vec![chat];
        spawn_with(dir, config).await
    };
    let hook = slack.url("/services/T0/B0/x");
    let (a, b) = (gateway(url.clone(), hook.clone()).await, gateway(url, hook).await);
    let leading = |app: &TestApp| app.store().leadership().borrow().is_some();
    let building = fixture("mob-issueUpdated-state-building.json");
    let issue = |n: usize| with(&building, &json!({"id": format!("MOB-{n}")}));

    for n in 0..10 {
        (if n % 2 == 0 { &a } else { &b }).deliver(&issue(n)).await;
    }
    let mut lines = Vec::new();
    for _ in 0..10 {
        lines.push(slack.next().await.body["text"].as_str().unwrap().to_owned());
    }

    // The sender stops; the other gateway takes over its work within the lease.
    assert!(leading(&a) != leading(&b), "one leaseholder");
    let (leader, other) = if leading(&a) { (a, b) } else { (b, a) };
    leader.shutdown().await;
    for n in 10..20 {
        other.deliver(&issue(n)).await;
    }
    for _ in 0..10 {
        lines.push(slack.next().await.body["text"].as_str().unwrap().to_owned());
    }
    other.wait_for_count("NotificationDelivered", 20).await;
    assert!(slack.received.try_recv().is_err(), "a line was sent twice");
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 20, "one line per build: {lines:?}");
}
