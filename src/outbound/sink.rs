//! A configured outbound target: which milestones it speaks of, and which protocol sends them.

use std::sync::{Arc, RwLock};

use meshgate_domain::notify::Milestone;

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
    YouTrackCommands(youtrack::Commands),
    PagerDuty(pagerduty::Events),
}

/// A configured outbound target.
pub struct Sink {
    pub name: String,
    /// Replaced whole when its secrets are reloaded ([`Sink::replace`]); a try in flight finishes
    /// with the target it started with.
    target: RwLock<Arc<Target>>,
    pub max_attempts: u32,
    /// The milestones it sends ([`super::specs`]).
    pub wants: Vec<Milestone>,
}

impl Sink {
    pub fn new(name: String, target: Target, max_attempts: u32, wants: Vec<Milestone>) -> Sink {
        Sink { name, target: RwLock::new(Arc::new(target)), max_attempts, wants }
    }

    pub fn wants(&self, milestone: Milestone) -> bool {
        self.wants.iter().any(|w| w.same_kind(milestone))
    }

    /// The target in force.
    pub fn target(&self) -> Arc<Target> {
        Arc::clone(&self.target.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts `other`'s target (the same sink with its secrets read again) in force.
    pub fn replace(&self, other: Sink) {
        let target = other.target.into_inner().unwrap_or_else(|p| p.into_inner());
        *self.target.write().unwrap_or_else(|p| p.into_inner()) = target;
    }
}

impl Sink {
    /// Sends one try.
    pub async fn send(&self, http: &reqwest::Client, message: &Message<'_>) -> Answer {
        match &*self.target() {
            Target::Console(t) => t.send(message).await,
            Target::Generic(t) => t.send(http, message).await,
            Target::SlackWebhook(t) => t.send(http, message).await,
            Target::SlackApi(t) => t.send(http, message).await,
            Target::Teams(t) => t.send(http, message).await,
            Target::Discord(t) => t.send(http, message).await,
            Target::Matrix(t) => t.send(http, message).await,
            Target::OpenClaw(t) => t.send(http, message).await,
            Target::YouTrack(t) => t.send(http, message).await,
            Target::YouTrackCommands(t) => t.send(http, message).await,
            Target::PagerDuty(t) => t.send(http, message).await,
        }
    }
}
