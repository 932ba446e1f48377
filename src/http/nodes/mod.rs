//! The node API: build machines claim builds under leases, heartbeat, send their logs while they
//! run, upload artifacts and whole logs, and report results. Authenticated with the pool's bearer
//! token. The bodies are the domain's [`meshgate_domain::node_api`] types, which the agent
//! (`meshgate-worker`) sends and reads too. Claims are in [`claim`], heartbeats and results in
//! [`report`], logs in [`logs`], artifacts in [`artifacts`].

pub mod artifacts;
pub mod claim;
pub mod logs;
pub mod report;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::Utc;
use meshgate_domain::trigger::is_simple_name;
use meshgate_domain::BuildState;
use meshgate_projections::BuildView;
use uuid::Uuid;

use crate::builds::{BuildService, CommandError};
use crate::files::{Artifacts, BuildLogs};
use crate::http::openapi::{ErrorBody, NodeCheckAnswer};
use crate::http::ApiError;
use crate::links::LogLinks;
use crate::projector::Projections;
use crate::secrets::TokenSet;
use crate::store::EventStore;
pub use wire::{ArtifactRead, LogQuery, UploadQuery};

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
    /// The nodes heard asking for work.
    pub polls: Arc<crate::polls::Polls>,
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

    /// A node's JSON request, read after its token is checked, with a `node_id` that is a simple
    /// name.
    fn request<T: serde::de::DeserializeOwned>(
        &self,
        headers: &HeaderMap,
        body: &axum::body::Bytes,
        node_id: fn(&T) -> &str,
    ) -> Result<T, ApiError> {
        self.authorize(headers)?;
        let request: T = crate::http::extract::json_body(headers, body)?;
        check_node_id(node_id(&request))?;
        Ok(request)
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
