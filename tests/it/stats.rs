//! `GET /api/v1/stats` on a gateway process whose log holds two weeks of builds (written into the
//! log with their days' times before it starts): the totals it answers, one trigger's answer, bad
//! questions refused, the same answers after a restart (read back from the read model), and the
//! saved stats equal to a rebuild from the log.

use std::path::Path;
use std::process::Command;

use chrono::{DateTime, Duration, Utc};
use meshgate::store::sqlite::{SqliteStore, WriterOptions};
use meshgate::store::{EventStore, NewEvent, StreamAppend};
use meshgate_domain::event::{
    BuildCancelled, BuildClaimed, BuildFailed, BuildReport, BuildRequested, BuildRetryScheduled, BuildSucceeded,
};
use meshgate_domain::{Event, ExpectedVersion};
use serde_json::Value;
use uuid::Uuid;

use crate::process::{start, token, write_config, BIN};

/// What [`seed_history`] wrote, counted as it wrote it.
#[derive(Debug, Default)]
pub struct Seeded {
    pub succeeded: u32,
    pub failed: u32,
    pub cancelled: u32,
    /// Builds that failed on `mac-3` with `LoginTests.testSignIn` and passed on `mac-1` (same
    /// commit) after a retry.
    pub flaky: u32,
    pub ios: (u32, u32),
    /// A build of yesterday evening that failed the way a retry rule says on `mac-2`, ran again
    /// on `mac-1` and was cancelled there.
    pub retried_and_cancelled: Uuid,
}

fn report(node: &str, seconds: u64, test: Option<&str>) -> Option<BuildReport> {
    Some(BuildReport {
        node_id: node.into(),
        exit_code: Some(if test.is_some() { 65 } else { 0 }),
        duration_ms: seconds * 1000,
        commit_sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
        failing_test: test.map(str::to_owned),
        log_tail: String::new(),
        ..BuildReport::default()
    })
}

/// Writes `days` days of builds (ending yesterday) into the log at `log`: six a day, four of
/// `ios-build` (lane `default`, slower each day) and two of `android-build` (lane `linux`); the last
/// of each day fails `CheckoutUITests.testPay`; the fifth fails `LoginTests.testSignIn` on `mac-3`
/// and passes when retried on `mac-1`; the fourth is cancelled while queued every fourth day. And
/// one more, retried and then cancelled ([`Seeded::retried_and_cancelled`]).
pub async fn seed_history(log: &Path, days: i64) -> Seeded {
    let store = SqliteStore::open(log, WriterOptions::default()).unwrap();
    let mut seeded = Seeded::default();
    let midnight = Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let mut appends = Vec::new();
    for ago in (1..=days).rev() {
        let morning = midnight - Duration::days(ago) + Duration::hours(9);
        for j in 0..6u32 {
            let build_id = Uuid::now_v7();
            let ios = j % 3 != 2;
            let (trigger, lane) = if ios { ("ios-build", "default") } else { ("android-build", "linux") };
            let node = ["mac-1", "mac-2", "mac-3"][(ago as usize + j as usize) % 3];
            let requested_at = morning + Duration::minutes(20 * i64::from(j));
            let claimed_at = requested_at + Duration::seconds(20 + 10 * i64::from(j));
            let seconds = if ios { 600 + 20 * (days - ago) as u64 } else { 300 };
            let done_at = claimed_at + Duration::seconds(seconds as i64);
            let mut events: Vec<(DateTime<Utc>, Event)> = vec![(
                requested_at,
                Event::BuildRequested(BuildRequested {
                    build_id,
                    issue_id: format!("MOB-{ago}{j}"),
                    project: "MOB".into(),
                    summary: None,
                    trigger: trigger.into(),
                    script: trigger.into(),
                    lane: lane.into(),
                    git_ref: "main".into(),
                    requested_by: Some("jane".into()),
                    intent_key: format!("MOB-{ago}{j}/{trigger}"),
                    correlation_id: build_id,
                    requested_at,
                    transition_at: None,
                    source: Default::default(),
                    xcode: None,
                    rebuild_of: None,
                }),
            )];
            let claim = |node: &str, attempt: u32, at: DateTime<Utc>| {
                let lease_expires_at = at + Duration::minutes(5);
                (at, Event::BuildClaimed(BuildClaimed { build_id, node_id: node.into(), attempt, lease_expires_at }))
            };
            if j == 3 && ago % 4 == 0 {
                let reason = "by an operator (admin): wrong branch".into();
                events.push((
                    claimed_at,
                    Event::BuildCancelled(BuildCancelled { build_id, reason, cancelled_at: claimed_at, report: None }),
                ));
                seeded.cancelled += 1;
            } else if j == 5 {
                events.push(claim(node, 1, claimed_at));
                let report = report(node, seconds, Some("CheckoutUITests.testPay"));
                events.push((
                    done_at,
                    Event::BuildFailed(BuildFailed { build_id, attempt: 1, reason: "script_failed".into(), report }),
                ));
                seeded.failed += 1;
            } else if j == 4 {
                events.push(claim("mac-3", 1, claimed_at));
                let failed = report("mac-3", seconds, Some("LoginTests.testSignIn"));
                let retry = BuildRetryScheduled {
                    build_id,
                    attempt: 1,
                    next_attempt: 2,
                    reason: "script_failed".into(),
                    rule: "Failed to boot simulator".into(),
                    report: failed,
                };
                events.push((done_at, Event::BuildRetryScheduled(retry)));
                events.push(claim("mac-1", 2, done_at + Duration::seconds(5)));
                let passed = done_at + Duration::seconds(5 + seconds as i64);
                let report = report("mac-1", seconds, None);
                events.push((passed, Event::BuildSucceeded(BuildSucceeded { build_id, attempt: 2, report })));
                seeded.succeeded += 1;
                seeded.flaky += 1;
            } else {
                events.push(claim(node, 1, claimed_at));
                let report = report(node, seconds, None);
                events.push((done_at, Event::BuildSucceeded(BuildSucceeded { build_id, attempt: 1, report })));
                seeded.succeeded += 1;
            }
            if ios {
                let last = &events.last().unwrap().1;
                seeded.ios.0 += u32::from(matches!(last, Event::BuildSucceeded(_)));
                seeded.ios.1 += u32::from(matches!(last, Event::BuildFailed(_)));
            }
            appends.push(StreamAppend {
                stream: meshgate_domain::stream::build_stream(build_id),
                expected: ExpectedVersion::NoStream,
                events: events.iter().map(|(at, e)| NewEvent::from_domain(e, build_id, None, *at)).collect(),
            });
        }
    }
    let build_id = Uuid::now_v7();
    let evening = midnight - Duration::hours(6);
    let requested = BuildRequested {
        build_id,
        issue_id: "MOB-77".into(),
        project: "MOB".into(),
        summary: Some("Checkout crashes on iOS 17".into()),
        trigger: "ios-build".into(),
        script: "ios-build".into(),
        lane: "default".into(),
        git_ref: "feature/MOB-77".into(),
        requested_by: Some("jane".into()),
        intent_key: "MOB-77/ios-build".into(),
        correlation_id: build_id,
        requested_at: evening,
        transition_at: None,
        source: Default::default(),
        xcode: None,
        rebuild_of: None,
    };
    let lease = |at: DateTime<Utc>| at + Duration::minutes(5);
    let claimed = |node: &str, attempt: u32, at: DateTime<Utc>| {
        Event::BuildClaimed(BuildClaimed { build_id, node_id: node.into(), attempt, lease_expires_at: lease(at) })
    };
    let retry = BuildRetryScheduled {
        build_id,
        attempt: 1,
        next_attempt: 2,
        reason: "script_failed".into(),
        rule: "Failed to boot simulator".into(),
        report: report("mac-2", 95, None),
    };
    let cancelled = BuildCancelled {
        build_id,
        reason: "by an operator (admin): wrong branch".into(),
        cancelled_at: evening + Duration::seconds(300),
        report: None,
    };
    let events = [
        (evening, Event::BuildRequested(requested)),
        (evening + Duration::seconds(40), claimed("mac-2", 1, evening + Duration::seconds(40))),
        (evening + Duration::seconds(135), Event::BuildRetryScheduled(retry)),
        (evening + Duration::seconds(170), claimed("mac-1", 2, evening + Duration::seconds(170))),
        (evening + Duration::seconds(300), Event::BuildCancelled(cancelled)),
    ];
    appends.push(StreamAppend {
        stream: meshgate_domain::stream::build_stream(build_id),
        expected: ExpectedVersion::NoStream,
        events: events.iter().map(|(at, e)| NewEvent::from_domain(e, build_id, None, *at)).collect(),
    });
    seeded.cancelled += 1;
    seeded.retried_and_cancelled = build_id;
    // One build per append, in time order (the log's order is the builds' order).
    for append in appends {
        store.append(vec![append]).await.unwrap();
    }
    store.close().await;
    seeded
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get(url: &str, admin: &str) -> (u16, Value) {
    let response = client().get(url).bearer_auth(admin).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or_default())
}

fn sum(days: &Value, field: &str) -> u64 {
    days.as_array().unwrap().iter().map(|d| d[field].as_u64().unwrap()).sum()
}

#[tokio::test]
async fn the_stats_of_two_weeks_of_builds_are_answered_checked_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let seeded = seed_history(&dir.path().join("data/events.sqlite"), 14).await;
    let config_arg = config.to_str().unwrap();
    let gateway = start(dir.path(), &["--config", config_arg], &[]);
    let admin = token(dir.path(), "admin.token");

    let (status, all) = get(&gateway.url("/api/v1/stats"), &admin).await;
    assert_eq!(status, 200, "{all}");
    let today = Utc::now().date_naive();
    // Thirty days asked, fourteen of history: the answer starts at the first build.
    assert_eq!(all["kept_since"], (today - Duration::days(14)).to_string());
    assert_eq!(all["days"].as_array().unwrap().len(), 15, "the first day of history to today");
    assert_eq!(sum(&all["days"], "succeeded"), u64::from(seeded.succeeded));
    assert_eq!(sum(&all["days"], "failed"), u64::from(seeded.failed));
    assert_eq!(sum(&all["days"], "cancelled"), u64::from(seeded.cancelled));
    let ios = all["triggers"].as_array().unwrap().iter().find(|t| t["trigger"] == "ios-build").unwrap();
    let (passed, failed) = seeded.ios;
    assert_eq!(ios["pass_rate"].as_f64().unwrap(), f64::from(passed) / f64::from(passed + failed));
    // Each day's ios builds ran 600 s + 20 s a day: that, day by day, as the histograms read it
    // (within 1.6 %).
    let series: Vec<u64> = ios["days"].as_array().unwrap()[..14].iter().map(|d| d["p50"].as_u64().unwrap()).collect();
    let ran = (0..14).map(|k| meshgate_projections::Histogram::reading(600 + 20 * k));
    assert_eq!(series, ran.collect::<Vec<u64>>());
    assert_eq!(all["flaky_tests"][0]["test"], "LoginTests.testSignIn");
    assert_eq!(all["flaky_tests"][0]["flaky"], seeded.flaky);
    assert_eq!(all["failing_tests"][0]["test"], "CheckoutUITests.testPay");
    // mac-3 failed the fifth build of every day, which mac-1 then passed.
    assert_eq!(all["nodes"][0]["node_id"], "mac-3");
    assert_eq!(all["nodes"][0]["passed_elsewhere"], seeded.flaky);
    let lanes: Vec<&str> = all["lanes"].as_array().unwrap().iter().map(|l| l["lane"].as_str().unwrap()).collect();
    assert_eq!(lanes, ["default", "linux"]);

    // One trigger, named by the configuration or only by the history.
    let (status, android) = get(&gateway.url("/api/v1/stats?trigger=android-build&since=2026-01-01"), &admin).await;
    assert_eq!(status, 200, "{android}");
    assert_eq!(android["triggers"].as_array().unwrap().len(), 1);
    assert_eq!(android["triggers"][0]["failed"], 14, "the sixth build of each day is android's and fails");
    assert_eq!(android["flaky_tests"], serde_json::json!([]));

    // Bad questions: a clear answer, nothing appended.
    let head = |v: &Value| v["head"].as_u64().unwrap();
    let (_, before) = get(&gateway.url("/api/v1/events?limit=1"), &admin).await;
    let tomorrow = (today + Duration::days(1)).to_string();
    for (query, status, field) in [
        (format!("since={tomorrow}"), 400, "since"),
        ("since=last-week".to_owned(), 400, "since"),
        ("since=2026-02-30".to_owned(), 400, "since"),
        ("trigger=watch-build".to_owned(), 404, "trigger"),
    ] {
        let (got, body) = get(&gateway.url(&format!("/api/v1/stats?{query}")), &admin).await;
        assert_eq!((got, body["field"].as_str()), (status, Some(field)), "{query}: {body}");
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
    let unauthorized = client().get(gateway.url("/api/v1/stats?since=nonsense")).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401, "the token before the filters");
    let (_, after) = get(&gateway.url("/api/v1/events?limit=1"), &admin).await;
    assert_eq!(head(&before), head(&after));

    // Saved at shutdown, equal to a rebuild, and read back by the next start.
    gateway.stop();
    let verify =
        Command::new(BIN).args(["--config", config_arg, "projections", "rebuild", "--verify"]).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    let gateway = start(dir.path(), &["--config", config_arg], &[]);
    let (_, again) = get(&gateway.url("/api/v1/stats"), &admin).await;
    assert_eq!(again, all, "the same answer from the saved stats");
    gateway.stop();
}
