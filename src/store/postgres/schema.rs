//! The log's tables in PostgreSQL, created or brought up to date when a gateway starts.
//!
//! Migrations run under a transaction-level advisory lock, so gateways starting together on one
//! database take turns; each step is recorded in `meshgate_schema` and runs once.

use tokio_postgres::Client;

use super::pg_failed;
use crate::store::StoreError;

/// The advisory lock key every gateway takes while it migrates (`"meshgate"` in ASCII).
const MIGRATION_LOCK: i64 = 0x6d65_7368_6761_7465;

/// Each step, in order; a released step is never edited, only followed by another.
/// The schema's version: how many steps it has.
pub fn version() -> usize {
    STEPS.len()
}

const STEPS: &[&str] = &[
    // 1: the log, its head and the schema's own record.
    "CREATE TABLE meshgate_events (
        position       bigint      PRIMARY KEY,
        stream         text        NOT NULL,
        version        bigint      NOT NULL,
        id             uuid        NOT NULL UNIQUE,
        type           text        NOT NULL,
        schema_version integer     NOT NULL,
        data           text        NOT NULL,
        correlation_id uuid        NOT NULL,
        causation_id   uuid,
        recorded_at    timestamptz NOT NULL,
        UNIQUE (stream, version)
    );
    CREATE TABLE meshgate_head (
        id   integer PRIMARY KEY CHECK (id = 1),
        last bigint  NOT NULL
    );
    INSERT INTO meshgate_head (id, last) VALUES (1, 0);",
    // 2: the lease of the gateway that runs the work done once (ADR 0009).
    "CREATE TABLE meshgate_leader (
        id         integer     PRIMARY KEY CHECK (id = 1),
        holder     uuid,
        term       bigint      NOT NULL,
        expires_at timestamptz NOT NULL
    );
    INSERT INTO meshgate_leader (id, holder, term, expires_at) VALUES (1, NULL, 0, 'epoch');",
];

/// Creates the tables, or applies the steps this database has not seen yet.
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(|e| pg_failed("cannot bring the event log's schema up to date", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| pg_failed("cannot bring the event log's schema up to date", e))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS meshgate_schema (step integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        .await
        .map_err(|e| pg_failed("cannot bring the event log's schema up to date", e))?;
    let done: i32 = tx
        .query_one("SELECT COALESCE(max(step), 0) FROM meshgate_schema", &[])
        .await
        .map_err(|e| pg_failed("cannot bring the event log's schema up to date", e))?
        .get(0);
    if done as usize > STEPS.len() {
        return Err(StoreError::failed(format!(
            "the database holds a log of schema step {done}, newer than this meshgate knows ({}); upgrade meshgate",
            STEPS.len()
        )));
    }
    for (i, step) in STEPS.iter().enumerate().skip(done as usize) {
        let n = i as i32 + 1;
        tx.batch_execute(step).await.map_err(|e| pg_failed(format_args!("schema step {n}"), e))?;
        tx.execute("INSERT INTO meshgate_schema (step) VALUES ($1)", &[&n])
            .await
            .map_err(|e| pg_failed("cannot bring the event log's schema up to date", e))?;
        tracing::info!(step = n, "event log schema step applied");
    }
    tx.commit().await.map_err(|e| pg_failed("cannot bring the event log's schema up to date", e))
}
