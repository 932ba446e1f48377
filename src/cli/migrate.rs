//! `meshgate store migrate --to-config F`: copies the configured event log into the log another
//! configuration names (SQLite to PostgreSQL, or back), positions, ids and times intact.
//!
//! The target must be empty. Events are appended in log order, each stream at the exact version
//! it had, so the target assigns the same positions and versions; then both logs are read back
//! and compared by count and by a running SHA-256 over every field of every event. The source is
//! opened as a gateway opens it (the SQLite log is locked): stop the gateways first.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use meshgate_domain::{Event, ExpectedVersion};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::store::{EventStore, NewEvent, StoredEvent, StreamAppend};

/// Events copied per append (one commit on the target).
const PAGE: usize = 1000;

pub async fn run(source: &Config, target: &Path) -> anyhow::Result<()> {
    let target_config = Config::load(Some(target))
        .with_context(|| format!("cannot load the target configuration {}", target.display()))?;
    let source = crate::store::open::log(source).await.context("cannot open the source log")?;
    let target = crate::store::open::log(&target_config).await.context("cannot open the target log")?;
    let (from, to) = (source.store, target.store);
    let existing = *to.head().borrow();
    if existing > 0 {
        bail!("the target log is not empty ({existing} events): migrate only into an empty log");
    }
    let head = *from.head().borrow();
    let started = std::time::Instant::now();
    let mut after = 0;
    while after < head {
        let page = from.read_all(after, PAGE).await?;
        let Some(last) = page.last().map(|e| e.position) else { break };
        copy(&to, &page).await.with_context(|| format!("cannot copy the events after position {after}"))?;
        after = last;
    }
    let (copied, target_digest) = digest(&to).await?;
    let (count, source_digest) = digest(&from).await?;
    if (copied, target_digest) != (count, source_digest) {
        bail!("the target log differs from the source after the copy ({copied} against {count} events); discard it");
    }
    println!("copied {count} events in {:.2?}; both logs hash to {}", started.elapsed(), hex(&source_digest[..8]));
    Ok(())
}

/// Appends one page in log order: a run of events of one stream is one append at the version the
/// stream had before it; a request never names a stream twice, so a stream coming back starts the
/// next request.
async fn copy(to: &Arc<dyn EventStore>, page: &[StoredEvent]) -> anyhow::Result<()> {
    let mut appends: Vec<StreamAppend> = Vec::new();
    for event in page {
        let back = appends.last().is_some_and(|run| run.stream != event.stream)
            && appends.iter().any(|run| run.stream == event.stream);
        if back {
            to.append(std::mem::take(&mut appends)).await?;
        }
        let new = NewEvent {
            id: event.id,
            event_type: static_type(&event.event_type)?,
            schema_version: event.schema_version,
            data: event.data.clone(),
            correlation_id: event.correlation_id,
            causation_id: event.causation_id,
            recorded_at: event.recorded_at,
        };
        match appends.last_mut() {
            Some(run) if run.stream == event.stream => run.events.push(new),
            _ => appends.push(StreamAppend {
                stream: event.stream.clone(),
                expected: match event.version {
                    0 => ExpectedVersion::NoStream,
                    v => ExpectedVersion::Exact(v - 1),
                },
                events: vec![new],
            }),
        }
    }
    let appended = to.append(appends).await?;
    let expected = page.last().map_or(0, |e| e.position);
    // The target assigned positions in the same order: its last is the page's last.
    if appended.last_position != expected {
        bail!("the target placed the event of position {expected} at {}", appended.last_position);
    }
    Ok(())
}

/// The type's stable name as this release knows it.
fn static_type(name: &str) -> anyhow::Result<&'static str> {
    Event::TYPES
        .iter()
        .copied()
        .find(|t| *t == name)
        .with_context(|| format!("event type `{name}` is unknown to this release of meshgate"))
}

/// How many events a log holds, and a SHA-256 over all of them in order.
async fn digest(store: &Arc<dyn EventStore>) -> anyhow::Result<(u64, [u8; 32])> {
    let mut hash = Sha256::new();
    let (mut after, mut count) = (0, 0u64);
    loop {
        let page = store.read_all(after, PAGE).await?;
        let Some(last) = page.last().map(|e| e.position) else { break };
        for e in &page {
            hash.update(e.position.to_be_bytes());
            for field in [e.stream.as_bytes(), e.event_type.as_bytes(), e.data.as_bytes()] {
                hash.update((field.len() as u64).to_be_bytes());
                hash.update(field);
            }
            hash.update(e.version.to_be_bytes());
            hash.update(e.id.as_bytes());
            hash.update(e.schema_version.to_be_bytes());
            hash.update(e.correlation_id.as_bytes());
            hash.update(e.causation_id.map_or([0; 16], |c| *c.as_bytes()));
            hash.update(e.recorded_at.timestamp_micros().to_be_bytes());
        }
        count += page.len() as u64;
        after = last;
    }
    Ok((count, hash.finalize().into()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
