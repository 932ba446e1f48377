//! PagerDuty Events API v2: one `trigger` per build (its `dedup_key`), saying which build could
//! not be reported, why, and where the build stands now.

use serde_json::json;

use super::exchange::{exchange, Answer};
use super::Message;
use meshgate_domain::notify::{chat_line, page_summary, Milestone};

pub struct Events {
    pub url: String,
    pub routing_key: String,
}

impl Events {
    pub async fn send(&self, http: &reqwest::Client, message: &Message<'_>) -> Answer {
        let facts = message.facts;
        // A lane no node can serve: one incident per lane, resolved when it can be served again.
        if let Milestone::Unservable | Milestone::Servable = message.milestone {
            let action = if message.milestone == Milestone::Unservable { "trigger" } else { "resolve" };
            let body = json!({
                "routing_key": self.routing_key,
                "event_action": action,
                "dedup_key": format!("meshgate-lane-{}", facts.lane),
                "payload": {
                    "summary": format!("meshgate: lane {} has queued builds no live node can run", facts.lane),
                    "source": "meshgate",
                    "severity": "critical",
                    "custom_details": {"line": chat_line(facts, message.milestone), "lane": facts.lane, "build_id": facts.build_id},
                },
            });
            return exchange(http.post(&self.url).json(&body)).await;
        }
        let body = json!({
            "routing_key": self.routing_key,
            "event_action": "trigger",
            "dedup_key": format!("meshgate-{}", facts.build_id),
            "payload": {
                "summary": page_summary(facts),
                "source": "meshgate",
                "severity": "critical",
                "custom_details": {
                    "line": chat_line(facts, message.milestone),
                    "build_id": facts.build_id,
                    "issue_id": facts.issue_id,
                    "reason": facts.page_reason,
                    "build_state": facts.state,
                    "log_url": facts.log_url,
                },
            },
        });
        exchange(http.post(&self.url).json(&body)).await
    }
}
