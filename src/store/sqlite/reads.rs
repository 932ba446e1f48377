//! Reads of the SQLite log on any connection (the pool's, a read-only one, the writer's): ranges
//! of positions, decoded ranges of some types, and audit queries.

use chrono::DateTime;
use meshgate_domain::audit::{ABOUT_A_BUILD, BUILD_REQUESTED};
use meshgate_domain::stream::{BUILD_PREFIX, INTENT_PREFIX};
use rusqlite::{params, Connection};
use uuid::Uuid;

use super::COLUMNS;
use crate::store::{EventFilter, StoreError, StoreResultExt, StoredEvent};

/// Up to `limit` events after `after`, on any connection.
pub fn read_all(conn: &Connection, after: u64, limit: usize) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"))?;
    let rows = stmt.query_map(params![after, limit as i64], row_to_event)?;
    rows.collect()
}

/// The events in positions `after + 1 ..= upto` whose type is in `wanted`, decoded, in position
/// order. Positions only grow (archived builds leave gaps), so a caller that reads a range has
/// seen every event in it.
/// Data is decoded straight from SQLite's row buffer: a rebuild copies no event text.
pub fn read_range_decoded(
    conn: &Connection,
    after: u64,
    upto: u64,
    wanted: &[&str],
) -> Result<Vec<meshgate_domain::Recorded>, StoreError> {
    let list = wanted.iter().map(|t| format!("'{}'", t.replace('\'', "''"))).collect::<Vec<_>>().join(", ");
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT position, stream, version, type, schema_version, data, correlation_id, recorded_at
             FROM events WHERE position > ?1 AND position <= ?2 AND type IN ({list}) ORDER BY position"
        ))
        .store_err()?;
    let mut rows = stmt.query(params![after, upto]).store_err()?;
    let mut decoded = Vec::new();
    while let Some(row) = rows.next().store_err()? {
        let position: u64 = row.get(0).store_err()?;
        let text = |i: usize| row.get_ref(i).and_then(|v| Ok(v.as_str()?)).store_err();
        let event = meshgate_domain::Event::decode(text(3)?, row.get(4).store_err()?, text(5)?)
            .map_err(|e| StoreError::caused(format_args!("event at position {position}"), e))?;
        let correlation = row.get_ref(6).and_then(|v| Ok(v.as_blob()?)).store_err()?;
        let recorded_at: i64 = row.get(7).store_err()?;
        decoded.push(meshgate_domain::Recorded {
            position,
            stream: text(1)?.to_owned(),
            version: row.get(2).store_err()?,
            event,
            correlation_id: Uuid::from_slice(correlation).store_err()?,
            recorded_at: DateTime::from_timestamp_micros(recorded_at)
                .ok_or_else(|| StoreError::failed(format!("event at position {position}: timestamp out of range")))?,
        });
    }
    Ok(decoded)
}

/// Up to `limit` events after `after` matching every given filter, in log order. An issue
/// matches the events that name it, every event of its intents' and builds' streams, and the
/// notification attempts and pages about its builds (they carry the build's id, not the issue's).
pub fn query(conn: &Connection, filter: &EventFilter, after: u64, limit: usize) -> rusqlite::Result<Vec<StoredEvent>> {
    // The names the question asks for are the domain's (`meshgate_domain::audit`).
    let about_a_build = ABOUT_A_BUILD.map(|t| format!("'{t}'")).join(", ");
    let sql = format!(
        "SELECT {COLUMNS} FROM events
         WHERE position > ?6
           AND (?1 IS NULL
                OR json_extract(data, '$.issue_id') = ?1
                OR stream LIKE '{INTENT_PREFIX}' || ?1 || '/%'
                OR stream IN (SELECT stream FROM events
                              WHERE type = '{BUILD_REQUESTED}' AND json_extract(data, '$.issue_id') = ?1)
                OR (type IN ({about_a_build})
                    AND json_extract(data, '$.build_id') IN
                        (SELECT json_extract(data, '$.build_id') FROM events
                         WHERE type = '{BUILD_REQUESTED}' AND json_extract(data, '$.issue_id') = ?1)))
           AND (?5 IS NULL OR stream = '{BUILD_PREFIX}' || ?5 OR json_extract(data, '$.build_id') = ?5)
           AND (?2 IS NULL OR stream = ?2)
           AND (?3 IS NULL OR correlation_id = ?3)
           AND (?4 IS NULL OR type = ?4)
         ORDER BY position
         LIMIT ?7"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(
        params![
            filter.issue,
            filter.stream,
            filter.correlation_id.map(|c| c.as_bytes().to_vec()),
            filter.event_type,
            filter.build.map(|b| b.to_string()),
            after,
            limit.min(i64::MAX as usize) as i64
        ],
        row_to_event,
    )?;
    rows.collect()
}

pub(super) fn row_to_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    let invalid = |i: usize, message: &str| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, message.to_owned().into())
    };
    let uuid = |i: usize| -> rusqlite::Result<Uuid> {
        let bytes = row.get_ref(i)?.as_blob()?;
        Uuid::from_slice(bytes).map_err(|_| invalid(i, "not a uuid"))
    };
    let causation = row.get_ref(8)?.as_blob_or_null()?;
    let recorded_at: i64 = row.get(9)?;
    Ok(StoredEvent {
        position: row.get(0)?,
        stream: row.get(1)?,
        version: row.get(2)?,
        id: uuid(3)?,
        event_type: row.get(4)?,
        schema_version: row.get(5)?,
        data: row.get(6)?,
        correlation_id: uuid(7)?,
        causation_id: causation.and_then(|c| Uuid::from_slice(c).ok()),
        recorded_at: DateTime::from_timestamp_micros(recorded_at)
            .ok_or_else(|| invalid(9, "timestamp out of range"))?,
    })
}
