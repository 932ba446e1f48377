//! The batch request by request, each in a savepoint: the way that refuses only the request whose
//! event id is already in the log (a retried batch), each stream one `INSERT … SELECT` that inserts
//! only if the stream is at the expected version.

use futures_util::future::join_all;

use super::{is_clash_on, is_version_clash, micros, refuse_fenced, Batch, Columns, Connection, Done};
use crate::store::postgres::pg_failed;
use crate::store::{Appended, StoreError, StoredEvent, StreamAppend};
use meshgate_domain::ExpectedVersion;

/// Most requests in one transaction: each runs in a savepoint (a subtransaction once it writes),
/// and past 64 of them PostgreSQL's snapshots overflow into `pg_subtrans`, slowing every session
/// on the database. A larger batch is taken in several transactions.
const MAX_SUBTRANSACTIONS: usize = 60;

/// Inserts one stream's events if the stream is as expected (`$3`: 0 any, 1 no stream, 2 exact
/// `$4`); positions follow `$2`, versions follow the stream's last. Returns the versions written.
pub(super) const INSERT: &str = "
    INSERT INTO meshgate_events
        (position, stream, version, id, type, schema_version, data, correlation_id, causation_id, recorded_at)
    SELECT $2 + e.n, $1, COALESCE(cur.v, -1) + e.n, e.id, e.type, e.sv, e.data, e.corr, e.caus, e.at
    FROM (SELECT max(version) AS v FROM meshgate_events WHERE stream = $1) AS cur,
         unnest($5::uuid[], $6::text[], $7::integer[], $8::text[], $9::uuid[], $10::uuid[], $11::timestamptz[])
             WITH ORDINALITY AS e(id, type, sv, data, corr, caus, at, n)
    WHERE $3 = 0 OR ($3 = 1 AND cur.v IS NULL) OR ($3 = 2 AND cur.v = $4)
    RETURNING version";

pub(super) const VERSION: &str = "SELECT max(version) FROM meshgate_events WHERE stream = $1";

/// The batch in transactions of at most [`MAX_SUBTRANSACTIONS`] requests. When one fails, its
/// requests and those after it are answered with the error; those before it stay committed.
pub(super) async fn commit(conn: &Connection, batch: &Batch<'_>) -> Result<Done, StoreError> {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut stored = Vec::new();
    for chunk in batch.chunks(MAX_SUBTRANSACTIONS) {
        match commit_chunk(conn, chunk).await {
            Ok((chunk_outcomes, chunk_stored)) => {
                outcomes.extend(chunk_outcomes);
                stored.extend(chunk_stored);
            }
            Err(e) if outcomes.is_empty() => return Err(e),
            Err(e) => {
                tracing::error!(error = %crate::report::chain(&e), "an append to the event log failed");
                let _ = conn.client.batch_execute("ROLLBACK").await;
                outcomes.resize_with(batch.len(), || Err(e.clone()));
                break;
            }
        }
    }
    Ok((outcomes, stored))
}

/// One transaction for the requests, each in a savepoint: the outcome of each request and the
/// events committed.
async fn commit_chunk(conn: &Connection, batch: &Batch<'_>) -> Result<Done, StoreError> {
    let client = &conn.client;
    let failed = |e: tokio_postgres::Error| pg_failed("cannot append to the event log", e);
    let base = super::whole::lock_head(conn).await?;
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
    let c = Columns::of_new(events);
    let rows = conn.client.query(&conn.insert, &c.params(&[&append.stream, &first, &mode, &expected], &[])).await?;
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
