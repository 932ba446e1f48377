//! Discord: a webhook, `?wait=true` so the answer names the message, which later states of the
//! build edit in place.

use serde_json::json;

use super::exchange::{exchange, Answer};
use super::Message;
use meshgate_domain::notify::chat_line;

pub struct Webhook {
    pub url: String,
}

impl Webhook {
    pub async fn send(&self, http: &reqwest::Client, message: &Message<'_>) -> Answer {
        // No mentions from tracker text, whatever it says.
        let body = json!({"content": chat_line(message.facts, message.milestone), "allowed_mentions": {"parse": []}});
        let url = &self.url;
        let request = match message.message_ref {
            Some(id) => http.patch(format!("{}/messages/{id}", url.split('?').next().unwrap_or(url))).json(&body),
            None => {
                let url = if url.contains('?') { format!("{url}&wait=true") } else { format!("{url}?wait=true") };
                http.post(url).json(&body)
            }
        };
        let mut answer = exchange(request).await;
        if answer.succeeded() {
            answer.message_ref =
                answer.json()["id"].as_str().map(str::to_owned).or_else(|| message.message_ref.map(str::to_owned));
        }
        answer
    }
}
