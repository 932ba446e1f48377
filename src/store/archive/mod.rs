//! Archive files of the log (`meshgate log archive`): the events of finished builds moved out of
//! the live log, kept where an operator says, and read back beside it ([`WithArchives`]).
//!
//! A file is gzip-compressed JSON lines, readable with `zcat` and `jq`: a header line (what it is,
//! the cut, how many events and builds, the first and last position), then one event per line in
//! log order, each with every column the log keeps (`data` as the JSON object it is). Beside it,
//! `NAME.sha256` holds the SHA-256 of the compressed file in `sha256sum` format. A file is written
//! under a temporary name, synced and renamed, and read back whole (checksum, gzip's own CRC,
//! every line, the count and the positions) before any event leaves the live log.

mod merged;

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use futures_util::TryStreamExt;
use meshgate_domain::Event;
use meshgate_projections::{ArchivePlan, ArchivePlanner};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use merged::WithArchives;

use super::{LogReader, StoredEvent};

/// What a header says a file is.
pub const KIND: &str = "meshgate-archive";
/// The layout of the files this version writes and reads.
pub const LAYOUT: u32 = 1;
/// How archive files are named: `meshgate-archive-<created>.jsonl.gz`.
const SUFFIX: &str = ".jsonl.gz";

/// The first line of an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub kind: String,
    pub layout: u32,
    /// The version of meshgate that wrote it.
    pub meshgate: String,
    pub created_at: DateTime<Utc>,
    /// Builds finished and last heard of before this moment were archived.
    pub before: DateTime<Utc>,
    pub builds: u64,
    /// Deliveries whose streams went with their builds (or routed nowhere).
    pub deliveries: u64,
    pub events: u64,
    pub first_position: u64,
    pub last_position: u64,
}

/// One event as a line of an archive.
#[derive(Serialize, Deserialize)]
struct Line<'a> {
    position: u64,
    #[serde(borrow)]
    stream: std::borrow::Cow<'a, str>,
    version: u64,
    id: Uuid,
    #[serde(rename = "type", borrow)]
    event_type: std::borrow::Cow<'a, str>,
    schema_version: u32,
    #[serde(borrow)]
    data: &'a RawValue,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
    recorded_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} has no checksum beside it ({sum} is missing); an archive is written with one")]
    NoChecksum { path: PathBuf, sum: PathBuf },
    #[error("{path} does not match its checksum ({sum}): the file was changed or cut short after it was written")]
    Checksum { path: PathBuf, sum: PathBuf },
    #[error("{path} is not a meshgate archive: {reason}")]
    NotAnArchive { path: PathBuf, reason: String },
    #[error("{path}, line {line}: {reason}")]
    Damaged { path: PathBuf, line: u64, reason: String },
    #[error("{path} is an archive of layout {layout}; this meshgate reads layout {LAYOUT}")]
    Layout { path: PathBuf, layout: u32 },
    #[error("{0} holds no archives (meshgate-archive-*{SUFFIX})")]
    Empty(PathBuf),
    #[error("the plan holds no build to archive")]
    Nothing,
    #[error("cannot read the event log")]
    Log(#[source] super::StoreError),
}

/// The checksum file of the archive at `path`.
fn sum_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sha256", path.display()))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The archive files in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    let read = |source| ArchiveError::Read { path: dir.to_owned(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with(KIND) && name.ends_with(SUFFIX) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// An archive being written: the header first, then each event, then [`Writer::finish`].
pub struct Writer {
    dir: PathBuf,
    name: String,
    temporary: PathBuf,
    out: GzEncoder<BufWriter<File>>,
    header: Header,
    written: u64,
}

impl Writer {
    /// Starts an archive in `dir` (made if missing, private to its owner) for the events `header`
    /// counts.
    pub fn create(dir: &Path, header: Header) -> Result<Writer, ArchiveError> {
        let write = |source| ArchiveError::Write { path: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(write)?;
        let name = format!("{KIND}-{}{SUFFIX}", header.created_at.format("%Y%m%dT%H%M%S%.3fZ"));
        let temporary = dir.join(format!(".{name}.partial"));
        let file =
            private_file(&temporary).map_err(|source| ArchiveError::Write { path: temporary.clone(), source })?;
        let mut out = GzEncoder::new(BufWriter::new(file), flate2::Compression::default());
        let line = serde_json::to_string(&header).expect("a header serializes");
        writeln!(out, "{line}").map_err(|source| ArchiveError::Write { path: temporary.clone(), source })?;
        Ok(Writer { dir: dir.to_owned(), name, temporary, out, header, written: 0 })
    }

    pub fn push(&mut self, event: &StoredEvent) -> Result<(), ArchiveError> {
        let broken = |reason: String| ArchiveError::NotAnArchive { path: self.temporary.clone(), reason };
        let data: &RawValue = serde_json::from_str(&event.data)
            .map_err(|e| broken(format!("the event at position {} holds no JSON: {e}", event.position)))?;
        let line = Line {
            position: event.position,
            stream: event.stream.as_str().into(),
            version: event.version,
            id: event.id,
            event_type: event.event_type.as_str().into(),
            schema_version: event.schema_version,
            data,
            correlation_id: event.correlation_id,
            causation_id: event.causation_id,
            recorded_at: event.recorded_at,
        };
        let line = serde_json::to_string(&line).expect("an event serializes");
        writeln!(self.out, "{line}").map_err(|source| ArchiveError::Write { path: self.temporary.clone(), source })?;
        self.written += 1;
        Ok(())
    }

    /// Ends the file, syncs it and gives it its name and checksum; returns its path.
    pub fn finish(self) -> Result<PathBuf, ArchiveError> {
        let write = |path: &Path| {
            let path = path.to_owned();
            move |source| ArchiveError::Write { path, source }
        };
        if self.written != self.header.events {
            let _ = std::fs::remove_file(&self.temporary);
            return Err(ArchiveError::NotAnArchive {
                path: self.temporary,
                reason: format!("{} events written where {} were planned", self.written, self.header.events),
            });
        }
        let file = self.out.finish().map_err(write(&self.temporary))?;
        let file = file
            .into_inner()
            .map_err(|e| ArchiveError::Write { path: self.temporary.clone(), source: e.into_error() })?;
        file.sync_all().map_err(write(&self.temporary))?;
        drop(file);
        let digest = {
            let mut hasher = Sha256::new();
            let mut file = File::open(&self.temporary).map_err(write(&self.temporary))?;
            std::io::copy(&mut file, &mut hasher).map_err(write(&self.temporary))?;
            hex(&hasher.finalize())
        };
        let path = self.dir.join(&self.name);
        let sum = sum_path(&path);
        let sum_temporary = self.dir.join(format!(".{}.sha256.partial", self.name));
        {
            let mut out = private_file(&sum_temporary).map_err(write(&sum_temporary))?;
            writeln!(out, "{digest}  {}", self.name).map_err(write(&sum_temporary))?;
            out.sync_all().map_err(write(&sum_temporary))?;
        }
        std::fs::rename(&sum_temporary, &sum).map_err(write(&sum))?;
        std::fs::rename(&self.temporary, &path).map_err(write(&path))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(write(&self.dir))?;
        Ok(path)
    }
}

/// A new file only its owner reads: archives hold what the log holds.
fn private_file(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Checks the archive at `path` against its checksum, then reads it: its header and each event
/// in order, to `each`. Any damage is an error naming the file (and the line).
pub fn read(path: &Path, mut each: impl FnMut(StoredEvent)) -> Result<Header, ArchiveError> {
    let sum = sum_path(path);
    let said = match std::fs::read_to_string(&sum) {
        Ok(text) => text.split_whitespace().next().unwrap_or_default().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ArchiveError::NoChecksum { path: path.to_owned(), sum })
        }
        Err(source) => return Err(ArchiveError::Read { path: sum, source }),
    };
    let read_error = |source| ArchiveError::Read { path: path.to_owned(), source };
    let mut hasher = Sha256::new();
    std::io::copy(&mut File::open(path).map_err(read_error)?, &mut hasher).map_err(read_error)?;
    if hex(&hasher.finalize()) != said.to_ascii_lowercase() {
        return Err(ArchiveError::Checksum { path: path.to_owned(), sum });
    }
    let damaged = |line: u64, reason: String| ArchiveError::Damaged { path: path.to_owned(), line, reason };
    let mut lines = BufReader::new(GzDecoder::new(File::open(path).map_err(read_error)?));
    let mut text = String::new();
    let mut next = |text: &mut String| -> Result<bool, String> {
        text.clear();
        lines.read_line(text).map(|n| n > 0).map_err(|e| e.to_string())
    };
    if !next(&mut text).map_err(|reason| damaged(1, reason))? {
        return Err(ArchiveError::NotAnArchive { path: path.to_owned(), reason: "it is empty".into() });
    }
    let header: Header = serde_json::from_str(&text)
        .map_err(|e| ArchiveError::NotAnArchive { path: path.to_owned(), reason: format!("its header: {e}") })?;
    if header.kind != KIND {
        return Err(ArchiveError::NotAnArchive { path: path.to_owned(), reason: format!("it says `{}`", header.kind) });
    }
    if header.layout != LAYOUT {
        return Err(ArchiveError::Layout { path: path.to_owned(), layout: header.layout });
    }
    let (mut count, mut last) = (0u64, 0u64);
    while next(&mut text).map_err(|reason| damaged(count + 2, reason))? {
        let line: Line = serde_json::from_str(&text).map_err(|e| damaged(count + 2, e.to_string()))?;
        if line.position <= last || line.position < header.first_position || line.position > header.last_position {
            return Err(damaged(count + 2, format!("position {} out of order", line.position)));
        }
        last = line.position;
        count += 1;
        each(StoredEvent {
            position: line.position,
            stream: line.stream.into_owned(),
            version: line.version,
            id: line.id,
            event_type: line.event_type.into_owned(),
            schema_version: line.schema_version,
            data: line.data.get().to_owned(),
            correlation_id: line.correlation_id,
            causation_id: line.causation_id,
            recorded_at: line.recorded_at,
        });
    }
    if count != header.events {
        return Err(damaged(count + 1, format!("{count} events where the header says {}", header.events)));
    }
    Ok(header)
}

/// Reads a whole archive's checks without keeping its events.
pub fn verify(path: &Path) -> Result<Header, ArchiveError> {
    read(path, |_| {})
}

/// Reads the whole log into the planner.
pub async fn plan(log: &dyn LogReader, head: u64, cut: DateTime<Utc>) -> Result<ArchivePlan, ArchiveError> {
    let mut planner = ArchivePlanner::default();
    let mut batches = log.scan(0, head, Event::TYPES);
    while let Some((batch, _)) = batches.try_next().await.map_err(ArchiveError::Log)? {
        for recorded in &batch {
            planner.apply(recorded);
        }
    }
    Ok(planner.plan(cut, head))
}

/// Writes the planned events into a new archive in `dir`; returns its path.
pub async fn write(
    log: &dyn LogReader,
    plan: &ArchivePlan,
    cut: DateTime<Utc>,
    dir: &Path,
) -> Result<PathBuf, ArchiveError> {
    let (Some(&first), Some(&last)) = (plan.positions.first(), plan.positions.last()) else {
        return Err(ArchiveError::Nothing);
    };
    let header = Header {
        kind: KIND.to_owned(),
        layout: LAYOUT,
        meshgate: env!("CARGO_PKG_VERSION").to_owned(),
        created_at: Utc::now(),
        before: cut,
        builds: plan.builds.len() as u64,
        deliveries: plan.deliveries as u64,
        events: plan.positions.len() as u64,
        first_position: first,
        last_position: last,
    };
    let mut writer = Writer::create(dir, header)?;
    let mut after = first - 1;
    let mut wanted = plan.positions.iter().peekable();
    while wanted.peek().is_some() {
        let page = log.read_all(after, 10_000).await.map_err(ArchiveError::Log)?;
        let Some(end) = page.last().map(|e| e.position) else { break };
        for event in &page {
            if wanted.peek() == Some(&&event.position) {
                writer.push(event)?;
                wanted.next();
            }
        }
        after = end;
    }
    writer.finish()
}

/// Bytes of a file, for reports.
pub fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
