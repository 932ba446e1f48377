//! The node API against the real router and log: claims under leases, heartbeats, results,
//! stale attempts, lanes, slots, the lease reaper and logs.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

impl TestApp {
    pub fn nodes_token(&self) -> String {
        std::fs::read_to_string(self.config.nodes.token_file.as_ref().unwrap()).unwrap().trim().to_owned()
    }

    pub async fn node_post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client.post(self.url(path)).bearer_auth(self.nodes_token()).json(&body).send().await.unwrap()
    }

    pub async fn claim(&self, node: &str, labels: &[&str], slots: usize, wait: u64) -> Option<Value> {
        let body = json!({"node_id": node, "labels": labels, "slots": slots, "wait_seconds": wait});
        let response = self.node_post("/api/v1/nodes/claim", body).await;
        match response.status().as_u16() {
            200 => Some(response.json().await.unwrap()),
            204 => None,
            other => panic!("claim answered {other}: {}", response.text().await.unwrap()),
        }
    }
}

fn claimed_id(claim: &Value) -> Uuid {
    Uuid::parse_str(claim["build"]["build_id"].as_str().unwrap()).unwrap()
}

fn result(node: &str, attempt: u64, outcome: &str) -> Value {
    json!({"node_id": node, "attempt": attempt, "outcome": outcome, "exit_code": 0, "duration_ms": 1200,
           "commit_sha": "0123456789abcdef0123456789abcdef01234567", "log_tail": "ok\n"})
}

async fn build_for(app: &TestApp, issue: &str) -> Uuid {
    let body = with(&fixture("mob-issueUpdated-state-building.json"), &json!({"id": issue}));
    build_id(&app.deliver(&body).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_claims_heartbeats_and_reports_once() {
    let app = spawn_app().await;
    let build = build_for(&app, "MOB-1").await;
    let claim = app.claim("mac-1", &[], 1, 0).await.expect("a build");
    assert_eq!(claimed_id(&claim), build);
    assert_eq!(claim["attempt"], 1);
    assert_eq!(claim["build"]["git_ref"], "feature/MOB-1");
    assert!(app.claim("mac-2", &[], 1, 0).await.is_none(), "one build, one claim");

    let beat =
        app.node_post(&format!("/api/v1/builds/{build}/heartbeat"), json!({"node_id": "mac-1", "attempt": 1})).await;
    assert_eq!(beat.status(), 200);
    assert_eq!(beat.json::<Value>().await.unwrap()["cancelled"], false);

    let done = app.node_post(&format!("/api/v1/builds/{build}/result"), result("mac-1", 1, "succeeded")).await;
    assert_eq!(done.status(), 200);
    // The same result again (a retry after a lost answer) is answered, not applied twice.
    let again = app.node_post(&format!("/api/v1/builds/{build}/result"), result("mac-1", 1, "succeeded")).await;
    assert_eq!(again.json::<Value>().await.unwrap()["duplicate"], true);
    // Another result for the finished build is refused and recorded.
    let late = app.node_post(&format!("/api/v1/builds/{build}/result"), result("mac-1", 1, "failed")).await;
    assert_eq!(late.status(), 409);
    assert_eq!(app.count("BuildSucceeded").await, 1);
    assert_eq!(app.count("BuildResultRejected").await, 1);
    let view: Value = app.get(&format!("/api/v1/builds/{build}")).await.json().await.unwrap();
    assert_eq!(view["build"]["state"]["state"], "succeeded");
    assert_eq!(view["build"]["report"]["commit_sha"], "0123456789abcdef0123456789abcdef01234567");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_bad_results_are_refused_and_append_nothing() {
    let app = spawn_app().await;
    let build = build_for(&app, "MOB-1").await;
    let head = *app.store().head().borrow();
    let anonymous = app
        .client
        .post(app.url("/api/v1/nodes/claim"))
        .json(&json!({"node_id": "x", "slots": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let admin = app
        .client
        .post(app.url("/api/v1/nodes/claim"))
        .bearer_auth(&app.admin_token)
        .json(&json!({"node_id": "x", "slots": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 401);
    let bad_node = app.node_post("/api/v1/nodes/claim", json!({"node_id": "a b", "slots": 1})).await;
    assert_eq!(bad_node.status(), 400);
    assert_eq!(*app.store().head().borrow(), head);

    app.claim("mac-1", &[], 1, 0).await.unwrap();
    let mut bad_sha = result("mac-1", 1, "succeeded");
    bad_sha["commit_sha"] = json!("abc");
    assert_eq!(app.node_post(&format!("/api/v1/builds/{build}/result"), bad_sha).await.status(), 400);
    let mut long_tail = result("mac-1", 1, "succeeded");
    long_tail["log_tail"] = json!("é".repeat(3000));
    assert_eq!(app.node_post(&format!("/api/v1/builds/{build}/result"), long_tail).await.status(), 400);
    let unknown =
        app.node_post(&format!("/api/v1/builds/{}/result", Uuid::now_v7()), result("mac-1", 1, "failed")).await;
    assert_eq!(unknown.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_labels_caps_and_slots_decide_who_gets_what() {
    let dir = tempfile::tempdir().unwrap();
    let mut signing = ios_trigger();
    signing.name = "ios-sign".into();
    signing.script = "ios-sign".into();
    signing.lane = "signing".into();
    let config = test_config(dir.path(), vec![ios_trigger(), signing]);
    let app = spawn_with(dir, config).await;
    for issue in ["MOB-1", "MOB-2"] {
        let body = with(&fixture("mob-issueUpdated-state-building.json"), &json!({"id": issue}));
        app.deliver(&body).await;
    }
    // Two default and two signing builds. A node without the label gets only default ones.
    let plain = app.claim("plain", &[], 4, 0).await.unwrap();
    assert_eq!(plain["build"]["lane"], "default");
    // The signing lane (priority 10, max_running 1) goes first to a labelled node, once.
    let signer = app.claim("signer", &["signing"], 4, 0).await.unwrap();
    assert_eq!(signer["build"]["lane"], "signing");
    let next = app.claim("signer", &["signing"], 4, 0).await.unwrap();
    assert_eq!(next["build"]["lane"], "default", "the signing lane is at its cap");
    // A node at its slots gets nothing.
    assert!(app.claim("plain", &[], 1, 0).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_s_build_is_requeued_then_failed_and_its_late_result_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.nodes.lease_seconds = 1;
    config.nodes.max_attempts = 2;
    let app = spawn_with(dir, config).await;
    let build = build_for(&app, "MOB-1").await;
    app.claim("mac-1", &[], 1, 0).await.unwrap();
    // mac-1 goes silent: the reaper requeues the build and another node claims attempt 2 (the
    // claim waits for it, no polling here).
    let second = app.claim("mac-2", &[], 1, 10).await.expect("requeued after the lease");
    assert_eq!(claimed_id(&second), build);
    assert_eq!(second["attempt"], 2);
    let late = app.node_post(&format!("/api/v1/builds/{build}/result"), result("mac-1", 1, "succeeded")).await;
    assert_eq!(late.status(), 409);
    let stale_beat =
        app.node_post(&format!("/api/v1/builds/{build}/heartbeat"), json!({"node_id": "mac-1", "attempt": 1})).await;
    assert_eq!(stale_beat.status(), 409);
    // mac-2 is lost too: after the last attempt the build fails with node_lost.
    let mut states = app.handles.projections.changes();
    let failed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let view = app.handles.projections.build(build).await.unwrap();
            if view.is_some_and(|b| b.state.name() == "failed") {
                return;
            }
            states.changed().await.unwrap();
        }
    })
    .await;
    assert!(failed.is_ok(), "build did not fail after its last lease");
    assert_eq!(app.count("BuildRequeued").await, 1);
    assert_eq!(app.count("BuildResultRejected").await, 2);
    let failed_events: Vec<_> = app.all_events().await.into_iter().filter(|e| e.event_type == "BuildFailed").collect();
    assert!(failed_events[0].data.contains("node_lost"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_the_trigger_state_cancels_a_running_build_and_the_heartbeat_says_so() {
    let app = spawn_app().await;
    let build = build_for(&app, "MOB-1").await;
    app.claim("mac-1", &[], 1, 0).await.unwrap();
    // The issue moves from Building back to Open while the build runs.
    let back = with(&fixture("mob-issueUpdated-state-open.json"), &json!({"id": "MOB-1"}));
    let answer = app.deliver(&back).await;
    assert_eq!(answer["outcome"], "cancelled");
    assert_eq!(answer["build_id"], build.to_string());
    let beat =
        app.node_post(&format!("/api/v1/builds/{build}/heartbeat"), json!({"node_id": "mac-1", "attempt": 1})).await;
    assert_eq!(beat.status(), 200);
    assert_eq!(beat.json::<Value>().await.unwrap()["cancelled"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_uploads_its_log_and_the_link_opens_it_without_the_admin_token() {
    let app = spawn_app().await;
    let build = build_for(&app, "MOB-1").await;
    app.claim("mac-1", &[], 1, 0).await.unwrap();
    let upload = app
        .client
        .put(app.url(&format!("/api/v1/builds/{build}/log?attempt=1")))
        .bearer_auth(app.nodes_token())
        .body("line 1\nline 2\n")
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);
    let link = upload.json::<Value>().await.unwrap()["url"].as_str().unwrap().to_owned();
    assert!(link.starts_with(&app.url(&format!("/api/v1/builds/{build}/log?key="))), "{link}");
    let by_link = app.client.get(&link).send().await.unwrap();
    // The read API gives the same absolute link.
    let read: Value = app.get(&format!("/api/v1/builds/{build}")).await.json().await.unwrap();
    assert_eq!(read["log_url"], link);
    assert_eq!(by_link.status(), 200);
    assert_eq!(by_link.text().await.unwrap(), "line 1\nline 2\n");
    let forged = app.client.get(app.url(&format!("/api/v1/builds/{build}/log?key=00"))).send().await.unwrap();
    assert_eq!(forged.status(), 401);
    let by_admin = app.get(&format!("/api/v1/builds/{build}/log?attempt=1")).await;
    assert_eq!(by_admin.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_the_queue_survive_a_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.nodes.lease_seconds = 600;
    let app = spawn_with(dir, config).await;
    let running = build_for(&app, "MOB-1").await;
    let queued = build_for(&app, "MOB-2").await;
    assert_eq!(claimed_id(&app.claim("mac-1", &[], 1, 0).await.unwrap()), running);

    let app = app.restart().await;
    // The claim still holds: its node heartbeats on, and nobody else gets the build.
    let beat =
        app.node_post(&format!("/api/v1/builds/{running}/heartbeat"), json!({"node_id": "mac-1", "attempt": 1})).await;
    assert_eq!(beat.status(), 200);
    let next = app.claim("mac-2", &[], 1, 0).await.unwrap();
    assert_eq!(claimed_id(&next), queued);
    assert!(app.claim("mac-3", &[], 1, 0).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_requeues_at_the_end_of_the_lease_and_not_before() {
    // A controlled clock: the reaper is stepped with explicit times, nothing waits for a lease.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.nodes.lease_seconds = 600;
    config.nodes.max_attempts = 2;
    let app = spawn_with(dir, config).await;
    let build = build_for(&app, "MOB-1").await;
    app.claim("mac-1", &[], 1, 0).await.unwrap();
    let head = *app.store().head().borrow();
    assert!(app.handles.projections.caught_up_to(head, std::time::Duration::from_secs(5)).await);
    let lease = app.handles.projections.read(|p| match &p.builds.get(build).unwrap().state {
        meshgate_domain::BuildState::Running { lease_expires_at, .. } => *lease_expires_at,
        other => panic!("not running: {other:?}"),
    });
    let reaper = meshgate::reaper::Reaper {
        projections: app.handles.projections.clone(),
        builds: app.handles.builds.clone(),
        max_attempts: app.config.nodes.max_attempts,
        max_queue: vec![],
    };
    let reap = |at| meshgate::reaper::reap_once(&reaper, at);
    assert_eq!(reap(lease - chrono::Duration::seconds(1)).await, 0);
    assert_eq!(reap(lease).await, 1);
    assert_eq!(app.count("BuildRequeued").await, 1);
    // Reaping again finds nothing: the build is queued, not running.
    let head = *app.store().head().borrow();
    assert!(app.handles.projections.caught_up_to(head, std::time::Duration::from_secs(5)).await);
    assert_eq!(reap(lease + chrono::Duration::seconds(1)).await, 0);
    assert_eq!(app.claim("mac-2", &[], 1, 0).await.unwrap()["attempt"], 2);
}

/// A build queued past its lane's `max_queue_seconds` is cancelled (`expired`) on a stepped
/// clock; the builds claimed in time are not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_queued_past_their_lanes_limit_are_cancelled_as_expired() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    // Leases that outlast the queue's limit: only the queue's limit is at work here.
    config.nodes.lease_seconds = 7200;
    let app = spawn_with(dir, config).await;
    let first = build_for(&app, "MOB-1").await;
    let second = build_for(&app, "MOB-2").await;
    let waiting = build_for(&app, "MOB-3").await;
    // Two nodes claim MOB-1 and MOB-2; MOB-3 waits.
    assert_eq!(claimed_id(&app.claim("mac-1", &[], 1, 0).await.unwrap()), first);
    assert_eq!(claimed_id(&app.claim("mac-2", &[], 1, 0).await.unwrap()), second);
    let head = *app.store().head().borrow();
    assert!(app.handles.projections.caught_up_to(head, std::time::Duration::from_secs(5)).await);
    let reaper = meshgate::reaper::Reaper {
        projections: app.handles.projections.clone(),
        builds: app.handles.builds.clone(),
        max_attempts: 3,
        max_queue: vec![("default".into(), chrono::Duration::minutes(30))],
    };
    let requested = app.handles.projections.read(|p| p.builds.get(waiting).unwrap().requested_at);
    let limit = requested + chrono::Duration::minutes(30);
    assert_eq!(meshgate::reaper::reap_once(&reaper, limit - chrono::Duration::seconds(1)).await, 0);
    assert_eq!(meshgate::reaper::reap_once(&reaper, limit).await, 1);
    let detail = answer_of(app.client.get(app.url(&format!("/api/v1/builds/{waiting}"))).bearer_auth(&app.admin_token));
    let state = detail.await["build"]["state"].clone();
    assert_eq!((state["state"].as_str(), state["reason"].as_str()), (Some("cancelled"), Some("expired")));
    assert_eq!(app.count("BuildCancelled").await, 1, "the running builds are not touched");
}
