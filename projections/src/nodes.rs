//! The build nodes as the log knows them: how each presented itself (labels, slots), the builds
//! it runs, when it was last heard from (a claim, a heartbeat, a result), and whether an operator
//! drains it or its lease ran out while it held a build (lost, until it is heard from again).
//! A node that polls without claiming leaves no trace in the log, so an idle node's last sign of
//! life is its last claim, heartbeat or result.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use meshgate_domain::xcode::Xcode;
use meshgate_domain::{Event, Recorded};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Projection;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub node_id: String,
    pub labels: Vec<String>,
    pub slots: u32,
    /// The Xcodes it has.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xcodes: Vec<Xcode>,
    #[serde(with = "meshgate_domain::rfc3339")]
    pub last_seen: DateTime<Utc>,
    pub running: BTreeSet<Uuid>,
    pub draining: bool,
    /// A build it held was requeued because its lease ran out, and it has not been heard from since.
    pub lost: bool,
}

impl NodeView {
    /// `draining`, `lost`, `busy` or `idle`.
    pub fn state(&self) -> &'static str {
        if self.draining {
            "draining"
        } else if self.lost {
            "lost"
        } else if !self.running.is_empty() {
            "busy"
        } else {
            "idle"
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nodes {
    nodes: BTreeMap<String, NodeView>,
    /// Which node holds each running build.
    holders: HashMap<Uuid, String>,
}

impl Nodes {
    pub fn get(&self, node_id: &str) -> Option<&NodeView> {
        self.nodes.get(node_id)
    }

    pub fn all(&self) -> impl Iterator<Item = &NodeView> {
        self.nodes.values()
    }

    fn seen(&mut self, node_id: &str, at: DateTime<Utc>) -> &mut NodeView {
        let node = self.nodes.entry(node_id.to_owned()).or_insert_with(|| NodeView {
            node_id: node_id.to_owned(),
            labels: Vec::new(),
            slots: 0,
            xcodes: Vec::new(),
            last_seen: at,
            running: BTreeSet::new(),
            draining: false,
            lost: false,
        });
        node.last_seen = node.last_seen.max(at);
        node.lost = false;
        node
    }

    fn release(&mut self, build_id: Uuid) -> Option<&mut NodeView> {
        let holder = self.holders.remove(&build_id)?;
        let node = self.nodes.get_mut(&holder)?;
        node.running.remove(&build_id);
        Some(node)
    }
}

impl Projection for Nodes {
    const NAME: &'static str = "nodes";
    /// 2: Xcodes; a retried build leaves its node.
    const VERSION: u32 = 2;

    fn wants(event_type: &str) -> bool {
        matches!(
            event_type,
            "NodeSeen"
                | "NodeDrained"
                | "BuildClaimed"
                | "BuildLeaseRenewed"
                | "BuildSucceeded"
                | "BuildFailed"
                | "BuildCancelled"
                | "BuildRequeued"
                | "BuildRetryScheduled"
        )
    }

    fn apply(&mut self, recorded: &Recorded) {
        let at = recorded.recorded_at;
        match &recorded.event {
            Event::NodeSeen(e) => {
                let node = self.seen(&e.node_id, at);
                node.labels = e.labels.clone();
                node.slots = e.slots;
                node.xcodes = e.xcodes.clone();
            }
            Event::NodeDrained(e) => {
                if let Some(node) = self.nodes.get_mut(&e.node_id) {
                    node.draining = e.draining;
                }
            }
            Event::BuildClaimed(e) => {
                self.release(e.build_id);
                self.seen(&e.node_id, at).running.insert(e.build_id);
                self.holders.insert(e.build_id, e.node_id.clone());
            }
            Event::BuildLeaseRenewed(e) => {
                self.seen(&e.node_id, at);
            }
            Event::BuildSucceeded(_) | Event::BuildFailed(_) | Event::BuildRetryScheduled(_) => {
                if let Some(node) = self.release(recorded.event.build_id().unwrap_or_default()) {
                    node.last_seen = node.last_seen.max(at);
                    node.lost = false;
                }
            }
            Event::BuildCancelled(e) => {
                self.release(e.build_id);
            }
            Event::BuildRequeued(e) => {
                if let Some(node) = self.release(e.build_id) {
                    if e.reason == meshgate_domain::build::LEASE_EXPIRED {
                        node.lost = true;
                    }
                }
            }
            _ => {}
        }
    }
}
