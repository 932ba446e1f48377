//! The stream index: where each stream's events sit in the log.
//!
//! The log table is append-only and has no secondary index, so an append writes only at the end of
//! one B-tree (ADR 0006). The index lives in two places: a folder beside the log
//! (`events.streams/`, see [`super::streams`]) holds every stream up to the position it has
//! been flushed to, and the writer's memory ([`StreamIndex`]) holds the streams appended since then
//! and a bounded set of recently used ones. A stream in neither does not exist. The writer thread is
//! the only appender of the log (a lock file keeps other processes out), so it can check expected
//! versions against this index; changes reach it only after the commit that made them is durable.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A stream's name as the index keys it: its XXH3-128 (ADR 0006). Reads compare the full name
/// stored in each row, so a collision could only cost a spurious version conflict.
///
/// Two words rather than a `u128`, whose 16-byte alignment would pad each slot of the writer's
/// table of streams from 48 to 64 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamKey {
    high: u64,
    low: u64,
}

impl StreamKey {
    pub fn of(stream: &str) -> Self {
        let hash = xxhash_rust::xxh3::xxh3_128(stream.as_bytes());
        StreamKey { high: (hash >> 64) as u64, low: hash as u64 }
    }

    /// The key as the index file stores it.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.high.to_be_bytes());
        bytes[8..].copy_from_slice(&self.low.to_be_bytes());
        bytes
    }
}

/// One word for the writer's tables: the two halves of a hash, folded.
impl std::hash::Hash for StreamKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.high ^ self.low);
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

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap<V> = HashMap<StreamKey, V, BuildHasherDefault<KeyHasher>>;
type KeySet = HashSet<StreamKey, BuildHasherDefault<KeyHasher>>;

/// The global positions of one stream's events; the version of an event is its index here.
///
/// Most streams hold one or two events; a longer list is boxed without spare capacity, so a value
/// takes 24 bytes in the writer's table of streams (a `Vec` would make it 32).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Positions {
    One(u64),
    Two(u64, u64),
    Many(Box<[u64]>),
}

impl Positions {
    pub fn len(&self) -> usize {
        match self {
            Positions::One(_) => 1,
            Positions::Two(..) => 2,
            Positions::Many(all) => all.len(),
        }
    }

    pub fn last(&self) -> u64 {
        match self {
            Positions::One(a) | Positions::Two(_, a) => *a,
            Positions::Many(all) => all.last().copied().unwrap_or(0),
        }
    }

    fn push(&mut self, position: u64) {
        *self = match std::mem::replace(self, Positions::One(0)) {
            Positions::One(a) => Positions::Two(a, position),
            Positions::Two(a, b) => Positions::Many(Box::new([a, b, position])),
            Positions::Many(all) => {
                let mut all = all.into_vec();
                all.push(position);
                Positions::Many(all.into_boxed_slice())
            }
        }
    }

    pub fn to_vec(&self) -> Vec<u64> {
        match self {
            Positions::One(a) => vec![*a],
            Positions::Two(a, b) => vec![*a, *b],
            Positions::Many(all) => all.to_vec(),
        }
    }

    fn from_vec(all: Vec<u64>) -> Option<Self> {
        match all.len() {
            0 => None,
            1 => Some(Positions::One(all[0])),
            2 => Some(Positions::Two(all[0], all[1])),
            _ => Some(Positions::Many(all.into_boxed_slice())),
        }
    }

    /// The positions as the index file stores them: the first, then each gap to the next, as
    /// LEB128 varints (a stream's events are usually close together: two or three bytes each).
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.len() * 3);
        let mut previous = 0;
        for position in self.to_vec() {
            let mut gap = position - previous;
            previous = position;
            loop {
                let low = (gap & 0x7f) as u8;
                gap >>= 7;
                if gap == 0 {
                    bytes.push(low);
                    break;
                }
                bytes.push(low | 0x80);
            }
        }
        bytes
    }

    /// Reads what [`Positions::encode`] wrote; `None` if the bytes are not such a list.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut all = Vec::new();
        let (mut previous, mut gap, mut shift) = (0u64, 0u64, 0u32);
        for byte in bytes {
            if shift > 63 {
                return None;
            }
            gap |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                previous = previous.checked_add(gap)?;
                all.push(previous);
                (gap, shift) = (0, 0);
            } else {
                shift += 7;
            }
        }
        if shift != 0 {
            return None;
        }
        Self::from_vec(all)
    }
}

#[derive(Debug)]
struct Entry {
    positions: Positions,
    /// When the writer last needed this stream (a tick of [`StreamIndex::clock`]).
    used: u64,
}

/// The part of the stream index in the writer's memory: complete positions of the streams appended
/// since the last flush to the index file (pinned) and of up to `capacity` more, least recently used
/// evicted first. A stream missing here is looked up in the file.
#[derive(Debug)]
pub struct StreamIndex {
    streams: KeyMap<Entry>,
    /// Streams appended since they were last handed to the flusher.
    dirty: KeySet,
    clock: u64,
    capacity: usize,
}

impl StreamIndex {
    pub fn new(capacity: usize) -> Self {
        StreamIndex { streams: KeyMap::default(), dirty: KeySet::default(), clock: 0, capacity: capacity.max(1) }
    }

    /// The stream's positions if it is in memory (readers: a miss asks the index file).
    pub fn cached(&self, key: StreamKey) -> Option<Vec<u64>> {
        self.streams.get(&key).map(|e| e.positions.to_vec())
    }

    /// The stream's last version if it is in memory, marking it used; `None`: ask the index file.
    pub fn version(&mut self, key: StreamKey) -> Option<u64> {
        self.clock += 1;
        let entry = self.streams.get_mut(&key)?;
        entry.used = self.clock;
        Some(entry.positions.len() as u64 - 1)
    }

    /// Keeps what the index file holds for a stream that was not in memory.
    pub fn load(&mut self, key: StreamKey, positions: Positions) {
        self.clock += 1;
        self.streams.entry(key).or_insert(Entry { positions, used: self.clock });
    }

    /// Records the next event of a stream, which is either in memory or new. Positions must
    /// arrive in log order.
    pub fn push(&mut self, key: StreamKey, position: u64) {
        self.clock += 1;
        let used = self.clock;
        self.streams
            .entry(key)
            .and_modify(|entry| {
                entry.positions.push(position);
                entry.used = used;
            })
            .or_insert(Entry { positions: Positions::One(position), used });
        self.dirty.insert(key);
    }

    /// Streams appended since the last call, with their whole positions, for the index file.
    pub fn take_dirty(&mut self) -> Vec<(StreamKey, Positions)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty.into_iter().filter_map(|key| Some((key, self.streams.get(&key)?.positions.clone()))).collect()
    }

    /// Streams appended since the last [`StreamIndex::take_dirty`].
    pub fn dirty(&self) -> usize {
        self.dirty.len()
    }

    /// Forgets the least recently used streams beyond the capacity, among those the index file
    /// holds whole (their last position is at most `flushed`). Runs when a quarter more than the
    /// capacity is held, so its cost spreads over many appends.
    pub fn evict(&mut self, flushed: u64) {
        if self.streams.len() <= self.capacity + self.capacity / 4 {
            return;
        }
        let mut clean: Vec<(u64, StreamKey)> = self
            .streams
            .iter()
            .filter(|(key, entry)| entry.positions.last() <= flushed && !self.dirty.contains(key))
            .map(|(key, entry)| (entry.used, *key))
            .collect();
        let excess = self.streams.len() - self.capacity;
        if clean.len() > excess {
            clean.select_nth_unstable(excess);
            clean.truncate(excess);
        }
        for (_, key) in clean {
            self.streams.remove(&key);
        }
        self.streams.shrink_to(self.capacity + self.capacity / 4);
    }

    /// Streams held in memory.
    pub fn len(&self) -> usize {
        self.streams.len()
    }
}

/// Streams appended in a batch that has not committed yet, layered over the committed index.
#[derive(Debug, Default)]
pub struct Pending {
    appended: KeyMap<Vec<u64>>,
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

/// A stream's last version counting its committed version and uncommitted layers over it.
pub fn version_through(committed: Option<u64>, layers: &[&Pending], key: StreamKey) -> Option<u64> {
    let committed = committed.map_or(0, |v| v + 1);
    (committed + layers.iter().map(|layer| layer.count(key)).sum::<u64>()).checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_the_streams_xxh3_128_as_the_index_file_holds_it() {
        // The index file keys streams by these bytes: a change would make every stream indexed
        // before it look new, so it must come with a new `LAYOUT` (ADR 0006). The values are
        // XXH3-128's canonical (big-endian) form, as the reference implementation prints them.
        for (name, hex) in [
            ("delivery-0f", "ca1c11a3bd219a0eb04fcfed9103a09b"),
            ("intent-MOB-1", "92b3b9518c64b7ec727a047af1389c90"),
            ("build-01a25208-4358-747a-a9c9-1941afbc3dbc", "bffbfc75966d675a3dc8310d3110cb46"),
            ("", "99aa06d3014798d86001c324468d497f"),
        ] {
            let bytes: String = StreamKey::of(name).to_bytes().iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(bytes, hex, "{name}");
        }
        let keys: Vec<StreamKey> = (0..64).map(|n| StreamKey::of(&format!("s{n}"))).collect();
        for (a, b) in keys.iter().zip(keys.iter().skip(1)) {
            assert_eq!(a.cmp(b), a.to_bytes().cmp(&b.to_bytes()), "keys sort as their bytes do");
        }
    }

    #[test]
    fn a_stream_in_the_writers_table_takes_48_bytes() {
        // Its key, its positions and when it was used: the table holds up to 81,920 of them
        // (docs/benchmarks.md, "Memory after a burst").
        assert_eq!(std::mem::size_of::<(StreamKey, Entry)>(), 48);
    }

    #[test]
    fn positions_grow_one_at_a_time_and_round_trip_through_the_file() {
        let mut positions = Positions::One(3);
        for (next, expected) in [(5, vec![3, 5]), (9, vec![3, 5, 9]), (200, vec![3, 5, 9, 200])] {
            positions.push(next);
            assert_eq!(positions.to_vec(), expected);
            assert_eq!(positions.last(), next);
            assert_eq!(Positions::decode(&positions.encode()), Some(positions.clone()));
        }
    }

    #[test]
    fn versions_count_committed_and_pending_events() {
        let (a, b) = (StreamKey::of("a"), StreamKey::of("b"));
        let mut index = StreamIndex::new(16);
        assert_eq!(index.version(a), None);
        index.push(a, 1);
        index.push(a, 3);
        index.push(a, 4);
        assert_eq!(index.version(a), Some(2));
        assert_eq!(index.cached(a), Some(vec![1, 3, 4]));

        let mut batch = Pending::default();
        let mut request = Pending::default();
        request.push(b, 5);
        request.push(a, 6);
        assert_eq!(version_through(index.version(a), &[&batch, &request], a), Some(3));
        assert_eq!(version_through(index.version(b), &[&batch, &request], b), Some(0));
        batch.absorb(request);
        assert_eq!(version_through(index.version(b), &[&batch], b), Some(0));
        assert_eq!(index.version(b), None, "nothing is visible before the commit");
        batch.commit_into(&mut index);
        assert_eq!(index.cached(a), Some(vec![1, 3, 4, 6]));
        assert_eq!(index.cached(b), Some(vec![5]));
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn keys_tell_names_apart() {
        assert_ne!(StreamKey::of("delivery-1"), StreamKey::of("delivery-2"));
        assert_eq!(StreamKey::of("intent-MOB-1/ios"), StreamKey::of("intent-MOB-1/ios"));
    }

    #[test]
    fn positions_survive_encoding() {
        for all in [vec![1], vec![1, 2], vec![7, 300, 301, 1 << 40, u64::MAX]] {
            let positions = Positions::from_vec(all.clone()).unwrap();
            assert_eq!(Positions::decode(&positions.encode()).unwrap().to_vec(), all);
        }
        assert_eq!(Positions::decode(&[]), None);
        assert_eq!(Positions::decode(&[0x80]), None, "a varint cut short");
        assert_eq!(Positions::decode(&[0xff; 11]), None, "a varint too long");
    }

    #[test]
    fn only_streams_the_file_holds_are_evicted_least_recently_used_first() {
        let mut index = StreamIndex::new(4);
        let keys: Vec<StreamKey> = (0..6).map(|n| StreamKey::of(&format!("s{n}"))).collect();
        for (position, key) in (1..).zip(&keys) {
            index.push(*key, position);
        }
        let _ = index.take_dirty();
        index.evict(3);
        // Six held, five allowed before eviction runs (a quarter over four, rounded down).
        assert_eq!(index.len(), 4, "s0..s2 were flushed; two of them go");
        assert_eq!(index.version(keys[2]), Some(0), "the most recent flushed stream stays");
        assert!(keys[3..].iter().all(|k| index.cached(*k).is_some()), "unflushed streams are pinned");

        index.push(keys[5], 7);
        index.evict(u64::MAX);
        assert_eq!(index.len(), 4, "under a quarter over the capacity, nothing goes");
        index.push(StreamKey::of("s6"), 8);
        index.push(StreamKey::of("s7"), 9);
        assert_eq!(index.take_dirty().len(), 3);
        index.evict(u64::MAX);
        assert_eq!(index.len(), 4);
        assert!(index.cached(keys[3]).is_none() && index.cached(keys[4]).is_none(), "the least recently used go");
        assert!(index.cached(keys[2]).is_some(), "a stream read recently stays");
    }
}
