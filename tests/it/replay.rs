//! Replaying what the log holds: a notification sent again on request, the notifications abandoned
//! in a window queued again, and ignored deliveries decided again once a trigger is fixed.

use meshgate::config::{ChatConfig, ChatKind};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::stand_in::*;

async fn admin_post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let response = app.client.post(app.url(path)).bearer_auth(&app.admin_token).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn slack_app(slack: &StandIn) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.chat = vec![ChatConfig { url: Some(slack.url("/s")), ..ChatConfig::new("team", ChatKind::SlackWebhook) }];
    config.outbound.retry_base_ms = 10;
    spawn_with(dir, config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_is_sent_again_on_request_and_a_delivered_one_only_when_forced() {
    let mut slack = stand_in(vec![reply(400, None)]).await;
    let app = slack_app(&slack).await;
    let build = build_id(&app.deliver(&fixture("mob-issueUpdated-state-building.json")).await);
    slack.next().await;
    app.wait_for_count("NotificationAbandoned", 1).await;
    let key = format!("team/{build}/queued");

    let (status, answer) = admin_post(&app, "/api/v1/notifications/resend", json!({"key": key})).await;
    assert_eq!(status, 202, "{answer}");
    assert!(slack.next().await.body["text"].as_str().unwrap().starts_with("⏳ MOB-7 ios-build #1 queued"));
    app.wait_for_count("NotificationDelivered", 1).await;

    // Delivered now: not again unless forced.
    let (status, answer) = admin_post(&app, "/api/v1/notifications/resend", json!({"key": key})).await;
    assert_eq!((status, answer["error"].as_str()), (409, Some("already_delivered")), "{answer}");
    let (status, _) = admin_post(&app, "/api/v1/notifications/resend", json!({"key": key, "force": true})).await;
    assert_eq!(status, 202);
    slack.next().await;
    app.wait_for_count("NotificationDelivered", 2).await;

    // Each request is in the log, with who asked; attempt numbers go on.
    let events = app.all_events().await;
    let requests: Vec<Value> = events
        .iter()
        .filter(|e| e.event_type == "NotificationResendRequested")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert_eq!(requests.len(), 2);
    assert_eq!((requests[0]["requested_by"].as_str(), requests[1]["force"].as_bool()), (Some("admin"), Some(true)));
    let attempts: Vec<u64> = events
        .iter()
        .filter(|e| e.event_type == "NotificationAttempted")
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap()["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3]);

    // Keys that cannot be: a malformed one, an unknown sink, a milestone the sink does not send.
    for (bad, expected) in [
        (json!({"key": "team/x/queued"}), 400),
        (json!({"key": format!("elsewhere/{build}/queued")}), 404),
        (json!({"key": format!("team/{build}/page")}), 400),
        (json!({"key": format!("team/{}/queued", uuid::Uuid::nil())}), 404),
    ] {
        assert_eq!(admin_post(&app, "/api/v1/notifications/resend", bad.clone()).await.0, expected, "{bad}");
    }
    let anonymous = app.client.post(app.url("/api/v1/notifications/resend")).json(&json!({"key": key})).send().await;
    assert_eq!(anonymous.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_notification_abandoned_in_a_window_is_queued_again_once() {
    let mut slack = stand_in(vec![reply(400, None), reply(400, None)]).await;
    let app = slack_app(&slack).await;
    let build = build_id(&app.deliver(&fixture("mob-issueUpdated-state-building.json")).await);
    slack.next().await;
    app.finish_build(build, true).await;
    slack.next().await;
    app.wait_for_count("NotificationAbandoned", 2).await;
    app.wait_for_count("NotificationDelivered", 1).await; // the succeeded line got through

    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let (status, answer) = admin_post(&app, "/api/v1/notifications/recover", json!({"since": since})).await;
    assert_eq!(status, 200, "{answer}");
    let mut requeued: Vec<&str> = answer["requeued"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    requeued.sort_unstable();
    assert_eq!(requeued, [format!("team/{build}/queued"), format!("team/{build}/running")]);
    for _ in 0..2 {
        slack.next().await;
    }
    app.wait_for_count("NotificationDelivered", 3).await;
    // Nothing is abandoned any more: a second recovery queues nothing.
    let (_, again) = admin_post(&app, "/api/v1/notifications/recover", json!({"since": since})).await;
    assert_eq!(again["requeued"], json!([]));
    assert_eq!(admin_post(&app, "/api/v1/notifications/recover", json!({})).await.0, 400, "since is required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ignored_delivery_is_built_once_its_trigger_is_fixed_and_replaying_twice_starts_nothing() {
    // The trigger named the wrong state: the delivery was recorded and ignored.
    let dir = tempfile::tempdir().unwrap();
    let mut wrong = ios_trigger();
    wrong.to = vec!["Build".into()];
    let config = test_config(dir.path(), vec![wrong]);
    let app = spawn_with(dir, config).await;
    let first = app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    assert_eq!(first["reason"], "no_trigger_matched");
    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();

    // Fixed, with the gateway stopped: the command opens the log itself for a dry run.
    let (dir, mut config) = app.shutdown().await;
    config.triggers = vec![ios_trigger()];
    let file = dir.path().join("fixed.toml");
    let toml = format!(
        "[server]\ndata_dir = {:?}\nlisten = \"127.0.0.1:9\"\n[admin]\ntoken_file = {:?}\n\n[[triggers]]\nname = \"ios-build\"\n\
         projects = [\"MOB\"]\nfield = \"State\"\nto = [\"Building\"]\nscript = \"ios-build\"\ngit_ref = \"feature/{{issue}}\"\n",
        config.server.data_dir,
        config.admin.token_file.as_ref().unwrap()
    );
    std::fs::write(&file, toml).unwrap();
    let output = std::process::Command::new(crate::process::BIN)
        .args(["deliveries", "replay", "--since", &since, "--dry-run", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains("MOB-7") && printed.contains("would_start"), "{printed}");

    let app = spawn_with(dir, config).await;
    assert_eq!(app.count("BuildRequested").await, 0, "a dry run starts nothing");
    let (status, report) = admin_post(&app, "/api/v1/deliveries/replay", json!({"since": since})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["deliveries"][0]["outcome"], "started", "{report}");
    let events = app.all_events().await;
    let requested = events.iter().find(|e| e.event_type == "BuildRequested").unwrap();
    let received = events.iter().find(|e| e.event_type == "WebhookReceived").unwrap();
    assert_eq!(requested.correlation_id.to_string(), first["correlation_id"].as_str().unwrap());
    assert_eq!(requested.causation_id, Some(received.id), "caused by the original delivery");
    assert_eq!(serde_json::from_str::<Value>(&requested.data).unwrap()["source"], "replay");

    let (_, again) = admin_post(&app, "/api/v1/deliveries/replay", json!({"since": since})).await;
    assert_eq!(again["deliveries"][0]["outcome"], "replayed_before");
    assert_eq!(app.count("BuildRequested").await, 1);
    assert_eq!(app.count("DeliveryReplayed").await, 1);
}
