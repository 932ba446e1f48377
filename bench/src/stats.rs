//! What the `stats` projection costs: a history of builds as a busy farm makes it (about seven
//! events a build: requested, claimed, two lease renewals, the result, a notification tried and
//! delivered, and a retry now and then), spread over 90 days, folded in memory through the whole
//! projection set and through the stats alone, in the same run; then the answers of
//! `GET /api/v1/stats` on it (30 and 90 days, every trigger and one) and the size of what the
//! stats hold.
//!
//! ```sh
//! ./target/release/meshgate-bench stats --events 10000000
//! ```

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use meshgate_domain::event::{
    BuildClaimed, BuildFailed, BuildLeaseRenewed, BuildReport, BuildRequested, BuildRetryScheduled, BuildSucceeded,
    NotificationAttempted, NotificationDelivered,
};
use meshgate_domain::{Event, Recorded};
use meshgate_projections::{OutboxConfig, Projection, ProjectionSet, SinkSpec, Stats};
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Events in the history.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Triggers the builds are spread over (lanes: a fifth as many, at least one).
    #[arg(long, default_value_t = 20)]
    triggers: u32,
    /// Nodes that run them.
    #[arg(long, default_value_t = 40)]
    nodes: u32,
    /// Distinct tests that fail.
    #[arg(long, default_value_t = 2000)]
    tests: u32,
    /// Answers timed for each question (the median is reported).
    #[arg(long, default_value_t = 51)]
    answers: usize,
}

/// Events generated (and folded) at a time.
const CHUNK: usize = 100_000;
/// How often the fold lets go of finished builds, as a rebuild does after each save.
const LET_GO_EVERY: u64 = 50_000;

/// Makes the history a build at a time, in time order over 90 days.
struct History {
    args: StatsArgs,
    builds: u64,
    made: u64,
    position: u64,
    start: DateTime<Utc>,
}

impl History {
    fn recorded(&mut self, at: DateTime<Utc>, event: Event) -> Recorded {
        self.position += 1;
        Recorded {
            position: self.position,
            stream: String::new(),
            version: 0,
            event,
            correlation_id: Uuid::nil(),
            recorded_at: at,
        }
    }

    /// The next build's events, or none when the history is made.
    fn next_build(&mut self, into: &mut Vec<Recorded>) -> bool {
        if self.made >= self.builds {
            return false;
        }
        let n = self.made;
        self.made += 1;
        let (triggers, nodes, tests) = (self.args.triggers, self.args.nodes, self.args.tests);
        let spread = Duration::from_secs(90 * 86_400).as_secs_f64() / self.builds as f64;
        let at = self.start + chrono::Duration::milliseconds((n as f64 * spread * 1000.0) as i64);
        let build_id = Uuid::from_u128(u128::from(n) + 1);
        let trigger = format!("trigger-{}", n % u64::from(triggers));
        let lane = format!("lane-{}", n % u64::from((triggers / 5).max(1)));
        let node = |k: u64| format!("mac-{}", (n + k) % u64::from(nodes));
        let seconds = 300 + (n * 7919) % 1500;
        let report = |node: String, test: Option<String>| {
            Some(BuildReport {
                node_id: node,
                exit_code: Some(if test.is_some() { 65 } else { 0 }),
                duration_ms: seconds * 1000,
                commit_sha: Some(format!("{:040x}", n)),
                failing_test: test,
                ..BuildReport::default()
            })
        };
        let test = Some(format!("Tests{}.test{}", (n * 31) % u64::from(tests), n % 7));
        let requested = BuildRequested {
            build_id,
            issue_id: format!("MOB-{n}"),
            project: "MOB".into(),
            summary: None,
            trigger: trigger.clone(),
            script: trigger.clone(),
            lane,
            git_ref: "main".into(),
            requested_by: None,
            intent_key: format!("MOB-{n}/{trigger}"),
            correlation_id: build_id,
            requested_at: at,
            transition_at: None,
            source: Default::default(),
            xcode: None,
            rebuild_of: None,
        };
        let rec = |h: &mut History, s: i64, ev: Event| h.recorded(at + chrono::Duration::seconds(s), ev);
        let claimed = |attempt: u32, node_id: String| {
            Event::BuildClaimed(BuildClaimed { build_id, node_id, attempt, lease_expires_at: at })
        };
        into.push(rec(self, 0, Event::BuildRequested(requested)));
        into.push(rec(self, 30, claimed(1, node(0))));
        let renewed = |node_id: String| {
            Event::BuildLeaseRenewed(BuildLeaseRenewed { build_id, node_id, attempt: 1, lease_expires_at: at })
        };
        into.push(rec(self, 90, renewed(node(0))));
        into.push(rec(self, 150, renewed(node(0))));
        let end = 30 + seconds as i64;
        let result = match n % 20 {
            // One in twenty fails the way a retry rule says, and passes on another node.
            0 => {
                let retry = BuildRetryScheduled {
                    build_id,
                    attempt: 1,
                    next_attempt: 2,
                    reason: "script_failed".into(),
                    rule: "Failed to boot simulator".into(),
                    report: report(node(0), test),
                };
                into.push(rec(self, end, Event::BuildRetryScheduled(retry)));
                into.push(rec(self, end + 10, claimed(2, node(1))));
                Event::BuildSucceeded(BuildSucceeded { build_id, attempt: 2, report: report(node(1), None) })
            }
            // One in ten fails.
            1 | 2 => Event::BuildFailed(BuildFailed {
                build_id,
                attempt: 1,
                reason: "script_failed".into(),
                report: report(node(0), test),
            }),
            _ => Event::BuildSucceeded(BuildSucceeded { build_id, attempt: 1, report: report(node(0), None) }),
        };
        into.push(rec(self, end + 20, result));
        let milestone = meshgate_domain::notify::Milestone::Succeeded;
        let key = meshgate_domain::notify::notification_key("team", build_id, milestone);
        let attempted = NotificationAttempted {
            key: key.clone(),
            sink: "team".into(),
            build_id,
            milestone,
            attempt: 1,
            status: Some(200),
            excerpt: "ok".into(),
            next_attempt_at: None,
        };
        into.push(rec(self, end + 21, Event::NotificationAttempted(attempted)));
        let delivered =
            NotificationDelivered { key, sink: "team".into(), build_id, milestone, attempts: 1, message_ref: None };
        into.push(rec(self, end + 21, Event::NotificationDelivered(delivered)));
        true
    }
}

fn outbox() -> OutboxConfig {
    let wants = meshgate_domain::notify::Milestone::ALL.to_vec();
    OutboxConfig { sinks: vec![SinkSpec { name: "team".into(), wants }], ..OutboxConfig::default() }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

pub async fn run(args: StatsArgs) -> anyhow::Result<()> {
    // Seven events a build, nine for the one in twenty retried.
    let builds = args.events * 20 / 142;
    let answers = args.answers.max(1);
    let start = Utc::now() - chrono::Duration::days(90);
    let mut history = History { args, builds, made: 0, position: 0, start };
    let (mut set, mut stats) = (ProjectionSet::new(outbox()), Stats::default());
    let (mut in_set, mut in_stats, mut events) = (Duration::ZERO, Duration::ZERO, 0u64);
    let mut let_go_at = 0;
    let mut chunk = Vec::with_capacity(CHUNK + 16);
    loop {
        chunk.clear();
        while chunk.len() < CHUNK && history.next_build(&mut chunk) {}
        if chunk.is_empty() {
            break;
        }
        events += chunk.len() as u64;
        let started = Instant::now();
        for recorded in &chunk {
            if Stats::wants(recorded.event.event_type()) {
                stats.apply(recorded);
            }
        }
        in_stats += started.elapsed();
        let started = Instant::now();
        for recorded in &chunk {
            set.apply(recorded);
        }
        if set.position - let_go_at >= LET_GO_EVERY {
            // What a rebuild does once it saved: memory lets finished builds go.
            let (_, mark) = set.builds.changed();
            set.builds.saved(mark);
            let changes = set.stats.changed();
            set.stats.saved(changes.mark);
            let_go_at = set.position;
        }
        in_set += started.elapsed();
    }
    anyhow::ensure!(stats == set.stats, "the stats folded alone differ from the set's");
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    println!("history: {events} events, {builds} builds over 90 days");
    println!(
        "fold: every projection {:.2?} ({:.0} events/s); the stats alone {:.2?} ({:.0} events/s): {:.1} % of the fold",
        in_set,
        rate(in_set),
        in_stats,
        rate(in_stats),
        100.0 * in_stats.as_secs_f64() / in_set.as_secs_f64()
    );
    let days: usize = stats.days().values().map(|d| d.len()).sum();
    let day_bytes: usize = stats.days().values().map(|d| serde_json::to_string(d).map_or(0, |s| s.len())).sum();
    let flight = serde_json::to_string(stats.flight())?.len();
    println!(
        "held: {} days, {days} trigger-days, {:.1} KiB a day saved (JSON), {:.1} KiB of builds in flight and recent failures",
        stats.days().len(),
        day_bytes as f64 / stats.days().len().max(1) as f64 / 1024.0,
        flight as f64 / 1024.0
    );
    let today = stats.days().keys().next_back().copied().unwrap_or_else(|| Utc::now().date_naive());
    for (what, days, trigger) in [
        ("30 days, every trigger", 30, None),
        ("90 days, every trigger", 90, None),
        ("90 days, one trigger", 90, Some("trigger-3")),
    ] {
        let since = today - chrono::Duration::days(days - 1);
        let mut times = Vec::with_capacity(answers);
        let mut bytes = 0;
        for _ in 0..answers {
            let started = Instant::now();
            let answer = stats.answer(since, today, trigger);
            let json = serde_json::to_vec(&answer)?;
            times.push(started.elapsed());
            bytes = json.len();
        }
        println!("answer, {what}: median {:.2?} ({:.1} KiB of JSON)", median(times), bytes as f64 / 1024.0);
    }
    Ok(())
}
