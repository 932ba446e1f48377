//! The HTTP surface: the webhook, the read API, and health checks.

mod api;
mod error;
mod webhook;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderName, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

pub use error::ApiError;

use crate::ingest::IngestService;
use crate::projector::Projections;
use crate::secrets::TokenSet;
use crate::store::EventStore;

/// Everything the handlers share.
pub struct AppState {
    pub store: Arc<dyn EventStore>,
    pub ingest: IngestService,
    pub projections: Projections,
    pub webhook_tokens: TokenSet,
    pub admin_tokens: TokenSet,
    pub token_header: HeaderName,
    pub max_body_bytes: usize,
    pub lane_priorities: HashMap<String, i64>,
    pub counters: Counters,
}

/// Deliveries by what became of them, for logs and `/readyz`.
#[derive(Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub unauthorized: AtomicU64,
    pub too_large: AtomicU64,
    pub unsupported_media_type: AtomicU64,
    pub bad_request: AtomicU64,
    pub unavailable: AtomicU64,
}

impl Counters {
    /// Increments a counter and returns its new value.
    pub fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn snapshot(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "accepted": get(&self.accepted),
            "unauthorized": get(&self.unauthorized),
            "too_large": get(&self.too_large),
            "unsupported_media_type": get(&self.unsupported_media_type),
            "bad_request": get(&self.bad_request),
            "unavailable": get(&self.unavailable),
        })
    }
}

pub fn router(state: Arc<AppState>, webhook_path: &str) -> Router {
    // YouTrack posts to every configured URL, so `/path` and `/path/` both arrive; both are served
    // and their deliveries fold into one build.
    let trimmed = webhook_path.trim_end_matches('/');
    Router::new()
        .route(trimmed, post(webhook::receive))
        .route(&format!("{trimmed}/"), post(webhook::receive))
        .route("/api/v1/builds", get(api::list_builds))
        .route("/api/v1/builds/{id}", get(api::get_build))
        .route("/api/v1/queue", get(api::queue))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when the store takes writes and the projections have caught up with the log.
async fn readyz(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    let writable = tokio::time::timeout(Duration::from_secs(2), app.store.check_writable()).await;
    let store = match writable {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    };
    let head = *app.store.head().borrow();
    let caught_up = app.projections.caught_up_to(head, Duration::from_secs(1)).await;
    let ready = store.is_ok() && caught_up;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": match &store { Ok(()) => "writable".to_owned(), Err(e) => e.clone() },
        "projections": {"position": app.projections.position(), "head": head, "caught_up": caught_up},
        "deliveries": app.counters.snapshot(),
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body))
}
