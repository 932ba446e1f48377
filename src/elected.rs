//! The work that must happen once per team of gateways: the lease reaper, one dispatcher per
//! outbound sink, reconciliation sweeps, the lanes watched for builds nobody can run and the Matrix
//! rooms followed for reactions. They run on the gateway that holds the lease
//! ([`EventStore::leadership`]; with the SQLite log, the only gateway, always), and stop when the
//! term ends or the gateway stops. The reaper and the dispatchers append through a store fenced
//! with the term.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::builds::BuildService;
use crate::outbound::{self, Outbound, Rules, Sink};
use crate::projector::Projections;
use crate::reaper::{self, Reaper};
use crate::store::{EventStore, Fenced};

/// What the elected work is made of, kept to be started again in each term.
pub struct Jobs {
    pub store: Arc<dyn EventStore>,
    pub projections: Projections,
    pub links: crate::links::LogLinks,
    pub rules: Rules,
    pub http: reqwest::Client,
    pub sinks: Vec<Arc<Sink>>,
    /// The gateway's reconciler (the API's too: one sweep at a time, one health to report).
    pub reconciler: Option<Arc<crate::reconcile::Reconciler>>,
    /// `[nodes] max_attempts`: the reaper fails a build whose lease ran out that often.
    pub max_attempts: u32,
    /// Each lane's `max_queue_seconds`, for the reaper.
    pub max_queue: Vec<(String, chrono::Duration)>,
    /// The lanes watched for builds no live node can run.
    pub lane_watch: Arc<crate::lane_watch::LaneWatch>,
    /// The Matrix rooms whose reactions act on builds.
    pub followers: Vec<Arc<crate::reactions::Follower>>,
}

impl Jobs {
    fn start(&self, term: i64, stop: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let store = Fenced::wrap(Arc::clone(&self.store), term);
        let reaper = Reaper {
            projections: self.projections.clone(),
            builds: BuildService::new(Arc::clone(&store)),
            max_attempts: self.max_attempts,
            max_queue: self.max_queue.clone(),
        };
        let mut jobs = vec![tokio::spawn(reaper::run(reaper, stop.clone()))];
        let shared = Arc::new(Outbound {
            store: Arc::clone(&store),
            projections: self.projections.clone(),
            links: self.links.clone(),
            rules: self.rules.clone(),
            http: self.http.clone(),
        });
        for sink in &self.sinks {
            jobs.push(tokio::spawn(outbound::run(Arc::clone(&shared), Arc::clone(sink), stop.clone())));
        }
        // Sweeps decide like webhooks, at exact versions (ADR 0008): they need no fence, only one
        // gateway sweeping on schedule.
        if let Some(reconciler) = &self.reconciler {
            jobs.push(tokio::spawn(crate::reconcile::run(Arc::clone(reconciler), stop.clone())));
        }
        self.lane_watch.reset();
        jobs.push(tokio::spawn(crate::lane_watch::run(Arc::clone(&self.lane_watch), Arc::clone(&store), stop.clone())));
        for follower in &self.followers {
            let follow =
                crate::reactions::run(Arc::clone(follower), Arc::clone(&store), self.projections.clone(), stop.clone());
            jobs.push(tokio::spawn(follow));
        }
        jobs
    }
}

/// Runs the jobs in every term this gateway holds, until `stopping` turns true.
pub async fn run(jobs: Jobs, mut leadership: watch::Receiver<Option<i64>>, mut stopping: watch::Receiver<bool>) {
    // Whether the lease can still change (a single appender's never does).
    let mut changing = true;
    loop {
        let term = loop {
            if *stopping.borrow() {
                return;
            }
            if let Some(term) = *leadership.borrow_and_update() {
                break term;
            }
            if !changing {
                let _ = stopping.wait_for(|s| *s).await;
                return;
            }
            tokio::select! {
                changed = leadership.changed() => changing = changed.is_ok(),
                _ = stopping.wait_for(|s| *s) => return,
            }
        };
        let (stop, stopped) = watch::channel(false);
        let running = jobs.start(term, &stopped);
        loop {
            tokio::select! {
                changed = leadership.changed(), if changing => {
                    changing = changed.is_ok();
                    if *leadership.borrow_and_update() != Some(term) {
                        break;
                    }
                }
                _ = stopping.wait_for(|s| *s) => break,
            }
        }
        stop.send_replace(true);
        for job in running {
            let _ = job.await;
        }
    }
}
