//! Which rows of a projection changed since the read model last saved them.
//!
//! A save writes the rows changed, not the whole projection, so its cost follows the work done
//! since the last save rather than what the projection holds. Each change is numbered: a save
//! takes the keys with the [`Unsaved::mark`] of that moment and, once committed, forgets only the
//! changes up to it, so a row changed again while the save ran is saved the next time.

use std::collections::BTreeMap;

/// Keys changed since the last save, each with the number of its latest change. Bookkeeping, not
/// state: two folds of one log are equal whatever either saved.
#[derive(Debug, Clone)]
pub struct Unsaved<K> {
    changed: BTreeMap<K, u64>,
    count: u64,
}

impl<K> Default for Unsaved<K> {
    fn default() -> Self {
        Unsaved { changed: BTreeMap::new(), count: 0 }
    }
}

impl<K> PartialEq for Unsaved<K> {
    fn eq(&self, _: &Unsaved<K>) -> bool {
        true
    }
}

impl<K> Eq for Unsaved<K> {}

impl<K: Ord> Unsaved<K> {
    /// The row under `key` changed (was added, changed or removed).
    pub fn touch(&mut self, key: K) {
        self.count += 1;
        self.changed.insert(key, self.count);
    }

    /// The keys changed since the last save, in key order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.changed.keys()
    }

    /// The mark to pass to [`Unsaved::saved`] once what [`Unsaved::keys`] gave now is saved.
    pub fn mark(&self) -> u64 {
        self.count
    }

    /// The changes up to `mark` are saved; later ones are kept for the next save.
    pub fn saved(&mut self, mark: u64) {
        self.changed.retain(|_, change| *change > mark);
    }

    /// Forgets the changes of the keys `keep` refuses (rows the save removes by other means).
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.changed.retain(|key, _| keep(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_save_forgets_what_it_saw_and_keeps_what_changed_since() {
        let mut unsaved = Unsaved::default();
        unsaved.touch("a");
        unsaved.touch("b");
        let (seen, mark): (Vec<&str>, u64) = (unsaved.keys().copied().collect(), unsaved.mark());
        assert_eq!(seen, ["a", "b"]);
        // Changed again while the save runs: saved next time.
        unsaved.touch("b");
        unsaved.touch("c");
        unsaved.saved(mark);
        assert_eq!(unsaved.keys().copied().collect::<Vec<_>>(), ["b", "c"]);
        unsaved.saved(unsaved.mark());
        assert_eq!(unsaved.keys().count(), 0);
    }
}
