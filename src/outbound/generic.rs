//! `generic`: one JSON POST per build state, with a stable schema (docs/configuration.md) that
//! tells two builds of one issue apart.

use serde_json::{json, Value};

use super::exchange::{exchange, Answer};
use super::Message;
use meshgate_domain::notify::chat_line;

/// Incremented only when a field changes meaning or goes away; new fields may be added.
pub const SCHEMA_VERSION: u32 = 1;

pub struct Hook {
    pub url: String,
}

impl Hook {
    pub async fn send(&self, http: &reqwest::Client, message: &Message<'_>) -> Answer {
        exchange(http.post(&self.url).json(&body(message))).await
    }
}

/// The body of one POST.
pub fn body(message: &Message<'_>) -> Value {
    let facts = message.facts;
    json!({
        "schema_version": SCHEMA_VERSION,
        "build_id": facts.build_id,
        "issue_id": facts.issue_id,
        "summary": facts.summary,
        "state": message.milestone.as_str(),
        // The same as `state`, under the name earlier versions used.
        "milestone": message.milestone.as_str(),
        "at": message.at,
        "text": chat_line(facts, message.milestone),
        "lane": facts.lane,
        "script": facts.script,
        "node_id": facts.node_id,
        "commit_sha": facts.commit_sha,
        "duration_ms": facts.duration_ms,
        "failing_test": facts.failing_test,
        "reason": facts.reason,
        "log_url": facts.log_url,
        "build_state": facts.state,
        "page_reason": facts.page_reason,
        "retry_rule": facts.retry_rule,
        "artifacts": facts.artifacts.iter().map(|a| json!({"name": a.name, "url": a.url})).collect::<Vec<_>>(),
    })
}
