//! Extractors whose refusals are the API's own JSON errors (`{"error", "message"}`), so every
//! answer the schema documents is JSON, a malformed body or path included.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::FromRequestParts;
use axum::http::StatusCode;

use super::ApiError;

/// A JSON body read after the caller's token was checked (an extractor would read it before):
/// `415` without a JSON content type, `400 invalid_request` when it does not parse.
pub fn json_body<T: serde::de::DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    bytes: &axum::body::Bytes,
) -> Result<T, ApiError> {
    if !super::webhook::is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a body with `Content-Type: application/json`",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()))
}

/// `axum::extract::Path`, refusing with `404 not_found`: a path that does not parse names nothing.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query`, refusing with `400 invalid_request`.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// An operator's JSON body, read after the token was checked; an empty one reads as the defaults.
/// (Any content type: `curl -d` sends a form type.)
pub fn json_or_default<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()))
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        let mut e = ApiError::new(StatusCode::NOT_FOUND, "not_found", rejection.body_text());
        e.field = Some("path".into());
        e
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", rejection.body_text())
    }
}
