//! Keeping the lease on the work done once (the lease reaper, the outbound dispatchers,
//! reconciliation sweeps), whichever shared log holds it. Every `poll`, a gateway that does not
//! hold it asks whether it can take it; the holder renews it every `renew` for `ttl`, and steps
//! down by its own clock at 80 % of the lease when it could not, before any other gateway can take
//! it. A gateway that stops lets the lease go, so another takes it over at its next poll rather
//! than when the lease runs out.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

/// A lease kept in a shared log.
#[async_trait]
pub(crate) trait Lease: Send {
    /// Takes or extends the lease: this gateway's term, or `None` if another gateway holds it.
    /// `Err`: the log could not be asked (said at `debug` by the backend).
    async fn take(&mut self) -> Result<Option<i64>, ()>;

    /// Lets the lease go, if this gateway holds it (a stop); the backend says why it could not.
    async fn release(&mut self) {}
}

/// When a lease is asked for and renewed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Times {
    /// How long the lease lasts unrenewed.
    pub ttl: Duration,
    /// How often its holder renews it.
    pub renew: Duration,
    /// How often a gateway that does not hold it asks (at most `renew`).
    pub poll: Duration,
}

/// Keeps `leading` up to date with this gateway's term while it holds the lease, until `stop`
/// (then the lease is let go) or until `leading` has no reader left.
pub(crate) async fn keep(
    mut lease: impl Lease,
    times: Times,
    leading: watch::Sender<Option<i64>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(times.poll.min(times.renew));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The deadline by this gateway's clock: the lease's end, less a margin for clock rates.
    let mut valid_until: Option<Instant> = None;
    let mut renewed_at: Option<Instant> = None;
    // Whether anyone can still say stop (a dropped sender cannot).
    let mut stoppable = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = leading.closed() => return,
            stopped = async { stop.wait_for(|s| *s).await.is_ok() }, if stoppable => {
                if !stopped {
                    stoppable = false;
                    continue;
                }
                if leading.borrow().is_some() {
                    lease.release().await;
                    step_down(&leading, "this gateway is stopping");
                }
                return;
            }
        }
        let holding = leading.borrow().is_some();
        let due = !holding || renewed_at.is_none_or(|at| at.elapsed() >= times.renew);
        if due {
            let started = Instant::now();
            match lease.take().await {
                Ok(Some(term)) => {
                    valid_until = Some(started + times.ttl.mul_f64(0.8));
                    renewed_at = Some(started);
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
