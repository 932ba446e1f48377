//! Keeping the lease on the work done once (the lease reaper, the outbound dispatchers,
//! reconciliation sweeps), whichever shared log holds it: every `renew`, take or extend it for
//! `ttl`; a holder that cannot renew in time steps down by its own clock at 80 % of the lease,
//! before any other gateway can take it.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

/// A lease kept in a shared log.
#[async_trait]
pub(crate) trait Lease: Send {
    /// Takes or extends the lease: this gateway's term, or `None` if another gateway holds it.
    /// `Err`: the log could not be asked (said at `debug` by the backend).
    async fn take(&mut self) -> Result<Option<i64>, ()>;
}

/// Keeps `leading` up to date with this gateway's term while it holds the lease.
pub(crate) async fn keep(mut lease: impl Lease, ttl: Duration, renew: Duration, leading: watch::Sender<Option<i64>>) {
    let mut tick = tokio::time::interval(renew);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The deadline by this gateway's clock: the lease's end, less a margin for clock rates.
    let mut valid_until: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = leading.closed() => return,
        }
        let started = Instant::now();
        match lease.take().await {
            Ok(Some(term)) => {
                valid_until = Some(started + ttl.mul_f64(0.8));
                if *leading.borrow() != Some(term) {
                    tracing::info!(term, "this gateway now runs the reaper, the outbound dispatchers and sweeps");
                    leading.send_replace(Some(term));
                }
            }
            Ok(None) => {
                valid_until = None;
                step_down(&leading, "another gateway holds the lease");
            }
            Err(()) => {}
        }
        if valid_until.is_some_and(|until| Instant::now() >= until) {
            valid_until = None;
            step_down(&leading, "the lease could not be renewed in time");
        }
    }
}

fn step_down(leading: &watch::Sender<Option<i64>>, why: &str) {
    if let Some(term) = leading.send_replace(None) {
        tracing::warn!(term, reason = why, "this gateway no longer runs the work done once");
    }
}
