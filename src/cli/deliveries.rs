//! `meshgate deliveries replay`: deliveries ignored in a window decided again under today's
//! triggers (say, after a trigger was fixed). A running gateway is asked (`POST
//! /api/v1/deliveries/replay`); without one, the command opens the log itself.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// Decide again the deliveries ignored between --since and --until under today's triggers.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Deliveries recorded from this moment (RFC 3339).
    #[arg(long)]
    since: DateTime<Utc>,
    /// ... until this moment (default: now).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// Print what would start; start and record nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(config: &Config, command: &DeliveriesCommand) -> anyhow::Result<()> {
    let DeliveriesCommand::Replay(args) = command;
    let until = args.until.unwrap_or_else(Utc::now);
    let body = json!({"since": args.since, "until": until, "dry_run": args.dry_run});
    let report = match super::gateway::ask(config, "/api/v1/deliveries/replay", &body).await? {
        Some(report) => report,
        None => replay_here(config, args.since, until, args.dry_run).await?,
    };
    if args.json {
        println!("{report}");
        return Ok(());
    }
    let deliveries = report["deliveries"].as_array().cloned().unwrap_or_default();
    println!(
        "{} ignored deliveries from {} to {}{}",
        deliveries.len(),
        report["since"].as_str().unwrap_or_default(),
        report["until"].as_str().unwrap_or_default(),
        if args.dry_run { " (dry run: nothing started or recorded)" } else { "" }
    );
    for d in &deliveries {
        let builds: Vec<&str> = d["build_ids"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        println!(
            "  {:<12} {} {:<16} {}",
            d["issue_id"].as_str().unwrap_or_default(),
            d["correlation_id"].as_str().unwrap_or_default(),
            d["outcome"].as_str().unwrap_or_default(),
            builds.join(" ")
        );
    }
    Ok(())
}

async fn replay_here(
    config: &Config,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    dry_run: bool,
) -> anyhow::Result<Value> {
    let opened = crate::store::open::log(config).await?;
    let store = opened.store;
    let ingest = crate::ingest::IngestService::new(
        Arc::clone(&store),
        config.triggers.clone(),
        config.youtrack.bot_login.clone(),
        config.same_transition(),
    );
    let report = crate::replay::replay_deliveries(store.as_ref(), &ingest.policy(), since, until, dry_run).await?;
    Ok(serde_json::to_value(report)?)
}
