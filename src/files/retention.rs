//! `[artifacts] keep_days`: a build's artifacts are removed once its newest one is older, and
//! the removal is recorded (`ArtifactsExpired`), so the build's page says they are gone rather
//! than linking to nothing. [`Retention::sweep_once`] takes the clock, so a test steps it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use meshgate_domain::event::ArtifactsExpired;
use meshgate_domain::stream::build_stream;
use meshgate_domain::{Event, ExpectedVersion};
use uuid::Uuid;

use crate::files::Artifacts;
use crate::projector::Projections;
use crate::store::{EventStore, NewEvent, StoreError, StreamAppend};

/// How often the sweep runs.
const EVERY: Duration = Duration::from_secs(3600);

pub struct Retention {
    pub artifacts: Arc<Artifacts>,
    pub store: Arc<dyn EventStore>,
    pub projections: Projections,
    pub keep_days: u32,
}

impl Retention {
    /// Removes the artifacts of builds whose newest artifact is older than `keep_days` at `now`;
    /// returns the builds swept.
    pub async fn sweep_once(&self, now: SystemTime) -> Result<Vec<Uuid>, StoreError> {
        let horizon = now - Duration::from_secs(u64::from(self.keep_days) * 86_400);
        let artifacts = Arc::clone(&self.artifacts);
        let expired = tokio::task::spawn_blocking(move || artifacts.expired(horizon)).await.unwrap_or_default();
        let mut swept = Vec::new();
        for (build_id, names) in expired {
            if let Err(e) = self.artifacts.remove(build_id) {
                tracing::warn!(%build_id, error = %e, "cannot remove a build's old artifacts");
                continue;
            }
            // A folder of a build the log does not know (a restored backup, say) goes silently.
            if self.projections.build(build_id).await?.is_some() && !names.is_empty() {
                let event = Event::ArtifactsExpired(ArtifactsExpired { build_id, names, keep_days: self.keep_days });
                let append = StreamAppend {
                    stream: build_stream(build_id),
                    expected: ExpectedVersion::Any,
                    events: vec![NewEvent::from_domain(&event, Uuid::now_v7(), None, Utc::now())],
                };
                self.store.append(vec![append]).await?;
            }
            tracing::info!(%build_id, keep_days = self.keep_days, "old artifacts removed");
            swept.push(build_id);
        }
        Ok(swept)
    }

    /// Sweeps at start and every hour until `shutdown`.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.sweep_once(SystemTime::now()).await {
                tracing::warn!(error = %crate::report::chain(&e), "artifact retention sweep failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = &mut shutdown => return,
            }
        }
    }
}
