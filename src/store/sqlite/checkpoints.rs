//! Projection checkpoints, in a SQLite file of their own beside the log.
//!
//! A checkpoint holds a projection's whole state (ADR 0003): with a long history that is hundreds
//! of megabytes. Written through the log's writer, a save held every delivery behind it (0.66 s
//! at about 200,000 builds). In their own file, with their own connection, saves never take the
//! log's write lock. Losing the last save costs only replay, so the file syncs at
//! `synchronous=NORMAL`.
//!
//! Logs of earlier versions kept checkpoints in their own `checkpoints` table; those are read
//! until the first save here. A checkpoint past the log's head (the log restored from an older
//! backup than the checkpoints) is dropped on load, so that projection is rebuilt from the log.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::store::{Checkpoint, StoreError, StoreResultExt};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS checkpoints (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    state    TEXT    NOT NULL,
    saved_at TEXT    NOT NULL
) WITHOUT ROWID;
";

/// The checkpoint file of the log at `log`: `events.sqlite` → `events.checkpoints.sqlite`.
pub fn path_for(log: &Path) -> PathBuf {
    log.with_extension("checkpoints.sqlite")
}

/// The checkpoint file, open for writing by the process that holds the log's lock.
pub(super) struct CheckpointFile {
    conn: Mutex<Connection>,
}

impl CheckpointFile {
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).store_err()?;
        // Whole states are large: big pages, as for the log.
        conn.pragma_update(None, "page_size", super::PAGE_SIZE).store_err()?;
        conn.pragma_update(None, "journal_mode", "WAL").store_err()?;
        conn.pragma_update(None, "synchronous", "NORMAL").store_err()?;
        conn.busy_timeout(Duration::from_secs(5)).store_err()?;
        conn.execute_batch(SCHEMA).store_err()?;
        Ok(CheckpointFile { conn: Mutex::new(conn) })
    }

    /// Saves every checkpoint in one transaction.
    pub(super) fn save(&self, checkpoints: &[Checkpoint]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Utc::now().to_rfc3339();
        let tx = conn.transaction().store_err()?;
        for c in checkpoints {
            tx.execute(
                "INSERT INTO checkpoints (name, position, state, saved_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET
                   position = excluded.position, state = excluded.state, saved_at = excluded.saved_at",
                params![c.name, c.position, c.state, now],
            )
            .store_err()?;
        }
        tx.commit().store_err()
    }

    pub(super) fn load(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        read_table(&conn).store_err()
    }
}

/// The checkpoints saved for the log at `log` (read-only, for the CLI): from the checkpoint file,
/// or from the log's own table if the file has none yet; without those past `head`.
pub fn read(log: &Path, log_conn: &Connection, head: u64) -> Result<Vec<Checkpoint>, StoreError> {
    let path = path_for(log);
    let saved = if path.exists() {
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).store_err()?;
        conn.busy_timeout(Duration::from_secs(5)).store_err()?;
        read_table(&conn).store_err()?
    } else {
        Vec::new()
    };
    let saved = if saved.is_empty() { legacy(log_conn).store_err()? } else { saved };
    Ok(within(saved, head))
}

/// Checkpoints kept in the log itself by earlier versions.
pub(super) fn legacy(log_conn: &Connection) -> rusqlite::Result<Vec<Checkpoint>> {
    let exists: Option<String> = log_conn
        .query_row("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'checkpoints'", [], |r| r.get(0))
        .optional()?;
    match exists {
        Some(_) => read_table(log_conn),
        None => Ok(Vec::new()),
    }
}

/// Drops checkpoints past the log's head: the log is older than they are.
pub(super) fn within(checkpoints: Vec<Checkpoint>, head: u64) -> Vec<Checkpoint> {
    checkpoints
        .into_iter()
        .filter(|c| {
            let ahead = c.position > head;
            if ahead {
                tracing::warn!(
                    projection = %c.name,
                    checkpoint = c.position,
                    head,
                    "checkpoint is past the end of the log (restored from an older backup?); rebuilding it"
                );
            }
            !ahead
        })
        .collect()
}

fn read_table(conn: &Connection) -> rusqlite::Result<Vec<Checkpoint>> {
    let mut stmt = conn.prepare("SELECT name, position, state FROM checkpoints")?;
    let rows = stmt.query_map([], |r| Ok(Checkpoint { name: r.get(0)?, position: r.get(1)?, state: r.get(2)? }))?;
    rows.collect()
}
