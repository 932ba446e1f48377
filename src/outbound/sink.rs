//! A configured outbound target: which milestones it speaks of, and which protocol sends them.

use meshgate_domain::notify::Milestone;
use meshgate_projections::{OutboxConfig, SinkSpec};

use crate::config::Config;

use super::exchange::Answer;
use super::{console, discord, generic, matrix, openclaw, pagerduty, slack, teams, youtrack, Message};

/// Where a sink sends, by protocol.
pub enum Target {
    Console(console::Console),
    Generic(generic::Hook),
    SlackWebhook(slack::Webhook),
    SlackApi(slack::Api),
    Teams(teams::Workflow),
    Discord(discord::Webhook),
    Matrix(matrix::Room),
    OpenClaw(openclaw::Hook),
    YouTrack(youtrack::Comments),
    PagerDuty(pagerduty::Events),
}

/// A configured outbound target.
pub struct Sink {
    pub name: String,
    pub target: Target,
    pub max_attempts: u32,
    /// The milestones it sends ([`specs`]).
    pub wants: Vec<Milestone>,
}

impl Sink {
    pub fn wants(&self, milestone: Milestone) -> bool {
        self.wants.iter().any(|w| w.same_kind(milestone))
    }
}

/// Every sink the configuration names and the milestones it speaks of: every one but pages in
/// chat; failures (and, if configured, successes) on the tracker; pages on the pager and on an
/// alert channel (`[pager] alert_chat`, which gets nothing else). The outbox keeps milestones for
/// these only.
pub fn specs(config: &Config) -> Vec<SinkSpec> {
    let chat: Vec<Milestone> = Milestone::ALL.into_iter().filter(|m| *m != Milestone::Page).collect();
    let mut specs: Vec<SinkSpec> = config
        .chat
        .iter()
        .map(|c| {
            let alert = config.pager.alert_chat.as_deref() == Some(c.name.as_str());
            SinkSpec { name: c.name.clone(), wants: if alert { vec![Milestone::Page] } else { chat.clone() } }
        })
        .collect();
    if config.youtrack.base_url.is_some() && config.youtrack.token_file.is_some() {
        let mut wants = vec![Milestone::Failed];
        if config.youtrack.comment_on_success {
            wants.push(Milestone::Succeeded);
        }
        specs.push(SinkSpec { name: "youtrack".into(), wants });
    }
    if config.pager.routing_key_file.is_some() {
        specs.push(SinkSpec { name: "pager".into(), wants: vec![Milestone::Page] });
    }
    specs
}

/// What the outbox follows, from the configuration.
pub fn outbox_config(config: &Config) -> OutboxConfig {
    OutboxConfig {
        sinks: specs(config),
        window: chrono::Duration::seconds(config.outbound.dedupe_window_seconds.min(i64::MAX as u64 / 1000) as i64),
    }
}

impl Sink {
    /// Sends one try.
    pub async fn send(&self, http: &reqwest::Client, message: &Message<'_>) -> Answer {
        match &self.target {
            Target::Console(t) => t.send(message).await,
            Target::Generic(t) => t.send(http, message).await,
            Target::SlackWebhook(t) => t.send(http, message).await,
            Target::SlackApi(t) => t.send(http, message).await,
            Target::Teams(t) => t.send(http, message).await,
            Target::Discord(t) => t.send(http, message).await,
            Target::Matrix(t) => t.send(http, message).await,
            Target::OpenClaw(t) => t.send(http, message).await,
            Target::YouTrack(t) => t.send(http, message).await,
            Target::PagerDuty(t) => t.send(http, message).await,
        }
    }
}
