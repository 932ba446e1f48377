//! Why a build waits, each reason brought about with nodes claiming through the node API: in the
//! build's page, the queue and the lane's gauges.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

async fn why(app: &TestApp, build: Uuid) -> Value {
    let detail = answer_of(app.client.get(app.url(&format!("/api/v1/builds/{build}"))).bearer_auth(&app.admin_token));
    detail.await["waiting"].clone()
}

async fn metric(app: &TestApp, line: &str) -> Option<f64> {
    let scraped =
        reqwest::get(format!("http://{}/metrics", app.metrics_addr.unwrap())).await.unwrap().text().await.unwrap();
    scraped.lines().find_map(|l| l.strip_prefix(line).and_then(|v| v.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_reason_a_build_waits_is_said_where_it_waits() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), vec![ios_trigger(), sign_trigger()]);
    let app = spawn_with(dir, config).await;
    let building = fixture("mob-issueUpdated-state-building.json");
    let mob = |n: u32| with(&building, &json!({"id": format!("MOB-{n}")}));
    let sign = sign_issue;

    let m1 = build_id(&app.deliver(&mob(1)).await);
    assert_eq!(why(&app, m1).await, json!({"reason": "no_nodes"}));

    // A node without labels, one slot: it takes MOB-1; MOB-2 waits for it.
    assert!(app.claim("plain", &[], 1, 0).await.is_some());
    let m2 = build_id(&app.deliver(&mob(2)).await);
    assert_eq!(why(&app, m2).await, json!({"reason": "nodes_busy", "nodes": 1, "slots": 1}));

    // A signing build, and no live node with the label: the lane cannot be served.
    let s1 = build_id(&app.deliver(&sign(1)).await);
    assert_eq!(why(&app, s1).await, json!({"reason": "no_node_with", "labels": ["signing"], "xcode": null}));
    assert_eq!(metric(&app, "meshgate_lane_unservable{lane=\"signing\"}").await, Some(1.0));
    assert!(metric(&app, "meshgate_queue_oldest_seconds{lane=\"signing\"}").await.is_some());

    // A signing node with two slots takes it; the lane runs one at a time.
    assert_eq!(app.claim("signer", &["signing"], 2, 0).await.unwrap()["build"]["build_id"], s1.to_string());
    assert_eq!(metric(&app, "meshgate_lane_unservable{lane=\"signing\"}").await, Some(0.0));
    // The build says when its attempt started: its claim's time.
    let detail =
        answer_of(app.client.get(app.url(&format!("/api/v1/builds/{s1}"))).bearer_auth(&app.admin_token)).await;
    let claimed = detail["events"].as_array().unwrap().iter().find(|e| e["type"] == "BuildClaimed").unwrap();
    assert_eq!(detail["build"]["started_at"], claimed["recorded_at"]);
    assert!(detail["build"]["started_at"].is_string());
    let s2 = build_id(&app.deliver(&sign(2)).await);
    assert_eq!(why(&app, s2).await, json!({"reason": "lane_full", "max_running": 1, "running": [s1.to_string()]}));
    // MOB-2 could go to the signer's free slot, but the signing lane comes first there.
    let queue = answer_of(app.client.get(app.url("/api/v1/queue")).bearer_auth(&app.admin_token)).await;
    let reasons: Vec<(&str, &str)> = queue["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["issue_id"].as_str().unwrap(), q["waiting"]["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(reasons, [("SIGN-2", "lane_full"), ("MOB-2", "ahead")]);
    assert_eq!(queue["queue"][1]["waiting"]["builds"], 1);
    assert_eq!(queue["queue"][0]["trigger"], "ios-sign");
    assert_eq!(queue["queue"][0]["number"], 2);
    let lane = |page: &Value, name: &str| page["lanes"].as_array().unwrap().iter().find(|l| l["lane"] == name).cloned();
    let default = lane(&queue, "default").unwrap();
    assert_eq!((&default["queued"], &default["running"]), (&json!(1), &json!(1)));
    assert_eq!(default["waiting_since"], queue["queue"][1]["requested_at"]);
    assert_eq!(lane(&queue, "signing").unwrap()["queued"], 1);

    // A page: the first builds in the order nodes get them, of one lane or of all; the lanes
    // count them all, and builds of other lanes ahead are still counted.
    let page = |query: &str| {
        answer_of(app.client.get(app.url(&format!("/api/v1/queue?{query}"))).bearer_auth(&app.admin_token))
    };
    let first = page("limit=1").await;
    assert_eq!(first["queue"].as_array().unwrap().len(), 1);
    assert_eq!(first["queue"][0]["issue_id"], "SIGN-2");
    assert_eq!(lane(&first, "default").unwrap()["queued"], 1);
    let default = page("lane=default").await;
    assert_eq!(default["queue"].as_array().unwrap().len(), 1);
    assert_eq!(default["queue"][0]["issue_id"], "MOB-2");
    assert_eq!(default["queue"][0]["waiting"], json!({"reason": "ahead", "builds": 1}));
    for (query, field) in
        [("lane=gpu", "lane"), ("limit=0", "limit"), ("limit=1001", "limit"), ("colour=red", "colour")]
    {
        let wrong = app.get(&format!("/api/v1/queue?{query}")).await;
        assert_eq!(wrong.status(), 400, "{query}");
        let body: Value = wrong.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains(field), "{query}: {body}");
    }

    // `meshgate status` says the same on one screen.
    let read = |path: &str| answer_of(app.client.get(app.url(path)).bearer_auth(&app.admin_token));
    let (nodes, running) = (read("/api/v1/nodes").await, read("/api/v1/builds?state=running&limit=1000").await);
    let screen = meshgate::cli::status::summary(&nodes, &running, &queue);
    for line in [
        "nodes: 2 (0 idle, 2 busy, 0 draining, 0 lost)",
        "running: 2",
        "queued: 2",
        "its lane runs 1 at a time, all taken",
        "1 ahead of it",
    ] {
        assert!(screen.contains(line), "no `{line}` in:\n{screen}");
    }
    assert!(
        screen.lines().any(|l| l.contains("SIGN-1") && l.contains("ios-sign #1") && l.contains("on signer")),
        "{screen}"
    );
    // Listing the first build only, it still counts them all.
    let screen = meshgate::cli::status::summary(&nodes, &running, &first);
    assert!(screen.contains("queued: 2\n") && screen.contains("and 1 more"), "{screen}");

    // The signer drains: MOB-2 waits for the busy plain node; SIGN-2 for a signing node again.
    let drain = json!({"draining": true, "reason": "Xcode upgrade"});
    answer_of(app.client.post(app.url("/api/v1/nodes/signer/drain")).bearer_auth(&app.admin_token).json(&drain)).await;
    assert_eq!(why(&app, m2).await["reason"], "nodes_busy");
    assert_eq!(why(&app, s2).await["reason"], "no_node_with");
    // A build that is not queued says nothing.
    assert!(why(&app, m1).await.is_null());
}
