//! `meshgate-bench instructions`: what one accepted delivery costs, counted in instructions by
//! callgrind rather than timed, so that a change's effect shows on a shared, noisy machine.
//!
//! The release gateway runs as a service manager runs it (`meshgate init`'s layout, metrics on),
//! under `valgrind --tool=callgrind`, and takes distinct deliveries that each start a build, one at
//! a time over one keep-alive connection, each answered 200 before the next is sent (so each
//! commit of the log carries one delivery). It runs twice, with `--base` deliveries and with
//! `--deliveries` more: start-up, the first deliveries' warm-up and shutdown are in both runs and
//! cancel out of the difference, which is divided by the extra deliveries. The functions whose
//! inclusive cost grew most are listed the same way (`callgrind_annotate --inclusive=yes`).
//!
//! The count is not exact from run to run: work on a clock (the projections' save every second,
//! the leases' and polls' timers) happens as often as the run is long, and a run under callgrind
//! is as long as the machine is busy; the metrics' clock calibrates itself once at start for as
//! many instructions as the machine is slow then (a few million either way), which only many
//! deliveries dilute (`--deliveries 2000` keeps rounds within about 1%). `--rounds` repeats the
//! pair and gives the median.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;
use uuid::Uuid;

use crate::client::LoadClient;
use crate::process::{Running, Site};
use crate::server::body;

#[derive(Debug, Args)]
pub struct InstructionsArgs {
    /// Deliveries of the shorter run.
    #[arg(long, default_value_t = 200)]
    base: u64,
    /// Deliveries the longer run sends beyond the shorter one's (2,000 keep a round within about
    /// 1% of the next).
    #[arg(long, default_value_t = 2000)]
    deliveries: u64,
    /// Functions listed, by inclusive instructions per delivery (0 lists none).
    #[arg(long, default_value_t = 25)]
    top: usize,
    /// The gateway's `RUST_LOG` (`info` is a deployment's default: one line per delivery).
    #[arg(long, default_value = "warn")]
    rust_log: String,
    /// Keep the callgrind files in this folder (default: a temporary one, removed).
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Pairs of runs; the median round's figure and functions are reported.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

pub async fn run(args: InstructionsArgs) -> anyhow::Result<()> {
    let temporary = tempfile::tempdir()?;
    let dir = args.keep.clone().unwrap_or_else(|| temporary.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let per = |a: u64, b: u64| (b as f64 - a as f64) / args.deliveries as f64;
    let mut rounds = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let short = count(&dir, args.base, &args.rust_log).await?;
        let long = count(&dir, args.base + args.deliveries, &args.rust_log).await?;
        println!(
            "round {round}: instructions: {} deliveries {}, {} deliveries {}; per accepted delivery: {:.0}",
            args.base,
            short.total,
            args.base + args.deliveries,
            long.total,
            per(short.total, long.total)
        );
        rounds.push((per(short.total, long.total), short, long));
    }
    rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (median, short, long) = rounds.swap_remove(rounds.len() / 2);
    println!("median of {} rounds: {median:.0} instructions per accepted delivery", args.rounds.max(1));
    if args.top > 0 {
        let mut grown: Vec<(&str, f64)> = long
            .inclusive
            .iter()
            .map(|(name, &cost)| (name.as_str(), per(short.inclusive.get(name).copied().unwrap_or(0), cost)))
            .collect();
        grown.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!();
        println!("| function (inclusive) | instructions per delivery |");
        println!("|---|---:|");
        for (name, cost) in grown.into_iter().take(args.top) {
            println!("| `{name}` | {cost:.0} |");
        }
    }
    Ok(())
}

struct Counted {
    total: u64,
    /// Inclusive instructions by function.
    inclusive: HashMap<String, u64>,
}

/// One run: a fresh gateway under callgrind taking `deliveries` deliveries, then stopped.
async fn count(dir: &Path, deliveries: u64, rust_log: &str) -> anyhow::Result<Counted> {
    let site = Site::create(&dir.join(format!("site-{deliveries}-{}", Uuid::now_v7())))?;
    let out = dir.join(format!("callgrind.{deliveries}.out"));
    let mut out_flag = OsString::from("--callgrind-out-file=");
    out_flag.push(&out);
    let wrapper = ["valgrind".into(), "--tool=callgrind".into(), "--dump-instr=no".into(), out_flag];
    let gateway = Running::start_under(&site, &wrapper, &[("RUST_LOG", rust_log)])
        .context("cannot start the gateway under valgrind (apt install valgrind)")?;
    let token = site.webhook_token()?;
    let mut client = LoadClient::connect(gateway.addr, "/youtrack/webhook", &[("X-YouTrack-Token", &token)]).await?;
    for n in 0..deliveries {
        let status = client.post(body(n).as_bytes()).await?;
        anyhow::ensure!(status == 200, "delivery {n} answered {status}");
    }
    drop(client);
    gateway.stop()?;
    let text = std::fs::read_to_string(&out).with_context(|| format!("{}", out.display()))?;
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("callgrind's output has no total")?;
    Ok(Counted { total, inclusive: inclusive(&out)? })
}

/// `callgrind_annotate --inclusive=yes`'s table: instructions by function, every function listed.
/// A function inlined into several source files is listed once per file, each line counting the
/// same calls: the largest is kept, not their sum. (Async functions that poll one another still
/// count a call in each, so a future's `poll` can exceed the program's total.)
fn inclusive(out: &Path) -> anyhow::Result<HashMap<String, u64>> {
    let output = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100", "--auto=no"])
        .arg(out)
        .output()?;
    if !output.status.success() {
        bail!("callgrind_annotate failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let mut by_function = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        // `1,234,567 (12.34%)  file:function [object]`
        let line = line.trim_start();
        let Some((count, rest)) = line.split_once(' ') else { continue };
        let Ok(count) = count.replace(',', "").parse::<u64>() else { continue };
        let Some((_, function)) = rest.split_once(")  ") else { continue };
        let function = function.split(" [").next().unwrap_or(function);
        let function = function.split_once(':').map_or(function, |(_, f)| f);
        let kept = by_function.entry(function.to_owned()).or_insert(0);
        *kept = (*kept).max(count);
    }
    Ok(by_function)
}
