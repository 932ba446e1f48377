//! Defence in depth at the door: the webhook takes deliveries only from `[webhook]
//! allowed_sources` (403 before the token or the body is read, nothing recorded), and behind a
//! proxy in `[server] trusted_proxies` the client is the address its `X-Forwarded-For` names, for
//! the allowlist and the bad-token limit alike; from anyone else the header is ignored.

use crate::helpers::*;

async fn post(app: &TestApp, forwarded: Option<&str>, token: &str) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/youtrack/webhook"))
        .header("X-YouTrack-Token", token)
        .header("Content-Type", "application/json")
        .body(fixture("mob-issueUpdated-state-building.json"));
    if let Some(forwarded) = forwarded {
        request = request.header("X-Forwarded-For", forwarded);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_refuses_a_source_not_allowed_before_its_token_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.webhook.allowed_sources = vec!["203.0.113.0/24".into()];
    let app = spawn_with(dir, config).await;
    // From 127.0.0.1, not a trusted proxy: its header is its own words.
    for forwarded in [None, Some("203.0.113.7")] {
        let refused = post(&app, forwarded, &app.webhook_token).await;
        assert_eq!(refused.status(), 403);
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "source_not_allowed");
    }
    assert_eq!(post(&app, None, "not-the-token").await.status(), 403, "before the token");
    assert_eq!(app.all_events().await.len(), 0, "nothing recorded");
    let ready: serde_json::Value = app.client.get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["deliveries"]["forbidden"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_allowed_limited_and_cannot_forge_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.server.trusted_proxies = vec!["127.0.0.1".into()];
    config.webhook.allowed_sources = vec!["203.0.113.0/24".into()];
    config.webhook.max_bad_tokens_per_minute = 2;
    let app = spawn_with(dir, config).await;
    assert_eq!(post(&app, Some("203.0.113.7"), &app.webhook_token).await.status(), 200);
    assert_eq!(post(&app, Some("198.51.100.9"), &app.webhook_token).await.status(), 403);
    // A client that writes an allowed address itself: the proxy appends the real one after it.
    assert_eq!(post(&app, Some("203.0.113.7, 198.51.100.9"), &app.webhook_token).await.status(), 403);
    // Bad tokens count per client, not per proxy: one client slowed down, another not.
    for _ in 0..2 {
        assert_eq!(post(&app, Some("203.0.113.8"), "not-the-token").await.status(), 401);
    }
    assert_eq!(post(&app, Some("203.0.113.8"), "not-the-token").await.status(), 429);
    assert_eq!(post(&app, Some("203.0.113.9"), "not-the-token").await.status(), 401);
    assert_eq!(
        post(&app, Some("203.0.113.9"), &app.webhook_token).await.status(),
        200,
        "a correct token is never slowed"
    );
}

#[test]
fn a_range_that_is_not_one_is_refused_at_load_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meshgate.toml");
    std::fs::write(&path, "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n").unwrap();
    let e = meshgate::config::Config::load(Some(&path)).unwrap_err().to_string();
    assert!(e.contains("server.trusted_proxies") && e.contains("10.0.0.0/33"), "{e}");
    std::fs::write(&path, "[webhook]\nallowed_sources = [\"youtrack.cloud\"]\n").unwrap();
    let e = meshgate::config::Config::load(Some(&path)).unwrap_err().to_string();
    assert!(e.contains("webhook.allowed_sources"), "{e}");
}
