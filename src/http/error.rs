//! One error type for every handler: a status, a stable code and a message. Server-side failures
//! are logged in full and answered with an opaque body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Sent as `Retry-After` (whole seconds).
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), field: None, retry_after: None }
    }

    /// `400 invalid_filter` about one query parameter.
    pub fn invalid_filter(field: &str, message: impl Into<String>) -> Self {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_filter", message);
        e.field = Some(field.into());
        e
    }

    pub fn unauthorized() -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or invalid token")
    }

    /// A change from a dashboard session without its CSRF token.
    pub fn csrf() -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "csrf", "a change from the dashboard needs its X-CSRF-Token")
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    /// A failure on our side: logged with its cause, answered opaquely.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed on the server side");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the event log is unavailable; nothing was recorded",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = super::openapi::ErrorBody { error: self.code.to_owned(), message: self.message, field: self.field };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, wait.as_secs().max(1).into());
        }
        response
    }
}

/// A store that fails answers 503: nothing was recorded.
impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::unavailable(&crate::report::chain(&e))
    }
}
