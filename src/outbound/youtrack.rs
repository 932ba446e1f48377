//! YouTrack, told about builds on their issue: a short comment (`POST /api/issues/{id}/comments`)
//! when a build fails, and on success if configured; and the trigger's command
//! (`POST /api/commands`, silent) when a build of a trigger that has one finishes. During a token
//! rotation a 401 with the current token is retried once with the previous one, until its grace
//! runs out.

use std::collections::HashMap;
use std::time::SystemTime;

use serde_json::{json, Value};

use super::exchange::{exchange, percent_encode, Answer};
use super::Message;
use meshgate_domain::notify::{chat_line, failure_comment, Milestone};
use meshgate_domain::writeback::{self, Filled};
use meshgate_domain::Trigger;

/// YouTrack's REST API with the bot's token (and the one being rotated out).
pub struct Api {
    pub base_url: String,
    pub token: String,
    /// The token being rotated out, and until when it may still be tried after a 401.
    pub previous: Option<(String, SystemTime)>,
}

impl Api {
    /// GETs `path` (which starts with `/api/`) with the current token.
    async fn get(&self, http: &reqwest::Client, path: &str) -> Answer {
        let url = format!("{}{path}", self.base_url.trim_end_matches('/'));
        exchange(http.get(&url).bearer_auth(&self.token)).await
    }

    /// POSTs `body` to `path` (which starts with `/api/`).
    async fn post(&self, http: &reqwest::Client, path: &str, body: &Value) -> Answer {
        let url = format!("{}{path}", self.base_url.trim_end_matches('/'));
        let answer = exchange(http.post(&url).bearer_auth(&self.token).json(body)).await;
        match &self.previous {
            Some((old, until)) if answer.status == Some(401) && SystemTime::now() < *until => {
                let retried = exchange(http.post(&url).bearer_auth(old).json(body)).await;
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

pub struct Comments {
    pub api: Api,
    pub comment_on_success: bool,
}

impl Comments {
    pub async fn send(&self, http: &reqwest::Client, message: &Message<'_>) -> Answer {
        let facts = message.facts;
        let text = match message.milestone {
            Milestone::Failed => failure_comment(facts),
            milestone => chat_line(facts, milestone),
        };
        let path = format!("/api/issues/{}/comments?fields=id", percent_encode(&facts.issue_id));
        self.api.post(http, &path, &json!({"text": text, "usesMarkdown": true})).await
    }
}

/// The commands of each trigger that has some (`on_success_command`, `on_failure_command`,
/// `fixed_in_build_field`).
pub struct Commands {
    pub api: Api,
    pub triggers: HashMap<String, Trigger>,
}

impl Commands {
    pub async fn send(&self, http: &reqwest::Client, message: &Message<'_>) -> Answer {
        let facts = message.facts;
        let Some(trigger) = self.triggers.get(&facts.trigger) else {
            return Answer::unsent(format!("trigger `{}` has no YouTrack command any more", facts.trigger));
        };
        let name = facts.name.clone().unwrap_or_else(|| facts.build_id.to_string());
        let filled = Filled {
            number: facts.number,
            name: &name,
            sha: facts.commit_sha.as_deref(),
            node: facts.node_id.as_deref(),
        };
        let query = match writeback::command(trigger, message.milestone, &filled) {
            Ok(Some(query)) => query,
            Ok(None) => return Answer::written("no command for this milestone"),
            Err(e) => return Answer::unsent(e.to_string()),
        };
        let body = json!({"query": query, "issues": [{"idReadable": facts.issue_id}], "silent": true});
        let mut answer = self.api.post(http, "/api/commands", &body).await;
        if answer.status.is_some_and(|s| (400..500).contains(&s)) {
            // YouTrack says why it cannot apply the command (an unknown state, a field the bot may
            // not change): that is the reason it is abandoned.
            let said = answer.json();
            answer.said = said["error_description"].as_str().or(said["error"].as_str()).map(str::to_owned);
        }
        answer
    }
}

impl Commands {
    /// Whether YouTrack reads each trigger's commands, without applying them: `POST
    /// /api/commands/assist` (read-only) on an issue of each of the trigger's projects the token
    /// can see (none when it sees none, or the trigger names no project), with a made-up build's
    /// facts filled in. Fails on an answer that is not 200 and on a command YouTrack marks as an
    /// error.
    pub async fn check(&self, http: &reqwest::Client) -> (bool, String) {
        let mut triggers: Vec<&Trigger> = self.triggers.values().collect();
        triggers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut said = Vec::new();
        let mut ok = true;
        for trigger in triggers {
            let mut issues = Vec::new();
            for project in &trigger.projects {
                let path = format!(
                    "/api/issues?fields=idReadable&$top=1&query={}",
                    percent_encode(&format!("project: {{{project}}}"))
                );
                let answer = self.api.get(http, &path).await;
                match answer.json()[0]["idReadable"].as_str() {
                    Some(id) => issues.push(json!({"idReadable": id})),
                    None if answer.status == Some(200) => {}
                    None => {
                        ok = false;
                        said.push(format!("{}: cannot list issues of {project} ({:?})", trigger.name, answer.status));
                    }
                }
            }
            for milestone in writeback::milestones(trigger) {
                let Ok(Some(query)) = writeback::command(trigger, milestone, &Filled::sample()) else { continue };
                let body = json!({"query": query, "caret": query.chars().count(), "issues": issues});
                let answer =
                    self.api.post(http, "/api/commands/assist?fields=commands(description,error)", &body).await;
                let parsed = answer.json();
                let errors: Vec<&str> = parsed["commands"]
                    .as_array()
                    .map(|c| {
                        c.iter().filter(|c| c["error"] == true).filter_map(|c| c["description"].as_str()).collect()
                    })
                    .unwrap_or_default();
                match answer.status {
                    Some(200) if errors.is_empty() => {
                        said.push(format!("{} {}: `{query}` reads", trigger.name, milestone.as_str()))
                    }
                    Some(200) => {
                        ok = false;
                        said.push(format!("{} {}: `{query}`: {}", trigger.name, milestone.as_str(), errors.join("; ")));
                    }
                    status => {
                        ok = false;
                        let why = answer.error.unwrap_or_else(|| answer.body.chars().take(120).collect());
                        said.push(format!(
                            "{} {}: commands/assist answered {status:?}: {why}",
                            trigger.name,
                            milestone.as_str()
                        ));
                    }
                }
            }
        }
        (ok, said.join("; "))
    }
}
