//! The nodes as the log knows them: `GET /api/v1/nodes`, draining a node, and a node whose lease
//! ran out shown as lost until it is heard from again.

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_listed_drained_and_shown_lost_when_their_lease_runs_out() {
    let app = spawn_app().await;
    let building = fixture("mob-issueUpdated-state-building.json");
    let nodes_token = std::fs::read_to_string(app.config.nodes.token_file.as_ref().unwrap()).unwrap().trim().to_owned();
    let claim = |node: &'static str, labels: Vec<&'static str>| {
        let body = json!({"node_id": node, "labels": labels, "slots": 2, "wait_seconds": 1});
        app.client.post(app.url("/api/v1/nodes/claim")).bearer_auth(&nodes_token).json(&body).send()
    };
    let listed = || async { answer_of(app.client.get(app.url("/api/v1/nodes")).bearer_auth(&app.admin_token)).await };
    let node = |all: &Value, id: &str| all["nodes"].as_array().unwrap().iter().find(|n| n["node_id"] == id).cloned();

    let first = build_id(&app.deliver(&with(&building, &json!({"id": "MOB-1"}))).await);
    assert_eq!(claim("mac-1", vec!["xcode-16", "arm64"]).await.unwrap().status(), 200);
    let all = listed().await;
    let mac = node(&all, "mac-1").expect("the node is known");
    assert_eq!(mac["state"], "busy");
    assert_eq!(mac["labels"], json!(["arm64", "xcode-16"]));
    assert_eq!(mac["slots"], 2);
    assert_eq!(mac["running"], json!([first.to_string()]));

    // Drained: no new build while it lasts, even with one queued.
    let drain = |draining: bool| {
        let body = json!({"draining": draining, "reason": "OS update"});
        app.client.post(app.url("/api/v1/nodes/mac-1/drain")).bearer_auth(&app.admin_token).json(&body).send()
    };
    assert_eq!(drain(true).await.unwrap().json::<Value>().await.unwrap()["state"], "draining");
    app.deliver(&with(&building, &json!({"id": "MOB-2"}))).await;
    assert_eq!(claim("mac-1", vec!["xcode-16", "arm64"]).await.unwrap().status(), 204);
    drain(false).await.unwrap();
    assert_eq!(claim("mac-1", vec!["xcode-16", "arm64"]).await.unwrap().status(), 200);
    let unknown =
        app.client.post(app.url("/api/v1/nodes/nope/drain")).bearer_auth(&app.admin_token).json(&json!({})).send();
    assert_eq!(unknown.await.unwrap().status(), 404);

    // Its lease runs out (the reaper's expiry): lost, until it is heard from again.
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let expire = meshgate_domain::BuildCommand::Expire { max_attempts: 3 };
    app.handles.builds.execute_at(first, uuid::Uuid::now_v7(), &expire, later).await.unwrap();
    let head = *app.store().head().borrow();
    assert!(app.handles.projections.caught_up_to(head, std::time::Duration::from_secs(5)).await);
    assert_eq!(node(&listed().await, "mac-1").unwrap()["state"], "lost");
    let scraped =
        reqwest::get(format!("http://{}/metrics", app.metrics_addr.unwrap())).await.unwrap().text().await.unwrap();
    assert!(scraped.contains("meshgate_nodes{state=\"lost\"} 1"), "{scraped}");
    assert_eq!(claim("mac-1", vec!["xcode-16", "arm64"]).await.unwrap().status(), 200);
    assert_eq!(node(&listed().await, "mac-1").unwrap()["state"], "busy");
}
