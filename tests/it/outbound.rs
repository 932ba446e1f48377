//! Outbound notifications against local HTTPS stand-ins that speak the Slack, Teams, Discord,
//! YouTrack and PagerDuty protocols, scripted to answer 429 with Retry-After, 500 and 400. The
//! gateway trusts their certificates only through `[outbound] ca_file`.

use meshgate::config::{ChatConfig, ChatKind, Config};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::stand_in::*;

/// A webhook-style `[[chat]]` sink (no room, token or channel).
fn chat(name: &str, kind: ChatKind, url: String, max_attempts: u32) -> ChatConfig {
    ChatConfig { url: Some(url), max_attempts, ..ChatConfig::new(name, kind) }
}

fn with_slack(dir: &std::path::Path, slack: &StandIn, max_attempts: u32) -> Config {
    let mut config = test_config(dir, vec![ios_trigger()]);
    config.chat = vec![chat("team", ChatKind::SlackWebhook, slack.url("/services/T0/B0/x"), max_attempts)];
    config.outbound.retry_base_ms = 10;
    config.outbound.retry_cap_seconds = 1;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_gives_one_chat_line_per_state_and_one_short_tracker_comment() {
    let mut slack = stand_in(vec![]).await;
    let mut youtrack = stand_in(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = with_slack(dir.path(), &slack, 8);
    let token_file = dir.path().join("youtrack.token");
    std::fs::write(&token_file, format!("perm:{}", "y".repeat(40))).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o400)).unwrap();
    config.youtrack.base_url = Some(youtrack.url(""));
    config.youtrack.token_file = Some(token_file);
    let app = spawn_with(dir, config).await;

    let body = with(&fixture("mob-issueUpdated-state-building.json"), &json!({"summary": "Crash <!channel> & co"}));
    let build = build_id(&app.deliver(&body).await);
    let nodes_token = std::fs::read_to_string(app.config.nodes.token_file.as_ref().unwrap()).unwrap().trim().to_owned();
    let post = |path: String, body: Value| app.client.post(app.url(&path)).bearer_auth(&nodes_token).json(&body).send();
    let claim: Value = post("/api/v1/nodes/claim".into(), json!({"node_id": "mac-1", "slots": 1, "wait_seconds": 5}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(claim["attempt"], 1);
    let result = json!({"node_id": "mac-1", "attempt": 1, "outcome": "failed", "exit_code": 65, "duration_ms": 83000,
        "commit_sha": "0123456789abcdef0123456789abcdef01234567", "failing_test": "AppTests.testOffline", "log_tail": "boom\n"});
    assert_eq!(post(format!("/api/v1/builds/{build}/result"), result).await.unwrap().status(), 200);

    let mut lines = Vec::new();
    for _ in 0..3 {
        lines.push(slack.next().await.body["text"].as_str().unwrap().to_owned());
    }
    assert!(lines[0].starts_with("⏳ MOB-7 ios-build #1 queued"), "{lines:?}");
    assert!(lines[1].starts_with("🔨 MOB-7 ios-build #1 running") && lines[1].contains("on mac-1"), "{lines:?}");
    assert!(
        lines[2].starts_with("❌ MOB-7 ios-build #1 failed")
            && lines[2].contains("0123456")
            && lines[2].contains(&format!("log: {}", app.url("/api/v1/builds/")))
    );
    assert!(lines[0].contains("&lt;!channel&gt; &amp; co"), "tracker text is escaped: {}", lines[0]);

    let comment = youtrack.next().await;
    assert_eq!(comment.path, "/api/issues/MOB-7/comments?fields=id");
    assert_eq!(comment.authorization.as_deref(), Some(format!("Bearer perm:{}", "y".repeat(40)).as_str()));
    assert_eq!(comment.body["usesMarkdown"], true);
    let text = comment.body["text"].as_str().unwrap();
    assert!(text.lines().count() <= 5, "{text}");
    // As YouTrack shows it: no backslashes, no markup.
    let shown = displayed(text);
    assert!(shown.starts_with("❌ Build ios-build #1 failed on mac-1 at 0123456789ab"), "{shown}");
    for part in ["Failing test: AppTests.testOffline", "/log?key="] {
        assert!(shown.contains(part), "{part} missing from {shown}");
    }

    // Exactly once: every key delivered, nothing more sent.
    app.wait_for_count("NotificationDelivered", 4).await;
    assert!(slack.received.try_recv().is_err() && youtrack.received.try_recv().is_err());
    assert_eq!(app.count("NotificationAttempted").await, 4);

    // `meshgate events --issue` tells the whole story, the notifications about its build included
    // (they name the build, not the issue). It reads the log beside the running gateway.
    let data_dir = app.config.server.data_dir.to_str().unwrap().to_owned();
    let output = std::process::Command::new(crate::process::BIN)
        .args(["events", "--issue", "MOB-7", "--json"])
        .env("MESHGATE_SERVER__DATA_DIR", &data_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let types: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["type"].as_str().unwrap().to_owned())
        .collect();
    for wanted in ["BuildRequested", "BuildFailed", "NotificationAttempted", "NotificationDelivered"] {
        assert!(types.iter().any(|t| t == wanted), "{wanted} missing from {types:?}");
    }
    assert_eq!(types.iter().filter(|t| *t == "NotificationDelivered").count(), 4);
}

async fn slack_app(slack: &StandIn, max_attempts: u32) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let config = with_slack(dir.path(), slack, max_attempts);
    spawn_with(dir, config).await
}

fn attempts_of(events: &[meshgate::store::StoredEvent], milestone: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.event_type == "NotificationAttempted")
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap())
        .filter(|d| d["milestone"] == milestone)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_no_sooner_than_its_retry_after_and_delivered_once() {
    let mut slack = stand_in(vec![reply(429, Some("2"))]).await;
    let app = slack_app(&slack, 8).await;
    app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    let first = slack.next().await;
    let second = slack.next().await;
    assert_eq!(first.body, second.body, "the same line, sent again");
    app.wait_for_count("NotificationDelivered", 1).await;
    let events = app.all_events().await;
    let attempts = attempts_of(&events, "queued");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["status"], 429);
    // The wait honoured the hint: the retry was scheduled at least 2 s after the first try.
    let tried_at = events.iter().find(|e| e.event_type == "NotificationAttempted").unwrap().recorded_at;
    let next: chrono::DateTime<chrono::Utc> = serde_json::from_value(attempts[0]["next_attempt_at"].clone()).unwrap();
    assert!(next - tried_at >= chrono::Duration::milliseconds(1990), "{next} vs {tried_at}");
    assert!(slack.received.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_permanent_and_the_notification_is_abandoned_after_one_try() {
    let mut slack = stand_in(vec![reply(400, None)]).await;
    let app = slack_app(&slack, 8).await;
    app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    slack.next().await;
    app.wait_for_count("NotificationAbandoned", 1).await;
    let events = app.all_events().await;
    assert_eq!(attempts_of(&events, "queued").len(), 1);
    let abandoned = events.iter().find(|e| e.event_type == "NotificationAbandoned").unwrap();
    assert!(abandoned.data.contains("refused with 400"));
    assert!(slack.received.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_keeps_failing_is_abandoned_after_its_attempts() {
    let mut slack = stand_in(vec![reply(500, None), reply(503, None), reply(502, None), reply(500, None)]).await;
    let app = slack_app(&slack, 3).await;
    app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    for _ in 0..3 {
        slack.next().await;
    }
    app.wait_for_count("NotificationAbandoned", 1).await;
    let events = app.all_events().await;
    assert_eq!(attempts_of(&events, "queued").len(), 3);
    assert!(events
        .iter()
        .any(|e| e.event_type == "NotificationAbandoned" && e.data.contains("gave up after 3 attempts")));
    assert!(slack.received.try_recv().is_err(), "no fourth try");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_scheduled_before_a_restart_happens_after_it() {
    let mut slack = stand_in(vec![reply(503, Some("2"))]).await;
    let app = slack_app(&slack, 8).await;
    app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    slack.next().await;
    app.wait_for_count("NotificationAttempted", 1).await;
    let app = app.restart().await;
    // The restarted gateway finds the pending retry in the log and makes it.
    slack.next().await;
    app.wait_for_count("NotificationDelivered", 1).await;
    let events = app.all_events().await;
    assert_eq!(attempts_of(&events, "queued").len(), 2);
    assert!(slack.received.try_recv().is_err());
}

fn secret_file(dir: &std::path::Path, name: &str, value: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_chat_sink_gives_up_on_a_build_on_call_is_paged_once() {
    let mut slack = stand_in(vec![reply(400, None), reply(400, None), reply(400, None)]).await;
    let mut pager = stand_in(vec![reply(202, None)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = with_slack(dir.path(), &slack, 8);
    config.pager.url = Some(pager.url("/v2/enqueue"));
    config.pager.routing_key_file = Some(secret_file(dir.path(), "routing.key", &"r".repeat(32)));
    let app = spawn_with(dir, config).await;
    let build = build_id(&app.deliver(&fixture("mob-issueUpdated-state-building.json")).await);
    slack.next().await;
    let page = pager.next().await;
    assert_eq!(page.path, "/v2/enqueue");
    assert_eq!(page.body["routing_key"], "r".repeat(32));
    assert_eq!(page.body["event_action"], "trigger");
    assert_eq!(page.body["dedup_key"], format!("meshgate-{build}"));
    app.wait_for_count("NotificationDelivered", 1).await;
    // The running milestone is abandoned too: still one page for the build.
    let claim = app
        .client
        .post(app.url("/api/v1/nodes/claim"))
        .bearer_auth(std::fs::read_to_string(app.config.nodes.token_file.as_ref().unwrap()).unwrap().trim())
        .json(&json!({"node_id": "mac-1", "slots": 1, "wait_seconds": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(claim.status(), 200);
    slack.next().await;
    app.wait_for_count("NotificationAbandoned", 2).await;
    assert_eq!(app.count("PageRequested").await, 1);
    assert!(pager.received.try_recv().is_err());
    let ready: Value = app.client.get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["pager"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pager_shows_in_readiness() {
    let mut slack = stand_in(vec![reply(400, None)]).await;
    let mut pager = stand_in(vec![reply(400, None)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = with_slack(dir.path(), &slack, 8);
    config.pager.url = Some(pager.url("/v2/enqueue"));
    config.pager.routing_key_file = Some(secret_file(dir.path(), "routing.key", &"r".repeat(32)));
    let app = spawn_with(dir, config).await;
    app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    slack.next().await;
    pager.next().await;
    app.wait_for_count("NotificationAbandoned", 2).await;
    let ready: Value = app.client.get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["pager"], "failing");
}

async fn failed_build(app: &TestApp) {
    let build = build_id(&app.deliver(&fixture("mob-issueUpdated-state-building.json")).await);
    let token = std::fs::read_to_string(app.config.nodes.token_file.as_ref().unwrap()).unwrap().trim().to_owned();
    let post = |path: String, body: Value| app.client.post(app.url(&path)).bearer_auth(&token).json(&body).send();
    post("/api/v1/nodes/claim".into(), json!({"node_id": "mac-1", "slots": 1, "wait_seconds": 5})).await.unwrap();
    let result = json!({"node_id": "mac-1", "attempt": 1, "outcome": "failed", "duration_ms": 1, "log_tail": "x\n"});
    assert_eq!(post(format!("/api/v1/builds/{build}/result"), result).await.unwrap().status(), 200);
}

async fn tracker_app(youtrack: &StandIn, grace_minutes: u64) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.youtrack.base_url = Some(youtrack.url(""));
    config.youtrack.token_file = Some(secret_file(dir.path(), "yt-new.token", &format!("perm:{}", "n".repeat(40))));
    config.youtrack.previous_token_file =
        Some(secret_file(dir.path(), "yt-old.token", &format!("perm:{}", "o".repeat(40))));
    config.youtrack.previous_token_grace_minutes = grace_minutes;
    spawn_with(dir, config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_with_the_new_tracker_token_falls_back_to_the_previous_one_within_its_grace() {
    let mut youtrack = stand_in(vec![reply(401, None), reply(200, None)]).await;
    let app = tracker_app(&youtrack, 15).await;
    failed_build(&app).await;
    let first = youtrack.next().await;
    let second = youtrack.next().await;
    assert_eq!(first.authorization, Some(format!("Bearer perm:{}", "n".repeat(40))));
    assert_eq!(second.authorization, Some(format!("Bearer perm:{}", "o".repeat(40))));
    app.wait_for_count("NotificationDelivered", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_grace_the_previous_tracker_token_is_not_tried() {
    let mut youtrack = stand_in(vec![reply(401, None)]).await;
    let app = tracker_app(&youtrack, 0).await;
    failed_build(&app).await;
    youtrack.next().await;
    app.wait_for_count("NotificationAbandoned", 1).await;
    assert!(youtrack.received.try_recv().is_err(), "no second try with the expired token");
}

fn with_chat(dir: &std::path::Path, kind: ChatKind, url: String) -> Config {
    let mut config = test_config(dir, vec![ios_trigger()]);
    config.chat = vec![chat("chat", kind, url, 8)];
    config.outbound.retry_base_ms = 10;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_gets_an_adaptive_card_and_202_counts_as_delivered() {
    let mut teams = stand_in(vec![reply(202, None)]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = with_chat(dir.path(), ChatKind::TeamsWorkflow, teams.url("/workflows/x?sig=secret"));
    let app = spawn_with(dir, config).await;
    app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    let card = teams.next().await;
    assert_eq!(card.body["type"], "message");
    let content = &card.body["attachments"][0]["content"];
    assert_eq!(card.body["attachments"][0]["contentType"], "application/vnd.microsoft.card.adaptive");
    assert_eq!(content["version"], "1.4");
    assert!(content["body"][0]["text"].as_str().unwrap().contains("MOB\\-7 ios\\-build \\#1 queued"));
    app.wait_for_count("NotificationDelivered", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_waits_for_the_message_and_honours_retry_after_in_its_body() {
    let mut discord = stand_in(vec![reply_with(
        429,
        None,
        r#"{"message": "You are being rate limited.", "retry_after": 1.5, "global": false}"#,
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = with_chat(dir.path(), ChatKind::Discord, discord.url("/api/webhooks/1/token"));
    let app = spawn_with(dir, config).await;
    app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    let first = discord.next().await;
    assert_eq!(first.path, "/api/webhooks/1/token?wait=true");
    assert_eq!(first.body["allowed_mentions"], json!({"parse": []}));
    discord.next().await;
    app.wait_for_count("NotificationDelivered", 1).await;
    let events = app.all_events().await;
    let attempt = events.iter().find(|e| e.event_type == "NotificationAttempted").unwrap();
    let data: Value = serde_json::from_str(&attempt.data).unwrap();
    let next: chrono::DateTime<chrono::Utc> = serde_json::from_value(data["next_attempt_at"].clone()).unwrap();
    assert!(next - attempt.recorded_at >= chrono::Duration::milliseconds(1490), "the body's retry_after was honoured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slack_api_posts_one_message_per_build_and_updates_it_as_the_build_moves() {
    let mut slack = stand_in(vec![
        // `ok` after a long warning: the whole answer is read, so it is a delivery.
        reply_with(
            200,
            None,
            &format!(r#"{{"warning": "{}", "ok": true, "ts": "1700000000.000100"}}"#, "w".repeat(8000)),
        ),
        reply_with(200, Some("1"), r#"{"ok": false, "error": "ratelimited"}"#),
        reply_with(200, None, r#"{"ok": true, "channel": "C1", "ts": "1700000000.000100"}"#),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = with_chat(dir.path(), ChatKind::SlackApi, slack.url("/api"));
    config.chat[0].channel = Some("C1".into());
    config.chat[0].token_file = Some(secret_file(dir.path(), "slack.token", &format!("xoxb-{}", "s".repeat(40))));
    let app = spawn_with(dir, config).await;
    app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    let posted = slack.next().await;
    assert_eq!(posted.path, "/api/chat.postMessage");
    assert_eq!(posted.body["channel"], "C1");
    assert_eq!(posted.authorization, Some(format!("Bearer xoxb-{}", "s".repeat(40))));
    app.wait_for_count("NotificationDelivered", 1).await;

    let token = std::fs::read_to_string(app.config.nodes.token_file.as_ref().unwrap()).unwrap().trim().to_owned();
    let claim = app.client.post(app.url("/api/v1/nodes/claim")).bearer_auth(&token);
    claim.json(&json!({"node_id": "mac-1", "slots": 1, "wait_seconds": 5})).send().await.unwrap();
    // `ok: false, ratelimited` is retried; then the same message is updated, not a new one posted.
    for _ in 0..2 {
        let update = slack.next().await;
        assert_eq!(update.path, "/api/chat.update");
        assert_eq!(update.body["ts"], "1700000000.000100");
        assert!(update.body["text"].as_str().unwrap().starts_with("🔨 MOB-7 ios-build #1 running"));
    }
    app.wait_for_count("NotificationDelivered", 2).await;
    assert!(slack.received.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_edits_the_build_s_message_in_place_as_the_build_moves() {
    let mut discord = stand_in(vec![reply_with(200, None, r#"{"id": "1122334455", "content": "x"}"#)]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = with_chat(dir.path(), ChatKind::Discord, discord.url("/api/webhooks/1/token"));
    let app = spawn_with(dir, config).await;
    app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    assert_eq!(discord.next().await.path, "/api/webhooks/1/token?wait=true");
    app.wait_for_count("NotificationDelivered", 1).await;
    let token = std::fs::read_to_string(app.config.nodes.token_file.as_ref().unwrap()).unwrap().trim().to_owned();
    let claim = app.client.post(app.url("/api/v1/nodes/claim")).bearer_auth(&token);
    claim.json(&json!({"node_id": "mac-1", "slots": 1, "wait_seconds": 5})).send().await.unwrap();
    let edit = discord.next().await;
    assert_eq!((edit.method.as_str(), edit.path.as_str()), ("PATCH", "/api/webhooks/1/token/messages/1122334455"));
    assert!(edit.body["content"].as_str().unwrap().starts_with("🔨 MOB-7 ios-build #1 running"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_channel_can_be_the_pager_and_gets_only_the_page() {
    let mut team = stand_in(vec![reply(400, None)]).await;
    let mut alerts = stand_in(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = with_slack(dir.path(), &team, 8);
    config.chat.push(chat("oncall", ChatKind::SlackWebhook, alerts.url("/services/T0/B1/y"), 8));
    config.pager.alert_chat = Some("oncall".into());
    let app = spawn_with(dir, config).await;
    app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    team.next().await;
    let alert = alerts.next().await;
    assert!(alert.body["text"].as_str().unwrap().starts_with("🚨 MOB-7 ios-build #1 page"), "{:?}", alert.body);
    app.wait_for_count("NotificationDelivered", 1).await;
    assert!(alerts.received.try_recv().is_err(), "the alert channel gets nothing but the page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_and_timeouts_are_retried_then_abandoned_with_no_status() {
    // A port nobody listens on: every try is a connection error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // A server that accepts and never answers: every try times out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut config = with_chat(dir.path(), ChatKind::Generic, format!("http://{closed}/hook"));
    config.chat[0].max_attempts = 2;
    config.chat.push(chat("silent", ChatKind::Generic, format!("http://{silent_addr}/hook"), 2));
    config.outbound.timeout_seconds = 1;
    let app = spawn_with(dir, config).await;
    app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    app.wait_for_count("NotificationAbandoned", 2).await;
    let events = app.all_events().await;
    let attempts: Vec<Value> = events
        .iter()
        .filter(|e| e.event_type == "NotificationAttempted")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert_eq!(attempts.len(), 4, "two tries per sink");
    assert!(attempts.iter().all(|a| a["status"].is_null()), "no answer, no status: {attempts:?}");
    // Each attempt says why, with the cause under reqwest's `error sending request`.
    let why = |sink: &str| -> Vec<String> {
        attempts.iter().filter(|a| a["sink"] == sink).map(|a| a["excerpt"].as_str().unwrap().to_owned()).collect()
    };
    assert!(why("chat").iter().all(|w| w.contains("Connection refused")), "{:?}", why("chat"));
    assert!(why("silent").iter().all(|w| w.contains("timed out")), "{:?}", why("silent"));
    assert!(events
        .iter()
        .filter(|e| e.event_type == "NotificationAbandoned")
        .all(|e| e.data.contains("gave up after 2 attempts")));
}

/// A real `meshgate serve` process is killed (SIGKILL) while a retry is scheduled; the restarted
/// process finds it in the log and makes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_pending_when_the_gateway_process_is_killed_is_made_after_it_restarts() {
    use crate::process::start;
    use crate::workers::{deliver, events};
    let mut slack = stand_in(vec![reply(503, Some("2"))]).await;
    let dir = tempfile::tempdir().unwrap();
    test_config(dir.path(), vec![]); // token files
    let toml = std::fs::read_to_string(fixtures().join("config/one-trigger.toml")).unwrap()
        + &format!(
            "\n[[chat]]\nname = \"team\"\nkind = \"slack_webhook\"\nurl = \"{}\"\n\n[outbound]\nretry_base_ms = 10\nca_file = {:?}\n",
            slack.url("/services/T0/B0/x"),
            crate::pki::pki().ca_file
        );
    let config = dir.path().join("meshgate.toml");
    std::fs::write(&config, toml).unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let mut gateway = start(dir.path(), &args, &[]);
    deliver(&gateway, dir.path(), "MOB-7").await;
    slack.next().await; // the first try, answered 503 + Retry-After: 2

    // Kill it once the attempt (and its scheduled retry) is in the log. The gateway is another
    // process with no signal for this, so its log is read until it shows (bounded, 2 s).
    let attempted = || events(dir.path(), "NotificationAttempted").len();
    for _ in 0..100 {
        if attempted() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(attempted(), 1, "the first attempt is recorded");
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();

    let gateway = start(dir.path(), &args, &[]);
    let retry = slack.next().await;
    assert!(retry.body["text"].as_str().unwrap().starts_with("⏳ MOB-7 ios-build #1 queued"));
    // A graceful stop lets the sink task finish recording the attempt it is making.
    gateway.stop();
    assert_eq!(events(dir.path(), "NotificationDelivered").len(), 1);
    assert_eq!(attempted(), 2);
    assert!(slack.received.try_recv().is_err());
}
