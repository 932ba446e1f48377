//! What `meshgate log archive` does to the SQLite log: removing the rows of archived builds, a
//! whole build per transaction, beside a running gateway; and a scratch log holding archived
//! events, read beside the live one (`--include-archives`).
//!
//! A removal is a write like any other: it takes SQLite's write lock for a transaction of at most
//! [`ROWS_PER_TRANSACTION`] rows, so the gateway's writer waits milliseconds (within its busy
//! timeout) rather than the whole archive's time. The gateway's stream index still lists the
//! removed positions; reads of a stream pass over positions the log no longer holds.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::{migrate, Row, COLUMNS};
use crate::store::{StoreError, StoreResultExt, StoredEvent};

/// Most rows removed in one transaction (a larger build goes alone in its own).
const ROWS_PER_TRANSACTION: usize = 2_000;

/// Removes the rows at `builds`' positions (each build's positions in one transaction, never split
/// across two); returns the rows removed.
pub fn remove(log: &Path, builds: &[Vec<u64>], busy_timeout: Duration) -> Result<usize, StoreError> {
    let mut conn = Connection::open(log).store_err()?;
    conn.busy_timeout(busy_timeout).store_err()?;
    let mut removed = 0;
    let mut chunk: Vec<&Vec<u64>> = Vec::new();
    let mut rows = 0;
    let mut flush = |chunk: &mut Vec<&Vec<u64>>, conn: &mut Connection| -> Result<(), StoreError> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).store_err()?;
        {
            let mut delete = tx.prepare_cached("DELETE FROM events WHERE position = ?1").store_err()?;
            for position in chunk.iter().flat_map(|b| b.iter()) {
                removed += delete.execute([position]).store_err()?;
            }
        }
        tx.commit().store_err()?;
        chunk.clear();
        Ok(())
    };
    for build in builds {
        if rows + build.len() > ROWS_PER_TRANSACTION && !chunk.is_empty() {
            flush(&mut chunk, &mut conn)?;
            rows = 0;
        }
        rows += build.len();
        chunk.push(build);
    }
    if !chunk.is_empty() {
        flush(&mut chunk, &mut conn)?;
    }
    Ok(removed)
}

/// Writes the events `feed` hands over (in any order; a position given twice is kept once) into a
/// new log at `path`, for reading archived events as a log of their own; returns what `feed` did.
/// Nothing is held in memory but the event at hand.
pub fn scratch<T, E>(
    path: &Path,
    feed: impl FnOnce(&mut dyn FnMut(StoredEvent)) -> Result<T, E>,
) -> Result<Result<T, E>, StoreError> {
    let mut conn = Connection::open(path).store_err()?;
    conn.pragma_update(None, "journal_mode", "WAL").store_err()?;
    conn.pragma_update(None, "synchronous", "OFF").store_err()?;
    migrate(&mut conn)?;
    let tx = conn.transaction().store_err()?;
    let (fed, failed) = {
        let mut insert = tx
            .prepare(&format!(
                "INSERT OR IGNORE INTO events ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))
            .store_err()?;
        let mut failed = None;
        let mut put = |event: StoredEvent| {
            if failed.is_some() {
                return;
            }
            let row = Row {
                position: event.position,
                stream: &event.stream,
                version: event.version,
                id: &event.id,
                event_type: &event.event_type,
                schema_version: event.schema_version,
                data: &event.data,
                correlation_id: &event.correlation_id,
                causation_id: event.causation_id.as_ref(),
                recorded_at: event.recorded_at,
            };
            let inserted = row.insert(&mut insert);
            failed = inserted.err();
        };
        (feed(&mut put), failed)
    };
    if let Some(e) = failed {
        return Err(StoreError::caused("cannot write the scratch log", e));
    }
    if fed.is_ok() {
        tx.commit().store_err()?;
    }
    Ok(fed)
}
