//! The read API under `/api/v1`, guarded by `Authorization: Bearer <admin token>`.
//!
//! Answers come from the projections once they have caught up with the log as it stood when the
//! request arrived, so a client reads what it wrote.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use uuid::Uuid;

use meshgate_domain::notify::Milestone;
use meshgate_domain::stream::build_stream;
use meshgate_projections::{BuildView, Waiting};
use tokio::sync::watch;

use super::access::Reader;
use super::extract::{ApiPath, ApiQuery};
use super::openapi::{
    BuildDetail, BuildsPage, DeliveriesPage, ErrorBody, EventsPage, LaneQueue, NodeAnswer, NodesPage, OutboxPage,
    QueuePage, QueuedBuild, SinkHealth,
};
use super::ApiError;
use crate::builds::BuildService;
use crate::config::Config;
use crate::ingest::IngestService;
use crate::links::LogLinks;
use crate::projector::Projections;
use crate::reconcile::Reconciler;
use crate::store::{AuditEvent, EventStore, StoredEvent};

/// What the admin API (its reads here, its operations in `operations.rs`) uses.
pub struct AdminApi {
    pub store: Arc<dyn EventStore>,
    pub projections: Projections,
    pub builds: BuildService,
    /// Replays decide ignored deliveries again under today's triggers.
    pub ingest: Arc<IngestService>,
    /// Sweeps of YouTrack's activity stream (none: no `[youtrack]` base URL and token).
    pub reconciler: Option<Arc<Reconciler>>,
    pub links: LogLinks,
    /// Every lane a build can be in (configured, or named by a trigger only), for why a build
    /// waits and which lanes may be paused.
    pub lanes: Vec<meshgate_projections::LaneRule>,
    /// The nodes heard asking for work (the node API's).
    pub polls: Arc<crate::polls::Polls>,
    /// Every outbound sink by name, with the milestones it sends.
    pub sinks: HashMap<String, Vec<Milestone>>,
    /// The configuration the gateway started with (the self-test reads its file again).
    pub config: Arc<Config>,
    /// Turns true when the gateway stops: live tails end.
    pub stopping: watch::Receiver<bool>,
}

impl AdminApi {
    /// Every lane's name.
    pub fn lane_names(&self) -> Vec<String> {
        self.lanes.iter().map(|l| l.name.clone()).collect()
    }
}

const READ_YOUR_WRITES: Duration = Duration::from_secs(2);

pub(super) async fn caught_up(app: &AdminApi) -> Result<(), ApiError> {
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BuildFilter {
    /// Builds of one issue (`MOB-42`).
    issue: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    #[param(pattern = "^(queued|running|succeeded|failed|cancelled)$")]
    state: Option<String>,
    /// Builds requested before this log position (the `next_before` of the previous page).
    #[param(minimum = 0)]
    before: Option<u64>,
    /// At most this many builds (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// A page's size: 100 unless asked, at most `max`.
fn page_limit(asked: Option<usize>, max: usize) -> Result<usize, ApiError> {
    let limit = asked.unwrap_or(100);
    if (1..=max).contains(&limit) {
        return Ok(limit);
    }
    Err(ApiError::invalid_filter("limit", format!("limit must be 1 to {max}")))
}

/// Most builds in one answer of `GET /api/v1/builds`.
const MAX_BUILDS: usize = 1000;

/// Builds, newest first, filtered by issue and state, a page at a time (`before`: the
/// `next_before` of the previous page).
#[utoipa::path(get, path = "/api/v1/builds", tag = "builds", params(BuildFilter), security(("admin" = [])),
    responses(
        (status = 200, description = "The builds", body = BuildsPage),
        (status = 400, description = "A filter is wrong", body = ErrorBody),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
        (status = 503, description = "The projections or the log are behind or unavailable", body = ErrorBody),
    ))]
pub async fn list_builds(
    // The token first: a caller without it learns nothing of the filters.
    _: Reader,
    State(app): State<Arc<AdminApi>>,
    query: Result<ApiQuery<BuildFilter>, ApiError>,
) -> Result<Json<BuildsPage>, ApiError> {
    let ApiQuery(filter) = query?;
    caught_up(&app).await?;
    const STATES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];
    if let Some(state) = filter.state.as_deref().filter(|s| !STATES.contains(s)) {
        return Err(ApiError::invalid_filter("state", format!("unknown state `{state}`")));
    }
    let limit = page_limit(filter.limit, MAX_BUILDS)?;
    let before = filter.before.unwrap_or(u64::MAX);
    let builds = app
        .projections
        .page_builds(filter.issue.as_deref(), filter.state.as_deref(), before, limit)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    let next_before = (builds.len() == limit).then(|| builds.last().map(|b| b.position)).flatten();
    Ok(Json(BuildsPage { builds, next_before }))
}

/// One build with every event of its stream and the link to its log.
#[utoipa::path(get, path = "/api/v1/builds/{id}", tag = "builds", security(("admin" = [])),
    params(("id" = String, Path, description = "The build's id (a UUID)")),
    responses(
        (status = 200, description = "The build", body = BuildDetail),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
        (status = 404, description = "No such build", body = ErrorBody),
        (status = 503, description = "The projections or the log are behind or unavailable", body = ErrorBody),
    ))]
pub async fn get_build(
    _: Reader,
    State(app): State<Arc<AdminApi>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BuildDetail>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("build"))?;
    caught_up(&app).await?;
    let build = app.projections.build(id).await.map_err(|e| ApiError::unavailable(&e))?;
    detail(&app, build).await
}

/// One build by its trigger and number (`ios-build`, `412`), as `GET /api/v1/builds/{id}` shows it.
#[utoipa::path(get, path = "/api/v1/builds/by-number/{trigger}/{number}", tag = "builds", security(("admin" = [])),
    params(
        ("trigger" = String, Path, description = "The trigger's name"),
        ("number" = u64, Path, description = "The build's number among the trigger's builds, from 1"),
    ),
    responses(
        (status = 200, description = "The build", body = BuildDetail),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
        (status = 404, description = "No such build", body = ErrorBody),
        (status = 503, description = "The projections or the log are behind or unavailable", body = ErrorBody),
    ))]
pub async fn get_build_by_number(
    _: Reader,
    State(app): State<Arc<AdminApi>>,
    ApiPath((trigger, number)): ApiPath<(String, u64)>,
) -> Result<Json<BuildDetail>, ApiError> {
    caught_up(&app).await?;
    let build = app.projections.build_by_number(&trigger, number).await.map_err(|e| ApiError::unavailable(&e))?;
    detail(&app, build).await
}

/// A build with every event of its stream and the link to its log (404 for none).
async fn detail(app: &AdminApi, build: Option<BuildView>) -> Result<Json<BuildDetail>, ApiError> {
    let Some(build) = build else {
        return Err(ApiError::not_found("build"));
    };
    let stored = app.store.read_stream(&build_stream(build.build_id)).await.map_err(|e| ApiError::unavailable(&e))?;
    let name = build.name();
    let events = stored.iter().map(|e| AuditEvent { build: Some(name.clone()), ..e.audit() }).collect();
    let log_url = app.links.url(build.build_id);
    let waiting = app.projections.read(|p| p.queue.queued().get(&build.build_id).map(|e| why(app, p, e)));
    Ok(Json(BuildDetail { build, events, log_url, waiting }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct QueueFilter {
    /// The builds of one lane (`default`).
    lane: Option<String>,
    /// At most this many builds (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Most builds in one answer of `GET /api/v1/queue`.
const MAX_QUEUED: usize = 1000;

/// The first queued builds (of every lane or of one), in the order nodes get them, each with why
/// it waits, and every lane's counts. Computed from the queue when asked, under the projections'
/// read lock: the walk ends at the page's last build, so a deep backlog costs a page, not itself.
#[utoipa::path(get, path = "/api/v1/queue", tag = "builds", params(QueueFilter), security(("admin" = [])),
    responses(
        (status = 200, description = "The queue", body = QueuePage),
        (status = 400, description = "A filter is wrong", body = ErrorBody),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
        (status = 503, description = "The projections are behind", body = ErrorBody),
    ))]
pub async fn queue(
    _: Reader,
    State(app): State<Arc<AdminApi>>,
    query: Result<ApiQuery<QueueFilter>, ApiError>,
) -> Result<Json<QueuePage>, ApiError> {
    let ApiQuery(filter) = query?;
    let limit = page_limit(filter.limit, MAX_QUEUED)?;
    caught_up(&app).await?;
    let page = app.projections.read(|p| {
        // Every lane a build can be in, and any other a queued build names (its lane since
        // removed from the configuration).
        let mut names: Vec<&str> = app.lanes.iter().map(|l| l.name.as_str()).collect();
        for lane in p.queue.lanes_queued().chain(p.queue.running().values().map(|e| e.lane.as_str())) {
            if !names.contains(&lane) {
                names.push(lane);
            }
        }
        if let Some(lane) = filter.lane.as_deref().filter(|lane| !names.contains(lane)) {
            return Err(ApiError::invalid_filter("lane", format!("unknown lane `{lane}`")));
        }
        let requested_at = |id: &Uuid| p.builds.get(*id).map(|b| b.requested_at);
        let lanes = names
            .iter()
            .map(|lane| {
                let (queued, running) = p.queue.in_lane(lane);
                let first = p.queue.oldest_in(lane);
                LaneQueue {
                    lane: (*lane).to_owned(),
                    queued,
                    running,
                    waiting_since: first.and_then(|e| requested_at(&e.build_id)),
                }
            })
            .collect();
        let live = |n: &meshgate_projections::NodeView| !n.running.is_empty() || app.polls.alive(&n.node_id);
        let slice = meshgate_projections::Slice { lane: filter.lane.as_deref(), limit };
        let queue = meshgate_projections::waiting_all(&p.queue, p.nodes.all(), &app.lanes, &p.paused, live, slice)
            .into_iter()
            // A queued build is always in memory.
            .filter_map(|(entry, waiting)| {
                let build = p.builds.get(entry.build_id)?;
                Some(QueuedBuild {
                    entry: entry.clone(),
                    trigger: build.trigger.clone(),
                    number: build.number,
                    requested_at: build.requested_at,
                    waiting,
                })
            })
            .collect();
        Ok(QueuePage { queue, lanes, paused: p.paused.clone() })
    })?;
    Ok(Json(page))
}

/// Why a queued build waits, from the queue, the nodes the log knows and those heard polling.
fn why(app: &AdminApi, p: &meshgate_projections::ProjectionSet, entry: &meshgate_projections::QueueEntry) -> Waiting {
    let live = |n: &meshgate_projections::NodeView| !n.running.is_empty() || app.polls.alive(&n.node_id);
    meshgate_projections::waiting(entry, &p.queue, p.nodes.all(), &app.lanes, &p.paused, live)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Events about one issue (`MOB-42`).
    issue: Option<String>,
    /// Events about one build (a UUID): its stream, its delivery, its notifications and pages.
    #[param(value_type = Option<Uuid>)]
    build: Option<String>,
    /// One stream's events.
    stream: Option<String>,
    /// One event type (`BuildRequested`).
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// Events of one correlation id (a UUID).
    #[param(value_type = Option<Uuid>)]
    correlation: Option<String>,
    /// Events after this log position (the `next_after` of the previous page).
    #[param(minimum = 0)]
    after: Option<u64>,
    /// At most this many events (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Most events in one answer of `GET /api/v1/events`.
const MAX_EVENTS: usize = 1000;

/// `GET /api/v1/events`: the audit over HTTP, the same answers as `meshgate events`, paged by log
/// position (`after`: the last position of the previous page; `next_after` says where to go on).
#[utoipa::path(get, path = "/api/v1/events", tag = "audit", params(EventsQuery), security(("admin" = [])),
    responses(
        (status = 200, description = "A page of events in log order", body = EventsPage),
        (status = 400, description = "A filter is wrong", body = ErrorBody),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
        (status = 503, description = "The log is unavailable", body = ErrorBody),
    ))]
pub async fn events(
    _: Reader,
    State(app): State<Arc<AdminApi>>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventsPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_filter", e.body_text()))?;
    let limit = page_limit(query.limit, MAX_EVENTS)?;
    let filter = filter_of(&query)?;
    let head = *app.store.head().borrow();
    // Positions are stored as 63-bit integers: beyond that nothing can follow.
    let after = query.after.unwrap_or(0).min(i64::MAX as u64);
    let found = app.store.query(&filter, after, limit).await.map_err(|e| ApiError::unavailable(&e))?;
    let next_after = (found.len() == limit).then(|| found.last().map(|e| e.position)).flatten();
    let events = named(&app.projections, &found).await?;
    Ok(Json(EventsPage { events, next_after, head }))
}

/// A page of events as the audit shows them, each about a build named (`ios-build #412`).
async fn named(projections: &Projections, found: &[StoredEvent]) -> Result<Vec<AuditEvent>, ApiError> {
    let mut names: HashMap<Uuid, Option<String>> = HashMap::new();
    let mut events = Vec::with_capacity(found.len());
    for event in found {
        let mut audit = event.audit();
        if let Some(id) = event.build_id() {
            if let std::collections::hash_map::Entry::Vacant(unnamed) = names.entry(id) {
                let build = projections.build(id).await.map_err(|e| ApiError::unavailable(&e))?;
                unnamed.insert(build.map(|b| b.name()));
            }
            audit.build = names[&id].clone();
        }
        events.push(audit);
    }
    Ok(events)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// At most this many deliveries (1 to 100, default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

/// How far back `GET /api/v1/deliveries` reads the log: a delivery and its decision are among
/// the last events when it is among the latest.
const DELIVERIES_WINDOW: usize = 500;

/// `GET /api/v1/deliveries`: the latest deliveries and what became of each (the dashboard's
/// "Recent deliveries"), from the last 500 events of the log: only the delivery events are decoded
/// and no body is sent.
#[utoipa::path(get, path = "/api/v1/deliveries", tag = "audit", params(DeliveriesQuery), security(("admin" = [])),
    responses(
        (status = 200, description = "The latest deliveries, newest first", body = DeliveriesPage),
        (status = 400, description = "A filter is wrong", body = ErrorBody),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
        (status = 503, description = "The log is unavailable", body = ErrorBody),
    ))]
pub async fn deliveries(
    _: Reader,
    State(app): State<Arc<AdminApi>>,
    query: Result<ApiQuery<DeliveriesQuery>, ApiError>,
) -> Result<Json<DeliveriesPage>, ApiError> {
    let ApiQuery(query) = query?;
    let limit = page_limit(Some(query.limit.unwrap_or(20)), 100)?;
    let head = *app.store.head().borrow();
    let after = head.saturating_sub(DELIVERIES_WINDOW as u64);
    const TYPES: [&str; 5] =
        ["WebhookReceived", "WebhookIgnored", "WebhookRouted", "BuildRequestFolded", "BuildCancelled"];
    let (window, _) =
        app.store.read_decoded(after, DELIVERIES_WINDOW, &TYPES).await.map_err(|e| ApiError::unavailable(&e))?;
    Ok(Json(DeliveriesPage { deliveries: meshgate_projections::recent_deliveries(&window, limit) }))
}

/// The filters of an audit question, refused clearly when one does not parse.
fn filter_of(query: &EventsQuery) -> Result<crate::store::EventFilter, ApiError> {
    let uuid = |value: &Option<String>, field: &str| -> Result<Option<Uuid>, ApiError> {
        value
            .as_deref()
            .map(|v| Uuid::parse_str(v).map_err(|_| ApiError::invalid_filter(field, format!("`{v}` is not a uuid"))))
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
#[utoipa::path(get, path = "/api/v1/events/stream", tag = "audit", params(EventsQuery), security(("admin" = [])),
    responses(
        (status = 200, description = "Server-sent events: `id` the position, `event` the type, `data` an AuditEvent",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "A filter is wrong", body = ErrorBody),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
    ))]
pub async fn stream(
    _: Reader,
    State(app): State<Arc<AdminApi>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_filter", e.body_text()))?;
    let filter = filter_of(&query)?;
    let resumed = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let after = resumed.or(query.after).unwrap_or_else(|| *app.store.head().borrow()).min(i64::MAX as u64);
    let tail = Tail {
        store: Arc::clone(&app.store),
        head: app.store.head(),
        stopping: app.stopping.clone(),
        filter,
        after,
        ready: std::collections::VecDeque::new(),
    };
    let projections = app.projections.clone();
    let events = futures_util::stream::unfold((tail, projections), |(mut tail, projections)| async move {
        let event = tail.next().await?;
        // A build's first event names it once the projections have folded it.
        projections.caught_up_to(event.position, READ_YOUR_WRITES).await;
        let audit = named(&projections, std::slice::from_ref(&event)).await.ok()?.pop()?;
        let sent = SseEvent::default()
            .id(event.position.to_string())
            .event(event.event_type.clone())
            .data(serde_json::to_string(&audit).unwrap_or_default());
        Some((Ok::<_, std::convert::Infallible>(sent), (tail, projections)))
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
#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", security(("admin" = [])),
    responses(
        (status = 200, description = "Every node", body = NodesPage),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
        (status = 503, description = "The projections are behind", body = ErrorBody),
    ))]
pub async fn nodes(_: Reader, State(app): State<Arc<AdminApi>>) -> Result<Json<NodesPage>, ApiError> {
    caught_up(&app).await?;
    let nodes = app.projections.read(|p| {
        p.nodes
            .all()
            .map(|n| NodeAnswer {
                node_id: n.node_id.clone(),
                state: n.state().to_owned(),
                labels: n.labels.clone(),
                slots: n.slots,
                running: n.running.iter().copied().collect(),
                last_seen: n.last_seen,
                draining: n.draining,
                xcodes: n.xcodes.clone(),
            })
            .collect()
    });
    Ok(Json(NodesPage { nodes }))
}

/// `GET /api/v1/outbox`: each outbound sink's backlog: pending notifications, the oldest, the
/// next retry, and those given up on.
#[utoipa::path(get, path = "/api/v1/outbox", tag = "operations", security(("admin" = [])),
    responses(
        (status = 200, description = "Every configured sink", body = OutboxPage),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
        (status = 503, description = "The projections are behind", body = ErrorBody),
    ))]
pub async fn outbox(_: Reader, State(app): State<Arc<AdminApi>>) -> Result<Json<OutboxPage>, ApiError> {
    caught_up(&app).await?;
    let mut names: Vec<&String> = app.sinks.keys().collect();
    names.sort();
    let sinks = app.projections.read(|p| {
        names
            .iter()
            .map(|&sink| {
                let (pending, oldest_pending_at) = p.outbox.pending(sink);
                SinkHealth {
                    sink: sink.clone(),
                    milestones: app.sinks[sink].iter().map(|m| m.as_str().to_owned()).collect(),
                    pending,
                    oldest_pending_at,
                    next_retry_at: p.outbox.next_retry(sink),
                    abandoned: p.outbox.abandoned_count(sink),
                }
            })
            .collect()
    });
    Ok(Json(OutboxPage { sinks }))
}
