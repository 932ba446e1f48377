//! Duplicate deliveries fold into the build they produced; transitions coalesce into active builds;
//! both hold across restarts and under concurrency.

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::helpers::*;

fn building() -> String {
    fixture("mob-issueUpdated-state-building.json")
}

/// The same change sent again: only `timestamp` differs.
fn resent(body: &str, n: u32) -> String {
    with(body, &json!({"timestamp": format!("2026-08-24T10:00:{:02}.{n:03}Z", n % 60)}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_folds_into_the_build_it_produced() {
    let app = spawn_app().await;
    let first = app.deliver(&building()).await;
    let again = app.deliver(&resent(&building(), 1)).await;
    assert_eq!(again["outcome"], "folded");
    assert_eq!(again["build_id"], first["build_id"]);
    let build: Value = app.get(&format!("/api/v1/builds/{}", build_id(&first))).await.json().await.unwrap();
    assert_eq!(build["build"]["folds"][0]["reason"], "duplicate_delivery");
    assert_eq!(build["build"]["folds"][0]["correlation_id"], again["correlation_id"]);
    let types: Vec<_> = build["events"].as_array().unwrap().iter().map(|e| e["type"].clone()).collect();
    assert_eq!(types, [json!("BuildRequested"), json!("BuildRequestFolded")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_fold_across_restarts_and_forever() {
    let app = spawn_app().await;
    let first = app.deliver(&building()).await;
    app.finish_build(build_id(&first), true).await;
    let app = app.restart().await;
    let again = app.deliver(&resent(&building(), 2)).await;
    assert_eq!(again["outcome"], "folded");
    assert_eq!(again["build_id"], first["build_id"]);
    assert_eq!(app.count("BuildRequested").await, 1);
}

/// ADR 0014: a delivery an earlier version recorded under its SHA-256 fingerprint has another
/// fingerprint when it is sent again after the upgrade; its intent's build covers the transition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_recorded_under_an_earlier_versions_fingerprint_starts_no_second_build() {
    use meshgate_domain::ingest::Outcome;
    let app = spawn_app().await;
    let body = building();
    let meshgate_domain::payload::Read { body: text, fingerprint, delivery } =
        meshgate_domain::payload::read(&body).unwrap();
    let sha256 = "085a71afb53132a9e40e1442646a07cde35a317701e9a9fa60808ef616d6bfb0";
    let earlier = meshgate_domain::Fingerprint::parse(sha256).unwrap();
    assert_ne!(earlier, fingerprint);
    let webhook = &app.handles.surfaces.webhook;
    let recorded = webhook.ingest.ingest(uuid::Uuid::now_v7(), chrono::Utc::now(), &text, earlier, &delivery).await;
    let Outcome::Enqueued { build_ids } = recorded.unwrap().outcome else { panic!("a build") };
    app.finish_build(build_ids[0], true).await;

    let again = app.deliver(&resent(&body, 3)).await;
    assert_eq!(again["outcome"], "folded");
    assert_eq!(build_id(&again), build_ids[0]);
    assert_eq!(app.count("BuildRequested").await, 1);
    let streams: std::collections::BTreeSet<String> =
        app.all_events().await.into_iter().filter(|e| e.event_type == "WebhookReceived").map(|e| e.stream).collect();
    assert_eq!(streams, [format!("delivery-{sha256}"), format!("delivery-{fingerprint}")].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_transition_coalesces_into_the_active_build_until_it_finishes() {
    let app = spawn_app().await;
    let first = app.deliver(&building()).await;
    // Another change that also moves the issue to Building (a different fingerprint).
    let other = fixture("mob-issueUpdated-every-value-shape.json");
    let coalesced = app.deliver(&other).await;
    assert_eq!(coalesced["outcome"], "folded");
    assert_eq!(coalesced["build_id"], first["build_id"]);
    let builds: Value = app.get("/api/v1/builds?issue=MOB-7").await.json().await.unwrap();
    assert_eq!(builds["builds"][0]["folds"][0]["reason"], "coalesced");

    app.finish_build(build_id(&first), false).await;
    let next = app.deliver(&fixture("mob-issueUpdated-updatedBy-null.json")).await;
    assert_eq!(next["outcome"], "enqueued");
    assert_ne!(next["build_id"], first["build_id"]);
    let queued: Value = app.get("/api/v1/queue").await.json().await.unwrap();
    assert_eq!(queued["queue"].as_array().unwrap().len(), 1);
    assert_eq!(queued["queue"][0]["build_id"], next["build_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_simultaneous_deliveries_of_one_body_produce_exactly_one_build() {
    let app = spawn_app().await;
    let body = building();
    let answers: Vec<Value> = join_all((0..50).map(|_| app.deliver(&body))).await;
    let enqueued = answers.iter().filter(|a| a["outcome"] == "enqueued").count();
    let folded = answers.iter().filter(|a| a["outcome"] == "folded").count();
    assert_eq!((enqueued, folded), (1, 49));
    assert!(answers.iter().all(|a| a["build_id"] == answers[0]["build_id"]));
    assert_eq!(app.count("BuildRequested").await, 1);
    assert_eq!(app.count("BuildRequestFolded").await, 49);
    assert_eq!(app.count("WebhookReceived").await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_different_transitions_of_one_intent_share_one_build() {
    let app = spawn_app().await;
    let bodies: Vec<String> =
        (0..20).map(|n| with(&building(), &json!({"updated": 1_787_565_700_000u64 + n}))).collect();
    let answers: Vec<Value> = join_all(bodies.iter().map(|b| app.deliver(b))).await;
    assert_eq!(answers.iter().filter(|a| a["outcome"] == "enqueued").count(), 1);
    assert!(answers.iter().all(|a| a["build_id"] == answers[0]["build_id"]));
    assert_eq!(app.count("BuildRequested").await, 1);
    assert_eq!(app.count("IntentActivated").await, 1);
}

/// Each conflict means another contender's append landed, so contenders get through one per
/// commit: more of them than any fixed number of attempts must all still be recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_more_simultaneous_transitions_than_attempts_are_all_recorded() {
    let app = spawn_app().await;
    let calls = (0..64u64).map(|n| {
        let webhook = std::sync::Arc::clone(&app.handles.surfaces.webhook);
        let body = with(&building(), &json!({"updated": 1_787_565_700_000u64 + n}));
        tokio::spawn(async move {
            let read = meshgate_domain::payload::read(&body).unwrap();
            let correlation_id = uuid::Uuid::now_v7();
            webhook
                .ingest
                .ingest(correlation_id, chrono::Utc::now(), &read.body, read.fingerprint, &read.delivery)
                .await
        })
    });
    let outcomes: Vec<_> = join_all(calls).await.into_iter().map(|joined| joined.unwrap()).collect();
    let refused: Vec<String> = outcomes.iter().filter_map(|o| o.as_ref().err()).map(|e| e.to_string()).collect();
    assert!(refused.is_empty(), "{} of 64 refused: {:?}", refused.len(), refused.first());
    assert_eq!(app.count("BuildRequested").await, 1);
    assert_eq!(app.count("BuildRequestFolded").await, 63);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_resume_from_their_checkpoint_and_equal_a_rebuild() {
    let app = spawn_app().await;
    for n in 0..5u64 {
        let body = with(&building(), &json!({"id": format!("MOB-{n}")}));
        app.deliver(&body).await;
        app.deliver(&resent(&body, n as u32)).await;
    }
    let before = app.live().await;
    let app = app.restart().await;
    // Restarted from the checkpoint, not from position 0.
    assert_eq!(app.handles.projections.position(), before.position);
    app.deliver(&with(&building(), &json!({"id": "MOB-9"}))).await;
    let live = app.live().await;
    assert_eq!(live, app.rebuilt().await);
    assert_eq!(live.builds.len(), 6);
}
