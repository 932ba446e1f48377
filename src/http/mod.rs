//! The HTTP surface: the webhook, the read API, and health checks.

pub mod admin;
mod api;
mod error;
mod extract;
mod limiter;
pub mod nodes;
pub mod openapi;
mod operations;
pub mod serve;
pub mod ui;
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
pub use limiter::BadTokens;

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
    /// How long the webhook waits for its body.
    pub body_timeout: Duration,
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
    /// Build logs: live chunks and whole uploads.
    pub logs: Arc<crate::files::BuildLogs>,
    /// Build artifacts.
    pub artifacts: Arc<crate::files::Artifacts>,
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
    /// Addresses that sent bad webhook tokens, slowed down past their limit.
    pub bad_tokens: limiter::BadTokens,
    /// The same limit, counted apart, for the admin and node API and the dashboard's sign-in.
    pub bad_api_tokens: limiter::BadTokens,
    /// Dashboard sessions signed in on this gateway.
    pub sessions: ui::Sessions,
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
    // A whole log is at most `max_log_bytes` (a longer one is sent cut); a little room for an
    // older node that sends the whole of a long log, which is then cut here.
    let log_limit = axum::extract::DefaultBodyLimit::max(state.nodes.max_log_bytes.saturating_add(1 << 20));
    let (api, mut document) = api_router().split_for_parts();
    openapi::document_throttling(&mut document);
    let document = Arc::new(document.to_pretty_json().unwrap_or_default());
    let slowed = axum::middleware::from_fn_with_state(Arc::clone(&state), limiter::slow_bad_tokens);
    Router::new()
        .route(trimmed, post(webhook::receive))
        .route(&format!("{trimmed}/"), post(webhook::receive))
        .merge(api.merge(ui::routes()).layer(slowed))
        .route("/api/openapi.json", get(move || openapi_json(Arc::clone(&document))))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(log_limit)
        .with_state(state)
}

/// The admin and node API, with the schema generated from its handlers.
fn api_router() -> utoipa_axum::router::OpenApiRouter<Arc<AppState>> {
    use utoipa::OpenApi;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(api::list_builds))
        .routes(routes!(api::get_build))
        .routes(routes!(api::queue))
        .routes(routes!(api::nodes))
        .routes(routes!(api::outbox))
        .routes(routes!(operations::drain_node))
        .routes(routes!(api::events))
        .routes(routes!(api::stream))
        .routes(routes!(admin::reload))
        .routes(routes!(operations::reconcile))
        .routes(routes!(operations::resend))
        .routes(routes!(operations::recover))
        .routes(routes!(operations::replay))
        .routes(routes!(operations::selftest))
        .routes(routes!(operations::cancel_build))
        .routes(routes!(operations::requeue_build))
        .routes(routes!(nodes::check))
        .routes(routes!(nodes::claim))
        .routes(routes!(nodes::heartbeat))
        .routes(routes!(nodes::result))
        .routes(routes!(nodes::logs::download, nodes::logs::upload))
        .routes(routes!(nodes::logs::chunk))
        .routes(routes!(nodes::artifacts::list))
        .merge(artifact_router())
}

/// Artifacts are streamed to disk and capped by `nodes.max_artifact_bytes` as they arrive, not by
/// the body limit of the other routes.
fn artifact_router() -> utoipa_axum::router::OpenApiRouter<Arc<AppState>> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(nodes::artifacts::download, nodes::artifacts::upload))
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// The schema of the API (`GET /api/openapi.json`, no token: it holds no secrets).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut document = api_router().into_openapi();
    openapi::document_throttling(&mut document);
    document
}

async fn openapi_json(document: Arc<String>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document.as_str().to_owned())
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
