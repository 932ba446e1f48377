//! `meshgate bench --postgres-url URL`: the shared log against the embedded one, in one run.
//!
//! Ingest at `clients` clients (distinct deliveries, each a new build) into a gateway on SQLite, a
//! gateway on PostgreSQL, and two gateways on one PostgreSQL database (half the clients on each);
//! then dispatch latency across gateways: the webhook goes to one gateway, the idle nodes long-poll
//! the other. Every PostgreSQL measurement gets a database of its own, created and dropped here.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_postgres::NoTls;

use crate::dispatch::{percentile, post_delivery, spawn_nodes};
use crate::ingest::{load, IngestResult};
use crate::server::BenchServer;
use meshgate::config::StoreBackend;

/// What `meshgate bench --postgres-url` measures.
pub struct SharedArgs {
    pub clients: usize,
    pub seconds: u64,
    pub dispatch_builds: u64,
    /// Each delivery followed by one that leaves the state.
    pub leave: bool,
    /// Every client on the first of the two gateways.
    pub load_on_one: bool,
}

pub async fn run(url: &str, args: SharedArgs) -> anyhow::Result<()> {
    let SharedArgs { clients, seconds, dispatch_builds, leave, load_on_one } = args;
    let server = Server::connect(url).await?;
    println!("{clients} clients, {seconds} s per mode; PostgreSQL {}", server.version);
    if leave {
        println!("each delivery followed by one that leaves the state and cancels its build");
    }
    if load_on_one {
        println!("two gateways: every client on the first, the second only follows the log");
    }

    let sqlite = BenchServer::start(true).await?;
    let on_sqlite = measure(&[&sqlite], clients, seconds, leave).await?;
    sqlite.stop().await?;
    report("SQLite, one gateway", &on_sqlite);

    let db = server.create().await?;
    let one = BenchServer::start_with(|c| shared(c, &db.url)).await?;
    let started = server.work_start().await?;
    let on_one = measure(&[&one], clients, seconds, leave).await?;
    let one_work = server.work_since(started, &db).await?;
    one.stop().await?;
    server.drop(db).await?;
    report("PostgreSQL, one gateway", &on_one);

    let db = server.create().await?;
    let (a, b) = (
        BenchServer::start_with(|c| shared(c, &db.url)).await?,
        BenchServer::start_with(|c| shared(c, &db.url)).await?,
    );
    let loaded: &[&BenchServer] = if load_on_one { &[&a] } else { &[&a, &b] };
    let started = server.work_start().await?;
    let on_two = measure(loaded, clients, seconds, leave).await?;
    let two_work = server.work_since(started, &db).await?;
    report("PostgreSQL, two gateways", &on_two);

    table(&[
        ("SQLite, one gateway", &on_sqlite),
        ("PostgreSQL, one gateway", &on_one),
        ("PostgreSQL, two gateways", &on_two),
    ]);
    println!(
        "PostgreSQL one gateway / SQLite: {:.2}; two gateways / one: {:.2}",
        on_one.rate() / on_sqlite.rate(),
        on_two.rate() / on_one.rate()
    );
    DbWork::compare(&one_work, &two_work);
    a.stop().await?;
    b.stop().await?;
    server.drop(db).await?;
    if dispatch_builds > 0 {
        // On a log of its own: the builds the load queued would be claimed first.
        let db = server.create().await?;
        let (a, b) = (
            BenchServer::start_with(|c| shared(c, &db.url)).await?,
            BenchServer::start_with(|c| shared(c, &db.url)).await?,
        );
        dispatch_across(&a, &b, dispatch_builds).await?;
        a.stop().await?;
        b.stop().await?;
        server.drop(db).await?;
    }
    Ok(())
}

/// `meshgate bench --esdb-url URL`: ingest into a gateway on SQLite and one on EventStoreDB.
pub async fn run_esdb(url: &str, clients: usize, seconds: u64) -> anyhow::Result<()> {
    println!("{clients} clients, {seconds} s per mode; EventStoreDB at {}", url.split('?').next().unwrap_or(url));
    let sqlite = BenchServer::start(true).await?;
    let on_sqlite = measure(&[&sqlite], clients, seconds, false).await?;
    sqlite.stop().await?;
    report("SQLite, one gateway", &on_sqlite);

    let prefix = format!("bench{}-", uuid::Uuid::now_v7().simple());
    let one = BenchServer::start_with(|c| {
        c.store.backend = StoreBackend::EventStoreDb;
        c.store.url = Some(url.to_owned());
        c.store.stream_prefix = prefix.clone();
    })
    .await?;
    let on_esdb = measure(&[&one], clients, seconds, false).await?;
    one.stop().await?;
    report("EventStoreDB, one gateway", &on_esdb);

    table(&[("SQLite, one gateway", &on_sqlite), ("EventStoreDB, one gateway", &on_esdb)]);
    println!(
        "EventStoreDB / SQLite: {:.3}; the streams are under the prefix {prefix}",
        on_esdb.rate() / on_sqlite.rate()
    );
    Ok(())
}

fn shared(config: &mut meshgate::config::Config, url: &str) {
    config.store.backend = StoreBackend::Postgres;
    config.store.url = Some(url.to_owned());
}

/// The measurements as a Markdown table.
fn table(rows: &[(&str, &IngestResult)]) {
    println!();
    println!("| log | accepted/s | p50 | p99 | errors |");
    println!("|---|---:|---:|---:|---:|");
    for (name, r) in rows {
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {} |",
            r.rate(),
            r.percentile(0.5),
            r.percentile(0.99),
            r.errors
        );
    }
}

fn report(name: &str, r: &IngestResult) {
    eprintln!("{name}: {:.0} accepted/s, p50 {:.2} ms, p99 {:.2} ms", r.rate(), r.percentile(0.5), r.percentile(0.99));
}

/// The load spread evenly over the gateways, issue numbers apart.
async fn measure(gateways: &[&BenchServer], clients: usize, seconds: u64, leave: bool) -> anyhow::Result<IngestResult> {
    let share = clients.div_ceil(gateways.len());
    let runs = gateways
        .iter()
        .enumerate()
        .map(|(i, g)| load(g.addr, g.webhook_token.clone(), share, seconds, (i as u64) << 40, leave));
    let mut result = IngestResult { latencies_us: Vec::new(), errors: 0, elapsed: Duration::ZERO };
    for run in futures_util::future::join_all(runs).await {
        let (latencies, errors, elapsed) = run?;
        result.latencies_us.extend(latencies);
        result.errors += errors;
        result.elapsed = result.elapsed.max(elapsed);
    }
    result.latencies_us.sort_unstable();
    Ok(result)
}

/// One webhook at a time to `to`; four idle nodes long-poll `from`.
async fn dispatch_across(to: &BenchServer, from: &BenchServer, builds: u64) -> anyhow::Result<()> {
    let client = meshgate::tls::client(reqwest::Client::builder(), None)?;
    let (tx, mut received) = mpsc::unbounded_channel();
    let tasks = spawn_nodes(4, &client, &format!("http://{}", from.addr), &from.nodes_token, &tx);
    drop(tx);
    let base = format!("http://{}", to.addr);
    let mut latencies = Vec::with_capacity(builds as usize);
    for n in 0..builds {
        let response = post_delivery(&client, &base, &to.webhook_token, (3 << 40) + n).await?;
        let accepted_at = Instant::now();
        let answer: Value = response.json().await?;
        let build_id = answer["build_id"].as_str().unwrap_or_default().to_owned();
        // Wait for this one (a node may still hold an earlier build).
        loop {
            let Some((claimed, at)) = received.recv().await else { anyhow::bail!("every node stopped") };
            if claimed == build_id {
                latencies.push(at.saturating_duration_since(accepted_at));
                break;
            }
        }
    }
    received.close();
    for task in tasks {
        task.abort();
    }
    latencies.sort();
    println!(
        "dispatch across gateways: {builds} builds, webhook to one, 4 idle nodes on the other: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    Ok(())
}

/// The database's own work over a measurement, per accepted delivery: the CPU of the server's
/// processes (when it runs on this machine) and what `pg_stat_statements` counted in the
/// measurement's database (when the server loads it: `shared_preload_libraries`).
struct DbWork {
    deliveries: u64,
    cpu_seconds: Option<f64>,
    statements: Option<Statements>,
}

/// What `pg_stat_statements` counted: calls and execution time (ms) of every statement, and the
/// most called ones with their calls.
struct Statements {
    calls: f64,
    exec_ms: f64,
    top: Vec<(String, f64)>,
}

/// Where a measurement of [`DbWork`] started.
struct WorkStart {
    cpu_seconds: Option<f64>,
    statements: bool,
}

impl DbWork {
    fn compare(one: &DbWork, two: &DbWork) {
        let per = |w: &DbWork, x: f64| x / w.deliveries.max(1) as f64;
        let cpu = |w: &DbWork| w.cpu_seconds.map(|c| per(w, c) * 1e6);
        println!();
        println!("| database work per delivery | one gateway | two gateways | two / one |");
        println!("|---|---:|---:|---:|");
        println!("| deliveries in the log | {} | {} | |", one.deliveries, two.deliveries);
        if let (Some(a), Some(b)) = (cpu(one), cpu(two)) {
            println!("| server CPU | {a:.1} µs | {b:.1} µs | {:.2} |", b / a);
        } else {
            println!("| server CPU | not on this machine | | |");
        }
        match (&one.statements, &two.statements) {
            (Some(a), Some(b)) => {
                let (ca, cb, ta, tb) = (per(one, a.calls), per(two, b.calls), per(one, a.exec_ms), per(two, b.exec_ms));
                println!("| statements | {ca:.2} | {cb:.2} | {:.2} |", cb / ca);
                println!("| statements' execution time | {:.1} µs | {:.1} µs | {:.2} |", ta * 1e3, tb * 1e3, tb / ta);
                for (name, work, top) in [("one gateway", one, &a.top), ("two gateways", two, &b.top)] {
                    println!("most called, {name} (calls per delivery):");
                    for (query, calls) in top {
                        let query: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
                        println!("  {:.3}  {}", per(work, *calls), query.chars().take(100).collect::<String>());
                    }
                }
            }
            _ => println!("| statements | pg_stat_statements not loaded | | |"),
        }
    }
}

/// CPU seconds of this machine's `postgres` processes (none: the server is elsewhere).
fn postgres_cpu() -> Option<f64> {
    let processes = std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| crate::process::cpu_of(&e.path()));
    let seconds: Vec<f64> = processes.filter(|(name, _)| name == "postgres").map(|(_, s)| s).collect();
    (!seconds.is_empty()).then(|| seconds.iter().sum())
}

/// The PostgreSQL server the benchmark makes its databases on.
struct Server {
    client: tokio_postgres::Client,
    base: String,
    version: String,
}

struct Database {
    name: String,
    url: String,
}

impl Server {
    async fn connect(url: &str) -> anyhow::Result<Server> {
        let (client, connection) =
            tokio_postgres::connect(url, NoTls).await.context("cannot connect to the benchmark's PostgreSQL")?;
        tokio::spawn(connection);
        let version = client.query_one("SHOW server_version", &[]).await?.get::<_, String>(0);
        let base = url.rsplit_once('/').map_or(url, |(base, _)| base).to_owned();
        Ok(Server { client, base, version })
    }

    async fn create(&self) -> anyhow::Result<Database> {
        let name = format!("meshgate_bench_{}", uuid::Uuid::now_v7().simple());
        self.client.batch_execute(&format!("CREATE DATABASE {name}")).await.context("cannot create a database")?;
        Ok(Database { url: format!("{}/{name}", self.base), name })
    }

    /// Starts measuring the database's work: statements' counts reset, the server's CPU noted.
    async fn work_start(&self) -> anyhow::Result<WorkStart> {
        let statements = self.client.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await.is_ok()
            && self.client.batch_execute("SELECT pg_stat_statements_reset()").await.is_ok();
        Ok(WorkStart { cpu_seconds: postgres_cpu(), statements })
    }

    /// The database's work in `db` since `start`.
    async fn work_since(&self, start: WorkStart, db: &Database) -> anyhow::Result<DbWork> {
        let cpu_seconds = postgres_cpu().zip(start.cpu_seconds).map(|(now, then)| now - then);
        let statements = if start.statements {
            let of_db = "dbid = (SELECT oid FROM pg_database WHERE datname = $1)";
            let sums = self
                .client
                .query_one(
                    &format!(
                        "SELECT COALESCE(sum(calls), 0)::float8, COALESCE(sum(total_exec_time), 0)::float8
                         FROM pg_stat_statements WHERE {of_db}"
                    ),
                    &[&db.name],
                )
                .await?;
            let top = self
                .client
                .query(
                    &format!(
                        "SELECT query, calls::float8 FROM pg_stat_statements WHERE {of_db} ORDER BY calls DESC LIMIT 6"
                    ),
                    &[&db.name],
                )
                .await?
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, f64>(1)))
                .collect();
            Some(Statements { calls: sums.get(0), exec_ms: sums.get(1), top })
        } else {
            None
        };
        let (client, connection) = tokio_postgres::connect(&db.url, NoTls).await?;
        tokio::spawn(connection);
        let deliveries = client
            .query_one("SELECT count(*) FROM meshgate_events WHERE type = 'WebhookReceived'", &[])
            .await?
            .get::<_, i64>(0);
        Ok(DbWork { deliveries: deliveries as u64, cpu_seconds, statements })
    }

    async fn drop(&self, db: Database) -> anyhow::Result<()> {
        self.client.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", db.name)).await?;
        Ok(())
    }
}
