//! The live log and its archives read as one (`--include-archives DIR`): every archive in the
//! folder is checked and written into a scratch SQLite log, and each read asks both and merges by
//! position. A position found in both (an archive whose removal was cut short, then archived
//! again) is read once.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use super::ArchiveError;
use crate::store::sqlite::Reader;
use crate::store::{Decoded, EventFilter, LogReader, StoreError, StoredEvent};

pub struct WithArchives {
    live: Arc<dyn LogReader>,
    archived: Reader,
    /// Holds the scratch log; removed when this is dropped.
    _scratch: tempfile::TempDir,
    /// Events read from the archives.
    pub events: u64,
    /// The archive files read.
    pub files: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenArchivesError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("cannot make the scratch log the archives are read from")]
    Scratch(#[source] std::io::Error),
    #[error("cannot read the archives into a scratch log")]
    Store(#[source] StoreError),
}

impl WithArchives {
    /// Reads every archive in `dir` (none there: an error) beside `live`.
    pub fn open(live: Arc<dyn LogReader>, dir: &Path) -> Result<WithArchives, OpenArchivesError> {
        let files = super::list(dir)?;
        if files.is_empty() {
            return Err(ArchiveError::Empty(dir.to_owned()).into());
        }
        let scratch =
            tempfile::Builder::new().prefix("meshgate-archives").tempdir().map_err(OpenArchivesError::Scratch)?;
        let path = scratch.path().join("archived.sqlite");
        let mut count = 0u64;
        let fed = crate::store::sqlite::archive::scratch(&path, |insert| {
            for file in &files {
                super::read(file, |e| {
                    count += 1;
                    insert(e);
                })?;
            }
            Ok::<(), ArchiveError>(())
        });
        fed.map_err(OpenArchivesError::Store)??;
        let archived = Reader::open(&path).map_err(OpenArchivesError::Store)?;
        Ok(WithArchives { live, archived, _scratch: scratch, events: count, files: files.len() })
    }
}

/// Both sides' events in position order, a position once, at most `limit`.
fn merge<T>(a: Vec<T>, b: Vec<T>, limit: usize, position: impl Fn(&T) -> u64) -> Vec<T> {
    let mut out = Vec::with_capacity((a.len() + b.len()).min(limit));
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    while out.len() < limit {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if position(x) == position(y) => {
                a.next();
                b.next()
            }
            (Some(x), Some(y)) if position(x) < position(y) => a.next(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, None) => None,
        };
        match next {
            Some(e) => out.push(e),
            None => break,
        }
    }
    out
}

#[async_trait]
impl LogReader for WithArchives {
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let archived = self.archived.read_all(after, limit).await?;
        let live = self.live.read_all(after, limit).await?;
        Ok(merge(archived, live, limit, |e| e.position))
    }

    async fn read_decoded(&self, after: u64, limit: usize, wanted: &[&str]) -> Result<Decoded, StoreError> {
        let (archived, a) = self.archived.read_decoded(after, limit, wanted).await?;
        let (live, b) = self.live.read_decoded(after, limit, wanted).await?;
        Ok((merge(archived, live, usize::MAX, |e| e.position), a.max(b)))
    }

    async fn query(&self, filter: &EventFilter, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let archived = self.archived.query(filter, after, limit).await?;
        let live = self.live.query(filter, after, limit).await?;
        Ok(merge(archived, live, limit, |e| e.position))
    }

    async fn last_position(&self) -> Result<u64, StoreError> {
        Ok(self.live.last_position().await?.max(self.archived.last_position().await?))
    }
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn merging_keeps_log_order_reads_a_position_once_and_stops_at_the_limit() {
        assert_eq!(merge(vec![1, 4, 5, 9], vec![2, 3, 5, 10], 100, |p| *p), vec![1, 2, 3, 4, 5, 9, 10]);
        assert_eq!(merge(vec![1, 4], vec![2, 3], 3, |p| *p), vec![1, 2, 3]);
        assert_eq!(merge(Vec::new(), vec![7], 3, |p| *p), vec![7]);
    }
}
