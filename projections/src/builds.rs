//! `builds`: the state of every build, with the deliveries folded into it.
//!
//! Memory holds the builds the hot paths need, sized by the work in flight: every queued or
//! running build, and finished ones changed since the read model last saved them. The shell saves
//! changed views ([`Builds::changed`]) as rows of the read model, then lets the finished ones go
//! ([`Builds::saved`]); a later event about a build no longer in memory (a late fold,
//! a refused result) is applied after the shell has brought its view back ([`Builds::missing`],
//! [`Builds::restore`]). Folding a log without saving keeps every build in memory, which is what a
//! rebuild compares with.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use meshgate_domain::build::{evolve, BuildState};
use meshgate_domain::event::{BuildReport, FoldReason};
use meshgate_domain::{Event, Recorded};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Projection;

/// A delivery or transition absorbed into a build.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldRecord {
    pub correlation_id: Uuid,
    pub reason: FoldReason,
    #[serde(with = "meshgate_domain::rfc3339")]
    pub folded_at: DateTime<Utc>,
}

/// A file a build produced, as the gateway keeps it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub attempt: u32,
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
    #[serde(with = "meshgate_domain::rfc3339")]
    pub stored_at: DateTime<Utc>,
    /// Removed after `[retention] artifacts_days`.
    #[serde(default)]
    pub removed: bool,
}

/// A failure that matched a retry rule, and the attempt it scheduled.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryRecord {
    /// The attempt that failed.
    pub attempt: u32,
    pub reason: String,
    pub rule: String,
    #[serde(with = "meshgate_domain::rfc3339")]
    pub at: DateTime<Utc>,
    /// The node it failed on.
    #[serde(default)]
    pub node_id: Option<String>,
}

/// A rebuild of the build: the new build, who asked and where.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildRecord {
    pub build_id: Uuid,
    pub by: String,
    /// `admin`, `slack` or `matrix`.
    pub via: String,
    #[serde(with = "meshgate_domain::rfc3339")]
    pub at: DateTime<Utc>,
}

/// Everything the API shows about one build.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildView {
    pub build_id: Uuid,
    /// Its number among its trigger's builds, from 1 in log order: gap-free, the same on every
    /// gateway of a shared log and after a rebuild ([`BuildView::name`]: `ios-build #412`).
    #[serde(default)]
    pub number: u64,
    pub issue_id: String,
    pub project: String,
    pub summary: Option<String>,
    pub trigger: String,
    pub script: String,
    pub lane: String,
    pub git_ref: String,
    pub intent_key: String,
    pub requested_by: Option<String>,
    pub correlation_id: Uuid,
    #[serde(with = "meshgate_domain::rfc3339")]
    pub requested_at: DateTime<Utc>,
    /// Global position of the `BuildRequested` event.
    pub position: u64,
    pub state: BuildState,
    #[serde(with = "meshgate_domain::rfc3339")]
    pub updated_at: DateTime<Utc>,
    /// When a node last claimed it (the start of its running or last attempt); none before the
    /// first claim.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "meshgate_domain::rfc3339::option")]
    pub started_at: Option<DateTime<Utc>>,
    pub folds: Vec<FoldRecord>,
    /// What the node reported for the attempt that finished the build.
    #[serde(default)]
    pub report: Option<BuildReport>,
    /// Heartbeats and results refused because their attempt was no longer current.
    #[serde(default)]
    pub rejected: u32,
    /// The Xcode its trigger requires (`16.2`, `16`); its lane may require one too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xcode: Option<String>,
    /// Failures that matched a retry rule, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<RetryRecord>,
    /// What its attempts produced, in the order stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactRecord>,
    /// The build this one repeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild_of: Option<Uuid>,
    /// The builds that repeat this one, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rebuilds: Vec<RebuildRecord>,
    /// Its logs were removed after `[retention] build_logs_days`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub logs_removed: bool,
}

impl BuildView {
    /// The artifacts the gateway still holds of the attempt that finished the build (or of the
    /// running one).
    pub fn final_artifacts(&self) -> impl Iterator<Item = &ArtifactRecord> {
        let attempt = self.artifacts.iter().map(|a| a.attempt).max().unwrap_or(0);
        self.artifacts.iter().filter(move |a| a.attempt == attempt && !a.removed)
    }
}

impl BuildView {
    /// How people say which build it is: its trigger and number (`ios-build #412`).
    pub fn name(&self) -> String {
        build_name(&self.trigger, self.number)
    }

    /// A new build's view, the `number`th of its trigger.
    fn requested(recorded: &Recorded, number: u64) -> Option<BuildView> {
        let Event::BuildRequested(e) = &recorded.event else { return None };
        Some(BuildView {
            build_id: e.build_id,
            number,
            issue_id: e.issue_id.clone(),
            project: e.project.clone(),
            summary: e.summary.clone(),
            trigger: e.trigger.clone(),
            script: e.script.clone(),
            lane: e.lane.clone(),
            git_ref: e.git_ref.clone(),
            intent_key: e.intent_key.clone(),
            requested_by: e.requested_by.clone(),
            correlation_id: e.correlation_id,
            requested_at: e.requested_at,
            position: recorded.position,
            state: evolve(BuildState::New, &recorded.event),
            updated_at: recorded.recorded_at,
            started_at: None,
            folds: Vec::new(),
            report: None,
            rejected: 0,
            xcode: e.xcode.clone(),
            retries: Vec::new(),
            artifacts: Vec::new(),
            rebuild_of: e.rebuild_of,
            logs_removed: false,
            rebuilds: Vec::new(),
        })
    }

    /// Folds one later event of the build's stream into its view.
    pub fn apply(&mut self, recorded: &Recorded) {
        let event = &recorded.event;
        match event {
            Event::BuildRequestFolded(f) => self.folds.push(FoldRecord {
                correlation_id: f.correlation_id,
                reason: f.reason,
                folded_at: f.folded_at,
            }),
            Event::BuildSucceeded(e) => self.report.clone_from(&e.report),
            Event::BuildFailed(e) => self.report.clone_from(&e.report),
            Event::BuildCancelled(e) if e.report.is_some() => self.report.clone_from(&e.report),
            Event::BuildResultRejected(_) => self.rejected += 1,
            Event::BuildRetryScheduled(e) => self.retries.push(RetryRecord {
                attempt: e.attempt,
                reason: e.reason.clone(),
                rule: e.rule.clone(),
                at: recorded.recorded_at,
                node_id: e.report.as_ref().map(|r| r.node_id.clone()),
            }),
            Event::ArtifactStored(e) => {
                // The same name stored again by the same attempt replaces the first.
                self.artifacts.retain(|a| !(a.attempt == e.attempt && a.name == e.name));
                self.artifacts.push(ArtifactRecord {
                    attempt: e.attempt,
                    name: e.name.clone(),
                    bytes: e.bytes,
                    sha256: e.sha256.clone(),
                    stored_at: recorded.recorded_at,
                    removed: false,
                });
            }
            Event::BuildRebuilt(e) => self.rebuilds.push(RebuildRecord {
                build_id: e.rebuild_id,
                by: e.by.clone(),
                via: e.via.clone(),
                at: recorded.recorded_at,
            }),
            Event::BuildClaimed(_) => self.started_at = Some(recorded.recorded_at),
            Event::BuildLogsExpired(_) => self.logs_removed = true,
            Event::ArtifactsExpired(e) => {
                for artifact in self.artifacts.iter_mut().filter(|a| e.names.contains(&a.name)) {
                    artifact.removed = true;
                }
            }
            _ => {}
        }
        self.state = evolve(std::mem::replace(&mut self.state, BuildState::New), event);
        self.updated_at = recorded.recorded_at;
    }
}

/// A build's name: its trigger and its number among the trigger's builds.
pub fn build_name(trigger: &str, number: u64) -> String {
    format!("{trigger} #{number}")
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Builds {
    /// The last number given to a build of each trigger (saved whole: one entry per trigger).
    numbers: BTreeMap<String, u64>,
    /// Queued and running builds, and builds changed since the last save.
    hot: BTreeMap<Uuid, BuildView>,
    /// The running builds in memory by the end of their lease: the reaper's question is a range
    /// of it, not a scan of every queued build.
    leases: BTreeSet<(DateTime<Utc>, Uuid)>,
    /// Builds changed since the last save, with the change's number: a save that read a view
    /// before a later change leaves it marked.
    changed: BTreeMap<Uuid, u64>,
    /// Finished views brought back since the last save (let go again by the next one if no
    /// event changed them).
    restored: Vec<Uuid>,
    /// Counts changes.
    changes: u64,
}

/// The lease a build holds, if it is running.
fn lease(view: &BuildView) -> Option<(DateTime<Utc>, Uuid)> {
    match &view.state {
        BuildState::Running { lease_expires_at, .. } => Some((*lease_expires_at, view.build_id)),
        _ => None,
    }
}

impl Builds {
    /// A build held in memory (a queued or running one always is).
    pub fn get(&self, build_id: Uuid) -> Option<&BuildView> {
        self.hot.get(&build_id)
    }

    /// Every build memory holds: the queued and running ones, and those changed since the last
    /// save.
    pub fn in_memory(&self) -> impl Iterator<Item = &BuildView> {
        self.hot.values()
    }

    /// How many builds memory holds.
    pub fn in_memory_len(&self) -> usize {
        self.hot.len()
    }

    /// The builds in memory of an issue and a state (`queued`, `running`, …), in log order. The
    /// shell adds the saved ones for the whole answer.
    pub fn list<'a>(&'a self, issue: Option<&'a str>, state: Option<&'a str>) -> Vec<&'a BuildView> {
        let mut builds: Vec<_> = self
            .hot
            .values()
            .filter(|b| issue.is_none_or(|i| b.issue_id == i))
            .filter(|b| state.is_none_or(|s| b.state.name() == s))
            .collect();
        builds.sort_by_key(|b| b.position);
        builds
    }

    /// Running builds whose lease ran out at `now`, oldest lease first.
    pub fn expired_leases(&self, now: DateTime<Utc>) -> Vec<Uuid> {
        self.leases.range(..=(now, Uuid::max())).map(|(_, id)| *id).collect()
    }

    /// The builds later events of `batch` are about that memory does not hold: the shell brings
    /// their saved views back before the batch is applied.
    pub fn missing<'a>(&self, batch: impl IntoIterator<Item = &'a Recorded>) -> Vec<Uuid> {
        let mut new = BTreeSet::new();
        let mut missing = Vec::new();
        for recorded in batch {
            match &recorded.event {
                Event::BuildRequested(e) => {
                    new.insert(e.build_id);
                }
                event if Builds::wants(event.event_type()) => {
                    if let Some(id) = event.build_id() {
                        if !self.hot.contains_key(&id) && !new.contains(&id) && !missing.contains(&id) {
                            missing.push(id);
                        }
                    }
                }
                _ => {}
            }
        }
        missing
    }

    /// Holds saved views in memory again (loaded at start, or brought back for a late event).
    pub fn restore(&mut self, views: impl IntoIterator<Item = BuildView>) {
        for view in views {
            if self.hot.contains_key(&view.build_id) {
                continue;
            }
            if let Some(lease) = lease(&view) {
                self.leases.insert(lease);
            }
            if !view.state.is_active() {
                self.restored.push(view.build_id);
            }
            self.hot.insert(view.build_id, view);
        }
    }

    /// The views changed since the last save, to be saved, and the mark to pass to
    /// [`Builds::saved`] once they are.
    pub fn changed(&self) -> (Vec<BuildView>, u64) {
        (self.changed.keys().filter_map(|id| self.hot.get(id).cloned()).collect(), self.changes)
    }

    /// The views [`Builds::changed`] gave with `mark` are saved: lets go of finished builds not
    /// changed since; memory keeps the queued and running ones.
    ///
    /// Only builds saved now or brought back since can have to go: every other one in memory is
    /// active or changed since (a save costs what changed, not what memory holds).
    pub fn saved(&mut self, mark: u64) {
        let mut candidates = std::mem::take(&mut self.restored);
        self.changed.retain(|id, change| {
            let keep = *change > mark;
            if !keep {
                candidates.push(*id);
            }
            keep
        });
        for id in candidates {
            let idle = self.hot.get(&id).is_some_and(|b| !b.state.is_active());
            if idle && !self.changed.contains_key(&id) {
                self.hot.remove(&id);
            }
        }
    }

    /// Builds changed and not yet saved.
    pub fn unsaved(&self) -> usize {
        self.changed.len()
    }

    /// The last number given to a build of each trigger.
    pub fn numbers(&self) -> &BTreeMap<String, u64> {
        &self.numbers
    }

    /// Goes on numbering from saved numbers (loaded at start).
    pub fn restore_numbers(&mut self, numbers: BTreeMap<String, u64>) {
        self.numbers = numbers;
    }

    /// The build of `trigger` numbered `number`, if memory holds it.
    pub fn by_number(&self, trigger: &str, number: u64) -> Option<&BuildView> {
        self.hot.values().find(|b| b.number == number && b.trigger == trigger)
    }
}

impl Projection for Builds {
    const NAME: &'static str = "builds";
    /// 3: Xcode requirements, retries and artifacts. 4: build numbers. 5: when a node last
    /// claimed it.
    const VERSION: u32 = 5;

    fn wants(event_type: &str) -> bool {
        // An action from chat is in a stream of its own; what it did is in the build's.
        (event_type.starts_with("Build") && event_type != "BuildActionRequested") || event_type.starts_with("Artifact")
    }

    fn apply(&mut self, recorded: &Recorded) {
        if let Event::BuildRequested(requested) = &recorded.event {
            let number = self.numbers.entry(requested.trigger.clone()).or_insert(0);
            *number += 1;
            let Some(view) = BuildView::requested(recorded, *number) else { return };
            let id = view.build_id;
            // A requested build is queued: it holds no lease yet.
            self.hot.entry(id).or_insert(view);
            self.changes += 1;
            self.changed.insert(id, self.changes);
            return;
        }
        let Some(id) = recorded.event.build_id() else { return };
        if let Some(build) = self.hot.get_mut(&id) {
            let before = lease(build);
            build.apply(recorded);
            let after = lease(build);
            if before != after {
                if let Some(old) = before {
                    self.leases.remove(&old);
                }
                if let Some(new) = after {
                    self.leases.insert(new);
                }
            }
            self.changes += 1;
            self.changed.insert(id, self.changes);
        }
    }
}
