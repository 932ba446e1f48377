//! Running one claimed build: the script under a timeout, with heartbeats, its output captured to
//! a log file, then the result read from what it left behind.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

use super::client::{Claim, GatewayError, ResultBody};
use super::output::{failing_test_in_junit, failing_test_in_log, log_tail};
use super::Worker;

/// Bytes of log carried in a result.
const TAIL_BYTES: usize = 4096;

enum Ended {
    Exited(Option<i32>),
    TimedOut,
    Cancelled,
    Drained,
    /// The gateway refused a heartbeat: this attempt is no longer ours.
    LeaseLost,
}

/// Runs a claimed build and returns the result to report (the log is uploaded here).
pub async fn run_build(worker: &Worker, claim: &Claim) -> ResultBody {
    let build = &claim.build;
    let started = Instant::now();
    let dir = build_dir(&worker.work_dir, claim);
    let log_path = worker.work_dir.join("logs").join(format!("{}-{}.log", build.build_id, claim.attempt));
    let result_dir = dir.join(".meshgate");
    let mut result = ResultBody {
        node_id: worker.node_id.clone(),
        attempt: claim.attempt,
        outcome: "failed".into(),
        reason: None,
        exit_code: None,
        duration_ms: 0,
        commit_sha: None,
        failing_test: None,
        log_tail: String::new(),
    };

    let ended = match worker.scripts.get(&build.script) {
        None => {
            let message = format!("script `{}` is not configured on node {}\n", build.script, worker.node_id);
            let _ = write_log(&log_path, message.as_bytes());
            result.reason = Some("unknown_script".into());
            None
        }
        Some(script) => match spawn(worker, claim, &script.command, &dir, &result_dir, &log_path) {
            Ok(child) => {
                println!("started {} attempt {}", build.build_id, claim.attempt);
                Some(supervise(worker, claim, child, Duration::from_secs(script.timeout_seconds)).await)
            }
            Err(e) => {
                let _ = write_log(&log_path, format!("cannot start the script: {e}\n").as_bytes());
                result.reason = Some("script_not_started".into());
                None
            }
        },
    };
    match ended {
        Some(Ended::Exited(Some(0))) => {
            result.outcome = "succeeded".into();
            result.exit_code = Some(0);
        }
        Some(Ended::Exited(code)) => {
            result.exit_code = code;
            result.reason = Some("script_failed".into());
        }
        Some(Ended::TimedOut) => result.reason = Some("timeout".into()),
        Some(Ended::Cancelled | Ended::Drained | Ended::LeaseLost) => result.outcome = "cancelled".into(),
        None => {}
    }
    result.duration_ms = started.elapsed().as_millis() as u64;

    let log = tokio::fs::read(&log_path).await.unwrap_or_default();
    result.log_tail = log_tail(&log, TAIL_BYTES);
    let junit = worker.scripts.get(&build.script).and_then(|s| s.junit.as_ref()).map(|j| dir.join(j));
    result.failing_test = match junit.and_then(|p| std::fs::read_to_string(p).ok()) {
        Some(xml) => failing_test_in_junit(&xml),
        None => failing_test_in_log(&String::from_utf8_lossy(&log)),
    };
    if result.outcome == "succeeded" {
        result.failing_test = None;
    }
    result.commit_sha = commit_sha(&dir, &result_dir).await;
    for n in 0..3 {
        match worker.gateway.upload_log(build.build_id, claim.attempt, log.clone()).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(build_id = %build.build_id, error = %e, "log upload failed");
                tokio::time::sleep(super::client::backoff(n, Duration::from_millis(200), Duration::from_secs(5))).await;
            }
        }
    }
    println!("finished {} attempt {} {}", build.build_id, claim.attempt, result.outcome);
    result
}

fn write_log(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, bytes)
}

fn spawn(
    worker: &Worker,
    claim: &Claim,
    command: &[String],
    dir: &Path,
    result_dir: &Path,
    log_path: &Path,
) -> std::io::Result<tokio::process::Child> {
    std::fs::create_dir_all(result_dir)?;
    write_log(log_path, b"")?;
    let log = std::fs::OpenOptions::new().append(true).open(log_path)?;
    let build = &claim.build;
    Command::new(&command[0])
        .args(&command[1..])
        .current_dir(dir)
        .env("MESHGATE_BUILD_ID", build.build_id.to_string())
        .env("MESHGATE_ISSUE_ID", &build.issue_id)
        .env("MESHGATE_ISSUE_SUMMARY", build.summary.as_deref().unwrap_or_default())
        .env("MESHGATE_GIT_REF", &build.git_ref)
        .env("MESHGATE_PROJECT", &build.project)
        .env("MESHGATE_ATTEMPT", claim.attempt.to_string())
        .env("MESHGATE_NODE_ID", &worker.node_id)
        .env("MESHGATE_RESULT_DIR", result_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        // Its own process group, so a timeout or cancellation stops everything it started.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
}

async fn supervise(worker: &Worker, claim: &Claim, mut child: tokio::process::Child, timeout: Duration) -> Ended {
    let build_id = claim.build.build_id;
    let every = Duration::from_millis((claim.lease_seconds.max(1) as u64 * 1000) / 3).max(Duration::from_millis(200));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut draining = worker.draining.clone();
    let ended = loop {
        tokio::select! {
            status = child.wait() => break Ended::Exited(status.ok().and_then(|s| s.code())),
            _ = heartbeat.tick() => match worker.gateway.heartbeat(build_id, &worker.node_id, claim.attempt).await {
                Ok(false) => {}
                Ok(true) => break Ended::Cancelled,
                Err(GatewayError::Status { status, .. }) if status.as_u16() == 409 => break Ended::LeaseLost,
                // Unreachable: keep building; the result is spooled and delivered later.
                Err(e) => tracing::warn!(%build_id, error = %e, "heartbeat failed"),
            },
            _ = &mut deadline => break Ended::TimedOut,
            _ = async { let _ = draining.wait_for(|d| d.is_some_and(|at| at <= tokio::time::Instant::now())).await; } => break Ended::Drained,
        }
    };
    if !matches!(ended, Ended::Exited(_)) {
        kill_group(&mut child).await;
    }
    ended
}

async fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status().await;
    }
    let _ = child.kill().await;
}

/// The commit a build built: `.meshgate/commit-sha` if the script wrote one, else `git rev-parse
/// HEAD` in the work dir.
async fn commit_sha(dir: &Path, result_dir: &Path) -> Option<String> {
    let valid = |s: &str| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Ok(text) = tokio::fs::read_to_string(result_dir.join("commit-sha")).await {
        let sha = text.trim().to_ascii_lowercase();
        if valid(&sha) {
            return Some(sha);
        }
    }
    let output = Command::new("git").arg("-C").arg(dir).args(["rev-parse", "HEAD"]).output().await.ok()?;
    let sha = String::from_utf8_lossy(&output.stdout).trim().to_ascii_lowercase();
    (output.status.success() && valid(&sha)).then_some(sha)
}

/// Where a build runs.
pub fn build_dir(work_dir: &Path, claim: &Claim) -> PathBuf {
    work_dir.join(format!("{}-{}", claim.build.build_id, claim.attempt))
}
