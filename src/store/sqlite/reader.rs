//! Reading the SQLite log by position: pooled read-only connections on blocking threads, and
//! scans of the whole log on threads of their own. The store reads through one; the commands
//! that read beside a running gateway (`meshgate events`, `projections rebuild --verify`) open one
//! without the log's lock ([`Reader::open`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};

use super::reads::{query, read_all, read_range_decoded};
use crate::store::{Decoded, EventFilter, LogReader, Scan, StoreError, StoreResultExt, StoredEvent, SCAN_RANGE};

/// Connections kept for reuse at most, and reads (and stream-index lookups) on blocking threads at
/// once: a burst of deliveries that read their streams waits for a connection instead of starting
/// a thread and opening a connection each (each thread also keeps allocator arenas of its own).
const POOLED: usize = 8;
/// Threads reading and decoding a scan, each taking every other range.
const SCAN_READERS: u64 = 2;

/// Readers of one log file.
#[derive(Clone)]
pub struct Reader {
    path: PathBuf,
    pool: Arc<Mutex<Vec<Connection>>>,
    /// [`POOLED`] permits to run on a blocking thread.
    permits: Arc<tokio::sync::Semaphore>,
    /// Opened beside a gateway, without the log's lock: connections open the file read-only.
    /// The store's own open it as the writer does, restricted to queries.
    outside: bool,
}

impl Reader {
    /// Reads the log at `path` as it is, without its lock: beside a running gateway. Fails if
    /// there is no log there.
    pub fn open(path: &Path) -> Result<Reader, StoreError> {
        let reader = Reader { outside: true, ..Reader::beside(path) };
        let first = open_read_only(path)?;
        reader.pool.lock().unwrap_or_else(|p| p.into_inner()).push(first);
        Ok(reader)
    }

    /// Readers for the store that owns the log at `path`.
    pub(super) fn beside(path: &Path) -> Reader {
        Reader {
            path: path.to_owned(),
            pool: Arc::default(),
            permits: Arc::new(tokio::sync::Semaphore::new(POOLED)),
            outside: false,
        }
    }

    /// Runs `work` on a blocking thread once one of [`POOLED`] permits is free.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        // Owned by the work: a caller that goes away (a client hanging up) does not free the
        // permit while its read still runs.
        let permit = Arc::clone(&self.permits).acquire_owned().await.map_err(|_| StoreError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let done = work();
            drop(permit);
            done
        })
        .await
        .map_err(|e| StoreError::caused("reader task failed", e))
    }

    /// Runs `query` on a pooled connection, on a blocking thread.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.read_with(move |conn| query(conn).store_err()).await
    }

    /// Runs `query` on a pooled connection, on a blocking thread.
    pub(super) async fn read_with<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = Arc::clone(&self.pool);
        let (path, outside) = (self.path.clone(), self.outside);
        self.blocking(move || {
            let pooled = pool.lock().map(|mut pool| pool.pop()).unwrap_or(None);
            let conn = match pooled {
                Some(conn) => conn,
                None if outside => open_read_only(&path)?,
                None => {
                    let conn = Connection::open(&path).store_err()?;
                    conn.busy_timeout(Duration::from_secs(5)).store_err()?;
                    conn.pragma_update(None, "query_only", true).store_err()?;
                    conn
                }
            };
            let result = query(&conn);
            if let Ok(mut pool) = pool.lock() {
                if pool.len() < POOLED {
                    pool.push(conn);
                }
            }
            result
        })
        .await?
    }
}

/// A connection that only reads.
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .store_err()?;
    conn.busy_timeout(Duration::from_secs(5)).store_err()?;
    // No memory map: a whole-log scan (a rebuild, an audit) would map every page of the log and
    // count it as resident (2.2 GB at 10M events); reading through the page cache costs 5 %.
    Ok(conn)
}

#[async_trait]
impl LogReader for Reader {
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |conn| read_all(conn, after, limit)).await
    }

    /// Filters by type in the query and decodes from SQLite's row buffers, as a rebuild does.
    async fn read_decoded(&self, after: u64, limit: usize, wanted: &[&str]) -> Result<Decoded, StoreError> {
        let wanted: Vec<String> = wanted.iter().map(|t| (*t).to_owned()).collect();
        self.read_with(move |conn| {
            // One snapshot for both reads: every position up to the last one it holds is
            // committed (the writer assigns them in commit order), so the range has no gap that a
            // later commit could fill. The head is not used: it moves after the commit feed.
            let snapshot = conn.unchecked_transaction().store_err()?;
            let last: Option<u64> =
                snapshot.query_row("SELECT MAX(position) FROM events", [], |r| r.get(0)).store_err()?;
            let upto = last.unwrap_or(0).min(after.saturating_add(limit as u64));
            if upto <= after {
                return Ok((Vec::new(), after));
            }
            let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
            let decoded = read_range_decoded(&snapshot, after, upto, &wanted)?;
            snapshot.finish().store_err()?;
            Ok((decoded, upto))
        })
        .await
    }

    async fn query(&self, filter: &EventFilter, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let filter = filter.clone();
        self.read(move |conn| query(conn, &filter, after, limit)).await
    }

    async fn last_position(&self) -> Result<u64, StoreError> {
        self.read(|conn| conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| r.get(0))).await
    }

    /// Two threads, each on a connection of its own, read and decode alternate ranges ahead of
    /// the consumer (a few ranges each), which takes them in order.
    fn scan<'a>(&'a self, after: u64, until: u64, wanted: &'a [&'a str]) -> Scan<'a> {
        let ranges = until.saturating_sub(after).div_ceil(SCAN_RANGE);
        let wanted: Arc<[String]> = wanted.iter().map(|t| (*t).to_owned()).collect();
        let mut inputs = Vec::new();
        for first in 0..SCAN_READERS.min(ranges) {
            let (batches, input) = tokio::sync::mpsc::channel::<Result<Decoded, StoreError>>(4);
            inputs.push(input);
            let (path, wanted) = (self.path.clone(), Arc::clone(&wanted));
            let reading = move || {
                let conn = match open_read_only(&path) {
                    Ok(conn) => conn,
                    Err(e) => return drop(batches.blocking_send(Err(e))),
                };
                let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
                for range in (first..ranges).step_by(SCAN_READERS as usize) {
                    let from = after + range * SCAN_RANGE;
                    let upto = until.min(from + SCAN_RANGE);
                    let batch = read_range_decoded(&conn, from, upto, &wanted).map(|b| (b, upto));
                    let failed = batch.is_err();
                    // The consumer went away, or the read failed: stop.
                    if batches.blocking_send(batch).is_err() || failed {
                        break;
                    }
                }
            };
            if let Err(e) = std::thread::Builder::new().name("meshgate-scan".into()).spawn(reading) {
                return Box::pin(futures_util::stream::once(async move {
                    Err(StoreError::caused("cannot start a reader of the log", e))
                }));
            }
        }
        Box::pin(futures_util::stream::try_unfold((inputs, 0u64), move |(mut inputs, range)| async move {
            if range >= ranges {
                return Ok(None);
            }
            let input = &mut inputs[(range % SCAN_READERS) as usize];
            let batch = input.recv().await.ok_or_else(|| StoreError::failed("a reader of the log stopped early"))??;
            Ok(Some((batch, (inputs, range + 1))))
        }))
    }
}
