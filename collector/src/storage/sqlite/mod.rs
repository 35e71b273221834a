//! The embedded backend: one SQLite database (`sonde.db`) under
//! `[storage] path`, in WAL mode so API reads never wait for ingest writes.
//!
//! One writer connection (writes are serialised; a batch is one
//! transaction, committed before `insert_records` returns) and one reader
//! connection. Raw transactions live in day partitions (`partition`);
//! exactly-once storage rests on each partition's UNIQUE `(end_ms, id_hi)`
//! index and `INSERT OR IGNORE`: only records whose insert took a row are
//! folded into the rollups (`rollup`), in the same transaction — also
//! when a batch spans midnight, since every partition is in the one file.
//! `synchronous = NORMAL`: a commit survives a crash of the collector; a
//! power loss may lose the last commits, which agents then no longer hold
//! (the trade-off for not syncing every batch). Retention and the disk
//! guard: `retention`.

mod partition;
#[cfg(test)]
mod partition_tests;
mod retention;
mod rollup;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prost::Message;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use sonde_proto::v1::{AgentIdentity, HostMetrics, RequestRecord};

use self::partition::{Partitions, Put, RawWriter, TextCache};
use super::retention::{Retention, RetentionOutcome, StorageStats};
use super::rollup::{BatchRollup, SlowThresholds};
use super::{
    AgentRecord, AgentState, AlertStateRecord, DeployRecord, EndpointNaming, EndpointStats,
    EventRecord, ExternalStats, HostSeries, InsertOutcome, RollupRange, SqlStats, Step, Store,
    StoreError, StoredRule, TxDetail, TxFilter, TxId, TxPage, TxRow, Visitors,
};

/// The database file inside `[storage] path`.
pub const DB_FILE: &str = "sonde.db";

/// Bumped whenever the schema changes. 2: rollups, texts, host metrics
/// (a version-1 database gains the tables; its older rows are not rolled
/// up). 3: alert events. 4: agents keyed by identity. 5: deploy markers,
/// console alert rules, saved alert state (new tables only). 6: raw
/// transactions in day partitions with compact records (the single
/// `transactions` table is moved into them at open), external-call
/// rollups, SQL and external call counts per endpoint bucket.
const SCHEMA_VERSION: i64 = 6;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    id            TEXT    PRIMARY KEY,
    hostname      TEXT    NOT NULL,
    identity      BLOB    NOT NULL,
    state         TEXT    NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    registered_ms INTEGER NOT NULL,
    identity_key  TEXT,
    duplicate_of  TEXT,
    verified      INTEGER
);
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms     INTEGER NOT NULL,
    level     TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    state     TEXT    NOT NULL,
    message   TEXT    NOT NULL,
    app       TEXT,
    endpoint  TEXT,
    host      TEXT,
    rule      TEXT    NOT NULL,
    value     REAL    NOT NULL,
    threshold REAL    NOT NULL,
    acked_ms  INTEGER,
    acked_by  TEXT
);
CREATE INDEX IF NOT EXISTS events_ts_ms ON events (ts_ms);
CREATE TABLE IF NOT EXISTS deploys (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms       INTEGER NOT NULL,
    app         TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    description TEXT    NOT NULL,
    deployed_by TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS deploys_ts_ms ON deploys (ts_ms);
CREATE TABLE IF NOT EXISTS alert_rules (
    name       TEXT    PRIMARY KEY,
    rule       TEXT    NOT NULL,
    updated_ms INTEGER NOT NULL,
    updated_by TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_state (
    rule             TEXT    NOT NULL,
    app              TEXT,
    endpoint         TEXT,
    host             TEXT,
    phase            TEXT    NOT NULL,
    held             INTEGER NOT NULL,
    notified         INTEGER NOT NULL,
    last_notified_ms INTEGER,
    last_sample_ms   INTEGER
);
CREATE TABLE IF NOT EXISTS agent_apps (
    agent_id TEXT NOT NULL,
    app      TEXT NOT NULL,
    PRIMARY KEY (agent_id, app)
) WITHOUT ROWID;
";

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// How the store treats what arrives and how long it keeps it.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Which transactions count as bad responses (and are kept by the
    /// scatter's sampling).
    pub slow: SlowThresholds,
    /// Endpoint naming rules.
    pub naming: EndpointNaming,
    pub retention: Retention,
    /// Apply `retention` at open and then periodically on a thread of the
    /// store's own.
    pub background: bool,
}

/// The SQLite store.
pub struct SqliteStore {
    inner: Arc<Inner>,
    stop: Arc<retention::Stop>,
}

struct Inner {
    writer: Mutex<Writer>,
    reader: Mutex<Reader>,
    opts: StoreOptions,
    /// The database file and its directory.
    file: PathBuf,
    dir: PathBuf,
    counters: retention::Counters,
    /// The file uses incremental auto-vacuum (created by schema 6 or later).
    incremental: bool,
    /// The disk guard has nothing left to drop (warned once).
    guard_stuck: AtomicBool,
}

struct Writer {
    conn: Connection,
    /// Committed text ids.
    texts: rollup::TextMap,
    parts: Partitions,
}

struct Reader {
    conn: Connection,
    texts: TextCache,
}

/// A mutex whose holder panicked is still usable: an unfinished
/// transaction was rolled back when it was dropped.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn writer(&self) -> MutexGuard<'_, Writer> {
        lock(&self.writer)
    }

    fn reader(&self) -> MutexGuard<'_, Reader> {
        lock(&self.reader)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop.fire();
    }
}

/// Statements each connection keeps prepared (several per day partition).
const STATEMENT_CACHE: usize = 256;

impl SqliteStore {
    /// Opens (creating if needed) the database in directory `dir`, with
    /// default options and no background retention.
    #[cfg(test)]
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_opts(dir, StoreOptions::default())
    }

    /// Applies retention and the disk guard once, as of `now_ms` (the
    /// background thread does this every `interval_secs`).
    #[cfg(test)]
    pub fn run_retention(&self, now_ms: i64) -> Result<RetentionOutcome, StoreError> {
        self.inner.retention(now_ms)
    }

    /// Opens (creating if needed) the database in directory `dir`. A
    /// database of an older schema is brought up to date first (raw
    /// transactions of schema 5 move into day partitions, in resumable
    /// chunks).
    pub fn open_opts(dir: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|cause| StoreError::CreateDir {
            path: dir.to_owned(),
            cause,
        })?;
        let file = dir.join(DB_FILE);
        let mut writer = Connection::open(&file)?;
        writer.busy_timeout(Duration::from_secs(5))?;
        writer.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let pages: i64 = writer.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        if pages == 0 {
            // Only possible before the first table.
            writer.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
        }
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(file = %file.display(), mode, "SQLite did not switch to WAL mode");
        }
        writer.execute_batch(
            "PRAGMA synchronous = NORMAL;
             PRAGMA cache_size = -65536;
             PRAGMA temp_store = MEMORY;
             PRAGMA journal_size_limit = 67108864;",
        )?;
        let found: i64 = writer.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        writer.execute_batch(SCHEMA)?;
        migrate(&writer)?;
        writer.execute_batch(rollup::SCHEMA)?;
        rollup::migrate(&writer)?;
        writer.execute_batch(partition::SCHEMA)?;
        rollup::register_functions(&writer)?;
        let mut parts = Partitions::load(&writer)?;
        let mut texts = rollup::TextMap::default();
        let moved = partition::migrate_legacy(&mut writer, &mut parts, &mut texts, &opts.slow)?;
        if moved > 0 {
            tracing::info!(
                records = moved,
                "transactions of the single-table schema moved into day partitions"
            );
        }
        writer.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let incremental: i64 = writer.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;

        let reader = Connection::open_with_flags(
            &file,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(Duration::from_secs(5))?;
        reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        reader.execute_batch("PRAGMA cache_size = -65536; PRAGMA mmap_size = 1073741824;")?;
        rollup::register_functions(&reader)?;
        let background = opts.background;
        let interval = Duration::from_secs(opts.retention.interval_secs.max(1));
        let inner = Arc::new(Inner {
            writer: Mutex::new(Writer {
                conn: writer,
                texts,
                parts,
            }),
            reader: Mutex::new(Reader {
                conn: reader,
                texts: TextCache::default(),
            }),
            opts,
            file,
            dir: dir.to_owned(),
            counters: retention::Counters::default(),
            incremental: incremental == 2,
            guard_stuck: AtomicBool::new(false),
        });
        let stop = Arc::new(retention::Stop::default());
        if background {
            match inner.retention(crate::clock::now_ms()) {
                Ok(o) if o != RetentionOutcome::default() => {
                    tracing::info!(?o, "retention at start")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "retention at start failed"),
            }
            retention::spawn(Arc::downgrade(&inner), Arc::clone(&stop), interval);
        }
        Ok(SqliteStore { inner, stop })
    }
}

/// Brings a database made by an older collector up to `SCHEMA` (which only
/// creates what is missing).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    // Schema 3 → 4: agents keyed by instance identity, flagged duplicates
    // and the result of the identity check.
    for (column, ty) in [
        ("identity_key", "TEXT"),
        ("duplicate_of", "TEXT"),
        ("verified", "INTEGER"),
    ] {
        let present: bool = conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('agents') WHERE name = ?1",
            [column],
            |r| r.get(0),
        )?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE agents ADD COLUMN {column} {ty};"))?;
        }
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS agents_identity_key ON agents (identity_key)
            WHERE identity_key IS NOT NULL;",
    )
}

/// An `agents` row as read by [`AGENT_COLUMNS`].
struct AgentRow {
    id: String,
    identity: Vec<u8>,
    state: String,
    last_seen_ms: i64,
    registered_ms: i64,
    identity_key: Option<String>,
    duplicate_of: Option<String>,
    verified: Option<bool>,
}

fn read_agent(row: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow {
        id: row.get(0)?,
        identity: row.get(1)?,
        state: row.get(2)?,
        last_seen_ms: row.get(3)?,
        registered_ms: row.get(4)?,
        identity_key: row.get(5)?,
        duplicate_of: row.get(6)?,
        verified: row.get(7)?,
    })
}

fn agent_record(row: AgentRow, apps: Vec<String>) -> Result<AgentRecord, StoreError> {
    let AgentRow {
        id,
        identity,
        state,
        last_seen_ms,
        registered_ms,
        identity_key,
        duplicate_of,
        verified,
    } = row;
    let mut identity =
        AgentIdentity::decode(identity.as_slice()).map_err(|cause| StoreError::Corrupt {
            id: id.clone(),
            cause,
        })?;
    identity.agent_id = id;
    Ok(AgentRecord {
        identity,
        // A state written by a newer collector reads as running.
        state: AgentState::parse(&state).unwrap_or(AgentState::Running),
        last_seen_ms,
        registered_ms,
        apps,
        identity_key: identity_key.unwrap_or_default(),
        duplicate_of,
        verified,
    })
}

const AGENT_COLUMNS: &str =
    "id, identity, state, last_seen_ms, registered_ms, identity_key, duplicate_of, verified";

impl Store for SqliteStore {
    fn insert_records(
        &self,
        records: &[RequestRecord],
        fallback_host: &str,
    ) -> Result<InsertOutcome, StoreError> {
        let inner = &*self.inner;
        let (slow, naming) = (&inner.opts.slow, &inner.opts.naming);
        let mut outcome = InsertOutcome::default();
        let mut guard = inner.writer();
        let w = &mut *guard;
        let tx = w.conn.transaction()?;
        // Rows first, so that the rollups can borrow their texts.
        let rows: Vec<Option<TxRow<'_>>> = records
            .iter()
            .map(|r| TxRow::from_record(r, fallback_host, naming))
            .collect();
        let mut rollups = BatchRollup::default();
        let mut texts = rollup::Texts {
            committed: &w.texts,
            pending: rollup::TextMap::default(),
        };
        let mut raw = RawWriter::new(&tx, &w.parts);
        for (record, row) in records.iter().zip(&rows) {
            let Some(row) = row else {
                outcome.invalid += 1;
                continue;
            };
            let notable = row.error || record.wall_ns >= slow.ns_for(row.app);
            match raw.put(&mut texts, row, record, notable)? {
                Put::Stored => {
                    outcome.stored += 1;
                    rollups.add(row, record, slow, &naming.namer);
                }
                Put::Duplicate => outcome.duplicates += 1,
                Put::Expired => outcome.expired += 1,
            }
        }
        let created = raw.finish()?;
        rollup::write(&tx, &rollups, &mut texts)?;
        let pending = texts.pending;
        tx.commit()?;
        if w.texts.len() + pending.len() > rollup::TEXT_CACHE_MAX {
            w.texts.clear();
        }
        w.texts.extend(pending);
        for day in created {
            w.parts.days.insert(day, true);
        }
        if outcome.expired > 0 {
            inner
                .counters
                .records_expired
                .fetch_add(outcome.expired.into(), std::sync::atomic::Ordering::Relaxed);
        }
        Ok(outcome)
    }

    fn insert_host_metrics(
        &self,
        metrics: &[HostMetrics],
        fallback_host: &str,
    ) -> Result<u32, StoreError> {
        if metrics.is_empty() {
            return Ok(0);
        }
        let mut w = self.inner.writer();
        let tx = w.conn.transaction()?;
        let stored = rollup::insert_host_metrics(&tx, metrics, fallback_host)?;
        tx.commit()?;
        Ok(stored)
    }

    fn endpoints(&self, range: &RollupRange) -> Result<Vec<EndpointStats>, StoreError> {
        rollup::endpoints(&self.inner.reader().conn, range)
    }

    fn sql_statements(
        &self,
        range: &RollupRange,
        endpoint: Option<&str>,
    ) -> Result<Vec<SqlStats>, StoreError> {
        rollup::sql_statements(&self.inner.reader().conn, range, endpoint)
    }

    fn steps(
        &self,
        range: &RollupRange,
        step_ms: i64,
        peak: bool,
    ) -> Result<Vec<Step>, StoreError> {
        rollup::steps(&self.inner.reader().conn, range, step_ms, peak)
    }

    fn visitors(&self, range: &RollupRange, step_ms: i64) -> Result<Visitors, StoreError> {
        rollup::visitors(&self.inner.reader().conn, range, step_ms)
    }

    fn host_series(
        &self,
        from_ms: i64,
        to_ms: i64,
        host: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<HostSeries>, bool), StoreError> {
        rollup::host_series(&self.inner.reader().conn, from_ms, to_ms, host, limit)
    }

    fn externals(
        &self,
        range: &RollupRange,
        endpoint: Option<&str>,
    ) -> Result<Vec<ExternalStats>, StoreError> {
        rollup::externals(&self.inner.reader().conn, range, endpoint)
    }

    fn storage_stats(&self) -> Result<StorageStats, StoreError> {
        self.inner.stats()
    }

    fn query_transactions(&self, filter: &TxFilter) -> Result<TxPage, StoreError> {
        let mut guard = self.inner.reader();
        let r = &mut *guard;
        // One snapshot for the partition list and the tables it names, so
        // that retention dropping a day meanwhile cannot fail the query.
        let snapshot = r.conn.unchecked_transaction()?;
        let conn = &*snapshot;
        Ok(partition::list(conn, &mut r.texts, filter, || {
            rollup::estimate_calls(conn, filter)
        })?)
    }

    fn transaction(&self, record_id: &[u8]) -> Result<Option<TxDetail>, StoreError> {
        self.transaction_at(&TxId {
            end_ms: None,
            record_id: record_id.to_vec(),
        })
    }

    fn transaction_at(&self, id: &TxId) -> Result<Option<TxDetail>, StoreError> {
        let mut guard = self.inner.reader();
        let r = &mut *guard;
        let snapshot = r.conn.unchecked_transaction()?;
        partition::detail(&snapshot, &mut r.texts, id, crate::clock::now_ms())
    }

    fn transaction_urls(&self, ids: &[TxId]) -> Result<Vec<Option<String>>, StoreError> {
        let guard = self.inner.reader();
        let snapshot = guard.conn.unchecked_transaction()?;
        partition::urls(&snapshot, ids)
    }

    fn upsert_agent(
        &self,
        identity: &AgentIdentity,
        identity_key: &str,
        duplicate_of: Option<&str>,
        verified: Option<bool>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut w = self.inner.writer();
        let tx = w.conn.transaction()?;
        tx.prepare_cached(
            "INSERT INTO agents (id, hostname, identity, state, last_seen_ms, registered_ms,
                                 identity_key, duplicate_of, verified)
             VALUES (?1, ?2, ?3, 'up', ?4, ?4, ?5, ?6, ?7)
             ON CONFLICT (id) DO UPDATE SET
                hostname = excluded.hostname, identity = excluded.identity, state = 'up',
                last_seen_ms = excluded.last_seen_ms, registered_ms = excluded.registered_ms,
                identity_key = excluded.identity_key, duplicate_of = excluded.duplicate_of,
                verified = excluded.verified",
        )?
        .execute(params![
            identity.agent_id,
            identity.hostname,
            identity.encode_to_vec(),
            now_ms,
            (!identity_key.is_empty()).then_some(identity_key),
            duplicate_of,
            verified,
        ])?;
        {
            let mut add = tx.prepare_cached(
                "INSERT OR IGNORE INTO agent_apps (agent_id, app) VALUES (?1, ?2)",
            )?;
            for app in identity.apps.iter().filter(|a| !a.is_empty()) {
                add.execute(params![identity.agent_id, app])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn heartbeat(&self, agent_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let w = self.inner.writer();
        let conn = &w.conn;
        let n = conn
            .prepare_cached("UPDATE agents SET last_seen_ms = max(last_seen_ms, ?2) WHERE id = ?1")?
            .execute(params![agent_id, now_ms])?;
        Ok(n > 0)
    }

    fn set_agent_state(
        &self,
        agent_id: &str,
        state: AgentState,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let w = self.inner.writer();
        let conn = &w.conn;
        let n = conn
            .prepare_cached(
                "UPDATE agents SET state = ?2, last_seen_ms = max(last_seen_ms, ?3) WHERE id = ?1",
            )?
            .execute(params![agent_id, state.as_str(), now_ms])?;
        Ok(n > 0)
    }

    fn add_agent_apps(&self, agent_id: &str, apps: &[String]) -> Result<(), StoreError> {
        let mut w = self.inner.writer();
        let tx = w.conn.transaction()?;
        {
            let mut add = tx.prepare_cached(
                "INSERT OR IGNORE INTO agent_apps (agent_id, app) VALUES (?1, ?2)",
            )?;
            for app in apps.iter().filter(|a| !a.is_empty()) {
                add.execute(params![agent_id, app])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let r = self.inner.reader();
        let conn = &r.conn;
        let Some(row) = conn
            .prepare_cached(&format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = ?1"))?
            .query_row([agent_id], read_agent)
            .optional()?
        else {
            return Ok(None);
        };
        let apps = conn
            .prepare_cached("SELECT app FROM agent_apps WHERE agent_id = ?1 ORDER BY app")?
            .query_map([agent_id], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        agent_record(row, apps).map(Some)
    }

    fn agents_by_key(&self, identity_key: &str) -> Result<Vec<AgentRecord>, StoreError> {
        let ids: Vec<String> = {
            let r = self.inner.reader();
            let conn = &r.conn;
            let mut stmt = conn.prepare_cached(
                "SELECT id FROM agents WHERE identity_key = ?1 ORDER BY last_seen_ms DESC, id",
            )?;
            let ids = stmt
                .query_map([identity_key], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            ids
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.agent(&id)?);
        }
        Ok(out)
    }

    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let r = self.inner.reader();
        let conn = &r.conn;
        let rows = conn
            .prepare_cached(&format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY id"))?
            .query_map([], read_agent)?
            .collect::<Result<Vec<_>, _>>()?;
        let mut apps: std::collections::HashMap<String, Vec<String>> = Default::default();
        let mut stmt = conn.prepare_cached("SELECT agent_id, app FROM agent_apps ORDER BY app")?;
        for pair in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
            let (agent, app) = pair?;
            apps.entry(agent).or_default().push(app);
        }
        rows.into_iter()
            .map(|row| {
                let a = apps.remove(&row.id).unwrap_or_default();
                agent_record(row, a)
            })
            .collect()
    }

    fn insert_event(&self, e: &EventRecord) -> Result<i64, StoreError> {
        let w = self.inner.writer();
        let conn = &w.conn;
        conn.prepare_cached(
            "INSERT INTO events (ts_ms, level, kind, state, message, app, endpoint, host, rule, \
             value, threshold) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?
        .execute(params![
            e.ts_ms,
            e.level,
            e.kind,
            e.state,
            e.message,
            e.app,
            e.endpoint,
            e.host,
            e.rule,
            e.value,
            e.threshold
        ])?;
        Ok(conn.last_insert_rowid())
    }

    fn list_events(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let r = self.inner.reader();
        let conn = &r.conn;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut events = conn
            .prepare_cached(
                "SELECT id, ts_ms, level, kind, state, message, app, endpoint, host, rule, value, \
                 threshold, acked_ms, acked_by FROM events WHERE ts_ms BETWEEN ?1 AND ?2 \
                 ORDER BY ts_ms DESC, id DESC LIMIT ?3",
            )?
            .query_map(params![from_ms, to_ms, limit], |r| {
                Ok(EventRecord {
                    id: r.get(0)?,
                    ts_ms: r.get(1)?,
                    level: r.get(2)?,
                    kind: r.get(3)?,
                    state: r.get(4)?,
                    message: r.get(5)?,
                    app: r.get(6)?,
                    endpoint: r.get(7)?,
                    host: r.get(8)?,
                    rule: r.get(9)?,
                    value: r.get(10)?,
                    threshold: r.get(11)?,
                    acked_ms: r.get(12)?,
                    acked_by: r.get(13)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        events.reverse();
        Ok(events)
    }

    fn ack_event(&self, id: i64, by: &str, now_ms: i64) -> Result<bool, StoreError> {
        let w = self.inner.writer();
        let conn = &w.conn;
        let n = conn
            .prepare_cached(
                "UPDATE events SET acked_ms = coalesce(acked_ms, ?2), \
                 acked_by = coalesce(acked_by, ?3) WHERE id = ?1",
            )?
            .execute(params![id, now_ms, by])?;
        Ok(n > 0)
    }

    fn delete_events_before(&self, before_ms: i64) -> Result<u64, StoreError> {
        let w = self.inner.writer();
        let conn = &w.conn;
        let n = conn
            .prepare_cached("DELETE FROM events WHERE ts_ms < ?1")?
            .execute([before_ms])?;
        Ok(n as u64)
    }

    fn insert_deploy(&self, d: &DeployRecord) -> Result<i64, StoreError> {
        let w = self.inner.writer();
        let conn = &w.conn;
        conn.prepare_cached(
            "INSERT INTO deploys (ts_ms, app, version, description, deployed_by) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![d.ts_ms, d.app, d.version, d.description, d.user])?;
        Ok(conn.last_insert_rowid())
    }

    fn list_deploys(
        &self,
        from_ms: i64,
        to_ms: i64,
        app: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeployRecord>, StoreError> {
        let r = self.inner.reader();
        let conn = &r.conn;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut deploys = conn
            .prepare_cached(
                "SELECT id, ts_ms, app, version, description, deployed_by FROM deploys \
                 WHERE ts_ms BETWEEN ?1 AND ?2 AND (?3 IS NULL OR app = ?3) \
                 ORDER BY ts_ms DESC, id DESC LIMIT ?4",
            )?
            .query_map(params![from_ms, to_ms, app, limit], |r| {
                Ok(DeployRecord {
                    id: r.get(0)?,
                    ts_ms: r.get(1)?,
                    app: r.get(2)?,
                    version: r.get(3)?,
                    description: r.get(4)?,
                    user: r.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        deploys.reverse();
        Ok(deploys)
    }

    fn delete_deploys_before(&self, before_ms: i64) -> Result<u64, StoreError> {
        let w = self.inner.writer();
        let conn = &w.conn;
        let n = conn
            .prepare_cached("DELETE FROM deploys WHERE ts_ms < ?1")?
            .execute([before_ms])?;
        Ok(n as u64)
    }

    fn list_console_rules(&self) -> Result<Vec<StoredRule>, StoreError> {
        let r = self.inner.reader();
        let conn = &r.conn;
        let rules = conn
            .prepare_cached(
                "SELECT name, rule, updated_ms, updated_by FROM alert_rules ORDER BY name",
            )?
            .query_map([], |r| {
                Ok(StoredRule {
                    name: r.get(0)?,
                    json: r.get(1)?,
                    updated_ms: r.get(2)?,
                    updated_by: r.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rules)
    }

    fn insert_console_rule(&self, r: &StoredRule) -> Result<bool, StoreError> {
        let w = self.inner.writer();
        let conn = &w.conn;
        let n = conn
            .prepare_cached(
                "INSERT OR IGNORE INTO alert_rules (name, rule, updated_ms, updated_by) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![r.name, r.json, r.updated_ms, r.updated_by])?;
        Ok(n > 0)
    }

    fn update_console_rule(&self, r: &StoredRule) -> Result<bool, StoreError> {
        let w = self.inner.writer();
        let conn = &w.conn;
        let n = conn
            .prepare_cached(
                "UPDATE alert_rules SET rule = ?2, updated_ms = ?3, updated_by = ?4 \
                 WHERE name = ?1",
            )?
            .execute(params![r.name, r.json, r.updated_ms, r.updated_by])?;
        Ok(n > 0)
    }

    fn delete_console_rule(&self, name: &str) -> Result<bool, StoreError> {
        let w = self.inner.writer();
        let conn = &w.conn;
        let n = conn
            .prepare_cached("DELETE FROM alert_rules WHERE name = ?1")?
            .execute([name])?;
        Ok(n > 0)
    }

    fn load_alert_state(&self) -> Result<Vec<AlertStateRecord>, StoreError> {
        let r = self.inner.reader();
        let conn = &r.conn;
        let states = conn
            .prepare_cached(
                "SELECT rule, app, endpoint, host, phase, held, notified, last_notified_ms, \
                 last_sample_ms FROM alert_state",
            )?
            .query_map([], |r| {
                Ok(AlertStateRecord {
                    rule: r.get(0)?,
                    app: r.get(1)?,
                    endpoint: r.get(2)?,
                    host: r.get(3)?,
                    phase: r.get(4)?,
                    held: r.get(5)?,
                    notified: r.get(6)?,
                    last_notified_ms: r.get(7)?,
                    last_sample_ms: r.get(8)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(states)
    }

    fn save_alert_state(&self, states: &[AlertStateRecord]) -> Result<(), StoreError> {
        let mut w = self.inner.writer();
        let tx = w.conn.transaction()?;
        tx.execute("DELETE FROM alert_state", [])?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO alert_state (rule, app, endpoint, host, phase, held, notified, \
                 last_notified_ms, last_sample_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for s in states {
                insert.execute(params![
                    s.rule,
                    s.app,
                    s.endpoint,
                    s.host,
                    s.phase,
                    s.held,
                    s.notified,
                    s.last_notified_ms,
                    s.last_sample_ms
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn calls_by_app_host(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, String, u64)>, StoreError> {
        let r = self.inner.reader();
        let conn = &r.conn;
        let rows = conn
            .prepare_cached(
                "SELECT app, host, sum(calls) FROM host_second \
                 WHERE bucket_ms >= ?1 AND bucket_ms < ?2 GROUP BY app, host",
            )?
            .query_map(params![from_ms, to_ms], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Taking the writer lock waits for a write in progress; the
        // checkpoint moves the WAL into the main file.
        let w = self.inner.writer();
        let conn = &w.conn;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::partition_tests::all;
    use super::*;
    use crate::storage::tests::record;
    use sonde_proto::v1::{ErrorInfo, TraceContext, Versions};

    fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("nested/dir")).unwrap();
        (dir, store)
    }

    #[test]
    fn insert_then_duplicates() {
        let (_dir, s) = open();
        let batch = vec![record(1, 1000, 10), record(2, 2000, 20)];
        let o = s.insert_records(&batch, "web-1").unwrap();
        assert_eq!(
            o,
            InsertOutcome {
                stored: 2,
                duplicates: 0,
                invalid: 0,
                expired: 0
            }
        );
        let o = s.insert_records(&batch, "web-1").unwrap();
        assert_eq!((o.stored, o.duplicates), (0, 2));
        // A re-batched replay: one old, one new, one repeated inside the batch.
        let mut bad = record(9, 1, 1);
        bad.id.clear();
        let o = s
            .insert_records(
                &[
                    record(2, 2000, 20),
                    record(3, 3000, 30),
                    record(3, 3000, 30),
                    bad,
                ],
                "web-1",
            )
            .unwrap();
        assert_eq!(
            o,
            InsertOutcome {
                stored: 1,
                duplicates: 2,
                invalid: 1,
                expired: 0
            }
        );
        let page = s.query_transactions(&all(0, i64::MAX, 100)).unwrap();
        let ids: Vec<_> = page.transactions.iter().map(|t| &t.id[12..14]).collect();
        assert_eq!(ids, ["01", "02", "03"]);
        assert!(!page.truncated);
        let t = &page.transactions[0];
        assert_eq!((t.ts_ms, t.elapsed_ms), (1000, 10.0));
        assert_eq!(
            (t.host.as_str(), t.endpoint.as_str()),
            ("web-1", "/users/{num}")
        );
        assert_eq!((t.app.as_str(), t.status, t.error), ("shop", 200, false));
        assert_eq!(t.trace_id, None);
    }

    #[test]
    fn filters() {
        let (_dir, s) = open();
        let mut recs: Vec<_> = (1..=10u8)
            .map(|i| record(i, i as i64 * 1000, i as u64))
            .collect();
        recs[1].app = "blog".into();
        recs[2].host = "web-2".into();
        recs[3].status = 500;
        recs[4].error = Some(ErrorInfo {
            fatal: true,
            ..Default::default()
        });
        recs[5].endpoint = "/checkout".into();
        recs[6].trace = Some(TraceContext {
            trace_id: vec![0xee; 16],
            ..Default::default()
        });
        s.insert_records(&recs, "web-1").unwrap();
        let q = |f: TxFilter| -> Vec<u8> {
            s.query_transactions(&f)
                .unwrap()
                .transactions
                .iter()
                .map(|t| u8::from_str_radix(&t.id[12..14], 16).unwrap())
                .collect()
        };
        assert_eq!(
            q(TxFilter {
                from_ms: 3000,
                to_ms: 5000,
                ..all(0, i64::MAX, 100)
            }),
            [3, 4, 5]
        );
        assert_eq!(
            q(TxFilter {
                app: Some("blog".into()),
                ..all(0, i64::MAX, 100)
            }),
            [2]
        );
        assert_eq!(
            q(TxFilter {
                host: Some("web-2".into()),
                ..all(0, i64::MAX, 100)
            }),
            [3]
        );
        assert_eq!(
            q(TxFilter {
                errors_only: true,
                ..all(0, i64::MAX, 100)
            }),
            [4, 5]
        );
        assert_eq!(
            q(TxFilter {
                endpoint: Some("/checkout".into()),
                ..all(0, i64::MAX, 100)
            }),
            [6]
        );
        assert_eq!(
            q(TxFilter {
                trace_id: Some(vec![0xee; 16]),
                ..all(0, i64::MAX, 100)
            }),
            [7]
        );
        assert_eq!(
            q(TxFilter {
                min_ms: Some(8.0),
                max_ms: Some(9.0),
                ..all(0, i64::MAX, 100)
            }),
            [8, 9]
        );
        // Past the cap: every failed one (4, 5) kept, the rest sampled
        // evenly over the range, oldest first.
        let page = s.query_transactions(&all(0, i64::MAX, 4)).unwrap();
        assert!(page.truncated && page.sampled, "{page:?}");
        let ts: Vec<_> = page.transactions.iter().map(|t| t.ts_ms).collect();
        assert_eq!(ts.len(), 4, "{ts:?}");
        assert!(ts.contains(&4000) && ts.contains(&5000), "{ts:?}");
        assert!(ts.windows(2).all(|w| w[0] <= w[1]));
        let all10 = s.query_transactions(&all(0, i64::MAX, 10)).unwrap();
        assert!(!all10.truncated && !all10.sampled);
    }

    #[test]
    fn detail_round_trip() {
        let (_dir, s) = open();
        let mut r = record(5, 5000, 50);
        r.cpu_user_ns = 1_000_000;
        s.insert_records(&[r], "web-9").unwrap();
        let at = |end_ms, id| TxId {
            end_ms: Some(end_ms),
            record_id: vec![id; 16],
        };
        let d = s.transaction_at(&at(5000, 5)).unwrap().unwrap();
        assert_eq!(d.id, TxId::format(5000, &[5; 16]));
        assert_eq!(
            (d.host.as_str(), d.endpoint.as_str()),
            ("web-9", "/users/{num}")
        );
        assert_eq!((d.ts_ms, d.elapsed_ms, d.cpu_ms), (5000, 50.0, 1.0));
        assert!(s.transaction_at(&at(5000, 6)).unwrap().is_none());
        assert!(s.transaction_at(&at(5001, 5)).unwrap().is_none());
        // A bare record id is looked for among recent transactions only.
        assert!(s.transaction(&[5; 16]).unwrap().is_none());
    }

    #[test]
    fn agents() {
        let (_dir, s) = open();
        let id = AgentIdentity {
            agent_id: "i-0abc".into(),
            hostname: "web-1".into(),
            instance_id: "i-0abc".into(),
            group: "asg-web".into(),
            apps: vec!["shop".into()],
            versions: Some(Versions {
                agent: "0.1.0".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        s.upsert_agent(&id, "aws:i-0abc", None, Some(true), 1000)
            .unwrap();
        assert!(s.heartbeat("i-0abc", 2000).unwrap());
        assert!(!s.heartbeat("nobody", 2000).unwrap());
        s.add_agent_apps("i-0abc", &["blog".into(), "shop".into()])
            .unwrap();
        let a = s.agent("i-0abc").unwrap().unwrap();
        assert_eq!(a.identity, id);
        assert_eq!(
            (a.state, a.last_seen_ms, a.registered_ms),
            (AgentState::Running, 2000, 1000)
        );
        assert_eq!(a.apps, ["blog", "shop"]);

        assert!(s
            .set_agent_state("i-0abc", AgentState::Terminated, 3000)
            .unwrap());
        let list = s.list_agents().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].state, AgentState::Terminated);
        assert_eq!(list[0].apps, ["blog", "shop"]);
        // Re-registering after a restart is the same agent, running again.
        s.upsert_agent(&id, "aws:i-0abc", None, None, 4000).unwrap();
        let a = s.agent("i-0abc").unwrap().unwrap();
        assert_eq!((a.state, a.last_seen_ms), (AgentState::Running, 4000));
        assert!(s.agent("nobody").unwrap().is_none());
        s.flush().unwrap();
    }

    #[test]
    fn events_round_trip() {
        let (_dir, s) = open();
        let e = |ts, state: &str| EventRecord {
            id: 0,
            ts_ms: ts,
            level: "critical".into(),
            kind: "error_rate".into(),
            state: state.into(),
            message: "m".into(),
            app: Some("shop".into()),
            endpoint: None,
            host: None,
            rule: "r".into(),
            value: 12.5,
            threshold: 5.0,
            acked_ms: None,
            acked_by: None,
        };
        let a = s.insert_event(&e(1000, "firing")).unwrap();
        let b = s.insert_event(&e(2000, "resolved")).unwrap();
        assert!(b > a);
        let all = s.list_events(0, 5000, 100).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].id, all[0].state.as_str()), (a, "firing"));
        assert_eq!(all[1].value, 12.5);
        assert_eq!(s.list_events(1500, 5000, 100).unwrap().len(), 1);
        let last = s.list_events(0, 5000, 1).unwrap();
        assert_eq!(last[0].id, b, "the limit keeps the most recent");
        assert!(s.ack_event(a, "admin", 3000).unwrap());
        assert!(s.ack_event(a, "other", 4000).unwrap());
        assert!(!s.ack_event(999, "admin", 3000).unwrap());
        let all = s.list_events(0, 5000, 100).unwrap();
        assert_eq!(
            (all[0].acked_ms, all[0].acked_by.as_deref()),
            (Some(3000), Some("admin"))
        );
        assert_eq!(all[1].acked_ms, None);
    }

    #[test]
    fn alerting_tables() {
        let (_dir, s) = open();
        // Deploy markers: range, app filter, limit keeps the most recent.
        let d = |ts, app: &str, v: &str| DeployRecord {
            id: 0,
            ts_ms: ts,
            app: app.into(),
            version: v.into(),
            description: "d".into(),
            user: "ci".into(),
        };
        let a = s.insert_deploy(&d(1000, "shop", "v1")).unwrap();
        s.insert_deploy(&d(2000, "blog", "v7")).unwrap();
        s.insert_deploy(&d(3000, "shop", "v2")).unwrap();
        let all = s.list_deploys(0, 5000, None, 100).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!((all[0].id, all[0].user.as_str()), (a, "ci"));
        let shop: Vec<String> = s
            .list_deploys(0, 5000, Some("shop"), 100)
            .unwrap()
            .into_iter()
            .map(|d| d.version)
            .collect();
        assert_eq!(shop, ["v1", "v2"]);
        assert_eq!(
            s.list_deploys(0, 5000, Some("shop"), 1).unwrap()[0].version,
            "v2"
        );
        assert_eq!(s.list_deploys(1500, 2500, None, 100).unwrap().len(), 1);
        assert_eq!(s.delete_deploys_before(2500).unwrap(), 2);
        assert_eq!(s.list_deploys(0, 5000, None, 100).unwrap().len(), 1);

        // Console rules.
        let r = |name: &str, json: &str| StoredRule {
            name: name.into(),
            json: json.into(),
            updated_ms: 1,
            updated_by: "admin".into(),
        };
        assert!(s.insert_console_rule(&r("b", "{}")).unwrap());
        assert!(s.insert_console_rule(&r("a", "{}")).unwrap());
        assert!(!s.insert_console_rule(&r("a", "{\"x\":1}")).unwrap());
        assert!(s.update_console_rule(&r("a", "{\"y\":2}")).unwrap());
        assert!(!s.update_console_rule(&r("zz", "{}")).unwrap());
        let rules = s.list_console_rules().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            (rules[0].name.as_str(), rules[0].json.as_str()),
            ("a", "{\"y\":2}")
        );
        assert!(s.delete_console_rule("a").unwrap());
        assert!(!s.delete_console_rule("a").unwrap());

        // Alert state is replaced as a whole.
        let st = |rule: &str, app: Option<&str>| AlertStateRecord {
            rule: rule.into(),
            app: app.map(Into::into),
            endpoint: None,
            host: Some("web-1".into()),
            phase: "firing".into(),
            held: 2,
            notified: true,
            last_notified_ms: Some(9),
            last_sample_ms: None,
        };
        s.save_alert_state(&[st("r1", Some("shop")), st("r2", None)])
            .unwrap();
        assert_eq!(s.load_alert_state().unwrap().len(), 2);
        s.save_alert_state(&[st("r3", None)]).unwrap();
        assert_eq!(s.load_alert_state().unwrap(), [st("r3", None)]);

        // Events retention.
        let e = |ts| EventRecord {
            ts_ms: ts,
            level: "warning".into(),
            kind: "k".into(),
            state: "firing".into(),
            rule: "r".into(),
            ..Default::default()
        };
        s.insert_event(&e(100)).unwrap();
        s.insert_event(&e(200)).unwrap();
        assert_eq!(s.delete_events_before(150).unwrap(), 1);
        assert_eq!(s.list_events(0, 1000, 10).unwrap().len(), 1);
    }

    #[test]
    fn calls_per_second_rollup_for_baselines() {
        let (_dir, s) = open();
        let mut recs = vec![
            record(1, 10_100, 5),
            record(2, 10_900, 5),
            record(3, 11_500, 5),
        ];
        recs[2].host = "web-2".into();
        s.insert_records(&recs, "web-1").unwrap();
        let mut rows = s.calls_by_app_host(10_000, 12_000).unwrap();
        rows.sort();
        assert_eq!(
            rows,
            [
                ("shop".into(), "web-1".into(), 2),
                ("shop".into(), "web-2".into(), 1)
            ]
        );
        assert_eq!(s.calls_by_app_host(10_000, 11_000).unwrap().len(), 1);
        assert!(s.calls_by_app_host(20_000, 30_000).unwrap().is_empty());
    }

    #[test]
    fn reopen_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SqliteStore::open(dir.path()).unwrap();
            s.insert_records(&[record(1, 1, 1)], "h").unwrap();
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        let o = s.insert_records(&[record(1, 1, 1)], "h").unwrap();
        assert_eq!(o.duplicates, 1);
    }
}
