//! The stream index's file beside the log (`events.streams/`, an LSM tree kept by `fjall`):
//! every stream's positions, up to the log position it has been flushed to.
//!
//! It is derived from the log and disposable. The writer hands it the streams appended since the
//! last flush ([`Flusher`]), and it records how far it got in the same atomic batch as the streams,
//! so an index that lags (a crash, a failed flush) only means the log's tail is indexed again when
//! the store opens. An index that is ahead of the log or about another one (a log restored from a
//! backup) or that cannot be read is replaced by a new one, and the whole log is indexed again.
//!
//! Why an LSM tree and not a table: stream names are hashes, so every new stream lands at a random
//! place of a B-tree, and at millions of streams each flush rewrote most of its pages (half a core
//! and most of the disk writes at 13,000 deliveries/s). An LSM tree writes sorted runs and merges
//! them in the background, and its filters tell that a new stream does not exist without reading a
//! page (docs/benchmarks.md, "History at scale").

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use fjall::config::{BloomConstructionPolicy, FilterPolicy, FilterPolicyEntry, PartitioningPolicy, PinningPolicy};
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use rusqlite::{Connection, OptionalExtension};

use super::index::{Positions, StreamKey};
use crate::store::{StoreError, StoreResultExt};

/// The index's layout; an index of another layout is rebuilt. Layout 1 keyed streams by SHA-256,
/// layout 2 by XXH3-128 (ADR 0006).
const LAYOUT: &[u8] = b"2";

/// Block cache of the index, shared by the writer and the readers. Most lookups are of streams that
/// do not exist (answered by the pinned filters) or that the writer holds in memory; with 4 MiB
/// rather than 8 a lookup that finds a stream in the file took 4.6 µs rather than 2.7 at 10M
/// events, and with SQLite's limit also halved a gateway held 5–6 MiB less after a burst
/// (docs/benchmarks.md, "Memory after a burst").
const CACHE_BYTES: u64 = 4 << 20;
/// Appended streams held in memory by the index before it writes them out as a sorted run (only
/// the index's own two facts go through it: flushes are ingested as runs).
const MEMTABLE_BYTES: u64 = 8 << 20;
/// Compaction: tables of 4 MiB, and eight runs (flushes) gathered before they are merged into the
/// first level (64 MiB). Stream keys are hashes, so a merge into a level rewrites all of it: with
/// fjall's defaults (64 MiB tables, four runs) merging took most of a core under load; with
/// sixteen runs a tenth (docs/benchmarks.md, "History at scale"), but a lookup of a stream not in
/// memory probes every run's filter, and the writer looks up each new stream: eight runs made
/// deliveries quicker (docs/benchmarks.md, issue 29, "The stream index merges after eight runs").
const TABLE_BYTES: u64 = 4 << 20;
const L0_RUNS: u8 = 8;

/// Where the index of the log at `log` lives.
pub fn path_for(log: &Path) -> PathBuf {
    log.with_extension("streams")
}

/// The stream index on disk: shared by the writer, the flusher and the readers (cheap to clone).
///
/// One keyspace holds the streams (16-byte keys) and the two facts about the index (`layout`,
/// `flushed`; shorter keys): with a second keyspace, its tiny memtable would never fill, so the
/// journal it shares with the streams would never be released, and every start would replay it.
#[derive(Clone)]
pub struct IndexFile {
    /// Kept open with the keyspace (dropping the database stops its background work).
    db: Database,
    streams: Keyspace,
}

impl IndexFile {
    /// Opens (or creates) the index of the log `log` is connected to; returns it and the position
    /// it holds the log up to. An index that does not match the log is replaced.
    pub fn open(path: &Path, log: &Connection) -> Result<(IndexFile, u64), StoreError> {
        match Self::open_matching(path, log) {
            Ok(Some(opened)) => return Ok(opened),
            Ok(None) => tracing::info!(
                index = %path.display(),
                "the stream index does not match the log; indexing the log again"
            ),
            Err(e) => tracing::warn!(
                index = %path.display(),
                error = %crate::report::chain(&e),
                "cannot read the stream index; indexing the log again"
            ),
        }
        match std::fs::remove_dir_all(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::caused(format_args!("cannot remove {}", path.display()), e)),
        }
        Self::open_matching(path, log)?
            .ok_or_else(|| StoreError::failed(format!("a new stream index at {} is not empty", path.display())))
    }

    fn open_matching(path: &Path, log: &Connection) -> Result<Option<(IndexFile, u64)>, StoreError> {
        if path.is_file() {
            return Ok(None);
        }
        let db = Database::builder(path)
            .cache_size(CACHE_BYTES)
            .worker_threads(1)
            // What a start may have to replay after a crash (the least fjall allows).
            .max_journaling_size(64 << 20)
            .open()
            .map_err(|e| StoreError::caused("cannot open the stream index", e))?;
        let streams = db
            .keyspace("streams", || {
                // Every run's filter and block index stays in memory (about 1.3 bytes a stream):
                // most lookups are of streams that do not exist yet (each delivery's own), and a
                // filter read from disk per lookup cost more than the B-tree it replaced.
                KeyspaceCreateOptions::default()
                    .max_memtable_size(MEMTABLE_BYTES)
                    .compaction_strategy(std::sync::Arc::new(
                        fjall::compaction::Leveled::default()
                            .with_table_target_size(TABLE_BYTES)
                            .with_l0_threshold(L0_RUNS),
                    ))
                    .filter_policy(FilterPolicy::all(FilterPolicyEntry::Bloom(BloomConstructionPolicy::BitsPerKey(
                        10.0,
                    ))))
                    .filter_block_pinning_policy(PinningPolicy::all(true))
                    .filter_block_partitioning_policy(PartitioningPolicy::all(false))
                    .index_block_pinning_policy(PinningPolicy::all(true))
                    .index_block_partitioning_policy(PartitioningPolicy::all(false))
            })
            .map_err(|e| StoreError::caused("cannot open the stream index", e))?;
        let index = IndexFile { db, streams };
        match index.meta_value(b"layout")? {
            None => {
                if index.meta_value(b"flushed")?.is_some() {
                    return Ok(None);
                }
                index
                    .streams
                    .insert("layout", LAYOUT)
                    .map_err(|e| StoreError::caused("cannot write the stream index", e))?;
            }
            Some(layout) if layout == LAYOUT => {}
            Some(_) => return Ok(None),
        }
        let position = match index.meta_value(b"flushed")? {
            None => 0,
            Some(flushed) => {
                let Some((position, recorded)) = decode_flushed(&flushed) else { return Ok(None) };
                let id: Option<Vec<u8>> = log
                    .query_row("SELECT id FROM events WHERE position = ?1", [position], |r| r.get(0))
                    .optional()
                    .store_err()?;
                if id.as_deref() != Some(recorded) {
                    return Ok(None);
                }
                position
            }
        };
        Ok(Some((index, position)))
    }

    fn meta_value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.streams.get(key).map_err(|e| StoreError::caused("cannot read the stream index", e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// The stream's positions as the index holds them (`None`: not in the index).
    pub fn lookup(&self, key: StreamKey) -> Result<Option<Positions>, StoreError> {
        let value =
            self.streams.get(key.to_bytes()).map_err(|e| StoreError::caused("cannot read the stream index", e))?;
        value.map(|bytes| decode(&bytes)).transpose()
    }

    /// Writes the streams and how far the index now reaches as one sorted run, atomically: fjall
    /// ingests it as a table of its own (no journal, no memtable) and merges it in the background.
    fn write(&self, pending: &HashMap<StreamKey, Positions>, upto: u64, event_id: &[u8]) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let mut flushed = upto.to_be_bytes().to_vec();
        flushed.extend_from_slice(event_id);
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> =
            pending.iter().map(|(key, positions)| (key.to_bytes().to_vec(), positions.encode())).collect();
        entries.push((b"flushed".to_vec(), flushed));
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let failed = |e| StoreError::caused("cannot write the stream index", e);
        let mut run = self.streams.start_ingestion().map_err(failed)?;
        for (key, value) in entries {
            run.write(key, value).map_err(failed)?;
        }
        run.finish().map_err(failed)?;
        tracing::trace!(
            streams = pending.len(),
            upto,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "stream index flushed"
        );
        Ok(())
    }
}

/// Makes what the index holds durable before the store closes. Flushes are written as runs of
/// their own; only the index's `layout` goes through the journal, so a start replays next to
/// nothing.
pub fn settle(index: &IndexFile) {
    if let Err(e) = index.db.persist(fjall::PersistMode::SyncAll) {
        tracing::warn!(error = %e, "cannot sync the stream index's journal; the next start may index the log's tail again");
    }
}

fn decode_flushed(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (position, id) = bytes.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*position), id))
}

/// Reads a stored value; one that does not decode means a damaged index.
fn decode(bytes: &[u8]) -> Result<Positions, StoreError> {
    Positions::decode(bytes).ok_or_else(|| {
        StoreError::failed("the stream index holds a damaged entry; remove the folder events.streams to rebuild it")
    })
}

/// What the writer hands the flusher: streams appended since the last handoff, whole, and the log
/// position they bring the index up to.
pub struct Handoff {
    pub streams: Vec<(StreamKey, Positions)>,
    pub upto: u64,
    pub event_id: Vec<u8>,
}

/// Writes handoffs to the index on a thread of its own, so that no group commit waits for it. A
/// flush that fails is kept and written with the next.
pub struct Flusher {
    handoffs: Option<mpsc::Sender<Handoff>>,
    /// The position each flush brought the index up to, or why it failed.
    pub done: mpsc::Receiver<Result<u64, StoreError>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub fn start(index: IndexFile) -> Result<Flusher, StoreError> {
        let (handoffs, received) = mpsc::channel::<Handoff>();
        let (report, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("meshgate-index".into())
            .spawn(move || {
                // What failed to be written waits here for the next handoff.
                let mut pending: HashMap<StreamKey, Positions> = HashMap::new();
                while let Ok(handoff) = received.recv() {
                    pending.extend(handoff.streams);
                    let written = index.write(&pending, handoff.upto, &handoff.event_id);
                    if written.is_ok() {
                        pending.clear();
                    }
                    if report.send(written.map(|()| handoff.upto)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| StoreError::caused("cannot start the stream index thread", e))?;
        Ok(Flusher { handoffs: Some(handoffs), done, thread: Some(thread) })
    }

    pub fn hand(&self, handoff: Handoff) {
        if let Some(handoffs) = &self.handoffs {
            // The thread only ends when this sender is dropped.
            let _ = handoffs.send(handoff);
        }
    }

    /// Waits for the flushes handed so far, then stops the thread.
    pub fn finish(&mut self) {
        self.handoffs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.finish();
    }
}
