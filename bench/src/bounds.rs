//! `meshgate-bench bounds`: the gateway beside the two servers that bound what it can do on this
//! machine, each taking the same load in one run, so that their ratios hold whatever the machine's
//! state that hour.
//!
//! - **no-op**: the same HTTP stack (axum over hyper, one worker thread fewer than cores), the
//!   token checked as the gateway checks it and the body parsed as JSON; nothing stored.
//! - **plain group commit**: the same, and one SQLite row per request (the body) appended by a
//!   writer thread that commits whatever is waiting in one transaction (`synchronous=FULL`, WAL),
//!   each request answered after the commit holding it.
//! - **meshgate**: the gateway as the ingest measurement runs it (group commit, metrics on, live
//!   projections), with deliveries that each start a build.
//!
//! The load is the ingest measurement's: keep-alive connections posting distinct deliveries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use clap::Args;
use meshgate::secrets::{Token, TokenSet};
use tokio::sync::{mpsc, oneshot};

use crate::ingest::{load, IngestResult};
use crate::server::BenchServer;

#[derive(Debug, Args)]
pub struct BoundsArgs {
    /// Concurrent clients (keep-alive connections).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of measured load per server (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds: each round measures the three servers in turn and reports their ratios.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

pub async fn run(args: BoundsArgs) -> anyhow::Result<()> {
    let mut results: Vec<[IngestResult; 3]> = Vec::new();
    for round in 1..=args.rounds {
        let noop = measure(Bound::Noop, &args).await?;
        let plain = measure(Bound::GroupCommit, &args).await?;
        let meshgate = measure_gateway(&args).await?;
        eprintln!(
            "round {round}: no-op {:.0}/s, plain group commit {:.0}/s, meshgate {:.0}/s",
            noop.rate(),
            plain.rate(),
            meshgate.rate()
        );
        results.push([noop, plain, meshgate]);
    }
    println!("| round | server | accepted/s | p50 | p99 | errors |");
    println!("|---|---|---:|---:|---:|---:|");
    for (round, servers) in results.iter().enumerate() {
        for (name, r) in ["no-op", "plain group commit", "meshgate"].iter().zip(servers) {
            println!(
                "| {} | {name} | {:.0} | {:.2} ms | {:.2} ms | {} |",
                round + 1,
                r.rate(),
                r.percentile(0.5),
                r.percentile(0.99),
                r.errors
            );
        }
    }
    for (round, [noop, plain, meshgate]) in results.iter().enumerate() {
        println!(
            "round {}: meshgate / no-op {:.2}x, meshgate / plain group commit {:.2}x",
            round + 1,
            meshgate.rate() / noop.rate(),
            meshgate.rate() / plain.rate()
        );
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Bound {
    Noop,
    GroupCommit,
}

struct Bounding {
    tokens: TokenSet,
    log: Option<mpsc::UnboundedSender<(Bytes, oneshot::Sender<bool>)>>,
}

async fn measure(bound: Bound, args: &BoundsArgs) -> anyhow::Result<IngestResult> {
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("webhook.token");
    meshgate::secrets::generate_token_file(&token_file, 0o400)?;
    let token = Token::read(&token_file)?;
    let log = match bound {
        Bound::Noop => None,
        Bound::GroupCommit => Some(writer(&dir.path().join("plain.sqlite"))?),
    };
    let state = Arc::new(Bounding { tokens: TokenSet::new(std::slice::from_ref(&token)), log });
    let token = token.expose().to_owned();
    let app = Router::new().route("/youtrack/webhook", post(accept)).with_state(state);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    let (mut latencies_us, errors, elapsed) = load(addr, token, args.clients, args.seconds, 0, false).await?;
    latencies_us.sort_unstable();
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server).await???;
    Ok(IngestResult { latencies_us, errors, elapsed })
}

async fn measure_gateway(args: &BoundsArgs) -> anyhow::Result<IngestResult> {
    let server = BenchServer::start(true).await?;
    let (mut latencies_us, errors, elapsed) =
        load(server.addr, server.webhook_token.clone(), args.clients, args.seconds, 0, false).await?;
    latencies_us.sort_unstable();
    server.stop().await?;
    Ok(IngestResult { latencies_us, errors, elapsed })
}

/// The bounds' handler: the token checked in constant time before the body is read, the body
/// parsed as JSON, and (with a log) appended and committed before the answer.
async fn accept(State(state): State<Arc<Bounding>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let presented = headers.get("x-youtrack-token").map(|v| v.as_bytes()).unwrap_or_default();
    if !state.tokens.verify(presented) {
        return StatusCode::UNAUTHORIZED;
    }
    if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return StatusCode::BAD_REQUEST;
    }
    let Some(log) = &state.log else { return StatusCode::OK };
    let (done, committed) = oneshot::channel();
    if log.send((body, done)).is_err() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match committed.await {
        Ok(true) => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The plain group-commit log: a thread appending each request's body as a row, every request
/// waiting at the time in one transaction, answering each after its commit.
fn writer(path: &std::path::Path) -> anyhow::Result<mpsc::UnboundedSender<(Bytes, oneshot::Sender<bool>)>> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch("CREATE TABLE log (position INTEGER PRIMARY KEY, body BLOB NOT NULL)")?;
    let (send, mut receive) = mpsc::unbounded_channel::<(Bytes, oneshot::Sender<bool>)>();
    std::thread::Builder::new().name("plain-writer".into()).spawn(move || {
        let mut batch = Vec::new();
        while let Some(first) = receive.blocking_recv() {
            batch.push(first);
            while let Ok(next) = receive.try_recv() {
                batch.push(next);
            }
            let committed = (|| {
                let tx = conn.unchecked_transaction()?;
                {
                    let mut insert = tx.prepare_cached("INSERT INTO log (body) VALUES (?1)")?;
                    for (body, _) in &batch {
                        insert.execute([&body[..]])?;
                    }
                }
                tx.commit()
            })()
            .is_ok();
            for (_, done) in batch.drain(..) {
                let _ = done.send(committed);
            }
        }
    })?;
    Ok(send)
}
