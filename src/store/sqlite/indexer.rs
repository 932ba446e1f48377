//! The writer's side of the stream index: the streams in memory, the index file for the rest, and
//! when to flush one into the other.
//!
//! Invariant: a stream the log holds is either in memory with all its positions, or in the file
//! with all of them. Streams appended since the last completed flush stay in memory (their last
//! position is past the flushed one), and only streams the file holds whole are evicted.

use std::sync::{Arc, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension};

use super::index::{Pending, StreamIndex, StreamKey};
use super::streams::{self, Flusher, Handoff, IndexFile};
use super::WriterOptions;
use crate::store::{StoreError, StoreResultExt};

/// Log rows indexed at a time while a store opens, between flushes.
const OPEN_CHUNK: u64 = 100_000;

pub(super) struct Indexer {
    /// The streams in memory, shared with readers.
    pub shared: Arc<RwLock<StreamIndex>>,
    pub file: IndexFile,
    flusher: Flusher,
    /// The log position the file holds every stream up to.
    flushed: u64,
    /// A handoff is with the flusher.
    flushing: bool,
    last_handoff: Instant,
    flush_streams: usize,
    flush_interval: Duration,
}

impl Indexer {
    /// Opens the index file of the log at `path` and indexes the log's rows the file does not
    /// hold yet (all of them for a new file), flushing as it goes so that memory stays bounded.
    /// Returns the indexer and the log's head.
    pub fn open(
        path: &std::path::Path,
        log: &Connection,
        options: &WriterOptions,
    ) -> Result<(Indexer, u64), StoreError> {
        let started = Instant::now();
        let (file, flushed) = IndexFile::open(&streams::path_for(path), log)?;
        let flusher = Flusher::start(file.clone())?;
        let mut indexer = Indexer {
            shared: Arc::new(RwLock::new(StreamIndex::new(options.index_capacity))),
            file,
            flusher,
            flushed,
            flushing: false,
            last_handoff: Instant::now(),
            flush_streams: options.index_flush_streams.max(1),
            flush_interval: options.index_flush_interval,
        };
        let mut head = flushed;
        loop {
            let (last, rows) = indexer.index_rows_after(log, head, OPEN_CHUNK)?;
            head = last;
            if rows < OPEN_CHUNK {
                break;
            }
            if indexer.dirty() >= indexer.flush_streams {
                indexer.hand_off(log, head)?;
                indexer.wait_for_flush();
                indexer.lock().evict(indexer.flushed);
            }
        }
        tracing::debug!(
            from = flushed,
            head,
            streams_in_memory = indexer.lock().len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "stream index opened"
        );
        Ok((indexer, head))
    }

    fn lock(&self) -> RwLockWriteGuard<'_, StreamIndex> {
        self.shared.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn dirty(&self) -> usize {
        self.lock().dirty()
    }

    /// The stream's last committed version (`None`: no such stream), from memory or the file.
    pub fn committed_version(&self, key: StreamKey) -> Result<Option<u64>, StoreError> {
        if let Some(version) = self.lock().version(key) {
            return Ok(Some(version));
        }
        // Nothing is evicted between this lookup and the commit that may extend the stream: the
        // writer evicts only between batches.
        match self.file.lookup(key)? {
            Some(positions) => {
                let version = positions.len() as u64 - 1;
                self.lock().load(key, positions);
                Ok(Some(version))
            }
            None => Ok(None),
        }
    }

    /// Makes a committed batch's appends visible.
    pub fn commit(&self, batch: Pending) {
        batch.commit_into(&mut self.lock());
    }

    /// Adds up to `limit` log rows after position `after`, checking that each stream's versions
    /// run without gaps; returns the last position read (or `after`) and how many rows were read.
    pub fn index_rows_after(&self, conn: &Connection, after: u64, limit: u64) -> Result<(u64, u64), StoreError> {
        let mut stmt = conn
            .prepare_cached(
                "SELECT position, stream, version FROM events WHERE position > ?1 ORDER BY position LIMIT ?2",
            )
            .store_err()?;
        let mut rows = stmt.query([after, limit.min(i64::MAX as u64)]).store_err()?;
        let (mut head, mut read) = (after, 0);
        while let Some(row) = rows.next().store_err()? {
            let (position, version): (u64, u64) = (row.get(0).store_err()?, row.get(2).store_err()?);
            let stream = row.get_ref(1).store_err()?.as_str().store_err()?;
            let key = StreamKey::of(stream);
            let expected = self.committed_version(key)?.map_or(0, |v| v + 1);
            if version != expected {
                return Err(StoreError::failed(format!(
                    "the event log is inconsistent: stream `{stream}` has version {version} at position {position}, expected {expected}"
                )));
            }
            self.lock().push(key, position);
            head = position;
            read += 1;
        }
        Ok((head, read))
    }

    /// Between batches: learns which flushes completed, hands the next one over when enough
    /// streams are waiting or the interval has passed, and evicts what the file now holds.
    pub fn tend(&mut self, log: &Connection, head: u64) {
        while let Ok(done) = self.flusher.done.try_recv() {
            self.completed(done);
        }
        let dirty = self.dirty();
        let due = dirty >= self.flush_streams || (dirty > 0 && self.last_handoff.elapsed() >= self.flush_interval);
        if due && !self.flushing {
            if let Err(e) = self.hand_off(log, head) {
                tracing::warn!(error = %crate::report::chain(&e), "cannot flush the stream index; will try again");
            }
        }
        self.lock().evict(self.flushed);
    }

    /// Flushes what is left and waits for the flusher to finish (the store is closing).
    pub fn close(&mut self, log: &Connection, head: u64) {
        if self.dirty() > 0 {
            if let Err(e) = self.hand_off(log, head) {
                tracing::warn!(error = %crate::report::chain(&e), "cannot flush the stream index at close");
            }
        }
        self.flusher.finish();
        while let Ok(done) = self.flusher.done.try_recv() {
            self.completed(done);
        }
        streams::settle(&self.file);
    }

    fn hand_off(&mut self, log: &Connection, head: u64) -> Result<(), StoreError> {
        let event_id: Vec<u8> = log
            .query_row("SELECT id FROM events WHERE position = ?1", [head], |r| r.get(0))
            .optional()
            .store_err()?
            .ok_or_else(|| StoreError::failed(format!("the log has no event at its head {head}")))?;
        let streams = self.lock().take_dirty();
        self.flusher.hand(Handoff { streams, upto: head, event_id });
        self.flushing = true;
        self.last_handoff = Instant::now();
        Ok(())
    }

    fn wait_for_flush(&mut self) {
        if let Ok(done) = self.flusher.done.recv() {
            self.completed(done);
        }
    }

    fn completed(&mut self, done: Result<u64, StoreError>) {
        self.flushing = false;
        match done {
            Ok(upto) => self.flushed = upto,
            Err(e) => {
                tracing::warn!(error = %crate::report::chain(&e), "cannot flush the stream index; will try again")
            }
        }
    }

    /// How often an idle writer looks at the index (so a quiet log is flushed too).
    pub fn interval(&self) -> Duration {
        self.flush_interval
    }
}
