//! The writer thread (group commit in savepoints) and the checkpointer thread.

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use meshgate_domain::ExpectedVersion;
use rusqlite::{params, Connection};
use tokio::sync::{mpsc, oneshot, watch};

use super::COLUMNS;
use crate::store::{Appended, Checkpoint, StoreError, StoreResultExt, StreamAppend};

pub(super) enum WriteRequest {
    Append { appends: Vec<StreamAppend>, reply: oneshot::Sender<Result<Appended, StoreError>> },
    SaveCheckpoints { checkpoints: Vec<Checkpoint>, reply: oneshot::Sender<Result<Appended, StoreError>> },
    Ping { reply: oneshot::Sender<Result<Appended, StoreError>> },
}

/// Starts the writer thread (and its checkpointer) on `conn`; returns its queue and the head.
pub(super) fn spawn(
    conn: Connection,
    path: &Path,
    max_batch: usize,
) -> Result<(mpsc::Sender<WriteRequest>, watch::Receiver<u64>), StoreError> {
    let checkpointer = Checkpointer::start(path)?;
    let head: u64 = conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| r.get(0)).store_err()?;
    let (head_tx, head_rx) = watch::channel(head);
    let (tx, rx) = mpsc::channel(8192);
    std::thread::Builder::new()
        .name("meshgate-sqlite-writer".into())
        .spawn(move || {
            Writer { conn, next_position: head + 1, head: head_tx, max_batch, checkpointer, unchecked_bytes: 0 }.run(rx)
        })
        .map_err(|e| StoreError::Failed(format!("cannot start the writer thread: {e}")))?;
    Ok((tx, head_rx))
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
