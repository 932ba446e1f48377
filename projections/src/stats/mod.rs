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
use meshgate_domain::build::BuildState;
use meshgate_domain::event::BuildReport;
use meshgate_domain::{Event, Recorded};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::unsaved::Unsaved;
use crate::{BuildView, Projection};

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

/// A build in flight: what its finish is counted under, and the failures of its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flying {
    trigger: String,
    lane: String,
    script: String,
    requested_at: DateTime<Utc>,
    claimed: bool,
    failures: Vec<Failure>,
}

impl Flying {
    /// A queued or running build as its view has it, before any failure: claimed once running
    /// or queued again for a later attempt. A build in flight without failures is not saved: the
    /// read model restores it from its view (the property tests check the two agree).
    pub fn of_view(view: &BuildView) -> Option<Flying> {
        let claimed = match &view.state {
            BuildState::Queued { attempt } => *attempt > 1,
            BuildState::Running { .. } => true,
            _ => return None,
        };
        Some(Flying {
            trigger: view.trigger.clone(),
            lane: view.lane.clone(),
            script: view.script.clone(),
            requested_at: view.requested_at,
            claimed,
            failures: Vec::new(),
        })
    }

    /// Whether its view tells all of it ([`Flying::of_view`]): no failures to remember.
    fn of_its_view(&self) -> bool {
        self.failures.is_empty()
    }
}

/// What the stats keep besides the days and the builds in flight: the failures rebuilds may
/// follow and the newest day (saved whole: it is sized by [`RECENT_FAILURES`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flight {
    recent: VecDeque<(Uuid, Failure)>,
    /// The newest day the log reached.
    newest: Option<NaiveDate>,
}

/// A row of the stats as the read model saves it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum StatsKey {
    Day(NaiveDate),
    Flight,
    Flying(Uuid),
}

/// The farm's history: days, the builds in flight, recent failures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    days: BTreeMap<NaiveDate, Day>,
    flight: Flight,
    /// A row each in the read model once an attempt failed (the others are their views): a save
    /// writes the builds that moved, not all in flight.
    flying: BTreeMap<Uuid, Flying>,
    unsaved: Unsaved<StatsKey>,
}

/// What a save writes of the stats: the days changed, the flight if it changed, the builds in
/// flight with failures that changed (none: finished), the oldest day kept (older rows go), and
/// the mark for [`Stats::saved`].
#[derive(Debug, Clone, Default)]
pub struct StatsChanges {
    pub days: Vec<(NaiveDate, Day)>,
    pub flight: Option<Flight>,
    pub flying: Vec<(Uuid, Option<Flying>)>,
    pub keep_from: Option<NaiveDate>,
    pub mark: u64,
}

impl Stats {
    /// The stats a read model saved: its days, flight and builds in flight with failures, and
    /// the views of the builds in flight for the others ([`Flying::of_view`]).
    pub fn restore<'a>(
        days: BTreeMap<NaiveDate, Day>,
        flight: Flight,
        flying: impl IntoIterator<Item = (Uuid, Flying)>,
        in_flight: impl IntoIterator<Item = &'a BuildView>,
    ) -> Stats {
        let mut flying: BTreeMap<Uuid, Flying> = flying.into_iter().collect();
        for view in in_flight {
            if let (std::collections::btree_map::Entry::Vacant(slot), Some(derived)) =
                (flying.entry(view.build_id), Flying::of_view(view))
            {
                slot.insert(derived);
            }
        }
        Stats { days, flight, flying, unsaved: Unsaved::default() }
    }

    /// Every day kept.
    pub fn days(&self) -> &BTreeMap<NaiveDate, Day> {
        &self.days
    }

    /// The recent failures and the newest day (saved whole).
    pub fn flight(&self) -> &Flight {
        &self.flight
    }

    /// The builds in flight.
    pub fn flying(&self) -> &BTreeMap<Uuid, Flying> {
        &self.flying
    }

    /// The oldest day kept, given the newest day the log reached.
    pub fn keep_from(&self) -> Option<NaiveDate> {
        self.flight.newest.map(|newest| newest - chrono::Duration::days(KEEP_DAYS - 1))
    }

    /// What changed since the last save.
    pub fn changed(&self) -> StatsChanges {
        let mut changes = StatsChanges { keep_from: self.keep_from(), mark: self.unsaved.mark(), ..Default::default() };
        for key in self.unsaved.keys() {
            match key {
                StatsKey::Day(date) => changes.days.extend(self.days.get(date).map(|day| (*date, day.clone()))),
                StatsKey::Flight => changes.flight = Some(self.flight.clone()),
                StatsKey::Flying(id) => match self.flying.get(id) {
                    Some(flying) if flying.of_its_view() => {}
                    flying => changes.flying.push((*id, flying.cloned())),
                },
            }
        }
        changes
    }

    /// The changes [`Stats::changed`] gave with `mark` are saved.
    pub fn saved(&mut self, mark: u64) {
        self.unsaved.saved(mark);
    }

    /// The trigger's day of `at`, marked changed; none if the day is older than what is kept.
    fn day(&mut self, at: DateTime<Utc>, trigger: &str) -> Option<&mut TriggerDay> {
        let date = at.date_naive();
        if self.flight.newest.is_none_or(|n| date > n) {
            self.flight.newest = Some(date);
            self.unsaved.touch(StatsKey::Flight);
            if let Some(from) = self.keep_from() {
                self.days = self.days.split_off(&from);
                // The save removes the older days' rows by their date.
                self.unsaved.retain(|key| !matches!(key, StatsKey::Day(day) if *day < from));
            }
        }
        if self.keep_from().is_some_and(|from| date < from) {
            return None;
        }
        self.unsaved.touch(StatsKey::Day(date));
        Some(self.days.entry(date).or_default().entry(trigger.to_owned()).or_default())
    }

    fn remember(&mut self, build_id: Uuid, failure: Failure) {
        self.flight.recent.push_back((build_id, failure));
        self.unsaved.touch(StatsKey::Flight);
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
    // 2: the builds in flight saved a row each, not whole. 3: only those with failures, the others
    // restored from their views.
    const VERSION: u32 = 3;

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
                if self.flying.contains_key(&e.build_id) {
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
                self.flying.insert(e.build_id, flying);
                self.unsaved.touch(StatsKey::Flying(e.build_id));
            }
            Event::BuildClaimed(e) => {
                let Some(flying) = self.flying.get_mut(&e.build_id).filter(|f| !f.claimed) else { return };
                flying.claimed = true;
                let waited = (at - flying.requested_at).num_seconds().max(0) as u64;
                let (trigger, lane) = (flying.trigger.clone(), flying.lane.clone());
                self.unsaved.touch(StatsKey::Flying(e.build_id));
                if let Some(day) = self.day(at, &trigger) {
                    day.waits.entry(lane).or_default().record(waited);
                }
            }
            Event::BuildRetryScheduled(e) => {
                let Some(report) = &e.report else { return };
                let Some(flying) = self.flying.get_mut(&e.build_id) else { return };
                flying.failures.push(Failure::of(report, true));
                let trigger = flying.trigger.clone();
                self.unsaved.touch(StatsKey::Flying(e.build_id));
                if let Some(day) = self.day(at, &trigger) {
                    let node = day.nodes.entry(report.node_id.clone()).or_default();
                    node.attempts += 1;
                    node.failures += 1;
                    count_failing_test(day, report);
                }
            }
            Event::BuildSucceeded(e) => {
                let Some(flying) = self.flying.remove(&e.build_id) else { return };
                self.unsaved.touch(StatsKey::Flying(e.build_id));
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
                let Some(flying) = self.flying.remove(&e.build_id) else { return };
                self.unsaved.touch(StatsKey::Flying(e.build_id));
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
                let Some(flying) = self.flying.remove(&e.build_id) else { return };
                self.unsaved.touch(StatsKey::Flying(e.build_id));
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
