//! The outbound targets: how a notification becomes one HTTP request, and what the answer means.

use std::time::{Duration, SystemTime};

use meshgate_domain::notify::{chat_line, escape_markdown, escape_slack, failure_comment, BuildFacts, Milestone};
use serde_json::json;

/// Chat targets that take one POST per line and have no server-side dedupe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookKind {
    /// JSON POST of the build state.
    Generic,
    /// Slack incoming webhook.
    Slack,
    /// Microsoft Teams Workflows webhook (Adaptive Card 1.4).
    Teams,
    /// Discord webhook.
    Discord,
}

/// Where a sink sends.
#[derive(Clone)]
pub enum Target {
    Chat {
        kind: WebhookKind,
        url: String,
    },
    /// Slack's Web API: one message per build, edited as the build moves.
    SlackApi {
        api: String,
        channel: String,
        token: String,
    },
    /// A Matrix room on a homeserver, posted to as one device, so a transaction id names one event.
    Matrix {
        homeserver: String,
        room_id: String,
        token: String,
        edit_in_place: bool,
    },
    YouTrack {
        base_url: String,
        token: String,
        /// The token being rotated out, and until when it may still be tried after a 401.
        previous: Option<(String, SystemTime)>,
        comment_on_success: bool,
    },
    /// PagerDuty Events API v2.
    PagerDuty {
        url: String,
        routing_key: String,
    },
}

/// A configured outbound target.
#[derive(Clone)]
pub struct Sink {
    pub name: String,
    pub target: Target,
    pub max_attempts: u32,
    /// An on-call alert channel: it gets the pages and nothing else.
    pub pages_only: bool,
}

/// What one try came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// None: no answer (connection failed, timed out).
    pub status: Option<u16>,
    pub excerpt: String,
    pub retry_after: Option<Duration>,
    /// The target's id for the message it made, where it gives one.
    pub message_ref: Option<String>,
}

impl Answer {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

impl Sink {
    /// The milestones this sink speaks of: every one in chat; failures (and, if configured,
    /// successes) on the tracker.
    pub fn wants(&self, milestone: Milestone) -> bool {
        if self.pages_only {
            return milestone == Milestone::Page;
        }
        match &self.target {
            Target::Chat { .. } | Target::Matrix { .. } | Target::SlackApi { .. } => milestone != Milestone::Page,
            Target::YouTrack { comment_on_success, .. } => {
                milestone == Milestone::Failed || (*comment_on_success && milestone == Milestone::Succeeded)
            }
            Target::PagerDuty { .. } => milestone == Milestone::Page,
        }
    }

    /// Sends one try. `message_ref` is the build's message on this sink, if it keeps one.
    pub async fn send(
        &self,
        http: &reqwest::Client,
        facts: &BuildFacts,
        milestone: Milestone,
        message_ref: Option<&str>,
    ) -> Answer {
        let request = match &self.target {
            Target::SlackApi { api, channel, token } => {
                let text = escape_slack(&chat_line(facts, milestone));
                let api = api.trim_end_matches('/');
                let request = match message_ref {
                    Some(ts) => http.post(format!("{api}/chat.update")).json(&json!({"channel": channel, "ts": ts, "text": text})),
                    None => http.post(format!("{api}/chat.postMessage")).json(&json!({"channel": channel, "text": text})),
                };
                return slack_api_answer(exchange(request.bearer_auth(token)).await, message_ref);
            }
            Target::Chat { kind: WebhookKind::Slack, url } => {
                http.post(url).json(&json!({"text": escape_slack(&chat_line(facts, milestone))}))
            }
            Target::Matrix { homeserver, room_id, token, edit_in_place } => {
                let line = chat_line(facts, milestone);
                // The same key always gives the same transaction id: a retry can never post twice.
                let txn = transaction_id(&facts.build_id.to_string(), milestone);
                let url = format!(
                    "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                    homeserver.trim_end_matches('/'),
                    percent_encode(room_id)
                );
                let content = json!({
                    "msgtype": "m.notice",
                    "body": line,
                    "format": "org.matrix.custom.html",
                    "formatted_body": escape_html(&line),
                });
                let body = match message_ref.filter(|_| *edit_in_place) {
                    Some(original) => json!({
                        "msgtype": "m.notice",
                        "body": format!("* {line}"),
                        "m.new_content": content,
                        "m.relates_to": {"rel_type": "m.replace", "event_id": original},
                    }),
                    None => content,
                };
                let mut answer = exchange(http.put(url).bearer_auth(token).json(&body)).await;
                if answer.succeeded() {
                    let sent: serde_json::Value = serde_json::from_str(&answer.excerpt).unwrap_or_default();
                    // Edits always point at the first message of the build.
                    answer.message_ref =
                        message_ref.map(str::to_owned).or_else(|| sent["event_id"].as_str().map(str::to_owned));
                }
                return trimmed(answer);
            }
            Target::Chat { kind: WebhookKind::Teams, url } => http.post(url).json(&json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        // TextBlock text is plain here: tracker text cannot add links or formatting.
                        "body": [{"type": "TextBlock", "text": escape_markdown(&chat_line(facts, milestone)), "wrap": true}],
                    },
                }],
            })),
            Target::Chat { kind: WebhookKind::Discord, url } => {
                // No mentions from tracker text, whatever it says.
                let body = json!({"content": chat_line(facts, milestone), "allowed_mentions": {"parse": []}});
                let request = match message_ref {
                    // Later states edit the build's message in place.
                    Some(id) => http.patch(format!("{}/messages/{id}", url.split('?').next().unwrap_or(url))).json(&body),
                    None => {
                        let url = if url.contains('?') { format!("{url}&wait=true") } else { format!("{url}?wait=true") };
                        http.post(url).json(&body)
                    }
                };
                let mut answer = exchange(request).await;
                if answer.succeeded() {
                    let message: serde_json::Value = serde_json::from_str(&answer.excerpt).unwrap_or_default();
                    answer.message_ref = message["id"].as_str().map(str::to_owned).or_else(|| message_ref.map(str::to_owned));
                }
                return trimmed(answer);
            }
            Target::Chat { kind: WebhookKind::Generic, url } => http.post(url).json(&json!({
                "issue_id": facts.issue_id,
                "milestone": milestone.as_str(),
                "text": chat_line(facts, milestone),
                "lane": facts.lane,
                "script": facts.script,
                "node_id": facts.node_id,
                "commit_sha": facts.commit_sha,
                "log_url": facts.log_url,
            })),
            Target::PagerDuty { url, routing_key } => http.post(url).json(&json!({
                "routing_key": routing_key,
                "event_action": "trigger",
                "dedup_key": format!("meshgate-{}", facts.build_id),
                "payload": {
                    "summary": format!("meshgate could not report a build of {} to chat or the tracker", facts.issue_id),
                    "source": "meshgate",
                    "severity": "critical",
                    "custom_details": {"line": chat_line(facts, Milestone::Failed)},
                },
            })),
            Target::YouTrack { base_url, token, previous, .. } => {
                let text = match milestone {
                    Milestone::Failed => failure_comment(facts),
                    _ => chat_line(facts, milestone),
                };
                let url =
                    format!("{}/api/issues/{}/comments?fields=id", base_url.trim_end_matches('/'), percent_encode(&facts.issue_id));
                let body = json!({"text": text, "usesMarkdown": true});
                let answer = exchange(http.post(&url).bearer_auth(token).json(&body)).await;
                return trimmed(match previous {
                    Some((old, until)) if answer.status == Some(401) && SystemTime::now() < *until => {
                        let retried = exchange(http.post(&url).bearer_auth(old).json(&body)).await;
                        tracing::warn!(
                            status = retried.status,
                            "youtrack refused the current token (401); fell back to the previous one"
                        );
                        retried
                    }
                    _ => answer,
                });
            }
        };
        trimmed(exchange(request).await)
    }
}

/// Keeps the start of an answer for the audit.
fn trimmed(mut answer: Answer) -> Answer {
    answer.excerpt = answer.excerpt.chars().take(200).collect();
    answer
}

async fn exchange(request: reqwest::RequestBuilder) -> Answer {
    {
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, SystemTime::now()));
                let body = response.text().await.unwrap_or_default();
                // Matrix (`retry_after_ms`) and Discord (`retry_after`, seconds) also say it in the body.
                let retry_after = retry_after.or_else(|| {
                    let v = serde_json::from_str::<serde_json::Value>(&body).ok()?;
                    v["retry_after_ms"]
                        .as_u64()
                        .map(Duration::from_millis)
                        .or_else(|| v["retry_after"].as_f64().and_then(|s| Duration::try_from_secs_f64(s).ok()))
                });
                Answer {
                    status: Some(status),
                    excerpt: body.chars().take(2000).collect(),
                    retry_after,
                    message_ref: None,
                }
            }
            Err(e) => Answer {
                status: None,
                excerpt: e.to_string().chars().take(200).collect(),
                retry_after: None,
                message_ref: None,
            },
        }
    }
}

/// Slack's Web API answers 200 with `{"ok": false, "error": …}` for most failures: `ratelimited`
/// and `service_unavailable` are retried (as 429 and 503), every other error is final (as 400).
fn slack_api_answer(mut answer: Answer, message_ref: Option<&str>) -> Answer {
    if answer.status != Some(200) {
        return answer;
    }
    let body: serde_json::Value = serde_json::from_str(&answer.excerpt).unwrap_or_default();
    if body["ok"] == true {
        answer.message_ref = body["ts"].as_str().map(str::to_owned).or_else(|| message_ref.map(str::to_owned));
    } else {
        answer.status = Some(match body["error"].as_str() {
            Some("ratelimited") => 429,
            Some("service_unavailable") => 503,
            _ => 400,
        });
    }
    trimmed(answer)
}

fn transaction_id(build: &str, milestone: Milestone) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new().chain_update(build).chain_update(b"/").chain_update(milestone.as_str()).finalize();
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `Retry-After` as delta-seconds or an HTTP-date (all three formats).
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_every_http_date_format() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        for later in ["Sun, 06 Nov 1994 08:49:47 GMT", "Sunday, 06-Nov-94 08:49:47 GMT", "Sun Nov  6 08:49:47 1994"] {
            assert_eq!(retry_after(later, now), Some(Duration::from_secs(10)), "{later}");
        }
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn issue_ids_are_percent_encoded_in_paths() {
        assert_eq!(percent_encode("MOB-7"), "MOB-7");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
    }
}
