//! Slack's interactivity requests (`POST /chat/slack/actions`): a click on a build message's
//! `Rebuild` or `Cancel` button. The signature is checked before anything of the body is read
//! (`X-Slack-Signature`: `v0=` HMAC-SHA256 over `v0:{timestamp}:{body}` with a sink's signing
//! secret, compared in constant time; a timestamp more than five minutes off is refused), so a
//! refusal records nothing. A signed click is decided like the dashboard's actions
//! ([`crate::actions::from_chat`]), once per click, and Slack is answered at once: what the click
//! did shows in the build's message, which the outbox updates; a click that did nothing, or that
//! was not allowed, gets an answer only its user sees.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use meshgate_domain::action::{ActionDecision, ActionKind, ActionOutcome, ChatAction};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::ApiError;
use crate::outbound::slack;
use crate::projector::Projections;
use crate::secrets::Token;
use crate::store::EventStore;

/// The most Slack's signed request may be off the gateway's clock.
pub const MAX_SKEW_SECONDS: i64 = 300;
/// The largest interactivity request read.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a click's decision may take before Slack is answered anyway (it allows 3 s).
const ANSWER_WITHIN: Duration = Duration::from_millis(2000);

/// A `slack_api` sink with buttons: its channel, its signing secret, who may act, and its Web API
/// for answers only the clicking user sees.
pub struct SlackSink {
    pub name: String,
    pub signing_secret: String,
    pub allowed_users: Vec<String>,
    pub api: slack::Api,
}

impl SlackSink {
    /// The `slack_api` sinks with buttons (a signing secret and someone allowed to act), their
    /// secrets read.
    pub fn configured(config: &crate::config::Config) -> Result<Vec<SlackSink>, crate::secrets::SecretError> {
        let read =
            |file: &std::path::Path| Ok::<_, crate::secrets::SecretError>(Token::read(file)?.expose().to_owned());
        let mut sinks = Vec::new();
        for chat in config.chat.iter().filter(|c| c.kind == crate::config::ChatKind::SlackApi) {
            let (Some(secret), Some(token)) = (&chat.signing_secret_file, &chat.token_file) else { continue };
            if chat.allowed_users.is_empty() {
                continue;
            }
            let api = match (&chat.url, &chat.url_file) {
                (Some(url), _) => url.clone(),
                (None, Some(file)) => read(file)?,
                (None, None) => continue,
            };
            sinks.push(SlackSink {
                name: chat.name.clone(),
                signing_secret: read(secret)?,
                allowed_users: chat.allowed_users.clone(),
                api: slack::Api {
                    api,
                    channel: chat.channel.clone().unwrap_or_default(),
                    token: read(token)?,
                    buttons: true,
                },
            });
        }
        Ok(sinks)
    }
}

/// The state of `POST /chat/slack/actions`.
pub struct SlackActions {
    /// Replaced whole when the secrets are reloaded.
    sinks: std::sync::RwLock<Arc<Vec<SlackSink>>>,
    pub store: Arc<dyn EventStore>,
    pub projections: Projections,
    pub http: reqwest::Client,
}

impl SlackActions {
    pub fn new(
        sinks: Vec<SlackSink>,
        store: Arc<dyn EventStore>,
        projections: Projections,
        http: reqwest::Client,
    ) -> SlackActions {
        SlackActions { sinks: std::sync::RwLock::new(Arc::new(sinks)), store, projections, http }
    }

    /// The sinks in force.
    pub fn sinks(&self) -> Arc<Vec<SlackSink>> {
        Arc::clone(&self.sinks.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts sinks with their secrets read again in force.
    pub fn replace(&self, sinks: Vec<SlackSink>) {
        *self.sinks.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(sinks);
    }
}

/// `v0=` and the hex of HMAC-SHA256 over `v0:{timestamp}:{body}`.
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(b"v0:");
    context.update(timestamp.as_bytes());
    context.update(b":");
    context.update(body);
    let tag = context.sign();
    let mut hex = String::with_capacity(3 + 64);
    hex.push_str("v0=");
    for byte in tag.as_ref() {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// Why a request was refused: counted, logged and answered; nothing of it is recorded.
struct Refusal {
    status: StatusCode,
    error: &'static str,
    message: String,
}

fn refusal(status: StatusCode, error: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { status, error, message: message.into() }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        metrics::counter!(crate::metrics::CHAT_ACTIONS, "via" => "slack", "outcome" => self.error).increment(1);
        tracing::warn!(error = self.error, message = %self.message, "a Slack action is refused");
        ApiError::new(self.status, self.error, self.message).into_response()
    }
}

/// The sink whose signing secret signed the request, if one did.
fn signer<'a>(sinks: &'a [SlackSink], headers: &HeaderMap, body: &[u8]) -> Result<&'a SlackSink, Refusal> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let unauthorized = |m: &str| refusal(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let (Some(timestamp), Some(given)) = (header("x-slack-request-timestamp"), header("x-slack-signature")) else {
        return Err(unauthorized("X-Slack-Request-Timestamp and X-Slack-Signature are required"));
    };
    let Ok(seconds) = timestamp.parse::<i64>() else {
        return Err(unauthorized("X-Slack-Request-Timestamp is not a number of seconds"));
    };
    if (chrono::Utc::now().timestamp() - seconds).abs() > MAX_SKEW_SECONDS {
        return Err(unauthorized("the request's timestamp is more than 5 minutes off"));
    }
    // Every sink's secret is tried, each in constant time.
    let mut found = None;
    for sink in sinks {
        let expected = signature(&sink.signing_secret, timestamp, body);
        if bool::from(expected.as_bytes().ct_eq(given.as_bytes())) && found.is_none() {
            found = Some(sink);
        }
    }
    found.ok_or_else(|| unauthorized("the signature does not match a signing secret"))
}

/// What the gateway reads of a `block_actions` payload.
#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    user: Named,
    #[serde(default)]
    channel: Option<Named>,
    #[serde(default)]
    container: Option<Container>,
    #[serde(default)]
    actions: Vec<Clicked>,
}

#[derive(Debug, Deserialize)]
struct Named {
    id: String,
}

#[derive(Debug, Deserialize)]
struct Container {
    #[serde(default)]
    message_ts: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Clicked {
    action_id: String,
    #[serde(default)]
    value: Option<String>,
    action_ts: String,
}

#[derive(Debug, Deserialize)]
struct Form {
    payload: String,
}

/// A signed click, read: who, what, on which build.
struct Click {
    user: String,
    action: ActionKind,
    build_id: Uuid,
    /// Unique per click; the same when Slack sends the click again.
    request_id: String,
}

/// Reads a signed request of `sink` as a click on one of its build messages.
/// `message_of` names the build's message on the sink, while the gateway keeps it.
fn read_click(sink: &SlackSink, body: &[u8], message_of: impl Fn(Uuid) -> Option<String>) -> Result<Click, Refusal> {
    let bad = |m: String| refusal(StatusCode::BAD_REQUEST, "invalid_payload", m);
    let form =
        serde_urlencoded::from_bytes::<Form>(body).map_err(|_| bad("the body is not a form with a payload".into()))?;
    let payload: Payload = serde_json::from_str(&form.payload)
        .map_err(|e| bad(format!("the payload is not a block_actions request: {e}")))?;
    if payload.kind != "block_actions" {
        return Err(bad(format!("`{}` interactions are not taken here", payload.kind)));
    }
    let [clicked] = payload.actions.as_slice() else {
        return Err(bad("one action per request is expected".into()));
    };
    let action =
        ActionKind::parse(&clicked.action_id).ok_or_else(|| bad(format!("no action `{}`", clicked.action_id)))?;
    let build_id = clicked
        .value
        .as_deref()
        .and_then(|v| Uuid::parse_str(v).ok())
        .ok_or_else(|| bad("the button's value is not a build id".into()))?;
    // The click must come from this sink's channel, and from the build's message there when the
    // gateway still knows which message that is.
    let other = |m: &str| refusal(StatusCode::FORBIDDEN, "other_sink", m);
    if payload.channel.as_ref().map(|c| c.id.as_str()) != Some(sink.api.channel.as_str()) {
        return Err(other("the click comes from another channel than the sink's"));
    }
    let clicked_on = payload.container.as_ref().and_then(|c| c.message_ts.as_deref());
    let known = message_of(build_id);
    if known.is_some() && known.as_deref() != clicked_on {
        return Err(other("the click comes from another message than the build's"));
    }
    let user = payload.user.id;
    Ok(Click { request_id: format!("{user}-{}", clicked.action_ts), user, action, build_id })
}

pub async fn actions(State(app): State<Arc<SlackActions>>, headers: HeaderMap, body: Bytes) -> Response {
    let sinks = app.sinks();
    let sink = match signer(&sinks, &headers, &body) {
        Ok(sink) => sink,
        Err(refused) => return refused.into_response(),
    };
    let message_of = |id| app.projections.read(|p| p.outbox.message_ref(&sink.name, id).map(str::to_owned));
    let click = match read_click(sink, &body, message_of) {
        Ok(click) => click,
        Err(refused) => return refused.into_response(),
    };
    match app.projections.build(click.build_id).await {
        Ok(Some(_)) => {}
        Ok(None) => return refusal(StatusCode::NOT_FOUND, "not_found", "no such build").into_response(),
        Err(e) => return ApiError::unavailable(&e).into_response(),
    }
    // Decided and recorded apart from the answer, which Slack needs within 3 s.
    let acting = tokio::spawn(act(Arc::clone(&app), sink.name.clone(), click));
    // Slack is answered when the decision is in the log, or after two seconds, whichever comes
    // first; the decision goes on either way.
    let _ = tokio::time::timeout(ANSWER_WITHIN, acting).await;
    StatusCode::OK.into_response()
}

/// Decides and records a click, then tells its user, alone, if it did nothing.
async fn act(app: Arc<SlackActions>, sink: String, click: Click) {
    let sinks = app.sinks();
    let Some(sink) = sinks.iter().find(|s| s.name == sink) else { return };
    let Click { user, action, build_id, request_id } = click;
    let allowed = sink.allowed_users.contains(&user);
    let chat = ChatAction { request_id: &request_id, sink: &sink.name, user: &user, action, build_id, allowed };
    let decision = match crate::actions::from_chat(app.store.as_ref(), "slack", &chat).await {
        Ok((decision, _)) => decision,
        Err(e) => {
            tracing::error!(%build_id, error = %crate::report::chain(&e), "cannot record a Slack action");
            return;
        }
    };
    let outcome = decision.outcome.as_str();
    metrics::counter!(crate::metrics::CHAT_ACTIONS, "via" => "slack", "outcome" => outcome).increment(1);
    tracing::info!(%build_id, user, action = action.as_str(), outcome, repeated = decision.repeated, "a Slack action");
    if decision.repeated {
        return;
    }
    if let Some(text) = whispered(&app.projections, &decision, action).await {
        let answer = sink.api.whisper(&app.http, &user, &text).await;
        if !answer.succeeded() {
            tracing::warn!(sink = %sink.name, status = answer.status, "cannot answer a Slack action");
        }
    }
}

/// What the clicking user alone is told: why nothing happened. What did happen shows in the
/// build's message.
async fn whispered(projections: &Projections, decision: &ActionDecision, action: ActionKind) -> Option<String> {
    let name = |id: Option<Uuid>| async move {
        match id {
            Some(id) => projections.build(id).await.ok().flatten().map(|b| b.name()).unwrap_or_else(|| id.to_string()),
            None => "the build".to_owned(),
        }
    };
    match decision.outcome {
        ActionOutcome::NotAllowed => Some(format!(
            "You are not allowed to {} builds from this channel: ask an operator to add you to the sink's allowed_users.",
            action.as_str()
        )),
        ActionOutcome::AlreadyQueued => {
            Some(format!("Nothing new started: {} is already queued or running for this issue.", name(decision.rebuild_id).await))
        }
        ActionOutcome::AlreadyFinished => Some("Nothing to cancel: the build has already finished.".to_owned()),
        ActionOutcome::Rebuilt | ActionOutcome::Cancelled => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slack's documented example: secret, timestamp, body and the signature they give.
    #[test]
    fn the_signature_is_slacks_documented_example() {
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            signature("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", body.as_bytes()),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }
}
