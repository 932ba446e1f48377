//! What the live log costs: a real gateway (`meshgate serve`) and a real agent (`meshgate worker`)
//! run a build whose script prints `--mb` megabytes at `--rate` megabytes a second, while a reader
//! follows the build's log over HTTP. Measured: the delay from a line being written to it being
//! readable through the gateway (p50, p99, max), the gateway's and the agent's CPU time over the
//! build, and, for comparison, the gateway's CPU time to take the same log as one upload.
//!
//! ```sh
//! cargo build --release -p meshgate -p meshgate-bench && ./target/release/meshgate-bench live-log --mb 50
//! ```
//!
//! Linux only (CPU time from `/proc`); the test suite runs `--mb 1 --rate 0` once, in the test
//! profile, so it keeps working. It checks its own answers: every line arrives, in order, once,
//! and the stored log is the script's whole output.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bytes per line the script prints (with its newline).
const LINE: usize = 100;

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

/// The build script: `lines` lines of `LINE` bytes, `t=<ns>` first in each, paced to `rate`
/// bytes a second (0: as fast as it can).
fn print(lines: usize, rate: f64) {
    let mut out = std::io::BufWriter::with_capacity(4096, std::io::stdout().lock());
    let started = Instant::now();
    for i in 0..lines {
        let head = format!("t={} n={i} ", now_ns());
        let line = format!("{head}{}\n", "x".repeat(LINE - head.len() - 1));
        out.write_all(line.as_bytes()).unwrap();
        // A line at a time, as a build's output reaches its pipe.
        out.flush().unwrap();
        if rate > 0.0 {
            let due = Duration::from_secs_f64(((i + 1) * LINE) as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = fields.get(11..13).map(|f| f.iter().map(|v| v.parse::<f64>().unwrap_or(0.0)).sum()).unwrap_or(0.0);
    let per_second = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    ticks / per_second
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub(crate) fn binary() -> PathBuf {
    crate::gateway_binary().unwrap_or_else(|e| panic!("{e:#}"))
}

#[derive(Debug, clap::Args)]
pub struct LiveLogArgs {
    /// Megabytes the build prints.
    #[arg(long, default_value_t = 50.0)]
    mb: f64,
    /// Megabytes a second it prints them at (0: as fast as it can).
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Be the build's script: print `--lines` lines at `--bytes-per-second`.
    #[arg(long, hide = true)]
    print: bool,
    #[arg(long, hide = true, default_value_t = 1000)]
    lines: usize,
    #[arg(long, hide = true, default_value_t = 0.0)]
    bytes_per_second: f64,
}

pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `meshgate serve` in `dir` and returns it with its address.
pub(crate) fn gateway(dir: &Path) -> (Running, String) {
    let mut child = Running(
        Command::new(binary())
            .args(["--config", dir.join("meshgate.toml").to_str().unwrap(), "serve"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    for line in stdout.lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("meshgate listening on ") {
            let base = rest.trim_end_matches("/youtrack/webhook").to_owned();
            return (child, base);
        }
    }
    panic!("the gateway did not start");
}

pub(crate) fn token(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("data/secrets/{name}"))).unwrap().trim().to_owned()
}

/// Runs the measurement (or, with `--print`, the build's script). It checks its own answers and
/// panics on a wrong one.
pub async fn run(args: LiveLogArgs) -> anyhow::Result<()> {
    if args.print {
        print(args.lines, args.bytes_per_second);
        return Ok(());
    }
    let (mb, rate_mb) = (args.mb, args.rate);
    let lines = (mb * 1024.0 * 1024.0 / LINE as f64) as usize;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::write(
        dir.join("meshgate.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\n[metrics]\nlisten = \"\"\n\n\
         [[triggers]]\nname = \"big\"\nfield = \"State\"\nto = [\"Building\"]\nscript = \"big\"\ngit_ref = \"main\"\n",
    )
    .unwrap();
    let (gw, base) = gateway(dir);
    let gw_pid = gw.0.id();
    let this = std::env::current_exe().unwrap();
    let rate = rate_mb * 1024.0 * 1024.0;
    std::fs::write(
        dir.join("scripts.toml"),
        format!(
            "[scripts.big]\ncommand = [\"{}\", \"live-log\", \"--print\", \"--lines\", \"{lines}\", \"--bytes-per-second\", \"{rate}\"]\n",
            this.display()
        ),
    )
    .unwrap();
    let http = meshgate::tls::client(reqwest::Client::builder(), None)?;
    let body = include_str!("../../fixtures/youtrack/demo-issueUpdated-state-building.json");
    let delivered = http
        .post(format!("{base}/youtrack/webhook"))
        .header("X-YouTrack-Token", token(dir, "webhook.token"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(delivered.status(), 200);
    let answer: serde_json::Value = delivered.json().await.unwrap();
    let build = answer["build_id"].as_str().expect("a build").to_owned();

    let gw_before = cpu_seconds(gw_pid);
    let mut agent = Command::new(binary())
        .args(["worker", "--gateway", &base, "--node-id", "bench", "--claim-wait", "5"])
        .args(["--token-file", dir.join("data/secrets/nodes.token").to_str().unwrap()])
        .args([
            "--scripts",
            dir.join("scripts.toml").to_str().unwrap(),
            "--work-dir",
            dir.join("work").to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Follow the build's log from its start (the agent says when) to its end.
    let said = BufReader::new(agent.stdout.take().unwrap());
    let agent = Running(agent);
    let agent_pid = agent.0.id();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let said = tokio::task::spawn_blocking(move || {
        let mut lines = said.lines().map_while(Result::ok);
        lines.find(|l| l.starts_with("started")).expect("the agent starts the build");
        let _ = started_tx.send(());
        // Read on, so the agent never blocks on a full pipe.
        lines.for_each(drop);
    });
    started_rx.await.expect("the agent starts the build");
    let admin = token(dir, "admin.token");
    let mut followed =
        http.get(format!("{base}/api/v1/builds/{build}/log?follow=true")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(followed.status(), 200);
    let started = Instant::now();
    let mut delays = Vec::with_capacity(lines);
    let mut pending = Vec::new();
    let mut next = 0usize;
    while let Some(chunk) = followed.chunk().await.unwrap() {
        let arrived = now_ns();
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            let Some(rest) = text.strip_prefix("t=") else { continue };
            let mut parts = rest.split_whitespace();
            let written: u128 = parts.next().unwrap().parse().unwrap();
            let n: usize = parts.next().unwrap().trim_start_matches("n=").parse().unwrap();
            assert_eq!(n, next, "lines arrive in order, each once");
            next += 1;
            delays.push((arrived.saturating_sub(written)) as f64 / 1e6);
        }
    }
    let elapsed = started.elapsed();
    let gw_build = cpu_seconds(gw_pid) - gw_before;
    let agent_cpu = cpu_seconds(agent_pid);
    assert_eq!(next, lines, "every line arrived through the live log");
    drop(agent);
    let _ = said.await;

    // The stored log is the script's whole output (and the node's copy).
    let stored = http.get(format!("{base}/api/v1/builds/{build}/log")).bearer_auth(&admin).send().await.unwrap();
    let stored = stored.bytes().await.unwrap();
    let node = std::fs::read(dir.join(format!("work/logs/{build}-1.log"))).unwrap();
    assert_eq!(stored.len(), node.len(), "the stored log is the node's");
    assert!(stored.len() >= lines * LINE);

    // The same log taken as one upload, for comparison.
    let nodes = token(dir, "nodes.token");
    let upload_before = cpu_seconds(gw_pid);
    let put = http
        .put(format!("{base}/api/v1/builds/{build}/log?attempt=1"))
        .bearer_auth(&nodes)
        .body(node)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let upload = cpu_seconds(gw_pid) - upload_before;
    drop(gw);

    delays.sort_by(f64::total_cmp);
    let mib = (lines * LINE) as f64 / (1024.0 * 1024.0);
    println!("live log: {mib:.1} MiB in {lines} lines at {rate_mb} MiB/s, followed for {:.1} s", elapsed.as_secs_f64());
    println!(
        "delay written → readable: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "gateway CPU over the build: {gw_build:.2} s ({:.1} ms per MiB, {:.1} % of one core); agent: {agent_cpu:.2} s",
        gw_build * 1000.0 / mib,
        gw_build * 100.0 / elapsed.as_secs_f64()
    );
    println!("gateway CPU to take the same log as one upload: {upload:.2} s");
    Ok(())
}
