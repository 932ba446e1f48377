//! A histogram of whole seconds in fixed buckets: exact below 128 s, then 32 buckets per power of
//! two, each read as its middle (within 1.6 %), so a day of any number of builds costs a few
//! hundred counters at most, and only those it uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Counts of whole seconds in buckets: exact below 128, then 32 buckets per power of two.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Histogram(BTreeMap<u16, u32>);

/// Seconds below this are their own bucket.
const EXACT: u64 = 128;

/// The bucket of `seconds`.
fn bucket(seconds: u64) -> u16 {
    if seconds < EXACT {
        return seconds as u16;
    }
    let power = 63 - u64::from(seconds.leading_zeros()); // 7..=63
    let sub = (seconds >> (power - 5)) & 31;
    (EXACT + (power - 7) * 32 + sub) as u16
}

/// The smallest number of seconds in `bucket`.
fn bucket_floor(bucket: u16) -> u64 {
    let bucket = u64::from(bucket);
    if bucket < EXACT {
        return bucket;
    }
    let (power, sub) = ((bucket - EXACT) / 32 + 7, (bucket - EXACT) % 32);
    (32 + sub) << (power - 5)
}

/// What a sample in `bucket` reads as: itself below 128 s, else the bucket's middle.
fn bucket_reading(bucket: u16) -> u64 {
    let floor = bucket_floor(bucket);
    if floor < EXACT {
        return floor;
    }
    let width = 1u64 << (63 - floor.leading_zeros() as u64 - 5);
    floor + width / 2
}

impl Histogram {
    pub fn record(&mut self, seconds: u64) {
        *self.0.entry(bucket(seconds)).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (b, n) in &other.0 {
            *self.0.entry(*b).or_insert(0) += n;
        }
    }

    pub fn count(&self) -> u64 {
        self.0.values().map(|n| u64::from(*n)).sum()
    }

    /// What a sample of `seconds` reads back as (itself below 128 s).
    pub fn reading(seconds: u64) -> u64 {
        bucket_reading(bucket(seconds))
    }

    /// The `q` quantile by nearest rank (the smallest value at or above which lie `q` of the
    /// samples), as its bucket reads; none without samples.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        nearest_rank(self.0.iter().map(|(b, n)| (*b, u64::from(*n))), self.count(), q)
    }

    /// How the highest bucket with a sample reads.
    pub fn max(&self) -> Option<u64> {
        self.0.keys().next_back().map(|b| bucket_reading(*b))
    }
}

/// The `q` quantile of `count` samples in `buckets` (in order) by nearest rank, as its bucket
/// reads.
fn nearest_rank(buckets: impl Iterator<Item = (u16, u64)>, count: u64, q: f64) -> Option<u64> {
    if count == 0 {
        return None;
    }
    let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
    let mut seen = 0;
    for (b, n) in buckets {
        seen += n;
        if seen >= rank {
            return Some(bucket_reading(b));
        }
    }
    None
}

/// Histograms added up, dense (a slot per bucket up to the highest used): what an answer merges
/// many days into.
#[derive(Debug, Clone, Default)]
pub struct Sum(Vec<u64>);

impl Sum {
    pub fn add(&mut self, h: &Histogram) {
        if let Some((last, _)) = h.0.last_key_value() {
            if self.0.len() <= usize::from(*last) {
                self.0.resize(usize::from(*last) + 1, 0);
            }
        }
        for (b, n) in &h.0 {
            self.0[usize::from(*b)] += u64::from(*n);
        }
    }

    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// As [`Histogram::quantile`].
    pub fn quantile(&self, q: f64) -> Option<u64> {
        nearest_rank(self.0.iter().enumerate().map(|(b, n)| (b as u16, *n)), self.count(), q)
    }

    /// As [`Histogram::max`].
    pub fn max(&self) -> Option<u64> {
        self.0.iter().rposition(|n| *n > 0).map(|b| bucket_reading(b as u16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_below_128_are_kept_exactly_and_larger_ones_read_within_a_sixty_fourth_of_an_octave() {
        for s in 0..128 {
            assert_eq!(Histogram::reading(s), s);
        }
        for s in [128, 129, 600, 3599, 86_400, u64::MAX / 3, u64::MAX / 2] {
            let (floor, reading) = (bucket_floor(bucket(s)), Histogram::reading(s));
            assert!(floor <= s && s - floor <= s / 32, "{s} in a bucket from {floor}");
            assert!(reading.abs_diff(s) <= s / 64 + 1, "{s} reads as {reading}");
            assert_eq!(bucket(floor), bucket(s));
        }
        // 600 s: the bucket from 592 s, 16 s wide.
        assert_eq!((bucket_floor(bucket(600)), Histogram::reading(600)), (592, 600));
        assert_eq!(Histogram::reading(620), 616);
    }

    #[test]
    fn quantiles_are_by_nearest_rank() {
        let mut h = Histogram::default();
        for s in [10, 20, 30, 40, 50, 60, 70, 80, 90, 100] {
            h.record(s);
        }
        assert_eq!(
            (h.quantile(0.5), h.quantile(0.9), h.quantile(1.0), h.max()),
            (Some(50), Some(90), Some(100), Some(100))
        );
        assert_eq!(Histogram::default().quantile(0.5), None);
        let mut other = Histogram::default();
        other.record(5);
        other.record(4000);
        let mut sum = Sum::default();
        sum.add(&h);
        sum.add(&other);
        h.merge(&other);
        assert_eq!((h.count(), h.quantile(0.5), h.max()), (12, Some(50), Some(Histogram::reading(4000))));
        assert_eq!(
            (sum.count(), sum.quantile(0.5), sum.quantile(0.9), sum.max()),
            (12, h.quantile(0.5), h.quantile(0.9), h.max())
        );
    }
}
