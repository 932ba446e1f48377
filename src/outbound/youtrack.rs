//! YouTrack: a short comment on the issue (`POST /api/issues/{id}/comments`) when a build fails,
//! and on success if configured. During a token rotation a 401 with the current token is retried
//! once with the previous one, until its grace runs out.

use std::time::SystemTime;

use serde_json::json;

use super::exchange::{exchange, percent_encode, Answer};
use super::Message;
use meshgate_domain::notify::{chat_line, failure_comment, Milestone};

pub struct Comments {
    pub base_url: String,
    pub token: String,
    /// The token being rotated out, and until when it may still be tried after a 401.
    pub previous: Option<(String, SystemTime)>,
    pub comment_on_success: bool,
}

impl Comments {
    pub async fn send(&self, http: &reqwest::Client, message: &Message<'_>) -> Answer {
        let facts = message.facts;
        let text = match message.milestone {
            Milestone::Failed => failure_comment(facts),
            milestone => chat_line(facts, milestone),
        };
        let url = format!(
            "{}/api/issues/{}/comments?fields=id",
            self.base_url.trim_end_matches('/'),
            percent_encode(&facts.issue_id)
        );
        let body = json!({"text": text, "usesMarkdown": true});
        let answer = exchange(http.post(&url).bearer_auth(&self.token).json(&body)).await;
        match &self.previous {
            Some((old, until)) if answer.status == Some(401) && SystemTime::now() < *until => {
                let retried = exchange(http.post(&url).bearer_auth(old).json(&body)).await;
                tracing::warn!(
                    status = retried.status,
                    "youtrack refused the current token (401); fell back to the previous one"
                );
                retried
            }
            _ => answer,
        }
    }
}
