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

use std::sync::Arc;

use super::Target;
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
    pub target: Arc<Target>,
    pub holder: Uuid,
    pub ttl: Duration,
    pub connection: Option<LeaseConnection>,
}

/// The lease's connection and its statements, prepared so that a renewal is one round trip.
pub struct LeaseConnection {
    client: tokio_postgres::Client,
    lock_head: tokio_postgres::Statement,
    take: tokio_postgres::Statement,
}

impl LeaseConnection {
    async fn open(target: &Target) -> Option<LeaseConnection> {
        let client = target.connect().await.ok()?;
        let lock_head = client.prepare("SELECT last FROM meshgate_head WHERE id = 1 FOR UPDATE").await.ok()?;
        let take = client.prepare(TAKE).await.ok()?;
        Some(LeaseConnection { client, lock_head, take })
    }
}

#[async_trait::async_trait]
impl Lease for PgLease {
    async fn take(&mut self) -> Result<Option<i64>, ()> {
        if self.connection.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.connection = LeaseConnection::open(&self.target).await;
        }
        match &self.connection {
            Some(connection) => take(connection, self.holder, self.ttl).await,
            None => Err(()),
        }
    }
}

/// One transaction, pipelined: the head's lock (appends and changes of term are serialized), the
/// lease taken or renewed, the commit. The head is held for the server's work only.
async fn take(connection: &LeaseConnection, holder: Uuid, ttl: Duration) -> Result<Option<i64>, ()> {
    let client = &connection.client;
    let seconds = ttl.as_secs_f64();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&holder, &seconds];
    let (begun, locked, taken, committed) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.query_one(&connection.lock_head, &[]),
        client.query(&connection.take, &params),
        client.batch_execute("COMMIT"),
    );
    let result = begun.and(locked.map(|_| ())).and(taken).and_then(|rows| committed.map(|()| rows));
    match result {
        Ok(rows) => Ok(rows.first().map(|r| r.get::<_, i64>(0))),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            tracing::debug!(error = %crate::report::chain(&e), "cannot take or renew the lease");
            Err(())
        }
    }
}
