//! Which build nodes this gateway has heard asking for work, and when: a node that long-polls
//! without claiming leaves no trace in the log, so whether an idle node is alive is known here,
//! in memory, from its polls (a gateway of a shared log knows the nodes that poll it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The last poll of each node.
#[derive(Debug, Default)]
pub struct Polls {
    last: Mutex<HashMap<String, Instant>>,
    /// How long after its last poll a node still counts as alive: its long poll and a margin.
    alive_for: Duration,
}

impl Polls {
    /// Nodes count as alive for `claim_wait` and 30 s after they last asked.
    pub fn new(claim_wait: Duration) -> Polls {
        Polls { last: Mutex::default(), alive_for: claim_wait + Duration::from_secs(30) }
    }

    /// `node_id` asks for work now.
    pub fn polled(&self, node_id: &str) {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        last.insert(node_id.to_owned(), Instant::now());
    }

    /// Whether `node_id` asked for work recently.
    pub fn alive(&self, node_id: &str) -> bool {
        let last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        last.get(node_id).is_some_and(|at| at.elapsed() <= self.alive_for)
    }
}
