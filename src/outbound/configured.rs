//! The sinks the configuration names: which milestones each speaks of ([`specs`], what the outbox
//! follows), each one's target with its secrets read ([`sinks`]), the delivery rules every sink
//! shares ([`rules`]) and the one HTTP client they send with ([`client`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshgate_domain::notify::Milestone;
use meshgate_domain::retry::RetryPolicy;
use meshgate_domain::writeback;
use meshgate_projections::{OutboxConfig, SinkSpec};

use super::{console, discord, generic, matrix, openclaw, pagerduty, slack, teams, youtrack};
use super::{Rules, Sink, Target};
use crate::config::{ChatKind, Config};
use crate::secrets::{SecretError, Token};
use crate::tls::TlsError;

/// The sink of YouTrack commands (a trigger's `on_success_command`, `on_failure_command`,
/// `fixed_in_build_field`), apart from the comments' so each is tried, deduped and abandoned on
/// its own.
pub const COMMANDS: &str = "youtrack-commands";

/// Why the configured sinks cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("chat sink `{0}` has no url")]
    NoUrl(String),
    #[error("chat sink `{0}` has no token_file")]
    NoToken(String),
    #[error("cannot read when {path} was written")]
    Written { path: PathBuf, source: std::io::Error },
}

/// Every sink the configuration names and the milestones it speaks of: every one but pages in
/// chat; failures (and, if configured, successes) on the tracker; pages on the pager and on an
/// alert channel (`[pager] alert_chat`, which gets nothing else). The outbox keeps milestones for
/// these only.
pub fn specs(config: &Config) -> Vec<SinkSpec> {
    // Pages and the lanes' watch go to on-call: the pager and the alert channel.
    let on_call = [Milestone::Page, Milestone::Unservable, Milestone::Servable];
    let chat: Vec<Milestone> = Milestone::ALL.into_iter().filter(|m| !on_call.contains(m)).collect();
    let mut specs: Vec<SinkSpec> = config
        .chat
        .iter()
        .map(|c| {
            let alert = config.pager.alert_chat.as_deref() == Some(c.name.as_str());
            SinkSpec { name: c.name.clone(), wants: if alert { on_call.to_vec() } else { chat.clone() } }
        })
        .collect();
    if config.youtrack.base_url.is_some() && config.youtrack.token_file.is_some() {
        let mut wants = vec![Milestone::Failed];
        if config.youtrack.comment_on_success {
            wants.push(Milestone::Succeeded);
        }
        specs.push(SinkSpec { name: "youtrack".into(), wants });
        if config.triggers.iter().any(|t| !writeback::milestones(t).is_empty()) {
            specs.push(SinkSpec { name: COMMANDS.into(), wants: vec![Milestone::Succeeded, Milestone::Failed] });
        }
    }
    if config.pager.routing_key_file.is_some() {
        specs.push(SinkSpec { name: "pager".into(), wants: on_call.to_vec() });
    }
    specs
}

/// What the outbox follows, from the configuration.
pub fn outbox_config(config: &Config) -> OutboxConfig {
    // The commands' sink speaks only of the builds of triggers with commands, of the milestones
    // each has one for.
    let commands = config.triggers.iter().map(|t| (t.name.clone(), writeback::milestones(t))).collect();
    OutboxConfig {
        sinks: specs(config),
        by_trigger: [(COMMANDS.to_owned(), commands)].into_iter().collect(),
        window: chrono::Duration::seconds(config.outbound.dedupe_window_seconds.min(i64::MAX as u64 / 1000) as i64),
    }
}

/// The configured outbound sinks, with their secrets read.
pub fn sinks(config: &Config) -> Result<Vec<Sink>, SinkError> {
    let secret = |file: &std::path::Path| -> Result<String, SinkError> { Ok(Token::read(file)?.expose().to_owned()) };
    let specs = specs(config);
    let wants = |name: &str| specs.iter().find(|s| s.name == name).map(|s| s.wants.clone()).unwrap_or_default();
    let mut sinks = Vec::new();
    let consoles = config.chat.iter().filter(|c| c.kind == ChatKind::Console).count();
    for chat in &config.chat {
        let url = match (&chat.url, &chat.url_file) {
            (Some(url), _) => url.clone(),
            (None, Some(file)) => secret(file)?,
            (None, None) if chat.kind == ChatKind::Console => String::new(),
            (None, None) => return Err(SinkError::NoUrl(chat.name.clone())),
        };
        let token = || match &chat.token_file {
            Some(file) => secret(file),
            None => Err(SinkError::NoToken(chat.name.clone())),
        };
        let target = match chat.kind {
            ChatKind::Console => {
                Target::Console(console::Console { prefix: (consoles > 1).then(|| chat.name.clone()) })
            }
            ChatKind::Generic => Target::Generic(generic::Hook { url }),
            ChatKind::SlackWebhook => Target::SlackWebhook(slack::Webhook { url }),
            ChatKind::TeamsWorkflow => Target::Teams(teams::Workflow { url }),
            ChatKind::Discord => Target::Discord(discord::Webhook { url }),
            ChatKind::SlackApi => Target::SlackApi(slack::Api {
                api: url,
                channel: chat.channel.clone().unwrap_or_default(),
                token: token()?,
                buttons: !chat.allowed_users.is_empty(),
            }),
            ChatKind::Matrix => Target::Matrix(matrix::Room {
                homeserver: url,
                edit_in_place: chat.edit_in_place,
                reactions: !chat.allowed_users.is_empty(),
                room_id: chat.room_id.clone().unwrap_or_default(),
                token: token()?,
            }),
            ChatKind::Openclaw => Target::OpenClaw(openclaw::Hook {
                url,
                token: token()?,
                channel: chat.channel.clone().unwrap_or_default(),
                to: chat.to.clone().unwrap_or_default(),
                agent_id: chat.agent_id.clone(),
            }),
        };
        sinks.push(Sink::new(chat.name.clone(), target, chat.max_attempts, wants(&chat.name)));
    }
    if let (Some(base_url), Some(token_file)) = (&config.youtrack.base_url, &config.youtrack.token_file) {
        let previous = match &config.youtrack.previous_token_file {
            Some(file) => {
                let written = std::fs::metadata(token_file)
                    .and_then(|m| m.modified())
                    .map_err(|source| SinkError::Written { path: token_file.clone(), source })?;
                let grace = Duration::from_secs(config.youtrack.previous_token_grace_minutes * 60);
                Some((secret(file)?, written + grace))
            }
            None => None,
        };
        let api = || -> Result<youtrack::Api, SinkError> {
            Ok(youtrack::Api { base_url: base_url.clone(), token: secret(token_file)?, previous: previous.clone() })
        };
        let comments = youtrack::Comments { api: api()?, comment_on_success: config.youtrack.comment_on_success };
        sinks.push(Sink::new(
            "youtrack".into(),
            Target::YouTrack(comments),
            config.youtrack.max_attempts,
            wants("youtrack"),
        ));
        let triggers: std::collections::HashMap<String, meshgate_domain::Trigger> = config
            .triggers
            .iter()
            .filter(|t| !writeback::milestones(t).is_empty())
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        if !triggers.is_empty() {
            let commands = Target::YouTrackCommands(youtrack::Commands { api: api()?, triggers });
            sinks.push(Sink::new(COMMANDS.into(), commands, config.youtrack.max_attempts, wants(COMMANDS)));
        }
    }
    if let Some(file) = &config.pager.routing_key_file {
        let events = pagerduty::Events {
            url: config.pager.url.clone().unwrap_or_else(|| "https://events.pagerduty.com/v2/enqueue".into()),
            routing_key: secret(file)?,
        };
        sinks.push(Sink::new("pager".into(), Target::PagerDuty(events), config.pager.max_attempts, wants("pager")));
    }
    Ok(sinks)
}

/// The delivery rules every sink shares.
pub fn rules(config: &Config) -> Rules {
    Rules {
        // The alert channel is the pager's, not a chat path for the paging rule.
        chat_sinks: Arc::new(
            config
                .chat
                .iter()
                .filter(|c| config.pager.alert_chat.as_deref() != Some(c.name.as_str()))
                .map(|c| c.name.clone())
                .collect(),
        ),
        // The comments' sink and the commands' (when a trigger has commands).
        trackers: specs(config)
            .into_iter()
            .map(|s| s.name)
            .filter(|name| name == "youtrack" || name == COMMANDS)
            .collect(),
        pager: config.pager.routing_key_file.is_some() || config.pager.alert_chat.is_some(),
        window: chrono::Duration::seconds(config.outbound.dedupe_window_seconds as i64),
        retry: RetryPolicy {
            base: Duration::from_millis(config.outbound.retry_base_ms),
            cap: Duration::from_secs(config.outbound.retry_cap_seconds),
            max_wait: Duration::from_secs(config.outbound.max_wait_seconds),
            max_attempts: 1,
        },
    }
}

/// The sinks that carry pages (PagerDuty, an alert channel).
pub fn pagers(config: &Config) -> Vec<String> {
    let pager = config.pager.routing_key_file.as_ref().map(|_| "pager".to_owned());
    pager.into_iter().chain(config.pager.alert_chat.clone()).collect()
}

/// One client for every sink (chat, tracker, pager) and YouTrack's REST API: HTTPS trusting the
/// platform's store, the webpki roots and `[outbound] ca_file`, `[outbound] timeout_seconds`, no
/// redirects (a sink's URL is the one configured).
pub fn client(config: &Config) -> Result<reqwest::Client, TlsError> {
    crate::tls::client(
        reqwest::Client::builder()
            .timeout(Duration::from_secs(config.outbound.timeout_seconds))
            .redirect(reqwest::redirect::Policy::none()),
        config.outbound.ca_file.as_deref(),
    )
}
