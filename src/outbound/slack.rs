//! Slack: an incoming webhook (one line per state), or the Web API with a bot token (one message
//! per build, edited with `chat.update` as the build moves).

use serde_json::json;

use super::exchange::{exchange, Answer};
use super::Message;
use meshgate_domain::notify::{chat_line, escape_slack, Milestone};

/// An incoming webhook (`https://hooks.slack.com/services/…`, a secret).
pub struct Webhook {
    pub url: String,
}

impl Webhook {
    pub async fn send(&self, http: &reqwest::Client, message: &Message<'_>) -> Answer {
        let text = escape_slack(&chat_line(message.facts, message.milestone));
        exchange(http.post(&self.url).json(&json!({"text": text}))).await
    }
}

/// The Web API (`https://slack.com/api`) with a bot token.
pub struct Api {
    pub api: String,
    pub channel: String,
    pub token: String,
    /// Whether the build's message carries buttons (the sink has `allowed_users`).
    pub buttons: bool,
}

/// A button's `action_id`: what it asks.
pub const REBUILD: &str = "rebuild";
pub const CANCEL: &str = "cancel";

impl Api {
    pub async fn send(&self, http: &reqwest::Client, message: &Message<'_>) -> Answer {
        let text = escape_slack(&chat_line(message.facts, message.milestone));
        let api = self.api.trim_end_matches('/');
        let mut body = json!({"channel": self.channel, "text": text});
        if self.buttons {
            body["blocks"] = blocks(&text, message.facts.build_id, message.milestone);
        }
        let request = match message.message_ref {
            Some(ts) => {
                body["ts"] = json!(ts);
                http.post(format!("{api}/chat.update")).json(&body)
            }
            None => http.post(format!("{api}/chat.postMessage")).json(&body),
        };
        api_answer(exchange(request.bearer_auth(&self.token)).await, message.message_ref)
    }

    /// A message only `user` sees in the channel (`chat.postEphemeral`): one try, for answers to
    /// a click (not allowed, nothing to do).
    pub async fn whisper(&self, http: &reqwest::Client, user: &str, text: &str) -> Answer {
        let api = self.api.trim_end_matches('/');
        let body = json!({"channel": self.channel, "user": user, "text": escape_slack(text)});
        api_answer(
            exchange(http.post(format!("{api}/chat.postEphemeral")).json(&body).bearer_auth(&self.token)).await,
            None,
        )
    }
}

/// The message as Block Kit: the line, then `Cancel` while the build is queued or running and
/// `Rebuild` once it has finished. Each button's value is the build's id.
pub fn blocks(text: &str, build_id: uuid::Uuid, milestone: Milestone) -> serde_json::Value {
    let button = match milestone {
        Milestone::Queued | Milestone::Running | Milestone::Requeued | Milestone::Retrying(_) => json!({
            "type": "button", "action_id": CANCEL, "style": "danger", "value": build_id.to_string(),
            "text": {"type": "plain_text", "text": "Cancel"},
            "confirm": {
                "title": {"type": "plain_text", "text": "Cancel the build?"},
                "text": {"type": "plain_text", "text": "Its node stops it at the next heartbeat."},
                "confirm": {"type": "plain_text", "text": "Cancel it"},
                "deny": {"type": "plain_text", "text": "Keep it"},
            },
        }),
        Milestone::Succeeded
        | Milestone::Failed
        | Milestone::Cancelled
        | Milestone::Rebuilt
        | Milestone::Page
        | Milestone::Unservable
        | Milestone::Servable => {
            json!({
                "type": "button", "action_id": REBUILD, "value": build_id.to_string(),
                "text": {"type": "plain_text", "text": "Rebuild"},
            })
        }
        // No build to act on.
        Milestone::Paused | Milestone::Resumed => {
            return json!([{"type": "section", "text": {"type": "mrkdwn", "text": text}}]);
        }
    };
    json!([
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "actions", "block_id": "meshgate", "elements": [button]},
    ])
}

/// Slack's Web API answers 200 with `{"ok": false, "error": …}` for most failures: `ratelimited`
/// and `service_unavailable` are retried (as 429 and 503), every other error is final (as 400).
/// The whole body is read, so an `ok` after a long `warning` still counts.
pub fn api_answer(mut answer: Answer, message_ref: Option<&str>) -> Answer {
    if answer.status != Some(200) {
        return answer;
    }
    let body = answer.json();
    if body["ok"] == true {
        answer.message_ref = body["ts"].as_str().map(str::to_owned).or_else(|| message_ref.map(str::to_owned));
    } else {
        answer.status = Some(match body["error"].as_str() {
            Some("ratelimited") => 429,
            Some("service_unavailable") => 503,
            _ => 400,
        });
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(body: String) -> Answer {
        Answer { status: Some(200), body, ..Answer::default() }
    }

    #[test]
    fn an_ok_far_into_a_long_answer_is_still_a_delivery() {
        let warning = "w".repeat(5000);
        let answer = api_answer(answered(format!(r#"{{"warning": "{warning}", "ok": true, "ts": "1.2"}}"#)), None);
        assert!(answer.succeeded());
        assert_eq!(answer.message_ref.as_deref(), Some("1.2"));
    }

    #[test]
    fn errors_in_a_200_are_retried_or_final_by_name() {
        let status = |error: &str| api_answer(answered(format!(r#"{{"ok": false, "error": "{error}"}}"#)), None).status;
        assert_eq!(status("ratelimited"), Some(429));
        assert_eq!(status("service_unavailable"), Some(503));
        assert_eq!(status("channel_not_found"), Some(400));
    }
}
