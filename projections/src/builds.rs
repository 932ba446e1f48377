//! `builds`: the state of every build, with the deliveries folded into it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use meshgate_domain::build::{evolve, BuildState};
use meshgate_domain::event::{BuildReport, FoldReason};
use meshgate_domain::{Event, Recorded};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Projection;

/// A delivery or transition absorbed into a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldRecord {
    pub correlation_id: Uuid,
    pub reason: FoldReason,
    pub folded_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildView {
    pub build_id: Uuid,
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
    pub requested_at: DateTime<Utc>,
    /// Global position of the `BuildRequested` event.
    pub position: u64,
    pub state: BuildState,
    pub updated_at: DateTime<Utc>,
    pub folds: Vec<FoldRecord>,
    /// What the node reported for the attempt that finished the build.
    #[serde(default)]
    pub report: Option<BuildReport>,
    /// Heartbeats and results refused as stale.
    #[serde(default)]
    pub rejected: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builds {
    pub builds: BTreeMap<Uuid, BuildView>,
}

impl Builds {
    pub fn get(&self, build_id: Uuid) -> Option<&BuildView> {
        self.builds.get(&build_id)
    }

    /// Builds in log order, optionally only those of one issue and in one state.
    pub fn list<'a>(&'a self, issue: Option<&'a str>, state: Option<&'a str>) -> Vec<&'a BuildView> {
        let mut builds: Vec<_> = self
            .builds
            .values()
            .filter(|b| issue.is_none_or(|i| b.issue_id == i))
            .filter(|b| state.is_none_or(|s| b.state.name() == s))
            .collect();
        builds.sort_by_key(|b| b.position);
        builds
    }
}

impl Builds {
    /// Running builds whose lease ran out at or before `now`, oldest lease first.
    pub fn expired_leases(&self, now: DateTime<Utc>) -> Vec<Uuid> {
        let mut expired: Vec<(DateTime<Utc>, Uuid)> = self
            .builds
            .values()
            .filter_map(|b| match &b.state {
                BuildState::Running { lease_expires_at, .. } if *lease_expires_at <= now => {
                    Some((*lease_expires_at, b.build_id))
                }
                _ => None,
            })
            .collect();
        expired.sort();
        expired.into_iter().map(|(_, id)| id).collect()
    }
}

impl Projection for Builds {
    const NAME: &'static str = "builds";

    fn wants(event_type: &str) -> bool {
        event_type.starts_with("Build")
    }

    fn apply(&mut self, recorded: &Recorded) {
        let event = &recorded.event;
        if let Event::BuildRequested(e) = event {
            self.builds.entry(e.build_id).or_insert_with(|| BuildView {
                build_id: e.build_id,
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
                state: evolve(BuildState::New, event),
                updated_at: recorded.recorded_at,
                folds: Vec::new(),
                report: None,
                rejected: 0,
            });
            return;
        }
        let Some(build) = event.build_id().and_then(|id| self.builds.get_mut(&id)) else {
            return;
        };
        match event {
            Event::BuildRequestFolded(f) => build.folds.push(FoldRecord {
                correlation_id: f.correlation_id,
                reason: f.reason,
                folded_at: f.folded_at,
            }),
            Event::BuildSucceeded(e) => build.report.clone_from(&e.report),
            Event::BuildFailed(e) => build.report.clone_from(&e.report),
            Event::BuildResultRejected(_) => build.rejected += 1,
            _ => {}
        }
        build.state = evolve(std::mem::replace(&mut build.state, BuildState::New), event);
        build.updated_at = recorded.recorded_at;
    }
}
