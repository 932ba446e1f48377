//! The stats of a small hand-made history, checked against values worked out by hand.

use chrono::{DateTime, NaiveDate, Utc};
use meshgate_domain::event::{
    BuildCancelled, BuildClaimed, BuildFailed, BuildReport, BuildRequested, BuildRetryScheduled, BuildSucceeded,
    RequestSource,
};
use meshgate_domain::{Event, Recorded};
use uuid::Uuid;

use super::*;

/// Noon of day `d` of December 2026, plus `s` seconds.
fn at(d: u32, s: i64) -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(2026, 12, d).unwrap().and_hms_opt(12, 0, 0).unwrap().and_utc()
        + chrono::Duration::seconds(s)
}

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, d).unwrap()
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn report(node: &str, seconds: u64, test: Option<&str>, commit: Option<&str>) -> Option<BuildReport> {
    Some(BuildReport {
        node_id: node.into(),
        exit_code: Some(if test.is_some() { 1 } else { 0 }),
        duration_ms: seconds * 1000 + 999,
        commit_sha: commit.map(str::to_owned),
        failing_test: test.map(str::to_owned),
        ..BuildReport::default()
    })
}

/// Folds events in order, each at its time.
#[derive(Default)]
struct Log {
    stats: Stats,
    position: u64,
}

impl Log {
    fn at(&mut self, when: DateTime<Utc>, event: Event) -> &mut Self {
        self.position += 1;
        let recorded = Recorded {
            position: self.position,
            stream: "build".into(),
            version: 0,
            event,
            correlation_id: Uuid::nil(),
            recorded_at: when,
        };
        self.stats.apply(&recorded);
        self
    }

    fn request(
        &mut self,
        when: DateTime<Utc>,
        build: u128,
        trigger: &str,
        lane: &str,
        rebuild_of: Option<u128>,
    ) -> &mut Self {
        self.at(
            when,
            Event::BuildRequested(BuildRequested {
                build_id: id(build),
                issue_id: "MOB-1".into(),
                project: "MOB".into(),
                summary: None,
                trigger: trigger.into(),
                script: format!("{trigger}.sh"),
                lane: lane.into(),
                git_ref: "main".into(),
                requested_by: None,
                intent_key: format!("MOB-1/{trigger}"),
                correlation_id: Uuid::nil(),
                requested_at: when,
                transition_at: None,
                source: if rebuild_of.is_some() { RequestSource::Rebuild } else { RequestSource::Webhook },
                xcode: None,
                rebuild_of: rebuild_of.map(id),
            }),
        )
    }

    fn claim(&mut self, when: DateTime<Utc>, build: u128, node: &str, attempt: u32) -> &mut Self {
        let claim = BuildClaimed { build_id: id(build), node_id: node.into(), attempt, lease_expires_at: when };
        self.at(when, Event::BuildClaimed(claim))
    }

    fn pass(&mut self, when: DateTime<Utc>, build: u128, report: Option<BuildReport>) -> &mut Self {
        self.at(when, Event::BuildSucceeded(BuildSucceeded { build_id: id(build), attempt: 1, report }))
    }

    fn fail(&mut self, when: DateTime<Utc>, build: u128, report: Option<BuildReport>) -> &mut Self {
        let failed = BuildFailed { build_id: id(build), attempt: 1, reason: "script_failed".into(), report };
        self.at(when, Event::BuildFailed(failed))
    }

    fn retry(&mut self, when: DateTime<Utc>, build: u128, report: Option<BuildReport>) -> &mut Self {
        let retry = BuildRetryScheduled {
            build_id: id(build),
            attempt: 1,
            next_attempt: 2,
            reason: "script_failed".into(),
            rule: "Failed to boot simulator".into(),
            report,
        };
        self.at(when, Event::BuildRetryScheduled(retry))
    }

    fn cancel(&mut self, when: DateTime<Utc>, build: u128) -> &mut Self {
        let cancelled =
            BuildCancelled { build_id: id(build), reason: "expired".into(), cancelled_at: when, report: None };
        self.at(when, Event::BuildCancelled(cancelled))
    }
}

const C1: &str = "1111111111111111111111111111111111111111";
const C2: &str = "2222222222222222222222222222222222222222";

/// Three days of two triggers on two nodes:
/// - Dec 1, ios: #1 waits 30 s, passes on mac-1 in 100 s; #2 waits 60 s, fails `LoginTests` on
///   mac-2 in 200 s (commit C1). android: #3 waits 10 s, passes on mac-1 in 50 s.
/// - Dec 2, ios: #4 (a rebuild of #2) waits 20 s, passes on mac-1 in 110 s, commit C1: flaky
///   `LoginTests`, mac-2's failure passed elsewhere. #5 waits 40 s, fails `CartTests` on mac-2 in
///   300 s (C2) and retries; attempt 2 passes on mac-2 in 90 s (C2): flaky `CartTests`, not passed
///   elsewhere (same node).
/// - Dec 3, ios: #6 is cancelled while queued; #7 waits 5 s, fails `LoginTests` on mac-1 in 600 s
///   (C2) and is rebuilt as #8, which passes on mac-2 with another commit (C1): not flaky, not
///   passed elsewhere.
fn history() -> Stats {
    let mut log = Log::default();
    log.request(at(1, 0), 1, "ios", "default", None).claim(at(1, 30), 1, "mac-1", 1).pass(
        at(1, 130),
        1,
        report("mac-1", 100, None, Some(C1)),
    );
    log.request(at(1, 0), 2, "ios", "default", None).claim(at(1, 60), 2, "mac-2", 1).fail(
        at(1, 260),
        2,
        report("mac-2", 200, Some("LoginTests"), Some(C1)),
    );
    log.request(at(1, 0), 3, "android", "linux", None).claim(at(1, 10), 3, "mac-1", 1).pass(
        at(1, 60),
        3,
        report("mac-1", 50, None, None),
    );
    log.request(at(2, 0), 4, "ios", "default", Some(2)).claim(at(2, 20), 4, "mac-1", 1).pass(
        at(2, 130),
        4,
        report("mac-1", 110, None, Some(C1)),
    );
    log.request(at(2, 0), 5, "ios", "default", None)
        .claim(at(2, 40), 5, "mac-2", 1)
        .retry(at(2, 340), 5, report("mac-2", 300, Some("CartTests"), Some(C2)))
        .claim(at(2, 400), 5, "mac-2", 2)
        .pass(at(2, 490), 5, report("mac-2", 90, None, Some(C2)));
    log.request(at(3, 0), 6, "ios", "default", None).cancel(at(3, 10), 6);
    log.request(at(3, 0), 7, "ios", "default", None).claim(at(3, 5), 7, "mac-1", 1).fail(
        at(3, 605),
        7,
        report("mac-1", 600, Some("LoginTests"), Some(C2)),
    );
    log.request(at(3, 700), 8, "ios", "default", Some(7)).claim(at(3, 700), 8, "mac-2", 1).pass(
        at(3, 800),
        8,
        report("mac-2", 100, None, Some(C1)),
    );
    log.stats
}

#[test]
fn a_seeded_history_answers_what_was_worked_out_by_hand() {
    let stats = history();
    let all = stats.answer(day(1), day(3), None);
    assert_eq!((all.since, all.until, all.kept_since), (day(1), day(3), Some(day(1))));
    let outcomes: Vec<(u32, u32, u32)> = all.days.iter().map(|d| (d.succeeded, d.failed, d.cancelled)).collect();
    assert_eq!(outcomes, [(2, 1, 0), (2, 0, 0), (1, 1, 1)]);
    // Dec 1 durations 100, 200, 50: median 100, p90 200 (nearest rank 3 of 3), which reads as
    // the middle of its bucket (200 to 204 s).
    assert_eq!(all.days[0].duration, Percentiles { count: 3, p50: Some(100), p90: Some(202) });
    // Dec 3: 600 (the middle of 592 to 608 s) and 100 s.
    assert_eq!(all.days[2].duration, Percentiles { count: 2, p50: Some(100), p90: Some(600) });
    // Dec 2 waits 20, 40: the second claim of #5 is not a wait.
    assert_eq!(all.days[1].wait, Percentiles { count: 2, p50: Some(20), p90: Some(40) });

    let ios = &all.triggers.iter().find(|t| t.trigger == "ios").unwrap();
    assert_eq!((ios.succeeded, ios.failed, ios.cancelled), (4, 2, 1));
    assert_eq!(ios.pass_rate, Some(4.0 / 6.0));
    // ios durations 100, 200, 110, 90, 600, 100: sorted 90 100 100 110 200 600.
    assert_eq!(ios.duration, Percentiles { count: 6, p50: Some(100), p90: Some(600) });
    assert_eq!(ios.days.len(), 3);
    assert_eq!(ios.days[1].percentiles, Percentiles { count: 2, p50: Some(90), p90: Some(110) });

    let lanes: Vec<(&str, Percentiles)> = all.lanes.iter().map(|l| (l.lane.as_str(), l.wait)).collect();
    // default: 30, 60, 20, 40, 5, 0 → sorted 0 5 20 30 40 60.
    assert_eq!(
        lanes,
        [
            ("default", Percentiles { count: 6, p50: Some(20), p90: Some(60) }),
            ("linux", Percentiles { count: 1, p50: Some(10), p90: Some(10) })
        ]
    );

    let scripts: Vec<(&str, Option<u64>)> =
        all.slowest_scripts.iter().map(|s| (s.script.as_str(), s.duration.p50)).collect();
    assert_eq!(scripts, [("ios.sh", Some(100)), ("android.sh", Some(50))]);
    assert_eq!(all.slowest_scripts[0].max, Some(600));

    let failing: Vec<(&str, u32, u32)> =
        all.failing_tests.iter().map(|t| (t.test.as_str(), t.failures, t.flaky)).collect();
    assert_eq!(failing, [("LoginTests", 2, 1), ("CartTests", 1, 1)]);
    let flaky: Vec<&str> = all.flaky_tests.iter().map(|t| t.test.as_str()).collect();
    assert_eq!(flaky, ["CartTests", "LoginTests"]);

    // mac-1: #1, #3, #4 passed, #7 failed. mac-2: #2 failed, #5 retried then passed, #8 passed.
    let nodes: Vec<(&str, u32, u32, u32)> =
        all.nodes.iter().map(|n| (n.node_id.as_str(), n.attempts, n.failures, n.passed_elsewhere)).collect();
    assert_eq!(nodes, [("mac-2", 4, 2, 1), ("mac-1", 4, 1, 0)]);
}

#[test]
fn an_answer_of_one_trigger_leaves_the_others_out_and_days_before_the_history_are_not_drawn() {
    let stats = history();
    let android = stats.answer(day(1) - chrono::Duration::days(30), day(5), Some("android"));
    assert_eq!(android.since, day(1), "nothing to draw before the first build");
    assert_eq!(android.days.len(), 5);
    assert_eq!(android.days.iter().map(|d| d.succeeded).sum::<u32>(), 1);
    assert_eq!(android.triggers.len(), 1);
    assert_eq!(android.nodes.len(), 1);
    assert!(android.failing_tests.is_empty());
    assert!(stats.knows_trigger("android") && !stats.knows_trigger("watch"));
}

#[test]
fn days_past_the_kept_window_are_let_go_and_marked_for_the_save() {
    let mut log = Log::default();
    log.request(at(1, 0), 1, "ios", "default", None).cancel(at(1, 1), 1);
    let mark = log.stats.changed();
    assert_eq!(mark.days.len(), 1);
    log.stats.saved(mark.mark);
    assert!(log.stats.changed().days.is_empty() && log.stats.changed().flight.is_none(), "nothing changed since");
    let later = at(1, 0) + chrono::Duration::days(KEEP_DAYS);
    log.request(later, 2, "ios", "default", None).cancel(later, 2);
    assert_eq!(log.stats.days().len(), 1, "Dec 1 is older than the days kept");
    let changed = log.stats.changed();
    assert_eq!(changed.keep_from, Some(day(2)));
    assert_eq!(changed.days.iter().map(|(d, _)| *d).collect::<Vec<_>>(), [later.date_naive()]);
    // A late event of a day no longer kept changes nothing.
    log.request(at(1, 0), 3, "ios", "default", None).cancel(at(1, 5), 3);
    assert_eq!(log.stats.days().len(), 1);
}

#[test]
fn two_folds_of_one_log_are_equal_whatever_either_saved() {
    let (a, mut b) = (history(), history());
    let mark = b.changed().mark;
    b.saved(mark);
    assert_eq!(a, b);
    let restored = Stats::restore(a.days().clone(), a.flight().clone(), a.flying().clone(), std::iter::empty());
    assert_eq!(restored, a);
}
