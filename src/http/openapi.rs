//! The API's published schema, `GET /api/openapi.json` (OpenAPI 3.1): generated from the
//! handlers' `#[utoipa::path]` annotations and the types they answer with, so the document and
//! the code cannot drift apart silently (the test command checks live answers against it with
//! schemathesis).

use chrono::{DateTime, Utc};
use meshgate_projections::{BuildView, QueueEntry};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

/// The document's fixed parts; paths come from the router (`utoipa_axum::routes!`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "meshgate",
        description = "The admin, audit and build-node API of a meshgate gateway. Admin endpoints take \
                       `Authorization: Bearer <admin token>`; node endpoints the node pool's token.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&Security),
    // Answers named by response enums (`IntoResponses`), which do not register their schemas.
    components(schemas(BuildActionAnswer, meshgate_domain::pause::Paused, meshgate_domain::pause::Pause)),
    tags(
        (name = "builds", description = "Builds, the queue and what operators do to them"),
        (name = "audit", description = "The event log, read over HTTP"),
        (name = "nodes", description = "Build nodes: claims, heartbeats, results, logs"),
        (name = "operations", description = "Reconciliation, notifications, replays, tokens, self-test"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build(),
            )
        };
        components.add_security_scheme("admin", bearer("An admin token (`[admin] token_file`)"));
        components.add_security_scheme("node", bearer("The node pool's token (`[nodes] token_file`)"));
    }
}

/// Adds the answer of [`super::limiter::slow_bad_tokens`] to every operation that can refuse a
/// token: `429` with `Retry-After`, once an address has sent too many bad tokens.
pub fn document_throttling(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let throttled = ResponseBuilder::new()
        .description("Too many bad tokens from this address; `Retry-After` says when to try again")
        .header(
            "Retry-After",
            utoipa::openapi::header::Header::new(
                utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::Integer),
            ),
        )
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
        .build();
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            if operation.responses.responses.contains_key("401") {
                operation.responses.responses.insert("429".to_owned(), throttled.clone().into());
            }
        }
    }
}

/// Every refusal: a stable code, a message for people and, when one field is wrong, its name.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// `unauthorized`, `not_found`, `invalid_request`, `invalid_filter`, `stale_attempt`, …
    pub error: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BuildsPage {
    /// Newest first.
    pub builds: Vec<BuildView>,
    /// When the page is full: where the next one starts (`before=`); none on the last page.
    pub next_before: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BuildDetail {
    pub build: BuildView,
    /// Every event of the build's stream, oldest first.
    pub events: Vec<crate::store::AuditEvent>,
    /// The signed link to the build's log.
    pub log_url: String,
    /// Why it waits, while it is queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<meshgate_projections::Waiting>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueuePage {
    /// The first queued builds (of the lane asked for), in the order nodes get them, each with
    /// why it waits: at most `limit` of them; `lanes` counts them all.
    pub queue: Vec<QueuedBuild>,
    /// Every lane: how many of its builds are queued and running, and since when the first of
    /// its queue waits.
    pub lanes: Vec<LaneQueue>,
    /// The lanes an operator holds.
    pub paused: meshgate_domain::pause::Paused,
}

/// A queued build and why it waits.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedBuild {
    #[serde(flatten)]
    pub entry: QueueEntry,
    /// Its trigger and number among the trigger's builds (`ios-build` #412).
    pub trigger: String,
    pub number: u64,
    pub requested_at: DateTime<Utc>,
    pub waiting: meshgate_projections::Waiting,
}

/// A lane's builds in flight.
#[derive(Debug, Serialize, ToSchema)]
pub struct LaneQueue {
    pub lane: String,
    pub queued: usize,
    pub running: usize,
    /// When the build first in the lane's queue (the one that has waited longest) was requested;
    /// null when nothing is queued.
    pub waiting_since: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveriesPage {
    /// The latest deliveries, newest first.
    pub deliveries: Vec<meshgate_projections::Delivery>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    pub events: Vec<crate::store::AuditEvent>,
    /// The `after` of the next page; null on the last page.
    pub next_after: Option<u64>,
    /// The log's last position when the page was read.
    pub head: u64,
}

/// A build node as the log knows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeAnswer {
    pub node_id: String,
    /// `idle`, `busy`, `draining` or `lost`.
    pub state: String,
    pub labels: Vec<String>,
    pub slots: u32,
    pub running: Vec<Uuid>,
    pub last_seen: DateTime<Utc>,
    pub draining: bool,
    /// The Xcodes it has.
    pub xcodes: Vec<meshgate_domain::xcode::Xcode>,
}

/// One outbound sink's backlog.
#[derive(Debug, Serialize, ToSchema)]
pub struct SinkHealth {
    pub sink: String,
    /// Milestones it sends (`requested`, `started`, `succeeded`, `failed`, …).
    pub milestones: Vec<String>,
    /// Notifications neither delivered nor abandoned.
    pub pending: usize,
    /// When the oldest pending notification's milestone happened.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// The earliest retry it waits for.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Notifications given up on, within the outbox's window.
    pub abandoned: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OutboxPage {
    pub sinks: Vec<SinkHealth>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodesPage {
    pub nodes: Vec<NodeAnswer>,
}

/// The node token is accepted.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeCheckAnswer {
    pub accepted: bool,
    /// The gateway's clock (leases run on it).
    pub now: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactsPage {
    pub artifacts: Vec<meshgate_domain::node_api::ArtifactAnswer>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogUploaded {
    pub url: String,
    pub bytes: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BuildActionAnswer {
    pub build_id: Uuid,
    pub state: String,
}

/// What a rebuild answers: the build that answers it (new, or the build already queued or
/// running), its name, the build asked for again, and whether a build was started.
#[derive(Debug, Serialize, ToSchema)]
pub struct RebuildAnswer {
    pub build_id: Uuid,
    /// `ios-build #413`.
    pub name: Option<String>,
    pub rebuild_of: Uuid,
    pub started: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DrainAnswer {
    pub node_id: String,
    pub draining: bool,
    pub state: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResendAnswer {
    /// `sink/build/milestone`.
    pub key: String,
    pub queued: bool,
    pub position: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecoverAnswer {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// The keys queued again.
    pub requeued: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SelftestAnswer {
    pub passed: bool,
    pub checks: Vec<crate::selftest::Check>,
}
