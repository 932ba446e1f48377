//! The self-test: everything in place passes, with a visible line only on sinks that asked for
//! one; what a rotation broke (a webhook token not reloaded, a revoked YouTrack token, a loose
//! file, a deleted webhook) is named, and the command fails.

use meshgate::config::{ChatConfig, ChatKind};
use serde_json::Value;

use crate::helpers::*;
use crate::pki::write_private;
use crate::stand_in::*;
use crate::youtrack::{YouTrack, TOKEN};

fn result_of<'a>(checks: &'a [Value], name: &str) -> (&'a str, &'a str) {
    let check = checks.iter().find(|c| c["check"] == name).unwrap_or_else(|| panic!("no check `{name}`: {checks:?}"));
    (check["result"].as_str().unwrap(), check["detail"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_selftest_passes_when_everything_is_in_place_and_posts_a_line_only_where_asked() {
    let youtrack = YouTrack::start().await;
    let mut team = stand_in(vec![reply(400, None)]).await; // Slack answers a GET of a webhook with 400
    let mut quiet = stand_in(vec![reply(405, None)]).await;
    let mut pager = stand_in(vec![reply(405, None)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    let token = dir.path().join("youtrack.token");
    write_private(&token, TOKEN);
    config.youtrack.base_url = Some(youtrack.url());
    config.youtrack.token_file = Some(token);
    config.chat = vec![
        ChatConfig {
            url: Some(team.url("/services/T/B/x")),
            selftest: true,
            ..ChatConfig::new("team", ChatKind::SlackWebhook)
        },
        ChatConfig { url: Some(quiet.url("/services/T/B/y")), ..ChatConfig::new("quiet", ChatKind::SlackWebhook) },
    ];
    config.pager.url = Some(pager.url("/v2/enqueue"));
    config.pager.routing_key_file = Some(dir.path().join("routing.key"));
    write_private(&dir.path().join("routing.key"), &"r".repeat(32));
    let app = spawn_with(dir, config).await;

    let response = app.client.post(app.url("/api/v1/selftest")).bearer_auth(&app.admin_token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(result_of(checks, "secret files").0, "ok");
    let webhook = format!("webhook {}", app.url("/youtrack/webhook"));
    assert!(result_of(checks, &webhook).1.contains("recorded as a self-test"));
    assert_eq!(result_of(checks, "youtrack token"), ("ok", "belongs to meshgate-bot"));
    assert_eq!(result_of(checks, "sink team").0, "ok");
    assert_eq!(result_of(checks, "sink team test line").0, "ok");
    assert_eq!(result_of(checks, "sink quiet").0, "ok");
    assert_eq!(result_of(checks, "sink pager").0, "ok");
    assert!(checks.iter().all(|c| c["check"] != "sink quiet test line"));

    // The team channel got a probe and a visible line; the quiet one and the pager only a probe.
    assert_eq!(team.next().await.method, "GET");
    let line = team.next().await;
    assert!(line.body["text"].as_str().unwrap().starts_with("meshgate self-test"), "{:?}", line.body);
    assert_eq!(quiet.next().await.method, "GET");
    assert_eq!(pager.next().await.method, "GET");
    assert!(quiet.received.try_recv().is_err() && pager.received.try_recv().is_err());

    // The delivery was recorded and started nothing; the run is in the log.
    let events = app.all_events().await;
    let ignored = events.iter().find(|e| e.event_type == "WebhookIgnored").unwrap();
    assert!(ignored.data.contains("self_test"));
    assert_eq!(app.count("BuildRequested").await, 0);
    assert_eq!(app.count("SelfTestRan").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_selftest_names_what_a_rotation_broke_and_the_command_fails() {
    // YouTrack revoked the bot's token; a chat webhook was deleted (404).
    let youtrack = YouTrack::start_with_token("perm:some-other-token-that-is-long-enough").await;
    let gone = stand_in(vec![reply_with(404, None, "no_service")]).await;
    let app = spawn_app().await;
    let dir = app.dir.path();
    // The new webhook token is in the file, but the gateway was not told (no reload).
    meshgate::secrets::generate_token_file(&dir.join("webhook-new.token"), 0o400).unwrap();
    write_private(&dir.join("youtrack.token"), TOKEN);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("nodes.token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let file = dir.join("rotated.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"{}\"\ndata_dir = \"data\"\n[webhook]\ntoken_files = [\"webhook-new.token\"]\n\
             [admin]\ntoken_file = \"admin.token\"\n[nodes]\ntoken_file = \"nodes.token\"\n\
             [youtrack]\nbot_login = \"meshgate-bot\"\nbase_url = {:?}\ntoken_file = \"youtrack.token\"\n\
             [outbound]\nca_file = {:?}\n\n[[chat]]\nname = \"team\"\nkind = \"slack_webhook\"\nurl = {:?}\n",
            app.addr,
            youtrack.url(),
            crate::pki::pki().ca_file,
            gone.url("/services/T/B/revoked"),
        ),
    )
    .unwrap();
    let output = std::process::Command::new(crate::process::BIN)
        .args(["selftest", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{table}");
    let line = |check: &str| {
        table.lines().find(|l| l.starts_with(check)).unwrap_or_else(|| panic!("{check}: {table}")).to_owned()
    };
    assert!(line("secret files").contains("failed") && line("secret files").contains("world-readable"), "{table}");
    assert!(line("webhook").contains("failed") && line("webhook").contains("401"), "{table}");
    assert!(line("youtrack token").contains("failed") && line("youtrack token").contains("401"), "{table}");
    // The comments' sink is the token's: it fails with it.
    assert!(line("sink youtrack").contains("failed") && line("sink youtrack").contains("token"), "{table}");
    assert!(line("sink team").contains("failed") && line("sink team").contains("404"), "{table}");
    assert_eq!(app.count("BuildRequested").await, 0);
}
