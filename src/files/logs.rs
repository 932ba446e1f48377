//! Build logs on the gateway: `logs/{build}/attempt-{n}.log`. While an attempt runs, its node
//! sends chunks at offsets ([`BuildLogs::append`]): each is stored from where the stored output
//! ends, so a retried chunk is never stored twice, and a chunk past the end is not stored (the
//! answer says where to resume). When the attempt ends, the node uploads the whole log
//! ([`BuildLogs::replace`]), which replaces what the chunks made. Past `nodes.max_log_bytes` a log
//! is cut, with a line saying so. Readers following a log are woken by every change.
//!
//! The file says how much arrived (nothing is cached beside it), so gateways that share the
//! folder agree; two of them taking overlapping chunks at the same moment could store a stretch
//! twice in the live view, which the whole upload then replaces.
//!
//! Chunks are counted (metrics), never recorded in the event log: the log's events say what
//! happened to a build, the file what it printed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use meshgate_domain::node_api::ChunkAnswer;
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Mutex};
use uuid::Uuid;

/// What a chunk at `offset` of `len` bytes adds to a log that holds `received` bytes of output,
/// under a cap of `max` bytes: the bytes to skip at its start (already stored), the bytes to
/// write, and whether the log is cut after them. Pure: the arithmetic of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub skip: usize,
    pub write: usize,
    pub cut: bool,
}

pub fn plan(received: u64, offset: u64, len: usize, max: u64) -> Option<Plan> {
    if offset > received {
        return None;
    }
    let skip = (received - offset).min(len as u64) as usize;
    let new = len - skip;
    let room = max.saturating_sub(received) as usize;
    let write = new.min(room);
    Some(Plan { skip, write, cut: write < new })
}

/// The line that ends a cut log.
pub fn cut_line(max: u64) -> String {
    format!("\n[meshgate: the log was cut at {max} bytes (nodes.max_log_bytes)]\n")
}

pub struct BuildLogs {
    dir: PathBuf,
    max_bytes: u64,
    /// One change to the logs at a time in this gateway (a chunk is read, then written).
    writing: Mutex<()>,
    /// Per build: bumped at every change, for readers that follow.
    changes: std::sync::Mutex<HashMap<Uuid, watch::Sender<u64>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot write the log")]
    Io(#[from] std::io::Error),
    #[error("the upload broke off")]
    Body(#[source] axum::Error),
}

impl BuildLogs {
    pub fn new(dir: PathBuf, max_bytes: u64) -> BuildLogs {
        BuildLogs { dir, max_bytes, writing: Mutex::default(), changes: std::sync::Mutex::default() }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn path(&self, build_id: Uuid, attempt: u32) -> PathBuf {
        self.dir.join(build_id.to_string()).join(format!("attempt-{attempt}.log"))
    }

    /// The newest attempt with a log, if any.
    pub async fn newest_attempt(&self, build_id: Uuid) -> Option<u32> {
        let mut entries = tokio::fs::read_dir(self.dir.join(build_id.to_string())).await.ok()?;
        let mut newest = None;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(n) = attempt_of(&name) {
                newest = newest.max(Some(n));
            }
        }
        newest
    }

    /// Builds whose newest log was last written before `before`, with the attempts whose logs
    /// the gateway holds.
    pub fn expired(&self, before: SystemTime) -> Vec<(Uuid, Vec<u32>)> {
        super::expired_builds(&self.dir, before)
            .into_iter()
            .map(|(build_id, files)| {
                let mut attempts: Vec<u32> = files.iter().filter_map(|f| attempt_of(&f.to_string_lossy())).collect();
                attempts.sort_unstable();
                attempts.dedup();
                (build_id, attempts)
            })
            .collect()
    }

    /// Removes every log of a build.
    pub fn remove(&self, build_id: Uuid) -> std::io::Result<()> {
        super::remove_folder(&self.dir.join(build_id.to_string()))
    }

    /// Follows a build's log: changes whenever any of its attempts' logs changes.
    pub fn follow(&self, build_id: Uuid) -> watch::Receiver<u64> {
        let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        changes.entry(build_id).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    fn changed(&self, build_id: Uuid) {
        let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = changes.get(&build_id) {
            sender.send_modify(|n| *n += 1);
            if sender.receiver_count() == 0 {
                changes.remove(&build_id);
            }
        }
    }

    /// Stores a chunk of a running attempt's output that starts at `offset`.
    pub async fn append(
        &self,
        build_id: Uuid,
        attempt: u32,
        offset: u64,
        bytes: Bytes,
    ) -> Result<ChunkAnswer, LogError> {
        let path = self.path(build_id, attempt);
        let max = self.max_bytes;
        let writing = self.writing.lock().await;
        // One trip to the blocking pool for the whole chunk: a chunk comes every few milliseconds
        // from a chatty build, and each trip is a thread hand-off.
        let written = tokio::task::spawn_blocking(move || append_at(&path, offset, &bytes, max))
            .await
            .map_err(|e| LogError::Io(std::io::Error::other(e)))??;
        drop(writing);
        metrics::counter!(crate::metrics::LOG_CHUNKS).increment(1);
        metrics::counter!(crate::metrics::LOG_CHUNK_BYTES).increment(written.1);
        if written.1 > 0 || written.0.cut {
            self.changed(build_id);
        }
        Ok(written.0)
    }

    /// Replaces an attempt's log with the whole log its node uploaded (`total` bytes long; the
    /// body holds at most the cap of it), streamed to disk. Returns the bytes stored.
    pub async fn replace(
        &self,
        build_id: Uuid,
        attempt: u32,
        total: Option<u64>,
        body: impl Stream<Item = Result<Bytes, axum::Error>> + Unpin,
    ) -> Result<u64, LogError> {
        let path = self.path(build_id, attempt);
        tokio::fs::create_dir_all(path.parent().unwrap_or(&self.dir)).await?;
        let part = path.with_extension(format!("part-{}", Uuid::now_v7().simple()));
        let written = write_capped(&part, body, self.max_bytes, total).await;
        let written = match written {
            Ok(written) => written,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
        };
        let writing = self.writing.lock().await;
        tokio::fs::rename(&part, &path).await?;
        drop(writing);
        self.changed(build_id);
        Ok(written.stored)
    }
}

/// Stores a chunk at `offset` in the log at `path` (capped at `max`): the answer, and the bytes
/// written.
/// The attempt a log file's name (`attempt-{n}.log`) is of.
fn attempt_of(name: &str) -> Option<u32> {
    name.strip_prefix("attempt-").and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse().ok())
}

fn append_at(path: &Path, offset: u64, bytes: &[u8], max: u64) -> std::io::Result<(ChunkAnswer, u64)> {
    use std::io::Write;
    // The file says how much arrived; a cut one is longer than the cap (its closing line).
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let past = offset + bytes.len() as u64;
    if size > max {
        return Ok((ChunkAnswer { received: past, cut: true }, 0));
    }
    let Some(plan) = plan(size, offset, bytes.len(), max) else {
        return Ok((ChunkAnswer { received: size, cut: false }, 0));
    };
    if plan.write > 0 || plan.cut {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        file.write_all(&bytes[plan.skip..plan.skip + plan.write])?;
        if plan.cut {
            file.write_all(cut_line(max).as_bytes())?;
        }
    }
    let received = if plan.cut { past } else { size + plan.write as u64 };
    Ok((ChunkAnswer { received, cut: plan.cut }, plan.write as u64))
}

struct Written {
    /// Bytes in the file.
    stored: u64,
}

async fn write_capped(
    path: &Path,
    mut body: impl Stream<Item = Result<Bytes, axum::Error>> + Unpin,
    max: u64,
    total: Option<u64>,
) -> Result<Written, LogError> {
    let mut file = tokio::fs::File::create(path).await?;
    let mut received = 0u64;
    let mut cut = false;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(LogError::Body)?;
        let room = max.saturating_sub(received) as usize;
        let take = chunk.len().min(room);
        file.write_all(&chunk[..take]).await?;
        received += chunk.len() as u64;
        cut |= take < chunk.len();
    }
    // The node sent the first `max` bytes of a longer log.
    cut |= total.is_some_and(|t| t > received);
    let mut stored = received.min(max);
    if cut {
        let line = cut_line(max);
        file.write_all(line.as_bytes()).await?;
        stored += line.len() as u64;
    }
    file.flush().await?;
    Ok(Written { stored })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_stored_from_where_the_stored_output_ends_and_cut_at_the_cap() {
        // In order.
        assert_eq!(plan(0, 0, 10, 100), Some(Plan { skip: 0, write: 10, cut: false }));
        // A retry of the chunk just stored: nothing again.
        assert_eq!(plan(10, 0, 10, 100), Some(Plan { skip: 10, write: 0, cut: false }));
        // A retry that overlaps and goes on: only the new part.
        assert_eq!(plan(10, 5, 10, 100), Some(Plan { skip: 5, write: 5, cut: false }));
        // Past the end: not stored.
        assert_eq!(plan(10, 11, 10, 100), None);
        // Reaching the cap: what fits, then cut.
        assert_eq!(plan(95, 95, 10, 100), Some(Plan { skip: 0, write: 5, cut: true }));
        assert_eq!(plan(100, 100, 0, 100), Some(Plan { skip: 0, write: 0, cut: false }));
    }

    fn body(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, axum::Error>> + Unpin {
        futures_util::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn chunks_in_any_repetition_make_the_output_once_and_the_whole_upload_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let logs = BuildLogs::new(dir.path().to_owned(), 1000);
        let build = Uuid::from_u128(1);
        let follower = logs.follow(build);
        assert_eq!(
            logs.append(build, 1, 0, Bytes::from_static(b"hello ")).await.unwrap(),
            ChunkAnswer { received: 6, cut: false }
        );
        assert!(follower.has_changed().unwrap());
        // The same chunk again (its answer was lost), then one overlapping, then one past the end.
        assert_eq!(logs.append(build, 1, 0, Bytes::from_static(b"hello ")).await.unwrap().received, 6);
        assert_eq!(logs.append(build, 1, 3, Bytes::from_static(b"lo world")).await.unwrap().received, 11);
        assert_eq!(
            logs.append(build, 1, 20, Bytes::from_static(b"later")).await.unwrap(),
            ChunkAnswer { received: 11, cut: false }
        );
        assert_eq!(std::fs::read_to_string(logs.path(build, 1)).unwrap(), "hello world");
        // A gateway that restarts reads how much it holds from the file.
        let again = BuildLogs::new(dir.path().to_owned(), 1000);
        assert_eq!(again.append(build, 1, 11, Bytes::from_static(b"!")).await.unwrap().received, 12);
        // The final upload is the truth.
        let stored = again.replace(build, 1, Some(13), body(&[b"hello", b" world!\n"])).await.unwrap();
        assert_eq!(stored, 13);
        assert_eq!(std::fs::read_to_string(again.path(build, 1)).unwrap(), "hello world!\n");
        assert_eq!(again.newest_attempt(build).await, Some(1));
    }

    #[tokio::test]
    async fn a_log_past_the_cap_is_cut_with_a_line_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let logs = BuildLogs::new(dir.path().to_owned(), 8);
        let build = Uuid::from_u128(2);
        assert_eq!(
            logs.append(build, 1, 0, Bytes::from_static(b"0123456789")).await.unwrap(),
            ChunkAnswer { received: 10, cut: true }
        );
        assert!(logs.append(build, 1, 10, Bytes::from_static(b"more")).await.unwrap().cut);
        let text = std::fs::read_to_string(logs.path(build, 1)).unwrap();
        assert_eq!(text, format!("01234567{}", cut_line(8)));
        // A node that sends the first 8 bytes of a 20-byte log.
        logs.replace(build, 2, Some(20), body(&[b"abcdefgh"])).await.unwrap();
        assert_eq!(std::fs::read_to_string(logs.path(build, 2)).unwrap(), format!("abcdefgh{}", cut_line(8)));
        // An older node that sends it all.
        logs.replace(build, 3, None, body(&[b"abcdef", b"ghijkl"])).await.unwrap();
        assert_eq!(std::fs::read_to_string(logs.path(build, 3)).unwrap(), format!("abcdefgh{}", cut_line(8)));
        // After a restart, a cut log stays cut.
        let again = BuildLogs::new(dir.path().to_owned(), 8);
        assert!(again.append(build, 1, 14, Bytes::from_static(b"x")).await.unwrap().cut);
    }
}
