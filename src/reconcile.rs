//! Reconciliation: YouTrack's Webhook Triggers app sends each delivery once and never retries, so
//! whatever it sends while the gateway is down, restarting or failing is lost. A sweep reads the
//! custom field changes of the triggers' projects from YouTrack's activity stream since the last
//! sweep (with an overlap), keeps the transitions a trigger watches whose issue is still in the
//! trigger's state, and decides each one exactly as a webhook's: a transition the intent's build
//! was already started for starts nothing, one for a queued or running build folds into it, any
//! other starts a build (`source: reconcile`). Every sweep is a `ReconcileSwept` event. ADR 0008.
//!
//! A sweep runs at start (covering the downtime), then every `[reconcile] interval_seconds`, and on
//! demand (`POST /api/v1/reconcile`, `meshgate reconcile`). Failures back off and never hold up
//! webhooks; `/readyz` shows them after several in a row.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use meshgate_domain::event::{ReconcileSwept, RequestSource};
use meshgate_domain::intent::{decide_intent, IntentDecision, IntentOutcome, Transition};
use meshgate_domain::reconcile::{candidates, issue_query, window_start, Activity, IssueNow, LastSweep};
use meshgate_domain::stream::reconcile_stream;
use meshgate_domain::{Event, ExpectedVersion, Trigger};
use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

use crate::ingest::{load_intent, to_store_appends};
use crate::store::{decide_and_append, Decision, EventStore, NewEvent, Retry, StoreError, StreamAppend, RETRY_FOR};
use crate::youtrack::{ActivityQuery, YouTrack, YouTrackError};

/// Failed sweeps in a row before `/readyz` reports reconciliation as failing.
pub const FAILURES_SHOWN: u32 = 3;
/// The longest wait between sweeps while they fail.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// `[reconcile]` in the units a sweep uses.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Zero: no sweeps but on demand.
    pub interval: Duration,
    pub lookback: chrono::Duration,
    pub overlap: chrono::Duration,
    pub max_activities: usize,
    pub same_transition: chrono::Duration,
}

/// What became of one transition a sweep found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TransitionReport {
    pub issue_id: String,
    pub trigger: String,
    pub at: DateTime<Utc>,
    pub author: Option<String>,
    pub outcome: TransitionOutcome,
    pub build_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What became of a transition a sweep found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransitionOutcome {
    /// A build was started.
    Started,
    /// The transition was folded into a queued or running build.
    Folded,
    /// The intent's build was already started for this transition.
    AlreadyBuilt,
    /// The issue is no longer in the trigger's state.
    LeftSince,
    /// A dry run: a build would be started.
    WouldStart,
    /// A dry run: the transition would be folded.
    WouldFold,
    /// It could not be decided (`error` says why); the next sweep looks again.
    Error,
}

impl From<IntentOutcome> for TransitionOutcome {
    fn from(outcome: IntentOutcome) -> Self {
        match outcome {
            IntentOutcome::Started => TransitionOutcome::Started,
            IntentOutcome::Folded => TransitionOutcome::Folded,
            IntentOutcome::AlreadyBuilt => TransitionOutcome::AlreadyBuilt,
            IntentOutcome::WouldStart => TransitionOutcome::WouldStart,
            IntentOutcome::WouldFold => TransitionOutcome::WouldFold,
        }
    }
}

/// One sweep, as answered by the API and printed by the command: what its event records, and
/// each transition it looked at.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SweepReport {
    #[serde(flatten)]
    pub swept: ReconcileSwept,
    pub dry_run: bool,
    pub transitions: Vec<TransitionReport>,
    /// How long YouTrack asked to wait, if it did.
    #[serde(skip)]
    #[schema(ignore)]
    pub retry_after: Option<Duration>,
}

/// Recent sweeps' outcome, for `/readyz`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_window_end: Option<DateTime<Utc>>,
}

pub struct Reconciler {
    store: Arc<dyn EventStore>,
    youtrack: YouTrack,
    triggers: Vec<Trigger>,
    bot_login: Option<String>,
    settings: Settings,
    health: Mutex<Health>,
    /// One sweep at a time per gateway.
    turn: tokio::sync::Mutex<()>,
}

impl Reconciler {
    pub fn new(
        store: Arc<dyn EventStore>,
        youtrack: YouTrack,
        triggers: Vec<Trigger>,
        bot_login: Option<String>,
        settings: Settings,
    ) -> Self {
        Reconciler {
            store,
            youtrack,
            triggers,
            bot_login,
            settings,
            health: Mutex::default(),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// The YouTrack client sweeps read with (its token reloads in place).
    pub fn youtrack(&self) -> &YouTrack {
        &self.youtrack
    }

    pub fn health(&self) -> Health {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Where a sweep starts when not told: the last sweep's end, else the last event recorded.
    async fn default_start(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, StoreError> {
        let last_sweep = match self.store.read_last(&reconcile_stream()).await? {
            Some(stored) => match stored.decode().map(|r| r.event) {
                Ok(Event::ReconcileSwept(swept)) => {
                    Some(LastSweep { window_end: swept.window_end, cut_short: swept.cut_short })
                }
                _ => None,
            },
            None => None,
        };
        let head = *self.store.head().borrow();
        let last_recorded = match head {
            0 => None,
            head => self.store.read_all(head - 1, 1).await?.first().map(|e| e.recorded_at),
        };
        Ok(window_start(last_sweep, last_recorded, now, self.settings.lookback, self.settings.overlap))
    }

    /// Runs one sweep over `[since or the default start, now]`; a dry run appends nothing. The
    /// report lists errors instead of failing: only the log failing fails it.
    pub async fn sweep(
        &self,
        trigger: &str,
        since: Option<DateTime<Utc>>,
        dry_run: bool,
    ) -> Result<SweepReport, StoreError> {
        let _turn = self.turn.lock().await;
        let now = Utc::now();
        let start = match since {
            Some(since) => since,
            None => self.default_start(now).await?,
        };
        let mut report = SweepReport {
            swept: ReconcileSwept {
                sweep_id: Uuid::now_v7(),
                trigger: trigger.to_owned(),
                window_start: start,
                window_end: now,
                activities_read: 0,
                transitions_matched: 0,
                builds_started: Vec::new(),
                builds_folded: Vec::new(),
                already_built: 0,
                left_since: 0,
                errors: Vec::new(),
                cut_short: false,
            },
            dry_run,
            transitions: Vec::new(),
            retry_after: None,
        };
        match self.read_window(start, now).await {
            Ok((activities, cut_at)) => {
                report.swept.activities_read = activities.len().try_into().unwrap_or(u32::MAX);
                if let Some(cut_at) = cut_at {
                    report.swept.window_end = cut_at;
                    report.swept.cut_short = true;
                }
                self.decide_all(&activities, &mut report).await?;
            }
            Err(e) => self.failed(&mut report, e),
        }
        // Nothing is skipped for good: a sweep with errors is done again from the same start.
        if !report.swept.errors.is_empty() {
            report.swept.window_end = start;
            report.swept.cut_short = false;
        }
        if !dry_run {
            self.record(&report).await?;
        }
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if report.swept.errors.is_empty() {
            *health =
                Health { consecutive_failures: 0, last_error: None, last_window_end: Some(report.swept.window_end) };
        } else {
            health.consecutive_failures += 1;
            health.last_error = report.swept.errors.first().cloned();
        }
        drop(health);
        let level_errors = report.swept.errors.len();
        if level_errors == 0 {
            tracing::info!(sweep_id = %report.swept.sweep_id, trigger, activities = report.swept.activities_read,
                matched = report.swept.transitions_matched, started = report.swept.builds_started.len(),
                folded = report.swept.builds_folded.len(), already_built = report.swept.already_built, dry_run, "reconcile sweep");
        } else {
            tracing::warn!(sweep_id = %report.swept.sweep_id, trigger, errors = ?report.swept.errors, "reconcile sweep failed");
        }
        Ok(report)
    }

    fn failed(&self, report: &mut SweepReport, error: YouTrackError) {
        report.retry_after = error.retry_after();
        report.swept.errors.push(crate::report::chain(&error));
    }

    /// Every activity of the window, page by page, up to the cap; where the read stopped if it
    /// stopped at the cap.
    async fn read_window(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<(Vec<Activity>, Option<DateTime<Utc>>), YouTrackError> {
        let mut query = ActivityQuery { start, end, issue_query: issue_query(&self.triggers), cursor: None };
        let mut activities = Vec::new();
        loop {
            let page = self.youtrack.activities_page(&query).await?;
            activities.extend(page.activities);
            if activities.len() >= self.settings.max_activities {
                activities.truncate(self.settings.max_activities);
                // The next sweep continues here (less the overlap; what is read twice is idempotent).
                let cut_at = activities.last().map(|a| a.at);
                return Ok((activities, cut_at));
            }
            match (page.has_after, page.after_cursor) {
                (true, Some(cursor)) if Some(&cursor) != query.cursor.as_ref() => query.cursor = Some(cursor),
                _ => return Ok((activities, None)),
            }
        }
    }

    async fn decide_all(&self, activities: &[Activity], report: &mut SweepReport) -> Result<(), StoreError> {
        let mut issues: HashMap<String, IssueNow> = HashMap::new();
        for candidate in candidates(activities, &self.triggers, self.bot_login.as_deref()) {
            let activity = candidate.activity;
            let mut entry = TransitionReport {
                issue_id: activity.issue_id.clone(),
                trigger: candidate.trigger.name.clone(),
                at: activity.at,
                author: activity.author.clone(),
                outcome: TransitionOutcome::Error,
                build_id: None,
                error: None,
            };
            if !issues.contains_key(&activity.issue_id) {
                match self.youtrack.issue(&activity.issue_id).await {
                    Ok(issue) => {
                        issues.insert(activity.issue_id.clone(), issue);
                    }
                    Err(e) => {
                        let why = crate::report::chain(&e);
                        report.swept.errors.push(format!("{}: {why}", activity.issue_id));
                        report.retry_after = report.retry_after.or(e.retry_after());
                        entry.error = Some(why);
                        report.transitions.push(entry);
                        continue;
                    }
                }
            }
            let issue = &issues[&activity.issue_id];
            if !candidate.trigger.holds(&issue.values(&candidate.trigger.field)) {
                report.swept.left_since += 1;
                entry.outcome = TransitionOutcome::LeftSince;
                report.transitions.push(entry);
                continue;
            }
            report.swept.transitions_matched += 1;
            let transition = Transition {
                issue_id: &activity.issue_id,
                project: &activity.project,
                summary: issue.summary.as_deref(),
                author: activity.author.as_deref(),
                at: Some(activity.at),
                source: RequestSource::Reconcile,
                correlation_id: report.swept.sweep_id,
                recorded_at: Utc::now(),
            };
            match self.decide_one(&candidate, &transition, report.dry_run).await {
                Ok(decision) => {
                    let build_id = decision.build_id();
                    entry.build_id = Some(build_id);
                    match decision {
                        IntentDecision::AlreadyBuilt { .. } => report.swept.already_built += 1,
                        IntentDecision::Coalesced { .. } => report.swept.builds_folded.push(build_id),
                        IntentDecision::Started { .. } => report.swept.builds_started.push(build_id),
                    }
                    let outcome = decision.outcome();
                    entry.outcome = if report.dry_run { outcome.dry() } else { outcome }.into();
                }
                Err(e) => {
                    let why = crate::report::chain(&e);
                    report.swept.errors.push(format!("{}: {why}", activity.issue_id));
                    entry.error = Some(why);
                }
            }
            report.transitions.push(entry);
        }
        Ok(())
    }

    /// Decides one transition against the intent as the log holds it and appends the decision (a
    /// dry run does not), deciding again after a version conflict.
    async fn decide_one(
        &self,
        candidate: &meshgate_domain::reconcile::Candidate<'_>,
        transition: &Transition<'_>,
        dry_run: bool,
    ) -> Result<IntentDecision, SweepError> {
        let intent = &candidate.intent;
        let load = |_| async move { load_intent(self.store.as_ref(), intent).await };
        let decided = decide_and_append(self.store.as_ref(), Retry::For(RETRY_FOR), load, |view| {
            let decision = decide_intent(
                view,
                candidate.trigger,
                intent,
                transition,
                self.settings.same_transition,
                &mut Uuid::now_v7,
            );
            if dry_run || matches!(decision, IntentDecision::AlreadyBuilt { .. }) {
                return Ok(Decision::nothing(decision));
            }
            let appends = to_store_appends(decision.clone().into_appends(), transition.correlation_id, Utc::now());
            Ok(Decision::append(appends, decision))
        })
        .await?;
        Ok(decided.answer)
    }

    async fn record(&self, report: &SweepReport) -> Result<(), StoreError> {
        let event = Event::ReconcileSwept(report.swept.clone());
        let append = StreamAppend {
            stream: reconcile_stream(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::from_domain(&event, report.swept.sweep_id, None, Utc::now())],
        };
        self.store.append(vec![append]).await.map(|_| ())
    }

    /// The wait before the next scheduled sweep: the interval, doubled for each failure in a row
    /// (at most an hour), and at least what YouTrack asked for.
    fn next_wait(&self, report: Option<&SweepReport>) -> Duration {
        let failures = self.health().consecutive_failures;
        let backoff =
            self.settings.interval.saturating_mul(1 << failures.min(6)).min(MAX_BACKOFF.max(self.settings.interval));
        backoff.max(report.and_then(|r| r.retry_after).unwrap_or_default())
    }
}

#[derive(Debug, thiserror::Error)]
enum SweepError {
    #[error(transparent)]
    Ingest(#[from] crate::ingest::IngestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Sweeps at start, then every interval, until `stopping` turns true.
pub async fn run(reconciler: Arc<Reconciler>, mut stopping: watch::Receiver<bool>) {
    if reconciler.settings.interval.is_zero() {
        return;
    }
    let mut trigger = "start";
    loop {
        let report = match reconciler.sweep(trigger, None, false).await {
            Ok(report) => Some(report),
            Err(e) => {
                tracing::error!(error = %crate::report::chain(&e), "a reconcile sweep could not be recorded");
                None
            }
        };
        trigger = "interval";
        let wait = reconciler.next_wait(report.as_ref());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}
