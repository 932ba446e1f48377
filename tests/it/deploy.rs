//! A first deployment as the shipped systemd unit runs it: `meshgate init /etc/meshgate --data-dir
//! /var/lib/meshgate`, every file key relative to that folder, and the process started from another
//! working directory.

use std::path::Path;
use std::process::Stdio;

use serde_json::{json, Value};

use crate::helpers::*;
use crate::pki::{https_client, pki, write_private};
use crate::process::{launch, token, BIN};
use crate::stand_in::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_like_the_systemd_unit_finds_every_file_its_configuration_names() {
    let mut slack = stand_in(vec![]).await;
    let bot_token = format!("perm:{}", "y".repeat(40));
    let youtrack = crate::youtrack::YouTrack::start_with_token(&bot_token).await;
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc/meshgate");
    let var = root.path().join("var/lib/meshgate");
    std::fs::create_dir_all(&var).unwrap();
    let init = std::process::Command::new(BIN)
        .args(["init", etc.to_str().unwrap(), "--data-dir", var.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));

    // What an operator adds to the sample: every file named relative to /etc/meshgate.
    let secrets = etc.join("secrets");
    write_private(&secrets.join("slack-webhook.url"), &slack.url("/services/T0/B0/x"));
    write_private(&secrets.join("youtrack.token"), &bot_token);
    write_private(&secrets.join("pagerduty.key"), &"p".repeat(32));
    std::fs::create_dir_all(etc.join("tls")).unwrap();
    pki().write_leaf(&etc.join("tls"), "gateway", 50);
    std::fs::copy(&pki().ca_file, etc.join("tls/ca.pem")).unwrap();
    let sample = std::fs::read_to_string(etc.join("meshgate.toml")).unwrap();
    let config = sample
        .replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:0\"\ntls_cert_file = \"tls/gateway.crt\"\ntls_key_file = \"tls/gateway.key\"",
        )
        .replace("# base_url = \"https://youtrack.example.com\"", &format!("base_url = {:?}", youtrack.url()))
        .replace("# token_file = \"secrets/youtrack.token\"", "token_file = \"secrets/youtrack.token\"")
        .replace(
            "# [[chat]]\n# name = \"team\"\n# kind = \"slack_webhook\"\n# url_file = \"secrets/slack-webhook.url\"",
            "[[chat]]\nname = \"team\"\nkind = \"slack_webhook\"\nurl_file = \"secrets/slack-webhook.url\"",
        )
        .replace(
            "# [pager]\n# routing_key_file = \"secrets/pagerduty.key\"",
            "[pager]\nrouting_key_file = \"secrets/pagerduty.key\"",
        )
        .replace("dedupe_window_seconds = 3600", "dedupe_window_seconds = 3600\nca_file = \"tls/ca.pem\"");
    assert_ne!(config, sample);
    assert!(
        !config.contains("# [[chat]]")
            && !config.contains("# [pager]")
            && !config.contains("# token_file = \"secrets/y")
    );
    std::fs::write(etc.join("meshgate.toml"), config).unwrap();

    // As the unit runs it: `--config /etc/meshgate/meshgate.toml`, from /var/lib/meshgate.
    let config_file = etc.join("meshgate.toml");
    let gateway = launch(&var, &["--config", config_file.to_str().unwrap()], &[], Stdio::null());
    assert_eq!(gateway.scheme, "https");
    let client = https_client();
    let delivered = client
        .post(gateway.url("/youtrack/webhook"))
        .header("X-YouTrack-Token", token(&secrets, "webhook.token"))
        .header("Content-Type", "application/json")
        .body(fixture("mob-issueUpdated-state-building.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(delivered.status(), 200);
    let build = build_id(&delivered.json().await.unwrap());
    assert!(slack.next().await.body["text"].as_str().unwrap().starts_with("⏳ MOB-7 ios-build #1 queued"));

    let nodes = token(&secrets, "nodes.token");
    let node = |path: String, body: Value| client.post(gateway.url(&path)).bearer_auth(&nodes).json(&body).send();
    node("/api/v1/nodes/claim".into(), json!({"node_id": "mac-1", "slots": 1, "wait_seconds": 5})).await.unwrap();
    let result = json!({"node_id": "mac-1", "attempt": 1, "outcome": "failed", "duration_ms": 1, "log_tail": "boom\n"});
    assert_eq!(node(format!("/api/v1/builds/{build}/result"), result).await.unwrap().status(), 200);
    // The bot's token from its relative token_file (the stand-in refuses any other).
    let comment = youtrack.next_comment().await;
    assert_eq!(comment["issue"], "MOB-7");
    assert!(comment["text"].as_str().unwrap().contains("failed"));
    assert!(Path::new(&var).join("events.sqlite").exists(), "the log is under the unit's data folder");
    gateway.stop();
}
