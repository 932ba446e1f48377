//! Results written back to YouTrack: a trigger's commands applied to the issue when its builds
//! finish, through the outbox like comments, against the YouTrack stand-in (tests/it/youtrack.rs),
//! which changes the issue's state as YouTrack would and then sends the bot-authored webhook back.

use meshgate::config::Config;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::pki::write_private;
use crate::youtrack::{Failure, YouTrack, TOKEN};

fn config(dir: &std::path::Path, youtrack: &YouTrack, failure_command: &str) -> Config {
    let trigger = meshgate_domain::Trigger {
        on_success_command: Some("State {Ready for QA}".into()),
        on_failure_command: Some(failure_command.into()),
        fixed_in_build_field: Some("Fixed in build".into()),
        ..ios_trigger()
    };
    let mut config = test_config(dir, vec![trigger]);
    let token = dir.join("youtrack.token");
    write_private(&token, TOKEN);
    config.youtrack.base_url = Some(youtrack.url());
    config.youtrack.token_file = Some(token);
    config.reconcile.interval_seconds = 0;
    config.outbound.retry_base_ms = 10;
    config
}

async fn gateway(youtrack: &YouTrack, failure_command: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), youtrack, failure_command);
    spawn_with(dir, config).await
}

/// The webhook YouTrack sends when `author` moves `issue` from `from` to `to`.
fn moved(issue: &str, author: &str, from: &str, to: &str, updated: i64) -> String {
    with(
        &fixture("mob-issueUpdated-state-building.json"),
        &json!({
            "id": issue, "updated": updated,
            "updatedBy": {"login": author, "fullName": author, "email": format!("{author}@example.com")},
            "changedFields": [{"name": "State", "oldValue": {"name": from, "presentation": from},
                               "value": {"name": to, "presentation": to}}],
        }),
    )
}

async fn events_of(app: &TestApp, event_type: &str) -> Vec<Value> {
    let url = app.url(&format!("/api/v1/events?type={event_type}"));
    answer_of(app.client.get(url).bearer_auth(&app.admin_token)).await["events"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_build_moves_its_issue_and_the_webhook_that_change_sends_back_starts_nothing() {
    let youtrack = YouTrack::start().await;
    youtrack.set_state("MOB-1", "Building");
    youtrack.set_state("MOB-2", "Building");
    let app = gateway(&youtrack, "State {Build failed}").await;
    let now = chrono::Utc::now().timestamp_millis();

    // A success: the command and the field, silently, on the issue.
    let passed = build_id(&app.deliver(&moved("MOB-1", "omar.haddad", "Open", "Building", now)).await);
    app.finish_build(passed, true).await;
    let applied = youtrack.next_command().await;
    assert_eq!(applied["status"], 200);
    assert_eq!(
        applied["body"],
        json!({"query": "State {Ready for QA} Fixed in build {ios-build #1}", "issues": [{"idReadable": "MOB-1"}], "silent": true})
    );
    assert_eq!(youtrack.state("MOB-1").as_deref(), Some("Ready for QA"));

    // YouTrack sends the change back, authored by the bot: nothing starts, even where the bot's
    // change would match a trigger.
    for (to, updated) in [("Ready for QA", now + 1), ("Building", now + 2)] {
        let echoed = app.deliver(&moved("MOB-1", "meshgate-bot", "Building", to, updated)).await;
        assert_eq!(echoed["outcome"], "ignored", "{echoed}");
    }
    assert_eq!(app.count("BuildRequested").await, 1);

    // A failure, through 429 (Retry-After) and 500 before YouTrack takes it: every try recorded.
    youtrack.fail_at("/api/commands", Failure(429, Some("1"), r#"{"error": "too_many_requests"}"#));
    youtrack.fail_at("/api/commands", Failure(500, None, r#"{"error": "server_error"}"#));
    let failed = build_id(&app.deliver(&moved("MOB-2", "omar.haddad", "Open", "Building", now + 3)).await);
    app.finish_build(failed, false).await;
    let statuses: Vec<u64> =
        [youtrack.next_command().await, youtrack.next_command().await, youtrack.next_command().await]
            .iter()
            .map(|c| c["status"].as_u64().unwrap())
            .collect();
    assert_eq!(statuses, [429, 500, 200]);
    assert_eq!(youtrack.state("MOB-2").as_deref(), Some("Build failed"));
    // Both commands and the failure's comment.
    app.wait_for_count("NotificationDelivered", 3).await;
    let delivered = events_of(&app, "NotificationDelivered").await;
    let commands: Vec<(&str, u64)> = delivered
        .iter()
        .filter(|e| e["data"]["sink"] == "youtrack-commands")
        .map(|e| (e["data"]["milestone"].as_str().unwrap(), e["data"]["attempts"].as_u64().unwrap()))
        .collect();
    assert_eq!(commands, [("succeeded", 1), ("failed", 3)]);
    // The failure's comment went its own way, once.
    assert!(youtrack.next_comment().await["text"].as_str().unwrap().contains("ios-build #2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_youtrack_refuses_is_abandoned_at_once_with_youtracks_words() {
    let youtrack = YouTrack::start().await;
    youtrack.set_state("MOB-3", "Building");
    let app = gateway(&youtrack, "State {Build broken}").await;
    let build = build_id(&app.deliver(&moved("MOB-3", "omar.haddad", "Open", "Building", 1_787_565_700_000)).await);
    app.finish_build(build, false).await;
    let refused = youtrack.next_command().await;
    assert_eq!(refused["status"], 400);
    app.wait_for_count("NotificationAbandoned", 1).await;
    let abandoned = events_of(&app, "NotificationAbandoned").await;
    let data = &abandoned[0]["data"];
    assert_eq!((data["sink"].as_str(), data["attempts"].as_u64()), (Some("youtrack-commands"), Some(1)));
    assert_eq!(data["reason"], "refused with 400: Unknown state: Build broken");
    assert_eq!(abandoned[0]["build"], "ios-build #1", "the audit names the build");
    assert_eq!(youtrack.state("MOB-3").as_deref(), Some("Building"), "nothing applied");
    assert_eq!(youtrack.asked("/api/commands"), 1, "not tried again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_test_asks_youtrack_to_read_each_command_without_applying_it() {
    let youtrack = YouTrack::start().await;
    youtrack.set_state("MOB-9", "Building");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), &youtrack, "State {Build broken}");
    config.triggers[0].projects = vec!["MOB".into()];
    let checks = meshgate::selftest::run(&config).await;
    let check = checks.iter().find(|c| c.check == "sink youtrack-commands").expect("a check of the commands");
    assert_eq!(check.result, meshgate::selftest::CheckResult::Failed, "{check:?}");
    assert!(
        check.detail.contains("ios-build succeeded: `State {Ready for QA} Fixed in build {ios-build #412}` reads"),
        "{}",
        check.detail
    );
    assert!(check.detail.contains("Unknown state: Build broken"), "{}", check.detail);
    assert_eq!(youtrack.asked("/api/commands/assist"), 2);
    assert_eq!(youtrack.asked("/api/issues"), 1, "one issue of MOB looked up");
    assert_eq!(youtrack.asked("/api/commands"), 2, "assist only: nothing applied");
    assert_eq!(youtrack.state("MOB-9").as_deref(), Some("Building"));
}
