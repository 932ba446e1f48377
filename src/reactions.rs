//! Actions from a Matrix room: the gateway's own login follows the room with `/sync` (reactions
//! only) and a reaction by one of the sink's `allowed_users` with the rebuild or cancel key on a
//! build's first message acts on that build, decided like the dashboard's actions
//! ([`crate::actions::from_chat`]), once per reaction. Reactions by anyone else, on other events
//! or with other keys are ignored and counted. How far the room was read is recorded
//! (`ChatSynced`) after each batch with reactions, so a restart goes on from there: it misses
//! none, and one read again finds its request already recorded. Runs on the gateway that holds the
//! lease.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use meshgate_domain::action::{ActionKind, ChatAction};
use meshgate_domain::event::ChatSynced;
use meshgate_domain::stream::chat_sync_stream;
use meshgate_domain::{Event, ExpectedVersion};
use serde_json::{json, Value};
use tokio::sync::watch;
use uuid::Uuid;

use crate::outbound::exchange::percent_encode;
use crate::outbound::matrix::{CANCEL, REBUILD};
use crate::projector::Projections;
use crate::store::{EventStore, NewEvent, StreamAppend};

/// How long one `/sync` waits for something to happen.
const SYNC_WAIT: Duration = Duration::from_secs(25);

/// A Matrix sink whose room is followed for reactions.
pub struct Follower {
    pub sink: String,
    pub homeserver: String,
    pub room_id: String,
    /// Replaced when its file is reloaded.
    pub token: std::sync::RwLock<String>,
    pub allowed_users: Vec<String>,
    pub http: reqwest::Client,
}

/// What became of one reaction, for the counter.
fn counted(outcome: &'static str) {
    metrics::counter!(crate::metrics::CHAT_ACTIONS, "via" => "matrix", "outcome" => outcome).increment(1);
}

impl Follower {
    fn url(&self, path: &str) -> String {
        format!("{}/_matrix/client/v3{path}", self.homeserver.trim_end_matches('/'))
    }

    async fn get(&self, url: String, timeout: Duration) -> Result<Value, String> {
        let token = self.token.read().unwrap_or_else(|p| p.into_inner()).clone();
        let sent = self.http.get(url).bearer_auth(token).timeout(timeout).send().await;
        let response = sent.map_err(crate::report::http_error)?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| format!("{status}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{status}: {}", body["error"].as_str().unwrap_or_default()));
        }
        Ok(body)
    }

    /// One `/sync` of the room's reactions from `since` (none: the room as it is now, without
    /// waiting).
    async fn sync(&self, since: Option<&str>) -> Result<Value, String> {
        let filter = json!({
            "room": {
                "rooms": [self.room_id],
                "timeline": {"types": ["m.reaction"], "limit": 1000},
                "state": {"types": []}, "ephemeral": {"types": []}, "account_data": {"types": []},
            },
            "presence": {"types": []}, "account_data": {"types": []},
        });
        let mut url = format!("{}?filter={}", self.url("/sync"), percent_encode(&filter.to_string()));
        match since {
            Some(since) => url.push_str(&format!("&since={}&timeout={}", percent_encode(since), SYNC_WAIT.as_millis())),
            None => url.push_str("&timeout=0"),
        }
        self.get(url, SYNC_WAIT + Duration::from_secs(10)).await
    }
}

/// Where the room was last read to, from the log.
async fn recorded_since(store: &dyn EventStore, sink: &str) -> Option<String> {
    let stored = store.read_stream(&chat_sync_stream(sink)).await.ok()?;
    stored.iter().rev().find_map(|s| match s.decode().ok()?.event {
        Event::ChatSynced(synced) => Some(synced.since),
        _ => None,
    })
}

async fn record_since(store: &dyn EventStore, sink: &str, since: &str) -> Result<(), crate::store::StoreError> {
    let event = Event::ChatSynced(ChatSynced { sink: sink.to_owned(), since: since.to_owned() });
    let append = StreamAppend {
        stream: chat_sync_stream(sink),
        // Only the leaseholder follows the room.
        expected: ExpectedVersion::Any,
        events: vec![NewEvent::from_domain(&event, Uuid::now_v7(), None, Utc::now())],
    };
    store.append(vec![append]).await.map(|_| ())
}

/// Follows the room until `stopping` turns true; `store` is fenced with this gateway's term.
pub async fn run(
    follower: Arc<Follower>,
    store: Arc<dyn EventStore>,
    projections: Projections,
    mut stopping: watch::Receiver<bool>,
) {
    let me = match follower.get(follower.url("/account/whoami"), Duration::from_secs(30)).await {
        Ok(me) => me["user_id"].as_str().unwrap_or_default().to_owned(),
        Err(e) => {
            tracing::warn!(sink = %follower.sink, error = %e, "cannot ask Matrix who the bot is; its own reactions are ignored by key");
            String::new()
        }
    };
    let mut since = recorded_since(store.as_ref(), &follower.sink).await;
    let mut failures = 0u32;
    loop {
        if *stopping.borrow() {
            return;
        }
        let synced = tokio::select! {
            synced = follower.sync(since.as_deref()) => synced,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let batch = match synced {
            Ok(batch) => {
                failures = 0;
                batch
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(sink = %follower.sink, error = %e, "cannot read the Matrix room for reactions");
                let wait = Duration::from_secs((1u64 << failures.min(5)).min(30));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        };
        let Some(next) = batch["next_batch"].as_str().map(str::to_owned) else { continue };
        let first = since.is_none();
        let timeline = &batch["rooms"]["join"][&follower.room_id]["timeline"]["events"];
        let reactions: Vec<&Value> = timeline.as_array().map(|e| e.iter().collect()).unwrap_or_default();
        // The first read of a room the gateway never followed starts from now.
        if !first {
            for reaction in &reactions {
                handle(&follower, store.as_ref(), &projections, &me, reaction).await;
            }
        }
        if first || !reactions.is_empty() {
            if let Err(e) = record_since(store.as_ref(), &follower.sink, &next).await {
                tracing::warn!(sink = %follower.sink, error = %crate::report::chain(&e), "cannot record how far the room was read");
            }
        }
        since = Some(next);
    }
}

/// The action a reaction's key asks for (a trailing variation selector is the same key).
fn action_of(key: &str) -> Option<ActionKind> {
    match key.trim_end_matches('\u{fe0f}') {
        k if k == REBUILD.trim_end_matches('\u{fe0f}') => Some(ActionKind::Rebuild),
        k if k == CANCEL.trim_end_matches('\u{fe0f}') => Some(ActionKind::Cancel),
        _ => None,
    }
}

/// One reaction: acted on, or ignored and counted.
async fn handle(follower: &Follower, store: &dyn EventStore, projections: &Projections, me: &str, reaction: &Value) {
    let relates = &reaction["content"]["m.relates_to"];
    let (Some(event_id), Some(sender), Some(target), Some(key)) = (
        reaction["event_id"].as_str(),
        reaction["sender"].as_str(),
        relates["event_id"].as_str(),
        relates["key"].as_str(),
    ) else {
        return counted("malformed");
    };
    if sender == me {
        return;
    }
    if relates["rel_type"] != "m.annotation" {
        return counted("malformed");
    }
    let Some(action) = action_of(key) else { return counted("other_key") };
    if !follower.allowed_users.iter().any(|u| u == sender) {
        tracing::info!(sink = %follower.sink, sender, "a reaction by someone not in allowed_users is ignored");
        return counted("not_allowed");
    }
    let Some(build_id) = projections.read(|p| p.outbox.build_of_message(&follower.sink, target)) else {
        return counted("unknown_event");
    };
    let chat = ChatAction { request_id: event_id, sink: &follower.sink, user: sender, action, build_id, allowed: true };
    match crate::actions::from_chat(store, "matrix", &chat).await {
        Ok((decision, _)) => {
            counted(decision.outcome.as_str());
            tracing::info!(%build_id, sender, action = action.as_str(), outcome = decision.outcome.as_str(), repeated = decision.repeated, "a Matrix reaction");
        }
        Err(crate::actions::ActionError::UnknownBuild) => counted("unknown_event"),
        Err(e) => tracing::error!(%build_id, error = %crate::report::chain(&e), "cannot record a Matrix reaction"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_with_or_without_their_variation_selector() {
        assert_eq!(action_of("🔁"), Some(ActionKind::Rebuild));
        assert_eq!(action_of("⛔"), Some(ActionKind::Cancel));
        assert_eq!(action_of("⛔\u{fe0f}"), Some(ActionKind::Cancel));
        assert_eq!(action_of("👍"), None);
    }
}
