//! The event log: a trait every backend implements, the embedded SQLite backend ([`sqlite`]), the
//! shared PostgreSQL backend ([`postgres`]) and EventStoreDB (`eventstoredb`, in builds with the
//! `eventstoredb` feature).
//!
//! Architecture Invariant: nothing outside this module knows which backend is in use. The trait
//! speaks of streams, expected versions and global positions only; SQLite specifics (savepoints,
//! WAL, the writer thread) stay in [`sqlite`].

pub mod archive;
mod decide;
#[cfg(feature = "eventstoredb")]
pub mod eventstoredb;
pub(crate) mod lease;
pub mod open;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use meshgate_domain::event::DecodeError;
use meshgate_domain::{Event, ExpectedVersion, Recorded};
use std::sync::Arc;

use tokio::sync::{broadcast, watch};
use uuid::Uuid;

pub use decide::{decide_and_append, Decided, Decision, Retry, RETRY_FOR};

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// uuid v7, chosen by the appender.
    pub id: Uuid,
    pub event_type: &'static str,
    pub schema_version: u32,
    /// JSON object.
    pub data: String,
    pub correlation_id: Uuid,
    /// The event that caused this one, if any.
    pub causation_id: Option<Uuid>,
    pub recorded_at: DateTime<Utc>,
}

impl NewEvent {
    pub fn from_domain(event: &Event, correlation_id: Uuid, causation_id: Option<Uuid>, now: DateTime<Utc>) -> Self {
        NewEvent {
            id: Uuid::now_v7(),
            event_type: event.event_type(),
            schema_version: Event::SCHEMA_VERSION,
            data: event.encode(),
            correlation_id,
            causation_id,
            recorded_at: now,
        }
    }
}

impl NewEvent {
    /// This event as stored at `position`, version `version` of `stream`.
    pub fn stored(&self, position: u64, stream: &str, version: u64) -> StoredEvent {
        StoredEvent {
            position,
            stream: stream.to_owned(),
            version,
            id: self.id,
            event_type: self.event_type.to_owned(),
            schema_version: self.schema_version,
            data: self.data.clone(),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            recorded_at: self.recorded_at,
        }
    }
}

/// Whether a stream whose last version is `current` (`None`: no stream) is as `expected`.
pub(crate) fn fits(expected: ExpectedVersion, current: Option<u64>) -> bool {
    match expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => current.is_none(),
        ExpectedVersion::Exact(v) => current == Some(v),
    }
}

/// A request planned by a writer that knows the streams' versions: its events as they will stand
/// after position `after`, and the last version of each stream it appends to.
pub(crate) type Planned = (Vec<StoredEvent>, Vec<(String, u64)>);

/// Plans one request against the streams' last versions as `current` gives them (a stream the
/// request names twice: as its first part left it), or answers the conflict that refuses it whole.
pub(crate) fn plan_request(
    appends: &[StreamAppend],
    after: u64,
    mut current: impl FnMut(&str) -> Option<u64>,
) -> Result<Planned, StoreError> {
    let mut mine: Vec<(String, u64)> = Vec::new();
    let mut events = Vec::new();
    for append in appends {
        let stream = append.stream.as_str();
        let now = mine.iter().rev().find(|(s, _)| s == stream).map(|(_, v)| *v).or_else(|| current(stream));
        if !fits(append.expected, now) {
            return Err(StoreError::Conflict { stream: append.stream.clone(), expected: append.expected, actual: now });
        }
        let first = now.map_or(0, |v| v + 1);
        for (version, event) in (first..).zip(&append.events) {
            events.push(event.stored(after + events.len() as u64 + 1, stream, version));
        }
        if !append.events.is_empty() {
            mine.push((append.stream.clone(), first + append.events.len() as u64 - 1));
        }
    }
    Ok((events, mine))
}

/// Events for one stream, appended only if the stream is as expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppend {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// A commit as followers in this process are handed it: the events at positions
/// `after + 1 ..= through`, in position order. Every one of them, unless the backend reads another
/// gateway's commits with only the types this gateway's followers fold (PostgreSQL's
/// `followed`): then the others are left out, and `through` still says how far the log was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub after: u64,
    pub through: u64,
    pub events: Arc<[StoredEvent]>,
}

impl Committed {
    /// Events at consecutive positions, none left out (`None`: no events).
    pub fn whole(events: Arc<[StoredEvent]>) -> Option<Committed> {
        let (first, last) = (events.first()?.position, events.last()?.position);
        Some(Committed { after: first - 1, through: last, events })
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub data: String,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// The domain event with where it stands in the log.
    pub fn decode(&self) -> Result<Recorded, DecodeError> {
        Ok(Recorded {
            position: self.position,
            stream: self.stream.clone(),
            version: self.version,
            event: Event::decode(&self.event_type, self.schema_version, &self.data)?,
            correlation_id: self.correlation_id,
            recorded_at: self.recorded_at,
        })
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Global position of the last event appended.
    pub last_position: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("stream `{stream}` is at version {actual:?}, expected {expected:?}")]
    Conflict { stream: String, expected: ExpectedVersion, actual: Option<u64> },
    /// Other writers kept changing `stream` while a decision was taken again after each
    /// conflict, for as long as its budget allowed ([`decide_and_append`]).
    #[error("stream `{stream}` kept changing: gave up after {tries} tries")]
    Contention { stream: String, tries: u32 },
    /// The backend failed; `source` keeps why (an I/O error, a database error), so an operator
    /// reading the log sees the whole chain.
    #[error("event store failed: {message}")]
    Failed {
        message: String,
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    #[error("event store is closed")]
    Closed,
    /// The events are larger than one append to the log may be: they can never be recorded.
    #[error("the record is {bytes} bytes as the log counts them, over [store] max_append_bytes ({max}); it cannot be recorded")]
    TooLarge { bytes: u64, max: u64 },
    /// The backend did not say whether the append was written (a connection lost with it in
    /// flight, and the log could not be asked since). Sending it again is safe: the log recognises
    /// it by its events' ids, and the next decision reads it first.
    #[error("the event store did not say whether it recorded the append: {message}")]
    Unknown {
        message: String,
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
}

impl StoreError {
    pub fn failed(message: impl Into<String>) -> Self {
        StoreError::Failed { message: message.into(), source: None }
    }

    /// A failure with its cause kept: `message: cause` in one line, the cause also as the source.
    pub fn caused(message: impl std::fmt::Display, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Failed { message: format!("{message}: {source}"), source: Some(Arc::new(source)) }
    }
}

/// Reading the log by position: what the commands that read beside a running gateway open
/// ([`open::reader`]), and every [`EventStore`].
#[async_trait]
pub trait LogReader: Send + Sync + 'static {
    /// Up to `limit` events after global position `after`, in position order.
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;

    /// The events of positions `after + 1 ..= after + limit` (no further than the last committed
    /// one) whose type is in `wanted`, decoded, in position order, and the last position the read
    /// covered (`after`: nothing new). Followers catching up use it: the rows nobody folds need not
    /// be read.
    async fn read_decoded(&self, after: u64, limit: usize, wanted: &[&str]) -> Result<Decoded, StoreError>;

    /// Up to `limit` events after position `after` that match `filter`, in log order (audits:
    /// the log is scanned, not indexed, for everything but streams).
    async fn query(&self, filter: &EventFilter, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;

    /// The position of the last committed event, as the log says now.
    async fn last_position(&self) -> Result<u64, StoreError>;

    /// The events of positions `after + 1 ..= until` whose type is in `wanted`, decoded, in
    /// position order, in batches that each say the last position they cover: a fold of the whole
    /// log (a rebuild, an operator's question over history) reads this. A backend reads ahead as
    /// fast as it can (SQLite: readers of their own, beside the writer); by default, one range of
    /// [`read_decoded`](LogReader::read_decoded) after another.
    fn scan<'a>(&'a self, after: u64, until: u64, wanted: &'a [&'a str]) -> Scan<'a> {
        Box::pin(futures_util::stream::try_unfold(after, move |after| async move {
            if after >= until {
                return Ok(None);
            }
            let limit = (until - after).min(SCAN_RANGE) as usize;
            let (batch, covered) = self.read_decoded(after, limit, wanted).await?;
            if covered <= after {
                return Err(StoreError::failed(format!("the event log ends at position {after}, before {until}")));
            }
            Ok(Some(((batch, covered), covered)))
        }))
    }
}

/// Batches of a scan of the log: the events decoded, and the last position each batch covers.
pub type Scan<'a> = futures_util::stream::BoxStream<'a, Result<Decoded, StoreError>>;

/// Events decoded, and the last position the read that found them covered.
pub type Decoded = (Vec<Recorded>, u64);

/// Positions one batch of a scan covers.
pub const SCAN_RANGE: u64 = 8192;

/// An append-only log of streams with global positions.
#[async_trait]
pub trait EventStore: LogReader {
    /// Appends to every stream atomically: all appends land in one commit, or none does.
    /// Answers only once the commit is durable.
    async fn append(&self, appends: Vec<StreamAppend>) -> Result<Appended, StoreError>;

    /// Every event of one stream, in version order (empty: no stream).
    async fn read_stream(&self, stream: &str) -> Result<Vec<StoredEvent>, StoreError>;

    /// The last event of one stream (none: no stream), without reading the others: for streams
    /// that only grow, such as the reconciliation sweeps'.
    async fn read_last(&self, stream: &str) -> Result<Option<StoredEvent>, StoreError>;

    /// The position of the last committed event; changes whenever a commit lands.
    fn head(&self) -> watch::Receiver<u64>;

    /// Commits as they land, in position order, for followers in this process (a backend that
    /// cannot tell gives `None`). A follower that lags or starts late reads the log instead: every
    /// commit says which positions it covers, so a gap is visible.
    fn committed(&self) -> Option<broadcast::Receiver<Committed>> {
        None
    }

    /// Succeeds if an append could be made now.
    async fn check_writable(&self) -> Result<(), StoreError>;

    /// Appends like [`EventStore::append`], but only while `term` is the term of the lease this
    /// gateway holds on the work done once ([`EventStore::leadership`]): a former leader's appends
    /// are refused once another term has begun. Every backend says how it fences.
    async fn append_fenced(&self, appends: Vec<StreamAppend>, term: i64) -> Result<Appended, StoreError>;

    /// The term in which this gateway runs the work done once (the reaper, the outbound
    /// dispatchers, reconciliation sweeps), or `None` while another gateway does. A log with a
    /// single appender: always `Some(0)`.
    fn leadership(&self) -> watch::Receiver<Option<i64>> {
        watch::channel(Some(0)).1
    }

    /// This gateway is stopping: let go of what it holds in the log (the lease on the work done
    /// once, so another gateway takes it over now rather than when it runs out).
    async fn close(&self) {}
}

/// The store as the work done once sees it during one term: every append is fenced with the term.
pub struct Fenced {
    inner: Arc<dyn EventStore>,
    term: i64,
}

impl Fenced {
    pub fn wrap(inner: Arc<dyn EventStore>, term: i64) -> Arc<dyn EventStore> {
        Arc::new(Fenced { inner, term })
    }
}

#[async_trait]
impl LogReader for Fenced {
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.read_all(after, limit).await
    }
    async fn read_decoded(&self, after: u64, limit: usize, wanted: &[&str]) -> Result<Decoded, StoreError> {
        self.inner.read_decoded(after, limit, wanted).await
    }
    async fn query(&self, filter: &EventFilter, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.query(filter, after, limit).await
    }
    async fn last_position(&self) -> Result<u64, StoreError> {
        self.inner.last_position().await
    }
    fn scan<'a>(&'a self, after: u64, until: u64, wanted: &'a [&'a str]) -> Scan<'a> {
        self.inner.scan(after, until, wanted)
    }
}

#[async_trait]
impl EventStore for Fenced {
    async fn append(&self, appends: Vec<StreamAppend>) -> Result<Appended, StoreError> {
        self.inner.append_fenced(appends, self.term).await
    }
    async fn read_stream(&self, stream: &str) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.read_stream(stream).await
    }
    async fn read_last(&self, stream: &str) -> Result<Option<StoredEvent>, StoreError> {
        self.inner.read_last(stream).await
    }
    fn head(&self) -> watch::Receiver<u64> {
        self.inner.head()
    }
    fn committed(&self) -> Option<broadcast::Receiver<Committed>> {
        self.inner.committed()
    }
    async fn check_writable(&self) -> Result<(), StoreError> {
        self.inner.check_writable().await
    }
    async fn append_fenced(&self, appends: Vec<StreamAppend>, term: i64) -> Result<Appended, StoreError> {
        self.inner.append_fenced(appends, term).await
    }
    fn leadership(&self) -> watch::Receiver<Option<i64>> {
        self.inner.leadership()
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

pub use meshgate_domain::audit::{EventFilter, IssueBuilds};

impl StoredEvent {
    /// The event as an audit question looks at it.
    pub fn seen(&self) -> meshgate_domain::audit::Seen<'_> {
        meshgate_domain::audit::Seen {
            stream: &self.stream,
            event_type: &self.event_type,
            data: &self.data,
            correlation_id: self.correlation_id,
        }
    }

    /// The event as the audit shows it (`meshgate events --json`, `GET /api/v1/events`): its data
    /// as JSON, a received body as the text it arrived as.
    pub fn audit(&self) -> AuditEvent {
        let mut data: serde_json::Value = serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null);
        if let Ok(Event::WebhookReceived(received)) = Event::decode(&self.event_type, self.schema_version, &self.data) {
            data["body"] = serde_json::Value::String(received.body.into_string());
        }
        AuditEvent {
            position: self.position,
            stream: self.stream.clone(),
            version: self.version,
            id: self.id,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            data,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            recorded_at: self.recorded_at,
            build: None,
        }
    }

    /// The build the event is about, if it is about one.
    pub fn build_id(&self) -> Option<Uuid> {
        Event::decode(&self.event_type, self.schema_version, &self.data).ok()?.build_id()
    }

    /// [`StoredEvent::audit`] as a JSON value.
    pub fn audit_json(&self) -> serde_json::Value {
        serde_json::to_value(self.audit()).unwrap_or_default()
    }
}

/// One event as the audit shows it (`meshgate events --json`).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Global log position, in commit order (gaps where builds were archived).
    pub position: u64,
    pub stream: String,
    /// The event's version in its stream, from 0.
    pub version: u64,
    pub id: uuid::Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    /// The event's fields; a received webhook's body as the text it arrived as.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub correlation_id: uuid::Uuid,
    pub causation_id: Option<uuid::Uuid>,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    /// The name of the build the event is about (`ios-build #412`), when the projections know it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
}

/// Maps a backend's error into [`StoreError::Failed`].
pub(crate) trait StoreResultExt<T> {
    fn store_err(self) -> Result<T, StoreError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> StoreResultExt<T> for Result<T, E> {
    fn store_err(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Failed { message: e.to_string(), source: Some(Arc::new(e)) })
    }
}
