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
    let on_one = measure(&[&one], clients, seconds, leave).await?;
    one.stop().await?;
    server.drop(db).await?;
    report("PostgreSQL, one gateway", &on_one);

    let db = server.create().await?;
    let (a, b) = (
        BenchServer::start_with(|c| shared(c, &db.url)).await?,
        BenchServer::start_with(|c| shared(c, &db.url)).await?,
    );
    let loaded: &[&BenchServer] = if load_on_one { &[&a] } else { &[&a, &b] };
    let on_two = measure(loaded, clients, seconds, leave).await?;
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

    async fn drop(&self, db: Database) -> anyhow::Result<()> {
        self.client.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", db.name)).await?;
        Ok(())
    }
}
