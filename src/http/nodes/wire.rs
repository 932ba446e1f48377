//! The node API's refusals and query parameters, as the schema documents them. The bodies are the
//! domain's [`meshgate_domain::node_api`] types, shared with the agent.

use serde::Deserialize;

use crate::http::openapi::ErrorBody;

/// How a heartbeat or result is refused.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum AttemptRefusals {
    #[response(status = 400, description = "The request is wrong")]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "Missing or invalid node token")]
    Unauthorized(ErrorBody),
    #[response(status = 404, description = "No such build")]
    NotFound(ErrorBody),
    #[response(status = 409, description = "The attempt is no longer the build's current one (recorded)")]
    Stale(ErrorBody),
    #[response(status = 415, description = "Not JSON")]
    NotJson(ErrorBody),
    #[response(status = 503, description = "The log is unavailable")]
    Unavailable(ErrorBody),
}

/// Reading a log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// The attempt (the newest if absent).
    pub(crate) attempt: Option<u32>,
    /// The build's signed key (a log link), instead of the admin token.
    pub(crate) key: Option<String>,
    /// Bytes to skip at the start (to resume reading).
    pub(crate) offset: Option<u64>,
    /// `true`: keep the answer open and send what arrives while the attempt runs.
    pub(crate) follow: Option<bool>,
}

/// Uploading an attempt's whole log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    pub(crate) attempt: Option<u32>,
    /// How long the log really is, when the body holds only its first `max_log_bytes`.
    pub(crate) total: Option<u64>,
}

/// Reading an artifact.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRead {
    /// The attempt that stored it (the newest that has the name, if absent).
    pub(crate) attempt: Option<u32>,
    /// The build's signed key (an artifact link), instead of the admin token.
    pub(crate) key: Option<String>,
}
