//! Results are written to disk before they are sent and removed once the gateway has answered,
//! so a network blip or an agent restart loses none.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use meshgate_domain::node_api::ResultRequest;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::gateway::{backoff, Delivered, Gateway};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spooled {
    pub build_id: Uuid,
    pub result: ResultRequest,
}

pub struct Spool {
    dir: PathBuf,
    /// Results being sent right now, so the periodic flush and a build's own send never send one
    /// result twice at once.
    in_flight: Mutex<HashSet<PathBuf>>,
}

impl Spool {
    pub fn open(dir: &Path) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        Ok(Spool { dir: dir.to_owned(), in_flight: Mutex::default() })
    }

    /// Takes a result for sending; false if another task is sending it.
    fn take(&self, path: &Path) -> bool {
        self.in_flight.lock().map(|mut set| set.insert(path.to_owned())).unwrap_or(false)
    }

    fn release(&self, path: &Path) {
        if let Ok(mut set) = self.in_flight.lock() {
            set.remove(path);
        }
    }

    /// Writes a result durably (temp file, fsync, rename) and returns its file.
    pub fn put(&self, spooled: &Spooled) -> std::io::Result<PathBuf> {
        let path = self.dir.join(format!("{}-{}.json", spooled.build_id, spooled.result.attempt));
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(spooled).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Every result still waiting for an answer.
    pub fn pending(&self) -> Vec<(PathBuf, Spooled)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut pending: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter_map(|p| {
                let spooled = std::fs::read(&p).ok().and_then(|b| serde_json::from_slice(&b).ok())?;
                Some((p, spooled))
            })
            .collect();
        pending.sort_by(|a, b| a.0.cmp(&b.0));
        pending
    }
}

/// Sends one spooled result, retrying retryable failures up to `tries` times. Removes the file
/// once the gateway has answered (accepted, or refused as stale). Returns whether it was answered
/// (false also when another task is sending it).
pub async fn deliver(gateway: &Gateway, spool: &Spool, path: &Path, spooled: &Spooled, tries: u32) -> bool {
    if !spool.take(path) {
        return false;
    }
    let answered = send(gateway, path, spooled, tries).await;
    spool.release(path);
    answered
}

async fn send(gateway: &Gateway, path: &Path, spooled: &Spooled, tries: u32) -> bool {
    for n in 0..tries {
        match gateway.report(spooled.build_id, &spooled.result).await {
            Ok(answer) => {
                let word = if answer == Delivered::Accepted { "accepted" } else { "refused" };
                println!("reported {} attempt {} {word}", spooled.build_id, spooled.result.attempt);
                tracing::info!(build_id = %spooled.build_id, attempt = spooled.result.attempt, answer = word, "result delivered");
                let _ = std::fs::remove_file(path);
                return true;
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(build_id = %spooled.build_id, error = %e, "result not delivered yet; retrying");
                tokio::time::sleep(backoff(n, Duration::from_millis(200), Duration::from_secs(10))).await;
            }
            Err(e) => {
                // A permanent refusal (400, 401, 404): keep the file for an operator, stop trying.
                tracing::error!(build_id = %spooled.build_id, error = %e, "result refused; left in the spool");
                let _ = std::fs::rename(path, path.with_extension("rejected"));
                return true;
            }
        }
    }
    println!("reported {} attempt {} spooled", spooled.build_id, spooled.result.attempt);
    false
}

/// Sends every pending result once (with a few tries each).
pub async fn flush(gateway: &Gateway, spool: &Spool) {
    for (path, spooled) in spool.pending() {
        deliver(gateway, spool, &path, &spooled, 3).await;
    }
}
