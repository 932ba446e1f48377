//! The embedded default: SQLite in WAL mode with `synchronous=FULL`, one writer thread doing group
//! commit, and a small pool of reader connections.
//!
//! The writer takes every request waiting in its queue (up to `max_batch`), runs each in its own
//! savepoint inside one transaction, commits once, and only then answers every caller. A request
//! that fails (a version conflict) rolls back to its savepoint without spoiling the batch; a commit
//! that fails answers every request of the batch with an error. Global positions are assigned by
//! the single writer, so they increase in commit order without gaps; `meshgate log archive` later
//! removes whole finished builds' rows, never the last one, so a position is never given twice.
//!
//! The `events` table is append-only and carries no secondary index: expected versions are checked
//! against the stream index, which the writer owns (a lock file keeps every other process from
//! appending): recent and active streams in memory ([`index::StreamIndex`]), every stream in a file
//! beside the log that lags it by at most a flush ([`streams`]). ADR 0006 says why.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{broadcast, oneshot, watch};
use uuid::Uuid;

pub mod archive;
pub mod backup;
mod checkpointer;
mod index;
mod indexer;
mod reader;
mod reads;
mod streams;
mod writer;

use index::{StreamIndex, StreamKey};
pub use reader::{open_read_only, Reader};
use reads::row_to_event;
pub use reads::{query, read_all, read_range_decoded};
use writer::WriteRequest;

use super::{
    Appended, Committed, Decoded, EventFilter, EventStore, LogReader, Scan, StoreError, StoreResultExt, StoredEvent,
    StreamAppend,
};

/// Page size of a new log (docs/benchmarks.md).
const PAGE_SIZE: i64 = 16 * 1024;

/// The log's layout; `PRAGMA user_version` says which one a file has.
pub const SCHEMA_VERSION: i64 = 2;

/// The events table. Append-only and without secondary indexes: every append writes at the end of
/// one B-tree. Streams are found through the in-memory index; audit queries by correlation id or
/// type (`meshgate events`) scan the log.
const EVENTS_TABLE: &str = "
    position       INTEGER PRIMARY KEY,
    stream         TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    id             BLOB    NOT NULL,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           TEXT    NOT NULL,
    correlation_id BLOB    NOT NULL,
    causation_id   BLOB,
    recorded_at    INTEGER NOT NULL
";

const COLUMNS: &str =
    "position, stream, version, id, type, schema_version, data, correlation_id, causation_id, recorded_at";

/// One event's row of the events table, as the writer appends it and the scratch log of archived
/// events copies it (`INSERT … INTO events ({COLUMNS}) VALUES (?1, …, ?10)`).
struct Row<'a> {
    position: u64,
    stream: &'a str,
    version: u64,
    id: &'a Uuid,
    event_type: &'a str,
    schema_version: u32,
    data: &'a str,
    correlation_id: &'a Uuid,
    causation_id: Option<&'a Uuid>,
    recorded_at: chrono::DateTime<chrono::Utc>,
}

impl Row<'_> {
    /// Runs `insert` (an `INSERT` of [`COLUMNS`] in their order) with this row.
    fn insert(&self, insert: &mut rusqlite::Statement<'_>) -> rusqlite::Result<usize> {
        insert.execute(rusqlite::params![
            self.position,
            self.stream,
            self.version,
            self.id.as_bytes().as_slice(),
            self.event_type,
            self.schema_version,
            self.data,
            self.correlation_id.as_bytes().as_slice(),
            self.causation_id.map(|c| c.as_bytes().as_slice()),
            self.recorded_at.timestamp_micros(),
        ])
    }
}

/// How the writer commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    /// Most requests folded into one commit; 1 means one commit per request.
    pub max_batch: usize,
    /// How long a write waits for a lock held by another process before failing.
    pub busy_timeout: Duration,
    /// Under load, how long a batch may wait for requests on their way before it commits.
    pub linger: Duration,
    /// Streams the writer keeps in memory beyond those appended since the last flush of the
    /// stream index (least recently used evicted first); the rest are read from its file.
    pub index_capacity: usize,
    /// Streams appended that make the writer flush the stream index to its file.
    pub index_flush_streams: usize,
    /// Longest time appended streams wait for that flush.
    pub index_flush_interval: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_batch: 512,
            busy_timeout: Duration::from_secs(5),
            linger: Duration::from_micros(1000),
            index_capacity: 65_536,
            index_flush_streams: 65_536,
            index_flush_interval: Duration::from_secs(1),
        }
    }
}

/// The SQLite event store.
pub struct SqliteStore {
    writer: std::sync::mpsc::Sender<WriteRequest>,
    readers: Reader,
    head: watch::Receiver<u64>,
    index: Arc<RwLock<StreamIndex>>,
    /// The stream index on disk, for streams the writer does not hold in memory.
    index_file: streams::IndexFile,
    feed: broadcast::Sender<Committed>,
    /// Joined when the store is dropped: the writer flushes the stream index before it ends.
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

/// Committed batches a slow follower may fall behind by before it has to read the log instead.
const FEED_CAPACITY: usize = 64;

/// The writer's connection, set up.
fn writer_connection(path: &Path, options: &WriterOptions) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    // For a new log only (a log keeps the page size it was created with). A delivery's rows
    // take about 3 KiB, half of it the received body's event: on 4 KiB pages a page held one
    // delivery and a third of every page was left empty; 16 KiB pages hold five.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(options.busy_timeout)?;
    // Savepoints journal the pages they change; keep that journal in memory.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoints run on their own thread, never inside a group commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // A WAL that grew while readers held it is cut back to this when it starts over.
    conn.pragma_update(None, "journal_size_limit", 64i64 << 20)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the log at `path` and starts its writer thread. Fails if another
    /// process has the log open for writing.
    pub fn open(path: &Path, options: WriterOptions) -> Result<Self, StoreError> {
        let lock = lock_exclusively(path, options.busy_timeout)?;
        // Opening a log whose WAL must be recovered can meet SQLite's `SQLITE_PROTOCOL` (its
        // WAL-index locks contended while it recovers); SQLite's advice is to try again.
        let mut tries = 0;
        let mut conn = loop {
            match writer_connection(path, &options) {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::FileLockingProtocolFailed && tries < 10 =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => break opened.store_err()?,
            }
        };
        migrate(&mut conn)?;
        let (indexer, head) = indexer::Indexer::open(path, &conn, &options)?;
        let index = Arc::clone(&indexer.shared);
        let index_file = indexer.file.clone();
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let writer::Spawned { queue: writer, head, thread } =
            writer::spawn(conn, lock, path, indexer, feed.clone(), head, options)?;
        Ok(SqliteStore {
            writer,
            readers: Reader::beside(path),
            head,
            index,
            index_file,
            feed,
            writer_thread: Some(thread),
        })
    }

    /// A stream's positions: those the writer holds in memory, else those of the index on disk.
    /// A stream evicted from memory was on disk whole before it was evicted, so a miss that finds
    /// nothing there means the stream did not exist when the lookup began.
    async fn positions(&self, stream: &str) -> Result<Vec<u64>, StoreError> {
        let key = StreamKey::of(stream);
        let cached = self.index.read().unwrap_or_else(|poisoned| poisoned.into_inner()).cached(key);
        if let Some(positions) = cached {
            return Ok(positions);
        }
        let file = self.index_file.clone();
        let found = self.readers.blocking(move || file.lookup(key)).await??;
        Ok(found.map(|p| p.to_vec()).unwrap_or_default())
    }

    async fn write(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Appended, StoreError>>) -> WriteRequest,
    ) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer.send(make(reply)).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for SqliteStore {
    /// Waits for the writer to finish: it answers what is queued and flushes the stream index, so
    /// the next open reads no tail of the log again.
    fn drop(&mut self) {
        let (closed, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.writer, closed));
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

#[async_trait]
impl LogReader for SqliteStore {
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.readers.read_all(after, limit).await
    }

    async fn read_decoded(&self, after: u64, limit: usize, wanted: &[&str]) -> Result<Decoded, StoreError> {
        self.readers.read_decoded(after, limit, wanted).await
    }

    async fn query(&self, filter: &EventFilter, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.readers.query(filter, after, limit).await
    }

    async fn last_position(&self) -> Result<u64, StoreError> {
        Ok(*self.head.borrow())
    }

    fn scan<'a>(&'a self, after: u64, until: u64, wanted: &'a [&'a str]) -> Scan<'a> {
        self.readers.scan(after, until, wanted)
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(&self, appends: Vec<StreamAppend>) -> Result<Appended, StoreError> {
        self.write(|reply| WriteRequest::Append { appends, reply }).await
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let positions = self.positions(stream).await?;
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let stream = stream.to_owned();
        self.readers
            .read_with(move |conn| {
                let mut stmt =
                    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM events WHERE position = ?1")).store_err()?;
                let mut events = Vec::new();
                for position in positions {
                    // A position archived since (`meshgate log archive`) is no longer in the log.
                    let Some(event) = stmt.query_row([position], row_to_event).optional().store_err()? else {
                        continue;
                    };
                    // The index keys streams by a hash of their name; the row has the name itself.
                    if event.stream == stream {
                        events.push(event);
                    }
                }
                Ok(events)
            })
            .await
    }

    async fn read_last(&self, stream: &str) -> Result<Option<StoredEvent>, StoreError> {
        let positions = self.positions(stream).await?;
        if positions.is_empty() {
            return Ok(None);
        }
        let stream = stream.to_owned();
        self.readers
            .read_with(move |conn| {
                let mut stmt =
                    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM events WHERE position = ?1")).store_err()?;
                // Newest first; a row of another stream sharing the name's hash is passed over.
                for position in positions.into_iter().rev() {
                    let Some(event) = stmt.query_row([position], row_to_event).optional().store_err()? else {
                        continue;
                    };
                    if event.stream == stream {
                        return Ok(Some(event));
                    }
                }
                Ok(None)
            })
            .await
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    fn committed(&self) -> Option<broadcast::Receiver<Committed>> {
        Some(self.feed.subscribe())
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.write(|reply| WriteRequest::Ping { reply }).await.map(|_| ())
    }

    /// One appender: the log's lock file keeps every other process out, so this gateway's term
    /// (0) is the only one there is.
    async fn append_fenced(&self, appends: Vec<StreamAppend>, term: i64) -> Result<Appended, StoreError> {
        debug_assert_eq!(term, 0, "the SQLite log has a single term");
        self.append(appends).await
    }
}

/// What a lookup in the stream index on disk costs (the writer's miss), for the benchmark: the mean
/// time to find `samples` streams of the log, and to learn that as many do not exist. Takes the
/// log's lock: no gateway may be running.
pub fn index_lookup_cost(path: &Path, samples: usize) -> Result<(Duration, Duration), StoreError> {
    let _lock = lock_log(path)?;
    let conn = Connection::open(path).store_err()?;
    let (index, flushed) = streams::IndexFile::open(&streams::path_for(path), &conn)?;
    let mut names = Vec::with_capacity(samples);
    {
        let mut stmt =
            conn.prepare("SELECT stream FROM events WHERE position = ?1 * 2654435761 % ?2 + 1").store_err()?;
        for n in 0..samples as u64 {
            names.push(stmt.query_row(params![n, flushed.max(1)], |r| r.get::<_, String>(0)).store_err()?);
        }
    }
    let time = |names: &[String], expect_found: bool| -> Result<Duration, StoreError> {
        let keys: Vec<StreamKey> = names.iter().map(|n| StreamKey::of(n)).collect();
        let started = std::time::Instant::now();
        for key in keys {
            if index.lookup(key)?.is_some() != expect_found {
                return Err(StoreError::failed("the stream index answered a lookup wrongly"));
            }
        }
        Ok(started.elapsed() / names.len().max(1) as u32)
    };
    let present = time(&names, true)?;
    let absent: Vec<String> = (0..samples).map(|n| format!("delivery-absent-{n}")).collect();
    Ok((present, time(&absent, false)?))
}

/// Holds the log's lock file: no gateway appends while the returned file is open (a rebuild
/// replacing the read model takes it).
pub fn lock_log(path: &Path) -> Result<std::fs::File, StoreError> {
    lock_exclusively(path, Duration::ZERO)
}

/// Takes the lock file beside the log, waiting up to `patience` for a store closing in this
/// process to let go of it.
fn lock_exclusively(path: &Path, patience: Duration) -> Result<std::fs::File, StoreError> {
    let lock_path = path.with_extension("sqlite.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::caused(format_args!("cannot open the lock file {}", lock_path.display()), e))?;
    let deadline = std::time::Instant::now() + patience;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::failed(format!(
                    "{} is in use by another process (lock file {}); stop it first",
                    path.display(),
                    lock_path.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::caused(format_args!("cannot lock {}", lock_path.display()), e))
            }
        }
    }
}

/// Creates the tables, or brings a log written by an earlier version to the current layout.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    // Immediate: a store closing in this process may still be checkpointing; wait for it.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).store_err()?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0)).store_err()?;
    let exists: bool = tx
        .query_row("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events')", [], |r| {
            r.get(0)
        })
        .store_err()?;
    if !exists {
        tx.execute_batch(&format!("CREATE TABLE events ({EVENTS_TABLE});")).store_err()?;
    } else if version < SCHEMA_VERSION {
        // Layout 1 had a unique (stream, version) index; the rows are the same.
        tracing::info!(from = version, to = SCHEMA_VERSION, "upgrading the event log's layout");
        tx.execute_batch(&format!(
            "CREATE TABLE events_v2 ({EVENTS_TABLE});
             INSERT INTO events_v2 SELECT {COLUMNS} FROM events ORDER BY position;
             DROP TABLE events;
             ALTER TABLE events_v2 RENAME TO events;"
        ))
        .store_err()?;
    } else if version > SCHEMA_VERSION {
        return Err(StoreError::failed(format!(
            "the event log has layout {version}, newer than this meshgate understands ({SCHEMA_VERSION})"
        )));
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION).store_err()?;
    tx.commit().store_err()
}
