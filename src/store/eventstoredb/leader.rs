//! Which gateway runs the work that must happen once (the lease reaper, the outbound dispatchers,
//! reconciliation sweeps) on an EventStoreDB log: the holder of the lease in `{prefix}leader`.
//!
//! A gateway that does not hold the lease reads the stream's last event every poll and, when that
//! lease has run out (or was let go), appends the next one at that exact revision, so two gateways
//! cannot both take it; its holder renews it every `renew` (a third of the lease) the same way. A
//! lease taken from nobody or from an expired holder starts a new term. A holder that cannot renew
//! in time gives up by its own clock at 80 % of the lease, before anyone else can take it; a
//! holder that stops lets it go (an event whose lease has already ended).
//!
//! What it costs the database: one event per renewal, `86400 / renew` a day (8,640 with the 30 s
//! default), about 300 bytes each; the stream shows only the last 16 (`$maxCount`) and the server
//! removes the others at its next scavenge. Reads cost nothing kept.
//! Unlike PostgreSQL's lease (ADR 0009), the lease cannot be checked in the same atomic step as an
//! append to the log: the fence is this clock, so a holder paused between its check and its append
//! could still land one append after another gateway took over (ADR 0010).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventstore::{
    AppendToStreamOptions, EventData, ExpectedRevision, ReadStreamOptions, StreamMetadata, StreamPosition,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Inner;
use crate::store::lease::Lease;

/// One taking or renewal of the lease.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Taken {
    holder: Uuid,
    term: i64,
    expires_at: DateTime<Utc>,
}

/// Renewals kept in the lease stream (the server drops older ones).
const KEPT: u64 = 16;

/// The lease stream of one log.
pub(crate) struct EsdbLease {
    pub inner: Arc<Inner>,
    pub holder: Uuid,
    pub ttl: Duration,
}

#[async_trait::async_trait]
impl Lease for EsdbLease {
    async fn take(&mut self) -> Result<Option<i64>, ()> {
        let stream = format!("{}leader", self.inner.prefix);
        take(&self.inner, &stream, self.holder, self.ttl).await
    }

    async fn release(&mut self) {
        let stream = format!("{}leader", self.inner.prefix);
        let Ok(Some((revision, lease))) = current(&self.inner, &stream).await else { return };
        if lease.holder != self.holder {
            return;
        }
        // The same holder and term, ended now: the next gateway to look takes a new term.
        let ended = Taken { holder: self.holder, term: lease.term, expires_at: Utc::now() };
        let Ok(event) = EventData::json("LeaseReleased", &ended) else { return };
        let options = AppendToStreamOptions::default().expected_revision(ExpectedRevision::Exact(revision));
        match self.inner.client.append_to_stream(stream.as_str(), &options, event.id(Uuid::now_v7())).await {
            Ok(_) => tracing::info!(term = lease.term, "the lease on the work done once is let go"),
            Err(e) => tracing::warn!(error = %e, "cannot let the lease go; it runs out by itself"),
        }
    }
}

/// The lease stream's last event and its revision, if any.
async fn current(inner: &Inner, stream: &str) -> Result<Option<(u64, Taken)>, ()> {
    let last = ReadStreamOptions::default().backwards().position(StreamPosition::End).max_count(1);
    let current = inner.read(stream, last).await.map_err(|e| {
        tracing::debug!(error = %crate::report::chain(&e), "cannot read the lease");
    })?;
    match current.first() {
        Some(e) => {
            let recorded = e.get_original_event();
            let lease: Taken = serde_json::from_slice(&recorded.data).map_err(|e| {
                tracing::warn!(error = %e, "the lease stream holds something other than a lease");
            })?;
            Ok(Some((recorded.revision, lease)))
        }
        None => Ok(None),
    }
}

/// Takes or extends the lease: the term, or nothing if another gateway holds it.
async fn take(inner: &Inner, stream: &str, holder: Uuid, ttl: Duration) -> Result<Option<i64>, ()> {
    let current = current(inner, stream).await?;
    let now = Utc::now();
    let (term, expected) = match current {
        None => (1, ExpectedRevision::NoStream),
        Some((revision, lease)) if lease.holder == holder && lease.expires_at > now => {
            (lease.term, ExpectedRevision::Exact(revision))
        }
        Some((revision, lease)) if lease.expires_at <= now => (lease.term + 1, ExpectedRevision::Exact(revision)),
        Some(_) => return Ok(None),
    };
    let lease = Taken { holder, term, expires_at: now + ttl };
    let event = EventData::json("LeaseTaken", &lease).map_err(|_| ())?.id(Uuid::now_v7());
    let options = AppendToStreamOptions::default().expected_revision(expected);
    match inner.client.append_to_stream(stream, &options, event).await {
        Ok(_) => {
            if expected == ExpectedRevision::NoStream {
                let metadata = StreamMetadata::builder().max_count(KEPT).build();
                let _ = inner.client.set_stream_metadata(stream, &AppendToStreamOptions::default(), &metadata).await;
            }
            Ok(Some(term))
        }
        Err(eventstore::Error::WrongExpectedVersion { .. }) => Ok(None),
        Err(e) => {
            tracing::debug!(error = %e, "cannot take or renew the lease");
            Err(())
        }
    }
}
