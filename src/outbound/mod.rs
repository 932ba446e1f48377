//! Outbound notifications: one task per sink follows the `outbox` projection, sends what is due,
//! and appends every attempt as an event, so the outbox survives restarts and can be audited.
//!
//! The lifecycle of each notification (pending → attempting → delivered | abandoned, the retry
//! policy as data) is decided in `meshgate_domain::notification`; this module only sends and
//! records. Each try is appended to the key's stream at its exact version, after reading it, so
//! two writers cannot both record attempt 3. A slow or dead sink only delays itself. A try that
//! got no answer is retried (ADR 0005): Matrix, PagerDuty and OpenClaw (within five minutes)
//! dedupe it on their side; the webhooks and YouTrack do not, so a lost answer can show a line
//! twice there, which beats losing a failure notice.
//!
//! One file per protocol: `console` (standard output), `generic`, `slack`, `teams`, `discord`,
//! `matrix`, `openclaw`, `youtrack`, `pagerduty`; `exchange` makes one HTTP try and reads its answer.

mod configured;
pub mod console;
pub mod discord;
pub mod exchange;
pub mod generic;
pub mod matrix;
pub mod openclaw;
pub mod pagerduty;
pub mod probe;
pub mod resend;
mod sink;
pub mod slack;
pub mod teams;
pub mod youtrack;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use meshgate_domain::notification::{self, NotificationError, NotificationId};
use meshgate_domain::notify::{ArtifactLink, BuildFacts, Milestone};
use meshgate_domain::retry::RetryPolicy;
use meshgate_domain::stream::{notification_stream, page_stream};
use meshgate_domain::{BuildState, Event, ExpectedVersion};
use meshgate_projections::MilestoneRecord;
use tokio::sync::watch;
use uuid::Uuid;

use crate::links::LogLinks;
use crate::projector::Projections;
use crate::store::{decide_and_append, Decision, EventStore, NewEvent, Retry, StoreError, StreamAppend, RETRY_FOR};
pub use configured::{client, outbox_config, pagers, rules, sinks, specs, SinkError};
pub use exchange::Answer;
pub use sink::{Sink, Target};

/// One notification to send.
pub struct Message<'a> {
    pub facts: &'a BuildFacts,
    pub milestone: Milestone,
    /// When the milestone was recorded.
    pub at: DateTime<Utc>,
    /// The build's message on this sink, if it keeps one (later states edit it).
    pub message_ref: Option<&'a str>,
    /// The notification key (`sink/build/milestone`), for targets that take an idempotency key.
    pub key: &'a str,
}

/// Delivery rules shared by every sink.
#[derive(Debug, Clone)]
pub struct Rules {
    pub window: chrono::Duration,
    pub retry: RetryPolicy,
    /// The chat sinks' names and the tracker's, for the paging rule.
    pub chat_sinks: Arc<Vec<String>>,
    pub trackers: Vec<String>,
    /// Whether a pager is configured.
    pub pager: bool,
}

/// What every sink task uses: the log, the projections, log links, the rules and one HTTP client
/// (HTTPS with the configured trust), built once.
pub struct Outbound {
    pub store: Arc<dyn EventStore>,
    pub projections: Projections,
    pub links: LogLinks,
    pub rules: Rules,
    pub http: reqwest::Client,
}

/// Runs one sink until `stopping` turns true.
pub async fn run(outbound: Arc<Outbound>, sink: Arc<Sink>, mut stopping: watch::Receiver<bool>) {
    let projections = &outbound.projections;
    let mut changes = projections.changes();
    loop {
        if *stopping.borrow() {
            return;
        }
        let now = Utc::now();
        let due = projections.read(|p| p.outbox.due(&sink.name, now));
        if let Some(next) = due.first() {
            attempt(&outbound, &sink, *next).await;
            continue;
        }
        let retry_in = projections
            .read(|p| p.outbox.next_retry(&sink.name))
            .map(|at| (at - now).to_std().unwrap_or_default())
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(retry_in) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

/// What a message says about a build, from the projections (and, for a page, its reason); for a
/// pause or a resume, what the operator did.
async fn facts(outbound: &Outbound, build_id: Uuid, milestone: Milestone) -> Option<BuildFacts> {
    if let Milestone::Paused | Milestone::Resumed = milestone {
        return pause_facts(outbound, build_id).await;
    }
    let build = match outbound.projections.build(build_id).await {
        Ok(build) => build?,
        Err(e) => {
            tracing::warn!(%build_id, error = %crate::report::chain(&e), "cannot read a build for its notification");
            return None;
        }
    };
    let report = build.report.as_ref();
    let node_id = match &build.state {
        BuildState::Running { node_id, .. } => Some(node_id.clone()),
        _ => report.map(|r| r.node_id.clone()),
    };
    let mut reason = match &build.state {
        BuildState::Failed { reason, .. } | BuildState::Cancelled { reason } => Some(reason.clone()),
        _ => None,
    };
    let mut node_id = node_id;
    let mut retry_rule = report.and_then(|r| r.retry_rule.clone());
    if let Milestone::Retrying(next) = milestone {
        // What the retry said, whatever the build is doing now.
        if let Some(retry) = build.retries.iter().find(|r| r.attempt + 1 == next) {
            retry_rule = Some(retry.rule.clone());
            reason = Some(retry.reason.clone());
            node_id.clone_from(&retry.node_id);
        }
    }
    let artifacts = match milestone {
        Milestone::Succeeded | Milestone::Failed => build
            .final_artifacts()
            .map(|a| ArtifactLink {
                name: a.name.clone(),
                url: outbound.links.artifact_url(build_id, a.attempt, &a.name),
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut facts = BuildFacts {
        build_id,
        name: (build.number > 0).then(|| build.name()),
        trigger: build.trigger.clone(),
        number: build.number,
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
        log_url: report.map(|_| outbound.links.url(build_id)),
        state: Some(build.state.name().to_owned()),
        page_reason: None,
        retry_rule,
        no_output_seconds: report.and_then(|r| r.no_output_seconds),
        artifacts,
        rebuild_of: None,
        rebuilt_as: None,
        by: None,
    };
    // Rebuilds are named in both timelines.
    let name_of = |id: Uuid| async move {
        outbound.projections.build(id).await.ok().flatten().filter(|b| b.number > 0).map(|b| b.name())
    };
    if let Some(original) = build.rebuild_of {
        facts.rebuild_of = name_of(original).await;
    }
    if let (Milestone::Rebuilt, Some(rebuild)) = (milestone, build.rebuilds.last()) {
        let name = name_of(rebuild.build_id).await.unwrap_or_else(|| rebuild.build_id.to_string());
        facts.rebuilt_as = Some((name, format!("{} ({})", rebuild.by, rebuild.via)));
    }
    if milestone == Milestone::Page {
        let page = outbound.store.read_stream(&page_stream(build_id)).await.ok()?;
        facts.page_reason = page.iter().find_map(|e| match e.decode().ok()?.event {
            Event::PageRequested(p) => Some(p.reason),
            _ => None,
        });
    }
    Some(facts)
}

/// The pause or resume told as `notice`, from the pauses' stream.
async fn pause_facts(outbound: &Outbound, notice: Uuid) -> Option<BuildFacts> {
    let held = |lanes: &[String]| match lanes {
        [] => "every lane".to_owned(),
        [lane] => format!("lane {lane}"),
        lanes => format!("lanes {}", lanes.join(", ")),
    };
    let stream = outbound.store.read_stream(&meshgate_domain::stream::pause_stream()).await.ok()?;
    stream.iter().rev().find_map(|stored| match stored.decode().ok()?.event {
        Event::QueuePaused(e) if e.notice == Some(notice) => Some(BuildFacts {
            build_id: notice,
            lane: held(&e.lanes),
            reason: Some(e.reason),
            by: Some(e.by),
            ..BuildFacts::default()
        }),
        Event::QueueResumed(e) if e.notice == Some(notice) => Some(BuildFacts {
            build_id: notice,
            lane: if e.lanes.is_empty() { "every paused lane".to_owned() } else { held(&e.lanes) },
            by: Some(e.by),
            ..BuildFacts::default()
        }),
        _ => None,
    })
}

/// One try for one milestone, recorded.
async fn attempt(outbound: &Outbound, sink: &Sink, due: MilestoneRecord) {
    let id = NotificationId { sink: sink.name.clone(), build_id: due.build_id, milestone: due.milestone };
    let key = id.key();
    let message_ref = outbound.projections.read(|p| p.outbox.message_ref(&sink.name, due.build_id).map(str::to_owned));
    let answer = match facts(outbound, due.build_id, due.milestone).await {
        Some(facts) => {
            let message = Message {
                facts: &facts,
                milestone: due.milestone,
                at: due.at,
                message_ref: message_ref.as_deref(),
                key: &key,
            };
            sink.send(&outbound.http, &message).await
        }
        None => Answer::unsent("the build is not in the projections"),
    };
    let outcome = answer.into_outcome();
    if !outcome.succeeded() {
        tracing::warn!(sink = %sink.name, %key, status = outcome.status, error = %outcome.detail, "notification attempt failed");
    }
    let policy = RetryPolicy { max_attempts: sink.max_attempts, ..outbound.rules.retry };
    match record(outbound, &id, &outcome, &policy).await {
        Ok(Some((position, ended))) => {
            let counted = match ended {
                Some(Ended::Delivered) => "delivered",
                Some(Ended::Abandoned) => "abandoned",
                None => "retry",
            };
            metrics::counter!(crate::metrics::ATTEMPTS, "sink" => sink.name.clone(), "outcome" => counted).increment(1);
            // The next look at the outbox must see this attempt.
            outbound.projections.caught_up_to(position, Duration::from_secs(5)).await;
            match ended {
                Some(Ended::Delivered) => tracing::info!(sink = %sink.name, %key, "notification delivered"),
                Some(Ended::Abandoned) => {
                    tracing::warn!(sink = %sink.name, %key, "notification abandoned");
                    // A pause's notice is no build's: nothing to page about.
                    if outbound.rules.pager && !matches!(due.milestone, Milestone::Paused | Milestone::Resumed) {
                        page_if_due(outbound, due.build_id).await;
                    }
                }
                None => {}
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(sink = %sink.name, %key, error = %crate::report::chain(&e), "cannot record a notification attempt");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// How a recorded try ended the notification, if it did.
enum Ended {
    Delivered,
    Abandoned,
}

/// Appends what the lifecycle decides for one try at the key stream's exact version, deciding
/// again if another writer appended first. Returns the last position and how the key ended, if it
/// did; `None` if another writer had finished the key meanwhile.
async fn record(
    outbound: &Outbound,
    id: &NotificationId,
    outcome: &notification::TryOutcome,
    policy: &RetryPolicy,
) -> Result<Option<(u64, Option<Ended>)>, StoreError> {
    let stream = &notification_stream(&id.key());
    let random = random();
    let load = |_| async move { outbound.store.read_stream(stream).await };
    let decided = decide_and_append(outbound.store.as_ref(), Retry::For(RETRY_FOR), load, |stored| {
        let recorded: Vec<Event> = stored.iter().filter_map(|e| e.decode().ok().map(|r| r.event)).collect();
        let now = Utc::now();
        let events = match notification::decide(&notification::replay(&recorded), id, outcome, policy, now, random) {
            Ok(events) => events,
            Err(e @ (NotificationError::AlreadyDelivered { .. } | NotificationError::AlreadyAbandoned { .. })) => {
                tracing::info!(reason = %e, "a try is not recorded: the notification was finished meanwhile");
                return Ok(Decision::nothing(None));
            }
        };
        let ended = events.iter().find_map(|e| match e {
            Event::NotificationDelivered(_) => Some(Ended::Delivered),
            Event::NotificationAbandoned(_) => Some(Ended::Abandoned),
            _ => None,
        });
        let append = StreamAppend {
            stream: stream.clone(),
            expected: ExpectedVersion::from_current(stored.last().map(|s| s.version)),
            events: events.iter().map(|e| NewEvent::from_domain(e, Uuid::now_v7(), None, now)).collect(),
        };
        Ok(Decision::append(vec![append], Some(ended)))
    })
    .await?;
    Ok(decided.answer.zip(decided.last_position).map(|(ended, position)| (position, ended)))
}

/// Pages on-call once per build when neither chat nor the tracker could be told.
async fn page_if_due(outbound: &Outbound, build_id: Uuid) {
    let rules = &outbound.rules;
    let projections = &outbound.projections;
    let reason = projections.read(|p| p.outbox.page_reason(build_id, &rules.chat_sinks, &rules.trackers));
    let Some(reason) = reason else { return };
    let issue_id = match projections.build(build_id).await {
        Ok(build) => build.map(|b| b.issue_id).unwrap_or_default(),
        Err(_) => String::new(),
    };
    let event =
        Event::PageRequested(meshgate_domain::event::PageRequested { build_id, issue_id, reason: reason.into() });
    let append = StreamAppend {
        stream: page_stream(build_id),
        // One page per build, whichever sink gives up last.
        expected: ExpectedVersion::NoStream,
        events: vec![NewEvent::from_domain(&event, Uuid::now_v7(), None, Utc::now())],
    };
    match outbound.store.append(vec![append]).await {
        Ok(_) => {
            metrics::counter!(crate::metrics::PAGES).increment(1);
            tracing::error!(%build_id, reason, "paging on-call: the build could not be reported")
        }
        Err(StoreError::Conflict { .. }) => {}
        Err(e) => tracing::error!(%build_id, error = %crate::report::chain(&e), "cannot record a page"),
    }
}

fn random() -> f64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes) as f64 / u64::MAX as f64
}
