//! The log in EventStoreDB (KurrentDB), through the `eventstore` gRPC client: for teams that
//! already run it and want meshgate's streams beside their own.
//!
//! EventStoreDB appends to one stream at a time, and meshgate's decisions append to several at once
//! (a delivery, its intent, its build). So the log is one EventStoreDB stream, `{prefix}log`: a
//! decision is one append to it, at the exact revision this gateway last saw, which makes it atomic,
//! orders it after every decision before it (of any gateway), and gives gap-free positions
//! (position = revision + 1). Every event is then copied to its own stream, `{prefix}{stream}`
//! (`meshgate-build-…`), at the version it has in meshgate, with the same event id: a copy that is
//! already there is recognised by the server as a retried append. Every decision but the last one
//! in the log is copied ([`writer`]); whoever comes next (a gateway starting, appending, or reading
//! a stream) first copies the last one, in case its gateway died on the way. ADR 0010 says why
//! this design and shows that every uniqueness rule holds.
//!
//! The work done once runs on the holder of a lease in `{prefix}leader` ([`leader`]).
//!
//! Architecture Invariant: the log stream is the truth. A decision is planned against the log as
//! this gateway's writer last saw it, and the append to the log at that exact revision fails if
//! any other gateway appended meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use eventstore::{Client, ClientSettings, ReadStreamOptions, ResolvedEvent, StreamPosition};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

mod leader;
mod tail;
mod writer;

use super::{
    Appended, Committed, Decoded, EventFilter, EventStore, IssueBuilds, LogReader, StoreError, StoredEvent,
    StreamAppend,
};

/// Committed batches kept for followers that are a little behind (as the other backends' feeds).
const FEED_CAPACITY: usize = 64;

/// Events read per request when paging through a stream.
const PAGE: usize = 1000;

/// Most messages read after `stream_not_found` while waiting for a read's end.
const TRAILING_MESSAGES: usize = 16;

/// How the EventStoreDB backend names its streams and follows the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventStoreDbOptions {
    /// Put before every stream name: the log is `{prefix}log`, a stream `build-…` is
    /// `{prefix}build-…`.
    pub prefix: String,
    /// How often the follower reads the log even without word from its subscription.
    pub poll: Duration,
    /// Most requests folded into one append to the log; 1 means one append per request.
    pub max_batch: usize,
    /// Most bytes in one append, counted as the server counts them: its `MaxAppendSize`.
    pub max_append_bytes: usize,
    /// How long the lease on the work done once lasts without renewal: the bound on a failover
    /// after a crash (a gateway that stops lets it go).
    pub lease: Duration,
    /// How often its holder renews the lease (each renewal is an event).
    pub renew: Duration,
    /// How often a gateway that does not hold the lease reads whether it can take it (reads cost
    /// the database nothing it keeps).
    pub lease_poll: Duration,
}

impl Default for EventStoreDbOptions {
    fn default() -> Self {
        EventStoreDbOptions {
            prefix: "meshgate-".to_owned(),
            poll: Duration::from_secs(1),
            max_batch: 512,
            max_append_bytes: 1024 * 1024,
            lease: Duration::from_secs(30),
            renew: Duration::from_secs(10),
            lease_poll: Duration::from_secs(1),
        }
    }
}

/// What meshgate keeps of an event beyond its type and data, as the event's JSON metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Meta {
    pub stream: String,
    pub version: u64,
    pub schema_version: u32,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub recorded_at: DateTime<Utc>,
    /// On the copies: the event's position in the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// In the log: the position of the first event of the decision (the append) it came in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<u64>,
}

pub(crate) struct Inner {
    pub client: Client,
    pub prefix: String,
    pub log: String,
    pub head: watch::Sender<u64>,
    /// How far the writer has the log copied (its `copied`), for reads to see without asking it.
    pub copied: AtomicU64,
}

impl Inner {
    /// The EventStoreDB stream a meshgate stream is copied to.
    pub fn stream_name(&self, stream: &str) -> String {
        format!("{}{stream}", self.prefix)
    }

    /// Up to `limit` events of `stream` from `from` on (or back), in the order read; none if the
    /// stream does not exist. Every read is driven to its end, trailers included: a call dropped
    /// after `stream_not_found` is reset, and an HTTP/2 client that resets many calls whose
    /// trailers then arrive closes the whole connection (every call on it fails).
    pub async fn read(&self, stream: &str, options: ReadStreamOptions) -> Result<Vec<ResolvedEvent>, StoreError> {
        let mut read = match self.client.read_stream(stream, &options).await {
            Ok(read) => read,
            Err(e) => return Err(esdb_failed(format_args!("cannot read stream {stream}"), e)),
        };
        let mut events = Vec::new();
        loop {
            match read.next().await {
                Ok(Some(event)) => events.push(event),
                Ok(None) => return Ok(events),
                Err(eventstore::Error::ResourceNotFound) => {
                    // The server ends the call after this message: read on to its end.
                    for _ in 0..TRAILING_MESSAGES {
                        if !matches!(read.next().await, Ok(Some(_))) {
                            break;
                        }
                    }
                    return Ok(Vec::new());
                }
                Err(e) => return Err(esdb_failed(format_args!("cannot read stream {stream}"), e)),
            }
        }
    }

    /// The log's events at positions `after + 1 ..= after + limit`.
    pub async fn read_log(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(self.read_log_decisions(after, limit).await?.into_iter().map(|(e, _)| e).collect())
    }

    /// [`Inner::read_log`], each event with the position of its decision's first event.
    pub async fn read_log_decisions(&self, after: u64, limit: usize) -> Result<Vec<(StoredEvent, u64)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let options =
            ReadStreamOptions::default().forwards().position(StreamPosition::Position(after)).max_count(limit);
        self.read(&self.log, options).await?.iter().map(|e| stored_meta(e, None)).collect()
    }

    /// The number of events in the log, as the server has it now.
    pub async fn log_head(&self) -> Result<u64, StoreError> {
        let options = ReadStreamOptions::default().backwards().position(StreamPosition::End).max_count(1);
        Ok(self.read(&self.log, options).await?.first().map_or(0, |e| e.get_original_event().revision + 1))
    }

    /// The last event copied to meshgate stream `stream`.
    pub async fn last_of(&self, stream: &str) -> Result<Option<StoredEvent>, StoreError> {
        let options = ReadStreamOptions::default().backwards().position(StreamPosition::End).max_count(1);
        self.read(&self.stream_name(stream), options).await?.first().map(|e| stored(e, Some(stream))).transpose()
    }
}

/// An EventStoreDB client error as one line, kept as the source.
pub(crate) fn esdb_failed(context: impl std::fmt::Display, e: eventstore::Error) -> StoreError {
    StoreError::caused(context, e)
}

/// How many bytes the server counts an event for against its `MaxAppendSize`: its data, its
/// custom metadata and twice its type's length (KurrentDB's `Streams.Append`).
pub(crate) fn counted_bytes(data: usize, metadata: usize, event_type: &str) -> usize {
    data + metadata + 2 * event_type.len()
}

/// The most bytes meshgate's metadata can take for an event of `stream` (every number at its
/// widest).
pub(crate) fn metadata_bound(stream: &str, correlation_id: Uuid, causation_id: Option<Uuid>) -> usize {
    let widest = Meta {
        stream: stream.to_owned(),
        version: u64::MAX,
        schema_version: u32::MAX,
        correlation_id,
        causation_id,
        recorded_at: DateTime::<Utc>::MAX_UTC,
        position: None,
        decision: Some(u64::MAX),
    };
    serde_json::to_vec(&widest).map_or(1024, |m| m.len())
}

/// A recorded event as meshgate stores it: from the log (`copy_of: None`; position = revision + 1)
/// or a copy in meshgate stream `copy_of` (the position is in its metadata).
pub(crate) fn stored(event: &ResolvedEvent, copy_of: Option<&str>) -> Result<StoredEvent, StoreError> {
    stored_meta(event, copy_of).map(|(e, _)| e)
}

/// [`stored`], with the position of the first event of its decision (the log's events; a copy or
/// an event without it: its own position).
fn stored_meta(event: &ResolvedEvent, copy_of: Option<&str>) -> Result<(StoredEvent, u64), StoreError> {
    let recorded = event.get_original_event();
    let bad = |what: &str| {
        StoreError::failed(format!(
            "event {} in stream {} at revision {} {what}",
            recorded.id, recorded.stream_id, recorded.revision
        ))
    };
    let meta: Meta = serde_json::from_slice(&recorded.custom_metadata)
        .map_err(|e| bad(&format!("has no meshgate metadata ({e}): it was not written by meshgate")))?;
    let position = match copy_of {
        None => recorded.revision + 1,
        Some(_) => meta.position.ok_or_else(|| bad("is a copy without its log position"))?,
    };
    if copy_of.is_some_and(|s| s != meta.stream) {
        return Err(bad(&format!("belongs to stream {}", meta.stream)));
    }
    let data = String::from_utf8(recorded.data.to_vec()).map_err(|_| bad("holds data that is not UTF-8"))?;
    let decision = meta.decision.filter(|d| copy_of.is_none() && *d <= position).unwrap_or(position);
    let stored = StoredEvent {
        position,
        stream: meta.stream,
        version: meta.version,
        id: recorded.id,
        event_type: recorded.event_type.clone(),
        schema_version: meta.schema_version,
        data,
        correlation_id: meta.correlation_id,
        causation_id: meta.causation_id,
        recorded_at: meta.recorded_at,
    };
    Ok((stored, decision))
}

pub struct EventStoreDbStore {
    inner: Arc<Inner>,
    /// This gateway's one writer: appends (group commit) and catching up with the log.
    writer: mpsc::Sender<writer::Request>,
    head: watch::Receiver<u64>,
    feed: broadcast::Sender<Committed>,
    leading: watch::Receiver<Option<i64>>,
    /// Says the lease to let go (a stop).
    stop_lease: watch::Sender<bool>,
    /// The lease's task, waited for by [`EventStoreDbStore::close`].
    lease_task: std::sync::Mutex<Option<JoinHandle<()>>>,
    tasks: [JoinHandle<()>; 2],
}

impl EventStoreDbStore {
    /// Connects (`esdb://…`), copies whatever a crashed gateway left uncopied, and starts following
    /// the log.
    pub async fn open(url: &str, options: EventStoreDbOptions) -> Result<EventStoreDbStore, StoreError> {
        let settings: ClientSettings = url
            .parse()
            .map_err(|e| StoreError::failed(format!("the EventStoreDB connection string is not valid: {e}")))?;
        let client = Client::new(settings)
            .map_err(|e| StoreError::failed(format!("cannot make an EventStoreDB client: {e}")))?;
        let (head_tx, head) = watch::channel(0);
        let inner = Arc::new(Inner {
            client,
            log: format!("{}log", options.prefix),
            prefix: options.prefix,
            head: head_tx,
            copied: AtomicU64::new(0),
        });
        let mut writer = writer::Writer::default();
        let last = writer.recover(&inner).await?;
        inner.head.send_replace(last);
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let (requests, queue) = mpsc::channel(options.max_batch.max(1) * 4);
        let (leader, leading) = watch::channel(None);
        let (stop_lease, stopped) = watch::channel(false);
        let holder = uuid::Uuid::now_v7();
        let limits = writer::Limits { max_batch: options.max_batch, max_bytes: options.max_append_bytes };
        let tasks = [
            tokio::spawn(writer::run(Arc::clone(&inner), writer, queue, limits)),
            tokio::spawn(tail::run(Arc::clone(&inner), feed.clone(), last, options.poll)),
        ];
        let lease = tokio::spawn(crate::store::lease::keep(
            leader::EsdbLease { inner: Arc::clone(&inner), holder, ttl: options.lease },
            crate::store::lease::Times { ttl: options.lease, renew: options.renew, poll: options.lease_poll },
            leader,
            stopped,
        ));
        Ok(EventStoreDbStore {
            inner,
            writer: requests,
            head,
            feed,
            leading,
            stop_lease,
            lease_task: std::sync::Mutex::new(Some(lease)),
            tasks,
        })
    }

    /// Lets the lease go if this gateway holds it (another gateway takes it at its next look),
    /// and waits a moment for that to be written.
    pub async fn close(&self) {
        self.stop_lease.send_replace(true);
        let task = self.lease_task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Copies the log's last decision if this gateway's writer has not seen it (its gateway may have
    /// died before it could), so reads of single streams see every decision.
    async fn settle(&self) -> Result<(), StoreError> {
        if self.inner.copied.load(Ordering::Acquire) >= *self.head.borrow() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.writer.send(writer::Request::Settle(reply)).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for EventStoreDbStore {
    fn drop(&mut self) {
        // The writer ends once its queue is closed and drained; the follower and the lease have
        // nothing left to do (a lease not let go by `close` expires by itself).
        self.tasks[1].abort();
        if let Some(task) = self.lease_task.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
}

#[async_trait]
impl LogReader for EventStoreDbStore {
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.read_log(after, limit).await
    }

    async fn read_decoded(&self, after: u64, limit: usize, wanted: &[&str]) -> Result<Decoded, StoreError> {
        let events = self.inner.read_log(after, limit.min(PAGE * 10)).await?;
        let covered = events.last().map_or(after, |e| e.position);
        let decoded = events
            .iter()
            .filter(|e| wanted.contains(&e.event_type.as_str()))
            .map(|e| e.decode().map_err(|d| StoreError::caused(format_args!("event at position {}", e.position), d)))
            .collect::<Result<_, _>>()?;
        Ok((decoded, covered))
    }

    async fn query(&self, filter: &EventFilter, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        // The log is scanned (as the other backends do for everything but streams); an issue's
        // builds are learned from the whole log first.
        let builds = match &filter.issue {
            Some(issue) => self.builds_of(issue).await?,
            None => IssueBuilds::default(),
        };
        let mut found = Vec::new();
        let mut cursor = after;
        while found.len() < limit {
            let page = self.inner.read_log(cursor, PAGE).await?;
            let Some(last) = page.last() else { break };
            cursor = last.position;
            found.extend(page.into_iter().filter(|e| filter.matches(e.seen(), &builds)));
        }
        found.truncate(limit);
        Ok(found)
    }

    async fn last_position(&self) -> Result<u64, StoreError> {
        Ok(*self.head().borrow())
    }
}

#[async_trait]
impl EventStore for EventStoreDbStore {
    async fn append(&self, appends: Vec<StreamAppend>) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        let pending = writer::Pending { appends, reply };
        self.writer.send(writer::Request::Append(pending)).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn append_fenced(&self, appends: Vec<StreamAppend>, term: i64) -> Result<Appended, StoreError> {
        // The fence is this gateway's clock (the lease steps down before it can expire): the lease
        // cannot be checked in the log's own compare-and-set (ADR 0010).
        match *self.leading.borrow() {
            Some(current) if current == term => {}
            current => {
                return Err(StoreError::failed(format!(
                    "fenced: this gateway's term {term} of the work done once is over (it holds {current:?})"
                )))
            }
        }
        self.append(appends).await
    }

    fn leadership(&self) -> watch::Receiver<Option<i64>> {
        self.leading.clone()
    }

    async fn close(&self) {
        EventStoreDbStore::close(self).await
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<StoredEvent>, StoreError> {
        self.settle().await?;
        let options = ReadStreamOptions::default().forwards().position(StreamPosition::Start);
        self.inner
            .read(&self.inner.stream_name(stream), options)
            .await?
            .iter()
            .map(|e| stored(e, Some(stream)))
            .collect()
    }

    async fn read_last(&self, stream: &str) -> Result<Option<StoredEvent>, StoreError> {
        self.settle().await?;
        self.inner.last_of(stream).await
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    fn committed(&self) -> Option<broadcast::Receiver<Committed>> {
        Some(self.feed.subscribe())
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.inner.log_head().await.map(|_| ())
    }
}

impl EventStoreDbStore {
    /// The streams and ids of the builds requested for `issue`.
    async fn builds_of(&self, issue: &str) -> Result<IssueBuilds, StoreError> {
        let mut builds = IssueBuilds::default();
        let mut cursor = 0;
        loop {
            let page = self.inner.read_log(cursor, PAGE).await?;
            let Some(last) = page.last() else { return Ok(builds) };
            cursor = last.position;
            for e in &page {
                builds.note(issue, &e.stream, &e.event_type, &e.data);
            }
        }
    }
}
