//! Microsoft Teams: a Workflows webhook taking an Adaptive Card 1.4 (202 means queued).

use serde_json::json;

use super::exchange::{exchange, Answer};
use super::Message;
use meshgate_domain::notify::{chat_line, escape_markdown};

pub struct Workflow {
    pub url: String,
}

impl Workflow {
    pub async fn send(&self, http: &reqwest::Client, message: &Message<'_>) -> Answer {
        let text = escape_markdown(&chat_line(message.facts, message.milestone));
        let card = json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    // TextBlock text is plain here: tracker text cannot add links or formatting.
                    "body": [{"type": "TextBlock", "text": text, "wrap": true}],
                },
            }],
        });
        exchange(http.post(&self.url).json(&card)).await
    }
}
