//! What `meshgate selftest` asks of each sink: does its endpoint answer (and, where the protocol
//! has a way to ask, does it take the credentials), and, on sinks configured `selftest = true`, a
//! visible test line. Nothing here is a notification: no build, no key, no retry.

use serde_json::json;
use uuid::Uuid;

use super::exchange::{exchange, percent_encode, Answer};
use super::sink::{Sink, Target};

/// A reachable endpoint or not, and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub ok: bool,
    pub detail: String,
}

fn judged(answer: Answer, what: &str) -> Probe {
    match (answer.status, answer.error) {
        (_, Some(error)) => Probe { ok: false, detail: error },
        // An endpoint that is gone or refuses the credentials in its URL says so with these.
        (Some(status @ (401 | 403 | 404 | 410)), None) => Probe {
            ok: false,
            detail: format!("{what} answered {status}: {}", answer.body.chars().take(120).collect::<String>()),
        },
        (Some(status), None) => Probe { ok: true, detail: format!("{what} answered {status}") },
        (None, None) => Probe { ok: answer.written, detail: answer.body },
    }
}

impl Sink {
    /// Asks the endpoint something harmless: a `GET` of a webhook URL (any answer but 401, 403,
    /// 404 and 410 means it is there), Slack's `auth.test` and Matrix's `whoami` (which check the
    /// token too).
    pub async fn probe(&self, http: &reqwest::Client) -> Probe {
        match &*self.target() {
            Target::Console(_) => Probe { ok: true, detail: "standard output".into() },
            Target::SlackApi(api) => {
                let url = format!("{}/auth.test", api.api.trim_end_matches('/'));
                let answer = exchange(http.post(url).bearer_auth(&api.token)).await;
                let body = answer.json();
                match answer.status {
                    Some(200) if body["ok"] == true => {
                        Probe { ok: true, detail: format!("token of {}", body["user"].as_str().unwrap_or("?")) }
                    }
                    Some(200) => {
                        Probe { ok: false, detail: format!("auth.test: {}", body["error"].as_str().unwrap_or("?")) }
                    }
                    _ => judged(answer, "auth.test"),
                }
            }
            Target::Matrix(room) => {
                let url = format!("{}/_matrix/client/v3/account/whoami", room.homeserver.trim_end_matches('/'));
                let answer = exchange(http.get(url).bearer_auth(&room.token)).await;
                let user = answer.json()["user_id"].as_str().map(str::to_owned);
                match (answer.status, user) {
                    (Some(200), Some(user)) => Probe { ok: true, detail: format!("token of {user}") },
                    _ => judged(answer, "whoami"),
                }
            }
            Target::YouTrack(_) => Probe { ok: true, detail: "checked with its token (users/me)".into() },
            Target::YouTrackCommands(commands) => {
                let (ok, detail) = commands.check(http).await;
                Probe { ok, detail }
            }
            Target::Generic(t) => judged(exchange(http.get(&t.url)).await, "the endpoint"),
            Target::SlackWebhook(t) => judged(exchange(http.get(&t.url)).await, "the webhook"),
            Target::Teams(t) => judged(exchange(http.get(&t.url)).await, "the workflow"),
            Target::Discord(t) => judged(exchange(http.get(&t.url)).await, "the webhook"),
            Target::OpenClaw(t) => judged(exchange(http.get(&t.url)).await, "the OpenClaw gateway"),
            Target::PagerDuty(t) => judged(exchange(http.get(&t.url)).await, "the Events API"),
        }
    }

    /// Posts `text` as a visible line through the sink's protocol (chat sinks only).
    pub async fn test_line(&self, http: &reqwest::Client, text: &str) -> Option<Probe> {
        let answer = match &*self.target() {
            Target::Console(_) => {
                println!("{text}");
                Answer::written("written to standard output")
            }
            Target::Generic(t) => {
                exchange(http.post(&t.url).json(&json!({"schema_version": 1, "selftest": true, "text": text}))).await
            }
            Target::SlackWebhook(t) => exchange(http.post(&t.url).json(&json!({"text": text}))).await,
            Target::SlackApi(api) => {
                let url = format!("{}/chat.postMessage", api.api.trim_end_matches('/'));
                let answer = exchange(
                    http.post(url).bearer_auth(&api.token).json(&json!({"channel": api.channel, "text": text})),
                )
                .await;
                super::slack::api_answer(answer, None)
            }
            Target::Teams(t) => {
                let card = json!({"type": "message", "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "content": {"type": "AdaptiveCard", "version": "1.4",
                                "body": [{"type": "TextBlock", "text": text, "wrap": true}]}}]});
                exchange(http.post(&t.url).json(&card)).await
            }
            Target::Discord(t) => {
                exchange(http.post(&t.url).json(&json!({"content": text, "allowed_mentions": {"parse": []}}))).await
            }
            Target::Matrix(room) => {
                let url = format!(
                    "{}/_matrix/client/v3/rooms/{}/send/m.room.message/selftest-{}",
                    room.homeserver.trim_end_matches('/'),
                    percent_encode(&room.room_id),
                    Uuid::now_v7().simple()
                );
                exchange(http.put(url).bearer_auth(&room.token).json(&json!({"msgtype": "m.notice", "body": text})))
                    .await
            }
            Target::OpenClaw(t) => {
                let key = format!("selftest-{}", Uuid::now_v7());
                let body = json!({"message": text, "name": "meshgate", "deliver": true, "channel": t.channel,
                                  "to": t.to, "idempotencyKey": key});
                let url = format!("{}/hooks/agent", t.url.trim_end_matches('/'));
                exchange(http.post(url).bearer_auth(&t.token).header("Idempotency-Key", key).json(&body)).await
            }
            Target::YouTrack(_) | Target::YouTrackCommands(_) | Target::PagerDuty(_) => return None,
        };
        let sent = answer.succeeded();
        Some(match judged(answer, "the test line") {
            Probe { detail, .. } if sent => Probe { ok: true, detail: format!("test line posted ({detail})") },
            Probe { detail, .. } => Probe { ok: false, detail: format!("test line refused: {detail}") },
        })
    }
}
