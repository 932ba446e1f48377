//! Appending a decision: planned against the log as this gateway last saw it, appended to the log
//! at that exact revision, then copied to each stream it touches.
//!
//! Invariant: every decision in the log but the last is copied to its streams. A decision lands
//! only at the exact revision its writer planned against, and a writer that finds the log ahead of
//! it copies the last decision there before it plans again; so when a decision lands, the one
//! before it was copied. Whoever catches up (a writer, a read of a stream, a gateway starting)
//! therefore copies the last decision only; copies are idempotent.
//!
//! A batch (group commit) is at most `max_batch` requests and `max_bytes` as the server counts
//! them (its `MaxAppendSize`); a request that alone is larger can never be recorded and is refused
//! at once. An append whose answer was lost is sent again as it was (the server recognises its
//! event ids at that revision); one whose outcome stays unknown is looked for in the log, and if
//! the log cannot be asked either, the writer reads the log before it plans anything else.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use eventstore::{AppendToStreamOptions, EventData, ExpectedRevision, ReadStreamOptions, StreamPosition};
use futures_util::future::{join_all, try_join_all};
use tokio::sync::{mpsc, oneshot};

use super::{esdb_failed, Inner, Meta, PAGE};
use crate::store::{plan_request, Appended, StoreError, StoredEvent, StreamAppend};

/// Most times one append is tried when other gateways keep appending first.
const RACES: usize = 100;

/// Most times an append that failed in transit is sent again (the same events, the same expected
/// revision: the server recognises it if the first one landed).
const RESENDS: usize = 3;

/// Most streams whose last version the writer remembers; past that it starts over (a miss costs
/// one read).
const REMEMBERED: usize = 100_000;

/// Most requests to the server in flight at once for one batch (reads of versions, copies): the
/// concurrent HTTP/2 streams a server allows by default (100 in EventStoreDB's Kestrel).
const IN_FLIGHT: usize = 100;

/// How much one batch may hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Requests.
    pub max_batch: usize,
    /// Bytes, as the server counts them.
    pub max_bytes: usize,
}

/// How far this gateway has the log, and the last versions of the streams it saw there.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    /// The log up to this position is known to this writer, and copied to its streams (published
    /// as `Inner::copied` for reads: set both with [`Writer::copied_to`]).
    copied: u64,
    /// Last versions as of position `copied`, for streams this writer saw there.
    versions: HashMap<String, u64>,
    /// An append's outcome is unknown: the log is read before anything else is planned.
    stale: bool,
}

/// The bytes a request's events count against the server's `MaxAppendSize` (at most: their
/// metadata is measured at its widest).
fn request_bytes(appends: &[StreamAppend]) -> usize {
    appends
        .iter()
        .flat_map(|a| a.events.iter().map(move |e| (a.stream.as_str(), e)))
        .map(|(stream, e)| {
            let metadata = super::metadata_bound(stream, e.correlation_id, e.causation_id);
            super::counted_bytes(e.data.len(), metadata, e.event_type)
        })
        .sum()
}

/// What the server said of an append.
enum Landed {
    Yes,
    AnotherWasFirst,
    /// Over the server's `MaxAppendSize` (which may be below `max_append_bytes`).
    TooLarge,
}

impl Writer {
    /// Copies the log's last decision (a gateway may have died before it could), and answers the
    /// log's head.
    pub async fn recover(&mut self, inner: &Inner) -> Result<u64, StoreError> {
        let head = inner.log_head().await?;
        if head > 0 {
            let (_, decision) =
                inner.read_log_decisions(head - 1, 1).await?.pop().ok_or_else(|| {
                    StoreError::failed(format!("the log's last event (position {head}) cannot be read"))
                })?;
            self.copied_to(inner, decision - 1);
        }
        self.catch_up(inner).await
    }

    /// Reads the log past `copied`, learning the versions of the streams in it, and copies its
    /// last decision; answers the log's head.
    pub async fn catch_up(&mut self, inner: &Inner) -> Result<u64, StoreError> {
        let mut cursor = self.copied;
        let mut last_decision = None;
        loop {
            let page = inner.read_log_decisions(cursor, PAGE).await?;
            let Some((last, decision)) = page.last() else { break };
            (cursor, last_decision) = (last.position, Some(*decision));
            self.remember(page.iter().map(|(e, _)| e));
        }
        if let Some(first) = last_decision {
            let decision = inner.read_log(first - 1, (cursor + 1 - first) as usize).await?;
            copy(inner, &decision).await?;
            self.copied_to(inner, cursor);
            inner.head.send_if_modified(|h| std::mem::replace(h, (*h).max(cursor)) < cursor);
        }
        Ok(self.copied)
    }

    /// Appends batches as decisions, one after the other; a batch the server finds too large is
    /// halved until each part fits, and a single request it refuses can never be recorded.
    async fn append_all(&mut self, inner: &Inner, batch: Vec<Pending>, max_bytes: usize) {
        let mut todo = vec![batch];
        while let Some(batch) = todo.pop() {
            let Some(mut refused) = self.append_batch(inner, batch).await else { continue };
            if refused.len() == 1 {
                let bytes = request_bytes(&refused[0].appends) as u64;
                tracing::warn!(bytes, max_append_bytes = max_bytes, "the server refused an append as larger than its MaxAppendSize: is its MaxAppendSize below [store] max_append_bytes?");
                answer_all(refused, StoreError::TooLarge { bytes, max: max_bytes as u64 });
                continue;
            }
            let second = refused.split_off(refused.len() / 2);
            todo.push(second);
            todo.push(refused);
        }
    }

    /// Appends a batch of requests as one decision (group commit). It is planned against the log as
    /// this writer last saw it; if another gateway appended since, the append to the log fails, the
    /// writer catches up and plans the batch again. A request whose expectation does not hold gets
    /// its conflict once the others land (which shows the plan was made on the log as it stands),
    /// or once the log's head shows it when nothing else is to land. Gives the batch back, not
    /// answered, when the server refuses it as too large.
    async fn append_batch(&mut self, inner: &Inner, mut batch: Vec<Pending>) -> Option<Vec<Pending>> {
        for race in 0..RACES {
            let caught_up = if race == 0 && !self.stale { Ok(self.copied) } else { self.catch_up(inner).await };
            let head = match caught_up {
                Ok(head) => {
                    self.stale = false;
                    head
                }
                Err(e) => {
                    answer_all(batch, e);
                    return None;
                }
            };
            let plans = self.plan(inner, head, &batch).await;
            let planned: Vec<StoredEvent> = plans.iter().filter_map(|p| p.as_ref().ok()).flatten().cloned().collect();
            let landed = if planned.is_empty() {
                // Only conflicts: they stand if nothing was appended since the plan.
                inner.log_head().await.map(|now| if now == head { Landed::Yes } else { Landed::AnotherWasFirst })
            } else {
                append_to_log(inner, head, &planned).await
            };
            match landed {
                Ok(Landed::Yes) => {}
                Ok(Landed::AnotherWasFirst) => continue,
                Ok(Landed::TooLarge) => return Some(batch),
                Err(e) => {
                    if matches!(e, StoreError::Unknown { .. }) {
                        // Perhaps in the log: read it before anything is planned on top.
                        self.stale = true;
                    }
                    answer_all(batch, e);
                    return None;
                }
            }
            if !planned.is_empty() {
                failpoint("eventstoredb-after-log-append").await;
                let last = planned.last().map_or(head, |e| e.position);
                match copy(inner, &planned).await {
                    Ok(()) => {
                        self.remember(planned.iter());
                        self.copied_to(inner, last);
                    }
                    // In the log, so decided. This writer stays behind it, so it (or whoever comes
                    // next) copies it before anything is planned on top of it.
                    Err(e) => {
                        tracing::warn!(error = %crate::report::chain(&e), "cannot copy a decision to its streams yet")
                    }
                }
                inner.head.send_if_modified(|h| std::mem::replace(h, (*h).max(last)) < last);
            }
            for (pending, plan) in batch.drain(..).zip(plans) {
                let answer = plan.map(|events| Appended { last_position: events.last().map_or(head, |e| e.position) });
                let _ = pending.reply.send(answer);
            }
            return None;
        }
        let busy = StoreError::failed(format!("other gateways appended first {RACES} times in a row; try again"));
        answer_all(batch, busy);
        None
    }

    fn copied_to(&mut self, inner: &Inner, position: u64) {
        self.copied = position;
        inner.copied.store(position, Ordering::Release);
    }

    /// Remembers the versions of events read from or appended to the log.
    fn remember<'a>(&mut self, events: impl ExactSizeIterator<Item = &'a StoredEvent>) {
        if self.versions.len() + events.len() > REMEMBERED {
            self.versions.clear();
        }
        for e in events {
            self.versions.insert(e.stream.clone(), e.version);
        }
    }

    /// Each request's events as they will stand in the log after `head` (the position up to which
    /// this writer knows the log), one request after the other, or why it is refused: the
    /// conflict, or the failed read of one of its streams (the others' requests go on).
    async fn plan(&self, inner: &Inner, head: u64, batch: &[Pending]) -> Vec<Result<Vec<StoredEvent>, StoreError>> {
        // The streams this writer has not seen, read at once.
        let mut unknown: Vec<&str> = batch
            .iter()
            .flat_map(|p| p.appends.iter().map(|a| a.stream.as_str()))
            .filter(|s| !self.versions.contains_key(*s))
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        let mut versions: HashMap<String, Option<u64>> = HashMap::new();
        let mut unreadable: HashMap<String, StoreError> = HashMap::new();
        for streams in unknown.chunks(IN_FLIGHT) {
            let read = join_all(streams.iter().map(|stream| inner.last_of(stream))).await;
            for (stream, last) in streams.iter().zip(read) {
                match last {
                    Ok(last) => {
                        versions.insert((*stream).to_owned(), last.map(|e| e.version));
                    }
                    Err(e) => {
                        unreadable.insert((*stream).to_owned(), e);
                    }
                }
            }
        }
        let mut position = head;
        let mut plans = Vec::with_capacity(batch.len());
        for pending in batch {
            if let Some(e) = pending.appends.iter().find_map(|a| unreadable.get(&a.stream)) {
                plans.push(Err(e.clone()));
                continue;
            }
            let current = |stream: &str| match versions.get(stream) {
                Some(known) => *known,
                None => self.versions.get(stream).copied(),
            };
            let plan = plan_request(&pending.appends, position, current).map(|(planned, last)| {
                // Accepted: later requests of the batch see its versions.
                versions.extend(last.into_iter().map(|(stream, version)| (stream, Some(version))));
                position += planned.len() as u64;
                planned
            });
            plans.push(plan);
        }
        plans
    }
}

/// An append waiting for the writer.
pub(crate) struct Pending {
    pub appends: Vec<StreamAppend>,
    pub reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// What the writer is asked.
pub(crate) enum Request {
    Append(Pending),
    /// Copy the log's last decision if this writer is behind the head, then answer.
    Settle(oneshot::Sender<Result<(), StoreError>>),
}

fn answer_all(batch: Vec<Pending>, error: StoreError) {
    for pending in batch {
        let _ = pending.reply.send(Err(error.clone()));
    }
}

/// The writer: takes whatever requests are waiting (up to `max_batch` appends) and handles them in
/// batches of at most `max_bytes`, until every sender is gone.
pub(crate) async fn run(
    inner: std::sync::Arc<Inner>,
    mut writer: Writer,
    mut requests: mpsc::Receiver<Request>,
    limits: Limits,
) {
    while let Some(first) = requests.recv().await {
        let mut batches: Vec<Vec<Pending>> = vec![Vec::new()];
        let mut bytes = 0;
        let mut taken = 0;
        let mut settles = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Append(pending) => {
                    taken += 1;
                    let size = request_bytes(&pending.appends);
                    if size > limits.max_bytes {
                        // It can never be recorded: said at once, never tried.
                        let refused = StoreError::TooLarge { bytes: size as u64, max: limits.max_bytes as u64 };
                        let _ = pending.reply.send(Err(refused));
                    } else {
                        if bytes + size > limits.max_bytes {
                            batches.push(Vec::new());
                            bytes = 0;
                        }
                        bytes += size;
                        batches.last_mut().expect("a batch").push(pending);
                    }
                }
                Request::Settle(reply) => settles.push(reply),
            }
            if taken < limits.max_batch.max(1) {
                next = requests.try_recv().ok();
            }
        }
        if !settles.is_empty() {
            let settled =
                if writer.copied < *inner.head.borrow() { writer.catch_up(&inner).await.map(|_| ()) } else { Ok(()) };
            for reply in settles {
                let _ = reply.send(settled.clone());
            }
        }
        for batch in batches.into_iter().filter(|b| !b.is_empty()) {
            writer.append_all(&inner, batch, limits.max_bytes).await;
        }
    }
}

/// Appends the planned events to the log right after `head`, as one decision.
async fn append_to_log(inner: &Inner, head: u64, planned: &[StoredEvent]) -> Result<Landed, StoreError> {
    let expected = if head == 0 { ExpectedRevision::NoStream } else { ExpectedRevision::Exact(head - 1) };
    let options = AppendToStreamOptions::default().expected_revision(expected);
    let mut resends = 0;
    loop {
        let events = planned.iter().map(|e| event_data(e, Some(head + 1))).collect::<Result<Vec<_>, _>>()?;
        let e = match inner.client.append_to_stream(inner.log.as_str(), &options, events).await {
            Ok(_) => return Ok(Landed::Yes),
            Err(e) => e,
        };
        if matches!(e, eventstore::Error::WrongExpectedVersion { .. }) {
            // Either another gateway appended first, or an earlier send of these very events
            // landed and its answer was lost.
            return match landed_at(inner, head, planned).await? {
                Some(landed) => Ok(landed),
                None => Err(StoreError::failed(
                    "the event log refused the append as out of date, and holds nothing after it",
                )),
            };
        }
        if too_large(&e) {
            return Ok(Landed::TooLarge);
        }
        if refused(&e) {
            return Err(esdb_failed("cannot append to the event log", e));
        }
        // The append may or may not have been written (an answer lost, a reset, a server gone):
        // the same events at the same revision are recognised if they were.
        if resends < RESENDS {
            resends += 1;
            tracing::warn!(error = %e, resends, "an append to the event log may not have arrived; sending it again");
            tokio::time::sleep(Duration::from_millis(100 * resends as u64)).await;
            continue;
        }
        return match landed_at(inner, head, planned).await {
            Ok(Some(landed)) => Ok(landed),
            Ok(None) => Err(esdb_failed("cannot append to the event log", e)),
            Err(read) => Err(StoreError::Unknown {
                message: format!("{e}; and the log cannot be read to find out: {read}"),
                source: Some(std::sync::Arc::new(e)),
            }),
        };
    }
}

/// What the log holds right after `head`: these very events, another decision, or nothing.
async fn landed_at(inner: &Inner, head: u64, planned: &[StoredEvent]) -> Result<Option<Landed>, StoreError> {
    let first = inner.read_log(head, 1).await?;
    Ok(first.first().map(|e| if e.id == planned[0].id { Landed::Yes } else { Landed::AnotherWasFirst }))
}

/// The server's `maximum-append-size-exceeded` (the client keeps only its status and message).
fn too_large(e: &eventstore::Error) -> bool {
    matches!(e, eventstore::Error::Grpc { code: tonic::Code::InvalidArgument, message } if message.contains("Maximum Append Size"))
}

/// Errors that say the server refused the append: nothing was written. Anything else may have
/// been (the client reports a lost connection, a reset, a server that went away or failed inside
/// as `ConnectionClosed`, `ServerError`, `DeadlineExceeded` or an unmapped status such as
/// `RESOURCE_EXHAUSTED` or `CANCELLED`).
fn refused(e: &eventstore::Error) -> bool {
    use eventstore::Error as E;
    use tonic::Code as C;
    match e {
        E::AccessDenied
        | E::ResourceNotFound
        | E::ResourceDeleted
        | E::ResourceAlreadyExists
        | E::UnsupportedFeature
        | E::NotLeaderException(_)
        | E::InternalParsingError(_)
        | E::InitializationError(_) => true,
        E::Grpc { code, .. } => matches!(
            code,
            C::InvalidArgument
                | C::NotFound
                | C::AlreadyExists
                | C::PermissionDenied
                | C::Unauthenticated
                | C::FailedPrecondition
                | C::OutOfRange
                | C::Unimplemented
        ),
        _ => false,
    }
}

/// Copies one decision's events to their streams: each stream's events in one append at the
/// version meshgate gives them, the first stream, then the others at once. A copy already there
/// is recognised by its event ids.
async fn copy(inner: &Inner, decision: &[StoredEvent]) -> Result<(), StoreError> {
    let mut runs: Vec<Vec<&StoredEvent>> = Vec::new();
    for event in decision {
        match runs.iter_mut().find(|run| run[0].stream == event.stream) {
            Some(run) => run.push(event),
            None => runs.push(vec![event]),
        }
    }
    let mut runs = runs.into_iter();
    if let Some(first) = runs.next() {
        copy_run(inner, &first).await?;
    }
    failpoint("eventstoredb-after-first-copy").await;
    let runs: Vec<_> = runs.collect();
    for some in runs.chunks(IN_FLIGHT) {
        try_join_all(some.iter().map(|run| copy_run(inner, run))).await?;
    }
    Ok(())
}

/// Copies a run of one stream's events, consecutive versions.
async fn copy_run(inner: &Inner, run: &[&StoredEvent]) -> Result<(), StoreError> {
    let first = run[0];
    let expected =
        if first.version == 0 { ExpectedRevision::NoStream } else { ExpectedRevision::Exact(first.version - 1) };
    let options = AppendToStreamOptions::default().expected_revision(expected);
    let data = run.iter().map(|e| event_data(e, None)).collect::<Result<Vec<_>, _>>()?;
    let name = inner.stream_name(&first.stream);
    match inner.client.append_to_stream(name.as_str(), &options, data).await {
        Ok(_) => Ok(()),
        Err(eventstore::Error::WrongExpectedVersion { current, .. }) => {
            // Copied already (by a gateway that died before it could say so, or by another that
            // caught up first)? Then the stream holds these very events.
            if holds(inner, &name, run).await? {
                return Ok(());
            }
            Err(StoreError::failed(format!(
                "stream {name} is at revision {current:?}, not where the log puts event {} (version {}): \
                 was it written by something other than meshgate?",
                first.id, first.version
            )))
        }
        Err(e) => Err(esdb_failed(format_args!("cannot copy events to stream {name}"), e)),
    }
}

/// Whether EventStoreDB stream `name` holds `run` at the versions the log gives them.
async fn holds(inner: &Inner, name: &str, run: &[&StoredEvent]) -> Result<bool, StoreError> {
    let options =
        ReadStreamOptions::default().forwards().position(StreamPosition::Position(run[0].version)).max_count(run.len());
    let there = inner.read(name, options).await?;
    Ok(there.len() == run.len() && there.iter().zip(run).all(|(t, e)| t.get_original_event().id == e.id))
}

/// An event as EventStoreDB takes it: JSON data as it was encoded, meshgate's id, and meshgate's
/// metadata. In the log it names the position of its decision's first event; a copy names its own
/// position in the log instead.
fn event_data(e: &StoredEvent, decision: Option<u64>) -> Result<EventData, StoreError> {
    let data = serde_json::value::RawValue::from_string(e.data.clone())
        .map_err(|err| StoreError::caused(format_args!("event {} holds data that is not JSON", e.id), err))?;
    let meta = Meta {
        stream: e.stream.clone(),
        version: e.version,
        schema_version: e.schema_version,
        correlation_id: e.correlation_id,
        causation_id: e.causation_id,
        recorded_at: e.recorded_at,
        position: decision.is_none().then_some(e.position),
        decision,
    };
    let meta = Bytes::from(serde_json::to_vec(&meta).expect("metadata serializes"));
    let event = EventData::json(&e.event_type, &data)
        .map_err(|err| StoreError::caused(format_args!("event {} cannot be sent", e.id), err))?;
    Ok(event.id(e.id).metadata(meta))
}

/// Test builds only: `MESHGATE_FAILPOINT=<name>` stops this gateway at that point (it says so on
/// stderr and waits there forever), for tests that kill it mid-decision.
#[cfg(debug_assertions)]
async fn failpoint(name: &str) {
    if std::env::var("MESHGATE_FAILPOINT").is_ok_and(|f| f == name) {
        eprintln!("failpoint {name} reached");
        std::future::pending::<()>().await;
    }
}

#[cfg(not(debug_assertions))]
async fn failpoint(_: &str) {}
