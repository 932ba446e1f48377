//! `meshgate events`: audit queries over the log.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use uuid::Uuid;

use crate::config::Config;
use crate::store::{EventFilter, StoredEvent};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Events about this issue (such as GW-42).
    #[arg(long)]
    issue: Option<String>,
    /// Events about one build: its stream, its notifications and pages.
    #[arg(long)]
    build: Option<Uuid>,
    /// Events of one stream (such as build-<id>).
    #[arg(long)]
    stream: Option<String>,
    /// Events caused by one delivery.
    #[arg(long)]
    correlation: Option<Uuid>,
    /// Events of one type (such as BuildRequested).
    #[arg(long = "type")]
    event_type: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub async fn run(config: &Config, args: &EventsArgs) -> anyhow::Result<()> {
    let filter = EventFilter {
        issue: args.issue.clone(),
        build: args.build,
        stream: args.stream.clone(),
        correlation_id: args.correlation,
        event_type: args.event_type.clone(),
    };
    let mut out = std::io::stdout().lock();
    let mut print = |page: &[StoredEvent]| -> std::io::Result<()> {
        for e in page {
            if args.json {
                writeln!(out, "{}", e.audit_json())?;
            } else {
                writeln!(
                    out,
                    "{:>8}  {}  {:<20}  {}  {}",
                    e.position,
                    e.recorded_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    e.event_type,
                    e.correlation_id,
                    e.stream
                )?;
            }
        }
        Ok(())
    };
    // Read as it is, beside a running gateway.
    let log = crate::store::open::reader(config).await?;
    let mut after = 0;
    loop {
        let page = log.query(&filter, after, 10_000).await.context("cannot query the event log")?;
        let Some(last) = page.last().map(|e| e.position) else { break };
        print(&page)?;
        after = last;
    }
    Ok(())
}
