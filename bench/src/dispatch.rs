//! Dispatch latency (a webhook's 200 to the claiming node receiving the build, with idle nodes
//! long-polling) and claim throughput (nodes claiming and reporting as fast as they can).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::server::{body, BenchServer};

/// A node that claims, hands each build to `received` with the moment it arrived, reports it
/// succeeded, and claims again, until `received` is closed.
pub(crate) async fn node(
    client: reqwest::Client,
    base: String,
    token: String,
    id: String,
    received: mpsc::UnboundedSender<(String, Instant)>,
) {
    loop {
        let claim = client
            .post(format!("{base}/api/v1/nodes/claim"))
            .bearer_auth(&token)
            .json(&json!({"node_id": id, "slots": 1, "wait_seconds": 1}))
            .send()
            .await;
        let Ok(response) = claim else { return };
        if response.status() != 200 {
            if received.is_closed() {
                return;
            }
            continue;
        }
        let at = Instant::now();
        let Ok(claim) = response.json::<Value>().await else { return };
        let build_id = claim["build"]["build_id"].as_str().unwrap_or_default().to_owned();
        let attempt = claim["attempt"].as_u64().unwrap_or(1);
        if received.send((build_id.clone(), at)).is_err() {
            return;
        }
        let _ = client
            .post(format!("{base}/api/v1/builds/{build_id}/result"))
            .bearer_auth(&token)
            .json(&json!({"node_id": id, "attempt": attempt, "outcome": "succeeded", "duration_ms": 1}))
            .send()
            .await;
    }
}

/// `n` node tasks, each handing what it claims to `received`.
pub(crate) fn spawn_nodes(
    n: usize,
    client: &reqwest::Client,
    base: &str,
    token: &str,
    received: &mpsc::UnboundedSender<(String, Instant)>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let task = node(client.clone(), base.to_owned(), token.to_owned(), format!("node-{i}"), received.clone());
            tokio::spawn(task)
        })
        .collect()
}

/// Posts delivery `n` (a distinct change that enqueues one build).
pub(crate) async fn post_delivery(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    n: u64,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{base}/youtrack/webhook"))
        .header("X-YouTrack-Token", token)
        .header("Content-Type", "application/json")
        .body(body(n))
        .send()
        .await
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

/// One webhook at a time; `nodes` idle nodes wait for it.
pub async fn dispatch(builds: u64, nodes: usize) -> anyhow::Result<()> {
    let server = BenchServer::start(true).await?;
    let base = format!("http://{}", server.addr);
    let client = meshgate::tls::client(reqwest::Client::builder(), None)?;
    let (tx, mut received) = mpsc::unbounded_channel();
    let tasks = spawn_nodes(nodes, &client, &base, &server.nodes_token, &tx);
    drop(tx);
    let mut latencies = Vec::with_capacity(builds as usize);
    for n in 0..builds {
        let response = post_delivery(&client, &base, &server.webhook_token, n).await?;
        let accepted_at = Instant::now();
        let answer: Value = response.json().await?;
        let build_id = answer["build_id"].as_str().unwrap_or_default().to_owned();
        let Some((claimed, at)) = received.recv().await else { anyhow::bail!("every node stopped") };
        anyhow::ensure!(claimed == build_id, "a node received {claimed}, expected {build_id}");
        latencies.push(at.saturating_duration_since(accepted_at));
    }
    received.close();
    for task in tasks {
        let _ = task.await;
    }
    server.stop().await?;
    latencies.sort();
    println!();
    println!(
        "dispatch: {builds} builds, {nodes} idle nodes: p50 {:.2} ms, p99 {:.2} ms (webhook 200 → node has the build)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    Ok(())
}

/// `builds` queued builds, then `nodes` nodes claiming and reporting as fast as they can.
pub async fn claims(builds: u64, nodes: usize) -> anyhow::Result<()> {
    let server = BenchServer::start(true).await?;
    let base = format!("http://{}", server.addr);
    let client = meshgate::tls::client(reqwest::Client::builder(), None)?;
    let posted = Arc::new(AtomicU64::new(0));
    let posters: Vec<_> = (0..8)
        .map(|_| {
            let (client, base, token, posted) =
                (client.clone(), base.clone(), server.webhook_token.clone(), posted.clone());
            tokio::spawn(async move {
                loop {
                    let n = posted.fetch_add(1, Ordering::Relaxed);
                    if n >= builds {
                        return;
                    }
                    let _ = post_delivery(&client, &base, &token, 1_000_000 + n).await;
                }
            })
        })
        .collect();
    for poster in posters {
        poster.await?;
    }
    let (tx, mut received) = mpsc::unbounded_channel();
    let started = Instant::now();
    let tasks = spawn_nodes(nodes, &client, &base, &server.nodes_token, &tx);
    drop(tx);
    let mut claimed = 0;
    while claimed < builds {
        if received.recv().await.is_none() {
            break;
        }
        claimed += 1;
    }
    let elapsed = started.elapsed();
    received.close();
    for task in tasks {
        let _ = task.await;
    }
    server.stop().await?;
    println!(
        "claims: {claimed} builds claimed and reported by {nodes} nodes in {:.2} s = {:.0} claims/s",
        elapsed.as_secs_f64(),
        claimed as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
