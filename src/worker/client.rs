//! The worker's side of the node API, with retries: exponential backoff with full jitter.

use std::time::Duration;

use meshgate_domain::retry::{self, RetryPolicy, Verdict};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// A claimed build, as the gateway hands it out.
#[derive(Debug, Clone, Deserialize)]
pub struct Claim {
    pub build: ClaimedBuild,
    pub attempt: u32,
    pub lease_seconds: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClaimedBuild {
    pub build_id: Uuid,
    pub issue_id: String,
    /// The issue's summary when the build was requested.
    #[serde(default)]
    pub summary: Option<String>,
    pub project: String,
    pub script: String,
    pub git_ref: String,
}

/// A result as sent to the gateway (and spooled to disk until it is taken).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultBody {
    pub node_id: String,
    pub attempt: u32,
    pub outcome: String,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub commit_sha: Option<String>,
    pub failing_test: Option<String>,
    pub log_tail: String,
}

/// What became of a result sent to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Accepted,
    /// The attempt is no longer current (409): final, never resent.
    Refused,
}

#[derive(Clone)]
pub struct Gateway {
    http: reqwest::Client,
    base: String,
    token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("gateway unreachable: {0}")]
    Unreachable(String),
    #[error("gateway answered {status}: {body}")]
    Status { status: StatusCode, body: String },
}

impl GatewayError {
    /// Network errors, 408, 425, 429 and 5xx are worth another try.
    pub fn is_retryable(&self) -> bool {
        match self {
            GatewayError::Unreachable(_) => true,
            GatewayError::Status { status, .. } => retry::classify(status.as_u16()) == Verdict::Retry,
        }
    }
}

/// Why the gateway could not be reached, with every cause (`connection refused`, `invalid peer
/// certificate: UnknownIssuer`).
fn unreachable(error: reqwest::Error) -> GatewayError {
    GatewayError::Unreachable(crate::report::http_error(error))
}

/// `random(0, min(cap, base · 2^n))`: full jitter.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    let fraction = u64::from_le_bytes(bytes) as f64 / u64::MAX as f64;
    RetryPolicy { base, cap, max_wait: cap, max_attempts: u32::MAX }.backoff(attempt, fraction)
}

/// How long the node keeps an unused connection to the gateway (shorter than the gateway's
/// `[server] idle_timeout_seconds`).
const POOL_IDLE: Duration = Duration::from_secs(50);

impl Gateway {
    /// A client for the gateway at `base` (`http://` or `https://`), trusting the platform's store,
    /// the webpki roots and the certificates of `ca_file`.
    pub fn new(base: &str, token: String, ca_file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        // Pooled connections are let go before the gateway's idle timeout (75 s by default) would
        // close one under a request.
        let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).pool_idle_timeout(POOL_IDLE);
        let http = crate::tls::client(builder, ca_file)?;
        Ok(Gateway { http, base: base.trim_end_matches('/').to_owned(), token })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, GatewayError> {
        let response = request.bearer_auth(&self.token).send().await.map_err(unreachable)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(GatewayError::Status { status, body: body.chars().take(200).collect() })
    }

    /// Long-polls for a build; `None` when the wait ended with nothing to do.
    pub async fn claim(
        &self,
        node_id: &str,
        labels: &[String],
        slots: usize,
        wait: Duration,
    ) -> Result<Option<Claim>, GatewayError> {
        let body =
            serde_json::json!({"node_id": node_id, "labels": labels, "slots": slots, "wait_seconds": wait.as_secs()});
        let request = self
            .http
            .post(format!("{}/api/v1/nodes/claim", self.base))
            .json(&body)
            .timeout(wait + Duration::from_secs(30));
        let response = self.send(request).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        response.json().await.map(Some).map_err(unreachable)
    }

    /// Renews the lease; `Ok(true)` when the build was cancelled meanwhile.
    pub async fn heartbeat(&self, build_id: Uuid, node_id: &str, attempt: u32) -> Result<bool, GatewayError> {
        let body = serde_json::json!({"node_id": node_id, "attempt": attempt});
        let request = self
            .http
            .post(format!("{}/api/v1/builds/{build_id}/heartbeat", self.base))
            .json(&body)
            .timeout(Duration::from_secs(30));
        let answer: Value = self.send(request).await?.json().await.map_err(unreachable)?;
        Ok(answer["cancelled"] == true)
    }

    pub async fn upload_log(&self, build_id: Uuid, attempt: u32, log: Vec<u8>) -> Result<(), GatewayError> {
        let request = self
            .http
            .put(format!("{}/api/v1/builds/{build_id}/log?attempt={attempt}", self.base))
            .body(log)
            .timeout(Duration::from_secs(300));
        self.send(request).await.map(|_| ())
    }

    pub async fn report(&self, build_id: Uuid, result: &ResultBody) -> Result<Delivered, GatewayError> {
        let request = self
            .http
            .post(format!("{}/api/v1/builds/{build_id}/result", self.base))
            .json(result)
            .timeout(Duration::from_secs(30));
        match self.send(request).await {
            Ok(_) => Ok(Delivered::Accepted),
            Err(GatewayError::Status { status: StatusCode::CONFLICT, .. }) => Ok(Delivered::Refused),
            Err(e) => Err(e),
        }
    }
}
