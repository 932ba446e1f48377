//! What a build produced, kept by the gateway: every file the script left under
//! `$MESHGATE_RESULT_DIR/artifacts/` (named by its path there) and every file the script's
//! `artifacts` globs match in its work dir (named by its file name). Each is hashed, then streamed
//! to the gateway with its SHA-256, after the build and before its result, until the build's
//! artifacts would pass `max_artifact_bytes`; the rest are skipped and the result says how many.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshgate_domain::node_api::{check_artifact_name, ArtifactQuery};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::gateway::{backoff, Gateway};
use crate::output::Log;

/// Tries per artifact while the gateway is unreachable or restarting.
const TRIES: u32 = 8;

/// A file to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    pub path: PathBuf,
}

/// Files under `dir`, recursively, named by their path relative to it. Symbolic links are not
/// followed (they could name anything on the node).
fn files_under(dir: &Path, prefix: &str, found: &mut Vec<Found>, log: &Log) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        match entry.file_type() {
            Ok(t) if t.is_dir() => files_under(&entry.path(), &format!("{name}/"), found, log),
            Ok(t) if t.is_file() => found.push(Found { name, path: entry.path() }),
            Ok(_) => log.note(&format!("artifact `{name}` skipped: not a regular file")),
            Err(_) => {}
        }
    }
}

/// The build's artifacts: the result folder's `artifacts/`, then the script's globs; a name
/// already taken, or one the gateway would refuse, is skipped with a note in the log.
pub fn collect(result_dir: &Path, work_dir: &Path, globs: &[String], log: &Log) -> Vec<Found> {
    let mut found = Vec::new();
    files_under(&result_dir.join("artifacts"), "", &mut found, log);
    for pattern in globs {
        let full = work_dir.join(pattern).to_string_lossy().into_owned();
        let Ok(paths) = glob::glob(&full) else { continue };
        for path in paths.filter_map(Result::ok) {
            let is_file = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
            if !is_file {
                continue;
            }
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            found.push(Found { name, path });
        }
    }
    let mut named: BTreeMap<String, Found> = BTreeMap::new();
    let mut kept = Vec::new();
    for artifact in found {
        if let Err(problem) = check_artifact_name(&artifact.name) {
            log.note(&format!("artifact `{}` skipped: {problem}", artifact.name.escape_debug()));
        } else if named.contains_key(&artifact.name) {
            log.note(&format!("artifact `{}` skipped: another file has that name", artifact.name));
        } else {
            named.insert(artifact.name.clone(), artifact.clone());
            kept.push(artifact);
        }
    }
    kept
}

/// A file's size and SHA-256, read once in blocks.
pub fn hash(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()))
}

/// What uploading a build's artifacts came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Uploaded {
    pub stored: u32,
    /// Skipped past the cap, or refused by the gateway.
    pub skipped: u32,
}

/// Which build's artifacts, from which node.
pub struct Upload<'a> {
    pub gateway: &'a Gateway,
    pub build_id: Uuid,
    pub node_id: &'a str,
    pub attempt: u32,
    /// `max_artifact_bytes` for the whole build.
    pub max_bytes: u64,
}

impl Upload<'_> {
    /// Uploads each artifact in turn, streamed, retrying while the gateway is unreachable.
    pub async fn run(&self, artifacts: Vec<Found>, log: &Log) -> Uploaded {
        let mut done = Uploaded::default();
        let mut total = 0u64;
        for artifact in artifacts {
            let path = artifact.path.clone();
            let hashed = tokio::task::spawn_blocking(move || hash(&path)).await;
            let (bytes, sha256) = match hashed {
                Ok(Ok(hashed)) => hashed,
                _ => {
                    log.note(&format!("artifact `{}` skipped: cannot be read", artifact.name));
                    done.skipped += 1;
                    continue;
                }
            };
            if total + bytes > self.max_bytes {
                log.note(&format!(
                    "artifact `{}` skipped: {bytes} bytes would pass max_artifact_bytes ({})",
                    artifact.name, self.max_bytes
                ));
                done.skipped += 1;
                continue;
            }
            match self.one(&artifact, bytes, &sha256).await {
                Ok(()) => {
                    total += bytes;
                    done.stored += 1;
                    println!("artifact {} {} {bytes} {sha256}", self.build_id, artifact.name);
                }
                Err(Refusal::NotHolder) => {
                    log.note("artifacts not uploaded: the attempt is no longer this node's");
                    break;
                }
                Err(Refusal::Other(why)) => {
                    log.note(&format!("artifact `{}` not uploaded: {why}", artifact.name));
                    done.skipped += 1;
                }
            }
        }
        done
    }

    async fn one(&self, artifact: &Found, bytes: u64, sha256: &str) -> Result<(), Refusal> {
        let query =
            ArtifactQuery { node_id: self.node_id.to_owned(), attempt: self.attempt, sha256: sha256.to_owned() };
        let mut failures = 0;
        loop {
            let sent = self.gateway.upload_artifact(self.build_id, &artifact.name, &query, &artifact.path, bytes).await;
            match sent {
                Ok(_) => return Ok(()),
                Err(e) if e.status() == Some(StatusCode::CONFLICT) => return Err(Refusal::NotHolder),
                Err(e) if e.is_retryable() && failures + 1 < TRIES => {
                    failures += 1;
                    tracing::warn!(build_id = %self.build_id, artifact = %artifact.name, error = %e, "artifact upload failed; retrying");
                    tokio::time::sleep(backoff(failures, Duration::from_millis(250), Duration::from_secs(10))).await;
                }
                Err(e) => return Err(Refusal::Other(e.to_string())),
            }
        }
    }
}

enum Refusal {
    NotHolder,
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_the_result_folders_files_and_the_globs_matches_each_name_once() {
        let dir = tempfile::tempdir().unwrap();
        let (work, result) = (dir.path().join("work"), dir.path().join("work/.meshgate"));
        std::fs::create_dir_all(result.join("artifacts/reports")).unwrap();
        std::fs::create_dir_all(work.join("build/other")).unwrap();
        std::fs::write(result.join("artifacts/App.ipa"), "ipa").unwrap();
        std::fs::write(result.join("artifacts/reports/junit.xml"), "<x/>").unwrap();
        std::fs::write(work.join("build/App.dSYM.zip"), "dsym").unwrap();
        std::fs::write(work.join("build/App.ipa"), "a second App.ipa").unwrap();
        std::fs::write(work.join("build/other/notes.txt"), "n").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", result.join("artifacts/link")).unwrap();
        let log = Log::create(&dir.path().join("b.log")).unwrap();
        let found = collect(&result, &work, &["build/*.zip".into(), "build/*.ipa".into()], &log);
        let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["App.ipa", "reports/junit.xml", "App.dSYM.zip"]);
        assert_eq!(found[0].path, result.join("artifacts/App.ipa"));
        let notes = std::fs::read_to_string(log.path()).unwrap();
        assert!(notes.contains("artifact `link` skipped: not a regular file"), "{notes}");
        assert!(notes.contains("artifact `App.ipa` skipped: another file has that name"), "{notes}");
        let (bytes, sha) = hash(&result.join("artifacts/App.ipa")).unwrap();
        assert_eq!((bytes, sha.as_str()), (3, "78324857e8d9bfa749dc301271df54a6572de9f4c3df8a9507cfa7b7d2b25f8e"));
    }
}
