//! The lanes watched for builds nobody can run: a lane whose queued builds no live node could
//! claim (none has its labels and their Xcode) for its `unservable_alert_seconds` is recorded
//! `LaneUnservable` (about its oldest queued build), which pages on-call and tells the alert
//! channel, once; when it can be served again (such a node is back, or nothing waits),
//! `LaneServable` resolves the page. Runs on the gateway that holds the lease; each lane's watch
//! is a stream appended at its exact version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use meshgate_domain::event::{LaneServable, LaneUnservable};
use meshgate_domain::stream::lane_watch_stream;
use meshgate_domain::{Event, ExpectedVersion};
use meshgate_projections::{LaneRule, NodeView};
use tokio::sync::watch;
use uuid::Uuid;

use crate::polls::Polls;
use crate::projector::Projections;
use crate::store::{EventStore, NewEvent, StoreError, StreamAppend};

const EVERY: Duration = Duration::from_secs(1);

/// A lane's watch stream as this term knows it: the build its open page is about (none: no page
/// open), and the stream's version (none: no stream yet).
type Watched = (Option<Uuid>, Option<u64>);

/// What the watch reads, since when each lane could not be served (in memory: a restart starts
/// counting again), and each lane's watch stream as last read or written in this term.
pub struct LaneWatch {
    pub projections: Projections,
    pub polls: Arc<Polls>,
    /// Every lane, with how long it may go unserved before on-call is paged.
    pub lanes: Vec<(LaneRule, chrono::Duration)>,
    since: Mutex<HashMap<String, DateTime<Utc>>>,
    streams: Mutex<HashMap<String, Watched>>,
}

impl LaneWatch {
    pub fn new(projections: Projections, polls: Arc<Polls>, lanes: Vec<(LaneRule, chrono::Duration)>) -> Self {
        LaneWatch { projections, polls, lanes, since: Mutex::default(), streams: Mutex::default() }
    }

    /// Forgets the streams read: a new term reads them again (another gateway may have written).
    pub fn reset(&self) {
        self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    /// The lane's open page and its stream's version: as this term last saw them, else read.
    async fn stream_of(&self, store: &dyn EventStore, lane: &str) -> Result<Watched, StoreError> {
        if let Some(known) = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(lane) {
            return Ok(*known);
        }
        let last = store.read_last(&lane_watch_stream(lane)).await?;
        let decoded =
            last.as_ref().map(|l| l.decode()).transpose().map_err(|e| StoreError::caused("a lane's watch", e))?;
        let paged = match decoded.map(|r| r.event) {
            Some(Event::LaneUnservable(e)) => Some(e.build_id),
            _ => None,
        };
        let known = (paged, last.map(|l| l.version));
        self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(lane.to_owned(), known);
        Ok(known)
    }

    /// Looks at every lane at `now`; returns how many lanes' watch changed.
    pub async fn watch_once(&self, store: &dyn EventStore, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut changed = 0;
        for (rule, alert_after) in &self.lanes {
            let (unservable, oldest) = self.projections.read(|p| {
                let live = |n: &NodeView| !n.running.is_empty() || self.polls.alive(&n.node_id);
                let unservable = meshgate_projections::unservable(rule, &p.queue, p.nodes.all(), live);
                (unservable, p.queue.oldest_in(&rule.name).map(|e| e.build_id))
            });
            let since = {
                let mut since = self.since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if unservable {
                    Some(*since.entry(rule.name.clone()).or_insert(now))
                } else {
                    since.remove(&rule.name);
                    None
                }
            };
            let (paged, version) = self.stream_of(store, &rule.name).await?;
            let event = match (since, paged, oldest) {
                (Some(since), None, Some(build_id)) if now - since >= *alert_after => {
                    tracing::error!(lane = %rule.name, "no live node can run the lane's queued builds: paging on-call");
                    Event::LaneUnservable(LaneUnservable { lane: rule.name.clone(), build_id })
                }
                (None, Some(build_id), _) => {
                    tracing::info!(lane = %rule.name, "the lane can be served again");
                    Event::LaneServable(LaneServable { lane: rule.name.clone(), build_id })
                }
                _ => continue,
            };
            let now_paged = match &event {
                Event::LaneUnservable(e) => Some(e.build_id),
                _ => None,
            };
            let append = StreamAppend {
                stream: lane_watch_stream(&rule.name),
                expected: ExpectedVersion::from_current(version),
                events: vec![NewEvent::from_domain(&event, Uuid::now_v7(), None, now)],
            };
            let streams = |known| {
                let mut streams = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match known {
                    Some(known) => streams.insert(rule.name.clone(), known),
                    None => streams.remove(&rule.name),
                };
            };
            match store.append(vec![append]).await {
                Ok(_) => {
                    changed += 1;
                    streams(Some((now_paged, Some(version.map_or(0, |v| v + 1)))));
                }
                // Another writer recorded it first: the next look reads the stream again.
                Err(StoreError::Conflict { .. }) => streams(None),
                Err(e) => {
                    streams(None);
                    return Err(e);
                }
            }
        }
        Ok(changed)
    }
}

/// Watches the lanes until `stopping` turns true; `store` is fenced with this gateway's term.
pub async fn run(watch: Arc<LaneWatch>, store: Arc<dyn EventStore>, mut stopping: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        if let Err(e) = watch.watch_once(store.as_ref(), Utc::now()).await {
            tracing::warn!(error = %crate::report::chain(&e), "cannot watch the lanes");
        }
    }
}
