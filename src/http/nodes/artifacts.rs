//! Artifacts over HTTP: a node uploads what its running attempt produced, streamed and checked by
//! SHA-256; anyone with the admin token or the build's signed link lists and downloads them.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshgate_domain::node_api::{check_artifact_name, is_sha256_hex, ArtifactAnswer, ArtifactQuery};
use meshgate_domain::BuildCommand;
use meshgate_projections::{ArtifactRecord, BuildView};
use uuid::Uuid;

use super::wire::ArtifactRead;
use super::{bad_request, check_node_id, command_failed, held, NodeApi};
use crate::builds::CommandError;
use crate::files::ArtifactError;
use crate::http::access::Access;
use crate::http::extract::{ApiPath, ApiQuery};
use crate::http::openapi::{ArtifactsPage, ErrorBody};
use crate::http::ApiError;

fn answer(app: &NodeApi, build_id: Uuid, record: &ArtifactRecord) -> ArtifactAnswer {
    ArtifactAnswer {
        name: record.name.clone(),
        attempt: record.attempt,
        bytes: record.bytes,
        sha256: record.sha256.clone(),
        url: app.links.artifact_url(build_id, record.attempt, &record.name),
    }
}

fn refused(e: ArtifactError) -> ApiError {
    match e {
        ArtifactError::BadName(problem) => bad_request("name", problem),
        ArtifactError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.to_string())
        }
        ArtifactError::Mismatch { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "checksum_mismatch", e.to_string())
        }
        ArtifactError::Body(ref body) if crate::http::webhook::is_length_limit(body) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.to_string())
        }
        ArtifactError::Body(_) => bad_request("body", e.to_string()),
        ArtifactError::Io(io) => ApiError::unavailable(&io),
    }
}

/// `PUT /api/v1/builds/{id}/artifacts/{name}?node_id=…&attempt=…&sha256=…`: a file the running
/// attempt produced (`name` may hold `/`, sent as `%2F`).
#[utoipa::path(put, path = "/api/v1/builds/{id}/artifacts/{name}", tag = "nodes", security(("node" = [])),
    params(
        ("id" = Uuid, Path, description = "The build's id"),
        ("name" = String, Path, description = "The artifact's path under the build's artifacts: 1-255 bytes, relative, no `..`, NUL or control characters"),
        ArtifactQuery,
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "The artifact stored (or the same one again)", body = ArtifactAnswer),
        (status = 400, description = "The name or a parameter is wrong; nothing was written", body = ErrorBody),
        (status = 401, description = "Missing or invalid node token", body = ErrorBody),
        (status = 404, description = "No such build", body = ErrorBody),
        (status = 409, description = "The node does not hold the build's running attempt", body = ErrorBody),
        (status = 413, description = "The attempt's artifacts would pass `nodes.max_artifact_bytes`", body = ErrorBody),
        (status = 422, description = "The body's SHA-256 is not the one declared; nothing was stored", body = ErrorBody),
        (status = 503, description = "The artifact cannot be stored", body = ErrorBody),
    ))]
pub async fn upload(
    State(app): State<Arc<NodeApi>>,
    headers: HeaderMap,
    path: Result<ApiPath<(Uuid, String)>, ApiError>,
    query: Result<ApiQuery<ArtifactQuery>, ApiError>,
    body: Body,
) -> Result<Json<ArtifactAnswer>, ApiError> {
    let checked = async {
        app.authorize(&headers)?;
        let ApiPath((build_id, name)) = path?;
        let ApiQuery(query) = query?;
        check_node_id(&query.node_id)?;
        check_artifact_name(&name).map_err(|problem| bad_request("name", problem))?;
        if !is_sha256_hex(&query.sha256) {
            return Err(bad_request("sha256", "sha256 must be 64 hex characters"));
        }
        let build = held(&app, build_id, &query.node_id, query.attempt).await?;
        Ok((build_id, name, query, build))
    };
    let (build_id, name, query, build) = match checked.await {
        Ok(checked) => checked,
        Err(refusal) => {
            crate::http::linger::drain(body, crate::http::linger::NODE_UPLOAD).await;
            return Err(refusal);
        }
    };
    let of_attempt = |a: &&ArtifactRecord| a.attempt == query.attempt && !a.removed;
    let already: u64 = build.artifacts.iter().filter(of_attempt).filter(|a| a.name != name).map(|a| a.bytes).sum();
    let stored = app
        .artifacts
        .store(build_id, query.attempt, &name, &query.sha256, already, body.into_data_stream())
        .await
        .map_err(refused)?;
    // The same file again (its answer was lost): stored once, answered again.
    let known = build.artifacts.iter().filter(of_attempt).find(|a| a.name == name && a.sha256 == stored.sha256);
    if let Some(record) = known {
        return Ok(Json(answer(&app, build_id, record)));
    }
    let command = BuildCommand::StoreArtifact {
        node_id: query.node_id.clone(),
        attempt: query.attempt,
        name: name.clone(),
        bytes: stored.bytes,
        sha256: stored.sha256.clone(),
    };
    match app.builds.execute(build_id, Uuid::now_v7(), &command).await {
        Ok(_) => {}
        Err(CommandError::Refused { error, .. }) => {
            // The attempt ended meanwhile: the file is not kept.
            if let Ok(path) = app.artifacts.path(build_id, query.attempt, &name) {
                let _ = tokio::fs::remove_file(path).await;
            }
            return Err(ApiError::new(StatusCode::CONFLICT, "stale_attempt", error.to_string()));
        }
        Err(e) => return Err(command_failed(e)),
    }
    metrics::counter!(crate::metrics::ARTIFACTS).increment(1);
    metrics::counter!(crate::metrics::ARTIFACT_BYTES).increment(stored.bytes);
    tracing::info!(%build_id, attempt = query.attempt, artifact = %name, bytes = stored.bytes, "artifact stored");
    let record = ArtifactRecord {
        attempt: query.attempt,
        name,
        bytes: stored.bytes,
        sha256: stored.sha256,
        stored_at: chrono::Utc::now(),
        removed: false,
    };
    Ok(Json(answer(&app, build_id, &record)))
}

/// The build, if the caller has the admin token, a dashboard session or the build's key.
async fn readable(
    app: &NodeApi,
    access: &Access,
    headers: &HeaderMap,
    build_id: Uuid,
    key: Option<&str>,
) -> Result<BuildView, ApiError> {
    if !key.is_some_and(|k| app.links.opens(build_id, k)) {
        access.authorize(headers)?;
    }
    let build = app.projections.build(build_id).await.map_err(|e| ApiError::unavailable(&e))?;
    build.ok_or_else(|| ApiError::not_found("build"))
}

/// `GET /api/v1/builds/{id}/artifacts`: what the build's attempts produced, with signed links.
#[utoipa::path(get, path = "/api/v1/builds/{id}/artifacts", tag = "builds", security(("admin" = []), ()),
    params(("id" = Uuid, Path, description = "The build's id"), ArtifactRead),
    responses(
        (status = 200, description = "The artifacts the gateway holds, oldest first", body = ArtifactsPage),
        (status = 400, description = "The request is wrong", body = ErrorBody),
        (status = 401, description = "Neither the admin token nor the build's key", body = ErrorBody),
        (status = 404, description = "No such build", body = ErrorBody),
    ))]
pub async fn list(
    State(app): State<Arc<NodeApi>>,
    State(access): State<Arc<Access>>,
    headers: HeaderMap,
    ApiPath(build_id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<ArtifactRead>,
) -> Result<Json<ArtifactsPage>, ApiError> {
    let build = readable(&app, &access, &headers, build_id, query.key.as_deref()).await?;
    let artifacts = build
        .artifacts
        .iter()
        .filter(|a| !a.removed && query.attempt.is_none_or(|n| a.attempt == n))
        .map(|a| answer(&app, build_id, a))
        .collect();
    Ok(Json(ArtifactsPage { artifacts }))
}

/// `GET /api/v1/builds/{id}/artifacts/{name}`: the file, streamed.
#[utoipa::path(get, path = "/api/v1/builds/{id}/artifacts/{name}", tag = "builds", security(("admin" = []), ()),
    params(
        ("id" = Uuid, Path, description = "The build's id"),
        ("name" = String, Path, description = "The artifact's name"),
        ArtifactRead,
    ),
    responses(
        (status = 200, description = "The artifact", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "The request is wrong", body = ErrorBody),
        (status = 401, description = "Neither the admin token nor the build's key", body = ErrorBody),
        (status = 404, description = "No such build or artifact, or it was removed after `retention.artifacts_days`", body = ErrorBody),
    ))]
pub async fn download(
    State(app): State<Arc<NodeApi>>,
    State(access): State<Arc<Access>>,
    headers: HeaderMap,
    ApiPath((build_id, name)): ApiPath<(Uuid, String)>,
    ApiQuery(query): ApiQuery<ArtifactRead>,
) -> Result<Response, ApiError> {
    let build = readable(&app, &access, &headers, build_id, query.key.as_deref()).await?;
    let record = build
        .artifacts
        .iter()
        .rev()
        .find(|a| a.name == name && query.attempt.is_none_or(|n| a.attempt == n))
        .ok_or_else(|| ApiError::not_found("artifact"))?;
    if record.removed {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the artifact was removed after retention.artifacts_days",
        ));
    }
    let path =
        app.artifacts.path(build_id, record.attempt, &record.name).map_err(|_| ApiError::not_found("artifact"))?;
    let file = tokio::fs::File::open(&path).await.map_err(|_| ApiError::not_found("artifact"))?;
    let file_name = name.rsplit('/').next().unwrap_or(&name).replace(['"', '\\'], "_");
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", file_name.escape_default()))
        .unwrap_or(HeaderValue::from_static("attachment"));
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
        (header::CONTENT_DISPOSITION, disposition),
        (header::CONTENT_LENGTH, HeaderValue::from(record.bytes)),
    ];
    Ok((headers, Body::from_stream(tokio_util::io::ReaderStream::new(file))).into_response())
}
