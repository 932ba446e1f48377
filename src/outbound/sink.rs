//! A configured outbound target: which milestones it speaks of, and which protocol sends them.

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
    PagerDuty(pagerduty::Events),
}

/// A configured outbound target.
pub struct Sink {
    pub name: String,
    pub target: Target,
    pub max_attempts: u32,
    /// An on-call alert channel: it gets the pages and nothing else.
    pub pages_only: bool,
}

impl Sink {
    /// The milestones this sink speaks of: every one but pages in chat; failures (and, if
    /// configured, successes) on the tracker; pages on the pager and an alert channel.
    pub fn wants(&self, milestone: Milestone) -> bool {
        if self.pages_only {
            return milestone == Milestone::Page;
        }
        match &self.target {
            Target::YouTrack(comments) => comments.wants(milestone),
            Target::PagerDuty(_) => milestone == Milestone::Page,
            _ => milestone != Milestone::Page,
        }
    }

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
