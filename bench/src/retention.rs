//! How big the log gets per thousand builds, and what `meshgate log archive` makes of it: a real
//! gateway (`meshgate serve`, SQLite) with a chat sink (a stand-in answering 200) and a real agent
//! (`meshgate worker`) run `--builds` builds of a script that prints a short build log: each issue
//! is built `--builds-per-issue` times (its state moved to the build state again once its last
//! build ended, as after a fix), and each transition is delivered twice (as from a second webhook
//! URL). Measured once every notification is decided and the gateway has stopped: events per
//! build, the log's bytes per thousand builds (file and WAL, and the events' own bytes), the read
//! model's, the build logs', and the archive of every build that may go (the same planner and
//! writer as the command: each issue's latest build stays).
//!
//! ```sh
//! cargo build --release -p meshgate -p meshgate-bench && ./target/release/meshgate-bench retention --builds 1000
//! ```
//!
//! The test suite runs `--builds 5` in the test profile, so it keeps working; it checks its own
//! answers (every build succeeded, every delivery acknowledged, the archive reads back).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate::store::LogReader;

use crate::live_log::{binary, gateway, token, Running};

#[derive(Debug, clap::Args)]
pub struct RetentionArgs {
    /// Builds to run.
    #[arg(long, default_value_t = 1000)]
    builds: usize,
    /// Lines each build prints (about 100 bytes each).
    #[arg(long, default_value_t = 300)]
    lines: usize,
    /// Builds of each issue, one after the other.
    #[arg(long, default_value_t = 3)]
    builds_per_issue: usize,
}

/// Bytes under `path` (a file or a folder).
fn bytes_under(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(path).map(|d| d.filter_map(Result::ok).map(|e| bytes_under(&e.path())).sum()).unwrap_or(0)
}

/// The log's file and its WAL.
fn log_bytes(log: &Path) -> u64 {
    bytes_under(log) + bytes_under(&log.with_extension("sqlite-wal"))
}

/// The chat sink's stand-in: answers every post 200 and counts them.
async fn chat_stand_in() -> (String, Arc<AtomicU64>) {
    let posts = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&posts);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, posts)
}

/// The outbox's pending notifications, as the gateway's metrics say.
async fn outbox_pending(http: &reqwest::Client, metrics: &str) -> Option<u64> {
    let text = http.get(metrics).send().await.ok()?.text().await.ok()?;
    let line = text.lines().find(|l| l.starts_with("meshgate_outbox_pending"))?;
    line.rsplit(' ').next()?.parse::<f64>().ok().map(|v| v as u64)
}

pub async fn run(args: RetentionArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let (hook, posts) = chat_stand_in().await;
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    std::fs::write(
        dir.join("meshgate.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n\
             [[chat]]\nname = \"team\"\nkind = \"generic\"\nurl = \"{hook}\"\n\n\
             [[triggers]]\nname = \"app\"\nfield = \"State\"\nto = [\"Building\"]\nscript = \"app\"\ngit_ref = \"main\"\n"
        ),
    )?;
    let lines = args.lines;
    std::fs::write(
        dir.join("scripts.toml"),
        format!(
            "[scripts.app]\ncommand = [\"sh\", \"-c\", \"i=0; while [ $i -lt {lines} ]; do i=$((i+1)); \
             echo \\\"CompileSwift normal arm64 /src/App/Sources/Feature$i/View$i.swift (in target App from project App)\\\"; done\"]\n"
        ),
    )?;
    let (gw, base) = gateway(dir);
    let http = meshgate::tls::client(reqwest::Client::builder(), None)?;
    let agent = Command::new(binary())
        .args(["worker", "--gateway", &base, "--node-id", "mac-1", "--claim-wait", "5"])
        .args(["--token-file", dir.join("data/secrets/nodes.token").to_str().unwrap()])
        .args(["--scripts", dir.join("scripts.toml").to_str().unwrap()])
        .args(["--work-dir", dir.join("work").to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut agent = Running(agent);
    let said = BufReader::new(agent.0.stdout.take().expect("piped"));
    let per_issue = args.builds_per_issue.max(1);
    let issues = (args.builds / per_issue).max(1);
    let builds = issues * per_issue;
    let (reported_tx, mut reported) = tokio::sync::mpsc::unbounded_channel();
    let reader = std::thread::spawn(move || {
        for line in said.lines().map_while(Result::ok) {
            if line.starts_with("finished ") {
                assert!(line.ends_with(" succeeded"), "every build succeeds: {line}");
            }
            if line.starts_with("reported ") {
                assert!(line.ends_with(" accepted"), "every result is taken: {line}");
                let _ = reported_tx.send(());
            }
        }
    });

    let started = Instant::now();
    let webhook = token(dir, "webhook.token");
    let body = include_str!("../../fixtures/youtrack/demo-issueUpdated-state-building.json");
    let template: serde_json::Value = serde_json::from_str(body)?;
    let updated = template["updated"].as_i64().unwrap_or(1_795_856_400_000);
    for round in 0..per_issue {
        for n in 0..issues {
            let mut delivery = template.clone();
            delivery["id"] = format!("DEMO-{}", n + 1).into();
            // A later transition of the same issue: a new build, not a copy of the last one.
            delivery["updated"] = (updated + round as i64 * 3_600_000).into();
            let delivery = delivery.to_string();
            // Twice: the second is folded into the build the first made.
            for _ in 0..2 {
                let answer = http
                    .post(format!("{base}/youtrack/webhook"))
                    .header("X-YouTrack-Token", &webhook)
                    .header("Content-Type", "application/json")
                    .body(delivery.clone())
                    .send()
                    .await?;
                anyhow::ensure!(answer.status() == 200, "a delivery was refused: {}", answer.status());
            }
        }
        // The round's builds ended before the issues move again.
        for _ in 0..issues {
            reported.recv().await.ok_or_else(|| anyhow::anyhow!("the agent ended before every build was reported"))?;
        }
    }
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    // Every notification decided (the outbox empty), or a minute passed.
    let waited = Instant::now();
    while outbox_pending(&http, &metrics).await != Some(0) && waited.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    drop(agent);
    let _ = reader.join();
    let stopped = Command::new("kill").args(["-TERM", &gw.0.id().to_string()]).status()?;
    anyhow::ensure!(stopped.success(), "cannot stop the gateway");
    let mut gw = gw;
    gw.0.wait()?;

    let data = dir.join("data");
    let log = data.join("events.sqlite");
    let conn = rusqlite::Connection::open(&log)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let (events, data_bytes): (u64, u64) =
        conn.query_row("SELECT count(*), coalesce(sum(length(data)), 0) FROM events", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    drop(conn);
    let file = log_bytes(&log);
    let readmodel = bytes_under(&log.with_extension("readmodel.sqlite"));
    let build_logs = bytes_under(&data.join("logs"));
    let index = bytes_under(&log.with_extension("streams"));

    // The archive of every finished build, as `meshgate log archive` writes it.
    let reader = meshgate::store::sqlite::Reader::open(&log)?;
    let head = reader.last_position().await?;
    let cut = chrono::Utc::now() + chrono::Duration::seconds(1);
    let plan = meshgate::store::archive::plan(&reader, head, cut).await?;
    let archive = meshgate::store::archive::write(&reader, &plan, cut, &dir.join("archives")).await?;
    let header = meshgate::store::archive::verify(&archive)?;
    anyhow::ensure!(plan.unfinished == 0, "every build finished: {plan:?}");
    anyhow::ensure!(plan.builds.len() + plan.current + plan.last == builds, "each build planned once: {plan:?}");
    let archive_bytes = meshgate::store::archive::size(&archive);

    let per_k = |bytes: u64| bytes as f64 * 1000.0 / builds as f64 / 1_048_576.0;
    println!(
        "{builds} builds ({issues} issues built {per_issue} times, each transition delivered twice, {lines} log lines, \
         one chat sink: {} posts) in {:.1} s",
        posts.load(Ordering::Relaxed),
        elapsed.as_secs_f64()
    );
    println!(
        "events: {events} ({:.1} per build), their data {:.2} MiB per 1000 builds",
        events as f64 / builds as f64,
        per_k(data_bytes)
    );
    println!(
        "log file (events.sqlite and WAL): {:.2} MiB per 1000 builds ({} bytes per event)",
        per_k(file),
        file / events.max(1)
    );
    println!("stream index: {:.2} MiB per 1000 builds; read model: {:.2} MiB", per_k(index), per_k(readmodel));
    println!("build logs: {:.2} MiB per 1000 builds", per_k(build_logs));
    println!(
        "archive of {} finished builds, each issue's latest kept ({} events, {:.0} % of the log's events): {:.2} MiB per \
         1000 builds ({:.1} % of the log file)",
        header.builds,
        header.events,
        header.events as f64 * 100.0 / events.max(1) as f64,
        per_k(archive_bytes),
        archive_bytes as f64 * 100.0 / file.max(1) as f64
    );
    Ok(())
}
