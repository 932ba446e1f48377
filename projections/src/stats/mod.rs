//! `stats`: the farm's history in numbers, a day at a time, for the charts of `#/stats` and
//! `GET /api/v1/stats`.
//!
//! Per UTC day and trigger it counts builds by outcome and keeps histograms (not samples) of how
//! long the attempt that finished each build ran, how long builds waited for their first claim
//! (per lane) and how long each script ran; it counts failing tests, flaky tests and each node's
//! attempts, failures and failures another node then passed. Memory is bounded whatever the
//! history: [`KEEP_DAYS`] days of fixed-size histograms and counters, the builds in flight, and the
//! last [`RECENT_FAILURES`] failed builds (a rebuild of one of them can show it flaky).
//!
//! - A test is **flaky** when it failed on an attempt and the same commit then passed: a retry of
//!   the build (a failure a `retry_on` rule matched) or a rebuild of it. Both commits must be known
//!   and equal; the test counts once per passing build, on the day it passed.
//! - A node is **sick** when builds that failed on it passed on another node: each failure of a
//!   build's earlier attempt on the node counts once the build passes elsewhere (a rebuild counts
//!   when it built the same commit).
//!
//! Durations are in whole seconds; [`Histogram`] keeps them exactly below 128 s and within 1.6 %
//! above.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, NaiveDate, Utc};
use meshgate_domain::event::BuildReport;
use meshgate_domain::{Event, Recorded};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Projection;

mod answer;
mod histogram;

pub use answer::*;
pub use histogram::Histogram;

/// Days of history kept, counted back from the newest day the log has reached.
pub const KEEP_DAYS: i64 = 90;
/// Failed builds remembered for the rebuilds that may follow them.
pub const RECENT_FAILURES: usize = 4096;
/// Distinct failing tests counted per trigger and day; further ones are not counted.
pub const MAX_TESTS_PER_DAY: usize = 1000;

/// A test's failures and flaky passes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCount {
    pub failures: u32,
    pub flaky: u32,
}

/// What a node ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCount {
    /// Attempts it finished (passed, failed or failed and retried).
    pub attempts: u32,
    pub failures: u32,
    /// Its failures of builds another node then passed.
    pub passed_elsewhere: u32,
}

/// One trigger's day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerDay {
    pub succeeded: u32,
    pub failed: u32,
    pub cancelled: u32,
    /// How long the attempt that finished each passed or failed build ran.
    pub durations: Histogram,
    /// How long builds waited for their first claim, by lane.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub waits: BTreeMap<String, Histogram>,
    /// How long each script ran.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scripts: BTreeMap<String, Histogram>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tests: BTreeMap<String, TestCount>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, NodeCount>,
}

/// A day: each trigger's.
pub type Day = BTreeMap<String, TriggerDay>;

/// A failed attempt, remembered until its build ends (or, for a failed build, until a rebuild).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Failure {
    node: String,
    test: Option<String>,
    commit: Option<String>,
    /// An attempt of the same build (a retry); else the build a rebuild repeats.
    retry: bool,
}

impl Failure {
    fn of(report: &BuildReport, retry: bool) -> Failure {
        Failure {
            node: report.node_id.clone(),
            test: report.failing_test.clone(),
            commit: report.commit_sha.clone(),
            retry,
        }
    }

    fn same_commit(&self, commit: Option<&String>) -> bool {
        self.commit.is_some() && self.commit.as_ref() == commit
    }
}

/// A build in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Flying {
    trigger: String,
    lane: String,
    script: String,
    requested_at: DateTime<Utc>,
    claimed: bool,
    failures: Vec<Failure>,
}

/// What the stats keep besides the days: the builds in flight and the failures rebuilds may
/// follow (saved whole: it is sized by the work in flight and [`RECENT_FAILURES`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flight {
    flying: BTreeMap<Uuid, Flying>,
    recent: VecDeque<(Uuid, Failure)>,
    /// The newest day the log reached.
    newest: Option<NaiveDate>,
}

/// What changed since the last save, never compared: two folds of one log are equal whatever
/// either saved.
#[derive(Debug, Clone, Default)]
struct Changes {
    count: u64,
    days: BTreeMap<NaiveDate, u64>,
    flight: u64,
    flight_saved: u64,
}

impl PartialEq for Changes {
    fn eq(&self, _: &Changes) -> bool {
        true
    }
}
impl Eq for Changes {}

/// The farm's history, a day at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    days: BTreeMap<NaiveDate, Day>,
    flight: Flight,
    changes: Changes,
}

/// What a save writes of the stats: the days changed, the flight if it changed, the oldest day
/// kept (older rows go), and the mark for [`Stats::saved`].
#[derive(Debug, Clone, Default)]
pub struct StatsChanges {
    pub days: Vec<(NaiveDate, Day)>,
    pub flight: Option<Flight>,
    pub keep_from: Option<NaiveDate>,
    pub mark: u64,
}

impl Stats {
    /// The stats a read model saved.
    pub fn restore(days: BTreeMap<NaiveDate, Day>, flight: Flight) -> Stats {
        Stats { days, flight, changes: Changes::default() }
    }

    /// Every day kept.
    pub fn days(&self) -> &BTreeMap<NaiveDate, Day> {
        &self.days
    }

    /// The flight (saved whole).
    pub fn flight(&self) -> &Flight {
        &self.flight
    }

    /// The oldest day kept, given the newest day the log reached.
    pub fn keep_from(&self) -> Option<NaiveDate> {
        self.flight.newest.map(|newest| newest - chrono::Duration::days(KEEP_DAYS - 1))
    }

    /// What changed since the last save.
    pub fn changed(&self) -> StatsChanges {
        StatsChanges {
            days: self.changes.days.keys().filter_map(|d| self.days.get(d).map(|day| (*d, day.clone()))).collect(),
            flight: (self.changes.flight > self.changes.flight_saved).then(|| self.flight.clone()),
            keep_from: self.keep_from(),
            mark: self.changes.count,
        }
    }

    /// The changes [`Stats::changed`] gave with `mark` are saved.
    pub fn saved(&mut self, mark: u64) {
        self.changes.days.retain(|_, change| *change > mark);
        self.changes.flight_saved = self.changes.flight_saved.max(mark.min(self.changes.flight));
    }

    fn touch_flight(&mut self) {
        self.changes.count += 1;
        self.changes.flight = self.changes.count;
    }

    /// The trigger's day of `at`, marked changed; none if the day is older than what is kept.
    fn day(&mut self, at: DateTime<Utc>, trigger: &str) -> Option<&mut TriggerDay> {
        let date = at.date_naive();
        if self.flight.newest.is_none_or(|n| date > n) {
            self.flight.newest = Some(date);
            self.touch_flight();
            if let Some(from) = self.keep_from() {
                self.days = self.days.split_off(&from);
                self.changes.days = self.changes.days.split_off(&from);
            }
        }
        if self.keep_from().is_some_and(|from| date < from) {
            return None;
        }
        self.changes.count += 1;
        self.changes.days.insert(date, self.changes.count);
        Some(self.days.entry(date).or_default().entry(trigger.to_owned()).or_default())
    }

    fn remember(&mut self, build_id: Uuid, failure: Failure) {
        self.flight.recent.push_back((build_id, failure));
        while self.flight.recent.len() > RECENT_FAILURES {
            self.flight.recent.pop_front();
        }
    }

    /// A finished attempt's report counted on its node, its script and its duration.
    fn finished(day: &mut TriggerDay, script: &str, report: &BuildReport, failed: bool) {
        let seconds = report.duration_ms / 1000;
        day.durations.record(seconds);
        day.scripts.entry(script.to_owned()).or_default().record(seconds);
        let node = day.nodes.entry(report.node_id.clone()).or_default();
        node.attempts += 1;
        if failed {
            node.failures += 1;
            count_failing_test(day, report);
        }
    }
}

fn count_failing_test(day: &mut TriggerDay, report: &BuildReport) {
    let Some(test) = &report.failing_test else { return };
    if day.tests.len() < MAX_TESTS_PER_DAY || day.tests.contains_key(test) {
        day.tests.entry(test.clone()).or_default().failures += 1;
    }
}

impl Projection for Stats {
    const NAME: &'static str = "stats";
    const VERSION: u32 = 1;

    fn wants(event_type: &str) -> bool {
        matches!(
            event_type,
            "BuildRequested"
                | "BuildClaimed"
                | "BuildRetryScheduled"
                | "BuildSucceeded"
                | "BuildFailed"
                | "BuildCancelled"
        )
    }

    fn apply(&mut self, recorded: &Recorded) {
        let at = recorded.recorded_at;
        match &recorded.event {
            Event::BuildRequested(e) => {
                if self.flight.flying.contains_key(&e.build_id) {
                    return;
                }
                // A rebuild of a failed build carries its failure.
                let failures = e
                    .rebuild_of
                    .and_then(|of| self.flight.recent.iter().rev().find(|(id, _)| *id == of))
                    .map(|(_, f)| vec![Failure { retry: false, ..f.clone() }])
                    .unwrap_or_default();
                let flying = Flying {
                    trigger: e.trigger.clone(),
                    lane: e.lane.clone(),
                    script: e.script.clone(),
                    requested_at: e.requested_at,
                    claimed: false,
                    failures,
                };
                self.flight.flying.insert(e.build_id, flying);
                self.touch_flight();
            }
            Event::BuildClaimed(e) => {
                let Some(flying) = self.flight.flying.get_mut(&e.build_id).filter(|f| !f.claimed) else { return };
                flying.claimed = true;
                let waited = (at - flying.requested_at).num_seconds().max(0) as u64;
                let (trigger, lane) = (flying.trigger.clone(), flying.lane.clone());
                self.touch_flight();
                if let Some(day) = self.day(at, &trigger) {
                    day.waits.entry(lane).or_default().record(waited);
                }
            }
            Event::BuildRetryScheduled(e) => {
                let Some(report) = &e.report else { return };
                let Some(flying) = self.flight.flying.get_mut(&e.build_id) else { return };
                flying.failures.push(Failure::of(report, true));
                let trigger = flying.trigger.clone();
                self.touch_flight();
                if let Some(day) = self.day(at, &trigger) {
                    let node = day.nodes.entry(report.node_id.clone()).or_default();
                    node.attempts += 1;
                    node.failures += 1;
                    count_failing_test(day, report);
                }
            }
            Event::BuildSucceeded(e) => {
                let Some(flying) = self.flight.flying.remove(&e.build_id) else { return };
                self.touch_flight();
                let Some(day) = self.day(at, &flying.trigger) else { return };
                day.succeeded += 1;
                let Some(report) = &e.report else { return };
                Stats::finished(day, &flying.script, report, false);
                let commit = report.commit_sha.as_ref();
                let mut flaky: Vec<&String> = Vec::new();
                for failure in &flying.failures {
                    if failure.node != report.node_id && (failure.retry || failure.same_commit(commit)) {
                        day.nodes.entry(failure.node.clone()).or_default().passed_elsewhere += 1;
                    }
                    if let Some(test) = failure.test.as_ref().filter(|_| failure.same_commit(commit)) {
                        if !flaky.contains(&test) {
                            flaky.push(test);
                        }
                    }
                }
                for test in flaky {
                    if day.tests.len() < MAX_TESTS_PER_DAY || day.tests.contains_key(test) {
                        day.tests.entry(test.clone()).or_default().flaky += 1;
                    }
                }
            }
            Event::BuildFailed(e) => {
                let Some(flying) = self.flight.flying.remove(&e.build_id) else { return };
                self.touch_flight();
                if let Some(report) = &e.report {
                    self.remember(e.build_id, Failure::of(report, false));
                }
                let Some(day) = self.day(at, &flying.trigger) else { return };
                day.failed += 1;
                if let Some(report) = &e.report {
                    Stats::finished(day, &flying.script, report, true);
                }
            }
            Event::BuildCancelled(e) => {
                let Some(flying) = self.flight.flying.remove(&e.build_id) else { return };
                self.touch_flight();
                if let Some(day) = self.day(at, &flying.trigger) {
                    day.cancelled += 1;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
