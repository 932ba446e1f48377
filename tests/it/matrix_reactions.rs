//! Rebuild and cancel from a Matrix room with reactions, against the real Synapse the tests start:
//! the bot offers the keys on each build's first message, an allowed user's reaction acts, anyone
//! else's is ignored, and a gateway restarted between reactions misses none and repeats none.

use serde_json::Value;
use uuid::Uuid;

use crate::helpers::*;
use crate::matrix::start_synapse_limited;

/// The first message of `build` in the room, from the log.
async fn message_of(app: &TestApp, build: Uuid) -> String {
    app.all_events()
        .await
        .iter()
        .filter(|e| e.event_type == "NotificationDelivered")
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap())
        .find(|d| d["build_id"] == build.to_string() && d["milestone"] == "queued")
        .and_then(|d| d["message_ref"].as_str().map(str::to_owned))
        .expect("the build's message")
}

async fn data_of(app: &TestApp, event_type: &str) -> Vec<Value> {
    let events = app.all_events().await;
    events.iter().filter(|e| e.event_type == event_type).map(|e| serde_json::from_str(&e.data).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_users_cancel_and_rebuild_with_reactions_and_a_restart_misses_and_repeats_none() {
    let synapse = start_synapse_limited(50.0, 100).await;
    let (alice, alice_token) = synapse.member("alice").await;
    let (_bob, bob_token) = synapse.member("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    let mut sink = synapse.sink(dir.path());
    sink.allowed_users = vec![alice.clone()];
    config.chat = vec![sink];
    config.outbound.retry_base_ms = 50;
    let app = spawn_with(dir, config).await;

    let building = fixture("mob-issueUpdated-state-building.json");
    let first = build_id(&app.deliver(&with(&building, &serde_json::json!({"id": "MOB-1"}))).await);
    let second = build_id(&app.deliver(&with(&building, &serde_json::json!({"id": "MOB-2"}))).await);
    app.wait_for_count("NotificationDelivered", 2).await;
    let (m1, m2) = (message_of(&app, first).await, message_of(&app, second).await);
    let offered = synapse.reactions_on(&m1).await;
    let bot = "@meshgate:localhost".to_owned();
    assert_eq!(offered, [(bot.clone(), "🔁".to_owned()), (bot, "⛔".to_owned())], "the bot offers both keys");

    // Bob may not; a thumbs-up is no action; Alice cancels the second build.
    synapse.react(&bob_token, &m1, "⛔").await;
    synapse.react(&alice_token, &m1, "👍").await;
    synapse.react(&alice_token, &m2, "⛔\u{fe0f}").await;
    app.wait_for_count("BuildCancelled", 1).await;
    let cancelled = data_of(&app, "BuildCancelled").await;
    assert_eq!(cancelled[0]["build_id"], second.to_string());
    assert_eq!(cancelled[0]["reason"], format!("by {alice} (matrix)"));
    assert_eq!(app.count("BuildActionRequested").await, 1, "only Alice's reaction acted");
    app.wait_for_count("NotificationDelivered", 3).await;
    let said = synapse.notices().await;
    assert!(
        said.iter()
            .any(|l| l.starts_with("⛔ MOB-2 ios-build #2 cancelled") && l.contains(&format!("by {alice} (matrix)"))),
        "{said:#?}"
    );

    // Stopped; Alice asks for a rebuild meanwhile; started again, the gateway finds it, once.
    let (dir, config) = app.shutdown().await;
    let asked = synapse.react(&alice_token, &m2, "🔁").await;
    let app = spawn_with(dir, config).await;
    app.wait_for_count("BuildRebuilt", 1).await;
    let actions = data_of(&app, "BuildActionRequested").await;
    let asked_for: Vec<(&str, &str, &str)> = actions
        .iter()
        .map(|a| (a["action"].as_str().unwrap(), a["outcome"].as_str().unwrap(), a["via"].as_str().unwrap()))
        .collect();
    assert_eq!(asked_for, [("cancel", "cancelled", "matrix"), ("rebuild", "rebuilt", "matrix")]);
    assert_eq!(actions[1]["request_id"], asked.as_str());
    let requested = data_of(&app, "BuildRequested").await;
    assert_eq!((requested.len(), requested[2]["rebuild_of"].as_str()), (3, Some(second.to_string().as_str())));
    let untouched =
        answer_of(app.client.get(app.url(&format!("/api/v1/builds/{first}"))).bearer_auth(&app.admin_token)).await;
    assert_eq!(untouched["build"]["state"]["state"], "queued", "Bob's reaction did nothing");
}
