//! `GET /metrics`: what Prometheus scrapes, in its text format, on a listener of its own.

use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_deliveries_commits_builds_and_the_log_head() {
    // No [[lanes]]: the triggers' implicit `default` lane has its series all the same.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.lanes.clear();
    let app = spawn_with(dir, config).await;
    app.deliver(&with(&fixture("mob-issueUpdated-state-building.json"), &json!({"id": "MOB-901"}))).await;
    let refused =
        app.client.post(app.url("/youtrack/webhook")).header("X-YouTrack-Token", "wrong").body("{}").send().await;
    assert_eq!(refused.unwrap().status(), 401);
    let head = *app.store().head().borrow();
    assert!(app.handles.projections.caught_up_to(head, std::time::Duration::from_secs(5)).await);

    let addr = app.metrics_addr.expect("a metrics listener");
    let scraped = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(scraped.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = scraped.text().await.unwrap();
    let value = |series: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    // Counters are the process's (other tests' gateways count too): at least this test's.
    assert!(value("meshgate_webhook_deliveries_total{outcome=\"enqueued\"}") >= 1.0);
    assert!(value("meshgate_webhook_deliveries_total{outcome=\"unauthorized\"}") >= 1.0);
    assert!(value("meshgate_webhook_request_duration_seconds_count") >= 2.0);
    assert!(value("meshgate_store_commit_duration_seconds_count") >= 1.0);
    assert!(value("meshgate_store_commit_events_sum") >= 4.0);
    // Gauges are read from this gateway when scraped.
    assert_eq!(value("meshgate_builds{lane=\"default\",state=\"queued\"}"), 1.0);
    assert_eq!(value("meshgate_builds{lane=\"default\",state=\"running\"}"), 0.0);
    assert_eq!(value("meshgate_log_position"), head as f64);
    assert_eq!(value("meshgate_projection_lag_events{projection=\"all\"}"), 0.0);
    assert!(text.contains("# HELP meshgate_webhook_deliveries_total"), "{text}");

    // Claimed by a node: one running, none queued.
    let nodes_token = std::fs::read_to_string(app.dir.path().join("nodes.token")).unwrap();
    let claim = json!({"node_id": "mac-1", "labels": ["xcode-16"], "slots": 1, "wait_seconds": 0});
    let claimed = app
        .client
        .post(app.url("/api/v1/nodes/claim"))
        .bearer_auth(nodes_token.trim())
        .json(&claim)
        .send()
        .await
        .unwrap();
    assert_eq!(claimed.status(), 200);
    let head = *app.store().head().borrow();
    assert!(app.handles.projections.caught_up_to(head, std::time::Duration::from_secs(5)).await);
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    let value = |series: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("meshgate_builds{lane=\"default\",state=\"queued\"}"), 0.0);
    assert_eq!(value("meshgate_builds{lane=\"default\",state=\"running\"}"), 1.0);
}

#[tokio::test]
async fn with_json_logs_every_line_is_one_object_and_a_delivery_carries_its_correlation_id() {
    use crate::process::{start, token, write_config};
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let toml = std::fs::read_to_string(&config).unwrap() + "\n[log]\nformat = \"json\"\n";
    std::fs::write(&config, toml).unwrap();
    let gateway = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let answer = answer_of(
        reqwest::Client::new()
            .post(gateway.url("/youtrack/webhook"))
            .header("X-YouTrack-Token", token(dir.path(), "webhook.token"))
            .header("Content-Type", "application/json")
            .body(fixture("mob-issueUpdated-state-building.json")),
    )
    .await;
    gateway.stop();
    let said = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    let lines: Vec<serde_json::Value> =
        said.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let accepted = lines.iter().find(|l| l["message"] == "delivery accepted").expect("the delivery's line");
    // Standard output too: the token files and where it listens, each a JSON object.
    let printed = std::fs::read_to_string(dir.path().join("stdout.log")).unwrap();
    assert!(printed.lines().count() >= 3, "{printed}");
    for line in printed.lines() {
        let said: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(said["message"].as_str().is_some_and(|m| m.ends_with("token file")), "{said}");
    }
    assert_eq!(accepted["span"]["correlation_id"], answer["correlation_id"]);
}
