//! The HTTP surface: the webhook, the read API, and health checks.

pub mod admin;
mod api;
mod error;
pub mod nodes;
mod operations;
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

use crate::builds::BuildService;
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
    pub builds: BuildService,
    pub nodes_tokens: TokenSet,
    pub lanes: Vec<meshgate_projections::LaneRule>,
    pub nodes: NodeSettings,
    /// One claim decision at a time (lane caps and node slots are read, then written).
    pub claim_lock: tokio::sync::Mutex<()>,
    /// Set when the gateway is stopping: long polls answer at once.
    pub stopping: tokio::sync::watch::Sender<bool>,
    pub logs_dir: std::path::PathBuf,
    /// Per-build log links (absolute, signed).
    pub links: crate::links::LogLinks,
    /// The certificate HTTPS is served with, reloaded with the tokens (none: plain HTTP).
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// The sinks that carry pages (PagerDuty, an alert channel), for `/readyz`.
    pub pagers: Vec<String>,
    /// The configuration file the gateway started with, read again by a token reload.
    pub config_file: Option<std::path::PathBuf>,
    /// Sweeps of YouTrack's activity stream (none: no `[youtrack]` base URL and token).
    pub reconciler: Option<Arc<crate::reconcile::Reconciler>>,
    /// The configuration the gateway started with (the self-test reads the file again if there is one).
    pub config: Arc<crate::config::Config>,
    /// Every outbound sink by name, with the milestones it sends.
    pub sinks: HashMap<String, Vec<meshgate_domain::notify::Milestone>>,
}

/// The `[nodes]` settings in the units the handlers use.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub lease: chrono::Duration,
    pub claim_wait: Duration,
    pub max_attempts: u32,
    pub max_log_bytes: usize,
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
    let log_limit = axum::extract::DefaultBodyLimit::max(state.nodes.max_log_bytes);
    Router::new()
        .route(trimmed, post(webhook::receive))
        .route(&format!("{trimmed}/"), post(webhook::receive))
        .route("/api/v1/builds", get(api::list_builds))
        .route("/api/v1/builds/{id}", get(api::get_build))
        .route("/api/v1/queue", get(api::queue))
        .route("/api/v1/nodes", get(api::nodes))
        .route("/api/v1/nodes/{id}/drain", post(operations::drain_node))
        .route("/api/v1/events", get(api::events))
        .route("/api/v1/events/stream", get(api::stream))
        .route("/api/v1/tokens/reload", post(admin::reload))
        .route("/api/v1/reconcile", post(operations::reconcile))
        .route("/api/v1/notifications/resend", post(operations::resend))
        .route("/api/v1/notifications/recover", post(operations::recover))
        .route("/api/v1/deliveries/replay", post(operations::replay))
        .route("/api/v1/selftest", post(operations::selftest))
        .route("/api/v1/builds/{id}/cancel", post(operations::cancel_build))
        .route("/api/v1/builds/{id}/requeue", post(operations::requeue_build))
        .route("/api/v1/nodes/claim", post(nodes::claim))
        .route("/api/v1/builds/{id}/heartbeat", post(nodes::heartbeat))
        .route("/api/v1/builds/{id}/result", post(nodes::result))
        .route("/api/v1/builds/{id}/log", get(nodes::download_log).put(nodes::upload_log))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(log_limit)
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
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": match &store { Ok(()) => "writable".to_owned(), Err(e) => e.clone() },
        "projections": {"position": app.projections.position(), "head": head, "caught_up": caught_up},
        "deliveries": app.counters.snapshot(),
        "pager": if app.projections.read(|p| app.pagers.iter().any(|s| p.outbox.pager_failing(s))) { "failing" } else { "ok" },
        // The term of this gateway's lease on the work done once (reaper, dispatchers, sweeps),
        // or null while another gateway holds it.
        "lease": {"term": *app.store.leadership().borrow()},
    });
    // Reconciliation failing does not make the gateway unready: webhooks are still taken.
    if let Some(reconciler) = &app.reconciler {
        let health = reconciler.health();
        let failing = health.consecutive_failures >= crate::reconcile::FAILURES_SHOWN;
        body["reconcile"] = json!({
            "status": if failing { "failing" } else { "ok" },
            "consecutive_failures": health.consecutive_failures,
            "last_error": health.last_error,
            "last_window_end": health.last_window_end,
        });
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body))
}
