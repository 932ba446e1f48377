//! Artifacts on the gateway: `artifacts/{build}/{attempt}/{name}`. An upload is streamed to a
//! file beside its place while it is hashed and counted; it takes its place only if its SHA-256 is
//! the one the node declared and the attempt's artifacts stay within `nodes.max_artifact_bytes`.
//! Names are checked by [`check_artifact_name`] before any path is made of them, and the path is
//! checked again to be inside the build's folder. Old builds' artifacts are removed after
//! `[artifacts] keep_days` ([`Artifacts::expired`]).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use meshgate_domain::node_api::check_artifact_name;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

pub struct Artifacts {
    dir: PathBuf,
    max_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{0}")]
    BadName(&'static str),
    #[error("the attempt's artifacts would pass nodes.max_artifact_bytes ({max} bytes)")]
    TooLarge { max: u64 },
    #[error("the upload's SHA-256 is {actual}, not the {declared} declared")]
    Mismatch { declared: String, actual: String },
    #[error("the upload broke off")]
    Body(#[source] axum::Error),
    #[error("cannot store the artifact")]
    Io(#[from] std::io::Error),
}

/// A stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub bytes: u64,
    pub sha256: String,
}

impl Artifacts {
    pub fn new(dir: PathBuf, max_bytes: u64) -> Artifacts {
        Artifacts { dir, max_bytes }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn build_dir(&self, build_id: Uuid) -> PathBuf {
        self.dir.join(build_id.to_string())
    }

    /// Where an artifact lives; refused for a name that could lead outside the build's folder.
    pub fn path(&self, build_id: Uuid, attempt: u32, name: &str) -> Result<PathBuf, ArtifactError> {
        check_artifact_name(name).map_err(ArtifactError::BadName)?;
        let base = self.build_dir(build_id).join(attempt.to_string());
        let path = base.join(name);
        // Belt and braces: every part was checked, and the result must still be under `base`.
        if !path.starts_with(&base) || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(ArtifactError::BadName("an artifact's name must stay inside the build's folder"));
        }
        Ok(path)
    }

    /// Streams an upload into place: `already` bytes of the attempt's artifacts are stored (the
    /// one being replaced not counted), `declared` is the node's SHA-256 (hex).
    pub async fn store(
        &self,
        build_id: Uuid,
        attempt: u32,
        name: &str,
        declared: &str,
        already: u64,
        body: impl Stream<Item = Result<Bytes, axum::Error>> + Unpin,
    ) -> Result<Stored, ArtifactError> {
        let path = self.path(build_id, attempt, name)?;
        let parent = path.parent().map(Path::to_owned).unwrap_or_else(|| self.dir.clone());
        tokio::fs::create_dir_all(&parent).await?;
        let part = parent.join(format!(".upload-{}", Uuid::now_v7().simple()));
        let written = self.write(&part, already, body).await;
        let stored = match written {
            Ok(stored) if stored.sha256.eq_ignore_ascii_case(declared) => stored,
            Ok(stored) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(ArtifactError::Mismatch { declared: declared.to_ascii_lowercase(), actual: stored.sha256 });
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
        };
        tokio::fs::rename(&part, &path).await?;
        Ok(stored)
    }

    async fn write(
        &self,
        part: &Path,
        already: u64,
        mut body: impl Stream<Item = Result<Bytes, axum::Error>> + Unpin,
    ) -> Result<Stored, ArtifactError> {
        let room = self.max_bytes.saturating_sub(already);
        let mut file = tokio::fs::File::create(part).await?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(ArtifactError::Body)?;
            bytes += chunk.len() as u64;
            if bytes > room {
                return Err(ArtifactError::TooLarge { max: self.max_bytes });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        Ok(Stored { bytes, sha256: hasher.finalize().iter().map(|b| format!("{b:02x}")).collect() })
    }

    /// Builds whose newest artifact is older than `before`, with the names the gateway holds for
    /// them (every attempt's).
    pub fn expired(&self, before: SystemTime) -> Vec<(Uuid, Vec<String>)> {
        super::expired_builds(&self.dir, before)
            .into_iter()
            .map(|(build_id, files)| {
                // attempt/name…
                let mut names: Vec<String> = files
                    .iter()
                    .filter_map(|relative| {
                        let mut parts = relative.components();
                        parts.next()?;
                        Some(parts.as_path().to_string_lossy().into_owned())
                    })
                    .filter(|n| !n.starts_with(".upload-") && !n.contains("/.upload-"))
                    .collect();
                names.sort();
                names.dedup();
                (build_id, names)
            })
            .collect()
    }

    /// Removes every artifact of a build.
    pub fn remove(&self, build_id: Uuid) -> std::io::Result<()> {
        super::remove_folder(&self.build_dir(build_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: Vec<&'static [u8]>) -> impl Stream<Item = Result<Bytes, axum::Error>> + Unpin {
        futures_util::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    const IPA_SHA: &str = "78324857e8d9bfa749dc301271df54a6572de9f4c3df8a9507cfa7b7d2b25f8e";

    #[tokio::test]
    async fn an_upload_takes_its_place_only_whole_with_its_checksum_and_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = Artifacts::new(dir.path().to_owned(), 10);
        let build = Uuid::from_u128(1);
        let stored = artifacts.store(build, 1, "out/App.ipa", IPA_SHA, 0, body(vec![b"i", b"pa"])).await.unwrap();
        assert_eq!(stored, Stored { bytes: 3, sha256: IPA_SHA.into() });
        assert_eq!(std::fs::read(dir.path().join(format!("{build}/1/out/App.ipa"))).unwrap(), b"ipa");
        let wrong = artifacts.store(build, 1, "b.zip", &"0".repeat(64), 0, body(vec![b"ipa"])).await;
        assert!(matches!(wrong, Err(ArtifactError::Mismatch { .. })), "{wrong:?}");
        let big = artifacts.store(build, 1, "c.zip", IPA_SHA, 8, body(vec![b"ipa"])).await;
        assert!(matches!(big, Err(ArtifactError::TooLarge { max: 10 })), "{big:?}");
        // Nothing of the refused uploads is left, not even their partial files.
        let mut files = Vec::new();
        super::super::walk(dir.path(), &mut files);
        assert_eq!(files, [dir.path().join(format!("{build}/1/out/App.ipa"))]);
    }

    #[tokio::test]
    async fn names_that_could_leave_the_builds_folder_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = Artifacts::new(dir.path().join("artifacts"), 1000);
        for name in ["../escape", "a/../../escape", "/etc/passwd", "a\0b", ""] {
            let stored = artifacts.store(Uuid::from_u128(1), 1, name, IPA_SHA, 0, body(vec![b"ipa"])).await;
            assert!(matches!(stored, Err(ArtifactError::BadName(_))), "{name:?}: {stored:?}");
        }
        assert!(!dir.path().join("artifacts").exists());
        assert!(!dir.path().join("escape").exists());
    }

    #[tokio::test]
    async fn builds_whose_artifacts_are_older_than_the_horizon_are_found_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = Artifacts::new(dir.path().to_owned(), 1000);
        let (old, new) = (Uuid::from_u128(1), Uuid::from_u128(2));
        artifacts.store(old, 1, "App.ipa", IPA_SHA, 0, body(vec![b"ipa"])).await.unwrap();
        artifacts.store(old, 2, "logs/x.txt", IPA_SHA, 0, body(vec![b"ipa"])).await.unwrap();
        let horizon = SystemTime::now() + std::time::Duration::from_secs(1);
        artifacts.store(new, 1, "App.ipa", IPA_SHA, 0, body(vec![b"ipa"])).await.unwrap();
        let set = |f: &Path| {
            let t = std::fs::File::options().write(true).open(f).unwrap();
            t.set_modified(SystemTime::now() + std::time::Duration::from_secs(60)).unwrap();
        };
        set(&dir.path().join(format!("{new}/1/App.ipa")));
        let expired = artifacts.expired(horizon);
        assert_eq!(expired, vec![(old, vec!["App.ipa".to_owned(), "logs/x.txt".to_owned()])]);
        artifacts.remove(old).unwrap();
        artifacts.remove(old).unwrap();
        assert!(artifacts.expired(horizon).is_empty());
    }
}
