//! `meshgate-bench --history-events N`: a gateway with years of history. Grows a log to N events
//! through the real ingest path (each issue moved to `Building`, then out of it again, which
//! cancels its build; the last 100 stay in flight), then runs the release binary on it as a
//! service manager would and measures memory, start, stop, a restart after `kill -9`, a rebuild, and
//! webhook throughput against the same load on an empty log. Linux only (it reads `/proc`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use indicatif::ProgressBar;
use meshgate_domain::ingest::SAME_TRANSITION;
use meshgate_domain::payload;
use uuid::Uuid;

use crate::ingest::load;
use crate::process::{Running, Site};
use crate::server::{transition, trigger};
use meshgate::ingest::IngestService;
use meshgate::store::sqlite::{SqliteStore, WriterOptions};
use meshgate::store::EventStore;

/// Builds left queued at the end of the history.
const IN_FLIGHT: u64 = 100;

/// Issue numbers of the measured load start here, above every issue of the history.
const LOAD_ISSUES: u64 = 1_000_000_000;

pub struct HistoryArgs {
    pub events: u64,
    pub clients: usize,
    pub seconds: u64,
    /// Load runs on each log, alternating.
    pub rounds: usize,
    /// Where the grown log is kept (and reused by the next run if it holds enough events).
    pub dir: Option<PathBuf>,
}

pub async fn run(args: HistoryArgs) -> anyhow::Result<()> {
    // The measurements start the gateway binary: say at once if it is not there.
    crate::gateway_binary()?;
    let keep = args.dir.is_some();
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("meshgate-bench-history-{}", Uuid::now_v7())),
    };
    let grown = dir.join("grown");
    let (head, builds) = grow(&grown.join("events.sqlite"), args.events).await?;
    // The measurements run on a copy: the loads below add to the log they run on.
    let history = Site::create(&dir.join(format!("history-{}", Uuid::now_v7())))?;
    std::fs::create_dir_all(&history.data)?;
    for name in ["events.sqlite", "events.sqlite-wal"] {
        if grown.join(name).exists() {
            std::fs::copy(grown.join(name), history.data.join(name))?;
        }
    }
    copy_dir(&grown.join("events.streams"), &history.data.join("events.streams"))?;
    let (present, absent) = meshgate::store::sqlite::index_lookup_cost(&grown.join("events.sqlite"), 100_000)?;
    println!(
        "stream index on disk: a lookup that finds a stream {:.1} µs, one that finds none {:.2} µs (mean of 100,000)",
        present.as_secs_f64() * 1e6,
        absent.as_secs_f64() * 1e6
    );
    let size = file_size(&history.log()) + file_size(&history.log().with_extension("sqlite-wal"));
    println!("history: {head} events, {builds} builds ({IN_FLIGHT} in flight), log {:.0} MiB", mib(size));

    // On the history as grown (the loads below add queued builds to it).
    let rebuild = rebuild(&history)?;

    // The same load on an empty log and on this history, alternately: the machine's noise moves
    // both alike, and the medians are compared.
    let (mut baseline, mut loaded) = (Vec::new(), Vec::new());
    let (mut ready, mut idle, mut after, mut stop) = (Duration::ZERO, None, None, Duration::ZERO);
    for round in 0..args.rounds.max(1) {
        let empty = Site::create(&dir.join(format!("empty-{}", Uuid::now_v7())))?;
        let gateway = Running::start(&empty)?;
        baseline.push(webhook_load(&gateway, &empty, args.clients, args.seconds).await?);
        gateway.stop()?;
        let _ = std::fs::remove_dir_all(&empty.root);

        let gateway = Running::start(&history)?;
        if round == 0 {
            ready = gateway.ready_in;
            let memory = gateway.memory()?;
            println!(
                "start with the read model present: ready in {:.3} s; RSS when ready {:.1} MiB",
                ready.as_secs_f64(),
                mib(memory.rss)
            );
            idle = Some(memory);
        }
        let before = gateway.cpu_by_thread();
        let started = Instant::now();
        loaded.push(webhook_load(&gateway, &history, args.clients, args.seconds).await?);
        let spent = started.elapsed().as_secs_f64();
        let mut threads: Vec<(String, f64)> = gateway
            .cpu_by_thread()
            .into_iter()
            .map(|(name, seconds)| {
                let earlier = before.iter().find(|(n, _)| *n == name).map_or(0.0, |(_, s)| *s);
                (name, (seconds - earlier) / spent)
            })
            .filter(|(_, share)| *share >= 0.005)
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        let shares: Vec<String> = threads.iter().map(|(name, share)| format!("{name} {:.2}", share)).collect();
        println!("cores used during the load, by thread: {}", shares.join(", "));
        let memory = gateway.memory()?;
        println!("RSS after the load {:.1} MiB (high-water {:.1} MiB)", mib(memory.rss), mib(memory.peak));
        // What the gateway gives back once the burst is over (a save, the allocator's purge).
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rested = gateway.memory()?;
        println!("RSS 5 s after the load {:.1} MiB", mib(rested.rss));
        after = Some((memory, rested));
        stop = gateway.stop()?;
        println!("graceful stop (SIGTERM to exit): {:.3} s", stop.as_secs_f64());
    }
    let (idle, after) = (idle.context("no round ran")?, after.context("no round ran")?);
    let (baseline, loaded) = (LoadResult::median(&baseline), LoadResult::median(&loaded));

    // A crash under load: kill -9 while deliveries arrive, then start again.
    let gateway = Running::start(&history)?;
    let (addr, token, clients) = (gateway.addr, history.webhook_token()?, args.clients);
    let crashing = tokio::spawn(async move { load(addr, token, clients, 3, LOAD_ISSUES / 2, true).await });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    gateway.kill()?;
    let _ = crashing.await;
    let gateway = Running::start(&history)?;
    let after_kill = gateway.ready_in;
    println!("start after kill -9 under load: ready in {:.3} s", after_kill.as_secs_f64());
    let restarted = gateway.memory()?;
    gateway.stop()?;

    println!();
    println!("| measure | result |");
    println!("|---|---|");
    println!("| history | {head} events, {builds} builds, {IN_FLIGHT} in flight, log {:.0} MiB |", mib(size));
    println!("| RSS of the serving gateway, ready, before load | {:.1} MiB |", mib(idle.rss));
    println!(
        "| RSS at the end of {} s of load; 5 s later | {:.1} MiB; {:.1} MiB |",
        args.seconds,
        mib(after.0.rss),
        mib(after.1.rss)
    );
    println!(
        "| stream index on disk: a lookup that finds a stream / finds none | {:.1} µs / {:.2} µs |",
        present.as_secs_f64() * 1e6,
        absent.as_secs_f64() * 1e6
    );
    println!("| RSS after the restart that followed kill -9 | {:.1} MiB |", mib(restarted.rss));
    println!("| start → /readyz, read model present | {:.3} s |", ready.as_secs_f64());
    println!("| start → /readyz after kill -9 under load | {:.3} s |", after_kill.as_secs_f64());
    println!("| graceful stop | {:.3} s |", stop.as_secs_f64());
    println!("| `projections rebuild` | {rebuild} |");
    println!(
        "| webhook, {} clients, median of {} rounds: empty log | {:.0} accepted/s, p99 {:.2} ms |",
        args.clients,
        args.rounds.max(1),
        baseline.rate,
        baseline.p99_ms
    );
    println!(
        "| webhook, {} clients, median of {} rounds: this history | {:.0} accepted/s ({:+.1} %), p99 {:.2} ms ({:.2}x) |",
        args.clients,
        args.rounds.max(1),
        loaded.rate,
        (loaded.rate / baseline.rate - 1.0) * 100.0,
        loaded.p99_ms,
        loaded.p99_ms / baseline.p99_ms
    );
    let _ = std::fs::remove_dir_all(&history.root);
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// Grows the log at `log` to at least `events` events through the ingest service; returns the
/// head and the builds requested. A log that already holds enough is used as it is.
async fn grow(log: &Path, events: u64) -> anyhow::Result<(u64, u64)> {
    std::fs::create_dir_all(log.parent().context("log path")?)?;
    let opened = Instant::now();
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(log, WriterOptions::default())?);
    let head = *store.head().borrow();
    // A log whose stream index is missing or stale is indexed whole here (once).
    println!("opened the grown log ({head} events) in {:.2} s", opened.elapsed().as_secs_f64());
    if head >= events {
        drop(store);
        let builds = count_builds(log)?;
        return Ok((head, builds));
    }
    let ingest = Arc::new(IngestService::new(Arc::clone(&store), vec![trigger()], None, SAME_TRANSITION));
    let progress = ProgressBar::new(events);
    progress.set_message("growing the log");
    let next = Arc::new(AtomicU64::new(count_builds(log)?));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (store, ingest, next, progress) =
            (Arc::clone(&store), Arc::clone(&ingest), Arc::clone(&next), progress.clone());
        tasks.push(tokio::spawn(async move {
            while *store.head().borrow() < events {
                let issue = next.fetch_add(1, Ordering::Relaxed);
                deliver(&ingest, &transition(issue, "Open", "Building", 0)).await?;
                deliver(&ingest, &transition(issue, "Building", "Open", 60_000)).await?;
                progress.set_position(*store.head().borrow());
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    for issue in next.load(Ordering::Relaxed)..next.load(Ordering::Relaxed) + IN_FLIGHT {
        deliver(&ingest, &transition(issue, "Open", "Building", 0)).await?;
    }
    progress.finish_and_clear();
    let head = *store.head().borrow();
    drop(ingest);
    drop(store);
    Ok((head, count_builds(log)?))
}

async fn deliver(ingest: &IngestService, body: &str) -> anyhow::Result<()> {
    let read = payload::read(body).context("bench body")?;
    ingest.ingest(Uuid::now_v7(), Utc::now(), &read.body, read.fingerprint, &read.delivery).await?;
    Ok(())
}

fn count_builds(log: &Path) -> anyhow::Result<u64> {
    let conn = rusqlite::Connection::open_with_flags(log, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(conn.query_row("SELECT COUNT(*) FROM events WHERE type = 'BuildRequested'", [], |r| r.get(0))?)
}

#[derive(Clone, Copy)]
struct LoadResult {
    rate: f64,
    p99_ms: f64,
}

impl LoadResult {
    /// The median rate and the median p99 of several runs.
    fn median(runs: &[LoadResult]) -> LoadResult {
        let middle = |mut values: Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied().unwrap_or(0.0)
        };
        LoadResult {
            rate: middle(runs.iter().map(|r| r.rate).collect()),
            p99_ms: middle(runs.iter().map(|r| r.p99_ms).collect()),
        }
    }
}

async fn webhook_load(gateway: &Running, site: &Site, clients: usize, seconds: u64) -> anyhow::Result<LoadResult> {
    static NEXT: AtomicU64 = AtomicU64::new(LOAD_ISSUES);
    let offset = NEXT.fetch_add(100_000_000, Ordering::Relaxed);
    let (mut latencies, errors, elapsed) =
        load(gateway.addr, site.webhook_token()?, clients, seconds, offset, true).await?;
    latencies.sort_unstable();
    let p99 = latencies.get(((latencies.len().max(1) - 1) as f64 * 0.99) as usize).copied().unwrap_or(0);
    let result = LoadResult { rate: latencies.len() as f64 / elapsed.as_secs_f64(), p99_ms: p99 as f64 / 1000.0 };
    println!("load: {:.0} accepted/s, p99 {:.2} ms, {errors} errors", result.rate, result.p99_ms);
    Ok(result)
}

/// `meshgate projections rebuild` as an operator runs it; its own report of time and memory.
fn rebuild(site: &Site) -> anyhow::Result<String> {
    let output = Command::new(crate::gateway_binary()?)
        .arg("--config")
        .arg(&site.config)
        .args(["projections", "rebuild"])
        .current_dir(&site.root)
        .env("RUST_LOG", "warn")
        .output()?;
    anyhow::ensure!(output.status.success(), "projections rebuild failed: {}", String::from_utf8_lossy(&output.stderr));
    let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    println!("rebuild: {said}");
    Ok(said)
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()))?;
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
