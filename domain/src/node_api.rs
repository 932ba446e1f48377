//! The node API's wire types: what a build node's agent (`meshgate-worker`) and the gateway say to
//! each other, defined once for both. The gateway documents them in its OpenAPI schema; the agent
//! sends and reads them. Fields added later carry defaults, so an agent and a gateway of
//! neighbouring versions still understand each other.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::xcode::Xcode;

/// Most bytes of log a result carries (`log_tail`).
pub const MAX_LOG_TAIL_BYTES: usize = 4096;
/// Most bytes of a failing test's name.
pub const MAX_FAILING_TEST_BYTES: usize = 512;
/// Most bytes of an artifact's name.
pub const MAX_ARTIFACT_NAME_BYTES: usize = 255;
/// Most bytes of a retry rule or hook problem carried in a result.
pub const MAX_NOTE_BYTES: usize = 200;

/// `POST /api/v1/nodes/claim`: a node asks for a build it may run.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// 1-64 of `[A-Za-z0-9._-]`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._-]{1,64}$"))]
    pub node_id: String,
    /// What the node offers (`xcode-16`, `macos`); each 1-64 of `[A-Za-z0-9._-]`.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Builds the node runs at once, 1 to 256.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 256))]
    pub slots: usize,
    /// Seconds to wait for work (at most 300); the gateway's `nodes.claim_wait_seconds` if absent.
    #[cfg_attr(feature = "openapi", schema(maximum = 300))]
    #[serde(default)]
    pub wait_seconds: Option<u64>,
    /// The Xcodes the node has (at most 32); builds that require one go only to nodes that have it.
    #[serde(default)]
    pub xcodes: Vec<Xcode>,
}

/// What a node needs to know of a claimed build.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedBuild {
    pub build_id: Uuid,
    pub issue_id: String,
    /// The issue's summary when the build was requested (tracker text: data, never a command).
    #[serde(default)]
    pub summary: Option<String>,
    pub project: String,
    pub trigger: String,
    pub script: String,
    pub lane: String,
    pub git_ref: String,
    /// The Xcode the build requires (`16.2` exactly, `16` any 16.x), from its trigger or lane.
    #[serde(default)]
    pub xcode: Option<String>,
}

/// What a node may send for one build.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLimits {
    /// `nodes.max_log_bytes`: a longer log is cut, with a line saying so.
    pub max_log_bytes: u64,
    /// `nodes.max_artifact_bytes`: artifacts past it are skipped.
    pub max_artifact_bytes: u64,
}

impl Default for NodeLimits {
    /// What a gateway that does not say allows.
    fn default() -> Self {
        NodeLimits { max_log_bytes: 10 * 1024 * 1024, max_artifact_bytes: 0 }
    }
}

/// A claimed build: run `build.script` as attempt `attempt`, heartbeat before the lease ends.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimAnswer {
    pub build: ClaimedBuild,
    pub attempt: u32,
    #[serde(with = "crate::rfc3339")]
    pub lease_expires_at: DateTime<Utc>,
    pub lease_seconds: i64,
    #[serde(default)]
    pub limits: NodeLimits,
}

/// `POST /api/v1/builds/{id}/heartbeat`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._-]{1,64}$"))]
    pub node_id: String,
    pub attempt: u32,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    /// The build was cancelled: stop it and report `cancelled`.
    pub cancelled: bool,
    /// The renewed lease (absent when cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::rfc3339::option")]
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// How an attempt ended, as the node saw it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    /// The node stopped the build (it was cancelled, its lease was lost, or the node is draining).
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// Why an attempt failed on the node. A failure reported without one (an agent of an earlier
/// release) is the script's: [`FailureReason::ScriptFailed`], the default.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The script exited with a code other than 0.
    #[default]
    ScriptFailed,
    /// The script ran past its `timeout_seconds`.
    Timeout,
    /// The script wrote nothing for `no_output_timeout_seconds`.
    Hung,
    /// The node has no script of that name.
    UnknownScript,
    /// The script could not be started (not found, not executable).
    ScriptNotStarted,
    /// A `before_build` hook failed: the script did not run.
    SetupFailed,
    /// The node has no Xcode that meets the build's requirement.
    NoXcode,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::ScriptFailed => "script_failed",
            FailureReason::Timeout => "timeout",
            FailureReason::Hung => "hung",
            FailureReason::UnknownScript => "unknown_script",
            FailureReason::ScriptNotStarted => "script_not_started",
            FailureReason::SetupFailed => "setup_failed",
            FailureReason::NoXcode => "no_xcode",
        }
    }
}

/// Why the node stopped a running script.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    Cancelled,
    Timeout,
    Hung,
    /// The gateway refused a heartbeat: the attempt is no longer this node's.
    LeaseLost,
    /// The node was told to stop (SIGTERM) and its drain time ran out.
    Drained,
}

/// How the script's process group went: it exited within `stop_grace_seconds` of SIGTERM, or was
/// killed with SIGKILL after it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopSignal {
    Terminated,
    Killed,
}

/// A script the node stopped: why, and how.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stop {
    pub cause: StopCause,
    pub signal: StopSignal,
}

/// `POST /api/v1/builds/{id}/result`: how an attempt ended.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultRequest {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._-]{1,64}$"))]
    pub node_id: String,
    pub attempt: u32,
    pub outcome: Outcome,
    /// Why it failed (with `outcome = failed`).
    #[serde(default)]
    pub reason: Option<FailureReason>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// 40 hex characters.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9A-Fa-f]{40}$"))]
    #[serde(default)]
    pub commit_sha: Option<String>,
    /// At most 512 bytes.
    #[cfg_attr(feature = "openapi", schema(max_length = 128))]
    #[serde(default)]
    pub failing_test: Option<String>,
    /// The end of the log, at most 4096 bytes.
    #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
    #[serde(default)]
    pub log_tail: String,
    /// The node stopped the script: why, and whether SIGTERM was enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Seconds without output after which the script was stopped as hung.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_output_seconds: Option<u64>,
    /// The script's `retry_on` rule the failure matched (`Failed to boot simulator`, `exit:75`):
    /// infrastructure, not the change; the gateway may run the build again. At most 200 bytes.
    #[cfg_attr(feature = "openapi", schema(max_length = 200))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_rule: Option<String>,
    /// What went wrong in the `after_build` hook, if anything (never a build failure). At most
    /// 200 bytes.
    #[cfg_attr(feature = "openapi", schema(max_length = 200))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_build: Option<String>,
    /// Artifacts not uploaded because the build's artifacts passed `max_artifact_bytes`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub artifacts_skipped: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultAnswer {
    pub accepted: bool,
    /// The build's state after the result (absent for a repeated result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The same result was already accepted; nothing was recorded again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
}

/// `POST /api/v1/builds/{id}/log/chunks`: where a chunk of a running attempt's output goes.
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkQuery {
    pub node_id: String,
    pub attempt: u32,
    /// Where the chunk starts in the attempt's output (bytes).
    pub offset: u64,
}

/// How much of an attempt's output the gateway holds. A chunk is stored from where the stored
/// output ends: what it repeats is not stored twice, and a chunk that starts past the end is not
/// stored (send again from `received`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkAnswer {
    /// Bytes of output received so far.
    pub received: u64,
    /// The log reached `max_log_bytes`: what follows is not kept.
    pub cut: bool,
}

/// `PUT /api/v1/builds/{id}/artifacts/{name}`: who uploads, and the file's checksum.
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactQuery {
    pub node_id: String,
    pub attempt: u32,
    /// The file's SHA-256, 64 hex characters: the upload is refused (422) if the bytes differ.
    pub sha256: String,
}

/// One stored artifact.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactAnswer {
    /// Its path under the build's artifacts (`App.ipa`, `reports/junit.xml`).
    pub name: String,
    pub attempt: u32,
    pub bytes: u64,
    /// 64 lower-case hex characters.
    pub sha256: String,
    /// A signed link that downloads it without a token.
    pub url: String,
}

/// Whether `name` may name an artifact: 1-255 bytes, relative, `/`-separated parts that are
/// neither empty, `.` nor `..`, and no NUL, control character or backslash. Nothing it names
/// can be outside the build's folder.
pub fn check_artifact_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_ARTIFACT_NAME_BYTES {
        return Err("an artifact's name must be 1-255 bytes");
    }
    if name.chars().any(|c| c.is_control() || c == '\\') {
        return Err("an artifact's name may hold no NUL, control character or backslash");
    }
    if name.starts_with('/') {
        return Err("an artifact's name must be relative");
    }
    if name.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err("an artifact's name may hold no empty, `.` or `..` part");
    }
    Ok(())
}

/// Whether `text` is a SHA-256 in hex (64 characters, either case).
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_names_that_could_leave_the_build_folder_are_refused() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\0b", "a\\b", "a\nb"] {
            assert!(check_artifact_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_artifact_name(&"a".repeat(256)).is_err());
        for good in ["App.ipa", "reports/junit.xml", "App.app.dSYM.zip", "..hidden", "a..b", &"a".repeat(255)] {
            assert_eq!(check_artifact_name(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn a_result_of_an_older_agent_reads_with_the_fields_it_did_not_send_empty() {
        let old = r#"{"node_id":"mac-1","attempt":1,"outcome":"failed","reason":"timeout","exit_code":null,
            "duration_ms":5,"commit_sha":null,"failing_test":null,"log_tail":"x"}"#;
        let result: ResultRequest = serde_json::from_str(old).unwrap();
        assert_eq!(result.reason, Some(FailureReason::Timeout));
        assert_eq!((result.stop, result.retry_rule, result.artifacts_skipped), (None, None, 0));
        let claim: ClaimAnswer = serde_json::from_value(serde_json::json!({
            "build": {"build_id": Uuid::nil(), "issue_id": "MOB-1", "project": "MOB", "trigger": "t",
                      "script": "s", "lane": "default", "git_ref": "main"},
            "attempt": 1, "lease_expires_at": "2026-12-07T00:00:00Z", "lease_seconds": 60
        }))
        .unwrap();
        assert_eq!(claim.limits, NodeLimits::default());
        assert_eq!(claim.build.xcode, None);
    }
}
