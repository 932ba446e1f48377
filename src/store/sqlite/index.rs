//! The stream index: where every stream's events sit in the log, kept in memory by the store.
//!
//! The log table is append-only and has no secondary index, so an append writes only at the end of
//! one B-tree (see docs/adr/0006-sqlite-stream-index-in-memory.md). The writer thread is the only
//! appender of the file (a lock file keeps other processes out), so it can check expected versions
//! against this index; the index is rebuilt from the log when the store opens, and changes here
//! only after the commit that made them is durable.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use sha2::{Digest, Sha256};

/// A stream's name as the index keys it: the first 128 bits of its SHA-256. Reads compare the
/// full name stored in each row, so a collision could only cost a spurious version conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey(u128);

impl StreamKey {
    pub fn of(stream: &str) -> Self {
        let digest = Sha256::digest(stream.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        StreamKey(u128::from_le_bytes(bytes))
    }
}

/// The keys are already uniformly distributed: hashing them again would only cost time.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64 ^ (n >> 64) as u64;
    }
}

/// The global positions of one stream's events; the version of an event is its index here.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Positions {
    One(u64),
    Two(u64, u64),
    Many(Vec<u64>),
}

impl Positions {
    fn len(&self) -> usize {
        match self {
            Positions::One(_) => 1,
            Positions::Two(..) => 2,
            Positions::Many(all) => all.len(),
        }
    }

    fn push(&mut self, position: u64) {
        *self = match std::mem::replace(self, Positions::Many(Vec::new())) {
            Positions::One(a) => Positions::Two(a, position),
            Positions::Two(a, b) => Positions::Many(vec![a, b, position]),
            Positions::Many(mut all) => {
                all.push(position);
                Positions::Many(all)
            }
        }
    }

    fn to_vec(&self) -> Vec<u64> {
        match self {
            Positions::One(a) => vec![*a],
            Positions::Two(a, b) => vec![*a, *b],
            Positions::Many(all) => all.clone(),
        }
    }
}

/// Every stream in the log and where its events are.
#[derive(Debug, Default)]
pub struct StreamIndex {
    streams: HashMap<StreamKey, Positions, BuildHasherDefault<KeyHasher>>,
}

impl StreamIndex {
    /// The stream's last version (`None`: no such stream).
    pub fn version(&self, key: StreamKey) -> Option<u64> {
        self.streams.get(&key).map(|p| p.len() as u64 - 1)
    }

    /// The positions of the stream's events in version order (empty: no such stream).
    pub fn positions(&self, key: StreamKey) -> Vec<u64> {
        self.streams.get(&key).map(Positions::to_vec).unwrap_or_default()
    }

    /// Records the next event of a stream. Positions must arrive in log order.
    pub fn push(&mut self, key: StreamKey, position: u64) {
        match self.streams.get_mut(&key) {
            Some(positions) => positions.push(position),
            None => {
                self.streams.insert(key, Positions::One(position));
            }
        }
    }

    pub fn streams(&self) -> usize {
        self.streams.len()
    }
}

/// Streams appended in a batch that has not committed yet, layered over the committed index.
#[derive(Debug, Default)]
pub struct Pending {
    appended: HashMap<StreamKey, Vec<u64>, BuildHasherDefault<KeyHasher>>,
}

impl Pending {
    /// Events this layer adds to a stream.
    pub fn count(&self, key: StreamKey) -> u64 {
        self.appended.get(&key).map_or(0, Vec::len) as u64
    }

    pub fn push(&mut self, key: StreamKey, position: u64) {
        self.appended.entry(key).or_default().push(position);
    }

    /// Moves another layer's appends on top of this one (a request's, once its savepoint holds).
    pub fn absorb(&mut self, other: Pending) {
        for (key, positions) in other.appended {
            self.appended.entry(key).or_default().extend(positions);
        }
    }

    /// Applies the batch to the committed index, in position order.
    pub fn commit_into(self, index: &mut StreamIndex) {
        let mut all: Vec<(u64, StreamKey)> = self
            .appended
            .into_iter()
            .flat_map(|(key, positions)| positions.into_iter().map(move |p| (p, key)))
            .collect();
        all.sort_unstable_by_key(|(position, _)| *position);
        for (position, key) in all {
            index.push(key, position);
        }
    }
}

/// A stream's last version counting the committed index and uncommitted layers over it.
pub fn version_through(index: &StreamIndex, layers: &[&Pending], key: StreamKey) -> Option<u64> {
    let committed = index.version(key).map_or(0, |v| v + 1);
    (committed + layers.iter().map(|layer| layer.count(key)).sum::<u64>()).checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_committed_and_pending_events() {
        let (a, b) = (StreamKey::of("a"), StreamKey::of("b"));
        let mut index = StreamIndex::default();
        assert_eq!(index.version(a), None);
        index.push(a, 1);
        index.push(a, 3);
        index.push(a, 4);
        assert_eq!(index.version(a), Some(2));
        assert_eq!(index.positions(a), [1, 3, 4]);

        let mut batch = Pending::default();
        let mut request = Pending::default();
        request.push(b, 5);
        request.push(a, 6);
        assert_eq!(version_through(&index, &[&batch, &request], a), Some(3));
        assert_eq!(version_through(&index, &[&batch, &request], b), Some(0));
        batch.absorb(request);
        assert_eq!(version_through(&index, &[&batch], b), Some(0));
        assert_eq!(index.version(b), None, "nothing is visible before the commit");
        batch.commit_into(&mut index);
        assert_eq!(index.positions(a), [1, 3, 4, 6]);
        assert_eq!(index.positions(b), [5]);
        assert_eq!(index.streams(), 2);
    }

    #[test]
    fn keys_tell_names_apart() {
        assert_ne!(StreamKey::of("delivery-1"), StreamKey::of("delivery-2"));
        assert_eq!(StreamKey::of("intent-MOB-1/ios"), StreamKey::of("intent-MOB-1/ios"));
    }
}
