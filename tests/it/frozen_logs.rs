//! Logs written by earlier releases stay readable forever.
//!
//! Each folder of `fixtures/logs/` holds a log written by a release (`events.sqlite`, compacted,
//! no WAL) and what its projections were then (`expected.json`). The test opens a copy with
//! today's store (indexing it from nothing), decodes every event (through the upcasters), reads
//! every stream through the stream index, folds the projections from position 0, saves them to a
//! read model and reads them back, and compares all of it with the expectation. Between them the
//! frozen logs must hold every event type there is: a new type, or a new schema of one, needs a
//! newly frozen log (`freeze_todays_log`, run by hand).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{Duration, Utc};
use meshgate::projector::apply_batch;
use meshgate::readmodel::ReadModel;
use meshgate::store::sqlite::{SqliteStore, WriterOptions};
use meshgate::store::{EventStore, NewEvent, StoredEvent, StreamAppend};
use meshgate_domain::build::{BuildCommand, ReportedOutcome};
use meshgate_domain::event::*;
use meshgate_domain::node_api::FailureReason;
use meshgate_domain::notify::{notification_key, Milestone};
use meshgate_domain::stream::{notification_stream, page_stream, reconcile_stream, selftest_stream};
use meshgate_domain::{Event, ExpectedVersion};
use meshgate_projections::{OutboxConfig, ProjectionSet, SinkSpec};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

/// The sinks the frozen logs' notifications were recorded for (the outbox follows only these).
fn outbox_config() -> OutboxConfig {
    OutboxConfig {
        sinks: vec![
            SinkSpec { name: "team-chat".into(), wants: Milestone::ALL.to_vec() },
            SinkSpec { name: "youtrack".into(), wants: vec![Milestone::Failed] },
            SinkSpec { name: "pager".into(), wants: vec![Milestone::Page] },
        ],
        by_trigger: Default::default(),
        window: Duration::hours(1),
    }
}

/// What a frozen log must still fold into.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Expectation {
    position: u64,
    /// How many events of each type the log holds.
    events: BTreeMap<String, usize>,
    /// Every build, in log order, as the read model returns it.
    builds: Value,
    queue: Value,
    outbox: Value,
    /// The build nodes (logs frozen before the `nodes` projection have none to compare).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nodes: Option<Value>,
    /// The lanes held (logs frozen before pauses have none to compare).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    paused: Option<Value>,
}

fn logs() -> PathBuf {
    fixtures().join("logs")
}

/// Opens a copy of the frozen log in `dir` and computes what it folds into today.
async fn fold_frozen(dir: &Path) -> Expectation {
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("events.sqlite");
    std::fs::copy(dir.join("events.sqlite"), &log).unwrap();
    let store = SqliteStore::open(&log, WriterOptions::default()).expect("today's store opens the frozen log");
    let all = read_everything(&store).await;
    assert_eq!(all.iter().map(|e| e.position).collect::<Vec<_>>(), (1..=all.len() as u64).collect::<Vec<_>>());

    let mut events = BTreeMap::new();
    let mut streams: BTreeMap<&str, Vec<&StoredEvent>> = BTreeMap::new();
    for stored in &all {
        let decoded =
            stored.decode().unwrap_or_else(|e| panic!("{}: position {}: {e}", dir.display(), stored.position));
        *events.entry(decoded.event.event_type().to_owned()).or_insert(0) += 1;
        streams.entry(&stored.stream).or_default().push(stored);
    }
    for (stream, expected) in &streams {
        let read = store.read_stream(stream).await.unwrap();
        assert_eq!(read.iter().collect::<Vec<_>>(), *expected, "{stream} through the stream index");
        assert_eq!(store.read_last(stream).await.unwrap().as_ref(), expected.last().copied());
    }

    let mut set = ProjectionSet::new(outbox_config());
    apply_batch(&mut set, &all).unwrap();
    let model = ReadModel::open(&scratch.path().join("events.readmodel.sqlite")).unwrap();
    let (views, _) = set.builds.changed();
    let stats = set.stats.changed();
    let outbox = set.outbox.changed();
    model.save(&meshgate::readmodel::Snapshot::of(&set, &views, &outbox, &stats)).unwrap();
    let loaded = model.load(outbox_config(), set.position).unwrap();
    assert_eq!((loaded.position, &loaded.queue, &loaded.outbox), (set.position, &set.queue, &set.outbox));
    assert_eq!(loaded.stats, set.stats);
    assert_eq!(loaded.nodes, set.nodes);
    assert_eq!(loaded.builds.numbers(), set.builds.numbers());
    assert_eq!(loaded.stats, set.stats, "the stats as saved");
    // In log order, as they were saved with: the finished builds a page reads, and those in flight
    // a load restores.
    let mut builds = model.page((None, None), (0, u64::MAX), usize::MAX).unwrap();
    builds.extend(loaded.builds.in_memory().cloned());
    builds.sort_by_key(|b| b.position);
    assert_eq!(builds.len(), set.builds.in_memory_len(), "every build is in the read model");
    Expectation {
        position: set.position,
        events,
        builds: serde_json::to_value(&builds).unwrap(),
        queue: serde_json::json!({ "queued": set.queue.queued(), "running": set.queue.running() }),
        outbox: serde_json::to_value(&set.outbox).unwrap(),
        nodes: Some(serde_json::to_value(&set.nodes).unwrap()),
        paused: Some(serde_json::to_value(&set.paused).unwrap()),
    }
}

#[tokio::test]
async fn frozen_logs_still_read_and_fold_into_what_they_were_saved_with() {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(logs())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("events.sqlite").is_file())
        .collect();
    folders.sort();
    assert!(!folders.is_empty(), "no frozen logs under {}", logs().display());
    let mut types = BTreeSet::new();
    for dir in &folders {
        let expected: Expectation =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        let mut today = fold_frozen(dir).await;
        if expected.nodes.is_none() {
            today.nodes = None;
        }
        if expected.paused.is_none() {
            today.paused = None;
        }
        assert_eq!(today, expected, "{} no longer folds into what it was saved with", dir.display());
        types.extend(today.events.into_keys());
    }
    let every: BTreeSet<String> = Event::TYPES.iter().map(|t| t.to_string()).collect();
    assert_eq!(types, every, "the frozen logs must hold every event type: freeze a log with the new ones");
}

/// Writes today's log and its expectation to `fixtures/logs/<date>/` (or the folder named by
/// `MESHGATE_FROZEN_LOG`), never over an existing one. Run by hand when an event type or schema is
/// added: `cargo test --test it frozen_logs::freeze_todays_log -- --ignored`.
#[tokio::test]
#[ignore = "writes fixtures/logs/; run by hand to freeze a new log"]
async fn freeze_todays_log() {
    let name = std::env::var("MESHGATE_FROZEN_LOG").unwrap_or_else(|_| Utc::now().format("%Y-%m-%d").to_string());
    let out = logs().join(name);
    assert!(!out.exists(), "{} exists: a frozen log is never rewritten", out.display());
    std::fs::create_dir_all(&out).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let signing = meshgate_domain::Trigger {
        name: "sign-build".into(),
        projects: vec!["SIGN".into()],
        lane: "signing".into(),
        ..ios_trigger()
    };
    let xcode = meshgate_domain::Trigger {
        name: "xcode-build".into(),
        projects: vec!["XC".into()],
        xcode: Some("16".into()),
        ..ios_trigger()
    };
    let config = test_config(dir.path(), vec![ios_trigger(), signing, xcode]);
    let app = spawn_with(dir, config).await;
    write_scenarios(&app).await;
    let (dir, _) = app.shutdown().await;
    let written = dir.path().join("data").join("events.sqlite");
    let frozen = out.join("events.sqlite");
    let _ = std::fs::remove_file(&frozen);
    let conn = rusqlite::Connection::open(&written).unwrap();
    conn.execute("VACUUM INTO ?1", [frozen.to_str().unwrap()]).unwrap();
    drop(conn);
    let expected = fold_frozen(&out).await;
    std::fs::write(out.join("expected.json"), serde_json::to_string_pretty(&expected).unwrap() + "\n").unwrap();
}

/// A few lives of builds through the real webhook and build commands, and every other event type
/// as the services that record them would.
async fn write_scenarios(app: &TestApp) {
    let building = fixture("mob-issueUpdated-state-building.json");
    let issue = |id: &str, minute: u32| {
        with(&building, &json!({"id": id, "timestamp": format!("2026-11-29T10:{minute:02}:00.000Z")}))
    };
    let builds = &app.handles.builds;
    let lease = || Utc::now() + Duration::minutes(5);
    let run = |build: Uuid, command: BuildCommand| async move {
        builds.execute(build, Uuid::now_v7(), &command).await.unwrap();
    };

    // Succeeds after a heartbeat; two copies of its delivery fold into it.
    let b1 = build_id(&app.deliver(&issue("MOB-101", 1)).await);
    app.deliver(&issue("MOB-101", 1)).await;
    app.deliver(&issue("MOB-101", 2)).await;
    run(b1, BuildCommand::Claim { node_id: "mac-1".into(), lease_expires_at: lease() }).await;
    run(b1, BuildCommand::Renew { node_id: "mac-1".into(), attempt: 1, lease_expires_at: lease() }).await;
    let report = |node: &str, exit: i32| BuildReport {
        node_id: node.into(),
        exit_code: Some(exit),
        duration_ms: 61_000,
        commit_sha: Some("4f1c2e9".into()),
        failing_test: (exit != 0).then(|| "LoginTests.testLaunch".into()),
        log_tail: "** BUILD DONE **".into(),
        ..BuildReport::default()
    };
    let outcome = |outcome: ReportedOutcome, node: &str, attempt: u32, exit: i32| BuildCommand::Report {
        node_id: node.into(),
        attempt,
        outcome,
        report: Box::new(report(node, exit)),
        max_attempts: 3,
    };
    run(b1, outcome(ReportedOutcome::Succeeded, "mac-1", 1, 0)).await;

    // Fails; chat gives up, the tracker comment goes through, on-call is paged.
    let b2 = build_id(&app.deliver(&issue("MOB-102", 3)).await);
    run(b2, BuildCommand::Claim { node_id: "mac-2".into(), lease_expires_at: lease() }).await;
    run(b2, outcome(ReportedOutcome::Failed { reason: FailureReason::ScriptFailed, retry_rule: None }, "mac-2", 1, 65))
        .await;

    // Its node is lost: requeued, claimed again, the lost node's late result refused.
    let b3 = build_id(&app.deliver(&issue("MOB-103", 4)).await);
    run(b3, BuildCommand::Claim { node_id: "mac-2".into(), lease_expires_at: Utc::now() }).await;
    builds
        .execute_at(b3, Uuid::now_v7(), &BuildCommand::Expire { max_attempts: 3 }, Utc::now() + Duration::minutes(1))
        .await
        .unwrap();
    run(b3, BuildCommand::Claim { node_id: "mac-1".into(), lease_expires_at: lease() }).await;
    builds.record_rejection(b3, Uuid::now_v7(), "mac-2", 1, "attempt 1 is no longer current".into()).await.unwrap();
    run(b3, outcome(ReportedOutcome::Succeeded, "mac-1", 2, 0)).await;

    // Cancelled by moving the issue back to Open.
    let open = fixture("mob-issueUpdated-state-open.json");
    build_id(&app.deliver(&issue("MOB-104", 5)).await);
    app.deliver(&with(&open, &json!({"id": "MOB-104"}))).await;

    // Still queued, with a second change coalesced into it; another one running.
    build_id(&app.deliver(&issue("MOB-105", 6)).await);
    app.deliver(&with(&fixture("mob-issueUpdated-every-value-shape.json"), &json!({"id": "MOB-105"}))).await;
    let b6 = build_id(&app.deliver(&issue("MOB-106", 7)).await);
    run(b6, BuildCommand::Claim { node_id: "mac-1".into(), lease_expires_at: lease() }).await;

    // The legacy shape builds; what no trigger watches, the bot's changes and unknown types do not.
    app.deliver(&fixture("legacy-issueUpdated-state-building.json")).await;
    let ignored = app.deliver(&fixture("mob-issueCreated.json")).await;
    app.deliver(&fixture("mob-issueUpdated-by-bot.json")).await;
    app.deliver(&fixture("mob-unknown-event.json")).await;

    // A claim through the node API in a lane that runs one build at a time.
    let sign =
        with(&building, &json!({"id": "SIGN-1", "project": {"id": "0-9", "name": "Signing", "shortName": "SIGN"}}));
    let signed = build_id(&app.deliver(&sign).await);
    let nodes = std::fs::read_to_string(app.config.nodes.token_file.as_ref().unwrap()).unwrap().trim().to_owned();
    let xcodes = json!([{"version": "15.4", "path": "/Applications/Xcode-15.4.app"}]);
    let claim = json!({"node_id": "mac-9", "labels": ["signing"], "slots": 1, "wait_seconds": 5, "xcodes": xcodes});
    let claimed = answer_of(app.client.post(app.url("/api/v1/nodes/claim")).bearer_auth(nodes).json(&claim)).await;
    assert_eq!(claimed["build"]["build_id"], signed.to_string());
    let drain = json!({"draining": true, "reason": "maintenance"});
    answer_of(app.client.post(app.url("/api/v1/nodes/mac-9/drain")).bearer_auth(&app.admin_token).json(&drain)).await;

    // A failure that matched a node's retry rule, run again on another node and passed; each
    // attempt stored an artifact, removed later by retention. Another build stopped on its node.
    let b8 = build_id(&app.deliver(&issue("MOB-108", 9)).await);
    run(b8, BuildCommand::Claim { node_id: "mac-1".into(), lease_expires_at: lease() }).await;
    let artifact = |node: &str, attempt: u32, name: &str| BuildCommand::StoreArtifact {
        node_id: node.into(),
        attempt,
        name: name.into(),
        bytes: 3,
        sha256: "78324857e8d9bfa749dc301271df54a6572de9f4c3df8a9507cfa7b7d2b25f8e".into(),
    };
    run(b8, artifact("mac-1", 1, "logs/xcodebuild.log")).await;
    let simulator = ReportedOutcome::Failed {
        reason: FailureReason::ScriptFailed,
        retry_rule: Some("Failed to boot simulator".into()),
    };
    run(b8, outcome(simulator, "mac-1", 1, 70)).await;
    run(b8, BuildCommand::Claim { node_id: "mac-2".into(), lease_expires_at: lease() }).await;
    run(b8, artifact("mac-2", 2, "App.ipa")).await;
    run(b8, outcome(ReportedOutcome::Succeeded, "mac-2", 2, 0)).await;
    record(
        app,
        &meshgate_domain::stream::build_stream(b8),
        vec![
            Event::ArtifactsExpired(ArtifactsExpired {
                build_id: b8,
                names: vec!["App.ipa".into(), "logs/xcodebuild.log".into()],
                keep_days: 14,
            }),
            // Logs frozen before 2026-12-07-retention have none.
            Event::BuildLogsExpired(meshgate_domain::event::BuildLogsExpired {
                build_id: b8,
                attempts: vec![1, 2],
                keep_days: 90,
            }),
        ],
    )
    .await;
    let b9 = build_id(&app.deliver(&issue("MOB-109", 10)).await);
    run(b9, BuildCommand::Claim { node_id: "mac-1".into(), lease_expires_at: lease() }).await;
    let stopped = BuildReport {
        node_id: "mac-1".into(),
        duration_ms: 30_000,
        log_tail: "meshgate: mac-1 ended after SIGTERM".into(),
        stop: Some(meshgate_domain::node_api::Stop {
            cause: meshgate_domain::node_api::StopCause::Drained,
            signal: meshgate_domain::node_api::StopSignal::Terminated,
        }),
        after_build: Some("after_build failed (exit 4)".into()),
        ..BuildReport::default()
    };
    let node_stop = BuildCommand::Report {
        node_id: "mac-1".into(),
        attempt: 1,
        outcome: ReportedOutcome::Cancelled,
        report: Box::new(stopped),
        max_attempts: 3,
    };
    run(b9, node_stop).await;
    // A build that requires an Xcode, queued until a node with one claims it.
    let xcode = with(&building, &json!({"id": "XC-1", "project": {"id": "0-8", "name": "Xcode", "shortName": "XC"}}));
    build_id(&app.deliver(&xcode).await);

    // Notifications as the dispatcher records them.
    let chat = |build, milestone| notification_key("team-chat", build, milestone);
    let attempted = |key: &str, sink: &str, build, milestone, attempt, status: u16, retry: bool| {
        Event::NotificationAttempted(NotificationAttempted {
            key: key.into(),
            sink: sink.into(),
            build_id: build,
            milestone,
            attempt,
            status: Some(status),
            excerpt: if status < 300 { "ok".into() } else { format!("HTTP {status}") },
            next_attempt_at: retry.then(|| Utc::now() + Duration::seconds(2)),
        })
    };
    let delivered = |key: &str, sink: &str, build, milestone, attempts| {
        Event::NotificationDelivered(NotificationDelivered {
            key: key.into(),
            sink: sink.into(),
            build_id: build,
            milestone,
            attempts,
            message_ref: Some("1764410460.000100".into()),
        })
    };
    let queued = chat(b1, Milestone::Queued);
    record(
        app,
        &notification_stream(&queued),
        vec![
            attempted(&queued, "team-chat", b1, Milestone::Queued, 1, 503, true),
            attempted(&queued, "team-chat", b1, Milestone::Queued, 2, 200, false),
            delivered(&queued, "team-chat", b1, Milestone::Queued, 2),
        ],
    )
    .await;
    let succeeded = chat(b1, Milestone::Succeeded);
    record(
        app,
        &notification_stream(&succeeded),
        vec![
            attempted(&succeeded, "team-chat", b1, Milestone::Succeeded, 1, 200, false),
            delivered(&succeeded, "team-chat", b1, Milestone::Succeeded, 1),
        ],
    )
    .await;
    let retrying = chat(b8, Milestone::Retrying(2));
    record(
        app,
        &notification_stream(&retrying),
        vec![
            attempted(&retrying, "team-chat", b8, Milestone::Retrying(2), 1, 200, false),
            delivered(&retrying, "team-chat", b8, Milestone::Retrying(2), 1),
        ],
    )
    .await;
    let failed = chat(b2, Milestone::Failed);
    record(
        app,
        &notification_stream(&failed),
        vec![
            attempted(&failed, "team-chat", b2, Milestone::Failed, 1, 429, true),
            attempted(&failed, "team-chat", b2, Milestone::Failed, 2, 500, false),
            Event::NotificationAbandoned(NotificationAbandoned {
                key: failed.clone(),
                sink: "team-chat".into(),
                build_id: b2,
                milestone: Milestone::Failed,
                attempts: 2,
                reason: meshgate_domain::notification::AbandonReason::read("HTTP 500"),
            }),
        ],
    )
    .await;
    let comment = notification_key("youtrack", b2, Milestone::Failed);
    record(
        app,
        &notification_stream(&comment),
        vec![attempted(&comment, "youtrack", b2, Milestone::Failed, 1, 200, false)],
    )
    .await;
    record(
        app,
        &page_stream(b2),
        vec![Event::PageRequested(PageRequested {
            build_id: b2,
            issue_id: "MOB-102".into(),
            reason: "the chat notification was abandoned".into(),
        })],
    )
    .await;
    let page = notification_key("pager", b2, Milestone::Page);
    record(
        app,
        &notification_stream(&page),
        vec![
            attempted(&page, "pager", b2, Milestone::Page, 1, 202, false),
            delivered(&page, "pager", b2, Milestone::Page, 1),
        ],
    )
    .await;
    record(
        app,
        &notification_stream(&succeeded),
        vec![Event::NotificationResendRequested(NotificationResendRequested {
            key: succeeded.clone(),
            sink: "team-chat".into(),
            build_id: b1,
            milestone: Milestone::Succeeded,
            requested_by: "admin".into(),
            force: true,
            requested_at: Utc::now(),
        })],
    )
    .await;

    // A sweep of YouTrack's activity stream, a replay and a self-test.
    record(
        app,
        &reconcile_stream(),
        vec![Event::ReconcileSwept(ReconcileSwept {
            sweep_id: Uuid::now_v7(),
            trigger: "ios-build".into(),
            window_start: Utc::now() - Duration::hours(1),
            window_end: Utc::now(),
            activities_read: 9,
            transitions_matched: 6,
            builds_started: vec![],
            builds_folded: vec![b1],
            already_built: 5,
            left_since: 0,
            errors: vec![],
            cut_short: false,
        })],
    )
    .await;
    let correlation = ignored["correlation_id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).unwrap();
    let all = read_everything(app.store().as_ref()).await;
    let received = all.iter().find(|e| e.correlation_id == correlation).expect("the ignored delivery");
    record(
        app,
        &received.stream,
        vec![Event::DeliveryReplayed(DeliveryReplayed {
            correlation_id: correlation,
            issue_id: "MOB-7".into(),
            build_ids: vec![],
            replayed_at: Utc::now(),
        })],
    )
    .await;
    record(
        app,
        &selftest_stream(),
        vec![Event::SelfTestRan(SelfTestRan {
            passed: true,
            checks: vec![SelfTestCheck {
                check: "webhook token".into(),
                result: "pass".into(),
                detail: "a delivery with the token was accepted".into(),
            }],
        })],
    )
    .await;

    // The failed build rebuilt by an operator; the rebuild cancelled from Slack by an allowed
    // user, after a click by someone who is not; the Matrix room read to a point.
    let store = app.store().as_ref();
    let rebuilt = meshgate::actions::rebuild(store, b2, "admin", "admin").await.unwrap();
    assert!(rebuilt.started);
    let click = |request_id: &'static str, user: &'static str, allowed| meshgate_domain::action::ChatAction {
        request_id,
        sink: "team-chat",
        user,
        action: meshgate_domain::action::ActionKind::Cancel,
        build_id: rebuilt.build_id,
        allowed,
    };
    meshgate::actions::from_chat(store, "slack", &click("U0BOB-1764410500.000100", "U0BOB", false)).await.unwrap();
    meshgate::actions::from_chat(store, "slack", &click("U0ALICE-1764410501.000100", "U0ALICE", true)).await.unwrap();
    record(
        app,
        &meshgate_domain::stream::chat_sync_stream("team-room"),
        vec![Event::ChatSynced(meshgate_domain::event::ChatSynced {
            sink: "team-room".into(),
            since: "s72594_4483_1934_0_0_0_0_0_0_0".into(),
        })],
    )
    .await;
    // A YouTrack command the workflow refused.
    let command = notification_key("youtrack-commands", b2, Milestone::Failed);
    record(
        app,
        &notification_stream(&command),
        vec![
            attempted(&command, "youtrack-commands", b2, Milestone::Failed, 1, 400, false),
            Event::NotificationAbandoned(NotificationAbandoned {
                key: command.clone(),
                sink: "youtrack-commands".into(),
                build_id: b2,
                milestone: Milestone::Failed,
                attempts: 1,
                reason: meshgate_domain::notification::AbandonReason::read(
                    "refused with 400: Unknown state: Build broken",
                ),
            }),
        ],
    )
    .await;
    // The signing lane held for an Xcode upgrade, then every lane held and let go.
    // Each told to chat under its notice (logs frozen before 2026-12-07-notices have none).
    let notice = |n: u128| Some(Uuid::from_u128(0x0007_a05e_0000 + n));
    let pause = |lanes: &[&str], reason: &str, n: u128| {
        let lanes: Vec<String> = lanes.iter().map(|l| l.to_string()).collect();
        let by = "admin".into();
        Event::QueuePaused(meshgate_domain::event::QueuePaused { lanes, reason: reason.into(), by, notice: notice(n) })
    };
    let resume = Event::QueueResumed(meshgate_domain::event::QueueResumed {
        lanes: vec![],
        by: "admin".into(),
        notice: notice(3),
    });
    let held = vec![pause(&["signing"], "Xcode 16.3 upgrade", 1), pause(&[], "datacenter move", 2), resume];
    record(app, &meshgate_domain::stream::pause_stream(), held).await;
    record(app, &meshgate_domain::stream::pause_stream(), vec![pause(&["signing"], "Xcode 16.3 upgrade", 4)]).await;
    // The default lane went unserved past its alert time, and was served again.
    let watched = vec![
        Event::LaneUnservable(meshgate_domain::event::LaneUnservable { lane: "default".into(), build_id: b6 }),
        Event::LaneServable(meshgate_domain::event::LaneServable { lane: "default".into(), build_id: b6 }),
    ];
    record(app, &meshgate_domain::stream::lane_watch_stream("default"), watched).await;
}

/// Appends `events` to the end of `stream`.
async fn record(app: &TestApp, stream: &str, events: Vec<Event>) {
    let last = app.store().read_last(stream).await.unwrap();
    let correlation_id = Uuid::now_v7();
    let append = StreamAppend {
        stream: stream.to_owned(),
        expected: ExpectedVersion::from_current(last.map(|e| e.version)),
        events: events.iter().map(|e| NewEvent::from_domain(e, correlation_id, None, Utc::now())).collect(),
    };
    app.store().append(vec![append]).await.unwrap();
}
