//! The files builds leave on the gateway, beside the event log: their logs (sent live while they
//! run, then whole) and their artifacts. The log's events say what happened to a build; these
//! files hold what it printed and produced. Each gateway keeps the files uploaded to it.

pub mod artifacts;
pub mod logs;
pub mod retention;

pub use artifacts::{ArtifactError, Artifacts};
pub use logs::{BuildLogs, LogError};

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use uuid::Uuid;

/// The builds' folders under `dir` (`dir/{build}/…`) whose newest file is older than `before`
/// (or that hold none), each with its files' paths inside the folder: what retention removes.
fn expired_builds(dir: &Path, before: SystemTime) -> Vec<(Uuid, Vec<PathBuf>)> {
    let Ok(builds) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut expired = Vec::new();
    for entry in builds.filter_map(Result::ok) {
        let Ok(build_id) = entry.file_name().to_string_lossy().parse::<Uuid>() else { continue };
        let mut files = Vec::new();
        walk(&entry.path(), &mut files);
        let newest = files.iter().filter_map(|p| p.metadata().and_then(|m| m.modified()).ok()).max();
        if newest.is_none_or(|newest| newest < before) {
            let relative = files.iter().filter_map(|p| p.strip_prefix(entry.path()).ok().map(Path::to_path_buf));
            expired.push((build_id, relative.collect()));
        }
    }
    expired
}

/// Every file under `dir`, without following symbolic links.
fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&entry.path(), files),
            Ok(t) if t.is_file() => files.push(entry.path()),
            _ => {}
        }
    }
}

/// Removes a build's folder; one already gone is no error.
fn remove_folder(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
