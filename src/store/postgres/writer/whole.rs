//! The batch judged against the versions of its streams as they stand under the head's lock: two
//! round trips after the lock, for a batch the one-round-trip way could not decide.

use std::collections::HashMap;

use super::{is_clash_on, micros, refuse_fenced, Batch, Columns, Connection, Done};
use crate::store::postgres::pg_failed;
use crate::store::{plan_request, Appended, StoreError, StoredEvent};

/// The last version of each of the streams `$1` (streams without events are left out).
pub(super) const VERSIONS: &str =
    "SELECT stream, max(version) FROM meshgate_events WHERE stream = ANY($1::text[]) GROUP BY stream";

/// A whole batch's events, in one statement.
pub(super) const INSERT_ALL: &str = "
    INSERT INTO meshgate_events
        (position, stream, version, id, type, schema_version, data, correlation_id, causation_id, recorded_at)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::uuid[], $5::text[], $6::integer[],
                         $7::text[], $8::uuid[], $9::uuid[], $10::timestamptz[])";

/// The batch in one transaction; `None` (and the transaction rolled back) when an event id is
/// already in the log.
pub(super) async fn commit(conn: &Connection, batch: &Batch<'_>) -> Result<Option<Done>, StoreError> {
    let base = lock_head(conn).await?;
    commit_whole(conn, base, batch).await
}

/// Begins the batch's transaction and takes the log's head row: the position it stands at.
pub(super) async fn lock_head(conn: &Connection) -> Result<i64, StoreError> {
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
/// rolled back) when an event id is already in the log.
pub(super) async fn commit_whole(conn: &Connection, base: i64, batch: &Batch<'_>) -> Result<Option<Done>, StoreError> {
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
    let mut versions: HashMap<String, u64> =
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
    let c = Columns::of_stored(&stored);
    let columns = c.params(&[&positions, &names, &numbers], &[]);
    let head = last.to_string();
    let (last_param, head_param): (
        [&(dyn tokio_postgres::types::ToSql + Sync); 1],
        [&(dyn tokio_postgres::types::ToSql + Sync); 1],
    ) = ([&last], [&head]);
    let (inserted, updated, notified, committed) = tokio::join!(
        client.execute(&conn.insert_all, &columns[..]),
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
