//! The read API under `/api/v1`, guarded by `Authorization: Bearer <admin token>`.
//!
//! Answers come from the projections once they have caught up with the log as it stood when the
//! request arrived, so a client reads what it wrote.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use meshgate_domain::stream::build_stream;

use super::{ApiError, AppState};

const READ_YOUR_WRITES: Duration = Duration::from_secs(2);

pub(super) fn authorize(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(token) if app.admin_tokens.verify(token.trim().as_bytes()) => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

async fn caught_up(app: &AppState) -> Result<(), ApiError> {
    let head = *app.store.head().borrow();
    if app.projections.caught_up_to(head, READ_YOUR_WRITES).await {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "projections_behind",
            "projections have not caught up with the log",
        ))
    }
}

#[derive(Debug, Deserialize)]
pub struct BuildFilter {
    issue: Option<String>,
    state: Option<String>,
}

pub async fn list_builds(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(filter): Query<BuildFilter>,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    caught_up(&app).await?;
    const STATES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];
    if let Some(state) = filter.state.as_deref().filter(|s| !STATES.contains(s)) {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_filter", format!("unknown state `{state}`"));
        e.field = Some("state".into());
        return Err(e);
    }
    let builds = app
        .projections
        .list_builds(filter.issue.as_deref(), filter.state.as_deref())
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    let builds = serde_json::to_value(builds).unwrap_or_default();
    Ok(Json(json!({ "builds": builds })))
}

pub async fn get_build(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("build"))?;
    caught_up(&app).await?;
    let build = app.projections.build(id).await.map_err(|e| ApiError::unavailable(&e))?;
    let Some(Ok(build)) = build.map(serde_json::to_value) else {
        return Err(ApiError::not_found("build"));
    };
    let stored = app.store.read_stream(&build_stream(id)).await.map_err(|e| ApiError::unavailable(&e))?;
    let events: Vec<Value> = stored
        .iter()
        .map(|e| {
            json!({
                "position": e.position,
                "version": e.version,
                "id": e.id,
                "type": e.event_type,
                "schema_version": e.schema_version,
                "data": serde_json::from_str::<Value>(&e.data).unwrap_or(Value::Null),
                "correlation_id": e.correlation_id,
                "causation_id": e.causation_id,
                "recorded_at": e.recorded_at,
            })
        })
        .collect();
    let log_url = app.links.url(id);
    Ok(Json(json!({ "build": build, "events": events, "log_url": log_url })))
}

pub async fn queue(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    caught_up(&app).await?;
    let queued =
        app.projections.read(|p| serde_json::to_value(p.queue.ordered(&app.lane_priorities)).unwrap_or_default());
    Ok(Json(json!({ "queue": queued })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    issue: Option<String>,
    build: Option<String>,
    stream: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    correlation: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

/// Most events in one answer of `GET /api/v1/events`.
const MAX_EVENTS: usize = 1000;

/// `GET /api/v1/events`: the audit over HTTP, the same answers as `meshgate events`, paged by log
/// position (`after`: the last position of the previous page; `next_after` says where to go on).
pub async fn events(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_filter", e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_EVENTS).contains(&limit) {
        let mut e =
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_filter", format!("limit must be 1 to {MAX_EVENTS}"));
        e.field = Some("limit".into());
        return Err(e);
    }
    let filter = filter_of(&query)?;
    let found =
        app.store.query(&filter, query.after.unwrap_or(0), limit).await.map_err(|e| ApiError::unavailable(&e))?;
    let next_after = (found.len() == limit).then(|| found.last().map(|e| e.position)).flatten();
    let events: Vec<Value> = found.iter().map(|e| e.audit_json()).collect();
    Ok(Json(json!({ "events": events, "next_after": next_after })))
}

/// The filters of an audit question, refused clearly when one does not parse.
fn filter_of(query: &EventsQuery) -> Result<crate::store::EventFilter, ApiError> {
    let uuid = |value: &Option<String>, field: &str| -> Result<Option<Uuid>, ApiError> {
        value
            .as_deref()
            .map(|v| {
                Uuid::parse_str(v).map_err(|_| {
                    let mut e =
                        ApiError::new(StatusCode::BAD_REQUEST, "invalid_filter", format!("`{v}` is not a uuid"));
                    e.field = Some(field.into());
                    e
                })
            })
            .transpose()
    };
    Ok(crate::store::EventFilter {
        issue: query.issue.clone(),
        build: uuid(&query.build, "build")?,
        stream: query.stream.clone(),
        correlation_id: uuid(&query.correlation, "correlation")?,
        event_type: query.event_type.clone(),
    })
}

/// `GET /api/v1/events/stream`: the live tail of the log as server-sent events (`id` the position,
/// `event` the type, `data` the event as `GET /api/v1/events` shows it), with the same filters.
/// It starts after `after`, or after the `Last-Event-ID` a reconnecting client sends, or at the
/// head (only what happens from now on); it ends when the gateway stops.
pub async fn stream(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_filter", e.body_text()))?;
    let filter = filter_of(&query)?;
    let resumed = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let after = resumed.or(query.after).unwrap_or_else(|| *app.store.head().borrow());
    let tail = Tail {
        store: Arc::clone(&app.store),
        head: app.store.head(),
        stopping: app.stopping.subscribe(),
        filter,
        after,
        ready: std::collections::VecDeque::new(),
    };
    let events = futures_util::stream::unfold(tail, |mut tail| async move {
        let event = tail.next().await?;
        let sent = SseEvent::default()
            .id(event.position.to_string())
            .event(event.event_type.clone())
            .data(event.audit_json().to_string());
        Some((Ok::<_, std::convert::Infallible>(sent), tail))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// Events a live tail reads from the log at a time.
const TAIL_PAGE: usize = 500;

/// Where a live tail stands.
struct Tail {
    store: Arc<dyn crate::store::EventStore>,
    head: tokio::sync::watch::Receiver<u64>,
    stopping: tokio::sync::watch::Receiver<bool>,
    filter: crate::store::EventFilter,
    /// The position up to which the log has been read.
    after: u64,
    ready: std::collections::VecDeque<crate::store::StoredEvent>,
}

impl Tail {
    /// The next matching event, waiting for commits; `None` once the gateway stops.
    async fn next(&mut self) -> Option<crate::store::StoredEvent> {
        loop {
            if *self.stopping.borrow() {
                return None;
            }
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let head = *self.head.borrow_and_update();
            if head > self.after {
                match self.store.query(&self.filter, self.after, TAIL_PAGE).await {
                    Ok(page) => {
                        // A short page read everything committed up to the head seen (and
                        // maybe past it), matching or not.
                        let last = page.last().map_or(0, |e| e.position);
                        self.after = if page.len() == TAIL_PAGE { last } else { last.max(head) };
                        self.ready.extend(page);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::report::chain(&e), "the live tail cannot read the log");
                        return None;
                    }
                }
            }
            tokio::select! {
                changed = self.head.changed() => if changed.is_err() { return None },
                _ = self.stopping.wait_for(|s| *s) => return None,
            }
        }
    }
}

/// `GET /api/v1/nodes`: every build node the log knows, with its state (`idle`, `busy`,
/// `draining`, `lost`), labels, slots, running builds and when it was last heard from.
pub async fn nodes(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    caught_up(&app).await?;
    let nodes: Vec<Value> = app.projections.read(|p| {
        p.nodes
            .all()
            .map(|n| {
                json!({
                    "node_id": n.node_id, "state": n.state(), "labels": n.labels, "slots": n.slots,
                    "running": n.running, "last_seen": n.last_seen, "draining": n.draining,
                })
            })
            .collect()
    });
    Ok(Json(json!({ "nodes": nodes })))
}
