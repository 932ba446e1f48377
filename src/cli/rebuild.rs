//! `meshgate projections rebuild [--verify]`: recompute the read model from position 0.
//!
//! The fold ([`crate::rebuild`]) streams into a fresh read model file. Without `--verify` the new
//! file replaces the read model (the gateway must be stopped); with it, the log is folded up to the
//! saved read model's position into a scratch file and the two are compared row by row.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::readmodel::{self, ReadModel};

/// A scratch read model beside the real one, emptied first.
fn scratch(real: &Path, suffix: &str) -> anyhow::Result<(PathBuf, ReadModel)> {
    let path = real.with_extension(format!("sqlite.{suffix}"));
    remove(&path);
    let model = ReadModel::open(&path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok((path, model))
}

fn remove(path: &Path) {
    for file in [
        path.to_owned(),
        PathBuf::from(format!("{}-wal", path.display())),
        PathBuf::from(format!("{}-shm", path.display())),
    ] {
        let _ = std::fs::remove_file(file);
    }
}

pub async fn run(config: &Config, verify: bool, archives: Option<&Path>) -> anyhow::Result<()> {
    let real = config.readmodel_path();
    // Verifying runs beside a live gateway; replacing the read model needs it stopped.
    let _lock = if verify { None } else { Some(crate::store::open::hold(config)?) };
    let store = crate::store::open::reader_with_archives(config, archives).await?;
    let head = store.last_position().await.context("cannot read the event log")?;
    let outbox = crate::outbound::outbox_config(config);
    // Verified against a copy taken at one instant: the gateway may be saving as this runs.
    let copy = real.with_extension("sqlite.saved");
    let (until, saved) = if verify {
        remove(&copy);
        ReadModel::copy(&real, &copy).with_context(|| format!("cannot read {}", real.display()))?;
        let saved = ReadModel::open(&copy).with_context(|| format!("cannot open a copy of {}", real.display()))?;
        (saved.position()?.unwrap_or(0), Some(saved))
    } else {
        (head, None)
    };
    let progress = ProgressBar::new(until);
    progress.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} events ({per_sec}, {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_message(if verify { "verifying" } else { "rebuilding" });
    let started = std::time::Instant::now();
    let (scratch_path, fresh) = scratch(&real, if verify { "verify" } else { "rebuild" })?;
    crate::rebuild::fold(store.as_ref(), until, outbox, &fresh, |upto| progress.set_position(upto))
        .await
        .context("cannot rebuild the read model")?;
    progress.finish_and_clear();
    let elapsed = started.elapsed();
    let rate = until as f64 / elapsed.as_secs_f64().max(1e-9);
    if let Some(saved) = saved {
        let differences = readmodel::differences(&saved, &fresh)?;
        drop((fresh, saved));
        remove(&scratch_path);
        remove(&copy);
        if differences.is_empty() {
            println!("the read model matches the log up to position {until} ({until} events in {elapsed:.2?}, {rate:.0} events/s)");
            return Ok(());
        }
        let hint = if archives.is_none() {
            " (if builds were archived with `meshgate log archive`, pass --include-archives DIR: the saved read \
             model still holds them)"
        } else {
            ""
        };
        bail!("the read model differs from a rebuild up to position {until}{hint}: {}", differences.join("; "));
    }
    drop(fresh);
    remove(&real);
    std::fs::rename(&scratch_path, &real).with_context(|| format!("cannot replace {}", real.display()))?;
    let peak = peak_memory().map(|b| format!(", peak memory {:.0} MiB", b as f64 / 1048576.0)).unwrap_or_default();
    println!("rebuilt the read model from {head} events in {elapsed:.2?} ({rate:.0} events/s{peak})");
    Ok(())
}

/// This process's peak resident memory (Linux: `VmHWM` in `/proc/self/status`).
fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse::<u64>();
    kib.ok().map(|k| k * 1024)
}
