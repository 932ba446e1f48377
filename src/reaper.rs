//! The lease reaper: a build whose node stopped heartbeating is requeued (attempt + 1), or failed
//! with `node_lost` after the last attempt; and a build queued past its lane's
//! `max_queue_seconds` without ever being claimed is cancelled with reason `expired`.
//!
//! Leases come from the log (the `builds` projection), so the reaper works after a restart; each
//! expiry is appended at the build's exact version, so two gateways sharing a store cannot both
//! requeue one build, and a heartbeat that lands first wins.

use std::time::Duration;

use chrono::{DateTime, Utc};
use meshgate_domain::BuildCommand;
use tokio::sync::watch;
use uuid::Uuid;

use crate::builds::{BuildService, CommandError};
use crate::projector::Projections;
use crate::store::StoreError;

const EVERY: Duration = Duration::from_millis(250);

/// What the reaper reads and writes.
pub struct Reaper {
    pub projections: Projections,
    pub builds: BuildService,
    /// Claims of one build before a lost node fails it (`[nodes] max_attempts`).
    pub max_attempts: u32,
    /// Each lane's `max_queue_seconds`.
    pub max_queue: Vec<(String, chrono::Duration)>,
}

/// Reaps every expired lease until `stopping` turns true.
pub async fn run(reaper: Reaper, mut stopping: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        reap_once(&reaper, Utc::now()).await;
    }
}

/// Expires the leases that ran out at `now`; returns how many builds were requeued or failed.
pub async fn reap_once(reaper: &Reaper, now: DateTime<Utc>) -> usize {
    let expired = reaper.projections.read(|p| p.builds.expired_leases(now));
    let mut reaped = 0;
    for build_id in expired {
        let command = BuildCommand::Expire { max_attempts: reaper.max_attempts };
        match reaper.builds.execute_at(build_id, Uuid::now_v7(), &command, now).await {
            Ok(executed) => {
                reaped += 1;
                tracing::warn!(%build_id, state = executed.state.name(), "lease expired: node lost");
            }
            // Renewed, finished or already reaped meanwhile.
            Err(CommandError::Refused { .. } | CommandError::Store(StoreError::Contention { .. })) => {}
            Err(e) => tracing::error!(%build_id, error = %e, "cannot expire a lease"),
        }
    }
    reaped + expire_queued(reaper, now).await
}

/// Cancels the builds queued past their lane's limit, oldest first; a requeued build (its node
/// was lost) is not one that waited for a first node, and is left to run.
async fn expire_queued(reaper: &Reaper, now: DateTime<Utc>) -> usize {
    let stale: Vec<Uuid> = reaper.projections.read(|p| {
        let mut stale = Vec::new();
        for (lane, limit) in &reaper.max_queue {
            for entry in p.queue.queued_in(lane) {
                let Some(build) = p.builds.get(entry.build_id) else { continue };
                if build.requested_at + *limit > now {
                    break;
                }
                if entry.attempt == 1 {
                    stale.push(entry.build_id);
                }
            }
        }
        stale
    });
    let mut expired = 0;
    for build_id in stale {
        let command = BuildCommand::Cancel { reason: "expired".into() };
        match reaper.builds.execute_at(build_id, Uuid::now_v7(), &command, now).await {
            Ok(_) => {
                expired += 1;
                tracing::warn!(%build_id, "queued past its lane's max_queue_seconds: cancelled");
            }
            Err(CommandError::Refused { .. } | CommandError::Store(StoreError::Contention { .. })) => {}
            Err(e) => tracing::error!(%build_id, error = %e, "cannot cancel an expired build"),
        }
    }
    expired
}
