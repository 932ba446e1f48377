//! `meshgate logs BUILD_ID`: a build's log, from the running gateway (with `--follow`, as it
//! grows while the build runs, until it ends), or from the data dir when no gateway answers.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use uuid::Uuid;

use crate::config::Config;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The build's id.
    build_id: Uuid,
    /// The attempt (the newest if absent).
    #[arg(long)]
    attempt: Option<u32>,
    /// Keep printing what arrives while the attempt runs.
    #[arg(long, short)]
    follow: bool,
}

pub async fn run(config: &Config, args: &LogsArgs) -> anyhow::Result<()> {
    let mut path = format!("/api/v1/builds/{}/log?follow={}", args.build_id, args.follow);
    if let Some(attempt) = args.attempt {
        path.push_str(&format!("&attempt={attempt}"));
    }
    let mut stdout = std::io::stdout().lock();
    match super::gateway::get(config, &path).await? {
        Some(mut response) => {
            let status = response.status();
            if !status.is_success() {
                let said: serde_json::Value = response.json().await.unwrap_or_default();
                anyhow::bail!("the gateway answered {status}: {}", said["message"].as_str().unwrap_or_default());
            }
            while let Some(chunk) = response.chunk().await.context("the log broke off")? {
                stdout.write_all(&chunk)?;
                stdout.flush()?;
            }
        }
        None => {
            // No gateway: the files it keeps (nothing grows without one).
            let logs = crate::files::BuildLogs::new(config.files_dir().join("logs"), config.nodes.max_log_bytes as u64);
            let attempt = match args.attempt {
                Some(attempt) => attempt,
                None => logs.newest_attempt(args.build_id).await.context("no log of that build here")?,
            };
            let path = logs.path(args.build_id, attempt);
            let mut file = std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
            std::io::copy(&mut file, &mut stdout)?;
        }
    }
    Ok(())
}
