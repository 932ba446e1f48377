//! A lane nobody can serve: its queued builds wait past `unservable_alert_seconds` with no live
//! node that has its labels; on-call is paged (PagerDuty stand-in), once per lane; when a node
//! that can run them comes, the page is resolved under the same `dedup_key`.

use crate::helpers::*;
use crate::pki::write_private;
use crate::stand_in::{reply, stand_in};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_nobody_can_serve_pages_once_and_the_page_is_resolved_when_a_node_comes() {
    let mut pager = stand_in(vec![reply(202, None), reply(202, None)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger(), sign_trigger()]);
    config.lanes[1].unservable_alert_seconds = 1;
    let key = dir.path().join("routing.key");
    write_private(&key, &"r".repeat(32));
    config.pager.url = Some(pager.url("/v2/enqueue"));
    config.pager.routing_key_file = Some(key);
    config.outbound.retry_base_ms = 10;
    let app = spawn_with(dir, config).await;

    // A plain node polls; the signing build waits for a node with the label.
    assert!(app.claim("plain", &[], 1, 0).await.is_none());
    let build = build_id(&app.deliver(&sign_issue(1)).await);
    app.wait_for_count("LaneUnservable", 1).await;
    let page = pager.next().await;
    assert_eq!(
        (page.body["event_action"].as_str(), page.body["dedup_key"].as_str()),
        (Some("trigger"), Some("meshgate-lane-signing"))
    );
    assert!(page.body["payload"]["custom_details"]["line"]
        .as_str()
        .unwrap()
        .starts_with("🚫 lane signing: no live node"));
    assert_eq!(page.body["payload"]["custom_details"]["build_id"], build.to_string());

    // A signing node comes and takes the build: the lane is served, the page resolved, once.
    assert_eq!(app.claim("signer", &["signing"], 1, 0).await.unwrap()["build"]["build_id"], build.to_string());
    app.wait_for_count("LaneServable", 1).await;
    let resolved = pager.next().await;
    assert_eq!(
        (resolved.body["event_action"].as_str(), resolved.body["dedup_key"].as_str()),
        (Some("resolve"), Some("meshgate-lane-signing"))
    );
    app.wait_for_count("NotificationDelivered", 2).await;
    assert_eq!(app.count("LaneUnservable").await, 1, "paged once");
    assert!(pager.received.try_recv().is_err());
}
