//! The node API's request bodies and refusals, as the schema documents them.

use serde::Deserialize;

use crate::http::openapi::ErrorBody;

/// A node id or label: 1-64 of `[A-Za-z0-9._-]`.
#[derive(utoipa::ToSchema)]
#[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
#[allow(dead_code)]
struct NodeName(String);

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// 1-64 of `[A-Za-z0-9._-]`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub(crate) node_id: String,
    /// What the node offers (`xcode-16`, `macos`); each 1-64 of `[A-Za-z0-9._-]`.
    #[serde(default)]
    #[schema(inline, value_type = Vec<NodeName>)]
    pub(crate) labels: Vec<String>,
    /// Builds the node runs at once, 1 to 256.
    #[schema(minimum = 1, maximum = 256)]
    pub(crate) slots: usize,
    /// Seconds to wait for work (at most 300); the gateway's `nodes.claim_wait_seconds` if absent.
    #[schema(maximum = 300)]
    pub(crate) wait_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub(crate) node_id: String,
    pub(crate) attempt: u32,
}

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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultRequest {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub(crate) node_id: String,
    pub(crate) attempt: u32,
    pub(crate) outcome: Outcome,
    /// Why it failed (`script_failed`, `timeout`, `unknown_script`, …).
    pub(crate) reason: Option<String>,
    pub(crate) exit_code: Option<i32>,
    pub(crate) duration_ms: u64,
    /// 40 hex characters.
    #[schema(pattern = "^[0-9A-Fa-f]{40}$")]
    pub(crate) commit_sha: Option<String>,
    /// At most 512 bytes.
    #[schema(max_length = 128)]
    pub(crate) failing_test: Option<String>,
    /// The end of the log, at most 4096 bytes.
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub(crate) log_tail: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// The attempt (required to upload; the newest if absent when reading).
    pub(crate) attempt: Option<u32>,
    /// The build's signed key (a log link), instead of the admin token.
    pub(crate) key: Option<String>,
}
