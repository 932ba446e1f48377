//! The writer thread: group commit in savepoints, and the stream index kept in step with it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use std::sync::mpsc;

use tokio::sync::{broadcast, oneshot, watch};

use super::checkpointer::{Checkpointer, CHECKPOINT_EVERY_BYTES, RESTART_EVERY_BYTES};
use super::index::{version_through, Pending, StreamKey};
use super::indexer::Indexer;
use super::{Row, WriterOptions, COLUMNS};
use crate::store::{Appended, Committed, StoreError, StoreResultExt, StoredEvent, StreamAppend};

/// A running writer: its queue, the head it announces, and its thread.
pub(super) struct Spawned {
    pub queue: mpsc::Sender<WriteRequest>,
    pub head: watch::Receiver<u64>,
    pub thread: std::thread::JoinHandle<()>,
}

pub(super) enum WriteRequest {
    Append { appends: Vec<StreamAppend>, reply: oneshot::Sender<Result<Appended, StoreError>> },
    Ping { reply: oneshot::Sender<Result<Appended, StoreError>> },
}

/// What the probe of a failing disk writes: room for a few batches of deliveries.
const PROBE_BYTES: usize = 256 << 10;

fn probe_path(log: &Path) -> std::path::PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(".probe");
    log.with_file_name(name)
}

/// Starts the writer thread (and its checkpointer) on `conn`, which holds the log's lock file;
/// returns its queue, the head and the thread (it ends, having flushed the stream index, once
/// every sender of the queue is gone).
pub(super) fn spawn(
    conn: Connection,
    lock: std::fs::File,
    path: &Path,
    indexer: Indexer,
    feed: broadcast::Sender<Committed>,
    head: u64,
    options: WriterOptions,
) -> Result<Spawned, StoreError> {
    let checkpointer = Checkpointer::start(path)?;
    let (head_tx, head_rx) = watch::channel(head);
    // Unbounded: every caller waits for its answer, so callers bound the queue.
    let (tx, rx) = mpsc::channel();
    let writer = Writer {
        conn,
        _lock: lock,
        indexer,
        batch: Pending::default(),
        feed,
        unpublished: Vec::new(),
        spoiled: None,
        spoiled_for_good: None,
        next_position: head + 1,
        head: head_tx,
        max_batch: options.max_batch.max(1),
        linger: options.linger,
        previous_batch: 0,
        checkpointer,
        unchecked_bytes: 0,
        unrestarted_bytes: 0,
        probe_file: probe_path(path),
        appends_failing: None,
    };
    let thread = std::thread::Builder::new()
        .name("meshgate-sqlite-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| StoreError::caused("cannot start the writer thread", e))?;
    Ok(Spawned { queue: tx, head: head_rx, thread })
}

struct Writer {
    /// Why the last batch with appends could not store them (a full disk, say), until a batch
    /// stores some again or a probe finds room: `/readyz` then says the log takes no writes.
    appends_failing: Option<StoreError>,
    /// A scratch file beside the log, written by that probe.
    probe_file: std::path::PathBuf,
    conn: Connection,
    /// Held while the writer runs: no other process appends to this log.
    _lock: std::fs::File,
    /// The committed stream index: in memory (shared with readers) and in its file.
    indexer: Indexer,
    /// Streams appended in the open transaction.
    batch: Pending,
    /// Committed events, for followers in this process.
    feed: broadcast::Sender<Committed>,
    /// Events of the open transaction, published once it commits.
    unpublished: Vec<StoredEvent>,
    /// Set when a request's savepoint could not be closed; the batch is then rolled back.
    spoiled: Option<StoreError>,
    /// Set when the index could not be brought up to date after a failed commit: every later
    /// batch is refused (the store answers errors until it is reopened).
    spoiled_for_good: Option<StoreError>,
    next_position: u64,
    head: watch::Sender<u64>,
    max_batch: usize,
    /// How long a batch may wait for requests on their way (see `run`).
    linger: Duration,
    previous_batch: usize,
    checkpointer: Checkpointer,
    /// Bytes appended since the checkpointer was last asked to run.
    unchecked_bytes: usize,
    /// Bytes appended since the WAL was last fully checkpointed.
    unrestarted_bytes: usize,
}

/// Under load, a batch waits for `1 / LINGER_FRACTION` of the previous batch's requests.
///
/// Waiting for fewer keeps the writer and the request threads working side by side: while one
/// batch commits, the answers of the last one and the next requests are being handled. With a
/// half, most clients ended up in one batch and each side waited for the other (the figures are
/// in docs/benchmarks.md).
const LINGER_FRACTION: usize = 4;

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

impl Writer {
    /// Takes what is queued, and under load waits a little for more.
    ///
    /// Requests do not arrive together: after a commit its callers answer their clients, who send
    /// the next deliveries one by one. Committing the first of them alone would spend a sync on
    /// one request while the rest queue behind it. So when the previous batch held several
    /// requests, the writer waits (at most `linger`) until it has a quarter as many
    /// ([`LINGER_FRACTION`]). Alone (the previous batch held fewer than four), a request is
    /// committed at once.
    fn run(mut self, requests: mpsc::Receiver<WriteRequest>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            let first = match requests.recv_timeout(self.indexer.interval()) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Quiet: the streams of the last batches still reach the index file.
                    self.indexer.tend(&self.conn, self.next_position - 1);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            batch.push(first);
            self.drain(&requests, &mut batch);
            let target = (self.previous_batch / LINGER_FRACTION).min(self.max_batch);
            let deadline = std::time::Instant::now() + self.linger;
            while batch.len() < target {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match requests.recv_timeout(left) {
                    Ok(request) => {
                        batch.push(request);
                        self.drain(&requests, &mut batch);
                    }
                    Err(_) => break,
                }
            }
            self.previous_batch = batch.len();
            self.commit_batch(batch.drain(..));
        }
        self.indexer.close(&self.conn, self.next_position - 1);
    }

    fn drain(&self, requests: &mpsc::Receiver<WriteRequest>, batch: &mut Vec<WriteRequest>) {
        while batch.len() < self.max_batch {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
    }

    fn commit_batch(&mut self, batch: impl Iterator<Item = WriteRequest>) {
        let batch: Vec<WriteRequest> = batch.collect();
        let has_appends = batch.iter().any(|r| matches!(r, WriteRequest::Append { .. }));
        let mut answers: Vec<(Reply, Result<Appended, StoreError>)> = Vec::new();
        let started = std::time::Instant::now();
        let begun = self.run_cached("BEGIN IMMEDIATE");
        // A request alone in its batch needs no savepoint: refused, it takes the transaction back
        // whole. (A savepoint copies every page the request touches aside first.)
        let alone = batch.len() == 1;
        let mut rolled_back = false;
        for request in batch {
            let (reply, work): (Reply, Work) = match request {
                WriteRequest::Append { appends, reply } => (reply, Work::Append(appends)),
                WriteRequest::Ping { reply } => (reply, Work::Ping),
            };
            if let Err(e) = &begun {
                answers.push((reply, Err(e.clone())));
                continue;
            }
            let result = if alone { self.alone(work, &mut rolled_back) } else { self.in_savepoint(work) };
            answers.push((reply, result));
        }
        let work_us = started.elapsed().as_micros() as u64;
        let batch = std::mem::take(&mut self.batch);
        if begun.is_ok() && !rolled_back {
            // A savepoint that could be neither released nor rolled back leaves the transaction
            // in a state the stream index does not know: the whole batch is refused.
            let committed = match (self.spoiled.take(), &self.spoiled_for_good) {
                (Some(e), _) => Err(e),
                (None, Some(e)) => Err(e.clone()),
                (None, None) => self.run_cached("COMMIT"),
            };
            match committed {
                Ok(()) => {
                    crate::metrics::commit(started.elapsed(), self.unpublished.len());
                    // Durable now: readers and later appends may see it.
                    self.indexer.commit(batch);
                    // No follower listening is fine: followers read the log when they start.
                    if let Some(commit) = Committed::whole(Arc::from(std::mem::take(&mut self.unpublished))) {
                        let _ = self.feed.send(commit);
                    }
                }
                Err(e) => {
                    self.unpublished.clear();
                    tracing::error!(error = %e, "event store commit failed; the batch is refused");
                    let _ = self.conn.execute_batch("ROLLBACK");
                    self.resync_after_failed_commit();
                    for (_, result) in &mut answers {
                        if result.is_ok() {
                            *result = Err(e.clone());
                        }
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
            self.unrestarted_bytes += self.unchecked_bytes;
            self.unchecked_bytes = 0;
            self.checkpointer.request();
        }
        if has_appends {
            // Refused for a storage failure (not a version conflict) with nothing stored: failing.
            let stored = answers.iter().any(|(_, r)| r.is_ok());
            let failure = answers.iter().find_map(|(_, r)| match r {
                Err(e @ StoreError::Failed { .. }) => Some(e.clone()),
                _ => None,
            });
            self.appends_failing = if stored { None } else { failure.or(self.appends_failing.take()) };
        }
        for (reply, result) in answers {
            let _ = reply.send(result);
        }
        self.indexer.tend(&self.conn, self.next_position - 1);
        if self.unrestarted_bytes >= RESTART_EVERY_BYTES && self.finish_checkpoint() {
            self.unrestarted_bytes = 0;
        }
    }

    /// While appends fail for storage, whether the disk has room again: a scratch file of
    /// [`PROBE_BYTES`] beside the log is written, synced and removed.
    fn probe(&mut self) -> Result<(), StoreError> {
        let Some(failing) = &self.appends_failing else { return Ok(()) };
        let written = (|| {
            use std::io::Write;
            let mut file = std::fs::File::create(&self.probe_file)?;
            file.write_all(&[0u8; PROBE_BYTES])?;
            file.sync_all()
        })();
        let _ = std::fs::remove_file(&self.probe_file);
        match written {
            Ok(()) => {
                tracing::info!("the log's disk has room again");
                self.appends_failing = None;
                Ok(())
            }
            Err(e) => Err(StoreError::caused(format!("appends are failing ({failing})"), e)),
        }
    }

    /// Copies the WAL frames the background checkpointer has not copied yet. True if every frame is
    /// in the database now; false if a checkpoint was busy (it is tried again after a later batch).
    fn finish_checkpoint(&self) -> bool {
        let started = std::time::Instant::now();
        let outcome = self.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match outcome {
            Ok((busy, log, copied)) => {
                tracing::trace!(
                    busy,
                    log,
                    copied,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "checkpoint by the writer"
                );
                busy == 0 && log == copied
            }
            Err(e) => {
                tracing::debug!(error = %e, "checkpoint by the writer deferred");
                false
            }
        }
    }

    fn run_cached(&self, sql: &str) -> Result<(), StoreError> {
        self.conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(|_| ()).store_err()
    }

    /// After a failed commit, learns from the log what landed. A commit reported as failed can
    /// still have reached the WAL (a sync error after the write): then its rows are in the log,
    /// and the index must know them before the next append is checked.
    fn resync_after_failed_commit(&mut self) {
        let known = self.head.borrow().to_owned();
        match self.indexer.index_rows_after(&self.conn, known, u64::MAX) {
            Ok((head, _)) => self.next_position = head + 1,
            Err(e) => {
                // Appending on an index that may be stale could break versions: stop appending.
                tracing::error!(error = %e, "cannot read the log after a failed commit; refusing appends");
                self.spoiled_for_good = Some(e);
            }
        }
    }

    /// The only request of its batch, straight in the transaction: refused, the transaction is
    /// rolled back (and `rolled_back` set, so the batch commits nothing).
    fn alone(&mut self, work: Work, rolled_back: &mut bool) -> Result<Appended, StoreError> {
        let start = self.next_position;
        let (mut request, mut versions) = (Pending::default(), Vec::new());
        let (result, appended) = self.work(work, &mut request, &mut versions);
        match &result {
            Ok(_) => {
                self.batch.absorb(request);
                if let Some(appends) = appended {
                    self.publish_later(appends, start, versions);
                }
            }
            Err(_) => {
                self.next_position = start;
                *rolled_back = true;
                if let Err(e) = self.run_cached("ROLLBACK") {
                    // The transaction may still hold the request's rows: the index cannot tell.
                    self.spoiled_for_good = Some(e.clone());
                    return Err(e);
                }
            }
        }
        result
    }

    /// Does a request's work in the open transaction; gives back the appends it made.
    fn work(
        &mut self,
        work: Work,
        request: &mut Pending,
        versions: &mut Vec<u64>,
    ) -> (Result<Appended, StoreError>, Option<Vec<StreamAppend>>) {
        match work {
            Work::Append(appends) => {
                let result = self.append(&appends, request, versions);
                (result, Some(appends))
            }
            Work::Ping => (self.probe().map(|()| Appended { last_position: self.next_position - 1 }), None),
        }
    }

    fn in_savepoint(&mut self, work: Work) -> Result<Appended, StoreError> {
        self.run_cached("SAVEPOINT request")?;
        let start = self.next_position;
        let mut request = Pending::default();
        let mut versions = Vec::new();
        let (result, appended) = self.work(work, &mut request, &mut versions);
        match &result {
            Ok(_) => {
                if let Err(e) = self.run_cached("RELEASE request") {
                    // The rows may or may not be in the transaction now: the index cannot tell.
                    self.spoiled = Some(e.clone());
                    return Err(e);
                }
                self.batch.absorb(request);
                // Kept whether or not anyone listens now: one who subscribes before the commit
                // must get every event of it, or see a gap it can only close at the next commit.
                if let Some(appends) = appended {
                    self.publish_later(appends, start, versions);
                }
            }
            Err(_) => {
                self.next_position = start;
                if let Err(e) = self.conn.execute_batch("ROLLBACK TO request; RELEASE request").store_err() {
                    self.spoiled = Some(e.clone());
                    return Err(e);
                }
            }
        }
        result
    }

    /// Keeps a request's events for the followers of this process, who get them after the commit.
    fn publish_later(&mut self, appends: Vec<StreamAppend>, start: u64, versions: Vec<u64>) {
        let events = appends.into_iter().flat_map(|a| {
            let stream = a.stream;
            a.events.into_iter().map(move |e| (stream.clone(), e))
        });
        for (((stream, event), position), version) in events.zip(start..).zip(versions) {
            self.unpublished.push(StoredEvent {
                position,
                stream,
                version,
                id: event.id,
                event_type: event.event_type.to_owned(),
                schema_version: event.schema_version,
                data: event.data,
                correlation_id: event.correlation_id,
                causation_id: event.causation_id,
                // Exactly as a reader gets it back: the table keeps microseconds.
                recorded_at: chrono::DateTime::from_timestamp_micros(event.recorded_at.timestamp_micros())
                    .unwrap_or(event.recorded_at),
            });
        }
    }

    fn append(
        &mut self,
        appends: &[StreamAppend],
        request: &mut Pending,
        versions: &mut Vec<u64>,
    ) -> Result<Appended, StoreError> {
        static INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!("INSERT INTO events ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)")
        });
        let mut insert = self.conn.prepare_cached(&INSERT).store_err()?;
        for append in appends {
            let key = StreamKey::of(&append.stream);
            let current = version_through(self.indexer.committed_version(key)?, &[&self.batch, request], key);
            if !append.expected.is_satisfied_by(current) {
                return Err(StoreError::Conflict {
                    stream: append.stream.clone(),
                    expected: append.expected,
                    actual: current,
                });
            }
            let first_version = current.map_or(0, |v| v + 1);
            for (version, event) in (first_version..).zip(&append.events) {
                let row = Row {
                    position: self.next_position,
                    stream: &append.stream,
                    version,
                    id: &event.id,
                    event_type: event.event_type,
                    schema_version: event.schema_version,
                    data: &event.data,
                    correlation_id: &event.correlation_id,
                    causation_id: event.causation_id.as_ref(),
                    recorded_at: event.recorded_at,
                };
                row.insert(&mut insert).store_err()?;
                request.push(key, self.next_position);
                versions.push(version);
                self.next_position += 1;
                self.unchecked_bytes += event.data.len();
            }
        }
        Ok(Appended { last_position: self.next_position - 1 })
    }
}

enum Work {
    Append(Vec<StreamAppend>),
    Ping,
}
