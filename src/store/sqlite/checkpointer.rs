//! The checkpointer thread: copies the WAL back into the log so that no group commit waits for it.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use crate::store::{StoreError, StoreResultExt};

/// Copies the WAL back into the database on its own connection and thread, so that no group
/// commit waits for a checkpoint. Passive checkpoints never block the writer.
///
/// Dropped with the writer: the thread then truncates the WAL, closes its connection and is
/// waited for, so that once the store is closed nothing of it touches the log's files.
pub(super) struct Checkpointer {
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Bytes appended between two requests to the background checkpointer.
pub(super) const CHECKPOINT_EVERY_BYTES: usize = 1 << 20;

/// Bytes appended before the writer finishes a checkpoint itself, so that the WAL starts over.
///
/// Under steady load a background checkpoint never catches up with the writer: each pass copies
/// what was there when it began, and the WAL grows without bound (hundreds of MiB a minute), every
/// commit then allocating new blocks. The writer, between two batches, copies what the background
/// passes left (a commit or two) and lets its next commit rewrite the WAL from the start.
pub(super) const RESTART_EVERY_BYTES: usize = 8 << 20;

impl Checkpointer {
    pub(super) fn start(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).store_err()?;
        conn.busy_timeout(Duration::from_secs(5)).store_err()?;
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("meshgate-ckpt".into())
            .spawn(move || {
                // Ends when the writer's `Checkpointer` (the only sender) is dropped.
                while woken.recv().is_ok() {
                    // Pass after pass while the writer keeps adding frames, so that what is left
                    // for the writer to copy (`finish_checkpoint`) stays small.
                    for _ in 0..64 {
                        let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                        });
                        match pass {
                            Ok((0, log, copied)) if log > copied => continue,
                            Ok(_) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "wal checkpoint failed");
                                break;
                            }
                        }
                    }
                }
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            })
            .map_err(|e| StoreError::caused("cannot start the checkpoint thread", e))?;
        Ok(Checkpointer { wake: Some(wake), thread: Some(thread) })
    }

    pub(super) fn request(&self) {
        // A full channel means a checkpoint is already due.
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // The thread ends when its only sender is gone.
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_it_waits_for_its_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sqlite");
        // Another connection stays open, so the WAL is not removed with the checkpointer's.
        let writer = Connection::open(&path).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        writer.execute_batch("CREATE TABLE t (x BLOB); INSERT INTO t VALUES (zeroblob(65536));").unwrap();
        let wal = dir.path().join("log.sqlite-wal");
        for round in 0..20 {
            writer.execute("INSERT INTO t VALUES (zeroblob(65536))", []).unwrap();
            assert!(std::fs::metadata(&wal).unwrap().len() > 0, "round {round}: frames in the WAL");
            drop(Checkpointer::start(&path).unwrap());
            // Its last act, a truncating checkpoint, is done when the drop returns.
            assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0, "round {round}: the WAL is truncated");
        }
    }
}
