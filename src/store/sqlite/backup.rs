//! A consistent copy of a live log through SQLite's online backup API: every page copied in one
//! step under one read transaction, so the copy is the log as it stood at one commit, whatever the
//! writer does meanwhile, and the writer is never blocked (WAL mode).

use std::path::Path;

use rusqlite::backup::Backup;
use rusqlite::Connection;

use super::reader::open_read_only;
use crate::store::{StoreError, StoreResultExt};

/// Copies the log at `log` into a new file `to`; the last position the copy holds.
pub fn copy(log: &Path, to: &Path) -> Result<u64, StoreError> {
    if to.exists() {
        return Err(StoreError::failed(format!("{} exists; a backup is written to a new file", to.display())));
    }
    let source = open_read_only(log)?;
    let mut target = Connection::open(to).store_err()?;
    {
        let backup = Backup::new(&source, &mut target).store_err()?;
        // All pages at once: one read transaction, one consistent state.
        backup.step(-1).store_err()?;
    }
    // A self-contained file: no WAL beside it.
    target.pragma_update(None, "journal_mode", "DELETE").store_err()?;
    target.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| r.get(0)).store_err()
}

/// Whether the file at `path` is a log this version reads, and the last position it holds.
pub fn check(path: &Path) -> Result<u64, StoreError> {
    let conn = open_read_only(path)?;
    let layout: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).store_err()?;
    if layout == 0 || layout > super::SCHEMA_VERSION {
        return Err(StoreError::failed(format!(
            "{} is not an event log this meshgate reads (layout {layout})",
            path.display()
        )));
    }
    let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).store_err()?;
    if ok != "ok" {
        return Err(StoreError::failed(format!("{} is damaged: {ok}", path.display())));
    }
    conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| r.get(0)).store_err()
}
