//! The read model: the projections saved in a SQLite file of their own beside the log
//! (`events.readmodel.sqlite`), disposable and rebuilt from the log whenever it is missing, of an
//! older projection version, or ahead of the log (restored from an older backup).
//!
//! A save writes the builds changed since the last one (one row each, the view as JSON, indexed by
//! state, and once finished by id, issue and number for the API: queued and running builds are
//! answered from memory), the outbox's rows changed (its entries and the
//! messages it edits, one row each), the nodes, the builds' last numbers and the pauses whole (all
//! small), the stats' days changed (a row per day) and their builds in flight changed (a row per
//! build whose attempts failed), the position and the projections' versions, in one
//! transaction: a save costs what changed since the last one, and what a save holds is always the
//! fold of the log up to its position. The queue, the outbox's triggers of builds in flight and
//! the stats' other builds in flight are not saved: a load restores them from the views of the
//! queued and running builds. Memory then lets finished builds go, and reads of them come here
//! (docs/adr/0003-projection-checkpoints.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use meshgate_projections::{
    BuildView, Nodes, Outbox, OutboxChanges, OutboxConfig, OutboxRow, ProjectionSet, Queue, Stats, StatsChanges,
};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use uuid::Uuid;

use crate::config::Config;
use crate::store::{StoreError, StoreResultExt};

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS versions (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS position (id INTEGER PRIMARY KEY CHECK (id = 1), position INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS builds (
        position INTEGER PRIMARY KEY,
        build_id BLOB NOT NULL,
        issue_id TEXT NOT NULL,
        state TEXT NOT NULL,
        view TEXT NOT NULL,
        trigger TEXT NOT NULL,
        number INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX IF NOT EXISTS builds_by_id ON builds (build_id) WHERE state NOT IN ('queued', 'running');
    CREATE INDEX IF NOT EXISTS builds_by_issue ON builds (issue_id, position) WHERE state NOT IN ('queued', 'running');
    CREATE INDEX IF NOT EXISTS builds_by_number ON builds (trigger, number) WHERE state NOT IN ('queued', 'running');
    CREATE INDEX IF NOT EXISTS builds_by_state ON builds (state, position);
    CREATE TABLE IF NOT EXISTS states (name TEXT PRIMARY KEY, state TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS stats_days (day TEXT PRIMARY KEY, state TEXT NOT NULL) WITHOUT ROWID;
    DROP TABLE IF EXISTS queue;
    CREATE TABLE IF NOT EXISTS rows (
        projection TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (projection, kind, key)
    ) WITHOUT ROWID;
";

/// This gateway's read model ([`Config::readmodel_path`]). The checkpoint file of earlier
/// versions (`events.checkpoints.sqlite`, whole states) is removed: the read model replaces it.
pub fn open_beside(config: &Config) -> Result<Arc<ReadModel>, StoreError> {
    let old = config.log_path().with_extension("checkpoints.sqlite");
    for stale in [old.clone(), old.with_extension("sqlite-wal"), old.with_extension("sqlite-shm")] {
        if stale.exists() {
            let _ = std::fs::remove_file(&stale);
        }
    }
    Ok(Arc::new(ReadModel::open(&config.readmodel_path())?))
}

/// What one save writes: the builds, outbox rows and stats changed since the last save, the
/// small projections whole (the nodes, each trigger's last build number, the pauses) and the
/// position they reach. The queue is not saved: it is the one of the builds in flight.
#[derive(Clone, Copy)]
pub struct Snapshot<'a> {
    pub views: &'a [BuildView],
    pub outbox: &'a OutboxChanges,
    pub nodes: &'a Nodes,
    pub numbers: &'a BTreeMap<String, u64>,
    pub paused: &'a meshgate_domain::pause::Paused,
    /// The stats' days changed and their flight, if it changed.
    pub stats: &'a StatsChanges,
    pub position: u64,
}

impl<'a> Snapshot<'a> {
    /// What a fold holds, with the changes `views`, `outbox` and `stats` it gave.
    pub fn of(
        set: &'a ProjectionSet,
        views: &'a [BuildView],
        outbox: &'a OutboxChanges,
        stats: &'a StatsChanges,
    ) -> Self {
        Snapshot {
            stats,
            views,
            outbox,
            nodes: &set.nodes,
            numbers: set.builds.numbers(),
            paused: &set.paused,
            position: set.position,
        }
    }
}

/// The file saves go to, and connections that read from it.
pub struct ReadModel {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

/// SQLite's memory in this process, page caches included, that it keeps itself near.
const SQLITE_HEAP_BYTES: i64 = 4 << 20;

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(5)).store_err()?;
    // Disposable: a save lost to a power cut is redone from the log, so no sync per save.
    conn.pragma_update(None, "synchronous", "NORMAL").store_err()?;
    Ok(())
}

/// The read model's tables (`PRAGMA user_version`); a file of another layout is removed when the
/// read model opens (it is derived: the projections are folded again from the log). Layout 1: a
/// build's row is keyed by its position, so a new build's row goes at the table's end. Layout 2:
/// only finished builds are indexed by id, issue and number (partial indexes, [`FINISHED`]): a
/// queued or running build is always answered from memory, and its row is read back only when the
/// read model loads (by state), so a new build costs its row and one index entry, and the other
/// three are written once, when it finishes.
pub const LAYOUT: i64 = 2;

/// The condition of the partial indexes, which a query must state as it is for SQLite to use them.
const FINISHED: &str = "state NOT IN ('queued', 'running')";

impl ReadModel {
    pub fn open(path: &Path) -> Result<ReadModel, StoreError> {
        if path.exists() {
            let layout: i64 = Connection::open(path)
                .and_then(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
                .store_err()?;
            if layout != LAYOUT {
                tracing::info!(path = %path.display(), layout, "the read model is of another layout: it is built again from the log");
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.as_os_str().to_owned();
                    file.push(suffix);
                    match std::fs::remove_file(&file) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(StoreError::caused("cannot remove a read model of another layout", e))
                        }
                        _ => {}
                    }
                }
            }
        }
        let conn = Connection::open(path).store_err()?;
        // For the whole process, every connection of the log's and the read model's: past this,
        // SQLite reuses its least recently used cached pages rather than allocating more, so a
        // burst that touched many pages does not leave them all held (docs/benchmarks.md,
        // "Memory after a burst").
        conn.pragma_update(None, "soft_heap_limit", SQLITE_HEAP_BYTES).store_err()?;
        conn.pragma_update(None, "journal_mode", "WAL").store_err()?;
        configure(&conn)?;
        conn.execute_batch(SCHEMA).store_err()?;
        conn.pragma_update(None, "user_version", LAYOUT).store_err()?;
        Ok(ReadModel { path: path.to_owned(), writer: Mutex::new(conn), readers: Mutex::default() })
    }

    /// A consistent copy of the read model at `path` written to `to` in one statement: a gateway
    /// saving meanwhile (a verify against a live gateway) changes neither half of what is read.
    pub fn copy(path: &Path, to: &Path) -> Result<(), StoreError> {
        let conn = Connection::open(path).store_err()?;
        configure(&conn)?;
        let to = to.to_str().ok_or_else(|| StoreError::failed("the copy's path is not UTF-8"))?;
        conn.execute("VACUUM INTO ?1", [to]).store_err()?;
        Ok(())
    }

    /// The saved projections, with the outbox under today's configuration; an empty set (and an
    /// emptied file) when there is nothing to start from: no save, another version of a
    /// projection, or a position past the log's `head`.
    pub fn load(&self, outbox: OutboxConfig, head: u64) -> Result<ProjectionSet, StoreError> {
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let position: Option<u64> =
            conn.query_row("SELECT position FROM position WHERE id = 1", [], |r| r.get(0)).optional().store_err()?;
        let versions = saved_versions(&conn)?;
        let current = ProjectionSet::VERSIONS.iter().all(|(name, v)| versions.iter().any(|(n, s)| n == name && s == v));
        let fresh = || ProjectionSet::new(outbox.clone());
        let Some(position) = position else { return Ok(fresh()) };
        if !current || position > head {
            tracing::warn!(
                position,
                head,
                saved = ?versions,
                now = ?ProjectionSet::VERSIONS,
                "the read model does not fit this log or this version; rebuilding it from the log"
            );
            drop(conn);
            self.clear()?;
            return Ok(fresh());
        }
        let state = |name: &str| -> Result<Option<String>, StoreError> {
            conn.query_row("SELECT state FROM states WHERE name = ?1", [name], |r| r.get(0)).optional().store_err()
        };
        let mut stmt = conn.prepare("SELECT projection, kind, key, value FROM rows").store_err()?;
        let mut rows = stmt.query([]).store_err()?;
        let (mut outbox_rows, mut flying) = (Vec::new(), Vec::new());
        while let Some(row) = rows.next().store_err()? {
            let (projection, kind, key, value): (String, String, String, String) =
                (row.get(0).store_err()?, row.get(1).store_err()?, row.get(2).store_err()?, row.get(3).store_err()?);
            match (projection.as_str(), kind.as_str()) {
                ("stats", "flying") => flying.push((parse_id(&key)?, parse("build in flight", &value)?)),
                ("outbox", kind) => outbox_rows.push(outbox_row(kind, &key, &value)?),
                _ => {
                    return Err(StoreError::failed(format!(
                        "the read model has a row of unknown kind {projection}/{kind}"
                    )))
                }
            }
        }
        drop(rows);
        drop(stmt);
        let latest = state("outbox")?.map(|t| parse("outbox", &t)).transpose()?.flatten();
        let mut stmt = conn
            .prepare("SELECT view FROM builds WHERE state IN ('queued', 'running') ORDER BY position")
            .store_err()?;
        let views = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .store_err()?
            .map(|row| parse("build", &row.store_err()?))
            .collect::<Result<Vec<BuildView>, _>>()?;
        drop(stmt);
        // The queue, the outbox's triggers of builds in flight and the stats' builds in flight
        // without failures are those of the builds restored.
        let queue = Queue::of_views(&views);
        let in_flight = views.iter().map(|v| (v.build_id, v.trigger.clone()));
        let saved_outbox = Outbox::restore(outbox_rows, latest, in_flight);
        let nodes: Nodes = state("nodes")?.map(|t| parse("nodes", &t)).transpose()?.unwrap_or_default();
        let numbers: BTreeMap<String, u64> =
            state("numbers")?.map(|t| parse("numbers", &t)).transpose()?.unwrap_or_default();
        let paused = state("paused")?.map(|t| parse("paused", &t)).transpose()?.unwrap_or_default();
        let flight = state("stats")?.map(|t| parse("stats", &t)).transpose()?.unwrap_or_default();
        let mut days = BTreeMap::new();
        let mut stmt = conn.prepare("SELECT day, state FROM stats_days").store_err()?;
        let mut rows = stmt.query([]).store_err()?;
        while let Some(row) = rows.next().store_err()? {
            let day: String = row.get(0).store_err()?;
            let day = day.parse().map_err(|e| StoreError::caused("the read model's stats day", e))?;
            days.insert(day, parse("stats day", &row.get::<_, String>(1).store_err()?)?);
        }
        drop(rows);
        drop(stmt);
        let mut set = ProjectionSet {
            stats: Stats::restore(days, flight, flying, &views),
            position,
            queue,
            nodes,
            outbox: saved_outbox.with_config(outbox),
            paused,
            ..Default::default()
        };
        set.builds.restore(views);
        set.builds.restore_numbers(numbers);
        Ok(set)
    }

    /// Empties the file (a rebuild starts from position 0).
    pub fn clear(&self) -> Result<(), StoreError> {
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute_batch(
            "DELETE FROM builds; DELETE FROM states; DELETE FROM stats_days; DELETE FROM position;
             DELETE FROM versions; DELETE FROM rows;",
        )
        .store_err()
    }

    /// Saves a snapshot in one transaction.
    pub fn save(&self, snapshot: &Snapshot<'_>) -> Result<(), StoreError> {
        let Snapshot { views, outbox, nodes, numbers, paused, stats, position } = *snapshot;
        let flight = stats.flight.as_ref().map(to_json).transpose()?;
        let latest = to_json(&outbox.latest)?;
        let (nodes, numbers, paused) = (to_json(nodes)?, to_json(numbers)?, to_json(paused)?);
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().store_err()?;
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO builds (build_id, issue_id, state, position, view, trigger, number)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (position) DO UPDATE SET state = excluded.state, view = excluded.view",
                )
                .store_err()?;
            for view in views {
                let text = serde_json::to_string(view).map_err(|e| StoreError::caused("a build's view", e))?;
                upsert
                    .execute(params![
                        view.build_id.as_bytes(),
                        view.issue_id,
                        view.state.name(),
                        view.position,
                        text,
                        view.trigger,
                        view.number
                    ])
                    .store_err()?;
            }
            let mut row = tx
                .prepare_cached("INSERT OR REPLACE INTO rows (projection, kind, key, value) VALUES (?1, ?2, ?3, ?4)")
                .store_err()?;
            let mut no_row =
                tx.prepare_cached("DELETE FROM rows WHERE projection = ?1 AND kind = ?2 AND key = ?3").store_err()?;
            let mut put = |projection: &str, kind: &str, key: &str, value: Option<String>| match value {
                Some(value) => row.execute(params![projection, kind, key, value]).map(|_| ()).store_err(),
                None => no_row.execute(params![projection, kind, key]).map(|_| ()).store_err(),
            };
            for change in &outbox.rows {
                match change {
                    OutboxRow::Entry { position, sink, entry } => {
                        put("outbox", "entry", &format!("{position}/{sink}"), entry.as_ref().map(to_json).transpose()?)?
                    }
                    OutboxRow::MessageRef { key, message } => {
                        put("outbox", "message", key, message.as_ref().map(to_json).transpose()?)?
                    }
                }
            }
            for (build_id, flying) in &stats.flying {
                put("stats", "flying", &build_id.to_string(), flying.as_ref().map(to_json).transpose()?)?;
            }
            let mut state =
                tx.prepare_cached("INSERT OR REPLACE INTO states (name, state) VALUES (?1, ?2)").store_err()?;
            state.execute(params!["outbox", latest]).store_err()?;
            state.execute(params!["nodes", nodes]).store_err()?;
            state.execute(params!["numbers", numbers]).store_err()?;
            state.execute(params!["paused", paused]).store_err()?;
            if let Some(flight) = flight {
                state.execute(params!["stats", flight]).store_err()?;
            }
            let mut day =
                tx.prepare_cached("INSERT OR REPLACE INTO stats_days (day, state) VALUES (?1, ?2)").store_err()?;
            for (date, stats) in &stats.days {
                day.execute(params![date.to_string(), to_json(stats)?]).store_err()?;
            }
            if let Some(from) = stats.keep_from {
                tx.execute("DELETE FROM stats_days WHERE day < ?1", [from.to_string()]).store_err()?;
            }
            tx.execute("INSERT OR REPLACE INTO position (id, position) VALUES (1, ?1)", [position]).store_err()?;
            let mut version =
                tx.prepare_cached("INSERT OR REPLACE INTO versions (name, version) VALUES (?1, ?2)").store_err()?;
            for (name, v) in ProjectionSet::VERSIONS {
                version.execute(params![name, v]).store_err()?;
            }
        }
        tx.commit().store_err()
    }

    /// Runs `query` on a reading connection (they are pooled).
    fn read<T>(&self, query: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .store_err()?;
                configure(&conn)?;
                conn
            }
        };
        let result = query(&conn);
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        result
    }

    /// A saved finished build (queued and running ones are in memory).
    pub fn build(&self, build_id: Uuid) -> Result<Option<BuildView>, StoreError> {
        static SQL: LazyLock<String> =
            LazyLock::new(|| format!("SELECT view FROM builds WHERE build_id = ?1 AND {FINISHED}"));
        self.read(|conn| {
            let text: Option<String> =
                conn.query_row(&SQL, [build_id.as_bytes()], |r| r.get(0)).optional().store_err()?;
            text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::caused("a build's view", e))).transpose()
        })
    }

    /// The saved finished build of `trigger` numbered `number` (queued and running ones are in
    /// memory).
    pub fn build_by_number(&self, trigger: &str, number: u64) -> Result<Option<BuildView>, StoreError> {
        static SQL: LazyLock<String> =
            LazyLock::new(|| format!("SELECT view FROM builds WHERE trigger = ?1 AND number = ?2 AND {FINISHED}"));
        // Numbers are stored as 63-bit integers: none is larger.
        let Ok(number) = i64::try_from(number) else { return Ok(None) };
        self.read(|conn| {
            let text: Option<String> =
                conn.query_row(&SQL, params![trigger, number], |r| r.get(0)).optional().store_err()?;
            text.map(|t| parse("build", &t)).transpose()
        })
    }

    /// Saved finished builds (of several ids), for events about builds memory has let go.
    pub fn builds(&self, ids: &[Uuid]) -> Result<Vec<BuildView>, StoreError> {
        let mut found = Vec::new();
        for id in ids {
            found.extend(self.build(*id)?);
        }
        Ok(found)
    }

    /// Saved finished builds of an issue and a state requested between `above` and `before`
    /// (both excluded), newest first, at most `limit` of them (queued and running ones are in
    /// memory). Each filter has its index, so a page reads what it answers, however long the
    /// history.
    pub fn page(
        &self,
        filter: (Option<&str>, Option<&str>),
        (above, before): (u64, u64),
        limit: usize,
    ) -> Result<Vec<BuildView>, StoreError> {
        let (issue, state) = filter;
        let mut sql = format!("SELECT view FROM builds WHERE position > ?1 AND position < ?2 AND {FINISHED}");
        let mut values: Vec<rusqlite::types::Value> =
            vec![(above.min(i64::MAX as u64) as i64).into(), (before.min(i64::MAX as u64) as i64).into()];
        for (column, value) in [("issue_id", issue), ("state", state)] {
            if let Some(value) = value {
                values.push(value.to_owned().into());
                sql.push_str(&format!(" AND {column} = ?{}", values.len()));
            }
        }
        values.push(i64::try_from(limit).unwrap_or(i64::MAX).into());
        sql.push_str(&format!(" ORDER BY position DESC LIMIT ?{}", values.len()));
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql).store_err()?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values), |r| r.get::<_, String>(0)).store_err()?;
            rows.map(|row| parse("build", &row.store_err()?)).collect()
        })
    }
}

/// The names (`ios-build #412`) of the builds among `ids` the read model at `path` has saved, read
/// beside a running gateway (`meshgate events`); none if there is no read model there.
pub fn saved_names(path: &Path, ids: &[Uuid]) -> Result<std::collections::HashMap<Uuid, String>, StoreError> {
    let mut names = std::collections::HashMap::new();
    if !path.exists() {
        return Ok(names);
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).store_err()?;
    configure(&conn)?;
    let sql = format!("SELECT trigger, number FROM builds WHERE build_id = ?1 AND {FINISHED}");
    let mut stmt = conn.prepare_cached(&sql).store_err()?;
    let mut in_flight = std::collections::HashSet::new();
    for id in ids {
        let found: Option<(String, u64)> =
            stmt.query_row([id.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?))).optional().store_err()?;
        match found {
            Some((trigger, number)) => {
                names.insert(*id, meshgate_projections::build_name(&trigger, number));
            }
            None => {
                in_flight.insert(*id);
            }
        }
    }
    if !in_flight.is_empty() {
        // Builds in flight are not indexed by id: one pass over them.
        let mut stmt = conn
            .prepare("SELECT build_id, trigger, number FROM builds WHERE state IN ('queued', 'running')")
            .store_err()?;
        let mut rows = stmt.query([]).store_err()?;
        while let Some(row) = rows.next().store_err()? {
            let id = Uuid::from_slice(&row.get::<_, Vec<u8>>(0).store_err()?).ok();
            if let Some(id) = id.filter(|id| in_flight.contains(id)) {
                let (trigger, number): (String, u64) = (row.get(1).store_err()?, row.get(2).store_err()?);
                names.insert(id, meshgate_projections::build_name(&trigger, number));
            }
        }
    }
    Ok(names)
}

/// The id of the build the read model at `path` saved as `trigger` #`number`, read beside a
/// running gateway (`meshgate builds rebuild ios-build#412`).
pub fn saved_build_id(path: &Path, trigger: &str, number: u64) -> Result<Option<Uuid>, StoreError> {
    let Ok(number) = i64::try_from(number) else { return Ok(None) };
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).store_err()?;
    configure(&conn)?;
    // A finished build by its index; else one in flight (not indexed by number).
    let sql = format!(
        "SELECT build_id FROM builds WHERE trigger = ?1 AND number = ?2 AND {FINISHED}
         UNION ALL SELECT build_id FROM builds WHERE state IN ('queued', 'running') AND trigger = ?1 AND number = ?2"
    );
    let id: Option<Vec<u8>> = conn.query_row(&sql, params![trigger, number], |r| r.get(0)).optional().store_err()?;
    Ok(id.and_then(|bytes| Uuid::from_slice(&bytes).ok()))
}

impl ReadModel {
    /// The position the last save reached (none: never saved).
    pub fn position(&self) -> Result<Option<u64>, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT position FROM position WHERE id = 1", [], |r| r.get(0)).optional().store_err()
        })
    }
}

/// Where two read models differ (empty: they hold the same), read side by side in position order so
/// memory stays bounded: versions, positions, each build's view, the outbox and the stats.
pub fn differences(a: &ReadModel, b: &ReadModel) -> Result<Vec<String>, StoreError> {
    let mut found = Vec::new();
    let (pa, pb) = (a.position()?, b.position()?);
    if pa != pb {
        found.push(format!("positions {pa:?} and {pb:?}"));
    }
    a.read(|ca| {
        b.read(|cb| {
            if saved_versions(ca)? != saved_versions(cb)? {
                found.push("projection versions".into());
            }
            let state = |conn: &Connection, name: &str| -> Result<Option<serde_json::Value>, StoreError> {
                let text: Option<String> = conn
                    .query_row("SELECT state FROM states WHERE name = ?1", [name], |r| r.get(0))
                    .optional()
                    .store_err()?;
                Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
            };
            let days = |conn: &Connection| -> Result<Vec<(String, serde_json::Value)>, StoreError> {
                let mut stmt = conn.prepare("SELECT day, state FROM stats_days ORDER BY day").store_err()?;
                let rows = stmt
                    .query_map([], |r| {
                        let text: String = r.get(1)?;
                        Ok((r.get(0)?, serde_json::from_str(&text).unwrap_or_default()))
                    })
                    .store_err()?
                    .collect::<Result<Vec<_>, _>>()
                    .store_err()?;
                Ok(rows)
            };
            if days(ca)? != days(cb)? {
                found.push("the stats' days".into());
            }
            type Rows = Vec<(String, String, String, serde_json::Value)>;
            let rows = |conn: &Connection| -> Result<Rows, StoreError> {
                let mut stmt = conn
                    .prepare("SELECT projection, kind, key, value FROM rows ORDER BY projection, kind, key")
                    .store_err()?;
                let rows = stmt
                    .query_map([], |r| {
                        let text: String = r.get(3)?;
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, serde_json::from_str(&text).unwrap_or_default()))
                    })
                    .store_err()?
                    .collect::<Result<Vec<_>, _>>()
                    .store_err()?;
                Ok(rows)
            };
            let (ra, rb) = (rows(ca)?, rows(cb)?);
            for projection in ["outbox", "stats"] {
                let of = |rows: &Rows| rows.iter().filter(|r| r.0 == projection).cloned().collect::<Rows>();
                if of(&ra) != of(&rb) {
                    found.push(format!("the {projection}'s rows"));
                }
            }
            for name in ["outbox", "nodes", "numbers", "paused", "stats"] {
                if state(ca, name)? != state(cb, name)? {
                    found.push(format!("the {name}"));
                }
            }
            // In the table's order (by position: no index needed, and a build's position is the
            // same in both).
            let sql = "SELECT position, build_id, view FROM builds ORDER BY position";
            let (mut sa, mut sb) = (ca.prepare(sql).store_err()?, cb.prepare(sql).store_err()?);
            let (mut ra, mut rb) = (sa.query([]).store_err()?, sb.query([]).store_err()?);
            type Saved = Option<(i64, Vec<u8>, serde_json::Value)>;
            let row = |r: Option<&rusqlite::Row<'_>>| -> Result<Saved, StoreError> {
                let Some(r) = r else { return Ok(None) };
                let text: String = r.get(2).store_err()?;
                Ok(Some((
                    r.get(0).store_err()?,
                    r.get(1).store_err()?,
                    serde_json::from_str(&text).unwrap_or_default(),
                )))
            };
            let (mut x, mut y) = (row(ra.next().store_err()?)?, row(rb.next().store_err()?)?);
            let mut builds = 0;
            while x.is_some() || y.is_some() {
                let order = match (&x, &y) {
                    (Some((pa, ..)), Some((pb, ..))) => pa.cmp(pb),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    _ => std::cmp::Ordering::Greater,
                };
                let same = order == std::cmp::Ordering::Equal && x == y;
                if !same {
                    builds += 1;
                    if builds <= 5 {
                        let id = |r: &Saved| {
                            r.as_ref().and_then(|(_, id, _)| Uuid::from_slice(id).ok()).map(|u| u.to_string())
                        };
                        found.push(format!("build {}", id(&x).or_else(|| id(&y)).unwrap_or_default()));
                    }
                }
                if order != std::cmp::Ordering::Greater {
                    x = row(ra.next().store_err()?)?;
                }
                if order != std::cmp::Ordering::Less {
                    y = row(rb.next().store_err()?)?;
                }
            }
            if builds > 5 {
                found.push(format!("{} more builds", builds - 5));
            }
            Ok(())
        })
    })?;
    Ok(found)
}

fn saved_versions(conn: &Connection) -> Result<Vec<(String, u32)>, StoreError> {
    let mut stmt = conn.prepare("SELECT name, version FROM versions ORDER BY name").store_err()?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).store_err()?;
    rows.collect::<Result<_, _>>().store_err()
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::caused(format_args!("the read model's {what}"), e))
}

fn parse_id(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|e| StoreError::caused("the read model's build id", e))
}

/// An outbox row as [`ReadModel::save`] wrote it.
fn outbox_row(kind: &str, key: &str, value: &str) -> Result<OutboxRow, StoreError> {
    Ok(match kind {
        "entry" => {
            let (position, sink) =
                key.split_once('/')
                    .and_then(|(p, sink)| Some((p.parse().ok()?, sink.to_owned())))
                    .ok_or_else(|| StoreError::failed(format!("the read model's outbox entry {key:?}")))?;
            OutboxRow::Entry { position, sink, entry: Some(parse("outbox entry", value)?) }
        }
        "message" => OutboxRow::MessageRef { key: key.to_owned(), message: Some(parse("outbox message", value)?) },
        other => return Err(StoreError::failed(format!("the read model has an outbox row of unknown kind {other}"))),
    })
}

fn to_json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::caused("a projection's state", e))
}
