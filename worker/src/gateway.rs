//! The agent's side of the node API: one method per call, over HTTPS with rustls (the platform's
//! trust store, the webpki roots and `--ca-file`). Every body is a type of
//! [`meshgate_domain::node_api`], the gateway's own.

use std::path::Path;
use std::time::Duration;

use meshgate_domain::node_api::{
    ArtifactAnswer, ArtifactQuery, ChunkAnswer, ChunkQuery, ClaimAnswer, ClaimRequest, HeartbeatAnswer,
    HeartbeatRequest, ResultRequest,
};
use meshgate_domain::retry::{self, RetryPolicy, Verdict};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::settings::ClientIdentity;

/// What became of a result sent to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Accepted,
    /// The attempt is no longer current (409): final, never resent.
    Refused,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("gateway unreachable: {0}")]
    Unreachable(String),
    #[error("gateway answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("cannot read {path}: {source}")]
    File { path: String, source: std::io::Error },
}

impl GatewayError {
    /// Network errors, 408, 425, 429 and 5xx are worth another try.
    pub fn is_retryable(&self) -> bool {
        match self {
            GatewayError::Unreachable(_) => true,
            GatewayError::Status { status, .. } => retry::classify(status.as_u16()) == Verdict::Retry,
            GatewayError::File { .. } => false,
        }
    }

    pub fn status(&self) -> Option<StatusCode> {
        match self {
            GatewayError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Why a request failed, with every cause (`connection refused`, `invalid peer certificate:
/// UnknownIssuer`) and without the URL.
fn unreachable(error: reqwest::Error) -> GatewayError {
    let timed_out = error.is_timeout();
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let said = cause.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    if timed_out && !text.contains("timed out") {
        text.push_str(": timed out");
    }
    GatewayError::Unreachable(text)
}

/// As [`unreachable`], for a request sent over TLS without a client certificate: a connection
/// closed after it was made and before any answer is what a node API that requires a certificate
/// does (TLS 1.3 refuses it after the client's side of the handshake, and the refusal may reach
/// the client before its request goes out, with no word of certificates), so the error says so.
fn unreachable_without_certificate(error: reqwest::Error) -> GatewayError {
    let after_connecting = !error.is_connect() && !error.is_timeout() && error.is_request();
    match unreachable(error) {
        GatewayError::Unreachable(mut text) if after_connecting && !text.to_lowercase().contains("certificate") => {
            text.push_str(
                " (this node presents no client certificate: a gateway whose node API requires one closes the \
                 connection so; give --client-cert and --client-key)",
            );
            GatewayError::Unreachable(text)
        }
        other => other,
    }
}

/// `random(0, min(cap, base · 2^n))`: full jitter.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    let fraction = u64::from_le_bytes(bytes) as f64 / u64::MAX as f64;
    RetryPolicy { base, cap, max_wait: cap, max_attempts: u32::MAX }.backoff(attempt, fraction)
}

/// How long the node keeps an unused connection to the gateway (shorter than the gateway's
/// `[server] idle_timeout_seconds`, 75 s by default, so the gateway never closes one under a
/// request).
const POOL_IDLE: Duration = Duration::from_secs(50);

#[derive(Clone)]
pub struct Gateway {
    http: reqwest::Client,
    base: reqwest::Url,
    token: SecretString,
    /// Over TLS without a client certificate.
    without_certificate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--gateway `{0}` is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("cannot read the CA file {path}")]
    CaFile { path: String, source: std::io::Error },
    #[error("cannot read {path}")]
    Unreadable { path: String, source: std::io::Error },
    #[error("the CA file {path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("cannot build an HTTPS client")]
    Client(#[source] reqwest::Error),
    #[error("{cert} and {key} are not a PEM certificate and its private key")]
    Identity { cert: String, key: String, source: reqwest::Error },
}

impl Gateway {
    /// A client for the gateway at `base`, trusting the platform's store, the webpki roots and the
    /// certificates of `ca_file`, presenting `identity` when the gateway asks for a certificate.
    pub fn new(
        base: &str,
        token: SecretString,
        ca_file: Option<&Path>,
        identity: Option<&ClientIdentity>,
    ) -> Result<Gateway, ClientError> {
        let url = reqwest::Url::parse(base.trim_end_matches('/')).map_err(|_| ClientError::BadUrl(base.to_owned()))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(ClientError::BadUrl(base.to_owned()));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(POOL_IDLE)
            .use_rustls_tls()
            .tls_built_in_root_certs(true)
            .user_agent(concat!("meshgate-worker/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| ClientError::CaFile { path: shown.clone(), source })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(ClientError::Client)?;
            if certificates.is_empty() {
                return Err(ClientError::NoCertificate { path: shown });
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let Some(identity) = identity {
            let read = |path: &Path| {
                std::fs::read(path)
                    .map_err(|source| ClientError::Unreadable { path: path.display().to_string(), source })
            };
            let pem = [read(&identity.cert_file)?, b"\n".to_vec(), read(&identity.key_file)?].concat();
            let identity = reqwest::Identity::from_pem(&pem).map_err(|source| ClientError::Identity {
                cert: identity.cert_file.display().to_string(),
                key: identity.key_file.display().to_string(),
                source,
            })?;
            builder = builder.identity(identity);
        }
        let without_certificate = url.scheme() == "https" && identity.is_none();
        Ok(Gateway { http: builder.build().map_err(ClientError::Client)?, base: url, token, without_certificate })
    }

    /// `base` + `segments`, each segment percent-encoded (an artifact's `/` included).
    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, GatewayError> {
        let failed = if self.without_certificate { unreachable_without_certificate } else { unreachable };
        let response = request.bearer_auth(self.token.expose_secret()).send().await.map_err(failed)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(GatewayError::Status { status, body: body.chars().take(200).collect() })
    }

    /// Whether the gateway answers its health check (no token needed).
    pub async fn healthy(&self) -> Result<(), GatewayError> {
        let request = self.http.get(self.url(&["healthz"])).timeout(Duration::from_secs(10));
        self.send(request).await.map(|_| ())
    }

    /// Whether the gateway accepts the pool token (`GET /api/v1/nodes/check`: no side effect).
    pub async fn check_token(&self) -> Result<(), GatewayError> {
        let request = self.http.get(self.url(&["api", "v1", "nodes", "check"])).timeout(Duration::from_secs(10));
        self.send(request).await.map(|_| ())
    }

    /// Long-polls for a build; `None` when the wait ended with nothing to do.
    pub async fn claim(&self, ask: &ClaimRequest) -> Result<Option<ClaimAnswer>, GatewayError> {
        let wait = Duration::from_secs(ask.wait_seconds.unwrap_or(30));
        let request = self
            .http
            .post(self.url(&["api", "v1", "nodes", "claim"]))
            .json(ask)
            .timeout(wait + Duration::from_secs(30));
        let response = self.send(request).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        response.json().await.map(Some).map_err(unreachable)
    }

    /// Renews the lease; says whether the build was cancelled meanwhile.
    pub async fn heartbeat(&self, build_id: Uuid, beat: &HeartbeatRequest) -> Result<HeartbeatAnswer, GatewayError> {
        let url = self.url(&["api", "v1", "builds", &build_id.to_string(), "heartbeat"]);
        let request = self.http.post(url).json(beat).timeout(Duration::from_secs(30));
        self.send(request).await?.json().await.map_err(unreachable)
    }

    /// Sends output of a running attempt from `query.offset`.
    pub async fn send_chunk(
        &self,
        build_id: Uuid,
        query: &ChunkQuery,
        bytes: Vec<u8>,
    ) -> Result<ChunkAnswer, GatewayError> {
        let url = self.url(&["api", "v1", "builds", &build_id.to_string(), "log", "chunks"]);
        let request = self
            .http
            .post(url)
            .query(query)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes)
            .timeout(Duration::from_secs(60));
        self.send(request).await?.json().await.map_err(unreachable)
    }

    /// Uploads the attempt's whole log, streamed from `path`: at most `max` bytes of it, saying how
    /// long it really is (`total`), so the gateway marks a cut.
    pub async fn upload_log(&self, build_id: Uuid, attempt: u32, path: &Path, max: u64) -> Result<(), GatewayError> {
        let file_error = |source| GatewayError::File { path: path.display().to_string(), source };
        let file = tokio::fs::File::open(path).await.map_err(file_error)?;
        let total = file.metadata().await.map_err(file_error)?.len();
        let sent = total.min(max);
        let stream = tokio_util::io::ReaderStream::new(tokio::io::AsyncReadExt::take(file, sent));
        let url = self.url(&["api", "v1", "builds", &build_id.to_string(), "log"]);
        let request = self
            .http
            .put(url)
            .query(&[("attempt", attempt as u64), ("total", total)])
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(reqwest::header::CONTENT_LENGTH, sent)
            .body(reqwest::Body::wrap_stream(stream))
            .timeout(Duration::from_secs(600));
        self.send(request).await.map(|_| ())
    }

    /// Uploads one artifact, streamed from `path`, with its SHA-256.
    pub async fn upload_artifact(
        &self,
        build_id: Uuid,
        name: &str,
        query: &ArtifactQuery,
        path: &Path,
        bytes: u64,
    ) -> Result<ArtifactAnswer, GatewayError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| GatewayError::File { path: path.display().to_string(), source })?;
        let stream = tokio_util::io::ReaderStream::new(tokio::io::AsyncReadExt::take(file, bytes));
        let url = self.url(&["api", "v1", "builds", &build_id.to_string(), "artifacts", name]);
        let request = self
            .http
            .put(url)
            .query(query)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, bytes)
            .body(reqwest::Body::wrap_stream(stream))
            // Large files on a slow link: bounded by a generous rate, not a fixed time.
            .timeout(Duration::from_secs(300 + bytes / (1024 * 1024)));
        self.send(request).await?.json().await.map_err(unreachable)
    }

    pub async fn report(&self, build_id: Uuid, result: &ResultRequest) -> Result<Delivered, GatewayError> {
        let url = self.url(&["api", "v1", "builds", &build_id.to_string(), "result"]);
        let request = self.http.post(url).json(result).timeout(Duration::from_secs(30));
        match self.send(request).await {
            Ok(_) => Ok(Delivered::Accepted),
            Err(GatewayError::Status { status: StatusCode::CONFLICT, .. }) => Ok(Delivered::Refused),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_the_gateways_path_and_encode_each_segment() {
        let token = SecretString::from("t".repeat(32));
        let gateway = Gateway::new("https://ci.example.com/meshgate/", token.clone(), None, None).unwrap();
        let url = gateway.url(&["api", "v1", "builds", "b", "artifacts", "reports/junit 1.xml"]);
        assert_eq!(url.as_str(), "https://ci.example.com/meshgate/api/v1/builds/b/artifacts/reports%2Fjunit%201.xml");
        for bad in ["ftp://x", "gateway:8080", "not a url"] {
            assert!(matches!(Gateway::new(bad, token.clone(), None, None), Err(ClientError::BadUrl(_))), "{bad}");
        }
    }
}
