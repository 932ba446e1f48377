//! `meshgate-bench`: ingest throughput and latency against a real server on loopback, and the
//! speed of a projection rebuild; the other measurements are chosen by its flags. See
//! docs/benchmarks.md for how to read the figures.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use indicatif::ProgressBar;
use meshgate_domain::ingest::{decide_delivery, DeliveryInput, IngestPolicy, LogView, SAME_TRANSITION};
use meshgate_domain::payload::parse_bytes;
use meshgate_domain::Trigger;
use uuid::Uuid;

use crate::client::LoadClient;
use meshgate::app::App;
use meshgate::config::Config;
use meshgate::projector::{self, Follower};
use meshgate::secrets::generate_token_file;
use meshgate::store::sqlite::{SqliteStore, WriterOptions};
use meshgate::store::{EventStore, NewEvent, StreamAppend};

/// A delivery in the sender's compact format; `{n}` makes each one a distinct change.
const BODY: &str = r#"{"event":"issueUpdated","timestamp":"2026-08-24T10:00:00.000Z","id":"MOB-{n}","summary":"Crash on launch when the device is offline and the cache is cold (iOS 18.2, iPhone 15)","project":{"key":"MOB","name":"Mobile","shortName":"MOB"},"description":"Steps to reproduce:\n1. Install the app from TestFlight build 2.1.0 (412)\n2. Enable airplane mode\n3. Clear the cache from Settings > Storage\n4. Launch the app\n\nExpected: the offline screen.\nActual: crash in CacheController.load() with EXC_BAD_ACCESS.\n\nSeen on iOS 18.2 and 18.3 beta 1; not on iOS 17. Crash log attached; symbolicated stack points at the image decoder running on the main thread while the cache index is rebuilt on a background queue.","updated":1787565700000,"updatedBy":{"login":"omar.haddad","fullName":"Omar Haddad","email":"omar.haddad@example.com"},"changedFields":[{"name":"State","oldValue":{"name":"Open","presentation":"Open"},"value":{"name":"Building","presentation":"Building"}},{"name":"Assignee","oldValue":null,"value":{"login":"jane.doe","fullName":"Jane Doe","email":"jane.doe@example.com"}}]}"#;

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

pub(crate) fn trigger() -> Trigger {
    Config::sample_triggers().remove(0)
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

pub(crate) fn bench_config(dir: &Path, group_commit: bool) -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.server.data_dir = dir.join("data");
    config.webhook.token_files = vec![dir.join("webhook.token")];
    config.admin.token_file = Some(dir.join("admin.token"));
    config.nodes.token_file = Some(dir.join("nodes.token"));
    config.store.group_commit = group_commit;
    // Metrics recorded as in production, served on a free port (never a running gateway's, nor
    // the other gateway's of the same run).
    config.metrics.listen = "127.0.0.1:0".into();
    config.triggers = vec![trigger()];
    generate_token_file(&dir.join("webhook.token"), 0o400)?;
    generate_token_file(&dir.join("admin.token"), 0o400)?;
    generate_token_file(&dir.join("nodes.token"), 0o400)?;
    Ok(config)
}

/// A gateway on a free loopback port in a temp dir, for the measurements.
pub(crate) struct BenchServer {
    pub addr: SocketAddr,
    pub dir: std::path::PathBuf,
    pub webhook_token: String,
    pub nodes_token: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl BenchServer {
    pub async fn start(group_commit: bool) -> anyhow::Result<BenchServer> {
        Self::start_with(|config| config.store.group_commit = group_commit).await
    }

    /// A gateway with the benchmark's configuration changed by `adjust` (its log's backend).
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> anyhow::Result<BenchServer> {
        let dir = tempfile_dir("meshgate-bench")?;
        let mut config = bench_config(&dir, true)?;
        adjust(&mut config);
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).map(|t| t.trim().to_owned());
        let (webhook_token, nodes_token) = (read("webhook.token")?, read("nodes.token")?);
        let app = App::start(&config).await?;
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(BenchServer { addr, dir, webhook_token, nodes_token, stop, server })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.await??;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// A distinct delivery that enqueues one build.
pub(crate) fn body(n: u64) -> String {
    let (head, tail) = BODY.split_once("{n}").unwrap_or((BODY, ""));
    let mut body = String::with_capacity(BODY.len() + 20);
    body.push_str(head);
    let _ = write!(body, "{n}");
    body.push_str(tail);
    body
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

/// Writes a log of about `events` events as ingest makes them (four per delivery: received,
/// routed, intent activated, build requested), then times a rebuild of every projection.
async fn rebuild(events: u64) -> anyhow::Result<()> {
    let dir = tempfile_dir("meshgate-bench-rebuild")?;
    let path = dir.join("events.sqlite");
    let store = SqliteStore::open(&path, WriterOptions::default())?;
    let triggers = [trigger()];
    let policy = IngestPolicy { triggers: &triggers, bot_login: None, same_transition: SAME_TRANSITION };
    let deliveries = events.div_ceil(4);
    let progress = ProgressBar::new(deliveries);
    progress.set_message("writing the log");
    for chunk_start in (0..deliveries).step_by(2000) {
        let mut appends: Vec<StreamAppend> = Vec::new();
        for n in chunk_start..(chunk_start + 2000).min(deliveries) {
            appends.extend(plan_for(n, &policy)?);
        }
        store.append(appends).await?;
        progress.inc(2000);
    }
    progress.finish_and_clear();
    let head = *store.head().borrow();
    drop(store);
    // Fold the WAL into the database before timing, so the rebuild does not race a checkpoint.
    let conn = rusqlite::Connection::open(&path)?;
    conn.busy_timeout(Duration::from_secs(60))?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);

    // As an operator runs it: `meshgate projections rebuild`, a fresh process on the log.
    let config = dir.join("bench.toml");
    std::fs::write(&config, format!("[server]\ndata_dir = '{}'\n", dir.display()))?;
    let output = std::process::Command::new(crate::gateway_binary()?)
        .arg("--config")
        .arg(&config)
        .args(["projections", "rebuild"])
        .env("RUST_LOG", "warn")
        .output()?;
    let said = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "projections rebuild failed: {}", String::from_utf8_lossy(&output.stderr));
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!();
    println!("rebuild: log of {head} events ({:.0} MiB): {}", size as f64 / (1024.0 * 1024.0), said.trim());

    // The same fold inside this process, whose heap the writing left behind.
    let started = Instant::now();
    let log = path.clone();
    let scratch = path.with_extension("readmodel.sqlite").with_extension("sqlite.bench");
    let model = meshgate::readmodel::ReadModel::open(&scratch)?;
    let reader = meshgate::store::sqlite::Reader::open(&log)?;
    let set =
        meshgate::rebuild::fold(&reader, head, meshgate_projections::OutboxConfig::default(), &model, |_| {}).await?;
    let elapsed = started.elapsed();
    println!(
        "rebuild in the process that wrote the log: {} builds in memory at the end, {:.2} s = {:.0} events/s",
        set.builds.in_memory_len(),
        elapsed.as_secs_f64(),
        head as f64 / elapsed.as_secs_f64()
    );
    // Opening the log rebuilds the writer's stream index from it (ADR 0006).
    let started = Instant::now();
    let store = SqliteStore::open(&path, WriterOptions::default())?;
    println!("open: stream index of {head} events rebuilt in {:.2} s", started.elapsed().as_secs_f64());
    drop(store);
    catch_up(&path, head).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Times what a gateway restarting without checkpoints does before it is ready: the live
/// projections catch up through the store (the replay a crash costs, bounded by how often they
/// are saved).
async fn catch_up(log: &Path, head: u64) -> anyhow::Result<()> {
    let path = log.with_extension("readmodel.sqlite");
    for file in [path.clone(), path.with_extension("sqlite-wal"), path.with_extension("sqlite-shm")] {
        let _ = std::fs::remove_file(file);
    }
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(log, WriterOptions::default())?);
    let started = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let readmodel = Arc::new(meshgate::readmodel::ReadModel::open(&path)?);
    let (projections, follow) =
        projector::start(store, readmodel, meshgate_projections::OutboxConfig::default(), async {
            let _ = stopped.await;
        })
        .await?;
    let follower = Follower::spawn(follow)?;
    let caught_up = projections.caught_up_to(head, Duration::from_secs(600)).await;
    let elapsed = started.elapsed();
    let _ = stop.send(());
    follower.join().await;
    anyhow::ensure!(caught_up, "the live projections did not catch up within 600 s");
    println!(
        "catch-up without checkpoints (live projections, through the store): {head} events in {:.2} s = {:.0} events/s",
        elapsed.as_secs_f64(),
        head as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

/// Issue `n` moving from `from` to `to`, `later_ms` after the sample's change time.
pub(crate) fn transition(n: u64, from: &str, to: &str, later_ms: u64) -> String {
    body(n)
        .replace(
            r#""oldValue":{"name":"Open","presentation":"Open"},"value":{"name":"Building","presentation":"Building"}"#,
            &format!(
                r#""oldValue":{{"name":"{from}","presentation":"{from}"}},"value":{{"name":"{to}","presentation":"{to}"}}"#
            ),
        )
        .replace("\"updated\":1787565700000", &format!("\"updated\":{}", 1_787_565_700_000 + later_ms))
}

/// The appends ingest makes for delivery `n`, decided on the fast path.
fn plan_for(n: u64, policy: &IngestPolicy<'_>) -> anyhow::Result<Vec<StreamAppend>> {
    let body = body(n);
    let (fingerprint, delivery) = parse_bytes(body.as_bytes()).context("bench body")?;
    let correlation_id = Uuid::now_v7();
    let now = Utc::now();
    let input =
        DeliveryInput { correlation_id, received_at: now, fingerprint: &fingerprint, body: &body, delivery: &delivery };
    let plan = decide_delivery(&LogView::assume_new(), &input, policy, &mut Uuid::now_v7);
    Ok(plan
        .appends
        .into_iter()
        .map(|a| StreamAppend {
            stream: a.stream,
            expected: a.expected,
            events: a.events.iter().map(|e| NewEvent::from_domain(e, correlation_id, None, now)).collect(),
        })
        .collect())
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
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir(prefix: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
