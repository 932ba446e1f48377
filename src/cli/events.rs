//! `meshgate events`: audit queries over the log.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use meshgate_domain::Event;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::config::Config;
use crate::store::sqlite::{query, EventFilter, SqliteStore};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Events about this issue (such as GW-42).
    #[arg(long)]
    issue: Option<String>,
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

pub fn run(config: &Config, args: &EventsArgs) -> anyhow::Result<()> {
    if config.store.backend == crate::config::StoreBackend::Postgres {
        anyhow::bail!(
            "`meshgate events` reads the SQLite log; with store.backend = \"postgres\" the log is the \
             table meshgate_events (docs/operations.md, \"Running two gateways\")"
        );
    }
    let path = config.log_path();
    let conn = SqliteStore::open_read_only(&path)
        .with_context(|| format!("cannot open the event log at {}", path.display()))?;
    let filter = EventFilter {
        issue: args.issue.clone(),
        stream: args.stream.clone(),
        correlation_id: args.correlation,
        event_type: args.event_type.clone(),
    };
    let events = query(&conn, &filter).context("cannot query the event log")?;
    let mut out = std::io::stdout().lock();
    for e in events {
        let mut data: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
        // A received body reads as the text it arrived as, however the log stores it.
        if let Ok(Event::WebhookReceived(received)) = Event::decode(&e.event_type, e.schema_version, &e.data) {
            data["body"] = Value::String(received.body);
        }
        if args.json {
            let line = json!({
                "position": e.position, "stream": e.stream, "version": e.version, "id": e.id,
                "type": e.event_type, "schema_version": e.schema_version, "data": data,
                "correlation_id": e.correlation_id, "causation_id": e.causation_id, "recorded_at": e.recorded_at,
            });
            writeln!(out, "{line}")?;
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
}
