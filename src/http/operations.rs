//! What an operator asks of a running gateway beyond reading: a reconciliation sweep now, a
//! notification sent again, the notifications abandoned in a window re-queued, and ignored
//! deliveries decided again under today's triggers, a build cancelled or requeued. Admin token;
//! each action is recorded in the log (`ReconcileSwept`, `NotificationResendRequested`,
//! `DeliveryReplayed`, `BuildCancelled`, `BuildRequeued`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::access::Operator;
use super::api::AdminApi;
use super::extract::{json_or_default as body, ApiPath};
use super::openapi::{
    BuildActionAnswer, DrainAnswer, ErrorBody, RebuildAnswer, RecoverAnswer, ResendAnswer, SelftestAnswer,
};
use super::ApiError;
use crate::outbound::resend::{self, ResendError};

/// `POST /api/v1/reconcile` `{"since"?: RFC 3339, "dry_run"?: bool}`: one sweep now, answered with
/// what it found and started.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconcileRequest {
    pub since: Option<DateTime<Utc>>,
    #[serde(default)]
    pub dry_run: bool,
}

#[utoipa::path(post, path = "/api/v1/reconcile", tag = "operations", security(("admin" = [])),
    request_body = ReconcileRequest,
    responses(
        (status = 200, description = "The sweep's report", body = crate::reconcile::SweepReport),
        (status = 400, description = "The request is wrong", body = ErrorBody),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
        (status = 409, description = "Reconciliation is not configured", body = ErrorBody),
        (status = 503, description = "The log is unavailable; nothing was recorded", body = ErrorBody),
    ))]
pub async fn reconcile(
    _: Operator,
    State(app): State<Arc<AdminApi>>,
    bytes: axum::body::Bytes,
) -> Result<Json<crate::reconcile::SweepReport>, ApiError> {
    let request: ReconcileRequest = body(&bytes)?;
    let Some(reconciler) = &app.reconciler else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "reconcile_off",
            "reconciliation needs [youtrack] base_url and token_file",
        ));
    };
    let report =
        reconciler.sweep("api", request.since, request.dry_run).await.map_err(|e| ApiError::unavailable(&e))?;
    Ok(Json(report))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendRequest {
    /// `sink/build/milestone`.
    #[schema(pattern = "^[^/]+/[0-9a-f-]{36}/[a-z_]+$")]
    key: String,
    #[serde(default)]
    force: bool,
}

fn refused(e: ResendError) -> ApiError {
    match e {
        ResendError::BadKey(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_key", e.to_string()),
        ResendError::Refused(_) => {
            ApiError::new(StatusCode::CONFLICT, "already_delivered", format!("{e}; send it again with \"force\": true"))
        }
        other => ApiError::unavailable(&other),
    }
}

/// `POST /api/v1/notifications/resend` `{"key": "sink/build/milestone", "force"?: bool}`.
#[utoipa::path(post, path = "/api/v1/notifications/resend", tag = "operations", security(("admin" = [])),
    request_body = ResendRequest,
    responses(
        (status = 202, description = "Queued to be sent again", body = ResendAnswer),
        (status = 400, description = "The request is wrong", body = ErrorBody),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
        (status = 404, description = "No such sink or build", body = ErrorBody),
        (status = 409, description = "Already delivered (send `force`)", body = ErrorBody),
        (status = 503, description = "The log is unavailable; nothing was recorded", body = ErrorBody),
    ))]
pub async fn resend(
    _: Operator,
    State(app): State<Arc<AdminApi>>,
    bytes: axum::body::Bytes,
) -> Result<(StatusCode, Json<ResendAnswer>), ApiError> {
    let request: ResendRequest = body(&bytes)?;
    let id = resend::parse_key(&request.key).map_err(refused)?;
    match app.sinks.get(&id.sink) {
        None => return Err(ApiError::not_found("sink")),
        Some(wanted) if !wanted.contains(&id.milestone) => {
            let message = format!("sink `{}` does not send `{}`", id.sink, id.milestone.as_str());
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_key", message));
        }
        Some(_) => {}
    }
    if app.projections.build(id.build_id).await.map_err(|e| ApiError::unavailable(&e))?.is_none() {
        return Err(ApiError::not_found("build"));
    }
    let position =
        resend::request(app.store.as_ref(), &id, request.force, "admin", Utc::now()).await.map_err(refused)?;
    tracing::info!(key = %id.key(), force = request.force, "notification resend requested");
    Ok((StatusCode::ACCEPTED, Json(ResendAnswer { key: id.key(), queued: true, position })))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    /// Required: the start of the window (RFC 3339).
    #[schema(value_type = DateTime<Utc>, required = true)]
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    sink: Option<String>,
}

/// `POST /api/v1/notifications/recover` `{"since", "until"?, "sink"?}`: every notification abandoned
/// in the window (of one sink) is queued again.
#[utoipa::path(post, path = "/api/v1/notifications/recover", tag = "operations", security(("admin" = [])),
    request_body = RecoverRequest,
    responses(
        (status = 200, description = "The notifications queued again", body = RecoverAnswer),
        (status = 400, description = "The request is wrong", body = ErrorBody),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
        (status = 503, description = "The log is unavailable; nothing was recorded", body = ErrorBody),
    ))]
pub async fn recover(
    _: Operator,
    State(app): State<Arc<AdminApi>>,
    bytes: axum::body::Bytes,
) -> Result<Json<RecoverAnswer>, ApiError> {
    let request: RecoverRequest = body(&bytes)?;
    let since = request.since.ok_or_else(|| {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "since is required");
        e.field = Some("since".into());
        e
    })?;
    let until = request.until.unwrap_or_else(Utc::now);
    let abandoned = resend::abandoned_between(app.store.as_ref(), since, until, request.sink.as_deref())
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    let mut requeued = Vec::new();
    for id in abandoned {
        // Configured sinks only; a key delivered since (or resent and in flight) is left alone.
        let still_abandoned = app.projections.read(|p| {
            matches!(p.outbox.key(&id.key()), Some(meshgate_domain::notification::NotificationState::Abandoned { .. }))
        });
        if !app.sinks.contains_key(&id.sink) || !still_abandoned {
            continue;
        }
        match resend::request(app.store.as_ref(), &id, false, "admin: recover", Utc::now()).await {
            Ok(_) => requeued.push(id.key()),
            Err(ResendError::Refused(_)) => {}
            Err(e) => return Err(refused(e)),
        }
    }
    tracing::info!(count = requeued.len(), %since, %until, "abandoned notifications requeued");
    Ok(Json(RecoverAnswer { since, until, requeued }))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Required: the start of the window (RFC 3339).
    #[schema(value_type = DateTime<Utc>, required = true)]
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /api/v1/deliveries/replay` `{"since", "until"?, "dry_run"?}`.
#[utoipa::path(post, path = "/api/v1/deliveries/replay", tag = "operations", security(("admin" = [])),
    request_body = ReplayRequest,
    responses(
        (status = 200, description = "What became of each ignored delivery", body = crate::replay::ReplayReport),
        (status = 400, description = "The request is wrong", body = ErrorBody),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
        (status = 503, description = "The log is unavailable; nothing was recorded", body = ErrorBody),
    ))]
pub async fn replay(
    _: Operator,
    State(app): State<Arc<AdminApi>>,
    bytes: axum::body::Bytes,
) -> Result<Json<crate::replay::ReplayReport>, ApiError> {
    let request: ReplayRequest = body(&bytes)?;
    let Some(since) = request.since else {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "since is required");
        e.field = Some("since".into());
        return Err(e);
    };
    let until = request.until.unwrap_or_else(Utc::now);
    let policy = app.ingest.policy();
    let report = crate::replay::replay_deliveries(app.store.as_ref(), &policy, since, until, request.dry_run)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    tracing::info!(
        deliveries = report.deliveries.len(),
        started = report.builds_started.len(),
        dry_run = request.dry_run,
        "deliveries replayed"
    );
    Ok(Json(report))
}

/// `POST /api/v1/selftest`: the self-test's checks, from the configuration file as it is now (or the
/// one the gateway started with), recorded as `SelfTestRan`. `200` with every check; `passed` says
/// whether any failed.
#[utoipa::path(post, path = "/api/v1/selftest", tag = "operations", security(("admin" = [])),
    responses(
        (status = 200, description = "Every check; `passed` says whether any failed", body = SelftestAnswer),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
        (status = 422, description = "The configuration file no longer loads", body = ErrorBody),
        (status = 503, description = "The log is unavailable; nothing was recorded", body = ErrorBody),
    ))]
pub async fn selftest(_: Operator, State(app): State<Arc<AdminApi>>) -> Result<Json<SelftestAnswer>, ApiError> {
    let config = match &app.config.file {
        Some(file) => crate::config::Config::load(Some(file))
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_configuration", e.to_string()))?,
        None => (*app.config).clone(),
    };
    let checks = crate::selftest::run(&config).await;
    let passed = crate::selftest::passed(&checks);
    let event = meshgate_domain::Event::SelfTestRan(meshgate_domain::event::SelfTestRan {
        passed,
        checks: checks
            .iter()
            .map(|c| meshgate_domain::event::SelfTestCheck {
                check: c.check.clone(),
                result: c.result.as_str().to_owned(),
                detail: c.detail.clone(),
            })
            .collect(),
    });
    let append = crate::store::StreamAppend {
        stream: meshgate_domain::stream::selftest_stream(),
        expected: meshgate_domain::ExpectedVersion::Any,
        events: vec![crate::store::NewEvent::from_domain(&event, uuid::Uuid::now_v7(), None, Utc::now())],
    };
    app.store.append(vec![append]).await.map_err(|e| ApiError::unavailable(&e))?;
    Ok(Json(SelftestAnswer { passed, checks }))
}

/// `POST /api/v1/builds/{id}/cancel` and `…/requeue` `{"reason": "…"}`: an operator stops a build
/// (queued or running; a running build's node learns it at its next heartbeat) or sends a running
/// build back to the queue for another node. Recorded as `BuildCancelled` / `BuildRequeued` whose
/// reason says an operator asked, and why.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildActionRequest {
    /// Why (1 to 500 bytes, not blank); recorded with the event.
    #[serde(default)]
    #[schema(pattern = "\\S", min_length = 1, max_length = 120, required = true)]
    pub reason: String,
}

/// What a cancel or a requeue answers.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum BuildActionResponses {
    #[response(status = 200, description = "The build's state after the action")]
    Done(BuildActionAnswer),
    #[response(status = 400, description = "The request is wrong")]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "Missing or invalid admin token")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "A dashboard session without its CSRF token")]
    Forbidden(ErrorBody),
    #[response(status = 404, description = "No such build")]
    NotFound(ErrorBody),
    #[response(status = 409, description = "The build's state does not allow it")]
    Conflict(ErrorBody),
    #[response(status = 503, description = "The log is unavailable; nothing was recorded")]
    Unavailable(ErrorBody),
}

#[utoipa::path(post, path = "/api/v1/builds/{id}/cancel", tag = "builds", security(("admin" = [])),
    params(("id" = uuid::Uuid, Path, description = "The build's id")), request_body = BuildActionRequest,
    responses(BuildActionResponses))]
pub async fn cancel_build(
    _: Operator,
    State(app): State<Arc<AdminApi>>,
    ApiPath(build_id): ApiPath<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<BuildActionAnswer>, ApiError> {
    build_action(&app, build_id, &bytes, |reason| meshgate_domain::BuildCommand::Cancel { reason }).await
}

#[utoipa::path(post, path = "/api/v1/builds/{id}/requeue", tag = "builds", security(("admin" = [])),
    params(("id" = uuid::Uuid, Path, description = "The build's id")), request_body = BuildActionRequest,
    responses(BuildActionResponses))]
pub async fn requeue_build(
    _: Operator,
    State(app): State<Arc<AdminApi>>,
    ApiPath(build_id): ApiPath<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<BuildActionAnswer>, ApiError> {
    build_action(&app, build_id, &bytes, |reason| meshgate_domain::BuildCommand::Requeue { reason }).await
}

async fn build_action(
    app: &AdminApi,
    build_id: String,
    bytes: &[u8],
    command: impl FnOnce(String) -> meshgate_domain::BuildCommand,
) -> Result<Json<BuildActionAnswer>, ApiError> {
    let build_id = uuid::Uuid::parse_str(&build_id).map_err(|_| ApiError::not_found("build"))?;
    let request: BuildActionRequest = body(bytes)?;
    let reason = request.reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "reason is required (1 to 500 bytes)");
        e.field = Some("reason".into());
        return Err(e);
    }
    let command = command(format!("by an operator (admin): {reason}"));
    match app.builds.execute(build_id, uuid::Uuid::now_v7(), &command).await {
        Ok(executed) => {
            tracing::info!(%build_id, state = executed.state.name(), reason, "build changed by an operator");
            Ok(Json(BuildActionAnswer { build_id, state: executed.state.name().to_owned() }))
        }
        Err(crate::builds::CommandError::NotFound) => Err(ApiError::not_found("build")),
        Err(crate::builds::CommandError::Refused { error, .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, "build_state", error.to_string()))
        }
        Err(e) => Err(ApiError::unavailable(&e)),
    }
}

/// `POST /api/v1/builds/{id}/rebuild`: the build asked for again, as a new build (a number of
/// its own) of the same issue, trigger and git ref, linked to it (`rebuild_of`). While the issue's
/// build for the trigger is queued or running, that build answers and nothing new starts.
#[utoipa::path(post, path = "/api/v1/builds/{id}/rebuild", tag = "builds", security(("admin" = [])),
    params(("id" = uuid::Uuid, Path, description = "The build's id")),
    responses(
        (status = 200, description = "The build that answers the rebuild", body = RebuildAnswer),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
        (status = 403, description = "A dashboard session without its CSRF token", body = ErrorBody),
        (status = 404, description = "No such build", body = ErrorBody),
        (status = 503, description = "The log is unavailable; nothing was recorded", body = ErrorBody),
    ))]
pub async fn rebuild_build(
    _: Operator,
    State(app): State<Arc<AdminApi>>,
    ApiPath(build_id): ApiPath<String>,
) -> Result<Json<RebuildAnswer>, ApiError> {
    let build_id = uuid::Uuid::parse_str(&build_id).map_err(|_| ApiError::not_found("build"))?;
    match crate::actions::rebuild(app.store.as_ref(), build_id, "admin", "admin").await {
        Ok(rebuilt) => {
            if let Some(position) = rebuilt.position {
                // The answer names the new build: the projections must know it.
                app.projections.caught_up_to(position, std::time::Duration::from_secs(5)).await;
            }
            let name = app.projections.build(rebuilt.build_id).await.ok().flatten().map(|b| b.name());
            tracing::info!(%build_id, rebuild = %rebuilt.build_id, started = rebuilt.started, "rebuild asked by an operator");
            Ok(Json(RebuildAnswer { build_id: rebuilt.build_id, name, rebuild_of: build_id, started: rebuilt.started }))
        }
        Err(crate::actions::ActionError::UnknownBuild) => Err(ApiError::not_found("build")),
        Err(e) => Err(ApiError::unavailable(&e)),
    }
}

/// `POST /api/v1/nodes/{id}/drain` `{"draining": true|false, "reason": "…"}`: stop (or resume)
/// giving a node new builds; its running builds finish. Recorded as `NodeDrained`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    #[serde(default = "yes")]
    pub draining: bool,
    #[serde(default)]
    pub reason: String,
}

fn yes() -> bool {
    true
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/drain", tag = "nodes", security(("admin" = [])),
    params(("id" = String, Path, description = "The node's id")), request_body = DrainRequest,
    responses(
        (status = 200, description = "The node's drain and state now", body = DrainAnswer),
        (status = 400, description = "The request is wrong", body = ErrorBody),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 503, description = "The log is unavailable; nothing was recorded", body = ErrorBody),
    ))]
pub async fn drain_node(
    _: Operator,
    State(app): State<Arc<AdminApi>>,
    ApiPath(node_id): ApiPath<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<DrainAnswer>, ApiError> {
    let request: DrainRequest = body(&bytes)?;
    if app.projections.read(|p| p.nodes.get(&node_id).is_none()) {
        return Err(ApiError::not_found("node"));
    }
    let event = meshgate_domain::Event::NodeDrained(meshgate_domain::event::NodeDrained {
        node_id: node_id.clone(),
        draining: request.draining,
        reason: request.reason.trim().chars().take(500).collect(),
        requested_by: "admin".into(),
    });
    let append = crate::store::StreamAppend {
        stream: meshgate_domain::stream::node_stream(&node_id),
        expected: meshgate_domain::ExpectedVersion::Any,
        events: vec![crate::store::NewEvent::from_domain(&event, uuid::Uuid::now_v7(), None, Utc::now())],
    };
    let appended = app.store.append(vec![append]).await.map_err(|e| ApiError::unavailable(&e))?;
    app.projections.caught_up_to(appended.last_position, std::time::Duration::from_secs(2)).await;
    tracing::info!(%node_id, draining = request.draining, "node drain changed by an operator");
    let state = app.projections.read(|p| p.nodes.get(&node_id).map(|n| n.state().to_owned()));
    Ok(Json(DrainAnswer { node_id, draining: request.draining, state }))
}
