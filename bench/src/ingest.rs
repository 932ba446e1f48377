//! `meshgate-bench`'s measurements, chosen by its flags (docs/benchmarks.md says how to read the
//! figures): ingest throughput and latency against a real gateway on loopback, with and without
//! group commit, and the store alone; dispatch and claims; a rebuild of the read model. The
//! history, shared-log and EventStoreDB measurements run instead when asked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use meshgate::store::sqlite::{SqliteStore, WriterOptions};
use meshgate::store::EventStore;
use meshgate_domain::ingest::{IngestPolicy, SAME_TRANSITION};

use crate::client::LoadClient;
use crate::rebuild::rebuild;
use crate::server::{body, plan_for, tempfile_dir, transition, trigger, BenchServer, BODY};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent clients posting deliveries.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of measured load per ingest mode (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Events in the log for the rebuild measurement (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    rebuild_events: u64,
    /// Skip the ingest measurements.
    #[arg(long)]
    no_ingest: bool,
    /// Also measure the store alone: the same appends from the same number of tasks, no HTTP.
    #[arg(long)]
    store_only: bool,
    /// Run the load generator on a thread and runtime of its own instead of as tasks on the
    /// gateway's runtime: its work then competes with the gateway's threads for the cores.
    #[arg(long)]
    load_thread: bool,
    /// Builds for the dispatch-latency measurement (0 skips it and the claim throughput).
    #[arg(long, default_value_t = 1000)]
    dispatch_builds: u64,
    /// Instead of the measurements above: grow a log to this many events and measure a gateway
    /// serving it (memory, start, stop, restart after kill -9, rebuild, webhook throughput).
    #[arg(long, default_value_t = 0)]
    history_events: u64,
    /// Where `--history-events` keeps the grown log, to reuse it in the next run (default: a
    /// temporary folder, removed at the end).
    #[arg(long)]
    history_dir: Option<std::path::PathBuf>,
    /// With `--history-events`: load runs on the empty log and on the history, alternately.
    #[arg(long, default_value_t = 3)]
    history_rounds: usize,
    /// Instead of the measurements above: compare SQLite with PostgreSQL (one gateway, two) at
    /// this server, in databases the benchmark creates and drops (the role needs CREATEDB).
    #[arg(long)]
    postgres_url: Option<String>,
    /// Instead of the measurements above: compare SQLite with EventStoreDB (one gateway) at this
    /// server (`esdb://…`), under a stream prefix of its own.
    #[arg(long)]
    esdb_url: Option<String>,
    /// With `--postgres-url`: each delivery's issue then leaves the state (a second delivery that
    /// reads the streams it touches and cancels the build), so the work in flight stays bounded.
    #[arg(long)]
    leave: bool,
    /// With `--postgres-url`: the two gateways' measurement sends every client to the first one;
    /// the second only follows the log (what a second gateway costs on the same machine).
    #[arg(long)]
    load_on_one: bool,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.esdb_url {
        return crate::shared::run_esdb(url, args.clients, args.seconds).await;
    }
    if let Some(url) = &args.postgres_url {
        let shared = crate::shared::SharedArgs {
            clients: args.clients,
            seconds: args.seconds,
            dispatch_builds: args.dispatch_builds,
            leave: args.leave,
            load_on_one: args.load_on_one,
        };
        return crate::shared::run(url, shared).await;
    }
    if args.history_events > 0 {
        return crate::history::run(crate::history::HistoryArgs {
            events: args.history_events,
            clients: args.clients,
            seconds: args.seconds,
            rounds: args.history_rounds,
            dir: args.history_dir,
        })
        .await;
    }
    println!("body: {} bytes, {} clients, {} s per mode", BODY.len(), args.clients, args.seconds);
    if !args.no_ingest {
        let group = ingest(&args, true).await?;
        let single = ingest(&args, false).await?;
        println!();
        println!("| mode | accepted/s | p50 | p99 | requests | errors |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (name, r) in [("group commit", &group), ("one commit per request", &single)] {
            println!(
                "| {name} | {:.0} | {:.2} ms | {:.2} ms | {} | {} |",
                r.rate(),
                r.percentile(0.50),
                r.percentile(0.99),
                r.latencies_us.len(),
                r.errors
            );
        }
        println!("group commit / one commit per request: {:.1}x", group.rate() / single.rate());
    }
    if args.store_only {
        store_only(&args).await?;
    }
    if args.dispatch_builds > 0 {
        crate::dispatch::dispatch(args.dispatch_builds, 4).await?;
        crate::dispatch::claims(args.dispatch_builds * 2, 16).await?;
    }
    if args.rebuild_events > 0 {
        rebuild(args.rebuild_events).await?;
    }
    Ok(())
}

pub(crate) struct IngestResult {
    pub latencies_us: Vec<u64>,
    pub errors: u64,
    pub elapsed: Duration,
}

impl IngestResult {
    pub fn rate(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

/// `clients` keep-alive connections posting distinct deliveries (issues numbered from
/// `first_issue`; with `then_out`, each issue is moved out of `Building` right after, which
/// cancels its build and keeps the work in flight bounded): one second of warm-up, then
/// `seconds` measured. Returns the latencies of the accepted ones, the failures, the time measured.
pub(crate) async fn load(
    addr: SocketAddr,
    token: String,
    clients: usize,
    seconds: u64,
    first_issue: u64,
    then_out: bool,
) -> anyhow::Result<(Vec<u64>, u64, Duration)> {
    let next = Arc::new(AtomicU64::new(first_issue));
    let errors = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, errors, measuring, done) = (next.clone(), errors.clone(), measuring.clone(), done.clone());
        let mut client = LoadClient::connect(addr, "/youtrack/webhook", &[("X-YouTrack-Token", &token)]).await?;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            while !done.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let mut bodies = vec![body(n)];
                if then_out {
                    bodies.push(transition(n, "Building", "Open", 60_000));
                }
                for body in bodies {
                    let started = Instant::now();
                    let ok = matches!(client.post(body.as_bytes()).await, Ok(200));
                    if measuring.load(Ordering::Relaxed) {
                        if ok {
                            latencies.push(started.elapsed().as_micros() as u64);
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await?);
    }
    Ok((latencies_us, errors.load(Ordering::Relaxed), elapsed))
}

async fn ingest(args: &BenchArgs, group_commit: bool) -> anyhow::Result<IngestResult> {
    let server = BenchServer::start(group_commit).await?;
    let (addr, token, clients, seconds) = (server.addr, server.webhook_token.clone(), args.clients, args.seconds);
    let (mut latencies_us, errors, elapsed) = if args.load_thread {
        let load = std::thread::Builder::new().name("meshgate-bench-load".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(load(addr, token, clients, seconds, 0, false))
        })?;
        let joined = tokio::task::spawn_blocking(move || load.join()).await?;
        joined.map_err(|_| anyhow::anyhow!("the load generator panicked"))??
    } else {
        load(addr, token, clients, seconds, 0, false).await?
    };
    latencies_us.sort_unstable();
    server.stop().await?;
    let result = IngestResult { latencies_us, errors, elapsed };
    eprintln!(
        "{}: {:.0} accepted/s, p50 {:.2} ms, p99 {:.2} ms",
        if group_commit { "group commit" } else { "one commit per request" },
        result.rate(),
        result.percentile(0.5),
        result.percentile(0.99)
    );
    Ok(result)
}

/// Group commit without HTTP: `clients` tasks appending one delivery's events at a time.
async fn store_only(args: &BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile_dir("meshgate-bench-store")?;
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&dir.join("events.sqlite"), WriterOptions::default())?);
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (store, next) = (Arc::clone(&store), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let triggers = [trigger()];
            let policy = IngestPolicy { triggers: &triggers, bot_login: None, same_transition: SAME_TRANSITION };
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let appends = plan_for(next.fetch_add(1, Ordering::Relaxed), &policy)?;
                let started = Instant::now();
                store.append(appends).await?;
                latencies.push(started.elapsed().as_micros() as u64);
            }
            anyhow::Ok(latencies)
        }));
    }
    let started = Instant::now();
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await??);
    }
    latencies_us.sort_unstable();
    let result = IngestResult { latencies_us, errors: 0, elapsed: started.elapsed() };
    println!(
        "store only: {:.0} appends/s, p50 {:.2} ms, p99 {:.2} ms",
        result.rate(),
        result.percentile(0.5),
        result.percentile(0.99)
    );
    // Closed first: its writer flushes the stream index into the folder as it ends.
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
