//! What a node says of the attempt it holds: heartbeats (each renews the lease, or learns that
//! the build was cancelled) and the one result a build accepts. A refused heartbeat or result is
//! recorded (`BuildResultRejected`); the same result sent again is answered again.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use meshgate_domain::build::ReportedOutcome;
use meshgate_domain::event::BuildReport;
use meshgate_domain::node_api::{
    HeartbeatAnswer, HeartbeatRequest, Outcome, ResultAnswer, ResultRequest, MAX_FAILING_TEST_BYTES,
    MAX_LOG_TAIL_BYTES, MAX_NOTE_BYTES,
};
use meshgate_domain::{BuildCommand, BuildError, BuildState, Event};
use uuid::Uuid;

use super::wire::AttemptRefusals;
use super::{bad_request, command_failed, NodeApi};
use crate::builds::CommandError;
use crate::http::extract::ApiPath;
use crate::http::ApiError;

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
    let request = app.request(&headers, &body, |r: &HeartbeatRequest| &r.node_id)?;
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
    let request = app.request(&headers, &body, |r: &ResultRequest| &r.node_id)?;
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
