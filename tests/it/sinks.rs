//! Every sink protocol against HTTPS stand-ins the gateway trusts only through `[outbound]
//! ca_file`; a certificate it does not trust; the OpenClaw relay; what a page says; the tracker's
//! configurable attempts.

use std::path::Path;

use meshgate::config::{ChatConfig, ChatKind, Config};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::pki::Pki;
use crate::stand_in::*;

fn secret(dir: &Path, name: &str, value: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    crate::pki::write_private(&path, value);
    path
}

fn attempts(events: &[meshgate::store::StoredEvent]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.event_type == "NotificationAttempted")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect()
}

fn claim_body() -> Value {
    json!({"node_id": "mac-1", "slots": 1, "wait_seconds": 5})
}

async fn node_post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    let token = std::fs::read_to_string(app.config.nodes.token_file.as_ref().unwrap()).unwrap();
    app.client.post(app.url(path)).bearer_auth(token.trim()).json(&body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chat_kind_delivers_to_an_https_stand_in_trusted_through_the_ca_file() {
    let mut generic = stand_in(vec![]).await;
    let mut slack = stand_in(vec![]).await;
    let mut slack_api = stand_in(vec![reply_with(200, None, r#"{"ok": true, "ts": "1.1"}"#)]).await;
    let mut teams = stand_in(vec![reply(202, None)]).await;
    let mut discord = stand_in(vec![reply_with(200, None, r#"{"id": "42"}"#)]).await;
    let mut matrix = stand_in(vec![reply_with(200, None, r#"{"event_id": "$e1"}"#)]).await;
    let mut openclaw = stand_in(vec![reply(202, None)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    let token = secret(dir.path(), "bot.token", &"b".repeat(40));
    let sink = |name: &str, kind, url: String| ChatConfig { url: Some(url), ..ChatConfig::new(name, kind) };
    config.chat = vec![
        sink("generic", ChatKind::Generic, generic.url("/hook")),
        sink("slack", ChatKind::SlackWebhook, slack.url("/services/T0/B0/x")),
        ChatConfig {
            channel: Some("C1".into()),
            token_file: Some(token.clone()),
            ..sink("slack-api", ChatKind::SlackApi, slack_api.url("/api"))
        },
        sink("teams", ChatKind::TeamsWorkflow, teams.url("/workflows/x")),
        sink("discord", ChatKind::Discord, discord.url("/api/webhooks/1/t")),
        ChatConfig {
            room_id: Some("!room:example".into()),
            token_file: Some(token.clone()),
            ..sink("matrix", ChatKind::Matrix, matrix.url(""))
        },
        ChatConfig {
            channel: Some("telegram".into()),
            to: Some("-100123".into()),
            token_file: Some(token),
            ..sink("relay", ChatKind::Openclaw, openclaw.url(""))
        },
    ];
    let app = spawn_with(dir, config).await;
    let build = build_id(&app.deliver(&fixture("mob-issueUpdated-state-building.json")).await);

    let posted = generic.next().await;
    assert_eq!(posted.body["build_id"], build.to_string());
    assert_eq!((posted.body["state"].as_str(), posted.body["schema_version"].as_u64()), (Some("queued"), Some(1)));
    assert_eq!(posted.body["issue_id"], "MOB-7");
    assert!(posted.body["at"].as_str().is_some_and(|at| at.starts_with("20")), "{:?}", posted.body);
    assert!(slack.next().await.body["text"].as_str().unwrap().starts_with("⏳ MOB-7 ios-build #1 queued"));
    assert_eq!(slack_api.next().await.path, "/api/chat.postMessage");
    assert_eq!(teams.next().await.body["type"], "message");
    assert_eq!(discord.next().await.path, "/api/webhooks/1/t?wait=true");
    let sent = matrix.next().await;
    assert_eq!(sent.method, "PUT");
    assert!(sent.path.starts_with("/_matrix/client/v3/rooms/%21room%3Aexample/send/m.room.message/"), "{}", sent.path);
    assert_eq!(openclaw.next().await.path, "/hooks/agent");
    app.wait_for_count("NotificationDelivered", 7).await;
    assert_eq!(app.count("NotificationAbandoned").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_gateway_does_not_trust_is_refused_and_the_attempt_says_why() {
    let rogue = Pki::new("someone else's CA");
    let mut slack = stand_in_with(vec![], rogue.server(7)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.chat = vec![ChatConfig {
        url: Some(slack.url("/services/T0/B0/x")),
        max_attempts: 2,
        ..ChatConfig::new("team", ChatKind::SlackWebhook)
    }];
    config.outbound.retry_base_ms = 10;
    let app = spawn_with(dir, config).await;
    app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    app.wait_for_count("NotificationAbandoned", 1).await;
    let tries = attempts(&app.all_events().await);
    assert_eq!(tries.len(), 2);
    for attempt in &tries {
        assert!(attempt["status"].is_null());
        let why = attempt["excerpt"].as_str().unwrap();
        assert!(why.contains("invalid peer certificate") && why.contains("UnknownIssuer"), "{why}");
        // The URL of a webhook is a secret: it is not in the audit.
        assert!(!why.contains("/services/"), "{why}");
    }
    assert!(slack.received.try_recv().is_err(), "nothing was sent over the refused connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openclaw_relays_each_line_with_its_idempotency_key_and_honours_its_answers() {
    let mut relay = stand_in(vec![
        reply(429, Some("1")),
        reply(202, None),
        reply_with(200, None, r#"{"ok": true, "runId": "run-1"}"#),
        reply_with(401, None, r#"{"ok": false, "error": "unauthorized"}"#),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    let token = secret(dir.path(), "openclaw.token", &"o".repeat(48));
    config.chat = vec![ChatConfig {
        url: Some(relay.url("/")),
        channel: Some("whatsapp".into()),
        to: Some("+15555550123".into()),
        agent_id: Some("ops".into()),
        token_file: Some(token),
        ..ChatConfig::new("relay", ChatKind::Openclaw)
    }];
    config.outbound.retry_base_ms = 10;
    let app = spawn_with(dir, config).await;
    let build = build_id(&app.deliver(&fixture("mob-issueUpdated-state-building.json")).await);

    // 429 with Retry-After, then 202: the same line, the same key, delivered once.
    let first = relay.next().await;
    let second = relay.next().await;
    assert_eq!(first.path, "/hooks/agent");
    assert_eq!(first.authorization, Some(format!("Bearer {}", "o".repeat(48))));
    let key = format!("relay/{build}/queued");
    for sent in [&first, &second] {
        assert_eq!(sent.headers["idempotency-key"], key.as_str());
        assert_eq!(sent.body["idempotencyKey"], key.as_str());
        assert_eq!(
            (&sent.body["channel"], &sent.body["to"], &sent.body["name"], &sent.body["deliver"], &sent.body["agentId"]),
            (&json!("whatsapp"), &json!("+15555550123"), &json!("meshgate"), &json!(true), &json!("ops"))
        );
        assert!(sent.body["message"].as_str().unwrap().starts_with("⏳ MOB-7 ios-build #1 queued"));
    }
    app.wait_for_count("NotificationDelivered", 1).await;
    let events = app.all_events().await;
    let tried_at = events.iter().find(|e| e.event_type == "NotificationAttempted").unwrap().recorded_at;
    let next: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(attempts(&events)[0]["next_attempt_at"].clone()).unwrap();
    assert!(next - tried_at >= chrono::Duration::milliseconds(990), "Retry-After was honoured");

    // 200 with a runId is delivered; a 401 is final.
    assert_eq!(node_post(&app, "/api/v1/nodes/claim", claim_body()).await.status(), 200);
    assert_eq!(relay.next().await.headers["idempotency-key"], format!("relay/{build}/running").as_str());
    app.wait_for_count("NotificationDelivered", 2).await;
    let result = json!({"node_id": "mac-1", "attempt": 1, "outcome": "failed", "duration_ms": 1, "log_tail": "x\n"});
    assert_eq!(node_post(&app, &format!("/api/v1/builds/{build}/result"), result).await.status(), 200);
    relay.next().await;
    app.wait_for_count("NotificationAbandoned", 1).await;
    let events = app.all_events().await;
    let abandoned = events.iter().find(|e| e.event_type == "NotificationAbandoned").unwrap();
    assert!(abandoned.data.contains("refused with 401"), "{}", abandoned.data);
    assert!(relay.received.try_recv().is_err(), "a 401 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_sent_after_the_build_succeeded_says_so_and_why_it_was_paged() {
    let mut slack = stand_in(vec![reply(400, None)]).await;
    let mut pager = stand_in(vec![reply(503, Some("2")), reply(202, None)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.chat = vec![ChatConfig { url: Some(slack.url("/s")), ..ChatConfig::new("team", ChatKind::SlackWebhook) }];
    config.pager.url = Some(pager.url("/v2/enqueue"));
    config.pager.routing_key_file = Some(secret(dir.path(), "routing.key", &"r".repeat(32)));
    config.outbound.retry_base_ms = 10;
    let app = spawn_with(dir, config).await;
    let build = build_id(&app.deliver(&fixture("mob-issueUpdated-state-building.json")).await);
    slack.next().await;
    let first = pager.next().await;
    let summary = first.body["payload"]["summary"].as_str().unwrap().to_owned();
    assert!(summary.contains("every chat sink abandoned") && summary.contains("the build is queued"), "{summary}");

    // The build succeeds before the retry, which says so (it is not "failed").
    app.finish_build(build, true).await;
    let retry = pager.next().await;
    let summary = retry.body["payload"]["summary"].as_str().unwrap();
    assert!(summary.contains("the build is succeeded"), "{summary}");
    let details = &retry.body["payload"]["custom_details"];
    assert_eq!(details["build_state"], "succeeded");
    assert_eq!(details["reason"], "every chat sink abandoned");
    assert!(!details["line"].as_str().unwrap().contains("failed"), "{details}");
    app.wait_for_count("NotificationDelivered", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_comments_stop_after_the_configured_attempts() {
    let mut youtrack = stand_in(vec![reply(500, None), reply(502, None), reply(200, None)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config: Config = test_config(dir.path(), vec![ios_trigger()]);
    config.youtrack.base_url = Some(youtrack.url(""));
    config.youtrack.token_file = Some(secret(dir.path(), "yt.token", &format!("perm:{}", "y".repeat(40))));
    config.youtrack.max_attempts = 2;
    config.outbound.retry_base_ms = 10;
    let app = spawn_with(dir, config).await;
    let build = build_id(&app.deliver(&fixture("mob-issueUpdated-state-building.json")).await);
    app.finish_build(build, false).await;
    youtrack.next().await;
    youtrack.next().await;
    app.wait_for_count("NotificationAbandoned", 1).await;
    let events = app.all_events().await;
    assert!(events.iter().any(|e| e.event_type == "NotificationAbandoned" && e.data.contains("gave up after 2")));
    assert!(youtrack.received.try_recv().is_err(), "no third try");
}
