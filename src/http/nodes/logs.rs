//! Build logs over HTTP: chunks a node sends while its attempt runs, the whole log it uploads when
//! it ends, and reading a log (the admin token, a dashboard session or the build's signed link),
//! whole, from an offset, or followed while the attempt runs.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use meshgate_domain::node_api::{ChunkAnswer, ChunkQuery};
use meshgate_domain::BuildState;
use tokio::io::AsyncSeekExt;
use uuid::Uuid;

use super::wire::{LogQuery, UploadQuery};
use super::{bad_request, check_node_id, held, NodeApi};
use crate::http::access::Access;
use crate::http::extract::{ApiPath, ApiQuery};
use crate::http::openapi::{ErrorBody, LogUploaded};
use crate::http::ApiError;

/// Most bytes a follower is sent at once.
const FOLLOW_READ: usize = 64 * 1024;
/// A follower looks at the build's state at least this often (a change of state wakes it too).
const FOLLOW_CHECK: Duration = Duration::from_secs(5);

/// `POST /api/v1/builds/{id}/log/chunks?node_id=…&attempt=…&offset=…`: output of a running attempt.
#[utoipa::path(post, path = "/api/v1/builds/{id}/log/chunks", tag = "nodes", security(("node" = [])),
    params(("id" = Uuid, Path, description = "The build's id"), ChunkQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "How much of the attempt's output the gateway holds", body = ChunkAnswer),
        (status = 400, description = "The request is wrong", body = ErrorBody),
        (status = 401, description = "Missing or invalid node token", body = ErrorBody),
        (status = 404, description = "No such build", body = ErrorBody),
        (status = 409, description = "The node does not hold the build's running attempt", body = ErrorBody),
        (status = 503, description = "The log cannot be stored", body = ErrorBody),
    ))]
pub async fn chunk(
    State(app): State<Arc<NodeApi>>,
    headers: HeaderMap,
    ApiPath(build_id): ApiPath<Uuid>,
    query: Result<ApiQuery<ChunkQuery>, ApiError>,
    body: Bytes,
) -> Result<Json<ChunkAnswer>, ApiError> {
    app.authorize(&headers)?;
    let ApiQuery(query) = query?;
    check_node_id(&query.node_id)?;
    held(&app, build_id, &query.node_id, query.attempt).await?;
    let answer =
        app.logs.append(build_id, query.attempt, query.offset, body).await.map_err(|e| ApiError::unavailable(&e))?;
    Ok(Json(answer))
}

/// `PUT /api/v1/builds/{id}/log?attempt=N[&total=T]`: a node uploads the whole log of an attempt
/// (the source of truth, replacing what its chunks made); past `nodes.max_log_bytes` it is cut,
/// with a line saying so.
#[utoipa::path(put, path = "/api/v1/builds/{id}/log", tag = "nodes", security(("node" = [])),
    params(("id" = Uuid, Path, description = "The build's id"), UploadQuery),
    request_body(content = String, content_type = "text/plain"),
    responses(
        (status = 200, description = "The log stored", body = LogUploaded),
        (status = 400, description = "The request is wrong", body = ErrorBody),
        (status = 401, description = "Missing or invalid node token", body = ErrorBody),
        (status = 404, description = "No such build", body = ErrorBody),
        (status = 413, description = "The body is far larger than `nodes.max_log_bytes`", body = ErrorBody),
        (status = 503, description = "The log cannot be stored", body = ErrorBody),
    ))]
pub async fn upload(
    State(app): State<Arc<NodeApi>>,
    headers: HeaderMap,
    path: Result<ApiPath<Uuid>, ApiError>,
    query: Result<ApiQuery<UploadQuery>, ApiError>,
    body: Body,
) -> Result<Response, ApiError> {
    let checked = async {
        app.authorize(&headers)?;
        let ApiPath(build_id) = path?;
        let ApiQuery(query) = query?;
        let attempt = query.attempt.ok_or_else(|| bad_request("attempt", "attempt is required"))?;
        let head = *app.store.head().borrow();
        app.projections.caught_up_to(head, Duration::from_secs(2)).await;
        if app.projections.build(build_id).await.map_err(|e| ApiError::unavailable(&e))?.is_none() {
            return Err(ApiError::not_found("build"));
        }
        Ok((build_id, query, attempt))
    };
    let (build_id, query, attempt) = match checked.await {
        Ok(checked) => checked,
        Err(refusal) => {
            crate::http::linger::drain(body, crate::http::linger::NODE_UPLOAD).await;
            return Err(refusal);
        }
    };
    let stored = app.logs.replace(build_id, attempt, query.total, body.into_data_stream()).await;
    let bytes = match stored {
        Ok(bytes) => bytes,
        Err(crate::files::LogError::Body(e)) if crate::http::webhook::is_length_limit(&e) => {
            return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "log is too large"))
        }
        Err(e) => return Err(ApiError::unavailable(&e)),
    };
    Ok(Json(LogUploaded { url: app.links.url(build_id), bytes: bytes as usize }).into_response())
}

/// `GET /api/v1/builds/{id}/log`: the newest attempt's log (or `?attempt=N`), with the admin token
/// or the build's key. While the attempt runs it holds what has arrived so far; `?follow=true`
/// keeps the answer open and sends the rest as it arrives, until the attempt ends.
#[utoipa::path(get, path = "/api/v1/builds/{id}/log", tag = "nodes", security(("admin" = []), ()),
    params(("id" = Uuid, Path, description = "The build's id"), LogQuery),
    responses(
        (status = 200, description = "The log", content_type = "text/plain", body = String),
        (status = 400, description = "The request is wrong", body = ErrorBody),
        (status = 401, description = "Neither the admin token nor the build's key", body = ErrorBody),
        (status = 404, description = "No such build or log", body = ErrorBody),
    ))]
pub async fn download(
    State(app): State<Arc<NodeApi>>,
    State(access): State<Arc<Access>>,
    headers: HeaderMap,
    ApiPath(build_id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let keyed = query.key.as_deref().is_some_and(|k| app.links.opens(build_id, k));
    if !keyed {
        access.authorize(&headers)?;
    }
    // The running attempt (its log may not have arrived yet), else the newest one with a log.
    let attempt = match query.attempt {
        Some(a) => a,
        None => match running_attempt(&app, build_id).await {
            Some(a) => a,
            None => match app.logs.newest_attempt(build_id).await {
                Some(a) => a,
                None => return Err(missing(&app, build_id).await),
            },
        },
    };
    let path = app.logs.path(build_id, attempt);
    let offset = query.offset.unwrap_or(0);
    let plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if query.follow != Some(true) {
        let Ok(mut file) = tokio::fs::File::open(&path).await else { return Err(missing(&app, build_id).await) };
        let len = file.metadata().await.map_err(|e| ApiError::unavailable(&e))?.len();
        // Past the end: nothing more (yet).
        file.seek(std::io::SeekFrom::Start(offset.min(len))).await.map_err(|e| ApiError::unavailable(&e))?;
        let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
        return Ok((plain, body).into_response());
    }
    if !tokio::fs::try_exists(&path).await.unwrap_or(false) && !running(&app, build_id, attempt).await {
        return Err(ApiError::not_found("log"));
    }
    let len = tokio::fs::metadata(&path).await.map(|m| m.len()).unwrap_or(0);
    let follower = Follower { app, build_id, attempt, offset: offset.min(len), ended: false };
    let body = Body::from_stream(futures_util::stream::unfold(follower, Follower::next).map(Ok::<_, std::io::Error>));
    Ok((plain, [(header::CACHE_CONTROL, "no-store")], body).into_response())
}

/// No log where one was asked for: removed by retention (the build's view says so), or never sent.
async fn missing(app: &NodeApi, build_id: Uuid) -> ApiError {
    match app.projections.build(build_id).await.ok().flatten() {
        Some(build) if build.logs_removed => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the build's logs were removed after retention.build_logs_days",
        ),
        _ => ApiError::not_found("log"),
    }
}

/// The build's running attempt, if it runs.
async fn running_attempt(app: &NodeApi, build_id: Uuid) -> Option<u32> {
    match app.projections.build(build_id).await.ok().flatten()?.state {
        BuildState::Running { attempt, .. } => Some(attempt),
        _ => None,
    }
}

/// Whether `attempt` of the build is running.
async fn running(app: &NodeApi, build_id: Uuid, attempt: u32) -> bool {
    running_attempt(app, build_id).await == Some(attempt)
}

/// A reader of a running attempt's log: sends what the file holds past `offset`, then waits for
/// more, until the attempt has ended and everything is sent.
struct Follower {
    app: Arc<NodeApi>,
    build_id: Uuid,
    attempt: u32,
    offset: u64,
    ended: bool,
}

impl Follower {
    async fn read_more(&mut self) -> Option<Bytes> {
        let path = self.app.logs.path(self.build_id, self.attempt);
        let offset = self.offset;
        // One trip to the blocking pool per read.
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            use std::io::{Read, Seek};
            let mut file = std::fs::File::open(path)?;
            file.seek(std::io::SeekFrom::Start(offset))?;
            let mut bytes = Vec::with_capacity(FOLLOW_READ);
            file.take(FOLLOW_READ as u64).read_to_end(&mut bytes)?;
            Ok(bytes)
        });
        let bytes = read.await.ok()?.ok().filter(|b| !b.is_empty())?;
        self.offset += bytes.len() as u64;
        Some(Bytes::from(bytes))
    }

    async fn next(mut self) -> Option<(Bytes, Follower)> {
        let mut changes = self.app.logs.follow(self.build_id);
        let mut states = self.app.projections.changes();
        let mut stopping = self.app.stopping.clone();
        loop {
            changes.borrow_and_update();
            if let Some(bytes) = self.read_more().await {
                return Some((bytes, self));
            }
            if self.ended {
                return None;
            }
            // Ended: one more read catches the whole log uploaded just before the result.
            if !running(&self.app, self.build_id, self.attempt).await {
                self.ended = true;
                continue;
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = states.changed() => {}
                _ = tokio::time::sleep(FOLLOW_CHECK) => {}
                // The gateway is stopping: the reader reconnects with `offset` to another one.
                _ = stopping.wait_for(|s| *s) => return None,
            }
        }
    }
}
