//! The gateway's appender on PostgreSQL: group commit over one connection.
//!
//! It takes every request waiting (up to `max_batch`) into one transaction. The transaction first
//! locks the log's head row (`meshgate_head`), so appends from every gateway on the database are
//! serialized: positions are assigned from the head, gap-free, and a later position can never
//! become visible before an earlier one (the lock is released only by the commit that made the
//! earlier one visible). Under the lock the writer reads the versions of every stream the batch
//! names, judges the requests in order, and inserts all accepted events in one statement
//! ([`commit_whole`]); if an event id is already in the log it takes the batch request by request
//! instead, each in a savepoint, each stream one `INSERT … SELECT` that inserts only if the stream
//! is at the expected version ([`commit`]). The commit moves the head and notifies followers on
//! every gateway (`NOTIFY meshgate_events`); callers are answered after it.

use std::sync::Arc;

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::{connect, pg_failed};
use crate::store::{plan_request, Appended, StoreError, StoredEvent, StreamAppend};
use meshgate_domain::ExpectedVersion;

pub struct WriteRequest {
    pub appends: Vec<StreamAppend>,
    /// Only while the lease on the work done once is in this term.
    pub fence: Option<i64>,
    pub reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// Inserts one stream's events if the stream is as expected (`$3`: 0 any, 1 no stream, 2 exact
/// `$4`); positions follow `$2`, versions follow the stream's last. Returns the versions written.
const INSERT: &str = "
    INSERT INTO meshgate_events
        (position, stream, version, id, type, schema_version, data, correlation_id, causation_id, recorded_at)
    SELECT $2 + e.n, $1, COALESCE(cur.v, -1) + e.n, e.id, e.type, e.sv, e.data, e.corr, e.caus, e.at
    FROM (SELECT max(version) AS v FROM meshgate_events WHERE stream = $1) AS cur,
         unnest($5::uuid[], $6::text[], $7::integer[], $8::text[], $9::uuid[], $10::uuid[], $11::timestamptz[])
             WITH ORDINALITY AS e(id, type, sv, data, corr, caus, at, n)
    WHERE $3 = 0 OR ($3 = 1 AND cur.v IS NULL) OR ($3 = 2 AND cur.v = $4)
    RETURNING version";

const VERSION: &str = "SELECT max(version) FROM meshgate_events WHERE stream = $1";

/// The last version of each of the streams `$1` (streams without events are left out).
const VERSIONS: &str =
    "SELECT stream, max(version) FROM meshgate_events WHERE stream = ANY($1::text[]) GROUP BY stream";

/// A whole batch's events, in one statement.
const INSERT_ALL: &str = "
    INSERT INTO meshgate_events
        (position, stream, version, id, type, schema_version, data, correlation_id, causation_id, recorded_at)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::uuid[], $5::text[], $6::integer[],
                         $7::text[], $8::uuid[], $9::uuid[], $10::timestamptz[])";

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
}

impl Connection {
    async fn open(url: &str) -> Result<Connection, StoreError> {
        let client = connect(url).await?;
        let failed = |e| pg_failed("cannot prepare appends", e);
        let insert = client.prepare(INSERT).await.map_err(failed)?;
        let version = client.prepare(VERSION).await.map_err(failed)?;
        let versions = client.prepare(VERSIONS).await.map_err(failed)?;
        let insert_all = client.prepare(INSERT_ALL).await.map_err(failed)?;
        let lock_head =
            client.prepare("SELECT last FROM meshgate_head WHERE id = 1 FOR UPDATE").await.map_err(failed)?;
        let move_head = client.prepare("UPDATE meshgate_head SET last = $1 WHERE id = 1").await.map_err(failed)?;
        let notify = client.prepare("SELECT pg_notify('meshgate_events', $1)").await.map_err(failed)?;
        let lease = client
            .prepare("SELECT term, expires_at > now() FROM meshgate_leader WHERE id = 1")
            .await
            .map_err(failed)?;
        Ok(Connection { client, insert, version, versions, insert_all, lock_head, move_head, notify, lease })
    }
}

/// Appends batches until every sender is gone.
pub async fn run(
    url: String,
    mut requests: mpsc::Receiver<WriteRequest>,
    max_batch: usize,
    head: Arc<watch::Sender<u64>>,
    committed: mpsc::UnboundedSender<Arc<[StoredEvent]>>,
) {
    let mut connection: Option<Connection> = None;
    let mut batch = Vec::new();
    while let Some(first) = requests.recv().await {
        batch.push(first);
        while batch.len() < max_batch {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        if connection.as_ref().is_none_or(|c| c.client.is_closed()) {
            match Connection::open(&url).await {
                Ok(opened) => connection = Some(opened),
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
        // The head's lock first: while another gateway holds it, requests keep arriving, and they
        // join this batch once it is ours (fewer, larger batches when gateways take turns).
        let base = match lock_head(conn).await {
            Ok(base) => base,
            Err(e) => {
                tracing::error!(error = %crate::report::chain(&e), "an append to the event log failed");
                let _ = conn.client.batch_execute("ROLLBACK").await;
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(e.clone()));
                }
                continue;
            }
        };
        while batch.len() < max_batch {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let requests: Vec<WriteRequest> = std::mem::take(&mut batch);
        let appends: Vec<(&[StreamAppend], Option<i64>)> =
            requests.iter().map(|r| (r.appends.as_slice(), r.fence)).collect();
        let committed_batch = match commit_whole(conn, base, &appends).await {
            Ok(Some(done)) => Ok(done),
            // An event id already in the log: request by request, to refuse only that one.
            Ok(None) => commit(conn, &appends).await,
            Err(e) => Err(e),
        };
        match committed_batch {
            Ok((outcomes, stored)) => {
                crate::metrics::commit(started.elapsed(), stored.len());
                if let Some(last) = stored.last().map(|e| e.position) {
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

/// Begins the batch's transaction and takes the log's head row: the position it stands at.
async fn lock_head(conn: &Connection) -> Result<i64, StoreError> {
    let failed = |e: tokio_postgres::Error| pg_failed("cannot append to the event log", e);
    let (begun, locked) = tokio::join!(conn.client.batch_execute("BEGIN"), conn.client.query_one(&conn.lock_head, &[]));
    begun.map_err(failed)?;
    Ok(locked.map_err(failed)?.get(0))
}

/// The rest of the batch's transaction, begun by [`lock_head`] (`base`: the head it locked), in two
/// round trips: the last version of every stream the batch names; the batch's events in one
/// insert, the head moved, the notification and the commit, pipelined. Under the head's lock the
/// versions read are the log's own (every writer of every gateway takes that lock first), so each
/// request is judged here, in order, each seeing those before it. `None` (and the transaction
/// rolled back) when an event id is already in the log: [`commit`] then takes the batch request by
/// request.
async fn commit_whole(
    conn: &Connection,
    base: i64,
    batch: &[(&[StreamAppend], Option<i64>)],
) -> Result<Option<(Vec<Result<Appended, StoreError>>, Vec<StoredEvent>)>, StoreError> {
    let client = &conn.client;
    let failed = |e: tokio_postgres::Error| pg_failed("cannot append to the event log", e);
    let mut streams: Vec<&str> = batch.iter().flat_map(|(a, _)| a.iter().map(|a| a.stream.as_str())).collect();
    streams.sort_unstable();
    streams.dedup();
    let fenced = batch.iter().any(|(_, fence)| fence.is_some());
    let streams_param: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&streams];
    let (read, lease) = tokio::join!(client.query(&conn.versions, &streams_param), async {
        if fenced {
            client.query_one(&conn.lease, &[]).await.map(|row| Some((row.get::<_, i64>(0), row.get::<_, bool>(1))))
        } else {
            Ok(None)
        }
    },);
    let lease = lease.map_err(failed)?;
    let mut versions: std::collections::HashMap<String, u64> =
        read.map_err(failed)?.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect();

    let mut last = base as u64;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut stored: Vec<StoredEvent> = Vec::new();
    for &(appends, fence) in batch {
        if let Some(refused) = fence.zip(lease).and_then(|(term, lease)| refuse_fenced(term, lease)) {
            outcomes.push(Err(refused));
            continue;
        }
        let current = |stream: &str| versions.get(stream).copied();
        match plan_request(appends, last, current) {
            Err(conflict) => outcomes.push(Err(conflict)),
            Ok((events, streams)) => {
                // Accepted: later requests of the batch see its versions.
                versions.extend(streams);
                last += events.len() as u64;
                outcomes.push(Ok(Appended { last_position: last }));
                stored.extend(events.into_iter().map(|e| StoredEvent { recorded_at: micros(e.recorded_at), ..e }));
            }
        }
    }
    if stored.is_empty() {
        client.batch_execute("COMMIT").await.map_err(failed)?;
        return Ok(Some((outcomes, stored)));
    }
    let last = last as i64;
    let positions: Vec<i64> = stored.iter().map(|e| e.position as i64).collect();
    let names: Vec<&str> = stored.iter().map(|e| e.stream.as_str()).collect();
    let numbers: Vec<i64> = stored.iter().map(|e| e.version as i64).collect();
    let ids: Vec<Uuid> = stored.iter().map(|e| e.id).collect();
    let types: Vec<&str> = stored.iter().map(|e| e.event_type.as_str()).collect();
    let schema_versions: Vec<i32> = stored.iter().map(|e| e.schema_version as i32).collect();
    let data: Vec<&str> = stored.iter().map(|e| e.data.as_str()).collect();
    let correlations: Vec<Uuid> = stored.iter().map(|e| e.correlation_id).collect();
    let causations: Vec<Option<Uuid>> = stored.iter().map(|e| e.causation_id).collect();
    let at: Vec<chrono::DateTime<chrono::Utc>> = stored.iter().map(|e| e.recorded_at).collect();
    let columns: [&(dyn tokio_postgres::types::ToSql + Sync); 10] =
        [&positions, &names, &numbers, &ids, &types, &schema_versions, &data, &correlations, &causations, &at];
    let head = last.to_string();
    let (last_param, head_param): (
        [&(dyn tokio_postgres::types::ToSql + Sync); 1],
        [&(dyn tokio_postgres::types::ToSql + Sync); 1],
    ) = ([&last], [&head]);
    let (inserted, updated, notified, committed) = tokio::join!(
        client.execute(&conn.insert_all, &columns),
        client.execute(&conn.move_head, &last_param),
        client.execute(&conn.notify, &head_param),
        client.batch_execute("COMMIT"),
    );
    match inserted {
        Err(e) if is_clash_on(&e, "meshgate_events_id_key") => {
            // The commit behind it ended the failed transaction (as a rollback).
            return Ok(None);
        }
        other => other.map_err(failed)?,
    };
    updated.and(notified).map_err(failed)?;
    committed.map_err(|e| pg_failed("the commit of an append failed; it may or may not have landed", e))?;
    Ok(Some((outcomes, stored)))
}

/// Why a fenced request is refused under `lease` (its term, whether it is still valid), if it is.
fn refuse_fenced(term: i64, (current, valid): (i64, bool)) -> Option<StoreError> {
    (term != current || !valid).then(|| {
        StoreError::failed(format!(
            "fenced: this gateway's term {term} of the work done once is over (the lease is in term {current}{})",
            if valid { "" } else { ", expired" }
        ))
    })
}

/// One transaction for the batch, request by request (each in a savepoint): the outcome of each
/// request and the events committed.
async fn commit(
    conn: &Connection,
    batch: &[(&[StreamAppend], Option<i64>)],
) -> Result<(Vec<Result<Appended, StoreError>>, Vec<StoredEvent>), StoreError> {
    let client = &conn.client;
    let failed = |e: tokio_postgres::Error| pg_failed("cannot append to the event log", e);
    let (begun, locked) = tokio::join!(client.batch_execute("BEGIN"), client.query_one(&conn.lock_head, &[]),);
    begun.map_err(failed)?;
    let base: i64 = locked.map_err(failed)?.get(0);
    // The lease as it stands under the head lock (changes of term take it too).
    let lease: Option<(i64, bool)> = if batch.iter().any(|(_, fence)| fence.is_some()) {
        let row = client.query_one(&conn.lease, &[]).await.map_err(failed)?;
        Some((row.get(0), row.get(1)))
    } else {
        None
    };
    let mut last = base;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut stored = Vec::new();
    let mut release = false;
    for &(appends, fence) in batch {
        if let Some(refused) = fence.zip(lease).and_then(|(term, lease)| refuse_fenced(term, lease)) {
            outcomes.push(Err(refused));
            continue;
        }
        let (release_done, savepoint, inserted) = tokio::join!(
            async {
                if release {
                    client.batch_execute("RELEASE SAVEPOINT r").await
                } else {
                    Ok(())
                }
            },
            client.batch_execute("SAVEPOINT r"),
            join_all(appends.iter().scan(last, |next, append| {
                let first = *next;
                *next += append.events.len() as i64;
                Some(insert(conn, append, first))
            })),
        );
        release_done.map_err(failed)?;
        savepoint.map_err(failed)?;
        match judge(conn, appends, inserted, last).await? {
            Ok(events) => {
                last += events.len() as i64;
                outcomes.push(Ok(Appended { last_position: last as u64 }));
                stored.extend(events);
                release = true;
            }
            Err(refusal) => {
                client.batch_execute("ROLLBACK TO SAVEPOINT r; RELEASE SAVEPOINT r").await.map_err(failed)?;
                outcomes.push(Err(match refusal {
                    Refusal::Conflict(i) => conflict(conn, &appends[i]).await?,
                    Refusal::Duplicate(e) => e,
                }));
                release = false;
            }
        }
    }
    let moved = last > base;
    let (released, updated, notified, committed) = tokio::join!(
        async {
            if release {
                client.batch_execute("RELEASE SAVEPOINT r").await
            } else {
                Ok(())
            }
        },
        async {
            if moved {
                client.execute(&conn.move_head, &[&last]).await.map(|_| ())
            } else {
                Ok(())
            }
        },
        async {
            if moved {
                client.execute(&conn.notify, &[&last.to_string()]).await.map(|_| ())
            } else {
                Ok(())
            }
        },
        client.batch_execute("COMMIT"),
    );
    released.and(updated).and(notified).map_err(failed)?;
    committed.map_err(|e| pg_failed("the commit of an append failed; it may or may not have landed", e))?;
    Ok((outcomes, stored))
}

/// Sends one stream's insert (pipelined with the others of its request): the versions written.
async fn insert(conn: &Connection, append: &StreamAppend, first: i64) -> Result<Vec<i64>, tokio_postgres::Error> {
    let (mode, expected): (i32, i64) = match append.expected {
        ExpectedVersion::Any => (0, 0),
        ExpectedVersion::NoStream => (1, 0),
        ExpectedVersion::Exact(v) => (2, v as i64),
    };
    let events = &append.events;
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type).collect();
    let schema_versions: Vec<i32> = events.iter().map(|e| e.schema_version as i32).collect();
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    let correlations: Vec<Uuid> = events.iter().map(|e| e.correlation_id).collect();
    let causations: Vec<Option<Uuid>> = events.iter().map(|e| e.causation_id).collect();
    let at: Vec<chrono::DateTime<chrono::Utc>> = events.iter().map(|e| micros(e.recorded_at)).collect();
    let rows = conn
        .client
        .query(
            &conn.insert,
            &[
                &append.stream,
                &first,
                &mode,
                &expected,
                &ids,
                &types,
                &schema_versions,
                &data,
                &correlations,
                &causations,
                &at,
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Why a request was refused: a stream not as expected (its index), or an event already in the log.
enum Refusal {
    Conflict(usize),
    Duplicate(StoreError),
}

/// What the inserts of one request came to: its stored events, or why it was refused. Other
/// database errors fail the batch.
async fn judge(
    conn: &Connection,
    appends: &[StreamAppend],
    inserted: Vec<Result<Vec<i64>, tokio_postgres::Error>>,
    last: i64,
) -> Result<Result<Vec<StoredEvent>, Refusal>, StoreError> {
    let mut events = Vec::new();
    let mut position = last;
    for (i, (append, versions)) in appends.iter().zip(inserted).enumerate() {
        let versions = match versions {
            Ok(versions) if versions.len() != append.events.len() => return Ok(Err(Refusal::Conflict(i))),
            Ok(_) if append.events.is_empty() && !holds(conn, append).await? => return Ok(Err(Refusal::Conflict(i))),
            Ok(versions) => versions,
            Err(e) if is_version_clash(&e) => return Ok(Err(Refusal::Conflict(i))),
            Err(e) if is_clash_on(&e, "meshgate_events_id_key") => {
                return Ok(Err(Refusal::Duplicate(pg_failed(
                    format_args!("an event appended to `{}` is already in the log (same event id)", append.stream),
                    e,
                ))))
            }
            Err(e) => return Err(pg_failed("cannot append to the event log", e)),
        };
        for (event, version) in append.events.iter().zip(versions) {
            position += 1;
            events.push(StoredEvent {
                recorded_at: micros(event.recorded_at),
                ..event.stored(position as u64, &append.stream, version as u64)
            });
        }
    }
    Ok(Ok(events))
}

/// Whether an append of no events finds its stream as expected.
async fn holds(conn: &Connection, append: &StreamAppend) -> Result<bool, StoreError> {
    let actual = current(conn, &append.stream).await?;
    Ok(crate::store::fits(append.expected, actual))
}

fn is_version_clash(e: &tokio_postgres::Error) -> bool {
    is_clash_on(e, "meshgate_events_stream_version_key")
}

/// A unique violation of `constraint` (any other, such as a position taken, fails the batch).
fn is_clash_on(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.as_db_error().is_some_and(|db| db.code() == &SqlState::UNIQUE_VIOLATION && db.constraint() == Some(constraint))
}

async fn conflict(conn: &Connection, append: &StreamAppend) -> Result<StoreError, StoreError> {
    Ok(StoreError::Conflict {
        stream: append.stream.clone(),
        expected: append.expected,
        actual: current(conn, &append.stream).await?,
    })
}

/// The stream's last version. Inside the batch's transaction: after a rollback to the savepoint,
/// it sees what was committed and what earlier requests of the batch appended.
async fn current(conn: &Connection, stream: &str) -> Result<Option<u64>, StoreError> {
    let row = conn
        .client
        .query_one(&conn.version, &[&stream])
        .await
        .map_err(|e| pg_failed("cannot read a stream's version", e))?;
    Ok(row.get::<_, Option<i64>>(0).map(|v| v as u64))
}

/// The time as the log keeps it (PostgreSQL's `timestamptz` holds microseconds), so what followers
/// are handed is what a reader of the log gets back.
fn micros(at: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}
