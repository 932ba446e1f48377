//! `meshgate-bench burst`: the gateway's memory right after a burst. The release gateway runs as a
//! service manager runs it (metrics on) and takes `--seconds` of load from keep-alive connections,
//! each issue moved to `Building` and out of it again (the build is requested, then cancelled), so
//! the work in flight stays bounded as in a bulk edit that is undone; then its resident memory is
//! read every second for `--after` seconds. Linux only (it reads `/proc`).

use std::time::{Duration, Instant};

use clap::Args;
use uuid::Uuid;

use crate::ingest::load;
use crate::process::{Running, Site};

#[derive(Debug, Args)]
pub struct BurstArgs {
    /// Concurrent clients (keep-alive connections).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of load (after one second of warm-up).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seconds memory is followed after the load ends.
    #[arg(long, default_value_t = 5)]
    after: u64,
}

pub async fn run(args: BurstArgs) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let site = Site::create(&root.path().join(format!("burst-{}", Uuid::now_v7())))?;
    let gateway = Running::start(&site)?;
    let at_rest = gateway.memory()?;
    println!("at rest after start: RSS {:.1} MiB", mib(at_rest.rss));
    let (latencies, errors, elapsed) =
        load(gateway.addr, site.webhook_token()?, args.clients, args.seconds, 0, true).await?;
    let ended = Instant::now();
    println!(
        "load: {} deliveries accepted in {:.1} s ({:.0}/s), {errors} errors; peak RSS {:.1} MiB",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        mib(gateway.memory()?.peak)
    );
    println!("| after the load | RSS |");
    println!("|---:|---:|");
    for second in 0..=args.after {
        tokio::time::sleep_until((ended + Duration::from_secs(second)).into()).await;
        println!("| {second} s | {:.1} MiB |", mib(gateway.memory()?.rss));
    }
    gateway.stop()?;
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
