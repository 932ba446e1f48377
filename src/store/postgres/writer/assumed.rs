//! The batch in one round trip, the way nearly every batch is decided.
//!
//! The writer judges the batch in memory as if each stream were where the first request naming it
//! expects (`NoStream`: no events; `Exact(v)`: last version `v`): those are the batch's
//! assumptions. It then sends, pipelined: `BEGIN`; the head's row lock; one statement ([`APPEND`])
//! that checks every assumption and the lease's term of every fenced request, and only if all hold
//! inserts the events at positions after the head, moves the head and notifies; `COMMIT`.
//!
//! The statement runs after the lock is held, so (read committed) its snapshot holds everything
//! any gateway committed before: the checks are exact. A stream the batch writes to is held at
//! its assumption from above by `UNIQUE (stream, version)` as well (its next version is taken by
//! the insert). When an assumption does not hold, nothing is written and the caller judges the
//! batch again against the versions read ([`super::whole`]); a version or event id already taken
//! fails the statement, and the commit behind it rolls back. A request that expects `Any` needs
//! the stream's version, so a batch holding one is not tried this way.

use std::collections::{HashMap, HashSet};

use super::{is_clash_on, is_version_clash, micros, Batch, Columns, Connection, Done};
use crate::store::postgres::pg_failed;
use crate::store::{plan_request, Appended, StoreError, StoredEvent};
use meshgate_domain::ExpectedVersion;

/// Appends the events `$1`–`$9` (stream, version, id, type, schema version, data, correlation,
/// causation, time) at the positions after the head, if every stream `$10` stands at `$11` (-1: no
/// stream; `$12`: whether the batch writes to it, so the next version is the insert's to check) and
/// the lease is in each term `$13` and unexpired. Answers the head it found and whether it wrote.
pub const APPEND: &str = "
    WITH head AS (SELECT last FROM meshgate_head WHERE id = 1),
    holds AS (
        SELECT NOT EXISTS (
                   SELECT 1 FROM unnest($10::text[], $11::bigint[], $12::boolean[]) AS a(stream, version, writes)
                   WHERE (a.version >= 0 AND NOT EXISTS (
                             SELECT 1 FROM meshgate_events WHERE stream = a.stream AND version = a.version))
                      OR (NOT a.writes AND EXISTS (
                             SELECT 1 FROM meshgate_events WHERE stream = a.stream AND version = a.version + 1)))
           AND NOT EXISTS (
                   SELECT 1 FROM unnest($13::bigint[]) AS f(term)
                   WHERE NOT EXISTS (
                       SELECT 1 FROM meshgate_leader WHERE id = 1 AND term = f.term AND expires_at > now()))
               AS ok),
    inserted AS (
        INSERT INTO meshgate_events
            (position, stream, version, id, type, schema_version, data, correlation_id, causation_id, recorded_at)
        SELECT head.last + e.n, e.stream, e.version, e.id, e.type, e.sv, e.data, e.corr, e.caus, e.at
        FROM head, holds,
             unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::integer[], $6::text[], $7::uuid[],
                    $8::uuid[], $9::timestamptz[])
                 WITH ORDINALITY AS e(stream, version, id, type, sv, data, corr, caus, at, n)
        WHERE holds.ok),
    moved AS (
        UPDATE meshgate_head SET last = meshgate_head.last + cardinality($1::text[])
        FROM holds WHERE id = 1 AND holds.ok AND cardinality($1::text[]) > 0
        RETURNING meshgate_head.last),
    notified AS (SELECT pg_notify('meshgate_events', last::text) FROM moved)
    SELECT head.last, holds.ok, (SELECT count(*) FROM notified) FROM head, holds";

/// The planned batch in one round trip (`locked`: the transaction is begun and holds the head's
/// lock already): `None` when the assumptions did not hold (nothing written). The transaction is
/// over either way.
pub(super) async fn commit(conn: &Connection, plan: Plan<'_>, locked: bool) -> Result<Option<Done>, StoreError> {
    let client = &conn.client;
    let failed = |e: tokio_postgres::Error| pg_failed("cannot append to the event log", e);
    let events = &plan.stored;
    let streams: Vec<&str> = events.iter().map(|e| e.stream.as_str()).collect();
    let versions: Vec<i64> = events.iter().map(|e| e.version as i64).collect();
    let c = Columns::of_stored(events);
    let assumed: Vec<&str> = plan.assumptions.iter().map(|a| a.stream).collect();
    let assumed_at: Vec<i64> = plan.assumptions.iter().map(|a| a.version.map_or(-1, |v| v as i64)).collect();
    let written: Vec<bool> = plan.assumptions.iter().map(|a| a.written).collect();
    let params = c.params(&[&streams, &versions], &[&assumed, &assumed_at, &written, &plan.terms]);
    let (begun, appended, committed) = tokio::join!(
        // Sent first: `BEGIN` and the lock are on their way before the statement behind them.
        async {
            if locked {
                return Ok(0);
            }
            super::whole::lock_head(conn).await
        },
        client.query_one(&conn.assumed, &params[..]),
        client.batch_execute("COMMIT"),
    );
    begun?;
    let row = match appended {
        Err(e) if is_clash_on(&e, "meshgate_events_id_key") || is_version_clash(&e) => {
            // The commit behind it ended the failed transaction (as a rollback).
            return Ok(None);
        }
        other => other.map_err(failed)?,
    };
    committed.map_err(|e| pg_failed("the commit of an append failed; it may or may not have landed", e))?;
    let (base, held): (i64, bool) = (row.get(0), row.get(1));
    if !held {
        return Ok(None);
    }
    let base = base as u64;
    let outcomes =
        plan.outcomes.into_iter().map(|outcome| outcome.map(|last| Appended { last_position: base + last })).collect();
    let stored = plan.stored.into_iter().map(|e| StoredEvent { position: base + e.position, ..e }).collect();
    Ok(Some((outcomes, stored)))
}

/// A stream as the batch assumes it stands.
struct Assumption<'a> {
    stream: &'a str,
    /// Its last version (`None`: no events).
    version: Option<u64>,
    /// Whether the batch appends to it.
    written: bool,
}

/// The batch judged in memory under its assumptions.
pub(super) struct Plan<'a> {
    /// Each request's outcome: the last position it reached, counted from the head.
    outcomes: Vec<Result<u64, StoreError>>,
    /// The events to append, at positions counted from the head (the first is 1).
    stored: Vec<StoredEvent>,
    assumptions: Vec<Assumption<'a>>,
    /// The terms the fenced requests are fenced by.
    terms: Vec<i64>,
}

impl<'a> Plan<'a> {
    /// `None` when a request expects `Any` of a stream (its version is not assumed but read).
    pub(super) fn of(batch: &Batch<'a>) -> Option<Plan<'a>> {
        let mut assumptions: Vec<Assumption<'a>> = Vec::new();
        let mut versions: HashMap<&str, u64> = HashMap::new();
        let mut named: HashSet<&str> = HashSet::new();
        for append in batch.iter().flat_map(|(appends, _)| appends.iter()) {
            let stream = append.stream.as_str();
            if !named.insert(stream) {
                continue;
            }
            let version = match append.expected {
                ExpectedVersion::Any => return None,
                ExpectedVersion::NoStream => None,
                ExpectedVersion::Exact(v) => Some(v),
            };
            if let Some(v) = version {
                versions.insert(stream, v);
            }
            assumptions.push(Assumption { stream, version, written: false });
        }
        let mut terms: Vec<i64> = batch.iter().filter_map(|(_, fence)| *fence).collect();
        terms.sort_unstable();
        terms.dedup();
        let mut last = 0;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut stored: Vec<StoredEvent> = Vec::new();
        for &(appends, _) in batch {
            match plan_request(appends, last, |stream| versions.get(stream).copied()) {
                Err(conflict) => outcomes.push(Err(conflict)),
                Ok((events, reached)) => {
                    for (stream, version) in reached {
                        // Every stream a request reaches is one the batch names.
                        if let Some(&name) = named.get(stream.as_str()) {
                            versions.insert(name, version);
                        }
                    }
                    last += events.len() as u64;
                    outcomes.push(Ok(last));
                    stored.extend(events.into_iter().map(|e| StoredEvent { recorded_at: micros(e.recorded_at), ..e }));
                }
            }
        }
        let touched: HashSet<&str> = stored.iter().map(|e| e.stream.as_str()).collect();
        for assumption in &mut assumptions {
            assumption.written = touched.contains(assumption.stream);
        }
        Some(Plan { outcomes, stored, assumptions, terms })
    }
}
