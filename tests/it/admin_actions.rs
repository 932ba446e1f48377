//! Operator actions on builds: cancel and requeue, recorded with who asked and why.

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cancels_a_queued_build_and_requeues_a_running_one() {
    let app = spawn_app().await;
    let building = fixture("mob-issueUpdated-state-building.json");
    let queued = build_id(&app.deliver(&with(&building, &json!({"id": "MOB-1"}))).await);
    let act = |build: String, action: &str, body: Value| {
        app.client
            .post(app.url(&format!("/api/v1/builds/{build}/{action}")))
            .bearer_auth(&app.admin_token)
            .json(&body)
            .send()
    };

    let missing = act(queued.to_string(), "cancel", json!({})).await.unwrap();
    assert_eq!(missing.status(), 400);
    assert_eq!(missing.json::<Value>().await.unwrap()["field"], "reason");
    let cancelled = act(queued.to_string(), "cancel", json!({"reason": "wrong branch"})).await.unwrap();
    assert_eq!(cancelled.status(), 200);
    assert_eq!(cancelled.json::<Value>().await.unwrap()["state"], "cancelled");
    let again = act(queued.to_string(), "cancel", json!({"reason": "twice"})).await.unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(act(uuid::Uuid::now_v7().to_string(), "cancel", json!({"reason": "x"})).await.unwrap().status(), 404);
    let anonymous =
        app.client.post(app.url(&format!("/api/v1/builds/{queued}/cancel"))).json(&json!({"reason": "x"})).send();
    assert_eq!(anonymous.await.unwrap().status(), 401);

    // A running build goes back to the queue; the next claim is its second attempt.
    let running = build_id(&app.deliver(&with(&building, &json!({"id": "MOB-2"}))).await);
    let nodes = std::fs::read_to_string(app.config.nodes.token_file.as_ref().unwrap()).unwrap().trim().to_owned();
    let claim = || {
        let body = json!({"node_id": "mac-1", "slots": 1, "wait_seconds": 5});
        answer_of(app.client.post(app.url("/api/v1/nodes/claim")).bearer_auth(&nodes).json(&body))
    };
    assert_eq!(claim().await["attempt"], 1);
    let requeued = act(running.to_string(), "requeue", json!({"reason": "node is being rebooted"})).await.unwrap();
    assert_eq!(requeued.json::<Value>().await.unwrap()["state"], "queued");
    assert_eq!(act(running.to_string(), "requeue", json!({"reason": "again"})).await.unwrap().status(), 409);
    assert_eq!(claim().await["attempt"], 2);

    let reasons: Vec<String> = app
        .all_events()
        .await
        .into_iter()
        .filter(|e| e.event_type == "BuildCancelled" || e.event_type == "BuildRequeued")
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap()["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons, ["by an operator (admin): wrong branch", "by an operator (admin): node is being rebooted"]);
}

/// A caller without the admin token is refused before anything of its request is read: a path
/// or a filter that would not parse answers 401 too, not what is wrong with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_checked_before_the_path_and_the_query() {
    let app = spawn_app().await;
    let get = |path: &str, token: Option<&str>| {
        let request = app.client.get(app.url(path));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
        .send()
    };
    let post = |path: &str, token: Option<&str>| {
        let request = app.client.post(app.url(path)).json(&json!({"reason": "x"}));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
        .send()
    };
    let admin = Some(app.admin_token.as_str());
    for (path, with_token) in [
        ("/api/v1/builds/not-a-build", 404),
        ("/api/v1/builds?issue=MOB-1&issue=MOB-2", 400),
        ("/api/v1/builds?state=bogus", 400),
        ("/api/v1/events?after=x", 400),
        // A path the API does not have: a stranger is not told so.
        ("/api/v1/anything", 404),
        ("/api/v2/builds", 404),
    ] {
        assert_eq!(get(path, None).await.unwrap().status(), 401, "{path}");
        assert_eq!(get(path, Some("wrong")).await.unwrap().status(), 401, "{path}");
        assert_eq!(get(path, admin).await.unwrap().status(), with_token, "{path}");
    }
    for path in ["/api/v1/builds/not-a-build/cancel", "/api/v1/builds/not-a-build/requeue"] {
        assert_eq!(post(path, None).await.unwrap().status(), 401, "{path}");
        assert_eq!(post(path, admin).await.unwrap().status(), 404, "{path}");
    }
}

/// A rebuild is a new build of the same issue, trigger and ref, with a number of its own and a
/// link both ways; asked again while the build is queued, it starts nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_rebuilds_a_finished_build_once_however_often_asked() {
    let app = spawn_app().await;
    let building = fixture("mob-issueUpdated-state-building.json");
    let first = build_id(&app.deliver(&with(&building, &json!({"id": "MOB-1"}))).await);
    let rebuild = |build: String| {
        app.client.post(app.url(&format!("/api/v1/builds/{build}/rebuild"))).bearer_auth(&app.admin_token).send()
    };
    // Still queued: the build itself answers.
    let queued: Value = rebuild(first.to_string()).await.unwrap().json().await.unwrap();
    assert_eq!(
        (queued["build_id"].as_str(), queued["started"].as_bool()),
        (Some(first.to_string().as_str()), Some(false))
    );

    app.finish_build(first, false).await;
    let again: Value = rebuild(first.to_string()).await.unwrap().json().await.unwrap();
    assert_eq!((again["started"].as_bool(), again["name"].as_str()), (Some(true), Some("ios-build #2")), "{again}");
    let second = again["build_id"].as_str().unwrap().to_owned();
    // Asked again (a double click, a second operator): the rebuild that is queued answers.
    for build in [first.to_string(), second.clone()] {
        let twice: Value = rebuild(build).await.unwrap().json().await.unwrap();
        assert_eq!((twice["build_id"].as_str(), twice["started"].as_bool()), (Some(second.as_str()), Some(false)));
    }
    let detail =
        answer_of(app.client.get(app.url(&format!("/api/v1/builds/{second}"))).bearer_auth(&app.admin_token)).await;
    let (original, view) = (app.get(&format!("/api/v1/builds/{first}")).await, &detail["build"]);
    let original: Value = original.json().await.unwrap();
    for field in ["issue_id", "trigger", "script", "lane", "git_ref", "intent_key"] {
        assert_eq!(view[field], original["build"][field], "{field}");
    }
    assert_eq!((view["rebuild_of"].as_str(), view["number"].as_u64()), (Some(first.to_string().as_str()), Some(2)));
    assert_eq!(view["requested_by"], "admin");
    assert_eq!(original["build"]["number"], 1, "a rebuild leaves the number of the build it repeats");
    assert_eq!(original["build"]["rebuilds"][0]["build_id"], second.as_str());
    assert_eq!(original["build"]["rebuilds"][0]["via"], "admin");
    assert_eq!(app.count("BuildRebuilt").await, 1);
    assert_eq!(app.count("BuildRequested").await, 2);

    // Another delivery of the transition (a second webhook, changed by a proxy): the rebuild answers.
    let moved = json!({"id": "MOB-1", "updated": 1_787_652_100_000_u64});
    let folded = app.deliver(&with(&building, &moved)).await;
    assert_eq!(folded["build_id"].as_str(), Some(second.as_str()), "{folded}");

    assert_eq!(rebuild(uuid::Uuid::now_v7().to_string()).await.unwrap().status(), 404);
    assert_eq!(rebuild("nope".into()).await.unwrap().status(), 404);
    let anonymous = app.client.post(app.url(&format!("/api/v1/builds/{first}/rebuild"))).send();
    assert_eq!(anonymous.await.unwrap().status(), 401);
}
