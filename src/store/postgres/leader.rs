//! Which gateway runs the work that must happen once (the lease reaper, the outbound
//! dispatchers, reconciliation sweeps): the holder of a lease row in the database.
//!
//! Each gateway tries every `renew` to take or extend `meshgate_leader` for `ttl`. A lease taken
//! from nobody or from an expired holder starts a new term. The row is changed under the log's
//! head lock, the lock every append takes first, so appends and changes of term are serialized:
//! an append fenced with a term (`EventStore::append_fenced`) is refused once another term has
//! begun. A leader that cannot renew in time gives up by its own clock before the lease expires,
//! so its jobs stop before another gateway's start; if it was paused instead, its appends are
//! refused by the fence.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use uuid::Uuid;

use super::connect;

/// Takes or extends the lease; returns the term, or nothing if another gateway holds it.
const TAKE: &str = "
    UPDATE meshgate_leader SET
        term = CASE WHEN holder = $1 AND expires_at > now() THEN term ELSE term + 1 END,
        holder = $1,
        expires_at = now() + make_interval(secs => $2)
    WHERE id = 1 AND (holder = $1 OR expires_at <= now())
    RETURNING term";

/// Keeps `leading` up to date with this gateway's term while it holds the lease.
pub async fn run(url: String, holder: Uuid, ttl: Duration, renew: Duration, leading: watch::Sender<Option<i64>>) {
    let mut tick = tokio::time::interval(renew);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client = None;
    // The deadline by this gateway's clock: the lease's end, less a margin for clock rates.
    let mut valid_until: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = leading.closed() => return,
        }
        let started = Instant::now();
        if client.as_ref().is_none_or(|c: &tokio_postgres::Client| c.is_closed()) {
            client = connect(&url).await.ok();
        }
        let term = match &client {
            Some(client) => take(client, holder, ttl).await,
            None => Err(()),
        };
        match term {
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
            Err(()) => {
                if valid_until.is_some_and(|until| Instant::now() >= until) {
                    valid_until = None;
                    step_down(&leading, "the lease could not be renewed in time");
                }
            }
        }
    }
}

fn step_down(leading: &watch::Sender<Option<i64>>, why: &str) {
    if let Some(term) = leading.send_replace(None) {
        tracing::warn!(term, reason = why, "this gateway no longer runs the work done once");
    }
}

async fn take(client: &tokio_postgres::Client, holder: Uuid, ttl: Duration) -> Result<Option<i64>, ()> {
    let result = async {
        client.batch_execute("BEGIN").await?;
        client.query_one("SELECT last FROM meshgate_head WHERE id = 1 FOR UPDATE", &[]).await?;
        let rows = client.query(TAKE, &[&holder, &ttl.as_secs_f64()]).await?;
        client.batch_execute("COMMIT").await?;
        Ok::<_, tokio_postgres::Error>(rows.first().map(|r| r.get::<_, i64>(0)))
    }
    .await;
    match result {
        Ok(term) => Ok(term),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            tracing::debug!(error = %crate::report::chain(&e), "cannot take or renew the lease");
            Err(())
        }
    }
}
