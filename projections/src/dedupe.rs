//! `dedupe`: fingerprints seen, with the builds they stand for, and the active build of each intent.

use std::collections::HashMap;

use meshgate_domain::{Event, Recorded};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Projection;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dedupe {
    /// Fingerprint → builds its first delivery started or folded into (empty: it was ignored).
    pub fingerprints: HashMap<String, Vec<Uuid>>,
    /// Intent key → its queued or running build.
    pub active_intents: HashMap<String, Uuid>,
    /// Active build → its intent key, to close the intent when the build finishes.
    intent_of_build: HashMap<Uuid, String>,
}

impl Dedupe {
    pub fn builds_for(&self, fingerprint: &str) -> Option<&[Uuid]> {
        self.fingerprints.get(fingerprint).map(Vec::as_slice)
    }

    fn close(&mut self, build_id: Uuid) {
        if let Some(intent) = self.intent_of_build.remove(&build_id) {
            if self.active_intents.get(&intent) == Some(&build_id) {
                self.active_intents.remove(&intent);
            }
        }
    }
}

impl Projection for Dedupe {
    const NAME: &'static str = "dedupe";

    fn wants(event_type: &str) -> bool {
        matches!(
            event_type,
            "WebhookIgnored" | "WebhookRouted" | "BuildRequested" | "BuildSucceeded" | "BuildFailed" | "BuildCancelled"
        )
    }

    fn apply(&mut self, recorded: &Recorded) {
        let fingerprint = recorded.stream.strip_prefix("delivery-");
        match (&recorded.event, fingerprint) {
            (Event::WebhookIgnored(_), Some(fp)) => {
                self.fingerprints.entry(fp.to_owned()).or_default();
            }
            (Event::WebhookRouted(routed), Some(fp)) => {
                let builds = self.fingerprints.entry(fp.to_owned()).or_default();
                if builds.is_empty() {
                    builds.clone_from(&routed.build_ids);
                }
            }
            (Event::BuildRequested(e), _) => {
                if let Some(previous) = self.active_intents.insert(e.intent_key.clone(), e.build_id) {
                    self.intent_of_build.remove(&previous);
                }
                self.intent_of_build.insert(e.build_id, e.intent_key.clone());
            }
            (Event::BuildSucceeded(e), _) => self.close(e.build_id),
            (Event::BuildFailed(e), _) => self.close(e.build_id),
            (Event::BuildCancelled(e), _) => self.close(e.build_id),
            _ => {}
        }
    }
}
