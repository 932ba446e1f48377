//! Outbound notifications: one task per sink follows the `outbox` projection, sends what is due,
//! and appends every attempt as an event, so the outbox survives restarts and can be audited.
//!
//! A slow or dead sink only delays itself. Retries use full jitter, honour `Retry-After` (as
//! `max(hint, backoff)`, clamped), and stop after the sink's `max_attempts`; answers other than
//! 408, 425, 429 and 5xx are final. A try that got no answer is retried (ADR 0005): Matrix and
//! PagerDuty dedupe it on their side; the webhooks and YouTrack do not, so a lost answer can show
//! a line twice there, which beats losing a failure notice.

pub mod sinks;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use meshgate_domain::event::{NotificationAbandoned, NotificationAttempted, NotificationDelivered};
use meshgate_domain::notify::{notification_key, BuildFacts};
use meshgate_domain::retry::{classify, RetryPolicy, Verdict};
use meshgate_domain::{Event, ExpectedVersion};
use meshgate_projections::MilestoneRecord;
use tokio::sync::watch;
use uuid::Uuid;

use crate::http::AppState;
use crate::store::{NewEvent, StreamAppend};
pub use sinks::{Sink, Target};

/// Delivery rules shared by every sink.
#[derive(Debug, Clone)]
pub struct Rules {
    pub window: chrono::Duration,
    pub retry: RetryPolicy,
    /// The chat sinks' names and the tracker's, for the paging rule.
    pub chat_sinks: Arc<Vec<String>>,
    pub tracker: Option<String>,
    /// Whether a pager is configured.
    pub pager: bool,
}

/// Runs one sink until the gateway stops.
pub async fn run(
    app: Arc<AppState>,
    sink: Sink,
    rules: Rules,
    http: reqwest::Client,
    mut stopping: watch::Receiver<bool>,
) {
    let mut changes = app.projections.changes();
    loop {
        if *stopping.borrow() {
            return;
        }
        let now = Utc::now();
        let due = app.projections.read(|p| p.outbox.state.due(&sink.name, now, rules.window, |m| sink.wants(m)));
        if let Some(next) = due.first() {
            attempt(&app, &sink, &rules, &http, *next).await;
            continue;
        }
        let retry_in = app
            .projections
            .read(|p| p.outbox.state.next_retry(&sink.name))
            .map(|at| (at - now).to_std().unwrap_or_default())
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(retry_in) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

fn facts(app: &AppState, build_id: Uuid) -> Option<BuildFacts> {
    app.projections.read(|p| {
        let build = p.builds.state.get(build_id)?;
        let report = build.report.as_ref();
        let node_id = match &build.state {
            meshgate_domain::BuildState::Running { node_id, .. } => Some(node_id.clone()),
            _ => report.map(|r| r.node_id.clone()),
        };
        let reason = match &build.state {
            meshgate_domain::BuildState::Failed { reason, .. } | meshgate_domain::BuildState::Cancelled { reason } => {
                Some(reason.clone())
            }
            _ => None,
        };
        Some(BuildFacts {
            build_id,
            issue_id: build.issue_id.clone(),
            summary: build.summary.clone(),
            lane: build.lane.clone(),
            script: build.script.clone(),
            node_id,
            commit_sha: report.and_then(|r| r.commit_sha.clone()),
            duration_ms: report.map(|r| r.duration_ms),
            failing_test: report.and_then(|r| r.failing_test.clone()),
            reason,
            log_tail: report.map(|r| r.log_tail.clone()),
            log_url: report
                .map(|_| format!("{}{}", app.public_url, crate::http::nodes::log_link(&app.log_secret, build_id))),
        })
    })
}

/// One try for one milestone, recorded.
async fn attempt(app: &AppState, sink: &Sink, rules: &Rules, http: &reqwest::Client, due: MilestoneRecord) {
    let key = notification_key(&sink.name, due.build_id, due.milestone);
    let attempts_so_far = app.projections.read(|p| p.outbox.state.key(&key).map_or(0, |k| k.attempts));
    let attempt = attempts_so_far + 1;
    let message_ref = app.projections.read(|p| p.outbox.state.message_ref(&sink.name, due.build_id).map(str::to_owned));
    let answer = match facts(app, due.build_id) {
        Some(facts) => sink.send(http, &facts, due.milestone, message_ref.as_deref()).await,
        None => sinks::Answer {
            status: None,
            excerpt: "build not in the projection".into(),
            retry_after: None,
            message_ref: None,
        },
    };
    let now = Utc::now();
    let retryable = answer.status.is_none_or(|s| classify(s) == Verdict::Retry);
    let policy = RetryPolicy { max_attempts: sink.max_attempts, ..rules.retry };
    let next_wait = if answer.succeeded() || !retryable {
        None
    } else {
        policy.next_wait(attempt - 1, answer.retry_after, random())
    };
    let next_attempt_at = next_wait.map(|w| now + chrono::Duration::from_std(w).unwrap_or_default());
    let common = (key.clone(), sink.name.clone(), due.build_id, due.milestone);
    let mut events = vec![Event::NotificationAttempted(NotificationAttempted {
        key: common.0.clone(),
        sink: common.1.clone(),
        build_id: common.2,
        milestone: common.3,
        attempt,
        status: answer.status,
        excerpt: answer.excerpt.clone(),
        next_attempt_at,
    })];
    if answer.succeeded() {
        events.push(Event::NotificationDelivered(NotificationDelivered {
            key: common.0,
            sink: common.1,
            build_id: common.2,
            milestone: common.3,
            attempts: attempt,
            message_ref: answer.message_ref.clone(),
        }));
    } else if next_attempt_at.is_none() {
        let reason = match answer.status {
            Some(status) if !retryable => format!("refused with {status}"),
            _ => format!("gave up after {attempt} attempts"),
        };
        tracing::warn!(sink = %sink.name, %key, %reason, "notification abandoned");
        events.push(Event::NotificationAbandoned(NotificationAbandoned {
            key: common.0,
            sink: common.1,
            build_id: common.2,
            milestone: common.3,
            attempts: attempt,
            reason,
        }));
    }
    let append = StreamAppend {
        stream: format!("notification-{key}"),
        expected: ExpectedVersion::Any,
        events: events.iter().map(|e| NewEvent::from_domain(e, Uuid::now_v7(), None, now)).collect(),
    };
    let abandoned = events.iter().any(|e| matches!(e, Event::NotificationAbandoned(_)));
    match app.store.append(vec![append]).await {
        Ok(appended) => {
            // The next look at the outbox must see this attempt.
            app.projections.caught_up_to(appended.last_position, Duration::from_secs(5)).await;
            if abandoned && rules.pager {
                page_if_due(app, rules, due.build_id).await;
            }
        }
        Err(e) => {
            tracing::error!(sink = %sink.name, error = %e, "cannot record a notification attempt");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Pages on-call once per build when neither chat nor the tracker could be told.
async fn page_if_due(app: &AppState, rules: &Rules, build_id: Uuid) {
    let reason =
        app.projections.read(|p| p.outbox.state.page_reason(build_id, &rules.chat_sinks, rules.tracker.as_deref()));
    let Some(reason) = reason else { return };
    let issue_id =
        app.projections.read(|p| p.builds.state.get(build_id).map(|b| b.issue_id.clone())).unwrap_or_default();
    let event =
        Event::PageRequested(meshgate_domain::event::PageRequested { build_id, issue_id, reason: reason.into() });
    let append = StreamAppend {
        stream: format!("page-{build_id}"),
        // One page per build, whichever sink gives up last.
        expected: ExpectedVersion::NoStream,
        events: vec![NewEvent::from_domain(&event, Uuid::now_v7(), None, Utc::now())],
    };
    match app.store.append(vec![append]).await {
        Ok(_) => tracing::error!(%build_id, reason, "paging on-call: the build could not be reported"),
        Err(crate::store::StoreError::Conflict { .. }) => {}
        Err(e) => tracing::error!(%build_id, error = %e, "cannot record a page"),
    }
}

fn random() -> f64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes) as f64 / u64::MAX as f64
}
