//! Every status of `POST /youtrack/webhook`, against the real router and a real SQLite file.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::helpers::*;

async fn head(app: &TestApp) -> u64 {
    *app.store().head().borrow()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_token_is_refused_and_nothing_is_recorded() {
    let app = spawn_app().await;
    let body = fixture("mob-issueUpdated-state-building.json");
    let no_token = app.client.post(app.url("/youtrack/webhook")).header("Content-Type", "application/json");
    let response = no_token.body(body.clone()).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let wrong = format!("{}x", &app.webhook_token[..app.webhook_token.len() - 1]);
    for token in [wrong.as_str(), "secret", ""] {
        let response = app
            .client
            .post(app.url("/youtrack/webhook"))
            .header("X-YouTrack-Token", token)
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "unauthorized");
    }
    assert_eq!(head(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_header_name_is_matched_case_insensitively() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/youtrack/webhook"))
        .header("x-youtrack-token", &app.webhook_token)
        .header("Content-Type", "application/json")
        .body(fixture("mob-issueUpdated-state-building.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_delivery_answers_with_its_correlation_id_after_the_append() {
    let app = spawn_app().await;
    let response = app.post(&fixture("mob-issueUpdated-state-building.json")).await;
    assert_eq!(response.status(), 200);
    let header = response.headers()["x-correlation-id"].to_str().unwrap().to_owned();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["correlation_id"], header);
    assert_eq!(answer["outcome"], "enqueued");
    // Durable before the answer: the events are readable the moment the 200 arrives.
    let events = app.all_events().await;
    assert!(events.iter().all(|e| e.correlation_id.to_string() == header));
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["WebhookReceived", "WebhookRouted", "IntentActivated", "BuildRequested"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_whether_or_not_its_length_is_declared() {
    let app = spawn_app().await;
    let big = json!({"event": "issueUpdated", "id": "MOB-1", "project": {"key": "MOB"},
                     "description": "x".repeat(app.config.webhook.max_body_bytes)})
    .to_string();
    assert_eq!(app.post(&big).await.status(), 413);

    // Chunked, no Content-Length: the limit holds while reading.
    let router = meshgate::http::router(app.handles.surfaces.clone(), "/youtrack/webhook");
    let request = Request::post("/youtrack/webhook")
        .header("X-YouTrack-Token", &app.webhook_token)
        .header("Content-Type", "application/json")
        .body(Body::from(big))
        .unwrap();
    assert_eq!(router.oneshot(request).await.unwrap().status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(head(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_by_content_type_is_refused() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/youtrack/webhook"))
        .header("X-YouTrack-Token", &app.webhook_token)
        .header("Content-Type", "text/plain")
        .body(fixture("mob-issueUpdated-state-building.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(head(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_refused_with_the_field_named_and_nothing_recorded() {
    let app = spawn_app().await;
    let dir = fixtures().join("youtrack/malformed");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected-fields.json")).unwrap()).unwrap();
    for (name, field) in expected.as_object().unwrap() {
        let body = std::fs::read_to_string(dir.join(name)).unwrap();
        let response = app.post(&body).await;
        assert_eq!(response.status(), 400, "{name}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "invalid_payload", "{name}");
        assert_eq!(&answer["field"], field, "{name}: {answer}");
    }
    assert_eq!(head(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_append_answers_503_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.store.busy_timeout_ms = 100;
    let app = spawn_with(dir, config).await;
    // Another process holds the write lock: the append cannot be made durable.
    let locker = rusqlite::Connection::open(app.config.log_path()).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let response = app.post(&fixture("mob-issueUpdated-state-building.json")).await;
    assert_eq!(response.status(), 503);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"], "unavailable");
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    locker.execute_batch("ROLLBACK").unwrap();
    assert_eq!(head(&app).await, 0);
    // Once the lock is gone the same delivery is taken, once.
    assert_eq!(app.deliver(&fixture("mob-issueUpdated-state-building.json")).await["outcome"], "enqueued");
    assert_eq!(app.count("BuildRequested").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_is_accepted_and_unknown_ones_are_ignored() {
    let app = spawn_app().await;
    for name in [
        "mob-issueCreated.json",
        "mob-issueDeleted.json",
        "mob-commentAdded.json",
        "mob-commentUpdated.json",
        "mob-commentDeleted.json",
        "mob-workItemAdded.json",
        "mob-workItemUpdated.json",
        "mob-workItemDeleted.json",
        "mob-issueAttachmentAdded.json",
        "mob-issueAttachmentDeleted.json",
        "issueUpdated-summary-only.json",
    ] {
        let answer = app.deliver(&fixture(name)).await;
        assert_eq!(answer["outcome"], "ignored", "{name}");
        assert_eq!(answer["reason"], "no_trigger_matched", "{name}");
    }
    let answer = app.deliver(&fixture("mob-unknown-event.json")).await;
    assert_eq!(answer["reason"], "unknown_event");
    assert_eq!(app.count("WebhookReceived").await, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bots_own_changes_and_comments_are_ignored() {
    let app = spawn_app().await;
    for name in ["mob-issueUpdated-by-bot.json", "mob-commentAdded-by-bot.json"] {
        let answer = app.deliver(&fixture(name)).await;
        assert_eq!(answer["outcome"], "ignored");
        assert_eq!(answer["reason"], "bot_authored");
    }
    assert_eq!(app.count("BuildRequested").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_api_needs_the_admin_token() {
    let app = spawn_app().await;
    let anonymous = app.client.get(app.url("/api/v1/builds")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let webhook_token = app.client.get(app.url("/api/v1/queue")).bearer_auth(&app.webhook_token).send().await.unwrap();
    assert_eq!(webhook_token.status(), 401);
    assert_eq!(app.get("/api/v1/builds").await.status(), 200);
    assert_eq!(app.get("/api/v1/builds?state=bogus").await.status(), 400);
    assert_eq!(app.get("/api/v1/builds/not-a-uuid").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_report_the_store_and_projections() {
    let app = spawn_app().await;
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    app.deliver(&fixture("mob-issueUpdated-state-building.json")).await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["store"], "writable");
    assert_eq!(body["projections"]["caught_up"], true);
    assert_eq!(body["deliveries"]["accepted"], 1);
}
