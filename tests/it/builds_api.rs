//! `GET /api/v1/builds`: newest first, a page at a time, whether a build's current view is in
//! memory or only in the read model.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

async fn page(app: &TestApp, query: &str) -> (Vec<String>, Option<u64>) {
    let answer = app.get(&format!("/api/v1/builds{query}")).await;
    assert_eq!(answer.status(), 200, "{query}");
    let page: Value = answer.json().await.unwrap();
    let issues =
        page["builds"].as_array().unwrap().iter().map(|b| b["issue_id"].as_str().unwrap().to_owned()).collect();
    (issues, page["next_before"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_are_listed_newest_first_a_page_at_a_time_from_memory_and_the_read_model() {
    let app = spawn_app().await;
    let building = fixture("mob-issueUpdated-state-building.json");
    let mut ids: Vec<Uuid> = Vec::new();
    for n in 1..=7 {
        ids.push(build_id(&app.deliver(&with(&building, &json!({"id": format!("MOB-{n}")}))).await));
    }
    for (n, succeeded) in [(1, true), (2, false), (3, true), (5, true)] {
        app.finish_build(ids[n - 1], succeeded).await;
    }
    // Restarted: the finished builds are only in the read model now, the queued ones in memory.
    let app = app.restart().await;
    // One more change after the restart: MOB-4's saved row still says queued, memory knows better.
    app.finish_build(ids[3], true).await;
    let head = *app.store().head().borrow();
    assert!(app.handles.projections.caught_up_to(head, std::time::Duration::from_secs(10)).await);

    // Every build, three at a time, newest first, each once.
    let mut all = Vec::new();
    let mut query = "?limit=3".to_owned();
    loop {
        let (issues, next) = page(&app, &query).await;
        all.extend(issues);
        match next {
            Some(before) => query = format!("?limit=3&before={before}"),
            None => break,
        }
    }
    assert_eq!(all, ["MOB-7", "MOB-6", "MOB-5", "MOB-4", "MOB-3", "MOB-2", "MOB-1"]);
    let (first, next) = page(&app, "").await;
    assert_eq!((first.len(), next), (7, None), "a page of 100 by default");

    // Filters: memory's view wins over a saved row that is out of date.
    assert_eq!(page(&app, "?state=queued").await.0, ["MOB-7", "MOB-6"]);
    assert_eq!(page(&app, "?state=succeeded").await.0, ["MOB-5", "MOB-4", "MOB-3", "MOB-1"]);
    let (two, next) = page(&app, "?state=succeeded&limit=2").await;
    assert_eq!(two, ["MOB-5", "MOB-4"]);
    assert_eq!(page(&app, &format!("?state=succeeded&limit=2&before={}", next.unwrap())).await.0, ["MOB-3", "MOB-1"]);
    assert_eq!(page(&app, "?issue=MOB-2").await.0, ["MOB-2"]);
    assert_eq!(page(&app, "?issue=MOB-2&state=failed").await.0, ["MOB-2"]);
    assert!(page(&app, "?issue=MOB-2&state=queued").await.0.is_empty());

    for (wrong, error) in [
        ("?limit=0", "invalid_filter"),
        ("?limit=1001", "invalid_filter"),
        ("?before=-1", "invalid_request"),
        ("?limit=many", "invalid_request"),
    ] {
        let answer = app.get(&format!("/api/v1/builds{wrong}")).await;
        assert_eq!(answer.status(), 400, "{wrong}");
        assert_eq!(answer.json::<Value>().await.unwrap()["error"], error, "{wrong}");
    }
}

async fn by_number(app: &TestApp, path: &str) -> reqwest::Response {
    let url = app.url(&format!("/api/v1/builds/by-number/{path}"));
    app.client.get(url).bearer_auth(&app.admin_token).send().await.unwrap()
}

/// Each build found by its number, named in its events, listed with it; what does not exist is 404.
async fn numbered(app: &TestApp, ids: &[Uuid]) {
    for (n, id) in ids.iter().enumerate() {
        let found: Value = by_number(app, &format!("ios-build/{}", n + 1)).await.json().await.unwrap();
        assert_eq!(found["build"]["build_id"], id.to_string(), "{found}");
        assert_eq!(found["build"]["number"], n + 1);
        let name = format!("ios-build #{}", n + 1);
        assert!(found["events"].as_array().unwrap().iter().all(|e| e["build"] == name.as_str()), "{found}");
    }
    let listed: Value = app.get("/api/v1/builds").await.json().await.unwrap();
    let numbers: Vec<u64> =
        listed["builds"].as_array().unwrap().iter().map(|b| b["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [3, 2, 1]);
    for (missing, status) in
        [("ios-build/4", 404), ("ios-build/0", 404), ("android-build/1", 404), ("ios-build/x", 404)]
    {
        assert_eq!(by_number(app, missing).await.status(), status, "{missing}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_is_found_by_its_trigger_and_number_from_memory_and_after_a_restart() {
    let app = spawn_app().await;
    let building = fixture("mob-issueUpdated-state-building.json");
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(build_id(&app.deliver(&with(&building, &json!({"id": format!("MOB-{n}")}))).await));
    }
    app.finish_build(ids[0], true).await;
    numbered(&app, &ids).await;
    // Restarted: the finished build is only in the read model now.
    let app = app.restart().await;
    numbered(&app, &ids).await;
}
