//! Matrix: `m.notice` messages in a room, posted as one device, so a transaction id derived from
//! the notification key names one event and a retry can never post twice. With `allowed_users`,
//! the bot reacts to a build's first message with the keys people react with to act on it
//! ([`REBUILD`], [`CANCEL`]; `src/reactions.rs` follows what they do), under transaction ids of
//! their own: a try whose reactions failed is tried again whole, and posts nothing twice.

use serde_json::json;

use super::exchange::{exchange, percent_encode, Answer};
use super::Message;
use meshgate_domain::notify::{chat_line, Milestone};

pub struct Room {
    pub homeserver: String,
    pub room_id: String,
    pub token: String,
    /// Later states edit the build's first message (`m.replace`).
    pub edit_in_place: bool,
    /// Whether the bot offers the reaction keys on a build's first message.
    pub reactions: bool,
}

/// The reaction key that rebuilds a build.
pub const REBUILD: &str = "🔁";
/// The reaction key that cancels a build.
pub const CANCEL: &str = "⛔";

impl Room {
    pub async fn send(&self, http: &reqwest::Client, message: &Message<'_>) -> Answer {
        let line = chat_line(message.facts, message.milestone);
        let txn = transaction_id(&message.facts.build_id.to_string(), message.milestone);
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
            self.homeserver.trim_end_matches('/'),
            percent_encode(&self.room_id)
        );
        let content = json!({
            "msgtype": "m.notice",
            "body": line,
            "format": "org.matrix.custom.html",
            "formatted_body": escape_html(&line),
        });
        let body = match message.message_ref.filter(|_| self.edit_in_place) {
            Some(original) => json!({
                "msgtype": "m.notice",
                "body": format!("* {line}"),
                "m.new_content": content,
                "m.relates_to": {"rel_type": "m.replace", "event_id": original},
            }),
            None => content,
        };
        let mut answer = exchange(http.put(url).bearer_auth(&self.token).json(&body)).await;
        let first = answer.json()["event_id"].as_str().map(str::to_owned);
        // A pause's notice is no build's: nothing to react with.
        let acts = self.reactions && !matches!(message.milestone, Milestone::Paused | Milestone::Resumed);
        if let (true, true, None, Some(first)) = (answer.succeeded(), acts, message.message_ref, &first) {
            for key in [REBUILD, CANCEL] {
                let reacted = self.react(http, first, key, &message.facts.build_id.to_string()).await;
                if !reacted.succeeded() {
                    // Tried again whole: the message and the reactions that landed come back as they were.
                    return reacted;
                }
            }
        }
        if answer.succeeded() {
            // Edits always point at the first message of the build.
            answer.message_ref = message
                .message_ref
                .map(str::to_owned)
                .or_else(|| answer.json()["event_id"].as_str().map(str::to_owned));
        }
        answer
    }
}

impl Room {
    /// The bot's reaction `key` to `event_id`, under a transaction id of the build and key.
    async fn react(&self, http: &reqwest::Client, event_id: &str, key: &str, build: &str) -> Answer {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new().chain_update(build).chain_update(b"/react/").chain_update(key).finalize();
        let txn: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.reaction/{txn}",
            self.homeserver.trim_end_matches('/'),
            percent_encode(&self.room_id)
        );
        let body = json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}});
        exchange(http.put(url).bearer_auth(&self.token).json(&body)).await
    }
}

fn transaction_id(build: &str, milestone: Milestone) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new().chain_update(build).chain_update(b"/").chain_update(milestone.as_str()).finalize();
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
