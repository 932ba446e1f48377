//! `meshgate reconcile`: one sweep of YouTrack's activity stream now. A running gateway holds the
//! log, so it is asked to sweep (`POST /api/v1/reconcile`); without one, the command opens the log
//! and sweeps itself. Prints what it found and started (or, with `--dry-run`, would start).

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::{json, Value};

use crate::config::Config;

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Sweep from this moment (RFC 3339) instead of where the last sweep ended.
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Find and print, start nothing, record nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(config: &Config, args: &ReconcileArgs) -> anyhow::Result<()> {
    if config.youtrack.base_url.is_none() || config.youtrack.token_file.is_none() {
        anyhow::bail!("reconciliation needs [youtrack] base_url and token_file in the configuration");
    }
    let body = json!({"since": args.since, "dry_run": args.dry_run});
    let report = match super::gateway::ask(config, "/api/v1/reconcile", &body).await? {
        Some(report) => report,
        None => sweep_here(config, args).await?,
    };
    if args.json {
        println!("{report}");
    } else {
        print!("{}", describe(&report));
    }
    match report["errors"].as_array() {
        Some(errors) if !errors.is_empty() => anyhow::bail!("the sweep met {} error(s)", errors.len()),
        _ => Ok(()),
    }
}

/// No gateway runs: open the log and sweep from here.
async fn sweep_here(config: &Config, args: &ReconcileArgs) -> anyhow::Result<Value> {
    let opened = crate::store::open::log(config).await?;
    let store = opened.store;
    let reconciler = crate::app::reconciler(config, &store)?.context("reconciliation is not configured")?;
    let report = reconciler.sweep("cli", args.since, args.dry_run).await?;
    Ok(serde_json::to_value(report)?)
}

/// The report for people: the window, then a line per transition.
fn describe(report: &Value) -> String {
    let count = |key: &str| report[key].as_array().map_or(0, Vec::len);
    let mut text = format!(
        "sweep {}{} from {} to {}: {} activities read, {} transitions matched\n",
        report["sweep_id"].as_str().unwrap_or_default(),
        if report["dry_run"] == true { " (dry run: nothing started or recorded)" } else { "" },
        report["window_start"].as_str().unwrap_or_default(),
        report["window_end"].as_str().unwrap_or_default(),
        report["activities_read"],
        report["transitions_matched"],
    );
    for t in report["transitions"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "  {:<12} {:<16} {} by {:<16} {}{}\n",
            t["issue_id"].as_str().unwrap_or_default(),
            t["trigger"].as_str().unwrap_or_default(),
            t["at"].as_str().unwrap_or_default(),
            t["author"].as_str().unwrap_or("?"),
            t["outcome"].as_str().unwrap_or_default(),
            t["build_id"].as_str().map(|b| format!(" {b}")).unwrap_or_default(),
        ));
    }
    text.push_str(&format!(
        "started {}, folded {}, already built {}, left the state since {}\n",
        count("builds_started"),
        count("builds_folded"),
        report["already_built"],
        report["left_since"],
    ));
    for error in report["errors"].as_array().into_iter().flatten() {
        text.push_str(&format!("error: {}\n", error.as_str().unwrap_or_default()));
    }
    text
}
