//! `GET /api/v1/events`: the audit over HTTP, on both backends, paged by log position.

use serde_json::{json, Value};

use crate::helpers::*;

async fn gateway(shared: bool) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    if shared {
        config.store.backend = meshgate::config::StoreBackend::Postgres;
        config.store.url = Some(crate::postgres::database().await);
    }
    spawn_with(dir, config).await
}

fn types(answer: &Value) -> Vec<&str> {
    answer["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect()
}

async fn audit(shared: bool) {
    let app = gateway(shared).await;
    let building = fixture("mob-issueUpdated-state-building.json");
    let first = app.deliver(&with(&building, &json!({"id": "MOB-1"}))).await;
    let build = build_id(&first);
    app.deliver(&with(&building, &json!({"id": "MOB-2"}))).await;
    app.finish_build(build, true).await;
    let get = |query: &str| {
        let url = app.url(&format!("/api/v1/events?{query}"));
        app.client.get(url).bearer_auth(&app.admin_token).send()
    };

    let issue: Value = get("issue=MOB-1").await.unwrap().json().await.unwrap();
    assert_eq!(
        types(&issue),
        ["WebhookReceived", "WebhookRouted", "IntentActivated", "BuildRequested", "BuildClaimed", "BuildSucceeded"],
        "{issue}"
    );
    assert!(issue["events"][0]["data"]["body"].as_str().unwrap().contains("MOB-1"), "the body as it arrived");
    let of_build: Value = get(&format!("build={build}")).await.unwrap().json().await.unwrap();
    assert_eq!(types(&of_build), ["IntentActivated", "BuildRequested", "BuildClaimed", "BuildSucceeded"]);
    let names: Vec<&Value> = of_build["events"].as_array().unwrap().iter().map(|e| &e["build"]).collect();
    assert!(names.iter().all(|n| *n == "ios-build #1"), "each event names its build: {names:?}");
    assert!(issue["events"][0]["build"].is_null(), "a delivery is about no one build");
    let caused: Value =
        get(&format!("correlation={}", first["correlation_id"].as_str().unwrap())).await.unwrap().json().await.unwrap();
    assert_eq!(caused["events"].as_array().unwrap().len(), 4);

    // Paged by position.
    let page: Value = get("type=BuildRequested&limit=1").await.unwrap().json().await.unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    let next = page["next_after"].as_u64().expect("more to read");
    assert_eq!(page["events"][0]["position"].as_u64(), Some(next));
    let rest: Value = get(&format!("type=BuildRequested&after={next}")).await.unwrap().json().await.unwrap();
    assert_eq!(rest["events"][0]["data"]["issue_id"], "MOB-2");
    assert_eq!(rest["events"][0]["build"], "ios-build #2");
    assert!(rest["next_after"].is_null());

    // Clear refusals.
    let bad = get("build=nope").await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<Value>().await.unwrap()["field"], "build");
    assert_eq!(get("limit=0").await.unwrap().status(), 400);
    assert_eq!(get("colour=red").await.unwrap().status(), 400);
    assert_eq!(app.client.get(app.url("/api/v1/events")).send().await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_answers_over_http_on_sqlite() {
    audit(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_answers_over_http_on_postgres() {
    audit(true).await;
}

/// The live tail: server-sent events as commits land, resumable by position, over when the
/// gateway stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_tail_streams_each_commit_and_ends_when_the_gateway_stops() {
    let app = gateway(false).await;
    let building = fixture("mob-issueUpdated-state-building.json");
    app.deliver(&with(&building, &json!({"id": "MOB-1"}))).await;
    let first_head = *app.store().head().borrow();
    // From now on, requested builds only.
    let response = app
        .client
        .get(app.url("/api/v1/events/stream?type=BuildRequested"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response;
    app.deliver(&with(&building, &json!({"id": "MOB-2"}))).await;
    let mut seen = String::new();
    while !seen.contains("\n\n") {
        let chunk =
            tokio::time::timeout(std::time::Duration::from_secs(10), body.chunk()).await.unwrap().unwrap().unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(seen.contains("event: BuildRequested"), "{seen}");
    assert!(seen.contains("\"issue_id\":\"MOB-2\""), "only what happened after it opened: {seen}");
    assert!(!seen.contains("MOB-1"), "{seen}");

    // A client resuming after the first delivery's events gets MOB-2's build again.
    let resumed = app
        .client
        .get(app.url("/api/v1/events/stream?type=BuildRequested"))
        .header("Last-Event-ID", first_head.to_string())
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    let mut resumed = resumed;
    let chunk =
        tokio::time::timeout(std::time::Duration::from_secs(10), resumed.chunk()).await.unwrap().unwrap().unwrap();
    assert!(std::str::from_utf8(&chunk).unwrap().contains("MOB-2"));

    // Stopping the gateway ends the streams (and is not held up by them).
    tokio::time::timeout(std::time::Duration::from_secs(10), app.shutdown()).await.expect("the gateway stops");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Ok(Some(_)) = body.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latest_deliveries_say_what_became_of_each_newest_first() {
    let app = gateway(false).await;
    let building = fixture("mob-issueUpdated-state-building.json");
    let first = app.deliver(&building).await;
    app.deliver(&building).await;
    app.deliver(&fixture("mob-issueUpdated-by-bot.json")).await;
    // Building → Open: the build is cancelled, and that is what became of the delivery.
    let left = app.deliver(&fixture("mob-issueUpdated-state-open.json")).await;
    let get =
        |query: &str| app.client.get(app.url(&format!("/api/v1/deliveries{query}"))).bearer_auth(&app.admin_token);
    let answer = answer_of(get("")).await;
    let seen: Vec<(&str, &str)> = answer["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["outcome"].as_str().unwrap(), d["reason"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        seen,
        [
            ("cancelled", "left_trigger_state"),
            ("ignored", "bot_authored"),
            ("folded", "duplicate_delivery"),
            ("enqueued", "")
        ],
        "{answer}"
    );
    assert_eq!(answer["deliveries"][0]["build_ids"], json!([first["build_id"]]));
    assert_eq!(answer["deliveries"][0]["correlation_id"], left["correlation_id"]);
    let enqueued = &answer["deliveries"][3];
    assert_eq!(enqueued["build_ids"], json!([first["build_id"]]));
    assert_eq!(enqueued["correlation_id"], first["correlation_id"]);
    assert_eq!(enqueued["issue_id"], "MOB-7");
    assert!(answer.to_string().len() < 2_000, "no bodies: {answer}");
    assert_eq!(answer_of(get("?limit=1")).await["deliveries"].as_array().unwrap().len(), 1);
    for wrong in ["?limit=0", "?limit=101", "?colour=red"] {
        assert_eq!(get(wrong).send().await.unwrap().status(), 400, "{wrong}");
    }
}
