//! The checkpointer thread: copies the WAL back into the log so that no group commit waits for it.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use crate::store::{StoreError, StoreResultExt};

/// Copies the WAL back into the database on its own connection and thread, so that no group
/// commit waits for a checkpoint. Passive checkpoints never block the writer.
pub(super) struct Checkpointer {
    wake: std::sync::mpsc::SyncSender<()>,
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
        std::thread::Builder::new()
            .name("meshgate-ckpt".into())
            .spawn(move || {
                // Ends when the writer (the only sender) is gone.
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
        Ok(Checkpointer { wake })
    }

    pub(super) fn request(&self) {
        // A full channel means a checkpoint is already due.
        let _ = self.wake.try_send(());
    }
}
