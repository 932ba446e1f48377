//! The live log: while a build runs, what its log holds is sent to the gateway in chunks, at
//! most 2 s after it was written or as soon as 64 KiB wait, each at the offset it starts at. The
//! gateway answers how much it holds, so a retried chunk is never stored twice and a chunk it
//! missed is sent again. The upload when the build ends stays the source of truth.

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use meshgate_domain::node_api::ChunkQuery;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::gateway::{backoff, Gateway};
use crate::output::Log;

/// Output that waits this long is sent, however little it is.
const EVERY: Duration = Duration::from_secs(2);
/// This much waiting output is sent at once.
const ENOUGH: u64 = 64 * 1024;
/// Most bytes one chunk carries.
const MOST: u64 = 1024 * 1024;

/// Which attempt's output goes where.
#[derive(Clone)]
pub struct Target {
    pub gateway: Gateway,
    pub build_id: Uuid,
    pub node_id: String,
    pub attempt: u32,
}

/// A running shipper; [`LiveLog::finish`] when the build's output has ended.
pub struct LiveLog {
    stop: watch::Sender<bool>,
    task: JoinHandle<u64>,
}

impl LiveLog {
    pub fn start(target: Target, log: Log) -> LiveLog {
        let (stop, stopped) = watch::channel(false);
        LiveLog { stop, task: tokio::spawn(ship(target, log, stopped)) }
    }

    /// Stops sending (what is left goes with the final upload); says how much the gateway held.
    pub async fn finish(self) -> u64 {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or(0)
    }
}

/// Bytes `[from, to)` of the log file.
fn read_range(log: &Log, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(log.path())?;
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::with_capacity((to - from) as usize);
    file.take(to - from).read_to_end(&mut bytes)?;
    Ok(bytes)
}

async fn ship(target: Target, log: Log, mut stopped: watch::Receiver<bool>) -> u64 {
    // Signalled once per 64 KiB written, and at the first write after a wait for one.
    let mut changes = log.changes();
    // What the gateway holds, by its last answer.
    let mut sent = 0u64;
    // Since when output has been waiting.
    let mut waiting_since: Option<Instant> = None;
    let mut failures = 0;
    loop {
        changes.borrow_and_update();
        let total = log.len();
        if total > sent {
            let since = *waiting_since.get_or_insert_with(Instant::now);
            if total - sent < ENOUGH && since.elapsed() < EVERY {
                tokio::select! {
                    _ = tokio::time::sleep_until(since + EVERY) => {}
                    changed = changes.changed() => if changed.is_err() { return sent },
                    _ = stopped.wait_for(|s| *s) => return sent,
                }
                continue;
            }
            let to = total.min(sent + MOST);
            let bytes = match read_range(&log, sent, to) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a build log for the live log; it goes with the final upload");
                    return sent;
                }
            };
            let query = ChunkQuery { node_id: target.node_id.clone(), attempt: target.attempt, offset: sent };
            let answer = tokio::select! {
                answer = target.gateway.send_chunk(target.build_id, &query, bytes) => answer,
                _ = stopped.wait_for(|s| *s) => return sent,
            };
            match answer {
                Ok(answer) => {
                    failures = 0;
                    // Past the end: the gateway missed output (a restart); resend from what it holds.
                    sent = answer.received;
                    if sent >= total {
                        waiting_since = None;
                    }
                    if answer.cut {
                        return sent;
                    }
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    tracing::debug!(build_id = %target.build_id, error = %e, "a live log chunk was not taken; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(failures, Duration::from_millis(200), Duration::from_secs(5))) => {}
                        _ = stopped.wait_for(|s| *s) => return sent,
                    }
                }
                Err(e) => {
                    // 409: the attempt is no longer this node's; 4xx: the gateway will not take it.
                    tracing::warn!(build_id = %target.build_id, error = %e, "live log stopped");
                    return sent;
                }
            }
        } else {
            // Nothing waits: be woken by the next write, whatever its size (checking once more
            // after asking, so a write in between is not missed).
            waiting_since = None;
            log.wake_at_next_write();
            if log.len() > sent {
                continue;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return sent },
                _ = stopped.wait_for(|s| *s) => return sent,
            }
        }
    }
}
