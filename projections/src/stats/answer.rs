//! The answer to a question about the farm's history (`GET /api/v1/stats`): the kept days from
//! `since` to `until`, of one trigger or all, merged into the series the charts draw and the
//! rankings the tables show. Costs the days asked for, never the history.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use serde::Serialize;

use super::histogram::Sum;
use super::{Histogram, NodeCount, Stats, TestCount};

/// Rows of each ranking in an answer.
pub const TOP: usize = 10;

/// The middle and the 90th percentile of some durations, in seconds (none: no samples).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: Option<u64>,
    pub p90: Option<u64>,
}

impl Percentiles {
    fn of(h: &Histogram) -> Percentiles {
        Percentiles { count: h.count(), p50: h.quantile(0.5), p90: h.quantile(0.9) }
    }

    fn of_sum(h: &Sum) -> Percentiles {
        Percentiles { count: h.count(), p50: h.quantile(0.5), p90: h.quantile(0.9) }
    }
}

/// A trigger's counts over the days asked about.
#[derive(Default)]
struct TriggerSum {
    succeeded: u32,
    failed: u32,
    cancelled: u32,
    durations: Sum,
}

/// One day of the builds asked about.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayStats {
    pub day: NaiveDate,
    pub succeeded: u32,
    pub failed: u32,
    pub cancelled: u32,
    /// How long the attempt that finished each passed or failed build ran.
    pub duration: Percentiles,
    /// How long builds waited for their first claim.
    pub wait: Percentiles,
}

/// A trigger over the days asked about.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TriggerStats {
    pub trigger: String,
    pub succeeded: u32,
    pub failed: u32,
    pub cancelled: u32,
    /// Passed of passed and failed (cancelled builds left out); none without either.
    pub pass_rate: Option<f64>,
    pub duration: Percentiles,
    /// Its build durations day by day (every day asked about).
    pub days: Vec<SeriesPoint>,
}

/// A day's percentiles in a series.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SeriesPoint {
    pub day: NaiveDate,
    #[serde(flatten)]
    pub percentiles: Percentiles,
}

/// A lane's queue waits over the days asked about.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LaneStats {
    pub lane: String,
    pub wait: Percentiles,
    pub days: Vec<SeriesPoint>,
}

/// A script's run times.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScriptStats {
    pub script: String,
    pub duration: Percentiles,
    pub max: Option<u64>,
}

/// A test that failed: how often, and how often it then passed on the same commit.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestStats {
    pub test: String,
    pub failures: u32,
    pub flaky: u32,
}

/// What a node ran.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStats {
    pub node_id: String,
    pub attempts: u32,
    pub failures: u32,
    /// Its failures of builds another node then passed (a sick node has many).
    pub passed_elsewhere: u32,
}

/// The farm's history from `since` to `until`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsAnswer {
    pub since: NaiveDate,
    pub until: NaiveDate,
    /// The trigger asked about; none: every trigger.
    pub trigger: Option<String>,
    /// The oldest day the stats hold: the first day with a build, or the oldest of the
    /// [`super::KEEP_DAYS`] kept (none: no build yet).
    pub kept_since: Option<NaiveDate>,
    /// Every day from `since` (or `kept_since`, if later) to `until`, oldest first.
    pub days: Vec<DayStats>,
    /// Every trigger with builds in the days asked about, by name.
    pub triggers: Vec<TriggerStats>,
    /// Every lane with waits in the days asked about, by name.
    pub lanes: Vec<LaneStats>,
    /// The slowest scripts (by median), at most ten.
    pub slowest_scripts: Vec<ScriptStats>,
    /// The tests that failed most, at most ten.
    pub failing_tests: Vec<TestStats>,
    /// The tests most often flaky, at most ten.
    pub flaky_tests: Vec<TestStats>,
    /// Every node that finished an attempt, sickest first (most failures passed elsewhere, then
    /// most failures).
    pub nodes: Vec<NodeStats>,
}

/// Sums per key, keyed by the days' own names (an answer copies a name once, into its rows).
#[derive(Default)]
struct Totals<'a> {
    triggers: BTreeMap<&'a str, (TriggerSum, Vec<SeriesPoint>)>,
    lanes: BTreeMap<&'a str, (Sum, BTreeMap<NaiveDate, Sum>)>,
    scripts: BTreeMap<&'a str, Sum>,
    // Many names, merged day after day, ranked at the end: hashed, not ordered.
    tests: HashMap<&'a str, TestCount>,
    nodes: HashMap<&'a str, NodeCount>,
}

impl Stats {
    /// The days from `since` to `until` of `trigger` (all of them: none).
    pub fn answer(&self, since: NaiveDate, until: NaiveDate, trigger: Option<&str>) -> StatsAnswer {
        let kept_since = self.keep_from().map(|from| from.max(*self.days.keys().next().unwrap_or(&from)));
        let from = kept_since.map_or(since, |k| since.max(k));
        let mut totals = Totals::default();
        let mut days = Vec::new();
        for date in from.iter_days().take_while(|d| *d <= until) {
            let mut day = DayStats {
                day: date,
                succeeded: 0,
                failed: 0,
                cancelled: 0,
                duration: Percentiles::default(),
                wait: Percentiles::default(),
            };
            let (mut durations, mut waits) = (Sum::default(), Sum::default());
            let kept = self.days.get(&date);
            for (name, t) in kept.into_iter().flatten().filter(|(name, _)| trigger.is_none_or(|w| w == *name)) {
                day.succeeded += t.succeeded;
                day.failed += t.failed;
                day.cancelled += t.cancelled;
                durations.add(&t.durations);
                let (sum, _) = totals.triggers.entry(name.as_str()).or_default();
                sum.succeeded += t.succeeded;
                sum.failed += t.failed;
                sum.cancelled += t.cancelled;
                sum.durations.add(&t.durations);
                for (lane, h) in &t.waits {
                    waits.add(h);
                    let (all, by_day) = totals.lanes.entry(lane.as_str()).or_default();
                    all.add(h);
                    by_day.entry(date).or_default().add(h);
                }
                for (script, h) in &t.scripts {
                    totals.scripts.entry(script.as_str()).or_default().add(h);
                }
                for (test, c) in &t.tests {
                    let sum = totals.tests.entry(test.as_str()).or_default();
                    sum.failures += c.failures;
                    sum.flaky += c.flaky;
                }
                for (node, c) in &t.nodes {
                    let sum = totals.nodes.entry(node.as_str()).or_default();
                    sum.attempts += c.attempts;
                    sum.failures += c.failures;
                    sum.passed_elsewhere += c.passed_elsewhere;
                }
            }
            day.duration = Percentiles::of_sum(&durations);
            day.wait = Percentiles::of_sum(&waits);
            days.push(day);
        }
        // Each trigger's series over every day asked about.
        for (name, (_, series)) in totals.triggers.iter_mut() {
            *series = days
                .iter()
                .map(|d| {
                    let h = self.days.get(&d.day).and_then(|day| day.get(*name)).map(|t| &t.durations);
                    SeriesPoint { day: d.day, percentiles: h.map(Percentiles::of).unwrap_or_default() }
                })
                .collect();
        }
        let triggers = totals
            .triggers
            .into_iter()
            .map(|(trigger, (t, days))| TriggerStats {
                trigger: trigger.to_owned(),
                pass_rate: (t.succeeded + t.failed > 0)
                    .then(|| f64::from(t.succeeded) / f64::from(t.succeeded + t.failed)),
                duration: Percentiles::of_sum(&t.durations),
                succeeded: t.succeeded,
                failed: t.failed,
                cancelled: t.cancelled,
                days,
            })
            .collect();
        let lanes = totals
            .lanes
            .into_iter()
            .map(|(lane, (all, by_day))| LaneStats {
                lane: lane.to_owned(),
                wait: Percentiles::of_sum(&all),
                days: days
                    .iter()
                    .map(|d| SeriesPoint {
                        day: d.day,
                        percentiles: by_day.get(&d.day).map(Percentiles::of_sum).unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect();
        let mut slowest_scripts: Vec<ScriptStats> = totals
            .scripts
            .into_iter()
            .map(|(script, h)| ScriptStats {
                script: script.to_owned(),
                duration: Percentiles::of_sum(&h),
                max: h.max(),
            })
            .collect();
        slowest_scripts.sort_by(|a, b| b.duration.p50.cmp(&a.duration.p50).then(a.script.cmp(&b.script)));
        slowest_scripts.truncate(TOP);
        let top = |mut tests: Vec<(&str, TestCount)>, key: fn(&TestCount) -> u32| {
            tests.retain(|(_, c)| key(c) > 0);
            tests.sort_by(|a, b| key(&b.1).cmp(&key(&a.1)).then(a.0.cmp(b.0)));
            tests.truncate(TOP);
            tests
                .into_iter()
                .map(|(test, c)| TestStats { test: test.to_owned(), failures: c.failures, flaky: c.flaky })
                .collect::<Vec<_>>()
        };
        let tests: Vec<(&str, TestCount)> = totals.tests.into_iter().collect();
        let failing_tests = top(tests.clone(), |c| c.failures);
        let flaky_tests = top(tests, |c| c.flaky);
        let mut nodes: Vec<NodeStats> = totals
            .nodes
            .into_iter()
            .map(|(node_id, c)| NodeStats {
                node_id: node_id.to_owned(),
                attempts: c.attempts,
                failures: c.failures,
                passed_elsewhere: c.passed_elsewhere,
            })
            .collect();
        nodes.sort_by(|a, b| {
            (b.passed_elsewhere, b.failures).cmp(&(a.passed_elsewhere, a.failures)).then(a.node_id.cmp(&b.node_id))
        });
        StatsAnswer {
            since: from,
            until,
            trigger: trigger.map(str::to_owned),
            kept_since,
            days,
            triggers,
            lanes,
            slowest_scripts,
            failing_tests,
            flaky_tests,
            nodes,
        }
    }

    /// Whether any kept day has builds of `trigger`.
    pub fn knows_trigger(&self, trigger: &str) -> bool {
        self.days.values().any(|day| day.contains_key(trigger))
    }
}
