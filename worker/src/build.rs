//! Running one claimed build: the `before_build` hook, the script and the `after_build` hook,
//! each in a process group of its own, with the build's facts in their environment, under the
//! build's timeout, hang detection, cancellation, lease loss and drain; heartbeats all the while;
//! the log sent live; then the result read from what was left behind, the artifacts and the whole
//! log uploaded, and the result returned to be spooled and reported.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use meshgate_domain::node_api::{
    ClaimAnswer, FailureReason, HeartbeatRequest, Outcome, ResultRequest, Stop, StopCause, MAX_LOG_TAIL_BYTES,
    MAX_NOTE_BYTES,
};
use meshgate_domain::xcode::{Requirement, Xcode};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::artifacts::{self, Upload};
use crate::findings::{commit_sha, failing_test_in_file, failing_test_in_junit, file_tail};
use crate::gateway::{backoff, Gateway};
use crate::group::{self, Group};
use crate::live_log::{LiveLog, Target};
use crate::output::Log;
use crate::scripts::{Script, Scripts};

/// How long the end of a process's output is waited for once its group is gone.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// Tries of the final log upload while the gateway is unreachable or restarting.
const LOG_UPLOAD_TRIES: u32 = 8;

/// What every build of this agent shares.
pub struct Node {
    pub node_id: String,
    pub gateway: Gateway,
    pub scripts: Scripts,
    pub xcodes: Vec<Xcode>,
    /// Absolute.
    pub work_dir: PathBuf,
    /// Set on SIGTERM: when running builds are stopped.
    pub draining: watch::Receiver<Option<Instant>>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Exited(Option<i32>),
    Stopped(Stop),
}

/// What may stop a running process, besides its own end.
struct Bounds {
    deadline: Instant,
    no_output: Option<Duration>,
    grace: Duration,
    /// The lease's verdict: cancelled, or lost.
    lease: watch::Receiver<Option<StopCause>>,
    draining: Option<watch::Receiver<Option<Instant>>>,
}

/// Where a build runs and what it is told.
struct Place {
    dir: PathBuf,
    result_dir: PathBuf,
    env: Vec<(String, String)>,
}

/// Runs a claimed build and returns the result to report (the log and artifacts are uploaded
/// here, before it).
pub async fn run_build(node: &Node, claim: &ClaimAnswer) -> ResultRequest {
    let build = &claim.build;
    let started = std::time::Instant::now();
    let mut result = ResultRequest {
        node_id: node.node_id.clone(),
        attempt: claim.attempt,
        outcome: Outcome::Failed,
        reason: None,
        exit_code: None,
        duration_ms: 0,
        commit_sha: None,
        failing_test: None,
        log_tail: String::new(),
        stop: None,
        no_output_seconds: None,
        retry_rule: None,
        after_build: None,
        artifacts_skipped: 0,
    };
    let log_path = node.work_dir.join("logs").join(format!("{}-{}.log", build.build_id, claim.attempt));
    let log = match Log::create(&log_path) {
        Ok(log) => log,
        Err(e) => {
            tracing::error!(path = %log_path.display(), error = %e, "cannot create a build log");
            result.reason = Some(FailureReason::ScriptNotStarted);
            return result;
        }
    };
    let (lease, heartbeats) = heartbeat(node, claim);
    let live = LiveLog::start(
        Target {
            gateway: node.gateway.clone(),
            build_id: build.build_id,
            node_id: node.node_id.clone(),
            attempt: claim.attempt,
        },
        log.clone(),
    );

    let ran = run_steps(node, claim, &log, lease.clone(), &mut result).await;
    result.duration_ms = started.elapsed().as_millis() as u64;

    if let Some(place) = &ran {
        if result.outcome != Outcome::Succeeded {
            let script = node.scripts.get(&build.script);
            let junit = script.and_then(|s| s.junit.as_ref()).map(|j| place.dir.join(j));
            result.failing_test = junit
                .and_then(|p| std::fs::read_to_string(p).ok())
                .and_then(|xml| failing_test_in_junit(&xml))
                .or_else(|| failing_test_in_file(log.path()))
                .map(|t| truncate(&t, meshgate_domain::node_api::MAX_FAILING_TEST_BYTES));
        }
        result.commit_sha = commit_sha(&place.dir, &place.result_dir).await;
    }
    live.finish().await;
    let lost = matches!(result.stop, Some(Stop { cause: StopCause::LeaseLost, .. }));
    if let (Some(place), false) = (&ran, lost) {
        if claim.limits.max_artifact_bytes > 0 {
            let globs = node.scripts.get(&build.script).map(|s| s.artifacts.clone()).unwrap_or_default();
            let found = artifacts::collect(&place.result_dir, &place.dir, &globs, &log);
            if !found.is_empty() {
                let upload = Upload {
                    gateway: &node.gateway,
                    build_id: build.build_id,
                    node_id: &node.node_id,
                    attempt: claim.attempt,
                    max_bytes: claim.limits.max_artifact_bytes,
                };
                result.artifacts_skipped = upload.run(found, &log).await.skipped;
            }
        }
    }
    result.log_tail = file_tail(log.path(), MAX_LOG_TAIL_BYTES);
    if !lost {
        upload_log(node, claim, log.path()).await;
    }
    heartbeats.abort();
    println!("finished {} attempt {} {}", build.build_id, claim.attempt, result.outcome.as_str());
    result
}

/// The hooks and the script; `None` when nothing ran (the script or its Xcode is missing).
async fn run_steps(
    node: &Node,
    claim: &ClaimAnswer,
    log: &Log,
    lease: watch::Receiver<Option<StopCause>>,
    result: &mut ResultRequest,
) -> Option<Place> {
    let build = &claim.build;
    let Some(script) = node.scripts.get(&build.script) else {
        log.note(&format!("script `{}` is not configured on node {}", build.script, node.node_id));
        result.reason = Some(FailureReason::UnknownScript);
        return None;
    };
    let xcode = match build.xcode.as_deref().map(Requirement::parse) {
        None => None,
        Some(Ok(required)) => match required.select(&node.xcodes) {
            Some(xcode) => Some(xcode.clone()),
            None => {
                log.note(&format!("no Xcode on node {} meets `{required}`", node.node_id));
                result.reason = Some(FailureReason::NoXcode);
                return None;
            }
        },
        Some(Err(e)) => {
            log.note(&e.to_string());
            result.reason = Some(FailureReason::NoXcode);
            return None;
        }
    };
    let place = match prepare(node, claim, xcode.as_ref()) {
        Ok(place) => place,
        Err(e) => {
            log.note(&format!("cannot prepare the build's folder: {e}"));
            result.reason = Some(FailureReason::ScriptNotStarted);
            return None;
        }
    };
    if let Some(xcode) = &xcode {
        log.note(&format!("Xcode {} at {}", xcode.version, xcode.path));
    }
    let bounds = || Bounds {
        deadline: Instant::now() + Duration::from_secs(script.timeout_seconds),
        no_output: script.no_output_timeout_seconds.map(Duration::from_secs),
        grace: Duration::from_secs(script.stop_grace_seconds),
        lease: lease.clone(),
        draining: Some(node.draining.clone()),
    };
    // The build's timeout covers the hook and the script together.
    let mut limits = bounds();
    limits.no_output = None;
    let before = node.scripts.hooks.before_build.as_ref();
    let set_up = match before {
        None => true,
        Some(command) => {
            let env = with(&place.env, &[("MESHGATE_HOOK", "before_build")]);
            match run_process(log, "before_build", command, &place.dir, &env, &limits).await {
                Ok(Ended::Exited(Some(0))) => true,
                Ok(Ended::Exited(code)) => {
                    log.note(&format!("before_build failed ({}): the script does not run", exit_words(code)));
                    result.reason = Some(FailureReason::SetupFailed);
                    false
                }
                Ok(Ended::Stopped(stop)) => {
                    ended_by_stop(result, stop, FailureReason::SetupFailed, script);
                    false
                }
                Err(e) => {
                    log.note(&format!("before_build could not start: {e}"));
                    result.reason = Some(FailureReason::SetupFailed);
                    false
                }
            }
        }
    };
    if set_up {
        let limits = Bounds { deadline: limits.deadline, ..bounds() };
        println!("started {} attempt {}", build.build_id, claim.attempt);
        match run_process(log, "script", &script.command, &place.dir, &place.env, &limits).await {
            Ok(Ended::Exited(Some(0))) => {
                result.outcome = Outcome::Succeeded;
                result.exit_code = Some(0);
            }
            Ok(Ended::Exited(code)) => {
                result.exit_code = code;
                result.reason = Some(FailureReason::ScriptFailed);
            }
            Ok(Ended::Stopped(stop)) => ended_by_stop(result, stop, FailureReason::ScriptFailed, script),
            Err(e) => {
                let hint =
                    if e.kind() == std::io::ErrorKind::PermissionDenied { " (is it executable? chmod +x)" } else { "" };
                log.note(&format!("cannot start the script {}: {e}{hint}", script.command[0]));
                result.reason = Some(FailureReason::ScriptNotStarted);
            }
        }
    }
    if result.outcome == Outcome::Failed {
        let reason = result.reason.unwrap_or(FailureReason::ScriptFailed);
        let ran_output = matches!(
            reason,
            FailureReason::ScriptFailed | FailureReason::Timeout | FailureReason::Hung | FailureReason::SetupFailed
        );
        if ran_output {
            let file = std::fs::File::open(log.path()).ok();
            let rule = file.and_then(|f| script.retry_rule(result.exit_code, std::io::BufReader::new(f)));
            if let Some(rule) = rule {
                log.note(&format!("the failure matches retry_on `{}`: infrastructure, not the change", rule.text()));
                result.retry_rule = Some(truncate(rule.text(), MAX_NOTE_BYTES));
            }
        }
    }
    if let Some(command) = &node.scripts.hooks.after_build {
        let outcome = result.outcome.as_str();
        let env = with(&place.env, &[("MESHGATE_HOOK", "after_build"), ("MESHGATE_OUTCOME", outcome)]);
        // Clean-up runs whatever happened, under its own bound: not stopped by a cancel or drain.
        let limits = Bounds {
            deadline: Instant::now() + Duration::from_secs(node.scripts.hooks.after_build_timeout_seconds),
            no_output: None,
            grace: Duration::from_secs(script.stop_grace_seconds),
            lease: watch::channel(None).1,
            draining: None,
        };
        let problem = match run_process(log, "after_build", command, &place.dir, &env, &limits).await {
            Ok(Ended::Exited(Some(0))) => None,
            Ok(Ended::Exited(code)) => Some(format!("after_build failed ({})", exit_words(code))),
            Ok(Ended::Stopped(_)) => {
                Some(format!("after_build timed out after {} s", node.scripts.hooks.after_build_timeout_seconds))
            }
            Err(e) => Some(format!("after_build could not start: {e}")),
        };
        if let Some(problem) = problem {
            log.note(&problem);
            result.after_build = Some(truncate(&problem, MAX_NOTE_BYTES));
        }
    }
    Some(place)
}

/// A stopped process's result: cancelled for a cancel, lost lease or drain; otherwise a failure
/// that says why (`timeout`, `hung`), or `setup_failed` for a hook.
fn ended_by_stop(result: &mut ResultRequest, stop: Stop, failed: FailureReason, script: &Script) {
    result.stop = Some(stop);
    match stop.cause {
        StopCause::Cancelled | StopCause::LeaseLost | StopCause::Drained => result.outcome = Outcome::Cancelled,
        StopCause::Timeout if failed == FailureReason::SetupFailed => result.reason = Some(failed),
        StopCause::Timeout => result.reason = Some(FailureReason::Timeout),
        StopCause::Hung => {
            result.reason = Some(FailureReason::Hung);
            result.no_output_seconds = script.no_output_timeout_seconds;
        }
    }
}

fn exit_words(code: Option<i32>) -> String {
    code.map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit {c}"))
}

/// At most `max` bytes of `text`, cut on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn with(env: &[(String, String)], more: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = env.to_vec();
    all.extend(more.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    all
}

/// The build's folders, and its environment: every path absolute.
fn prepare(node: &Node, claim: &ClaimAnswer, xcode: Option<&Xcode>) -> std::io::Result<Place> {
    let build = &claim.build;
    let name = format!("{}-{}", build.build_id, claim.attempt);
    // The work dir starts empty (a checkout goes right into it); what the script leaves for the
    // agent goes beside it.
    let dir = node.work_dir.join(&name);
    let result_dir = node.work_dir.join("results").join(&name);
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(result_dir.join("artifacts"))?;
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut env: Vec<(String, String)> = [
        ("MESHGATE_BUILD_ID", build.build_id.to_string()),
        ("MESHGATE_ISSUE_ID", build.issue_id.clone()),
        ("MESHGATE_ISSUE_SUMMARY", build.summary.clone().unwrap_or_default()),
        ("MESHGATE_GIT_REF", build.git_ref.clone()),
        ("MESHGATE_PROJECT", build.project.clone()),
        ("MESHGATE_TRIGGER", build.trigger.clone()),
        ("MESHGATE_LANE", build.lane.clone()),
        ("MESHGATE_SCRIPT", build.script.clone()),
        ("MESHGATE_ATTEMPT", claim.attempt.to_string()),
        ("MESHGATE_NODE_ID", node.node_id.clone()),
        ("MESHGATE_WORK_DIR", path(&dir)),
        ("MESHGATE_RESULT_DIR", path(&result_dir)),
        ("MESHGATE_ARTIFACTS_DIR", path(&result_dir.join("artifacts"))),
        // Where a `before_build` hook may create a keychain of the build's own.
        ("MESHGATE_KEYCHAIN", path(&result_dir.join("build.keychain-db"))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(xcode) = xcode {
        env.push(("DEVELOPER_DIR".into(), xcode.developer_dir()));
        env.push(("MESHGATE_XCODE_VERSION".into(), xcode.version.clone()));
    }
    Ok(Place { dir, result_dir, env })
}

/// Runs one command in a process group of its own until it exits or something stops it.
async fn run_process(
    log: &Log,
    what: &str,
    command: &[String],
    dir: &Path,
    env: &[(String, String)],
    bounds: &Bounds,
) -> std::io::Result<Ended> {
    let (stdout, stderr, drained) = log.capture()?.split();
    // The command (and its copy of the pipe's writing end) goes once the process is started.
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let group = Group::of(&child);
    let spawned = Instant::now();
    let mut lease = bounds.lease.clone();
    let mut draining = bounds.draining.clone();
    let cause = loop {
        // Silent since its start or its last output: read when the clock runs out, not at every
        // write (a chatty build writes hundreds of thousands of lines).
        let hang_at = bounds.no_output.map(|quiet| log.last_write().max(spawned) + quiet);
        tokio::select! {
            status = child.wait() => {
                let code = status.ok().and_then(|s| s.code());
                if let Some(group) = group {
                    if group::sweep(group, bounds.grace).await {
                        log.note(&format!("{what} left processes behind; they were stopped"));
                    }
                }
                drained.finish(OUTPUT_DRAIN).await;
                return Ok(Ended::Exited(code));
            }
            _ = tokio::time::sleep_until(bounds.deadline) => break StopCause::Timeout,
            _ = tokio::time::sleep_until(hang_at.unwrap_or(bounds.deadline)), if hang_at.is_some() => {
                // Output since the clock was set moves the clock on.
                let silent_since = log.last_write().max(spawned);
                if bounds.no_output.is_some_and(|quiet| silent_since + quiet <= Instant::now()) {
                    break StopCause::Hung;
                }
            }
            cause = verdict(&mut lease) => break cause,
            _ = drain_deadline(&mut draining) => break StopCause::Drained,
        }
    };
    let why = match cause {
        StopCause::Cancelled => "the build was cancelled".to_owned(),
        StopCause::LeaseLost => "the gateway gave the attempt to another node".to_owned(),
        StopCause::Drained => "the node is stopping and its drain time ran out".to_owned(),
        StopCause::Timeout => "the build's timeout ran out".to_owned(),
        StopCause::Hung => format!("no output for {} s", bounds.no_output.unwrap_or_default().as_secs()),
    };
    log.note(&format!("stopping {what}: {why}; SIGTERM, then SIGKILL after {} s", bounds.grace.as_secs()));
    let signal = group::stop(&mut child, bounds.grace).await;
    let how = match signal {
        meshgate_domain::node_api::StopSignal::Terminated => "ended after SIGTERM",
        meshgate_domain::node_api::StopSignal::Killed => "killed with SIGKILL",
    };
    log.note(&format!("{what} {how}"));
    drained.finish(OUTPUT_DRAIN).await;
    Ok(Ended::Stopped(Stop { cause, signal }))
}

/// Resolves with the lease's verdict (never while there is none).
async fn verdict(lease: &mut watch::Receiver<Option<StopCause>>) -> StopCause {
    let cause = lease.wait_for(Option::is_some).await.map(|cause| *cause);
    match cause.ok().flatten() {
        Some(cause) => cause,
        None => std::future::pending().await,
    }
}

/// Resolves when the node's drain time has run out (never without a drain).
async fn drain_deadline(draining: &mut Option<watch::Receiver<Option<Instant>>>) {
    let Some(draining) = draining else { return std::future::pending().await };
    let at = draining.wait_for(Option::is_some).await.map(|at| *at);
    match at.ok().flatten() {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Heartbeats every third of the lease until aborted; the verdict says when the build was
/// cancelled or the attempt given to another node.
fn heartbeat(node: &Node, claim: &ClaimAnswer) -> (watch::Receiver<Option<StopCause>>, JoinHandle<()>) {
    let (verdict, lease) = watch::channel(None);
    let gateway = node.gateway.clone();
    let build_id = claim.build.build_id;
    let beat = HeartbeatRequest { node_id: node.node_id.clone(), attempt: claim.attempt };
    let every = Duration::from_millis((claim.lease_seconds.max(1) as u64 * 1000) / 3).max(Duration::from_millis(200));
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
        loop {
            ticks.tick().await;
            match gateway.heartbeat(build_id, &beat).await {
                Ok(answer) if answer.cancelled => {
                    let _ = verdict.send(Some(StopCause::Cancelled));
                    return;
                }
                Ok(_) => {}
                Err(e) if e.status().is_some_and(|s| s.as_u16() == 409) => {
                    let _ = verdict.send(Some(StopCause::LeaseLost));
                    return;
                }
                // Unreachable: keep building; the result is spooled and delivered later.
                Err(e) => tracing::warn!(%build_id, error = %e, "heartbeat failed"),
            }
        }
    });
    (lease, task)
}

/// The whole log, the source of truth, retried while the gateway is unreachable or restarting.
async fn upload_log(node: &Node, claim: &ClaimAnswer, path: &Path) {
    let build_id = claim.build.build_id;
    let max = claim.limits.max_log_bytes;
    for n in 0..LOG_UPLOAD_TRIES {
        match node.gateway.upload_log(build_id, claim.attempt, path, max).await {
            Ok(()) => return,
            Err(e) if e.is_retryable() && n + 1 < LOG_UPLOAD_TRIES => {
                tracing::warn!(%build_id, error = %e, "log upload failed; retrying");
                tokio::time::sleep(backoff(n + 1, Duration::from_millis(250), Duration::from_secs(10))).await;
            }
            Err(e) => {
                tracing::error!(%build_id, error = %e, "log upload failed; the log stays on the node at {}", path.display());
                return;
            }
        }
    }
}
