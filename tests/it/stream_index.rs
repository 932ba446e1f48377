//! The SQLite store's stream index when most streams are only on disk: tiny memory, flushes after
//! every few streams, an index that lags the log, is ahead of it, or is damaged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meshgate::store::sqlite::{SqliteStore, WriterOptions};
use meshgate::store::{EventStore, StoreError};
use meshgate_domain::ExpectedVersion;

use crate::store::{append, contract};

/// Two streams in memory beyond the unflushed ones, a flush every three streams.
fn tiny() -> WriterOptions {
    WriterOptions {
        index_capacity: 2,
        index_flush_streams: 3,
        index_flush_interval: Duration::from_millis(1),
        ..WriterOptions::default()
    }
}

fn open(dir: &Path, options: WriterOptions) -> Arc<dyn EventStore> {
    Arc::new(SqliteStore::open(&dir.join("events.sqlite"), options).unwrap())
}

/// The stream index's folder beside the log.
fn index_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("events.streams")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn the_contract_holds_when_streams_are_evicted_to_the_index_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    contract(open(dir.path(), WriterOptions { max_batch: 1, ..tiny() })).await;
    let dir = tempfile::tempdir().unwrap();
    contract(open(dir.path(), tiny())).await;
}

/// A deterministic sequence (xorshift), so a failure can be replayed.
struct Steps(u64);

impl Steps {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Memory for two streams, and no flush until the store closes: nothing appended may be evicted.
fn unflushed() -> WriterOptions {
    WriterOptions {
        index_capacity: 2,
        index_flush_streams: usize::MAX,
        index_flush_interval: Duration::from_secs(3600),
        ..WriterOptions::default()
    }
}

/// Appends with right and wrong expectations to many streams, checking every answer against a
/// model, reading streams back as it goes, and again after the store is reopened.
#[tokio::test]
async fn versions_and_reads_match_a_model_through_evictions_and_reopening() {
    for (seed, options) in [(7, tiny()), (1234, tiny()), (987_654_321, unflushed())] {
        let dir = tempfile::tempdir().unwrap();
        let mut steps = Steps(seed);
        let mut model: HashMap<String, u64> = HashMap::new();
        let mut store = open(dir.path(), options);
        for round in 0..600 {
            if round == 300 {
                drop(store);
                store = open(dir.path(), options);
            }
            let stream = format!("s{}", steps.next(60));
            let current = model.get(&stream).map(|n| n - 1);
            let expected = match steps.next(4) {
                0 => ExpectedVersion::Any,
                1 => ExpectedVersion::NoStream,
                2 => ExpectedVersion::from_current(current),
                _ => ExpectedVersion::Exact(current.map_or(0, |v| v + 1)),
            };
            let events = 1 + steps.next(3) as usize;
            let result = store.append(vec![append(&stream, expected, events)]).await;
            if expected.is_satisfied_by(current) {
                result.unwrap_or_else(|e| panic!("seed {seed} round {round}: {stream} {expected:?}: {e}"));
                *model.entry(stream.clone()).or_default() += events as u64;
            } else {
                match result {
                    Err(StoreError::Conflict { actual, .. }) => {
                        assert_eq!(actual, current, "seed {seed} round {round}")
                    }
                    other => panic!("seed {seed} round {round}: {stream} {expected:?} at {current:?}: {other:?}"),
                }
            }
            let read = format!("s{}", steps.next(60));
            let versions: Vec<u64> = store.read_stream(&read).await.unwrap().iter().map(|e| e.version).collect();
            assert_eq!(versions, (0..model.get(&read).copied().unwrap_or(0)).collect::<Vec<_>>(), "seed {seed}");
        }
        drop(store);
        let store = open(dir.path(), WriterOptions::default());
        for (stream, count) in &model {
            let last = store.read_last(stream).await.unwrap().expect("an appended stream");
            assert_eq!(last.version, count - 1, "seed {seed}: {stream}");
        }
    }
}

#[tokio::test]
async fn an_index_that_lags_the_log_catches_up_from_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), tiny());
        store.append(vec![append("early", ExpectedVersion::NoStream, 2)]).await.unwrap();
    }
    // The index as a crash right after that flush would leave it.
    copy_dir(&index_dir(dir.path()), saved.path());
    {
        let store = open(dir.path(), tiny());
        for n in 0..20 {
            store.append(vec![append(&format!("late{n}"), ExpectedVersion::NoStream, 1)]).await.unwrap();
        }
        store.append(vec![append("early", ExpectedVersion::Exact(1), 1)]).await.unwrap();
    }
    std::fs::remove_dir_all(index_dir(dir.path())).unwrap();
    copy_dir(saved.path(), &index_dir(dir.path()));
    let store = open(dir.path(), tiny());
    let conflict = store.append(vec![append("late7", ExpectedVersion::NoStream, 1)]).await.unwrap_err();
    assert!(matches!(conflict, StoreError::Conflict { actual: Some(0), .. }), "{conflict:?}");
    let conflict = store.append(vec![append("early", ExpectedVersion::Exact(1), 1)]).await.unwrap_err();
    assert!(matches!(conflict, StoreError::Conflict { actual: Some(2), .. }), "{conflict:?}");
    assert_eq!(store.read_stream("late19").await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_index_ahead_of_a_restored_log_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), tiny());
        store.append(vec![append("kept", ExpectedVersion::NoStream, 1)]).await.unwrap();
    }
    for name in ["events.sqlite", "events.sqlite-wal"] {
        let file = dir.path().join(name);
        if file.exists() {
            std::fs::copy(&file, backup.path().join(name)).unwrap();
        }
    }
    {
        let store = open(dir.path(), tiny());
        for n in 0..10 {
            store.append(vec![append(&format!("lost{n}"), ExpectedVersion::NoStream, 1)]).await.unwrap();
        }
    }
    // The log is restored from the backup; the index still knows the streams after it.
    for name in ["events.sqlite", "events.sqlite-wal", "events.sqlite-shm"] {
        let _ = std::fs::remove_file(dir.path().join(name));
        let copy = backup.path().join(name);
        if copy.exists() {
            std::fs::copy(&copy, dir.path().join(name)).unwrap();
        }
    }
    let store = open(dir.path(), tiny());
    assert_eq!(*store.head().borrow(), 1);
    store.append(vec![append("lost3", ExpectedVersion::NoStream, 1)]).await.expect("the restored log has no lost3");
    let conflict = store.append(vec![append("kept", ExpectedVersion::NoStream, 1)]).await.unwrap_err();
    assert!(matches!(conflict, StoreError::Conflict { actual: Some(0), .. }), "{conflict:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn a_damaged_index_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), tiny());
        for n in 0..10 {
            store.append(vec![append(&format!("s{n}"), ExpectedVersion::NoStream, 1)]).await.unwrap();
        }
    }
    // Every file of the index overwritten with garbage.
    for entry in walk(&index_dir(dir.path())) {
        std::fs::write(entry, b"not an index, not at all, not even close").unwrap();
    }
    let store = open(dir.path(), tiny());
    for n in 0..10 {
        let conflict = store.append(vec![append(&format!("s{n}"), ExpectedVersion::NoStream, 1)]).await.unwrap_err();
        assert!(matches!(conflict, StoreError::Conflict { actual: Some(0), .. }), "{conflict:?}");
    }
}

/// The key the previous layout (1) gave a stream: the first 128 bits of its SHA-256, read as a
/// little-endian number and stored big-endian.
fn layout_1_key(stream: &str) -> [u8; 16] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(stream.as_bytes());
    u128::from_le_bytes(digest[..16].try_into().unwrap()).to_be_bytes()
}

#[tokio::test]
async fn an_index_of_the_previous_layout_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..10).map(|n| format!("s{n}")).collect();
    {
        let store = open(dir.path(), tiny());
        for name in &names {
            store.append(vec![append(name, ExpectedVersion::NoStream, 1)]).await.unwrap();
        }
    }
    // The index as a release of layout 1 wrote it: streams under their SHA-256 keys. Were it
    // read with today's keys, every stream would look new and the deliveries of its streams
    // would count again.
    {
        let db = fjall::Database::builder(index_dir(dir.path())).open().unwrap();
        let streams = db.keyspace("streams", fjall::KeyspaceCreateOptions::default).unwrap();
        let mut moved = 0;
        for name in &names {
            let today = xxhash_rust::xxh3::xxh3_128(name.as_bytes()).to_be_bytes();
            if let Some(positions) = streams.get(today).unwrap() {
                streams.remove(today).unwrap();
                streams.insert(layout_1_key(name), positions).unwrap();
                moved += 1;
            }
        }
        assert!(moved > 5, "most streams were flushed to the index file ({moved})");
        streams.insert("layout", "1").unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let store = open(dir.path(), tiny());
    for name in &names {
        let conflict = store.append(vec![append(name, ExpectedVersion::NoStream, 1)]).await.unwrap_err();
        assert!(matches!(conflict, StoreError::Conflict { actual: Some(0), .. }), "{name}: {conflict:?}");
        assert_eq!(store.read_stream(name).await.unwrap().len(), 1, "{name}");
    }
}
