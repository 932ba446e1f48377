//! `meshgate events`: audit queries over the log.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use uuid::Uuid;

use crate::config::Config;
use crate::store::{AuditEvent, EventFilter, StoredEvent};

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
    /// Read the archives in this folder (`meshgate log archive --to`) beside the live log.
    #[arg(long, value_name = "DIR")]
    include_archives: Option<std::path::PathBuf>,
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
    let readmodel = config.readmodel_path();
    let mut print = |page: &[StoredEvent]| -> anyhow::Result<()> {
        // Events about a build carry its name (`ios-build #412`) once this gateway's read model
        // has saved it.
        let ids: Vec<uuid::Uuid> = page.iter().filter_map(StoredEvent::build_id).collect();
        let names = crate::readmodel::saved_names(&readmodel, &ids).unwrap_or_default();
        for e in page {
            let name = e.build_id().and_then(|id| names.get(&id).cloned());
            if args.json {
                let audit = AuditEvent { build: name, ..e.audit() };
                writeln!(out, "{}", serde_json::to_value(&audit)?)?;
            } else {
                writeln!(
                    out,
                    "{:>8}  {}  {:<20}  {}  {}{}",
                    e.position,
                    e.recorded_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    e.event_type,
                    e.correlation_id,
                    e.stream,
                    name.map(|n| format!("  {n}")).unwrap_or_default()
                )?;
            }
        }
        Ok(())
    };
    // Read as it is, beside a running gateway.
    let log = crate::store::open::reader_with_archives(config, args.include_archives.as_deref()).await?;
    let mut after = 0;
    loop {
        let page = log.query(&filter, after, 10_000).await.context("cannot query the event log")?;
        let Some(last) = page.last().map(|e| e.position) else { break };
        print(&page)?;
        after = last;
    }
    Ok(())
}
