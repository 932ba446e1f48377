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
        assert!(app.handles.projections.caught_up_to(head, Duration::from_secs(10)).await);
    }
    let (on_a, on_b) = (a.live().await, b.live().await);
    assert_eq!(on_a.builds.len(), 20);
    assert_eq!(on_a, on_b);
    // Numbers come from the shared log: in log order, from 1, no gap, no repeat, the same on both.
    let numbers: Vec<u64> = on_a.builds.iter().map(|b| b.number).collect();
    assert_eq!(numbers, (1..=20).collect::<Vec<u64>>());
    assert_eq!(on_a, a.rebuilt().await);
}

/// Both gateways with the same chat sink: one line per build and milestone, whichever gateway
/// took the delivery, and still after the gateway that sends them stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leaseholder_sends_and_another_gateway_takes_over_when_it_stops() {
    only_the_leaseholder_sends(StoreBackend::Postgres).await;
}

/// The same on one EventStoreDB log (the stand-in), where the lease is a stream of its own.
#[cfg(feature = "eventstoredb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leaseholder_sends_on_eventstoredb_and_another_takes_over_when_it_stops() {
    only_the_leaseholder_sends(StoreBackend::EventStoreDb).await;
}

async fn only_the_leaseholder_sends(backend: StoreBackend) {
    use crate::stand_in::stand_in;
    use meshgate::config::{ChatConfig, ChatKind};
    let url = match backend {
        #[cfg(feature = "eventstoredb")]
        StoreBackend::EventStoreDb => crate::esdb::server().await.url,
        _ => crate::postgres::database().await,
    };
    let prefix = crate::helpers::fresh_prefix();
    let mut slack = stand_in(vec![]).await;
    let gateway = |url: String, hook: String| {
        let prefix = prefix.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let mut config = test_config(dir.path(), vec![ios_trigger()]);
            config.store.backend = backend;
            config.store.url = Some(url);
            config.store.stream_prefix = prefix;
            config.store.lease_seconds = Some(1);
            let chat =
                ChatConfig { url: Some(hook), max_attempts: 3, ..ChatConfig::new("team", ChatKind::SlackWebhook) };
            config.chat = vec![chat];
            spawn_with(dir, config).await
        }
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

/// A lane that runs one build at a time keeps to it when two gateways grant claims at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_cap_holds_across_gateways() {
    let url = crate::postgres::database().await;
    let signing = meshgate_domain::Trigger { lane: "signing".into(), ..ios_trigger() };
    let gateway = |url: String, trigger: meshgate_domain::Trigger| async move {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), vec![trigger]);
        config.store.backend = StoreBackend::Postgres;
        config.store.url = Some(url);
        spawn_with(dir, config).await
    };
    let (a, b) = (gateway(url.clone(), signing.clone()).await, gateway(url, signing).await);
    let building = fixture("mob-issueUpdated-state-building.json");
    for n in 0..6 {
        a.deliver(&with(&building, &json!({"id": format!("MOB-{n}")}))).await;
    }
    let claim = |app: &TestApp, node: &'static str| {
        let token = std::fs::read_to_string(app.config.nodes.token_file.as_ref().unwrap()).unwrap().trim().to_owned();
        let request = app.client.post(app.url("/api/v1/nodes/claim")).bearer_auth(token);
        let body = json!({"node_id": node, "labels": ["signing"], "slots": 4, "wait_seconds": 1});
        async move { request.json(&body).send().await.unwrap() }
    };
    for round in 0..3 {
        let head = (*a.store().head().borrow()).max(*b.store().head().borrow());
        for app in [&a, &b] {
            assert!(app.handles.projections.caught_up_to(head, Duration::from_secs(10)).await);
        }
        let (one, other) = tokio::join!(claim(&a, "mac-a"), claim(&b, "mac-b"));
        let granted: Vec<Value> = join_all([one, other].into_iter().filter(|r| r.status() == 200).map(|r| r.json()))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(granted.len(), 1, "round {round}: the lane runs one build at a time: {granted:?}");
        let build: uuid::Uuid = granted[0]["build"]["build_id"].as_str().unwrap().parse().unwrap();
        let done = meshgate_domain::BuildCommand::Succeed { attempt: 1 };
        a.apply_command(&meshgate_domain::stream::build_stream(build), build, done).await;
    }
}

/// The mechanism under the cap: claims decided on the same version of a lane's stream cannot
/// both land, even for different builds (two gateways whose views of the queue differ).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_decided_on_one_version_of_a_lane_land_once() {
    use meshgate::builds::CommandError;
    use meshgate::store::{NewEvent, StreamAppend};
    use meshgate_domain::event::LaneClaimed;
    use meshgate_domain::{BuildCommand, Event, ExpectedVersion};
    let url = crate::postgres::database().await;
    let (a, b) = (gateway(&url).await, gateway(&url).await);
    let building = fixture("mob-issueUpdated-state-building.json");
    let first = build_id(&a.deliver(&with(&building, &json!({"id": "MOB-1"}))).await);
    let second = build_id(&b.deliver(&with(&building, &json!({"id": "MOB-2"}))).await);
    let guard = |build_id, node: &str| StreamAppend {
        stream: meshgate_domain::stream::lane_stream("signing"),
        expected: ExpectedVersion::NoStream,
        events: vec![NewEvent::from_domain(
            &Event::LaneClaimed(LaneClaimed { lane: "signing".into(), build_id, node_id: node.into(), attempt: 1 }),
            uuid::Uuid::now_v7(),
            None,
            chrono::Utc::now(),
        )],
    };
    let claim = |node: &str| BuildCommand::Claim { node_id: node.into(), lease_expires_at: chrono::Utc::now() };
    let id = uuid::Uuid::now_v7();
    a.handles.builds.claim_guarded(first, id, &claim("mac-a"), guard(first, "mac-a")).await.unwrap();
    let refused = b.handles.builds.claim_guarded(second, id, &claim("mac-b"), guard(second, "mac-b")).await;
    assert!(matches!(refused, Err(CommandError::Store(meshgate::store::StoreError::Contention { .. }))), "{refused:?}");
    assert_eq!(a.store().read_stream(&meshgate_domain::stream::build_stream(second)).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_session_opened_on_one_gateway_is_honoured_by_the_other_and_ends_with_its_token() {
    let url = crate::postgres::database().await;
    // Each from a configuration file, so a reload reads it again.
    let configured = |dir: &std::path::Path| {
        let mut config = test_config(dir, vec![ios_trigger()]);
        config.store.backend = StoreBackend::Postgres;
        config.store.url = Some(url.clone());
        config
    };
    let written = |dir: &std::path::Path, mut config: meshgate::config::Config| {
        let path = dir.join("meshgate.toml");
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        config.file = Some(path);
        config
    };
    let dir = tempfile::tempdir().unwrap();
    let config = written(dir.path(), configured(dir.path()));
    let first = spawn_with(dir, config).await;
    // The second shares the first's admin token file and log-link key, as docs/operations.md says.
    let dir = tempfile::tempdir().unwrap();
    let mut config = configured(dir.path());
    config.admin.token_file = first.config.admin.token_file.clone();
    meshgate::secrets::private_dir(&config.secrets_dir()).unwrap();
    let key = std::fs::read_to_string(first.config.log_link_key_file()).unwrap();
    meshgate::secrets::write_token_file(&config.log_link_key_file(), key.trim(), 0o400).unwrap();
    let config = written(dir.path(), config);
    let second = spawn_with(dir, config).await;

    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let signed_in =
        browser.post(first.url("/ui/login")).form(&[("token", first.admin_token.as_str())]).send().await.unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let csrf = answer_of(second.client.get(second.url("/ui/session")).header("cookie", &cookie)).await["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    // Reads and changes on the other gateway, with the session and its CSRF token.
    let read = second.client.get(second.url("/api/v1/builds")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(read.status(), 200);
    let pause = second
        .client
        .post(second.url("/api/v1/queue/pause"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&json!({"reason": "from the other gateway"}))
        .send()
        .await
        .unwrap();
    assert_eq!(pause.status(), 200);
    // A cookie signed with another key is not one.
    let forged = cookie.replacen("v1.", "v1.1", 1);
    let refused = second.client.get(second.url("/api/v1/builds")).header("cookie", forged).send().await.unwrap();
    assert_eq!(refused.status(), 401);

    // The admin token rotated out on both: the session ends on both.
    let admin_file = first.config.admin.token_file.clone().unwrap();
    std::fs::remove_file(&admin_file).unwrap();
    meshgate::secrets::generate_token_file(&admin_file, 0o400).unwrap();
    for app in [&first, &second] {
        let reloaded = app.client.post(app.url("/api/v1/tokens/reload")).bearer_auth(&first.admin_token);
        assert_eq!(reloaded.send().await.unwrap().status(), 200);
        let after = app.client.get(app.url("/api/v1/builds")).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(after.status(), 401);
    }
}
