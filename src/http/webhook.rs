//! `POST /youtrack/webhook`: token first, then size, media type and shape, then a durable append.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use meshgate_domain::ingest::Outcome;
use meshgate_domain::payload;
use uuid::Uuid;

use super::client::Client;
use super::limiter::BadTokens;
use super::{ApiError, Counters};
use crate::ingest::{IngestError, IngestService};
use crate::secrets::TokenSet;
use crate::store::StoreError;

/// What the webhook uses: the ingest handler, the tokens it takes and its limits.
pub struct Webhook {
    pub ingest: Arc<IngestService>,
    pub tokens: Arc<TokenSet>,
    /// The header the token arrives in.
    pub token_header: HeaderName,
    pub max_body_bytes: usize,
    /// How long it waits for a body.
    pub body_timeout: std::time::Duration,
    /// Deliveries by what became of them (`/readyz` shows them too).
    pub counters: Arc<Counters>,
    /// Addresses that sent bad tokens, slowed down past their limit.
    pub bad_tokens: BadTokens,
    /// Where deliveries are taken from.
    pub sources: Arc<super::client::Sources>,
}

pub async fn receive(State(webhook): State<Arc<Webhook>>, request: Request) -> Response {
    let correlation_id = Uuid::now_v7();
    let received_at = Utc::now();
    let (parts, body) = request.into_parts();
    let remote = Remote(parts.extensions.get::<Client>().and_then(|c| c.0));
    let started = std::time::Instant::now();
    let mut body = Some(body);
    let result = handle(&webhook, correlation_id, received_at, remote, &parts.headers, &mut body).await;
    let outcome = match &result {
        Ok((_, outcome)) => *outcome,
        Err(e) => match e.status {
            StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::BAD_REQUEST | StatusCode::REQUEST_TIMEOUT => "bad_request",
            _ => "unavailable",
        },
    };
    crate::metrics::delivery(outcome, started.elapsed());
    let result = result.map(|(response, _)| response);
    let mut response = match result {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    // A refusal before the body was read: take in what is still arriving (up to a bound) before
    // answering, so the client reads the refusal instead of a reset from a socket closed on
    // unread data (a lingering close).
    if let Some(unread) = body {
        let bound =
            if response.status() == StatusCode::PAYLOAD_TOO_LARGE { DRAIN_TOO_LARGE } else { webhook.max_body_bytes };
        if !super::linger::drain(unread, bound).await {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    let mut id = Uuid::encode_buffer();
    if let Ok(value) = HeaderValue::from_str(correlation_id.hyphenated().encode_lower(&mut id)) {
        response.headers_mut().insert("x-correlation-id", value);
    }
    response
}

/// Most bytes of a too-large body taken in and thrown away before answering 413.
const DRAIN_TOO_LARGE: usize = 16 << 20;
/// Reads `body` whole if it holds at most `limit` bytes; `Err(None)` as soon as it holds more (the
/// rest left in `body`), `Err(Some(_))` if it could not be read.
async fn read_limited(body: &mut Body, limit: usize) -> Result<bytes::Bytes, Option<axum::Error>> {
    use http_body_util::BodyExt;
    let mut read = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(Some)?.into_data() {
            if read.len() + data.len() > limit {
                return Err(None);
            }
            read.extend_from_slice(&data);
        }
    }
    Ok(read.freeze())
}

/// Whether reading a body failed on the size limit (rather than on a malformed or cut body).
pub(crate) fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The client's address ([`Client`]), formatted only when a log line asks for it.
#[derive(Clone, Copy)]
struct Remote(Option<IpAddr>);

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

/// The answer to an accepted delivery.
#[derive(serde::Serialize)]
struct AcceptedBody<'a> {
    correlation_id: Uuid,
    outcome: &'a str,
    build_id: Option<&'a Uuid>,
    build_ids: &'a [Uuid],
    reason: Option<&'a str>,
}

#[tracing::instrument(name = "delivery", skip_all, fields(correlation_id = %correlation_id))]
async fn handle(
    webhook: &Webhook,
    correlation_id: Uuid,
    received_at: chrono::DateTime<Utc>,
    remote: Remote,
    headers: &HeaderMap,
    body: &mut Option<Body>,
) -> Result<(Response, &'static str), ApiError> {
    let declared_length =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());

    // 0. Where it comes from, when the webhook takes some sources only.
    if !webhook.sources.allowed(remote.0) {
        let total = Counters::bump(&webhook.counters.forbidden);
        tracing::warn!(%remote, forbidden_total = total, "webhook delivery from a source not allowed");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "source_not_allowed",
            "deliveries are not taken from this address ([webhook] allowed_sources)",
        ));
    }

    // 1. The token, before anything else is looked at. Only its presence and length are logged.
    // A token header sent twice is ambiguous (a proxy adding its own copy): refused either way.
    let mut copies = headers.get_all(&webhook.token_header).iter();
    let presented = copies.next().filter(|_| copies.next().is_none());
    if !presented.is_some_and(|token| webhook.tokens.verify(token.as_bytes())) {
        let total = Counters::bump(&webhook.counters.unauthorized);
        tracing::warn!(
            %remote,
            token_headers = headers.get_all(&webhook.token_header).iter().count(),
            received_token_length = presented.map_or(0, |t| t.len()),
            body_length = declared_length,
            rejected_total = total,
            "webhook token mismatch"
        );
        if let Some(wait) = remote.0.and_then(|ip| webhook.bad_tokens.failed(ip, std::time::Instant::now())) {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_bad_tokens",
                format!("too many bad tokens from this address; try again in {} s", wait.as_secs()),
            );
            e.retry_after = Some(wait);
            return Err(e);
        }
        return Err(ApiError::unauthorized());
    }

    // 2. Size, media type, then the body itself.
    let too_large = || {
        let total = Counters::bump(&webhook.counters.too_large);
        tracing::warn!(
            %remote,
            body_length = declared_length,
            limit = webhook.max_body_bytes,
            rejected_total = total,
            "webhook body too large"
        );
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body exceeds {} bytes", webhook.max_body_bytes),
        )
    };
    if declared_length.is_some_and(|n| n > webhook.max_body_bytes as u64) {
        return Err(too_large());
    }
    if !is_json(headers) {
        let total = Counters::bump(&webhook.counters.unsupported_media_type);
        tracing::warn!(%remote, rejected_total = total, "webhook body is not json");
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "content type must be application/json",
        ));
    }
    let mut incoming = body.take().unwrap_or_default();
    let reading = read_limited(&mut incoming, webhook.max_body_bytes);
    let Ok(read) = tokio::time::timeout(webhook.body_timeout, reading).await else {
        let total = Counters::bump(&webhook.counters.bad_request);
        tracing::warn!(%remote, body_length = declared_length, rejected_total = total, "webhook body did not arrive in time");
        return Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", "the body did not arrive in time"));
    };
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(None) => {
            // Past the limit without a length said up front (chunked): the rest is drained before
            // the 413, as for a declared length.
            *body = Some(incoming);
            return Err(too_large());
        }
        Err(Some(e)) if is_length_limit(&e) => return Err(too_large()),
        Err(Some(e)) => {
            let total = Counters::bump(&webhook.counters.bad_request);
            tracing::warn!(%remote, error = %e, rejected_total = total, "webhook body could not be read");
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("cannot read the body: {e}")));
        }
    };
    let bad_request = |message: String, field: Option<String>| {
        let total = Counters::bump(&webhook.counters.bad_request);
        tracing::warn!(%remote, error = %message, field = field.as_deref(), rejected_total = total, "webhook body refused");
        ApiError { status: StatusCode::BAD_REQUEST, code: "invalid_payload", message, field, retry_after: None }
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| bad_request("body is not valid utf-8".into(), None))?;
    let payload::Read { body, fingerprint, delivery } =
        payload::read(text).map_err(|e| bad_request(e.to_string(), e.field().map(str::to_owned)))?;

    // 3. Durably recorded, or refused as a whole.
    let ingested = webhook.ingest.ingest(correlation_id, received_at, &body, fingerprint, &delivery).await;
    let accepted = ingested.map_err(|e| match e {
        // It can never be recorded: said at once, not as something to retry.
        IngestError::Store(StoreError::TooLarge { bytes, max }) => {
            let total = Counters::bump(&webhook.counters.too_large);
            tracing::warn!(%remote, bytes, max, rejected_total = total, "webhook body too large for the log");
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large_for_the_log",
                format!(
                    "this delivery's record would be {bytes} bytes, over the event log's max_append_bytes ({max}); nothing was recorded"
                ),
            )
        }
        IngestError::Store(e @ StoreError::Unknown { .. }) => {
            Counters::bump(&webhook.counters.unavailable);
            tracing::error!(error = %crate::report::chain(&e), "a delivery's outcome is unknown");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                "the event log did not say whether this delivery was recorded; sending it again is safe (it is recognised, never recorded twice)",
            )
        }
        e => {
            Counters::bump(&webhook.counters.unavailable);
            ApiError::unavailable(&e)
        }
    })?;
    Counters::bump(&webhook.counters.accepted);
    let outcome = &accepted.outcome;
    tracing::info!(
        issue = %delivery.issue_id,
        event = delivery.event.as_str(),
        outcome = outcome.name(),
        builds = ?outcome.build_ids(),
        "delivery accepted"
    );
    let reason = match outcome {
        Outcome::Ignored { reason } => Some(reason.as_str()),
        _ => None,
    };
    let build_ids = outcome.build_ids();
    let body = AcceptedBody { correlation_id, outcome: outcome.name(), build_id: build_ids.first(), build_ids, reason };
    Ok(((StatusCode::OK, Json(body)).into_response(), outcome.name()))
}

/// `application/json`, with or without parameters such as `charset`.
pub(super) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}
