//! `[retention]`: a build's logs are removed `build_logs_days` after its newest one was written,
//! its artifacts `artifacts_days` after its newest one was stored (0: kept), and each removal is
//! recorded (`BuildLogsExpired`, `ArtifactsExpired`), so the build's page says they are gone
//! rather than linking to nothing. [`Retention::sweep_once`] takes the clock, so a test steps it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use meshgate_domain::event::{ArtifactsExpired, BuildLogsExpired};
use meshgate_domain::stream::build_stream;
use meshgate_domain::{Event, ExpectedVersion};
use uuid::Uuid;

use crate::files::{Artifacts, BuildLogs};
use crate::projector::Projections;
use crate::store::{EventStore, NewEvent, StoreError, StreamAppend};

/// How often the sweep runs.
const EVERY: Duration = Duration::from_secs(3600);

pub struct Retention {
    pub logs: Arc<BuildLogs>,
    pub artifacts: Arc<Artifacts>,
    pub store: Arc<dyn EventStore>,
    pub projections: Projections,
    /// Days a build's logs are kept (0: for ever).
    pub build_logs_days: u32,
    /// Days a build's artifacts are kept (0: for ever).
    pub artifacts_days: u32,
}

/// The builds one sweep removed files of.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub logs: Vec<Uuid>,
    pub artifacts: Vec<Uuid>,
}

fn horizon(now: SystemTime, days: u32) -> SystemTime {
    now - Duration::from_secs(u64::from(days) * 86_400)
}

impl Retention {
    /// Removes the logs and artifacts older than their days at `now`; returns the builds swept.
    pub async fn sweep_once(&self, now: SystemTime) -> Result<Swept, StoreError> {
        let logs = Arc::clone(&self.logs);
        let logs = self
            .sweep(
                "build logs",
                self.build_logs_days,
                now,
                move |before| logs.expired(before),
                |id| self.logs.remove(id),
                |build_id, attempts, keep_days| {
                    Event::BuildLogsExpired(BuildLogsExpired { build_id, attempts, keep_days })
                },
            )
            .await?;
        let artifacts = Arc::clone(&self.artifacts);
        let artifacts = self
            .sweep(
                "artifacts",
                self.artifacts_days,
                now,
                move |before| artifacts.expired(before),
                |id| self.artifacts.remove(id),
                |build_id, names, keep_days| Event::ArtifactsExpired(ArtifactsExpired { build_id, names, keep_days }),
            )
            .await?;
        Ok(Swept { logs, artifacts })
    }

    /// One kind of file: what `expired` finds older than `days` at `now` is removed with `remove`
    /// and recorded as the event `removed` makes (when there was something to name).
    async fn sweep<N: Send + 'static>(
        &self,
        what: &str,
        days: u32,
        now: SystemTime,
        expired: impl FnOnce(SystemTime) -> Vec<(Uuid, Vec<N>)> + Send + 'static,
        remove: impl Fn(Uuid) -> std::io::Result<()>,
        removed: impl Fn(Uuid, Vec<N>, u32) -> Event,
    ) -> Result<Vec<Uuid>, StoreError> {
        if days == 0 {
            return Ok(Vec::new());
        }
        let before = horizon(now, days);
        let expired = tokio::task::spawn_blocking(move || expired(before)).await.unwrap_or_default();
        let mut swept = Vec::new();
        for (build_id, names) in expired {
            if let Err(e) = remove(build_id) {
                tracing::warn!(%build_id, error = %e, "cannot remove a build's old {what}");
                continue;
            }
            if !names.is_empty() {
                self.record(build_id, removed(build_id, names, days)).await?;
            }
            tracing::info!(%build_id, keep_days = days, "old {what} removed");
            swept.push(build_id);
        }
        Ok(swept)
    }

    /// Records a removal in the build's stream; a folder of a build the log does not know (a
    /// restored backup, an archived build) goes silently.
    async fn record(&self, build_id: Uuid, event: Event) -> Result<(), StoreError> {
        if self.projections.build(build_id).await?.is_none() {
            return Ok(());
        }
        let append = StreamAppend {
            stream: build_stream(build_id),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::from_domain(&event, Uuid::now_v7(), None, Utc::now())],
        };
        self.store.append(vec![append]).await?;
        Ok(())
    }

    /// Sweeps at start and every hour until `shutdown`.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.sweep_once(SystemTime::now()).await {
                tracing::warn!(error = %crate::report::chain(&e), "retention sweep failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = &mut shutdown => return,
            }
        }
    }
}
