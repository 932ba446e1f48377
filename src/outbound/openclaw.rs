//! OpenClaw: `POST {url}/hooks/agent` relays each line through an OpenClaw gateway to the channel
//! it serves (WhatsApp, Telegram, Signal, iMessage, …). Any 2xx is a delivery (older versions
//! answer 202, newer 200 with a `runId`). The notification key is the idempotency key, in the body
//! and the `Idempotency-Key` header; OpenClaw keeps it in memory for five minutes, so meshgate's
//! own dedupe window stays the guarantee.

use serde_json::{json, Value};

use super::exchange::{exchange, Answer};
use super::Message;
use meshgate_domain::notify::chat_line;

pub struct Hook {
    /// The OpenClaw gateway's base URL.
    pub url: String,
    pub token: String,
    pub channel: String,
    pub to: String,
    pub agent_id: Option<String>,
}

impl Hook {
    pub async fn send(&self, http: &reqwest::Client, message: &Message<'_>) -> Answer {
        let url = format!("{}/hooks/agent", self.url.trim_end_matches('/'));
        let request =
            http.post(url).bearer_auth(&self.token).header("Idempotency-Key", message.key).json(&self.body(message));
        // The answer (with its `runId`) is kept in the attempt's excerpt; lines are never edited.
        exchange(request).await
    }

    pub fn body(&self, message: &Message<'_>) -> Value {
        let mut body = json!({
            "message": chat_line(message.facts, message.milestone),
            "name": "meshgate",
            "deliver": true,
            "channel": self.channel,
            "to": self.to,
            "idempotencyKey": message.key,
        });
        if let Some(agent) = &self.agent_id {
            body["agentId"] = json!(agent);
        }
        body
    }
}
