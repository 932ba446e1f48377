//! `meshgate queue pause --reason R [--lane L]…` and `meshgate queue resume [--lane L]…`: hold the
//! queue (every lane, or the ones named) and let it go, through the running gateway.

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Nodes claim nothing from the lanes (every lane if none is named) until resumed; builds are
    /// still queued, running ones finish.
    Pause {
        /// Why (recorded, shown on the dashboard and in `meshgate status`).
        #[arg(long)]
        reason: String,
        /// A lane to hold (repeatable); none: every lane.
        #[arg(long = "lane")]
        lanes: Vec<String>,
    },
    /// Nodes claim from the lanes again (everything paused if none is named).
    Resume {
        #[arg(long = "lane")]
        lanes: Vec<String>,
    },
}

/// What is paused, in words.
pub fn describe(paused: &Value) -> String {
    let mut out = String::new();
    if let Some(all) = paused["all"].as_object() {
        out.push_str(&format!(
            "every lane is paused by {}: {}\n",
            all["by"].as_str().unwrap_or("?"),
            all["reason"].as_str().unwrap_or("")
        ));
    }
    if let Some(lanes) = paused["lanes"].as_object() {
        for (lane, pause) in lanes {
            out.push_str(&format!(
                "lane {lane} is paused by {}: {}\n",
                pause["by"].as_str().unwrap_or("?"),
                pause["reason"].as_str().unwrap_or("")
            ));
        }
    }
    if out.is_empty() {
        out.push_str("nothing is paused\n");
    }
    out
}

pub async fn run(config: &Config, command: &QueueCommand) -> anyhow::Result<()> {
    let (path, body) = match command {
        QueueCommand::Pause { reason, lanes } => ("/api/v1/queue/pause", json!({"reason": reason, "lanes": lanes})),
        QueueCommand::Resume { lanes } => ("/api/v1/queue/resume", json!({"lanes": lanes})),
    };
    let paused = super::gateway::ask(config, path, &body)
        .await?
        .context("no gateway answers where the configuration says it listens: pauses are made through it")?;
    print!("{}", describe(&paused));
    Ok(())
}
