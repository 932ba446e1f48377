//! The embedded default: SQLite in WAL mode with `synchronous=FULL`, one writer thread doing group
//! commit, and a small pool of reader connections.
//!
//! The writer takes every request waiting in its queue (up to `max_batch`), runs each in its own
//! savepoint inside one transaction, commits once, and only then answers every caller. A request
//! that fails (a version conflict) rolls back to its savepoint without spoiling the batch; a commit
//! that fails answers every request of the batch with an error. Global positions are assigned by
//! the single writer, so they are gap-free and increase in commit order.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use meshgate_domain::ExpectedVersion;
use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::{Appended, Checkpoint, EventStore, StoreError, StoreResultExt, StoredEvent, StreamAppend};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY,
    stream         TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    id             BLOB    NOT NULL,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           TEXT    NOT NULL,
    correlation_id BLOB    NOT NULL,
    causation_id   BLOB,
    recorded_at    INTEGER NOT NULL,
    UNIQUE (stream, version)
);
-- No index on correlation_id: it cost a third of the append rate (docs/benchmarks.md), and audit
-- queries by correlation id (`meshgate events --correlation`) scan the log instead.
CREATE TABLE IF NOT EXISTS checkpoints (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    state    TEXT    NOT NULL,
    saved_at TEXT    NOT NULL
) WITHOUT ROWID;
";

const COLUMNS: &str =
    "position, stream, version, id, type, schema_version, data, correlation_id, causation_id, recorded_at";

/// How the writer commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    /// Most requests folded into one commit; 1 means one commit per request.
    pub max_batch: usize,
    /// How long a write waits for a lock held by another process before failing.
    pub busy_timeout: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions { max_batch: 512, busy_timeout: Duration::from_secs(5) }
    }
}

enum WriteRequest {
    Append { appends: Vec<StreamAppend>, reply: oneshot::Sender<Result<Appended, StoreError>> },
    SaveCheckpoints { checkpoints: Vec<Checkpoint>, reply: oneshot::Sender<Result<Appended, StoreError>> },
    Ping { reply: oneshot::Sender<Result<Appended, StoreError>> },
}

/// The SQLite event store.
pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<WriteRequest>,
    readers: Arc<Mutex<Vec<Connection>>>,
    head: watch::Receiver<u64>,
}

impl SqliteStore {
    /// Opens (creating if needed) the log at `path` and starts its writer thread.
    pub fn open(path: &Path, options: WriterOptions) -> Result<Self, StoreError> {
        let conn = Connection::open(path).store_err()?;
        conn.pragma_update(None, "journal_mode", "WAL").store_err()?;
        conn.pragma_update(None, "synchronous", "FULL").store_err()?;
        conn.busy_timeout(options.busy_timeout).store_err()?;
        // Savepoints journal the pages they change; keep that journal in memory.
        conn.pragma_update(None, "temp_store", "MEMORY").store_err()?;
        // Checkpoints run on their own thread (below), never inside a group commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0).store_err()?;
        conn.execute_batch(SCHEMA).store_err()?;
        let checkpointer = Checkpointer::start(path)?;
        let head: u64 =
            conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| r.get(0)).store_err()?;
        let (head_tx, head_rx) = watch::channel(head);
        let (tx, rx) = mpsc::channel(8192);
        let max_batch = options.max_batch.max(1);
        std::thread::Builder::new()
            .name("meshgate-sqlite-writer".into())
            .spawn(move || {
                Writer { conn, next_position: head + 1, head: head_tx, max_batch, checkpointer, unchecked_bytes: 0 }
                    .run(rx)
            })
            .map_err(|e| StoreError::Failed(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore { path: path.to_owned(), writer: tx, readers: Arc::default(), head: head_rx })
    }

    /// Opens the log for reading only (audit queries from the CLI).
    pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .store_err()?;
        conn.busy_timeout(Duration::from_secs(5)).store_err()?;
        // Whole-log scans (rebuilds, audits) read pages in place instead of copying them.
        conn.pragma_update(None, "mmap_size", 1i64 << 34).store_err()?;
        Ok(conn)
    }

    async fn write(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Appended, StoreError>>) -> WriteRequest,
    ) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer.send(make(reply)).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = Arc::clone(&self.readers);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().map(|mut pool| pool.pop()).unwrap_or(None);
            let conn = match pooled {
                Some(conn) => conn,
                None => {
                    let conn = Connection::open(&path).store_err()?;
                    conn.busy_timeout(Duration::from_secs(5)).store_err()?;
                    conn.pragma_update(None, "query_only", true).store_err()?;
                    conn
                }
            };
            let result = query(&conn).store_err();
            if let Ok(mut pool) = readers.lock() {
                if pool.len() < 8 {
                    pool.push(conn);
                }
            }
            result
        })
        .await
        .map_err(|e| StoreError::Failed(format!("reader task failed: {e}")))?
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(&self, appends: Vec<StreamAppend>) -> Result<Appended, StoreError> {
        self.write(|reply| WriteRequest::Append { appends, reply }).await
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let stream = stream.to_owned();
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {COLUMNS} FROM events WHERE stream = ?1 ORDER BY version"))?;
            let rows = stmt.query_map([stream], row_to_event)?;
            rows.collect()
        })
        .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |conn| read_all(conn, after, limit)).await
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.write(|reply| WriteRequest::Ping { reply }).await.map(|_| ())
    }

    async fn load_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare("SELECT name, position, state FROM checkpoints")?;
            let rows =
                stmt.query_map([], |r| Ok(Checkpoint { name: r.get(0)?, position: r.get(1)?, state: r.get(2)? }))?;
            rows.collect()
        })
        .await
    }

    async fn save_checkpoints(&self, checkpoints: Vec<Checkpoint>) -> Result<(), StoreError> {
        self.write(|reply| WriteRequest::SaveCheckpoints { checkpoints, reply }).await.map(|_| ())
    }
}

/// Up to `limit` events after `after`, on any connection.
pub fn read_all(conn: &Connection, after: u64, limit: usize) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"))?;
    let rows = stmt.query_map(params![after, limit as i64], row_to_event)?;
    rows.collect()
}

/// The events in positions `after + 1 ..= upto` whose type is in `wanted`, in position order.
/// Positions are gap-free, so a caller that reads a range has seen every position in it.
pub fn read_range_of_types(
    conn: &Connection,
    after: u64,
    upto: u64,
    wanted: &[&str],
) -> rusqlite::Result<Vec<StoredEvent>> {
    let list = wanted.iter().map(|t| format!("'{}'", t.replace('\'', "''"))).collect::<Vec<_>>().join(", ");
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM events WHERE position > ?1 AND position <= ?2 AND type IN ({list}) ORDER BY position"
    ))?;
    let rows = stmt.query_map(params![after, upto], row_to_event)?;
    rows.collect()
}

/// Filters for audit queries over the whole log.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub issue: Option<String>,
    pub stream: Option<String>,
    pub correlation_id: Option<Uuid>,
    pub event_type: Option<String>,
}

/// Events matching every given filter, in log order. An issue matches the events that name it and
/// every event of its intents' and builds' streams.
pub fn query(conn: &Connection, filter: &EventFilter) -> rusqlite::Result<Vec<StoredEvent>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM events
         WHERE (?1 IS NULL
                OR json_extract(data, '$.issue_id') = ?1
                OR stream LIKE 'intent-' || ?1 || '/%'
                OR stream IN (SELECT stream FROM events
                              WHERE type = 'BuildRequested' AND json_extract(data, '$.issue_id') = ?1))
           AND (?2 IS NULL OR stream = ?2)
           AND (?3 IS NULL OR correlation_id = ?3)
           AND (?4 IS NULL OR type = ?4)
         ORDER BY position"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(
        params![filter.issue, filter.stream, filter.correlation_id.map(|c| c.as_bytes().to_vec()), filter.event_type],
        row_to_event,
    )?;
    rows.collect()
}

/// Checkpoints saved in a log, read directly (for the CLI).
pub fn checkpoints(conn: &Connection) -> rusqlite::Result<Vec<Checkpoint>> {
    let mut stmt = conn.prepare("SELECT name, position, state FROM checkpoints")?;
    let rows = stmt.query_map([], |r| Ok(Checkpoint { name: r.get(0)?, position: r.get(1)?, state: r.get(2)? }))?;
    rows.collect()
}

fn row_to_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
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

struct Writer {
    conn: Connection,
    next_position: u64,
    head: watch::Sender<u64>,
    max_batch: usize,
    checkpointer: Checkpointer,
    /// Bytes appended since the checkpointer was last asked to run.
    unchecked_bytes: usize,
}

/// Copies the WAL back into the database on its own connection and thread, so that no group
/// commit waits for a checkpoint. Passive checkpoints never block the writer.
struct Checkpointer {
    wake: std::sync::mpsc::SyncSender<()>,
}

/// Bytes appended between two checkpoint requests.
const CHECKPOINT_EVERY_BYTES: usize = 4 << 20;

impl Checkpointer {
    fn start(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).store_err()?;
        conn.busy_timeout(Duration::from_secs(5)).store_err()?;
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("meshgate-ckpt".into())
            .spawn(move || {
                // Ends when the writer (the only sender) is gone.
                while woken.recv().is_ok() {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::warn!(error = %e, "wal checkpoint failed");
                    }
                }
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            })
            .map_err(|e| StoreError::Failed(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { wake })
    }

    fn request(&self) {
        // A full channel means a checkpoint is already due.
        let _ = self.wake.try_send(());
    }
}

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

impl Writer {
    fn run(mut self, mut requests: mpsc::Receiver<WriteRequest>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(first) = requests.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch.drain(..));
        }
    }

    fn commit_batch(&mut self, batch: impl Iterator<Item = WriteRequest>) {
        let mut answers: Vec<(Reply, Result<Appended, StoreError>)> = Vec::new();
        let started = std::time::Instant::now();
        let begun = self.conn.execute_batch("BEGIN IMMEDIATE").store_err();
        for request in batch {
            let (reply, work): (Reply, Work) = match request {
                WriteRequest::Append { appends, reply } => (reply, Work::Append(appends)),
                WriteRequest::SaveCheckpoints { checkpoints, reply } => (reply, Work::Checkpoints(checkpoints)),
                WriteRequest::Ping { reply } => (reply, Work::Ping),
            };
            if let Err(e) = &begun {
                answers.push((reply, Err(e.clone())));
                continue;
            }
            let result = self.in_savepoint(work);
            answers.push((reply, result));
        }
        let work_us = started.elapsed().as_micros() as u64;
        if begun.is_ok() {
            if let Err(e) = self.conn.execute_batch("COMMIT").store_err() {
                tracing::error!(error = %e, "event store commit failed; the batch is refused");
                let _ = self.conn.execute_batch("ROLLBACK");
                self.next_position = self.committed_head().unwrap_or(self.next_position) + 1;
                for (_, result) in &mut answers {
                    if result.is_ok() {
                        *result = Err(e.clone());
                    }
                }
            }
        }
        self.head.send_if_modified(|head| {
            let committed = self.next_position - 1;
            let moved = *head != committed;
            *head = committed;
            moved
        });
        tracing::trace!(
            requests = answers.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            work_us,
            "group commit"
        );
        if self.unchecked_bytes >= CHECKPOINT_EVERY_BYTES {
            self.unchecked_bytes = 0;
            self.checkpointer.request();
        }
        for (reply, result) in answers {
            let _ = reply.send(result);
        }
    }

    fn committed_head(&self) -> Option<u64> {
        self.conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| r.get(0)).ok()
    }

    fn in_savepoint(&mut self, work: Work) -> Result<Appended, StoreError> {
        self.conn.prepare_cached("SAVEPOINT request").and_then(|mut s| s.execute([])).store_err()?;
        let start = self.next_position;
        let result = match work {
            Work::Append(appends) => self.append(&appends),
            Work::Checkpoints(checkpoints) => self.save_checkpoints(&checkpoints),
            Work::Ping => Ok(Appended { last_position: start - 1 }),
        };
        match &result {
            Ok(_) => {
                self.conn.prepare_cached("RELEASE request").and_then(|mut s| s.execute([])).store_err()?;
            }
            Err(_) => {
                self.next_position = start;
                self.conn.execute_batch("ROLLBACK TO request; RELEASE request").store_err()?;
            }
        }
        result
    }

    fn append(&mut self, appends: &[StreamAppend]) -> Result<Appended, StoreError> {
        for append in appends {
            // "No stream" needs no read: the first insert at version 0 fails on the unique
            // (stream, version) index if the stream exists (see `conflict_on_unique` below).
            let current: Option<u64> = match append.expected {
                ExpectedVersion::NoStream => None,
                _ => self.current_version(&append.stream)?,
            };
            if !append.expected.is_satisfied_by(current) {
                return Err(StoreError::Conflict {
                    stream: append.stream.clone(),
                    expected: append.expected,
                    actual: current,
                });
            }
            let first_version = current.map_or(0, |v| v + 1);
            let mut insert = self
                .conn
                .prepare_cached(&format!(
                    "INSERT INTO events ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                ))
                .store_err()?;
            for (version, event) in (first_version..).zip(&append.events) {
                let inserted = insert.execute(params![
                    self.next_position,
                    append.stream,
                    version,
                    event.id.as_bytes().as_slice(),
                    event.event_type,
                    event.schema_version,
                    event.data,
                    event.correlation_id.as_bytes().as_slice(),
                    event.causation_id.as_ref().map(|c| c.as_bytes().as_slice()),
                    event.recorded_at.timestamp_micros(),
                ]);
                if let Err(e) = inserted {
                    if is_unique_violation(&e) {
                        let actual = self.current_version(&append.stream)?;
                        return Err(StoreError::Conflict {
                            stream: append.stream.clone(),
                            expected: append.expected,
                            actual,
                        });
                    }
                    return Err(StoreError::Failed(e.to_string()));
                }
                self.next_position += 1;
                self.unchecked_bytes += event.data.len();
            }
        }
        Ok(Appended { last_position: self.next_position - 1 })
    }

    fn current_version(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        self.conn
            .prepare_cached("SELECT MAX(version) FROM events WHERE stream = ?1")
            .and_then(|mut s| s.query_row([stream], |r| r.get::<_, Option<u64>>(0)))
            .store_err()
    }

    fn save_checkpoints(&mut self, checkpoints: &[Checkpoint]) -> Result<Appended, StoreError> {
        let now = Utc::now().to_rfc3339();
        for c in checkpoints {
            self.conn
                .prepare_cached(
                    "INSERT INTO checkpoints (name, position, state, saved_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (name) DO UPDATE SET position = excluded.position, state = excluded.state, saved_at = excluded.saved_at",
                )
                .and_then(|mut s| s.execute(params![c.name, c.position, c.state, now]))
                .store_err()?;
        }
        Ok(Appended { last_position: self.next_position - 1 })
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

enum Work {
    Append(Vec<StreamAppend>),
    Checkpoints(Vec<Checkpoint>),
    Ping,
}
