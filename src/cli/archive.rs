//! `meshgate log archive`: the streams of builds that finished before a cut, moved out of the live
//! log into an archive file, beside a running gateway.
//!
//! The log is read twice: once to plan (a fold, [`ArchivePlanner`]: which builds may go and
//! which positions they hold), once to write those events into the archive. The archive is read
//! back whole against its checksum before any row is removed; rows are removed a whole build per
//! transaction. Interrupted after the archive is written, a removal leaves some builds in both the
//! archive and the log: `--include-archives` reads a position once, and a second run archives the
//! rest again. The read models keep their view of archived builds until `projections rebuild`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, NaiveDate, Utc};
use clap::Args;
use meshgate_projections::ArchivePlan;
use secrecy::ExposeSecret;

use crate::config::{Config, StoreBackend};
use crate::store::archive;

/// The latest cut allowed: a day ago. Notifications of a build are decided (delivered, or given up
/// after their retries) within hours of its end; a day leaves them time.
const NEWEST_CUT: chrono::Duration = chrono::Duration::days(1);

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("cut").required(true).args(["before", "older_than"])))]
pub struct ArchiveArgs {
    /// Archive builds finished and last heard of before this day (YYYY-MM-DD, UTC) or moment
    /// (RFC 3339).
    #[arg(long)]
    before: Option<String>,
    /// Archive builds finished and last heard of longer ago than this many days (`90d`).
    #[arg(long)]
    older_than: Option<String>,
    /// The folder the archive file goes to (made if missing).
    #[arg(long)]
    to: PathBuf,
    /// Say what would be archived, and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// The cut an operator asked for, at `now`.
fn cut(args: &ArchiveArgs, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    let cut = match (&args.before, &args.older_than) {
        (Some(before), _) => match NaiveDate::parse_from_str(before, "%Y-%m-%d") {
            Ok(day) => day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc(),
            Err(_) => DateTime::parse_from_rfc3339(before)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| anyhow::anyhow!("--before {before}: expected a day (2026-01-01) or an RFC 3339 moment"))?,
        },
        (None, Some(age)) => {
            let days = age
                .strip_suffix('d')
                .and_then(|d| d.parse::<i64>().ok())
                .filter(|d| (1..=36_500).contains(d))
                .ok_or_else(|| anyhow::anyhow!("--older-than {age}: expected a number of days, such as 90d"))?;
            now - chrono::Duration::days(days)
        }
        (None, None) => bail!("say --before or --older-than"),
    };
    if cut > now {
        bail!("--before {} is in the future; nothing can have finished after now", cut.format("%Y-%m-%dT%H:%M:%SZ"));
    }
    if cut > now - NEWEST_CUT {
        bail!(
            "the cut {} is less than a day ago: a recent build's notifications may still be on their way",
            cut.format("%Y-%m-%dT%H:%M:%SZ")
        );
    }
    Ok(cut)
}

fn say_kept(plan: &ArchivePlan) -> String {
    format!(
        "kept: {} queued or running, {} heard of since the cut, {} with a notification not yet decided, {} the \
         current build of its issue and trigger{}",
        plan.unfinished,
        plan.recent,
        plan.undecided,
        plan.current,
        if plan.last > 0 { ", 1 holding the log's last event" } else { "" }
    )
}

pub async fn run(config: &Config, args: &ArchiveArgs) -> anyhow::Result<()> {
    let cut = cut(args, Utc::now())?;
    if config.store.backend == StoreBackend::EventStoreDb {
        bail!(
            "an EventStoreDB log is trimmed by the server itself: set $maxAge or $tb on the build streams and \
             scavenge (docs/operations.md, \"Retention\")"
        );
    }
    let log = crate::store::open::reader(config).await?;
    let head = log.last_position().await.context("cannot read the event log")?;
    let plan = archive::plan(log.as_ref(), head, cut).await?;
    let cut_text = cut.format("%Y-%m-%dT%H:%M:%SZ");
    if plan.groups.is_empty() {
        println!("nothing to archive before {cut_text} ({})", say_kept(&plan));
        return Ok(());
    }
    if args.dry_run {
        println!(
            "would archive {} builds and {} deliveries ({} events) finished before {cut_text}; {}",
            plan.builds.len(),
            plan.deliveries,
            plan.positions.len(),
            say_kept(&plan)
        );
        return Ok(());
    }
    let path = archive::write(log.as_ref(), &plan, cut, &args.to).await?;
    // Read back whole (checksum, every line, the count the plan gave its header) before anything
    // leaves the log.
    let header = archive::verify(&path)?;
    let builds = plan.groups.clone();
    let removed = match config.store.backend {
        StoreBackend::Sqlite => {
            let busy = Duration::from_millis(config.store.busy_timeout_ms);
            let log_path = config.log_path();
            tokio::task::spawn_blocking(move || crate::store::sqlite::archive::remove(&log_path, &builds, busy))
                .await?
                .context("cannot remove archived events from the log (run the archive again: it takes the rest)")?
        }
        StoreBackend::Postgres => {
            let url = crate::store::open::url(config)?;
            let target = crate::store::postgres::Target::parse(url.expose_secret(), config.store.ca_file.as_deref())?;
            crate::store::postgres::archive::remove(&target, &builds)
                .await
                .context("cannot remove archived events from the log (run the archive again: it takes the rest)")?
        }
        StoreBackend::EventStoreDb => unreachable!("refused above"),
    };
    println!(
        "archived {} builds and {} deliveries ({removed} events, positions {}–{}) finished before {cut_text} into {} \
         ({} bytes); {}",
        plan.builds.len(),
        plan.deliveries,
        header.first_position,
        header.last_position,
        path.display(),
        archive::size(&path),
        say_kept(&plan)
    );
    Ok(())
}
