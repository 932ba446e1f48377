//! The gateway's appender on PostgreSQL: group commit over one connection.
//!
//! It takes every request waiting (up to `max_batch`) into one transaction, which first locks the
//! log's head row (`meshgate_head`): appends from every gateway on the database are serialized, so
//! positions are assigned from the head, gap-free, and a later position can never become visible
//! before an earlier one (the lock is released only by the commit that made the earlier one
//! visible). The commit moves the head and notifies followers on every gateway
//! (`NOTIFY meshgate_events`); callers are answered after it.
//!
//! A batch is first tried in one round trip ([`assumed`]): judged in memory as if every stream
//! were where the first request naming it expects, and the database appends it only if those
//! assumptions hold under the lock. When they do not (a stream moved on, an event id already in
//! the log, the lease's term over), the same batch is judged against the streams' versions read
//! under the lock ([`whole`]), and if an event id is already in the log, request by request in
//! savepoints ([`savepoints`]), so that only that request is refused. ADR 0009 says why.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

use super::{pg_failed, Target};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::{Appended, NewEvent, StoreError, StoredEvent, StreamAppend};

mod assumed;
mod savepoints;
mod whole;

pub use assumed::APPEND;

/// The requests of one batch: each one's appends and the term it is fenced by, if any.
type Batch<'a> = [(&'a [StreamAppend], Option<i64>)];

/// What a batch came to: each request's outcome, in order, and the events committed.
type Done = (Vec<Result<Appended, StoreError>>, Vec<StoredEvent>);

pub struct WriteRequest {
    pub appends: Vec<StreamAppend>,
    /// Only while the lease on the work done once is in this term.
    pub fence: Option<i64>,
    pub reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// How the writer's connection plans: each statement at each execution, for the log as it then
/// stands. A plan cached while the table was nearly empty (prepared statements are planned once
/// for all after their fifth execution) checked a batch's streams by scanning the whole table at
/// every append; a new log grows far faster than its statistics follow.
pub const SESSION: &str = "SET plan_cache_mode = force_custom_plan";

/// The writer's connection and its prepared statements. Every statement sent in a pipeline must be
/// prepared beforehand: one given as text is prepared first (a round trip), so it would reach the
/// server after the simple queries (`COMMIT`) sent behind it.
struct Connection {
    client: Client,
    insert: Statement,
    version: Statement,
    versions: Statement,
    insert_all: Statement,
    lock_head: Statement,
    move_head: Statement,
    notify: Statement,
    lease: Statement,
    assumed: Statement,
    /// The server process behind the connection: the sender of this writer's notifications.
    pid: i32,
}

impl Connection {
    async fn open(target: &Target) -> Result<Connection, StoreError> {
        let client = target.connect().await?;
        let failed = |e| pg_failed("cannot prepare appends", e);
        client.batch_execute(SESSION).await.map_err(failed)?;
        let insert = client.prepare(savepoints::INSERT).await.map_err(failed)?;
        let version = client.prepare(savepoints::VERSION).await.map_err(failed)?;
        let versions = client.prepare(whole::VERSIONS).await.map_err(failed)?;
        let insert_all = client.prepare(whole::INSERT_ALL).await.map_err(failed)?;
        let lock_head =
            client.prepare("SELECT last FROM meshgate_head WHERE id = 1 FOR UPDATE").await.map_err(failed)?;
        let move_head = client.prepare("UPDATE meshgate_head SET last = $1 WHERE id = 1").await.map_err(failed)?;
        let notify = client.prepare("SELECT pg_notify('meshgate_events', $1)").await.map_err(failed)?;
        let lease = client
            .prepare("SELECT term, expires_at > now() FROM meshgate_leader WHERE id = 1")
            .await
            .map_err(failed)?;
        let assumed = client.prepare(assumed::APPEND).await.map_err(failed)?;
        let pid = client.query_one("SELECT pg_backend_pid()", &[]).await.map_err(failed)?.get(0);
        Ok(Connection {
            client,
            insert,
            version,
            versions,
            insert_all,
            lock_head,
            move_head,
            notify,
            lease,
            assumed,
            pid,
        })
    }
}

/// Appends batches until every sender is gone; keeps in `pid` the server process its connection
/// has (0 before the first), so the tailer knows this writer's notifications from others'.
pub async fn run(
    target: Arc<Target>,
    mut requests: mpsc::Receiver<WriteRequest>,
    max_batch: usize,
    head: Arc<watch::Sender<u64>>,
    committed: mpsc::UnboundedSender<Arc<[StoredEvent]>>,
    pid: Arc<AtomicI32>,
) {
    let mut connection: Option<Connection> = None;
    let mut batch = Vec::new();
    // The last position this writer committed (the head, until it commits).
    let mut own_last = *head.borrow();
    let mut taking_turns = false;
    while let Some(first) = requests.recv().await {
        batch.push(first);
        while batch.len() < max_batch {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        if connection.as_ref().is_none_or(|c| c.client.is_closed()) {
            match Connection::open(&target).await {
                Ok(opened) => {
                    pid.store(opened.pid, Ordering::Relaxed);
                    connection = Some(opened)
                }
                Err(e) => {
                    tracing::error!(error = %crate::report::chain(&e), "cannot reach the event log's database");
                    for request in batch.drain(..) {
                        let _ = request.reply.send(Err(e.clone()));
                    }
                    continue;
                }
            }
        }
        let Some(conn) = connection.as_ref() else { continue };
        let started = std::time::Instant::now();
        // Another gateway appended between this one's last two commits: they take turns on the
        // head's lock. Then the lock is taken first, and what arrives while the other holds it
        // joins this batch (fewer, larger batches; the lock is held one round trip longer).
        let locked = if taking_turns {
            match whole::lock_head(conn).await {
                Ok(base) => Some(base),
                Err(e) => {
                    tracing::error!(error = %crate::report::chain(&e), "an append to the event log failed");
                    let _ = conn.client.batch_execute("ROLLBACK").await;
                    for request in batch.drain(..) {
                        let _ = request.reply.send(Err(e.clone()));
                    }
                    continue;
                }
            }
        } else {
            None
        };
        while locked.is_some() && batch.len() < max_batch {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let requests: Vec<WriteRequest> = std::mem::take(&mut batch);
        let appends: Vec<(&[StreamAppend], Option<i64>)> =
            requests.iter().map(|r| (r.appends.as_slice(), r.fence)).collect();
        match commit(conn, &appends, locked).await {
            Ok((outcomes, stored)) => {
                crate::metrics::commit(started.elapsed(), stored.len());
                if let (Some(first), Some(last)) = (stored.first(), stored.last().map(|e| e.position)) {
                    taking_turns = first.position > own_last + 1;
                    own_last = last;
                    head.send_if_modified(|h| (last > *h).then(|| *h = last).is_some());
                    let _ = committed.send(stored.into());
                }
                for (request, outcome) in requests.into_iter().zip(outcomes) {
                    let _ = request.reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %crate::report::chain(&e), "an append to the event log failed");
                let _ = conn.client.batch_execute("ROLLBACK").await;
                for request in requests {
                    let _ = request.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One batch, by the first of the three ways that can decide it (see the module's notes);
/// `locked`: the transaction is begun and holds the head's lock, at this position.
async fn commit(conn: &Connection, batch: &Batch<'_>, locked: Option<i64>) -> Result<Done, StoreError> {
    match (assumed::Plan::of(batch), locked) {
        (Some(plan), locked) => {
            if let Some(done) = assumed::commit(conn, plan, locked.is_some()).await? {
                return Ok(done);
            }
        }
        // A request expects `Any`: judged against the versions read, under the lock held.
        (None, Some(base)) => {
            if let Some(done) = whole::commit_whole(conn, base, batch).await? {
                return Ok(done);
            }
            return savepoints::commit(conn, batch).await;
        }
        (None, None) => {}
    }
    if let Some(done) = whole::commit(conn, batch).await? {
        return Ok(done);
    }
    // An event id already in the log: request by request, to refuse only that one.
    savepoints::commit(conn, batch).await
}

/// A unique violation of `constraint` (any other, such as a position taken, fails the batch).
pub(super) fn is_clash_on(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.as_db_error().is_some_and(|db| db.code() == &SqlState::UNIQUE_VIOLATION && db.constraint() == Some(constraint))
}

/// A unique violation of `(stream, version)`: a version already taken.
pub(super) fn is_version_clash(e: &tokio_postgres::Error) -> bool {
    is_clash_on(e, "meshgate_events_stream_version_key")
}

/// Events' columns as arrays, each one parameter of an `unnest`.
struct Columns<'a> {
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    schema_versions: Vec<i32>,
    data: Vec<&'a str>,
    correlations: Vec<Uuid>,
    causations: Vec<Option<Uuid>>,
    at: Vec<DateTime<Utc>>,
}

impl<'a> Columns<'a> {
    fn of_stored(events: &'a [StoredEvent]) -> Columns<'a> {
        Columns {
            ids: events.iter().map(|e| e.id).collect(),
            types: events.iter().map(|e| e.event_type.as_str()).collect(),
            schema_versions: events.iter().map(|e| e.schema_version as i32).collect(),
            data: events.iter().map(|e| e.data.as_str()).collect(),
            correlations: events.iter().map(|e| e.correlation_id).collect(),
            causations: events.iter().map(|e| e.causation_id).collect(),
            at: events.iter().map(|e| e.recorded_at).collect(),
        }
    }

    fn of_new(events: &'a [NewEvent]) -> Columns<'a> {
        Columns {
            ids: events.iter().map(|e| e.id).collect(),
            types: events.iter().map(|e| e.event_type).collect(),
            schema_versions: events.iter().map(|e| e.schema_version as i32).collect(),
            data: events.iter().map(|e| e.data.as_str()).collect(),
            correlations: events.iter().map(|e| e.correlation_id).collect(),
            causations: events.iter().map(|e| e.causation_id).collect(),
            at: events.iter().map(|e| micros(e.recorded_at)).collect(),
        }
    }

    /// `before`, the columns in the order of the log's table (id … recorded_at), then `after`.
    fn params<'p>(&'p self, before: &[&'p Param<'p>], after: &[&'p Param<'p>]) -> Vec<&'p Param<'p>> {
        let columns: [&Param<'p>; 7] =
            [&self.ids, &self.types, &self.schema_versions, &self.data, &self.correlations, &self.causations, &self.at];
        before.iter().chain(&columns).chain(after).copied().collect()
    }
}

/// A statement's parameter.
type Param<'a> = dyn tokio_postgres::types::ToSql + Sync + 'a;

/// Why a fenced request is refused under `lease` (its term, whether it is still valid), if it is.
fn refuse_fenced(term: i64, (current, valid): (i64, bool)) -> Option<StoreError> {
    (term != current || !valid).then(|| {
        StoreError::failed(format!(
            "fenced: this gateway's term {term} of the work done once is over (the lease is in term {current}{})",
            if valid { "" } else { ", expired" }
        ))
    })
}

/// The time as the log keeps it (PostgreSQL's `timestamptz` holds microseconds), so what followers
/// are handed is what a reader of the log gets back.
fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}
