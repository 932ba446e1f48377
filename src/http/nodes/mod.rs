//! The node API: build machines claim builds under leases, heartbeat, send their logs while they
//! run, upload artifacts and whole logs, and report results. Authenticated with the pool's bearer
//! token. The bodies are the domain's [`meshgate_domain::node_api`] types, which the agent
//! (`meshgate-worker`) sends and reads too. Logs are in [`logs`], artifacts in [`artifacts`].

pub mod artifacts;
pub mod logs;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use meshgate_domain::build::ReportedOutcome;
use meshgate_domain::event::{BuildReport, LaneClaimed, NodeSeen};
use meshgate_domain::node_api::{
    ClaimAnswer, ClaimRequest, ClaimedBuild, HeartbeatAnswer, HeartbeatRequest, NodeLimits, Outcome, ResultAnswer,
    ResultRequest, MAX_FAILING_TEST_BYTES, MAX_LOG_TAIL_BYTES, MAX_NOTE_BYTES,
};
use meshgate_domain::stream::{lane_stream, node_stream};
use meshgate_domain::trigger::is_simple_name;
use meshgate_domain::xcode::{Version, Xcode};
use meshgate_domain::{BuildCommand, BuildError, BuildState, Event, ExpectedVersion};
use meshgate_projections::{BuildView, NodeAsk};
use uuid::Uuid;

use crate::builds::{BuildService, CommandError};
use crate::files::{Artifacts, BuildLogs};
use crate::http::extract::{json_body, ApiPath};
use crate::http::openapi::{ErrorBody, NodeCheckAnswer};
use crate::http::ApiError;
use crate::links::LogLinks;
use crate::projector::Projections;
use crate::secrets::TokenSet;
use crate::store::{EventStore, NewEvent, StoreError, StreamAppend};
use wire::AttemptRefusals;
pub use wire::{ArtifactRead, LogQuery, UploadQuery};

/// Longest wait a claim may ask for.
const MAX_CLAIM_WAIT: Duration = Duration::from_secs(300);
/// Most Xcodes a node may present.
const MAX_XCODES: usize = 32;

/// What the node API uses.
pub struct NodeApi {
    pub store: Arc<dyn EventStore>,
    pub projections: Projections,
    pub builds: BuildService,
    /// The build pool's tokens.
    pub tokens: Arc<TokenSet>,
    pub lanes: Vec<meshgate_projections::LaneRule>,
    pub settings: NodeSettings,
    /// One claim decision at a time (lane caps and node slots are read, then written).
    pub claim_lock: tokio::sync::Mutex<()>,
    /// Turns true when the gateway stops: long polls and followed logs answer at once.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Build logs: live chunks and whole uploads.
    pub logs: Arc<BuildLogs>,
    pub artifacts: Arc<Artifacts>,
    /// Per-build log and artifact links (absolute, signed).
    pub links: LogLinks,
}

/// The `[nodes]` settings in the units the handlers use.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub lease: chrono::Duration,
    pub claim_wait: Duration,
    pub max_attempts: u32,
    pub max_log_bytes: usize,
}

impl NodeApi {
    /// The build pool's token, checked before anything else of a request is read.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let token = crate::http::access::bearer(headers);
        match token {
            Some(token) if self.tokens.verify(token.trim().as_bytes()) => Ok(()),
            _ => {
                tracing::warn!(header_present = token.is_some(), "node token mismatch");
                Err(ApiError::unauthorized())
            }
        }
    }
}

fn bad_request(field: &str, message: impl Into<String>) -> ApiError {
    let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message);
    e.field = Some(field.to_owned());
    e
}

fn check_node_id(node_id: &str) -> Result<(), ApiError> {
    if is_simple_name(node_id) {
        Ok(())
    } else {
        Err(bad_request("node_id", "node_id must be 1-64 of [A-Za-z0-9._-]"))
    }
}

/// A node's Xcodes as it presents them: at most 32, versions that are numbers, paths of at most
/// 1024 bytes without control characters.
fn check_xcodes(xcodes: &[Xcode]) -> Result<(), ApiError> {
    if xcodes.len() > MAX_XCODES {
        return Err(bad_request("xcodes", format!("a node presents at most {MAX_XCODES} Xcodes")));
    }
    for xcode in xcodes {
        Version::parse(&xcode.version).map_err(|e| bad_request("xcodes", e.to_string()))?;
        if xcode.path.is_empty() || xcode.path.len() > 1024 || xcode.path.chars().any(char::is_control) {
            return Err(bad_request("xcodes", "an Xcode's path must be 1-1024 bytes without control characters"));
        }
    }
    Ok(())
}

/// The build, if `node_id` holds its running `attempt`; 404 for no such build, 409 otherwise
/// (not recorded: chunks and uploads come often, a refused heartbeat or result is recorded).
pub(crate) async fn held(app: &NodeApi, build_id: Uuid, node_id: &str, attempt: u32) -> Result<BuildView, ApiError> {
    let head = *app.store.head().borrow();
    app.projections.caught_up_to(head, Duration::from_secs(2)).await;
    let build = app.projections.build(build_id).await.map_err(|e| ApiError::unavailable(&e))?;
    let build = build.ok_or_else(|| ApiError::not_found("build"))?;
    match &build.state {
        BuildState::Running { attempt: current, node_id: holder, .. } if *current == attempt && holder == node_id => {
            Ok(build)
        }
        state => Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale_attempt",
            format!(
                "attempt {attempt} of node {node_id} is not the build's running one (the build is {})",
                state.name()
            ),
        )),
    }
}

fn command_failed(e: CommandError) -> ApiError {
    match e {
        CommandError::NotFound => ApiError::not_found("build"),
        other => ApiError::unavailable(&other),
    }
}

/// `POST /api/v1/nodes/claim`: answers as soon as a build this node may run is claimed for it, or
/// 204 when the wait is over.
#[utoipa::path(post, path = "/api/v1/nodes/claim", tag = "nodes", security(("node" = [])), request_body = ClaimRequest,
    responses(
        (status = 200, description = "A build claimed for this node", body = ClaimAnswer),
        (status = 204, description = "Nothing to run within the wait"),
        (status = 400, description = "The request is wrong", body = ErrorBody),
        (status = 401, description = "Missing or invalid node token", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "The log is unavailable", body = ErrorBody),
    ))]
pub async fn claim(State(app): State<Arc<NodeApi>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    app.authorize(&headers)?;
    let request: ClaimRequest = json_body(&headers, &body)?;
    check_node_id(&request.node_id)?;
    if let Some(label) = request.labels.iter().find(|l| !is_simple_name(l)) {
        return Err(bad_request("labels", format!("label `{label}` must be 1-64 of [A-Za-z0-9._-]")));
    }
    if !(1..=256).contains(&request.slots) {
        return Err(bad_request("slots", "slots must be between 1 and 256"));
    }
    check_xcodes(&request.xcodes)?;
    record_node(&app, &request).await?;
    let wait = request.wait_seconds.map_or(app.settings.claim_wait, Duration::from_secs).min(MAX_CLAIM_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let ask =
        NodeAsk { node_id: &request.node_id, labels: &request.labels, slots: request.slots, xcodes: &request.xcodes };
    let mut changes = app.projections.changes();
    let mut stopping = app.stopping.clone();
    loop {
        // Decide on projections that include everything committed so far (our own claims too).
        let head = *app.store.head().borrow();
        app.projections.caught_up_to(head, Duration::from_secs(2)).await;
        {
            // One claim at a time per gateway: lane caps and node slots are read, then written.
            let _turn = app.claim_lock.lock().await;
            // A draining node gets no new builds; its running ones finish.
            let candidate = app.projections.read(|p| {
                let draining = p.nodes.get(&request.node_id).is_some_and(|n| n.draining);
                let next = p.queue.next_for(&app.lanes, &ask).filter(|_| !draining);
                next.map(|e| (e.build_id, e.lane.clone(), e.attempt))
            });
            if let Some((build_id, lane, attempt)) = candidate {
                let lease_expires_at = Utc::now() + app.settings.lease;
                let command = BuildCommand::Claim { node_id: request.node_id.clone(), lease_expires_at };
                let capped = app.lanes.iter().any(|l| l.name == lane && l.max_running.is_some());
                let claimed = if capped {
                    // With several gateways, the lane's cap holds through its stream (ADR 0004).
                    match lane_guard(&app, &lane, build_id, &request.node_id, attempt).await {
                        Ok(Some(guard)) => app.builds.claim_guarded(build_id, Uuid::now_v7(), &command, guard).await,
                        Ok(None) if tokio::time::Instant::now() < deadline => continue,
                        Ok(None) => break,
                        Err(e) => return Err(ApiError::unavailable(&e)),
                    }
                } else {
                    app.builds.execute(build_id, Uuid::now_v7(), &command).await
                };
                match claimed {
                    Ok(executed) => {
                        app.projections.caught_up_to(executed.last_position, Duration::from_secs(2)).await;
                        let attempt = match executed.state {
                            BuildState::Running { attempt, .. } => attempt,
                            _ => 0,
                        };
                        let build = app.projections.read(|p| p.builds.get(build_id).cloned());
                        let Some(build) = build else {
                            // Claimed, but not yet in the projections: the lease runs out and the
                            // reaper queues it again.
                            return Err(ApiError::unavailable(&"the claimed build is not in the projections yet"));
                        };
                        let waited = (Utc::now() - build.requested_at).num_milliseconds().max(0) as f64 / 1000.0;
                        metrics::histogram!(crate::metrics::QUEUE_WAIT_SECONDS, "lane" => build.lane.clone())
                            .record(waited);
                        tracing::info!(%build_id, node_id = %request.node_id, attempt, "build claimed");
                        let xcode = build
                            .xcode
                            .clone()
                            .or_else(|| app.lanes.iter().find(|l| l.name == build.lane).and_then(|l| l.xcode.clone()));
                        let body = ClaimAnswer {
                            build: ClaimedBuild {
                                build_id,
                                issue_id: build.issue_id,
                                summary: build.summary,
                                project: build.project,
                                trigger: build.trigger,
                                script: build.script,
                                lane: build.lane,
                                git_ref: build.git_ref,
                                xcode,
                            },
                            attempt,
                            lease_expires_at,
                            lease_seconds: app.settings.lease.num_seconds(),
                            limits: NodeLimits {
                                max_log_bytes: app.logs.max_bytes(),
                                max_artifact_bytes: app.artifacts.max_bytes(),
                            },
                        };
                        return Ok((StatusCode::OK, Json(body)).into_response());
                    }
                    // Another gateway (or a lagging view) got there first: look again.
                    Err(CommandError::Refused { .. } | CommandError::Store(StoreError::Contention { .. })) => {
                        if tokio::time::Instant::now() >= deadline {
                            break;
                        }
                        continue;
                    }
                    Err(e) => return Err(command_failed(e)),
                }
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = stopping.wait_for(|s| *s) => break,
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Records how a node presents itself (`NodeSeen`) when it is new to the log or its labels,
/// slots or Xcodes changed.
async fn record_node(app: &NodeApi, request: &ClaimRequest) -> Result<(), ApiError> {
    let mut labels = request.labels.clone();
    labels.sort();
    labels.dedup();
    let slots = request.slots as u32;
    let xcodes = request.xcodes.clone();
    let known =
        app.projections.read(|p| p.nodes.get(&request.node_id).map(|n| (n.labels.clone(), n.slots, n.xcodes.clone())));
    if known.as_ref() == Some(&(labels.clone(), slots, xcodes.clone())) {
        return Ok(());
    }
    let event = Event::NodeSeen(NodeSeen { node_id: request.node_id.clone(), labels, slots, xcodes });
    let append = StreamAppend {
        stream: node_stream(&request.node_id),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent::from_domain(&event, Uuid::now_v7(), None, Utc::now())],
    };
    let appended = app.store.append(vec![append]).await.map_err(|e| ApiError::unavailable(&e))?;
    app.projections.caught_up_to(appended.last_position, Duration::from_secs(2)).await;
    Ok(())
}

/// The append that records a claim in a capped lane on the lane's stream, at the version the
/// projections have seen; `None` if they have not yet seen the lane's last claim (decide again).
async fn lane_guard(
    app: &NodeApi,
    lane: &str,
    build_id: Uuid,
    node_id: &str,
    attempt: u32,
) -> Result<Option<StreamAppend>, StoreError> {
    let stream = lane_stream(lane);
    let last = app.store.read_last(&stream).await?;
    if let Some(last) = &last {
        if app.projections.position() < last.position {
            app.projections.caught_up_to(last.position, Duration::from_secs(2)).await;
            return Ok(None);
        }
    }
    let event =
        Event::LaneClaimed(LaneClaimed { lane: lane.to_owned(), build_id, node_id: node_id.to_owned(), attempt });
    Ok(Some(StreamAppend {
        stream,
        expected: ExpectedVersion::from_current(last.map(|e| e.version)),
        events: vec![NewEvent::from_domain(&event, Uuid::now_v7(), None, Utc::now())],
    }))
}

/// `POST /api/v1/builds/{id}/heartbeat`: renews the lease; says whether the build was cancelled.
#[utoipa::path(post, path = "/api/v1/builds/{id}/heartbeat", tag = "nodes", security(("node" = [])),
    params(("id" = Uuid, Path, description = "The build's id")), request_body = HeartbeatRequest,
    responses(
        (status = 200, description = "The lease renewed, or the build cancelled", body = HeartbeatAnswer),
        AttemptRefusals,
    ))]
pub async fn heartbeat(
    State(app): State<Arc<NodeApi>>,
    headers: HeaderMap,
    ApiPath(build_id): ApiPath<Uuid>,
    body: Bytes,
) -> Result<Response, ApiError> {
    app.authorize(&headers)?;
    let request: HeartbeatRequest = json_body(&headers, &body)?;
    check_node_id(&request.node_id)?;
    let lease_expires_at = Utc::now() + app.settings.lease;
    let command = BuildCommand::Renew { node_id: request.node_id.clone(), attempt: request.attempt, lease_expires_at };
    let correlation_id = Uuid::now_v7();
    match app.builds.execute(build_id, correlation_id, &command).await {
        Ok(_) => {
            Ok(Json(HeartbeatAnswer { cancelled: false, lease_expires_at: Some(lease_expires_at) }).into_response())
        }
        Err(CommandError::Refused { error, history }) => {
            let state = meshgate_domain::build::replay(&history);
            if matches!(state, BuildState::Cancelled { .. }) && current_attempt_of(&history) == Some(request.attempt) {
                return Ok(Json(HeartbeatAnswer { cancelled: true, lease_expires_at: None }).into_response());
            }
            refuse(&app, build_id, correlation_id, &request.node_id, request.attempt, "heartbeat", &error).await
        }
        Err(e) => Err(command_failed(e)),
    }
}

/// The attempt of the last claim in a build's history.
fn current_attempt_of(history: &[Event]) -> Option<u32> {
    history.iter().rev().find_map(|e| match e {
        Event::BuildClaimed(c) => Some(c.attempt),
        _ => None,
    })
}

async fn refuse(
    app: &NodeApi,
    build_id: Uuid,
    correlation_id: Uuid,
    node_id: &str,
    attempt: u32,
    what: &str,
    error: &BuildError,
) -> Result<Response, ApiError> {
    let reason = format!("{what} refused: {error}");
    tracing::warn!(%build_id, node_id, attempt, %reason, "stale attempt");
    app.builds
        .record_rejection(build_id, correlation_id, node_id, attempt, reason.clone())
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    Err(ApiError::new(StatusCode::CONFLICT, "stale_attempt", reason))
}

/// `POST /api/v1/builds/{id}/result`: at most one result per build is ever accepted.
#[utoipa::path(post, path = "/api/v1/builds/{id}/result", tag = "nodes", security(("node" = [])),
    params(("id" = Uuid, Path, description = "The build's id")), request_body = ResultRequest,
    responses(
        (status = 200, description = "The result accepted (or the same result again)", body = ResultAnswer),
        AttemptRefusals,
    ))]
pub async fn result(
    State(app): State<Arc<NodeApi>>,
    headers: HeaderMap,
    ApiPath(build_id): ApiPath<Uuid>,
    body: Bytes,
) -> Result<Response, ApiError> {
    app.authorize(&headers)?;
    let request: ResultRequest = json_body(&headers, &body)?;
    check_node_id(&request.node_id)?;
    let commit_sha = match request.commit_sha {
        Some(sha) if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) => Some(sha.to_ascii_lowercase()),
        Some(_) => return Err(bad_request("commit_sha", "commit_sha must be 40 hex characters")),
        None => None,
    };
    if request.log_tail.len() > MAX_LOG_TAIL_BYTES {
        return Err(bad_request("log_tail", format!("log_tail is limited to {MAX_LOG_TAIL_BYTES} bytes")));
    }
    if request.failing_test.as_ref().is_some_and(|t| t.len() > MAX_FAILING_TEST_BYTES) {
        return Err(bad_request("failing_test", format!("failing_test is limited to {MAX_FAILING_TEST_BYTES} bytes")));
    }
    for (field, note) in [("retry_rule", &request.retry_rule), ("after_build", &request.after_build)] {
        if note.as_ref().is_some_and(|n| n.len() > MAX_NOTE_BYTES || n.is_empty()) {
            return Err(bad_request(field, format!("{field} is 1-{MAX_NOTE_BYTES} bytes")));
        }
    }
    let report = BuildReport {
        node_id: request.node_id.clone(),
        exit_code: request.exit_code,
        duration_ms: request.duration_ms,
        commit_sha,
        failing_test: request.failing_test,
        log_tail: request.log_tail,
        stop: request.stop,
        no_output_seconds: request.no_output_seconds,
        retry_rule: None,
        after_build: request.after_build,
        artifacts_skipped: request.artifacts_skipped,
    };
    let outcome = match request.outcome {
        Outcome::Succeeded => ReportedOutcome::Succeeded,
        Outcome::Failed => ReportedOutcome::Failed {
            reason: request.reason.unwrap_or_default(),
            retry_rule: request.retry_rule.clone(),
        },
        Outcome::Cancelled => ReportedOutcome::Cancelled,
    };
    let command = BuildCommand::Report {
        node_id: request.node_id.clone(),
        attempt: request.attempt,
        outcome,
        report: Box::new(report.clone()),
        max_attempts: app.settings.max_attempts,
    };
    let correlation_id = Uuid::now_v7();
    match app.builds.execute(build_id, correlation_id, &command).await {
        Ok(executed) => {
            let lane = app.projections.read(|p| p.builds.get(build_id).map(|b| b.lane.clone())).unwrap_or_default();
            let retried = executed.events.iter().any(|e| matches!(e, Event::BuildRetryScheduled(_)));
            let outcome = if retried { "retried" } else { executed.state.name() };
            if retried {
                metrics::counter!(crate::metrics::RETRIES, "lane" => lane.clone()).increment(1);
            }
            metrics::histogram!(crate::metrics::BUILD_SECONDS, "lane" => lane, "outcome" => outcome)
                .record(request.duration_ms as f64 / 1000.0);
            tracing::info!(%build_id, node_id = %request.node_id, attempt = request.attempt, state = executed.state.name(), "build result accepted");
            let answer =
                ResultAnswer { accepted: true, state: Some(executed.state.name().to_owned()), duplicate: None };
            Ok(Json(answer).into_response())
        }
        Err(CommandError::Refused { error, history }) => {
            // The same result sent again (its answer was lost): accepted once, answered again.
            if already_reported(&history, &report, request.attempt, request.outcome) {
                let answer = ResultAnswer { accepted: true, state: None, duplicate: Some(true) };
                return Ok(Json(answer).into_response());
            }
            refuse(&app, build_id, correlation_id, &request.node_id, request.attempt, "result", &error).await
        }
        Err(e) => Err(command_failed(e)),
    }
}

fn already_reported(history: &[Event], report: &BuildReport, attempt: u32, outcome: Outcome) -> bool {
    // A retry or failure past the cap carries the matched rule in its report; compare without it.
    let same = |stored: &Option<BuildReport>| {
        stored.as_ref().is_some_and(|s| BuildReport { retry_rule: None, ..s.clone() } == *report)
    };
    history.iter().rev().any(|e| match (e, outcome) {
        (Event::BuildSucceeded(s), Outcome::Succeeded) => s.attempt == attempt && same(&s.report),
        (Event::BuildFailed(f), Outcome::Failed) => f.attempt == attempt && same(&f.report),
        (Event::BuildRetryScheduled(r), Outcome::Failed) => r.attempt == attempt && same(&r.report),
        (Event::BuildCancelled(c), Outcome::Cancelled) => same(&c.report),
        _ => false,
    })
}

/// `GET /api/v1/nodes/check`: whether the node token is accepted (`meshgate-worker doctor`); records
/// nothing.
#[utoipa::path(get, path = "/api/v1/nodes/check", tag = "nodes", security(("node" = [])),
    responses(
        (status = 200, description = "The token is accepted", body = NodeCheckAnswer),
        (status = 401, description = "Missing or invalid node token", body = ErrorBody),
    ))]
pub async fn check(State(app): State<Arc<NodeApi>>, headers: HeaderMap) -> Result<Json<NodeCheckAnswer>, ApiError> {
    app.authorize(&headers)?;
    Ok(Json(NodeCheckAnswer { accepted: true, now: Utc::now() }))
}
