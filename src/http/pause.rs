//! Holding the queue (`meshgate_domain::pause`): `POST /api/v1/queue/pause` `{"reason": "…",
//! "lanes"?: ["…"]}` and `…/resume` `{"lanes"?: […]}`. Nodes claim nothing from the lanes named
//! (none: every lane) until resumed; builds keep being queued and running ones finish. Recorded as
//! `QueuePaused` / `QueueResumed` in one stream, decided at its exact version; each answers what
//! is paused now.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use meshgate_domain::pause::{decide_pause, decide_resume, PauseError, Paused};
use meshgate_domain::stream::pause_stream;
use meshgate_domain::{Event, ExpectedVersion};
use serde::Deserialize;

use super::access::Operator;
use super::api::AdminApi;
use super::extract::json_or_default as body;
use super::openapi::ErrorBody;
use super::ApiError;
use crate::store::{decide_and_append, Decision, NewEvent, Retry, StreamAppend, RETRY_FOR};

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// Why (1 to 500 bytes, not blank).
    // The schema promises the 120 characters that fit in 500 bytes whatever they are (a schema's
    // length counts characters, the gateway's limit bytes).
    #[serde(default)]
    #[schema(pattern = "\\S", min_length = 1, max_length = 120, required = true)]
    pub reason: String,
    /// Lanes to hold; none: every lane.
    #[serde(default)]
    pub lanes: Vec<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    /// Lanes to let go; none: everything paused.
    #[serde(default)]
    pub lanes: Vec<String>,
}

/// What a pause or a resume answers.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum PauseResponses {
    #[response(status = 200, description = "What is paused now")]
    Done(Paused),
    #[response(status = 400, description = "The request is wrong (a reason blank or over 500 bytes)")]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "Missing or invalid admin token")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "A dashboard session without its CSRF token")]
    Forbidden(ErrorBody),
    #[response(status = 404, description = "No such lane")]
    NotFound(ErrorBody),
    #[response(status = 409, description = "Not paused (a resume)")]
    Conflict(ErrorBody),
    #[response(status = 503, description = "The log is unavailable; nothing was recorded")]
    Unavailable(ErrorBody),
}

#[utoipa::path(post, path = "/api/v1/queue/pause", tag = "builds", security(("admin" = [])),
    request_body = PauseRequest, responses(PauseResponses))]
pub async fn pause_queue(
    _: Operator,
    State(app): State<Arc<AdminApi>>,
    bytes: axum::body::Bytes,
) -> Result<Json<Paused>, ApiError> {
    let request: PauseRequest = body(&bytes)?;
    let known = app.lane_names();
    let notice = uuid::Uuid::now_v7();
    let paused = held(&app, |_| decide_pause(&request.lanes, &known, &request.reason, "admin", notice)).await?;
    tracing::info!(lanes = ?request.lanes, reason = %request.reason.trim(), "the queue is paused");
    Ok(Json(paused))
}

#[utoipa::path(post, path = "/api/v1/queue/resume", tag = "builds", security(("admin" = [])),
    request_body = ResumeRequest, responses(PauseResponses))]
pub async fn resume_queue(
    _: Operator,
    State(app): State<Arc<AdminApi>>,
    bytes: axum::body::Bytes,
) -> Result<Json<Paused>, ApiError> {
    let request: ResumeRequest = body(&bytes)?;
    let known = app.lane_names();
    let notice = uuid::Uuid::now_v7();
    let paused = held(&app, |paused| decide_resume(paused, &request.lanes, &known, "admin", notice)).await?;
    tracing::info!(lanes = ?request.lanes, "the queue is resumed");
    Ok(Json(paused))
}

fn refused(e: PauseError) -> ApiError {
    match e {
        PauseError::Reason => {
            let mut refused = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string());
            refused.field = Some("reason".into());
            refused
        }
        PauseError::UnknownLane(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        PauseError::NotPaused(_) | PauseError::NothingPaused | PauseError::AllPaused => {
            ApiError::new(StatusCode::CONFLICT, "not_paused", e.to_string())
        }
    }
}

/// Decides a pause or a resume on what the pauses' stream says, appends it at the version read,
/// and answers what is paused after it.
async fn held(app: &AdminApi, decide: impl Fn(&Paused) -> Result<Event, PauseError>) -> Result<Paused, ApiError> {
    let store = app.store.as_ref();
    let load = |_| async move { store.read_stream(&pause_stream()).await.map_err(ApiError::from) };
    let decided = decide_and_append(store, Retry::For(RETRY_FOR), load, |stored| {
        let mut paused = Paused::default();
        for s in stored {
            let recorded = s.decode().map_err(|e| ApiError::unavailable(&e))?;
            paused.apply(&recorded.event, recorded.recorded_at);
        }
        let event = decide(&paused).map_err(refused)?;
        let append = StreamAppend {
            stream: pause_stream(),
            expected: ExpectedVersion::from_current(stored.last().map(|s| s.version)),
            events: vec![NewEvent::from_domain(&event, uuid::Uuid::now_v7(), None, Utc::now())],
        };
        Ok::<_, ApiError>(Decision::append(vec![append], ()))
    })
    .await?;
    if let Some(position) = decided.last_position {
        app.projections.caught_up_to(position, std::time::Duration::from_secs(5)).await;
    }
    Ok(app.projections.read(|p| p.paused.clone()))
}
