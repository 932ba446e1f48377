//! Holding the queue: a paused lane keeps queueing and gives nodes nothing until resumed, across a
//! restart; bad pauses are refused and record nothing.

use serde_json::{json, Value};

use crate::helpers::*;

async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.client.post(app.url(path)).bearer_auth(&app.admin_token).json(&body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_lane_queues_but_gives_nodes_nothing_until_resumed_across_a_restart() {
    let app = spawn_app().await;
    let building = fixture("mob-issueUpdated-state-building.json");
    let paused = post(&app, "/api/v1/queue/pause", json!({"reason": "Xcode 16.3 upgrade", "lanes": ["default"]})).await;
    assert_eq!(paused.status(), 200);
    let paused: Value = paused.json().await.unwrap();
    assert_eq!(paused["lanes"]["default"]["reason"], "Xcode 16.3 upgrade");
    assert_eq!(paused["lanes"]["default"]["by"], "admin");

    // Webhooks are still taken and builds queued; a node gets nothing from the lane.
    let build = build_id(&app.deliver(&with(&building, &json!({"id": "MOB-1"}))).await);
    assert!(app.claim("mac-1", &[], 1, 1).await.is_none());
    let queue = answer_of(app.client.get(app.url("/api/v1/queue")).bearer_auth(&app.admin_token)).await;
    assert_eq!(queue["queue"][0]["waiting"]["reason"], "paused");
    assert_eq!(queue["queue"][0]["waiting"]["why"], "Xcode 16.3 upgrade");
    assert_eq!(queue["paused"]["lanes"]["default"]["reason"], "Xcode 16.3 upgrade");
    let screen = meshgate::cli::status::summary(&json!({"nodes": []}), &json!({"builds": []}), &queue);
    assert!(screen.contains("lane default is paused by admin: Xcode 16.3 upgrade"), "{screen}");

    // Still paused after a restart.
    let app = app.restart().await;
    assert!(app.claim("mac-1", &[], 1, 1).await.is_none());
    let waiting = answer_of(app.client.get(app.url(&format!("/api/v1/builds/{build}"))).bearer_auth(&app.admin_token));
    assert_eq!(waiting.await["waiting"]["reason"], "paused");

    // A node already waiting gets the build when the lane is resumed.
    let waiting_node = app.claim("mac-1", &[], 1, 10);
    let resume = async {
        let resumed = post(&app, "/api/v1/queue/resume", json!({"lanes": ["default"]})).await;
        assert_eq!(resumed.status(), 200);
        resumed.json::<Value>().await.unwrap()
    };
    let (claimed, resumed) = tokio::join!(waiting_node, resume);
    assert_eq!(resumed, json!({"all": null, "lanes": {}}));
    assert_eq!(claimed.expect("claimed once resumed")["build"]["build_id"], build.to_string());
    let kinds: Vec<String> =
        app.all_events().await.iter().filter(|e| e.stream == "queue-pauses").map(|e| e.event_type.clone()).collect();
    assert_eq!(kinds, ["QueuePaused", "QueueResumed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pauses_and_resumes_are_refused_and_record_nothing() {
    let app = spawn_app().await;
    let before = app.all_events().await.len();
    for (path, body, status) in [
        ("/api/v1/queue/pause", json!({"reason": "x".repeat(10_000)}), 400),
        ("/api/v1/queue/pause", json!({"reason": "  "}), 400),
        ("/api/v1/queue/pause", json!({}), 400),
        ("/api/v1/queue/pause", json!({"reason": "why", "lanes": ["gpu"]}), 404),
        ("/api/v1/queue/pause", json!({"reason": "why", "colour": "red"}), 400),
        ("/api/v1/queue/resume", json!({}), 409),
        ("/api/v1/queue/resume", json!({"lanes": ["default"]}), 409),
        ("/api/v1/queue/resume", json!({"lanes": ["gpu"]}), 404),
    ] {
        assert_eq!(post(&app, path, body.clone()).await.status(), status, "{path} {body}");
    }
    assert_eq!(app.all_events().await.len(), before);
    // Every lane at once; then one lane cannot be resumed alone.
    assert_eq!(post(&app, "/api/v1/queue/pause", json!({"reason": "datacenter move"})).await.status(), 200);
    assert_eq!(post(&app, "/api/v1/queue/resume", json!({"lanes": ["signing"]})).await.status(), 409);
    assert_eq!(post(&app, "/api/v1/queue/resume", json!({})).await.status(), 200);
    let anonymous = app.client.post(app.url("/api/v1/queue/pause")).json(&json!({"reason": "x"})).send();
    assert_eq!(anonymous.await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_team_chat_is_told_once_of_a_pause_and_of_its_resume_and_the_alert_channel_of_neither() {
    use meshgate::config::{ChatConfig, ChatKind};

    use crate::stand_in::stand_in;

    let mut team = stand_in(vec![]).await;
    let mut alerts = stand_in(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.chat = vec![
        ChatConfig { url: Some(team.url("/services/T0/B0/x")), ..ChatConfig::new("team", ChatKind::SlackWebhook) },
        ChatConfig { url: Some(alerts.url("/services/T0/B1/y")), ..ChatConfig::new("oncall", ChatKind::SlackWebhook) },
    ];
    config.pager.alert_chat = Some("oncall".into());
    let app = spawn_with(dir, config).await;

    let reason = "Xcode 16.3 upgrade";
    assert_eq!(post(&app, "/api/v1/queue/pause", json!({"reason": reason, "lanes": ["default"]})).await.status(), 200);
    let told = team.next().await;
    let line = told.body["text"].as_str().unwrap().to_owned();
    assert!(line.starts_with("⏸️ lane default paused by admin: Xcode 16.3 upgrade"), "{line}");

    // A restart does not tell it again: the next line the team gets is the resume.
    let app = app.restart().await;
    assert_eq!(post(&app, "/api/v1/queue/resume", json!({"lanes": ["default"]})).await.status(), 200);
    let told = team.next().await;
    assert_eq!(told.body["text"], "▶️ lane default resumed by admin: nodes claim its builds again");
    app.wait_for_count("NotificationDelivered", 2).await;
    assert!(team.received.try_recv().is_err(), "each told once");
    assert!(alerts.received.try_recv().is_err(), "the alert channel is for pages and lanes nobody serves");
}
