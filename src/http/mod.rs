//! The HTTP surface: the webhook, the node API, the admin API (reads and operations), the
//! dashboard and health checks. Each surface's handlers take the state of their own surface
//! ([`webhook::Webhook`], [`nodes::NodeApi`], [`api::AdminApi`], [`access::Access`] for the
//! dashboard and the admin token, [`Health`], [`reload::Reloadable`]), drawn from [`Surfaces`]
//! by axum's `FromRef`.

pub mod access;
pub mod api;
pub mod client;
mod error;
mod extract;
mod limiter;
mod linger;
pub mod nodes;
pub mod openapi;
mod operations;
mod pause;
pub mod reload;
pub mod serve;
pub mod slack;
mod stats;
pub mod ui;
pub mod webhook;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

pub use error::ApiError;
pub use limiter::BadTokens;

use crate::projector::Projections;
use crate::reconcile::Reconciler;
use crate::store::EventStore;

/// Every surface's state: the router's, from which each handler draws its own.
#[derive(Clone, FromRef)]
pub struct Surfaces {
    pub webhook: Arc<webhook::Webhook>,
    pub nodes: Arc<nodes::NodeApi>,
    pub admin: Arc<api::AdminApi>,
    pub access: Arc<access::Access>,
    pub health: Arc<Health>,
    pub reload: Arc<reload::Reloadable>,
    pub slack: Arc<slack::SlackActions>,
    /// Bad tokens on the admin and node API and the dashboard's sign-in, counted apart from the
    /// webhook's.
    pub bad_api_tokens: Arc<BadTokens>,
    /// Who the client is (trusted proxies) and where the webhook takes deliveries from.
    pub sources: Arc<client::Sources>,
}

/// What `/readyz` reads.
pub struct Health {
    pub store: Arc<dyn EventStore>,
    pub projections: Projections,
    /// The webhook's (shared).
    pub counters: Arc<Counters>,
    /// The sinks that carry pages (PagerDuty, an alert channel).
    pub pagers: Vec<String>,
    pub reconciler: Option<Arc<Reconciler>>,
}

/// Deliveries by what became of them, for logs and `/readyz`.
#[derive(Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub unauthorized: AtomicU64,
    /// From a source `[webhook] allowed_sources` does not name.
    pub forbidden: AtomicU64,
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
            "forbidden": get(&self.forbidden),
            "too_large": get(&self.too_large),
            "unsupported_media_type": get(&self.unsupported_media_type),
            "bad_request": get(&self.bad_request),
            "unavailable": get(&self.unavailable),
        })
    }
}

/// Every route the gateway serves on one listener: the webhook, the admin API, the dashboard and
/// the node API.
pub fn router(surfaces: Surfaces, webhook_path: &str) -> Router {
    main_router(surfaces, webhook_path, node_routes())
}

/// The routes of the main listener when the node API has a listener of its own (`[nodes]
/// listen`): everything but the node API, whose paths answer there as unknown ones do.
pub fn router_without_nodes(surfaces: Surfaces, webhook_path: &str) -> Router {
    main_router(surfaces, webhook_path, utoipa_axum::router::OpenApiRouter::new())
}

/// The node API alone, for its own listener (with `/healthz`).
pub fn node_router(surfaces: Surfaces) -> Router {
    let (api, _) = node_routes().split_for_parts();
    Router::new()
        .merge(api)
        .route("/api/{*rest}", axum::routing::any(unknown_node_path))
        .route("/healthz", get(healthz))
        .layer(log_limit(&surfaces))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&surfaces.sources), client::client_address))
        .with_state(surfaces)
}

/// A whole log is at most `max_log_bytes` (a longer one is sent cut); a little room for an older
/// node that sends the whole of a long log, which is then cut here.
fn log_limit(surfaces: &Surfaces) -> axum::extract::DefaultBodyLimit {
    axum::extract::DefaultBodyLimit::max(surfaces.nodes.settings.max_log_bytes.saturating_add(1 << 20))
}

fn main_router(surfaces: Surfaces, webhook_path: &str, nodes: utoipa_axum::router::OpenApiRouter<Surfaces>) -> Router {
    // YouTrack posts to every configured URL, so `/path` and `/path/` both arrive; both are served
    // and their deliveries fold into one build.
    let trimmed = webhook_path.trim_end_matches('/');
    let log_limit = log_limit(&surfaces);
    let (api, _) = admin_routes().merge(nodes).split_for_parts();
    // The schema documents the whole API wherever its parts are served.
    let document = Arc::new(openapi_document().to_pretty_json().unwrap_or_default());
    let slowed = axum::middleware::from_fn_with_state(Arc::clone(&surfaces.bad_api_tokens), limiter::slow_bad_tokens);
    Router::new()
        .route(trimmed, post(webhook::receive))
        .route(&format!("{trimmed}/"), post(webhook::receive))
        .merge(api.merge(ui::routes()).route("/api/{*rest}", axum::routing::any(unknown_api)).layer(slowed))
        .route("/api/openapi.json", get(move || openapi_json(Arc::clone(&document))))
        .route(
            "/chat/slack/actions",
            post(slack::actions).layer(axum::extract::DefaultBodyLimit::max(slack::MAX_BODY_BYTES)),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(log_limit)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&surfaces.sources), client::client_address))
        .with_state(surfaces)
}

/// The admin API, with the schema generated from its handlers.
fn admin_routes() -> utoipa_axum::router::OpenApiRouter<Surfaces> {
    use utoipa::OpenApi;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(api::list_builds))
        .routes(routes!(api::get_build))
        .routes(routes!(api::get_build_by_number))
        .routes(routes!(api::queue))
        .routes(routes!(stats::stats))
        .routes(routes!(api::nodes))
        .routes(routes!(api::outbox))
        .routes(routes!(operations::drain_node))
        .routes(routes!(api::events))
        .routes(routes!(api::deliveries))
        .routes(routes!(api::stream))
        .routes(routes!(reload::reload))
        .routes(routes!(operations::reconcile))
        .routes(routes!(operations::resend))
        .routes(routes!(operations::recover))
        .routes(routes!(operations::replay))
        .routes(routes!(operations::selftest))
        .routes(routes!(operations::cancel_build))
        .routes(routes!(operations::requeue_build))
        .routes(routes!(operations::rebuild_build))
        .routes(routes!(pause::pause_queue))
        .routes(routes!(pause::resume_queue))
        .routes(routes!(nodes::logs::download))
        .routes(routes!(nodes::artifacts::list))
        .merge(artifact_router(routes!(nodes::artifacts::download)))
}

/// The node API: what build nodes call, with the pool token.
fn node_routes() -> utoipa_axum::router::OpenApiRouter<Surfaces> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(nodes::check))
        .routes(routes!(nodes::claim::claim))
        .routes(routes!(nodes::report::heartbeat))
        .routes(routes!(nodes::report::result))
        .routes(routes!(nodes::logs::upload))
        .routes(routes!(nodes::logs::chunk))
        .merge(artifact_router(routes!(nodes::artifacts::upload)))
}

/// Artifacts are streamed to disk and capped by `nodes.max_artifact_bytes` as they arrive, not by
/// the body limit of the other routes.
fn artifact_router(
    routes: utoipa_axum::router::UtoipaMethodRouter<Surfaces>,
) -> utoipa_axum::router::OpenApiRouter<Surfaces> {
    utoipa_axum::router::OpenApiRouter::new().routes(routes).layer(axum::extract::DefaultBodyLimit::disable())
}

/// The schema of the API (`GET /api/openapi.json`, no token: it holds no secrets).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut document = admin_routes().merge(node_routes()).into_openapi();
    openapi::document_throttling(&mut document);
    document
}

/// A path under `/api/` on the node API's listener that is none of the node API's.
async fn unknown_node_path() -> ApiError {
    ApiError::not_found("path")
}

async fn openapi_json(document: Arc<String>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document.as_str().to_owned())
}

/// A path under `/api/` that is none of the API's: `401` without the admin token (a stranger
/// learns nothing of what exists), `404` with it.
async fn unknown_api(_: access::Reader) -> ApiError {
    ApiError::not_found("path")
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when the store takes writes and the projections have caught up with the log.
async fn readyz(State(app): State<Arc<Health>>) -> impl IntoResponse {
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
