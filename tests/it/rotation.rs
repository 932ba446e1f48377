//! Rotating the received tokens (webhook, build pool) without a restart: a reload through the API
//! and on SIGHUP.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use meshgate::config::Config;
use meshgate::secrets::generate_token_file;
use serde_json::Value;

use crate::helpers::*;
use crate::process::{launch, token};

/// A configuration file whose webhook token files are `webhook_files` and whose build pool token
/// is `nodes.token`, with `previous_nodes` being rotated out (all in `dir`).
fn write_config(dir: &Path, webhook_files: &[&str], previous_nodes: Option<&str>) -> std::path::PathBuf {
    let files = webhook_files.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ");
    let previous = previous_nodes.map(|f| format!("previous_token_file = {f:?}\n")).unwrap_or_default();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\n[webhook]\ntoken_files = [{files}]\n\n\
         [admin]\ntoken_file = \"admin.token\"\n\n[nodes]\ntoken_file = \"nodes.token\"\n{previous}"
    );
    let path = dir.join("meshgate.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn tokens(dir: &Path, names: &[&str]) {
    for name in names {
        generate_token_file(&dir.join(name), 0o400).unwrap();
    }
}

async fn post_with(app: &TestApp, token: &str) -> u16 {
    let body = fixture("mob-issueUpdated-state-building.json");
    let response = app
        .client
        .post(app.url("/youtrack/webhook"))
        .header("X-YouTrack-Token", token)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

/// A node's heartbeat for a build that does not exist: refused as unauthorized only if the token is.
async fn node_authorized(app: &TestApp, token: &str) -> bool {
    let response = app
        .client
        .post(app.url(&format!("/api/v1/builds/{}/heartbeat", uuid::Uuid::nil())))
        .bearer_auth(token)
        .json(&serde_json::json!({"node_id": "mac-1", "attempt": 1}))
        .send()
        .await
        .unwrap();
    response.status() != 401
}

async fn reload(app: &TestApp) -> (u16, Value) {
    let response =
        app.client.post(app.url("/api/v1/tokens/reload")).bearer_auth(&app.admin_token).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_webhook_tokens_and_a_refused_one_keeps_those_in_force() {
    let dir = tempfile::tempdir().unwrap();
    tokens(dir.path(), &["webhook.token", "admin.token", "nodes.token", "webhook-2.token"]);
    let config = Config::load(Some(&write_config(dir.path(), &["webhook.token"], None))).unwrap();
    let app = spawn_with(dir, config).await;
    let (old, new) = (token(app.dir.path(), "webhook.token"), token(app.dir.path(), "webhook-2.token"));
    assert_eq!(post_with(&app, &new).await, 401);

    // Only with the admin token.
    let anonymous = app.client.post(app.url("/api/v1/tokens/reload")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let as_sender = app.client.post(app.url("/api/v1/tokens/reload")).bearer_auth(&old).send().await.unwrap();
    assert_eq!(as_sender.status(), 401);

    // Both during the rotation.
    write_config(app.dir.path(), &["webhook.token", "webhook-2.token"], None);
    let (status, answer) = reload(&app).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["webhook"].as_array().unwrap().len(), 2);
    assert_eq!(post_with(&app, &old).await, 200);
    assert_eq!(post_with(&app, &new).await, 200);

    // A world-readable file is refused, naming it; the tokens in force stay.
    let loose = app.dir.path().join("webhook-3.token");
    std::fs::write(&loose, "c".repeat(64)).unwrap();
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    write_config(app.dir.path(), &["webhook-2.token", "webhook-3.token"], None);
    let (status, answer) = reload(&app).await;
    assert_eq!(status, 422);
    assert_eq!(answer["error"], "reload_refused");
    assert!(answer["message"].as_str().unwrap().contains("webhook-3.token"), "{answer}");
    assert!(!answer.to_string().contains(&"c".repeat(64)));
    assert_eq!(post_with(&app, &old).await, 200);
    assert_eq!(post_with(&app, &new).await, 200);

    // Rotation done: the old token is refused from now on.
    write_config(app.dir.path(), &["webhook-2.token"], None);
    let (status, answer) = reload(&app).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["webhook"].as_array().unwrap().len(), 1);
    assert!(!answer.to_string().contains(&new));
    assert_eq!(post_with(&app, &old).await, 401);
    assert_eq!(post_with(&app, &new).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_build_pool_token_rotates_with_the_previous_one_accepted_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    tokens(dir.path(), &["webhook.token", "admin.token", "nodes.token"]);
    let config = Config::load(Some(&write_config(dir.path(), &["webhook.token"], None))).unwrap();
    let app = spawn_with(dir, config).await;
    let old = token(app.dir.path(), "nodes.token");
    assert!(node_authorized(&app, &old).await);
    assert!(!node_authorized(&app, &format!("{old}x")).await, "the probe must tell tokens apart");

    // The old token moves aside; a new one takes its name.
    std::fs::rename(app.dir.path().join("nodes.token"), app.dir.path().join("nodes-old.token")).unwrap();
    tokens(app.dir.path(), &["nodes.token"]);
    let new = token(app.dir.path(), "nodes.token");
    write_config(app.dir.path(), &["webhook.token"], Some("nodes-old.token"));
    let (status, answer) = reload(&app).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["nodes"].as_array().unwrap().len(), 2);
    assert!(node_authorized(&app, &old).await);
    assert!(node_authorized(&app, &new).await);

    // Every machine has the new one.
    write_config(app.dir.path(), &["webhook.token"], None);
    assert_eq!(reload(&app).await.0, 200);
    assert!(!node_authorized(&app, &old).await);
    assert!(node_authorized(&app, &new).await);
}

#[tokio::test]
async fn a_gateway_reloads_its_webhook_tokens_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    tokens(dir.path(), &["webhook.token", "admin.token", "nodes.token", "webhook-2.token"]);
    let config = write_config(dir.path(), &["webhook.token"], None);
    let args = ["--config", config.to_str().unwrap()];
    let mut gateway = launch(dir.path(), &args, &[("RUST_LOG", "info")], Stdio::piped());
    let stderr = BufReader::new(gateway.child.stderr.take().unwrap());
    let new = token(dir.path(), "webhook-2.token");
    let client = reqwest::Client::new();
    let post = |token: String| {
        let request = client
            .post(format!("http://{}/youtrack/webhook", gateway.addr))
            .header("X-YouTrack-Token", token)
            .header("Content-Type", "application/json")
            .body(fixture("mob-issueUpdated-state-building.json"));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(new.clone()).await, 401);

    write_config(dir.path(), &["webhook.token", "webhook-2.token"], None);
    let hangup = Command::new("kill").args(["-HUP", &gateway.child.id().to_string()]).status().unwrap();
    assert!(hangup.success());
    // The gateway says so on standard error, read as it comes until the process ends (a reader
    // that stopped early would leave the gateway writing into a closed pipe).
    let (said, reloaded) = tokio::sync::oneshot::channel();
    let log = std::thread::spawn(move || {
        let mut said = Some(said);
        let mut log = Vec::new();
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("tokens reloaded") {
                if let Some(said) = said.take() {
                    let _ = said.send(());
                }
            }
            log.push(line);
        }
        log
    });
    let reloaded = tokio::time::timeout(std::time::Duration::from_secs(60), reloaded).await;
    assert!(matches!(reloaded, Ok(Ok(()))), "the gateway did not say it reloaded its tokens");
    let old = token(dir.path(), "webhook.token");
    assert_eq!(post(new.clone()).await, 200);
    assert_eq!(post(old.clone()).await, 200);
    gateway.stop();
    // The reload names the files, never what is in them.
    let log = log.join().unwrap().join("\n");
    assert!(log.contains("webhook-2.token"), "{log}");
    assert!(!log.contains(&new) && !log.contains(&old));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_rotates_with_the_previous_one_accepted_and_log_links_stay() {
    let dir = tempfile::tempdir().unwrap();
    tokens(dir.path(), &["webhook.token", "admin.token", "nodes.token", "admin-2.token"]);
    let fixture_config = std::fs::read_to_string(fixtures().join("config/one-trigger.toml")).unwrap();
    let file = dir.path().join("meshgate.toml");
    let admin_files = |current: &str, previous: Option<&str>| {
        let previous = previous.map(|p| format!("\nprevious_token_file = {p:?}")).unwrap_or_default();
        let config =
            fixture_config.replace("token_file = \"admin.token\"", &format!("token_file = {current:?}{previous}"));
        std::fs::write(&file, config).unwrap();
    };
    admin_files("admin.token", None);
    let app = spawn_with(dir, Config::load(Some(&file)).unwrap()).await;
    let (old, new) = (token(app.dir.path(), "admin.token"), token(app.dir.path(), "admin-2.token"));
    let build = build_id(&app.deliver(&fixture("mob-issueUpdated-state-building.json")).await);
    // The link is absolute; a restart serves on another port, so the path and key are compared.
    let link = |answer: Value| {
        let url = answer["log_url"].as_str().unwrap();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        url.split_once("/api/").unwrap().1.to_owned()
    };
    let before = link(app.get(&format!("/api/v1/builds/{build}")).await.json().await.unwrap());
    // Links made before the key had a file of its own were signed with the admin token: the file
    // starts out holding it, so those links keep working.
    let key = app.config.server.data_dir.join("secrets/log-links.key");
    assert_eq!(std::fs::read_to_string(&key).unwrap().trim(), old);

    let status_with = |token: &str| {
        let request = app.client.get(app.url("/api/v1/queue")).bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status_with(&new).await, 401);
    admin_files("admin-2.token", Some("admin.token"));
    let (status, answer) = reload(&app).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["admin"].as_array().unwrap().len(), 2);
    assert_eq!(status_with(&old).await, 200);
    assert_eq!(status_with(&new).await, 200);

    admin_files("admin-2.token", None);
    let reloaded = app.client.post(app.url("/api/v1/tokens/reload")).bearer_auth(&new).send().await.unwrap().status();
    assert_eq!(reloaded, 200);
    assert_eq!(status_with(&old).await, 401);
    assert_eq!(status_with(&new).await, 200);

    // After a restart with the new admin token, the build's log link is the one made before.
    let (dir, _) = app.shutdown().await;
    let app = spawn_with(dir, Config::load(Some(&file)).unwrap()).await;
    assert_eq!(app.admin_token, new);
    let after = link(app.get(&format!("/api/v1/builds/{build}")).await.json().await.unwrap());
    assert_eq!(after, before, "a new admin token leaves log links alone");
}

/// What a configuration with outbound secrets names: a generic chat hook at the URL in
/// `hook_file`, a Slack sink with buttons signed with `signing_file`, YouTrack's token in
/// `youtrack_file` (with `previous` being rotated out), all in `dir`.
fn outbound_config(dir: &Path, hook_file: &str, signing_file: &str, youtrack_file: &str, previous: Option<&str>) {
    let base = std::fs::read_to_string(dir.join("base.toml")).unwrap();
    let previous = previous.map(|f| format!("previous_token_file = {f:?}\n")).unwrap_or_default();
    let toml = format!(
        "{base}\n[youtrack]\nbase_url = {:?}\ntoken_file = {youtrack_file:?}\n{previous}bot_login = \"meshgate-bot\"\n\n\
         [[chat]]\nname = \"hook\"\nkind = \"generic\"\nurl_file = {hook_file:?}\n\n\
         [[chat]]\nname = \"slack\"\nkind = \"slack_api\"\nurl = {:?}\ntoken_file = \"slack.token\"\nchannel = \"C0\"\n\
         allowed_users = [\"U1\"]\nsigning_secret_file = {signing_file:?}\n",
        std::fs::read_to_string(dir.join("youtrack.url")).unwrap(),
        std::fs::read_to_string(dir.join("slack.url")).unwrap(),
    );
    std::fs::write(dir.join("meshgate.toml"), toml).unwrap();
}

/// A Slack click signed with `secret`: its status (401: the signature matched no secret in force).
async fn signed_click(app: &TestApp, secret: &str) -> u16 {
    let body = "payload=%7B%7D";
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let signature = meshgate::http::slack::signature(secret, &timestamp, body.as_bytes());
    let response = app
        .client
        .post(app.url("/chat/slack/actions"))
        .header("X-Slack-Request-Timestamp", timestamp)
        .header("X-Slack-Signature", signature)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbound_secrets_rotate_under_load_with_a_reload_and_no_notification_is_lost() {
    use crate::stand_in::{reply_with, stand_in};
    use crate::youtrack::YouTrack;

    let mut hook = stand_in(vec![]).await;
    let slack_ok = reply_with(200, None, r#"{"ok": true, "ts": "1700000000.000100"}"#);
    let slack = stand_in(vec![slack_ok; 200]).await;
    let (first_token, second_token) =
        ("perm:first-bot-token-of-the-gateway.aaaa", "perm:second-bot-token-of-the-gateway.bbbb");
    let youtrack = YouTrack::start_with_token(first_token).await;
    let dir = tempfile::tempdir().unwrap();
    tokens(dir.path(), &["webhook.token", "admin.token", "nodes.token", "slack.token"]);
    let secret = |name: &str, value: &str| crate::pki::write_private(&dir.path().join(name), value);
    secret("hook-1.url", &hook.url("/services/first-secret-url-of-the-hook"));
    secret("hook-2.url", &hook.url("/services/second-secret-url-of-the-hook"));
    secret("signing-1.secret", "first-signing-secret-of-slack-0123456789");
    secret("signing-2.secret", "second-signing-secret-of-slack-0123456789");
    secret("youtrack-1.token", first_token);
    secret("youtrack-2.token", second_token);
    std::fs::write(dir.path().join("youtrack.url"), youtrack.url()).unwrap();
    std::fs::write(dir.path().join("slack.url"), slack.url("/api")).unwrap();
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\n[webhook]\ntoken_files = [\"webhook.token\"]\n\n\
         [admin]\ntoken_file = \"admin.token\"\n\n[nodes]\ntoken_file = \"nodes.token\"\n\n\
         [outbound]\nca_file = {:?}\nretry_base_ms = 10\n\n[reconcile]\ninterval_seconds = 0\n\n\
         [[triggers]]\nname = \"ios-build\"\nprojects = [\"MOB\"]\nfield = \"State\"\nto = [\"Building\"]\n\
         script = \"ios-build\"\ngit_ref = \"feature/{{issue}}\"\n",
        crate::pki::pki().ca_file
    );
    std::fs::write(dir.path().join("base.toml"), base).unwrap();
    outbound_config(dir.path(), "hook-1.url", "signing-1.secret", "youtrack-1.token", None);
    let config = Config::load(Some(&dir.path().join("meshgate.toml"))).unwrap();
    let app = spawn_with(dir, config).await;
    let webhook = token(app.dir.path(), "webhook.token");
    assert_eq!(signed_click(&app, "first-signing-secret-of-slack-0123456789").await, 400, "signed: read, then refused");

    // Deliveries go on through the rotation: sixty builds, each told to both chat sinks.
    let deliveries = 60;
    let building = fixture("mob-issueUpdated-state-building.json");
    let load = {
        let (client, url, webhook) = (app.client.clone(), app.url("/youtrack/webhook"), webhook.clone());
        tokio::spawn(async move {
            for n in 0..deliveries {
                let body = with(&building, &serde_json::json!({"id": format!("MOB-{}", 100 + n)}));
                let sent =
                    client.post(&url).header("X-YouTrack-Token", &webhook).header("Content-Type", "application/json");
                assert_eq!(sent.body(body).send().await.unwrap().status(), 200);
            }
        })
    };
    // The first notifications went out with the first secrets.
    assert_eq!(hook.next().await.path, "/services/first-secret-url-of-the-hook");

    // Rotated: the new secrets written, YouTrack's token dual-run, the hook's URL and Slack's
    // signing secret replaced, then a reload; meanwhile YouTrack takes only the new token.
    outbound_config(app.dir.path(), "hook-2.url", "signing-2.secret", "youtrack-2.token", Some("youtrack-1.token"));
    let (status, answer) = reload(&app).await;
    assert_eq!(status, 200, "{answer}");
    let mut reloaded: Vec<&str> = answer["sinks"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    reloaded.sort();
    assert_eq!(reloaded, ["hook", "slack", "youtrack"]);
    assert!(!answer.to_string().contains("second"), "no secret in the answer: {answer}");
    youtrack.accept_only(second_token);
    load.await.unwrap();

    // Every build told to both sinks, nothing abandoned; once the hook's new URL was used, the
    // old one never again.
    app.wait_for_count("NotificationDelivered", 2 * deliveries).await;
    assert_eq!(app.count("NotificationAbandoned").await, 0);
    let mut paths = Vec::new();
    while let Ok(received) = hook.received.try_recv() {
        paths.push(received.path);
    }
    let switched = paths.iter().position(|p| p.contains("second")).expect("the new URL was used");
    assert!(paths[switched..].iter().all(|p| p.contains("second")), "{paths:?}");
    // Slack clicks signed with the old secret are refused; with the new one read.
    assert_eq!(signed_click(&app, "first-signing-secret-of-slack-0123456789").await, 401);
    assert_eq!(signed_click(&app, "second-signing-secret-of-slack-0123456789").await, 400);
    // Reconciliation reads YouTrack with the new token.
    let swept =
        app.client.post(app.url("/api/v1/reconcile")).bearer_auth(&app.admin_token).json(&serde_json::json!({}));
    let swept: Value = swept.send().await.unwrap().json().await.unwrap();
    assert_eq!(swept["errors"], serde_json::json!([]), "{swept}");
}
