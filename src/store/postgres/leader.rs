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

use std::time::Duration;

use uuid::Uuid;

use super::connect;
use crate::store::lease::Lease;

/// Takes or extends the lease; returns the term, or nothing if another gateway holds it.
const TAKE: &str = "
    UPDATE meshgate_leader SET
        term = CASE WHEN holder = $1 AND expires_at > now() THEN term ELSE term + 1 END,
        holder = $1,
        expires_at = now() + make_interval(secs => $2)
    WHERE id = 1 AND (holder = $1 OR expires_at <= now())
    RETURNING term";

/// The lease row, asked over a connection of its own (reopened when lost).
pub struct PgLease {
    pub url: String,
    pub holder: Uuid,
    pub ttl: Duration,
    pub client: Option<tokio_postgres::Client>,
}

#[async_trait::async_trait]
impl Lease for PgLease {
    async fn take(&mut self) -> Result<Option<i64>, ()> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = connect(&self.url).await.ok();
        }
        match &self.client {
            Some(client) => take(client, self.holder, self.ttl).await,
            None => Err(()),
        }
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
