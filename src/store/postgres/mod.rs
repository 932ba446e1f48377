//! The shared backend: the log in a PostgreSQL database, for teams that run several gateways.
//!
//! Every gateway appends through its own writer (group commit, [`writer`]); appends from all of
//! them are serialized by a row lock on the log's head, so positions are gap-free and become
//! visible in order, and any follower can read `position > cursor` without ever skipping an event.
//! Versions are enforced by the database (`UNIQUE (stream, version)` and a check in each insert),
//! never by one process's memory. Each gateway's followers learn of new events from a tailer
//! ([`tail`]): its own commits directly, the other gateways' through `LISTEN meshgate_events`,
//! and a poll every second in case a notification is lost. A notification is only a hint: the
//! tailer always reads the log from where it stands. ADR 0009 says why.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use meshgate_domain::audit::{ABOUT_A_BUILD, BUILD_REQUESTED};
use meshgate_domain::stream::{BUILD_PREFIX, INTENT_PREFIX};
use meshgate_domain::{Event, Recorded};
use tokio::sync::{broadcast, mpsc, oneshot, watch, RwLock};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Row};

pub mod archive;
pub mod dump;
mod leader;
pub mod schema;
mod tail;
mod target;
mod writer;

pub use target::{SslMode, Target};

/// The writer's one-round-trip append and its connection's settings, for the tests that check
/// how the server plans it.
#[doc(hidden)]
pub use writer::{APPEND as APPEND_STATEMENT, SESSION as WRITER_SESSION};

use super::{Appended, Committed, Decoded, EventFilter, EventStore, LogReader, StoreError, StoredEvent, StreamAppend};

const COLUMNS: &str =
    "position, stream, version, id, type, schema_version, data, correlation_id, causation_id, recorded_at";

/// Committed batches kept for followers that are a little behind (as the SQLite backend's feed).
const FEED_CAPACITY: usize = 64;

/// How the PostgreSQL backend appends and reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// The CA bundle the database's certificate must chain to (`[store] ca_file`), when the URL
    /// names no `sslrootcert`.
    pub ca_file: Option<std::path::PathBuf>,
    /// Most requests folded into one transaction; 1 means one transaction per request.
    pub max_batch: usize,
    /// Connections for reads (each pipelines many queries).
    pub readers: usize,
    /// How often the tailer reads the log even without a notification.
    pub poll: Duration,
    /// How long the lease on the work done once lasts without renewal: the bound on a failover.
    pub lease: Duration,
    /// How often the lease is taken or renewed.
    pub renew: Duration,
    /// The event types this gateway's followers fold: another gateway's commits are read with only
    /// these (`None`: every event).
    pub followed: Option<Vec<&'static str>>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            ca_file: None,
            max_batch: 512,
            readers: 2,
            poll: Duration::from_secs(1),
            lease: Duration::from_secs(5),
            renew: Duration::from_secs(1),
            followed: None,
        }
    }
}

/// A database error as one line: what failed, and the server's own words when it answered
/// (`cannot append to the event log: deadlock detected (40P01)`); the error stays the source.
pub(crate) fn pg_failed(context: impl std::fmt::Display, e: tokio_postgres::Error) -> StoreError {
    let message = match e.as_db_error() {
        Some(db) => format!("{context}: {} ({})", db.message(), db.code().code()),
        None => format!("{context}: {e}"),
    };
    StoreError::Failed { message, source: Some(Arc::new(e)) }
}

/// Connections for reads, reopened when one is lost. Each statement is prepared once per
/// connection (a statement given as text costs a round trip and a parse at every read) and, as the
/// writer's, planned at each execution for the log as it then stands.
pub(crate) struct Readers {
    target: Arc<Target>,
    clients: Vec<RwLock<Option<Arc<Reader>>>>,
    next: AtomicUsize,
}

/// A reading connection and the statements prepared on it.
pub(crate) struct Reader {
    client: Client,
    prepared: std::sync::Mutex<std::collections::HashMap<String, tokio_postgres::Statement>>,
}

impl Readers {
    fn new(target: &Arc<Target>, n: usize) -> Readers {
        Readers {
            target: Arc::clone(target),
            clients: (0..n.max(1)).map(|_| RwLock::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    async fn get(&self) -> Result<Arc<Reader>, StoreError> {
        let slot = &self.clients[self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len()];
        if let Some(reader) = slot.read().await.as_ref().filter(|r| !r.client.is_closed()) {
            return Ok(Arc::clone(reader));
        }
        let mut guard = slot.write().await;
        if let Some(reader) = guard.as_ref().filter(|r| !r.client.is_closed()) {
            return Ok(Arc::clone(reader));
        }
        let client = self.target.connect().await?;
        client.batch_execute(writer::SESSION).await.map_err(|e| pg_failed("cannot set up a reading connection", e))?;
        let reader = Arc::new(Reader { client, prepared: Default::default() });
        *guard = Some(Arc::clone(&reader));
        Ok(reader)
    }

    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let reader = self.get().await?;
        let failed = |e| pg_failed("cannot read the event log", e);
        let cached = reader.prepared.lock().unwrap_or_else(|p| p.into_inner()).get(sql).cloned();
        let statement = match cached {
            Some(statement) => statement,
            None => {
                let statement = reader.client.prepare(sql).await.map_err(failed)?;
                reader.prepared.lock().unwrap_or_else(|p| p.into_inner()).insert(sql.to_owned(), statement.clone());
                statement
            }
        };
        reader.client.query(&statement, params).await.map_err(failed)
    }
}

pub struct PostgresStore {
    writer: mpsc::Sender<writer::WriteRequest>,
    readers: Arc<Readers>,
    head: watch::Receiver<u64>,
    feed: broadcast::Sender<Committed>,
    leading: watch::Receiver<Option<i64>>,
    tasks: Vec<JoinHandle<()>>,
}

impl PostgresStore {
    /// Connects, brings the schema up to date and starts the writer and the tailer.
    pub async fn open(url: &str, options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let target = Arc::new(Target::parse(url, options.ca_file.as_deref())?);
        let mut client = target.connect().await?;
        schema::migrate(&mut client).await?;
        let last: i64 = client
            .query_one("SELECT last FROM meshgate_head WHERE id = 1", &[])
            .await
            .map_err(|e| pg_failed("cannot read the event log's head", e))?
            .get(0);
        drop(client);
        let (head_tx, head) = watch::channel(last as u64);
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let readers = Arc::new(Readers::new(&target, options.readers));
        let (writer, requests) = mpsc::channel(options.max_batch.max(1) * 4);
        let (committed, local) = mpsc::unbounded_channel();
        let head_tx = Arc::new(head_tx);
        let (leader, leading) = watch::channel(None);
        let writer_pid = Arc::new(AtomicI32::new(0));
        let tasks = vec![
            tokio::spawn(writer::run(
                Arc::clone(&target),
                requests,
                options.max_batch.max(1),
                Arc::clone(&head_tx),
                committed,
                Arc::clone(&writer_pid),
            )),
            tokio::spawn(tail::run(tail::Tailer {
                target: Arc::clone(&target),
                readers: Arc::clone(&readers),
                head: head_tx,
                feed: feed.clone(),
                cursor: last as u64,
                poll: options.poll,
                local,
                writer_pid,
                followed: options.followed,
            })),
            tokio::spawn(crate::store::lease::keep(
                leader::PgLease { target, holder: uuid::Uuid::now_v7(), ttl: options.lease, connection: None },
                crate::store::lease::Times { ttl: options.lease, renew: options.renew, poll: options.renew },
                leader,
                // Not let go on a stop: the next holder waits for the lease to run out (5 s).
                watch::channel(false).1,
            )),
        ];
        Ok(PostgresStore { writer, readers, head, feed, leading, tasks })
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // The writer ends once its queue is closed and drained; the tailer and the lease have
        // nothing left to do (the lease expires by itself).
        for task in self.tasks.iter().skip(1) {
            task.abort();
        }
    }
}

#[async_trait]
impl LogReader for PostgresStore {
    async fn query(&self, filter: &EventFilter, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        // As the SQLite backend's audit query (`meshgate events`), on `data` read as JSON.
        // The names the question asks for are the domain's (`meshgate_domain::audit`).
        let about_a_build = ABOUT_A_BUILD.map(|t| format!("'{t}'")).join(", ");
        let sql = format!(
            "SELECT {COLUMNS} FROM meshgate_events
             WHERE position > $6
               AND ($1::text IS NULL
                    OR data::jsonb ->> 'issue_id' = $1
                    OR stream LIKE '{INTENT_PREFIX}' || $1 || '/%'
                    OR stream IN (SELECT stream FROM meshgate_events
                                  WHERE type = '{BUILD_REQUESTED}' AND data::jsonb ->> 'issue_id' = $1)
                    OR (type IN ({about_a_build})
                        AND data::jsonb ->> 'build_id' IN
                            (SELECT data::jsonb ->> 'build_id' FROM meshgate_events
                             WHERE type = '{BUILD_REQUESTED}' AND data::jsonb ->> 'issue_id' = $1)))
               AND ($5::text IS NULL OR stream = '{BUILD_PREFIX}' || $5 OR data::jsonb ->> 'build_id' = $5)
               AND ($2::text IS NULL OR stream = $2)
               AND ($3::uuid IS NULL OR correlation_id = $3)
               AND ($4::text IS NULL OR type = $4)
             ORDER BY position
             LIMIT $7"
        );
        let build = filter.build.map(|b| b.to_string());
        let (after, limit) = (after as i64, limit.min(i64::MAX as usize) as i64);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
            [&filter.issue, &filter.stream, &filter.correlation_id, &filter.event_type, &build, &after, &limit];
        self.readers.query(&sql, &params).await?.iter().map(stored).collect()
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        read_all(&self.readers, after, limit).await
    }

    async fn read_decoded(&self, after: u64, limit: usize, wanted: &[&str]) -> Result<Decoded, StoreError> {
        // One statement, so the rows and how far they reach come from one snapshot.
        let sql = "
            WITH h AS (SELECT LEAST($1::bigint + $2::bigint, last) AS upto FROM meshgate_head WHERE id = 1)
            SELECT h.upto, e.position, e.stream, e.version, e.type, e.schema_version, e.data, e.correlation_id, e.recorded_at
            FROM h LEFT JOIN meshgate_events e ON e.position > $1 AND e.position <= h.upto AND e.type = ANY($3::text[])
            ORDER BY e.position";
        let (after_i, limit_i) = (after as i64, limit.min(i64::MAX as usize) as i64);
        let rows = self.readers.query(sql, &[&after_i, &limit_i, &wanted]).await?;
        let covered = rows.first().map_or(after as i64, |r| r.get::<_, i64>(0)).max(after as i64) as u64;
        let mut decoded = Vec::with_capacity(rows.len());
        for row in rows.iter().filter(|r| r.get::<_, Option<i64>>(1).is_some()) {
            let position: i64 = row.get(1);
            let (event_type, schema_version, data): (&str, i32, &str) = (row.get(4), row.get(5), row.get(6));
            let event = Event::decode(event_type, schema_version as u32, data)
                .map_err(|e| StoreError::caused(format_args!("event at position {position}"), e))?;
            decoded.push(Recorded {
                position: position as u64,
                stream: row.get(2),
                version: row.get::<_, i64>(3) as u64,
                event,
                correlation_id: row.get(7),
                recorded_at: row.get(8),
            });
        }
        Ok((decoded, covered))
    }

    async fn last_position(&self) -> Result<u64, StoreError> {
        Ok(*self.head().borrow())
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(&self, appends: Vec<StreamAppend>) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer.send(writer::WriteRequest { appends, fence: None, reply }).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn append_fenced(&self, appends: Vec<StreamAppend>, term: i64) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = writer::WriteRequest { appends, fence: Some(term), reply };
        self.writer.send(request).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    fn leadership(&self) -> watch::Receiver<Option<i64>> {
        self.leading.clone()
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM meshgate_events WHERE stream = $1 ORDER BY version");
        self.readers.query(&sql, &[&stream]).await?.iter().map(stored).collect()
    }

    async fn read_last(&self, stream: &str) -> Result<Option<StoredEvent>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM meshgate_events WHERE stream = $1 ORDER BY version DESC LIMIT 1");
        self.readers.query(&sql, &[&stream]).await?.first().map(stored).transpose()
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    fn committed(&self) -> Option<broadcast::Receiver<Committed>> {
        Some(self.feed.subscribe())
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        let rows = self.readers.query("SELECT pg_is_in_recovery()", &[]).await?;
        match rows.first().map(|r| r.get::<_, bool>(0)) {
            Some(false) => Ok(()),
            _ => Err(StoreError::failed("the event log's database is a read-only standby")),
        }
    }
}

async fn read_all(readers: &Readers, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM meshgate_events WHERE position > $1 ORDER BY position LIMIT $2");
    let (after, limit) = (after as i64, limit.min(i64::MAX as usize) as i64);
    readers.query(&sql, &[&after, &limit]).await?.iter().map(stored).collect()
}

/// The events of the types `types` (`None`: of every type) at the positions `after + 1 ..= upto`,
/// in position order. Every position up to `upto` must be committed (a head some commit reached):
/// then this read's snapshot holds all of them, and every event of those positions left out is
/// one of another type.
pub(crate) async fn read_followed(
    readers: &Readers,
    after: u64,
    upto: u64,
    types: Option<&[&str]>,
) -> Result<Vec<StoredEvent>, StoreError> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {COLUMNS} FROM meshgate_events
             WHERE position > $1 AND position <= $2 AND ($3::text[] IS NULL OR type = ANY($3))
             ORDER BY position"
        )
    });
    let (after, upto) = (after as i64, upto.min(i64::MAX as u64) as i64);
    readers.query(&SQL, &[&after, &upto, &types]).await?.iter().map(stored).collect()
}

/// The head as the log's table says now.
pub(crate) async fn read_head(readers: &Readers) -> Result<u64, StoreError> {
    let rows = readers.query("SELECT last FROM meshgate_head WHERE id = 1", &[]).await?;
    match rows.first() {
        Some(row) => {
            Ok(row.try_get::<_, i64>(0).map_err(|e| pg_failed("the log's head of an unexpected shape", e))? as u64)
        }
        None => Err(StoreError::failed("the event log has no head row")),
    }
}

fn stored(row: &Row) -> Result<StoredEvent, StoreError> {
    let get = |e: tokio_postgres::Error| pg_failed("an event row of an unexpected shape", e);
    Ok(StoredEvent {
        position: row.try_get::<_, i64>(0).map_err(get)? as u64,
        stream: row.try_get(1).map_err(get)?,
        version: row.try_get::<_, i64>(2).map_err(get)? as u64,
        id: row.try_get(3).map_err(get)?,
        event_type: row.try_get(4).map_err(get)?,
        schema_version: row.try_get::<_, i32>(5).map_err(get)? as u32,
        data: row.try_get(6).map_err(get)?,
        correlation_id: row.try_get(7).map_err(get)?,
        causation_id: row.try_get(8).map_err(get)?,
        recorded_at: row.try_get(9).map_err(get)?,
    })
}
