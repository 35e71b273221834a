//! The SQLite side of rollups and host metrics: the tables, the SQL
//! functions that merge sketches inside SQLite, the per-batch upserts (run
//! in the caller's transaction, so rows, dedup marks and rollups commit
//! together) and the range queries.
//!
//! Long texts (endpoints, SQL statements) are stored once in `texts` and
//! referred to by id. Sums and maxima are integer nanoseconds, so totals are
//! exact; the API converts to milliseconds.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use prost::Message;
use rusqlite::functions::{Aggregate, Context, FunctionFlags};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use sonde_core::hll::Hll;
use sonde_core::sketch::Sketch;
use sonde_proto::v1::HostMetrics;

use crate::storage::rollup::{
    BatchRollup, CountAgg, EndpointAgg, EndpointStats, ExternalAgg, ExternalStats, FxHasher,
    HostPoint, HostSeries, RollupRange, SqlStats, Step, Visitors, HOUR_MS, MINUTE_MS,
};
use crate::storage::{StoreError, TxFilter};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS texts (
    id   INTEGER PRIMARY KEY,
    text TEXT    NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS endpoint_minute (
    bucket_ms      INTEGER NOT NULL,
    app            TEXT    NOT NULL,
    endpoint_id    INTEGER NOT NULL,
    calls          INTEGER NOT NULL,
    failures       INTEGER NOT NULL,
    bad            INTEGER NOT NULL,
    sum_ns         INTEGER NOT NULL,
    max_ns         INTEGER NOT NULL,
    sql_ns         INTEGER NOT NULL,
    fetch_ns       INTEGER NOT NULL,
    external_ns    INTEGER NOT NULL,
    hist           BLOB    NOT NULL,
    sql_calls      INTEGER NOT NULL DEFAULT 0,
    external_calls INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket_ms, app, endpoint_id)
);
CREATE TABLE IF NOT EXISTS endpoint_hour (
    bucket_ms      INTEGER NOT NULL,
    app            TEXT    NOT NULL,
    endpoint_id    INTEGER NOT NULL,
    calls          INTEGER NOT NULL,
    failures       INTEGER NOT NULL,
    bad            INTEGER NOT NULL,
    sum_ns         INTEGER NOT NULL,
    max_ns         INTEGER NOT NULL,
    sql_ns         INTEGER NOT NULL,
    fetch_ns       INTEGER NOT NULL,
    external_ns    INTEGER NOT NULL,
    hist           BLOB    NOT NULL,
    sql_calls      INTEGER NOT NULL DEFAULT 0,
    external_calls INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket_ms, app, endpoint_id)
);
CREATE TABLE IF NOT EXISTS host_second (
    bucket_ms INTEGER NOT NULL,
    app       TEXT    NOT NULL,
    host      TEXT    NOT NULL,
    calls     INTEGER NOT NULL,
    failures  INTEGER NOT NULL,
    sum_ns    INTEGER NOT NULL,
    max_ns    INTEGER NOT NULL,
    PRIMARY KEY (bucket_ms, app, host)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS host_minute (
    bucket_ms INTEGER NOT NULL,
    app       TEXT    NOT NULL,
    host      TEXT    NOT NULL,
    calls     INTEGER NOT NULL,
    failures  INTEGER NOT NULL,
    sum_ns    INTEGER NOT NULL,
    max_ns    INTEGER NOT NULL,
    PRIMARY KEY (bucket_ms, app, host)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sql_minute (
    bucket_ms    INTEGER NOT NULL,
    app          TEXT    NOT NULL,
    endpoint_id  INTEGER NOT NULL,
    statement_id INTEGER NOT NULL,
    calls        INTEGER NOT NULL,
    failures     INTEGER NOT NULL,
    sum_ns       INTEGER NOT NULL,
    max_ns       INTEGER NOT NULL,
    PRIMARY KEY (bucket_ms, app, endpoint_id, statement_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sql_hour (
    bucket_ms    INTEGER NOT NULL,
    app          TEXT    NOT NULL,
    endpoint_id  INTEGER NOT NULL,
    statement_id INTEGER NOT NULL,
    calls        INTEGER NOT NULL,
    failures     INTEGER NOT NULL,
    sum_ns       INTEGER NOT NULL,
    max_ns       INTEGER NOT NULL,
    PRIMARY KEY (bucket_ms, app, endpoint_id, statement_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS external_minute (
    bucket_ms   INTEGER NOT NULL,
    app         TEXT    NOT NULL,
    endpoint_id INTEGER NOT NULL,
    url_id      INTEGER NOT NULL,
    calls       INTEGER NOT NULL,
    failures    INTEGER NOT NULL,
    sum_ns      INTEGER NOT NULL,
    max_ns      INTEGER NOT NULL,
    hist        BLOB    NOT NULL,
    PRIMARY KEY (bucket_ms, app, endpoint_id, url_id)
);
CREATE TABLE IF NOT EXISTS external_hour (
    bucket_ms   INTEGER NOT NULL,
    app         TEXT    NOT NULL,
    endpoint_id INTEGER NOT NULL,
    url_id      INTEGER NOT NULL,
    calls       INTEGER NOT NULL,
    failures    INTEGER NOT NULL,
    sum_ns      INTEGER NOT NULL,
    max_ns      INTEGER NOT NULL,
    hist        BLOB    NOT NULL,
    PRIMARY KEY (bucket_ms, app, endpoint_id, url_id)
);
CREATE TABLE IF NOT EXISTS visitors_hour (
    bucket_ms INTEGER NOT NULL,
    app       TEXT    NOT NULL,
    hll       BLOB    NOT NULL,
    PRIMARY KEY (bucket_ms, app)
);
CREATE TABLE IF NOT EXISTS host_metrics (
    ts_ms            INTEGER NOT NULL,
    host             TEXT    NOT NULL,
    cpu_percent      REAL    NOT NULL,
    load1            REAL    NOT NULL,
    mem_used_bytes   INTEGER NOT NULL,
    mem_total_bytes  INTEGER NOT NULL,
    swap_used_bytes  INTEGER NOT NULL,
    net_rx_bytes     INTEGER NOT NULL,
    net_tx_bytes     INTEGER NOT NULL,
    processes        INTEGER NOT NULL,
    db_connections   INTEGER NOT NULL,
    fpm_active       INTEGER NOT NULL,
    fpm_idle         INTEGER NOT NULL,
    fpm_listen_queue INTEGER NOT NULL,
    metrics          BLOB    NOT NULL,
    PRIMARY KEY (ts_ms, host)
);
";

/// Schema 5 → 6: SQL and external call counts per endpoint bucket.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for table in ["endpoint_minute", "endpoint_hour"] {
        for column in ["sql_calls", "external_calls"] {
            let present: bool = conn.query_row(
                &format!("SELECT count(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
                [column],
                |r| r.get(0),
            )?;
            if !present {
                conn.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0;"
                ))?;
            }
        }
    }
    Ok(())
}

const FLAGS: FunctionFlags = FunctionFlags::SQLITE_UTF8.union(FunctionFlags::SQLITE_DETERMINISTIC);

/// `sonde_sketch_merge(a, b)`: the union of two encoded [`Sketch`]es.
/// `sonde_hll_merge(a, b)`: the union of two encoded [`Hll`]s.
/// `sonde_sketch_union(x)`: aggregate union of encoded sketches.
/// A stored value that does not decode is dropped (with a warning) rather
/// than failing the batch forever: the agent would resend it endlessly.
pub fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function("sonde_sketch_merge", 2, FLAGS, |ctx| {
        let mut acc = Sketch::new();
        for i in 0..2 {
            if let Some(s) = decode_sketch(ctx, i)? {
                acc.merge(&s);
            }
        }
        Ok(acc.to_bytes())
    })?;
    conn.create_scalar_function("sonde_hll_merge", 2, FLAGS, |ctx| {
        let mut acc: Option<Hll> = None;
        for i in 0..2 {
            let Some(bytes) = ctx.get_raw(i).as_blob_or_null()? else {
                continue;
            };
            match Hll::from_bytes(bytes) {
                Ok(h) => match &mut acc {
                    None => acc = Some(h),
                    Some(a) => {
                        if let Err(error) = a.merge(&h) {
                            tracing::warn!(%error, "visitor sketch dropped");
                        }
                    }
                },
                Err(error) => tracing::warn!(%error, "stored visitor sketch dropped"),
            }
        }
        Ok(acc.unwrap_or_default().to_bytes())
    })?;
    conn.create_aggregate_function("sonde_sketch_union", 1, FLAGS, SketchUnion)
}

fn decode_sketch(ctx: &Context<'_>, i: usize) -> rusqlite::Result<Option<Sketch>> {
    let Some(bytes) = ctx.get_raw(i).as_blob_or_null()? else {
        return Ok(None);
    };
    match Sketch::from_bytes(bytes) {
        Ok(s) => Ok(Some(s)),
        Err(error) => {
            tracing::warn!(%error, "stored latency sketch dropped");
            Ok(None)
        }
    }
}

struct SketchUnion;

impl Aggregate<Sketch, Vec<u8>> for SketchUnion {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<Sketch> {
        Ok(Sketch::new())
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut Sketch) -> rusqlite::Result<()> {
        if let Some(s) = decode_sketch(ctx, 0)? {
            acc.merge(&s);
        }
        Ok(())
    }

    fn finalize(&self, _: &mut Context<'_>, acc: Option<Sketch>) -> rusqlite::Result<Vec<u8>> {
        Ok(acc.unwrap_or_default().to_bytes())
    }
}

/// Text ids: a cache of committed ids, plus those created by the
/// transaction in progress (kept apart until it commits: a rolled-back id
/// must not be reused).
pub struct Texts<'c> {
    pub committed: &'c TextMap,
    pub pending: TextMap,
}

/// Text → id. Keys come from agents, but FxHash is enough: a flood costs
/// the sender as much as it costs us (see `BatchMap`).
pub type TextMap = HashMap<String, i64, BuildHasherDefault<FxHasher>>;

/// Texts cached at most; past it the cache starts over.
pub const TEXT_CACHE_MAX: usize = 200_000;

impl Texts<'_> {
    pub fn id(&mut self, tx: &Transaction<'_>, text: &str) -> rusqlite::Result<i64> {
        if let Some(&id) = self.committed.get(text).or_else(|| self.pending.get(text)) {
            return Ok(id);
        }
        let found: Option<i64> = tx
            .prepare_cached("SELECT id FROM texts WHERE text = ?1")?
            .query_row([text], |r| r.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                tx.prepare_cached("INSERT INTO texts (text) VALUES (?1)")?
                    .execute([text])?;
                tx.last_insert_rowid()
            }
        };
        self.pending.insert(text.to_owned(), id);
        Ok(id)
    }
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Writes one batch's rollups: one upsert per bucket key.
pub fn write(
    tx: &Transaction<'_>,
    batch: &BatchRollup<'_>,
    texts: &mut Texts<'_>,
) -> rusqlite::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let coarse = batch.coarse();
    for (table, map) in [
        ("endpoint_minute", &batch.endpoint_minute),
        ("endpoint_hour", &coarse.endpoint_hour),
    ] {
        let mut up = tx.prepare_cached(&format!(
            "INSERT INTO {table} (bucket_ms, app, endpoint_id, calls, failures, bad, sum_ns,
                max_ns, sql_ns, fetch_ns, external_ns, hist, sql_calls, external_calls)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT (bucket_ms, app, endpoint_id) DO UPDATE SET
                calls = calls + excluded.calls, failures = failures + excluded.failures,
                bad = bad + excluded.bad, sum_ns = sum_ns + excluded.sum_ns,
                max_ns = max(max_ns, excluded.max_ns), sql_ns = sql_ns + excluded.sql_ns,
                fetch_ns = fetch_ns + excluded.fetch_ns,
                external_ns = external_ns + excluded.external_ns,
                hist = sonde_sketch_merge(hist, excluded.hist),
                sql_calls = sql_calls + excluded.sql_calls,
                external_calls = external_calls + excluded.external_calls"
        ))?;
        for ((t, app, endpoint), a) in map {
            let endpoint_id = texts.id(tx, endpoint)?;
            up.execute(params![
                t,
                app,
                endpoint_id,
                i(a.calls),
                i(a.failures),
                i(a.bad),
                i(a.sum_ns),
                i(a.max_ns),
                i(a.sql_ns),
                i(a.fetch_ns),
                i(a.external_ns),
                a.hist.to_bytes(),
                i(a.sql_calls),
                i(a.external_calls),
            ])?;
        }
    }
    for (table, map) in [
        ("external_minute", &batch.external_minute),
        ("external_hour", &coarse.external_hour),
    ] {
        let mut up = tx.prepare_cached(&format!(
            "INSERT INTO {table} (bucket_ms, app, endpoint_id, url_id, calls, failures, sum_ns,
                max_ns, hist)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (bucket_ms, app, endpoint_id, url_id) DO UPDATE SET
                calls = calls + excluded.calls, failures = failures + excluded.failures,
                sum_ns = sum_ns + excluded.sum_ns, max_ns = max(max_ns, excluded.max_ns),
                hist = sonde_sketch_merge(hist, excluded.hist)"
        ))?;
        for ((t, app, endpoint, url), a) in map {
            let endpoint_id = texts.id(tx, endpoint)?;
            let url_id = texts.id(tx, url)?;
            up.execute(params![
                t,
                app,
                endpoint_id,
                url_id,
                i(a.calls),
                i(a.failures),
                i(a.sum_ns),
                i(a.max_ns),
                a.hist.to_bytes(),
            ])?;
        }
    }
    for (table, map) in [
        ("host_second", &batch.host_second),
        ("host_minute", &coarse.host_minute),
    ] {
        let mut up = tx.prepare_cached(&format!(
            "INSERT INTO {table} (bucket_ms, app, host, calls, failures, sum_ns, max_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (bucket_ms, app, host) DO UPDATE SET
                calls = calls + excluded.calls, failures = failures + excluded.failures,
                sum_ns = sum_ns + excluded.sum_ns, max_ns = max(max_ns, excluded.max_ns)"
        ))?;
        for ((t, app, host), a) in map {
            up.execute(params![
                t,
                app,
                host,
                i(a.calls),
                i(a.failures),
                i(a.sum_ns),
                i(a.max_ns)
            ])?;
        }
    }
    for (table, map) in [
        ("sql_minute", &batch.sql_minute),
        ("sql_hour", &coarse.sql_hour),
    ] {
        let mut up = tx.prepare_cached(&format!(
            "INSERT INTO {table} (bucket_ms, app, endpoint_id, statement_id, calls, failures,
                sum_ns, max_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (bucket_ms, app, endpoint_id, statement_id) DO UPDATE SET
                calls = calls + excluded.calls, failures = failures + excluded.failures,
                sum_ns = sum_ns + excluded.sum_ns, max_ns = max(max_ns, excluded.max_ns)"
        ))?;
        for ((t, app, endpoint, statement), a) in map {
            let endpoint_id = texts.id(tx, endpoint)?;
            let statement_id = texts.id(tx, statement)?;
            up.execute(params![
                t,
                app,
                endpoint_id,
                statement_id,
                i(a.calls),
                i(a.failures),
                i(a.sum_ns),
                i(a.max_ns)
            ])?;
        }
    }
    let mut up = tx.prepare_cached(
        "INSERT INTO visitors_hour (bucket_ms, app, hll) VALUES (?1, ?2, ?3)
         ON CONFLICT (bucket_ms, app) DO UPDATE SET hll = sonde_hll_merge(hll, excluded.hll)",
    )?;
    for ((t, app), h) in &batch.visitors_hour {
        up.execute(params![t, app, h.to_bytes()])?;
    }
    Ok(())
}

/// `AND app = ?n` when the range has an app, with its parameter.
fn app_clause(range: &RollupRange, n: usize) -> String {
    if range.app.is_some() {
        format!(" AND app = ?{n}")
    } else {
        String::new()
    }
}

fn range_params(
    range: &RollupRange,
    mut head: Vec<rusqlite::types::Value>,
) -> Vec<rusqlite::types::Value> {
    if let Some(app) = &range.app {
        head.push(app.clone().into());
    }
    head
}

pub fn endpoints(conn: &Connection, range: &RollupRange) -> Result<Vec<EndpointStats>, StoreError> {
    let [a, b, c, d] = range.split();
    let cols = "app, endpoint_id, calls, failures, bad, sum_ns, max_ns, sql_ns, fetch_ns, \
                external_ns, hist, sql_calls, external_calls";
    let app = app_clause(range, 5);
    let sql = format!(
        "SELECT g.app, t.text, sum(calls), sum(failures), sum(bad), sum(sum_ns), max(max_ns),
                sum(sql_ns), sum(fetch_ns), sum(external_ns), sonde_sketch_union(hist),
                sum(sql_calls), sum(external_calls)
         FROM (
            SELECT {cols} FROM endpoint_minute WHERE bucket_ms >= ?1 AND bucket_ms < ?2{app}
            UNION ALL
            SELECT {cols} FROM endpoint_hour WHERE bucket_ms >= ?2 AND bucket_ms < ?3{app}
            UNION ALL
            SELECT {cols} FROM endpoint_minute WHERE bucket_ms >= ?3 AND bucket_ms < ?4{app}
         ) g JOIN texts t ON t.id = g.endpoint_id
         GROUP BY g.app, g.endpoint_id"
    );
    let args = range_params(range, vec![a.into(), b.into(), c.into(), d.into()]);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let hist: Vec<u8> = r.get(10)?;
        let agg = EndpointAgg {
            calls: u(r.get(2)?),
            failures: u(r.get(3)?),
            bad: u(r.get(4)?),
            sum_ns: u(r.get(5)?),
            max_ns: u(r.get(6)?),
            sql_ns: u(r.get(7)?),
            fetch_ns: u(r.get(8)?),
            external_ns: u(r.get(9)?),
            sql_calls: u(r.get(11)?),
            external_calls: u(r.get(12)?),
            hist: Sketch::from_bytes(&hist).unwrap_or_default(),
        };
        out.push(EndpointStats::new(r.get(0)?, r.get(1)?, &agg));
    }
    out.sort_by(|x, y| {
        y.total_ms
            .total_cmp(&x.total_ms)
            .then_with(|| (&x.app, &x.endpoint).cmp(&(&y.app, &y.endpoint)))
    });
    Ok(out)
}

pub fn sql_statements(
    conn: &Connection,
    range: &RollupRange,
    endpoint: Option<&str>,
) -> Result<Vec<SqlStats>, StoreError> {
    let [a, b, c, d] = range.split();
    let endpoint_id: Option<i64> = match endpoint {
        None => None,
        Some(e) => {
            let id = conn
                .prepare_cached("SELECT id FROM texts WHERE text = ?1")?
                .query_row([e], |r| r.get(0))
                .optional()?;
            match id {
                Some(id) => Some(id),
                None => return Ok(Vec::new()),
            }
        }
    };
    let mut filter = app_clause(range, 5);
    let mut args = range_params(range, vec![a.into(), b.into(), c.into(), d.into()]);
    if let Some(id) = endpoint_id {
        args.push(id.into());
        filter.push_str(&format!(" AND endpoint_id = ?{}", args.len()));
    }
    let cols = "statement_id, calls, failures, sum_ns, max_ns";
    let sql = format!(
        "SELECT t.text, sum(calls), sum(failures), sum(sum_ns), max(max_ns)
         FROM (
            SELECT {cols} FROM sql_minute WHERE bucket_ms >= ?1 AND bucket_ms < ?2{filter}
            UNION ALL
            SELECT {cols} FROM sql_hour WHERE bucket_ms >= ?2 AND bucket_ms < ?3{filter}
            UNION ALL
            SELECT {cols} FROM sql_minute WHERE bucket_ms >= ?3 AND bucket_ms < ?4{filter}
         ) g JOIN texts t ON t.id = g.statement_id
         GROUP BY g.statement_id"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut out = stmt
        .query_map(rusqlite::params_from_iter(args), |r| {
            let agg = CountAgg {
                calls: u(r.get(1)?),
                failures: u(r.get(2)?),
                sum_ns: u(r.get(3)?),
                max_ns: u(r.get(4)?),
            };
            Ok(SqlStats::new(r.get(0)?, &agg))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by(|x, y| {
        y.total_ms
            .total_cmp(&x.total_ms)
            .then_with(|| x.statement.cmp(&y.statement))
    });
    Ok(out)
}

pub fn externals(
    conn: &Connection,
    range: &RollupRange,
    endpoint: Option<&str>,
) -> Result<Vec<ExternalStats>, StoreError> {
    let [a, b, c, d] = range.split();
    let mut filter = app_clause(range, 5);
    let mut args = range_params(range, vec![a.into(), b.into(), c.into(), d.into()]);
    if let Some(e) = endpoint {
        let id: Option<i64> = conn
            .prepare_cached("SELECT id FROM texts WHERE text = ?1")?
            .query_row([e], |r| r.get(0))
            .optional()?;
        let Some(id) = id else {
            return Ok(Vec::new());
        };
        args.push(id.into());
        filter.push_str(&format!(" AND endpoint_id = ?{}", args.len()));
    }
    let cols = "url_id, calls, failures, sum_ns, max_ns, hist";
    let sql = format!(
        "SELECT t.text, sum(calls), sum(failures), sum(sum_ns), max(max_ns),
                sonde_sketch_union(hist)
         FROM (
            SELECT {cols} FROM external_minute WHERE bucket_ms >= ?1 AND bucket_ms < ?2{filter}
            UNION ALL
            SELECT {cols} FROM external_hour WHERE bucket_ms >= ?2 AND bucket_ms < ?3{filter}
            UNION ALL
            SELECT {cols} FROM external_minute WHERE bucket_ms >= ?3 AND bucket_ms < ?4{filter}
         ) g JOIN texts t ON t.id = g.url_id
         GROUP BY g.url_id"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut out = stmt
        .query_map(rusqlite::params_from_iter(args), |r| {
            let hist: Vec<u8> = r.get(5)?;
            let agg = ExternalAgg {
                calls: u(r.get(1)?),
                failures: u(r.get(2)?),
                sum_ns: u(r.get(3)?),
                max_ns: u(r.get(4)?),
                hist: Sketch::from_bytes(&hist).unwrap_or_default(),
            };
            Ok(ExternalStats::new(r.get(0)?, &agg))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by(|x, y| {
        y.total_ms
            .total_cmp(&x.total_ms)
            .then_with(|| x.url.cmp(&y.url))
    });
    Ok(out)
}

/// About how many transactions ended in the filter's range (of its app,
/// host and endpoint; other conditions are not counted), from the
/// per-second rollup for short ranges, else per minute (whole buckets, so
/// up to a bucket too many at each end).
pub fn estimate_calls(conn: &Connection, f: &TxFilter) -> rusqlite::Result<u64> {
    let span = f.to_ms.saturating_sub(f.from_ms);
    let (table, width) = if span <= 15 * MINUTE_MS {
        ("host_second", 1_000)
    } else {
        ("host_minute", MINUTE_MS)
    };
    let from = f.from_ms.div_euclid(width) * width;
    let by_host: i64 = conn
        .prepare_cached(&format!(
            "SELECT coalesce(sum(calls), 0) FROM {table} WHERE bucket_ms >= ?1 AND bucket_ms <= ?2
             AND (?3 IS NULL OR app = ?3) AND (?4 IS NULL OR host = ?4)"
        ))?
        .query_row(params![from, f.to_ms, f.app, f.host], |r| r.get(0))?;
    let mut n = u(by_host);
    if let Some(endpoint) = &f.endpoint {
        let from = f.from_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        let by_endpoint: i64 = conn
            .prepare_cached(
                "SELECT coalesce(sum(e.calls), 0) FROM endpoint_minute e JOIN texts t
                 ON t.id = e.endpoint_id AND t.text = ?3
                 WHERE e.bucket_ms >= ?1 AND e.bucket_ms <= ?2 AND (?4 IS NULL OR e.app = ?4)",
            )?
            .query_row(params![from, f.to_ms, endpoint, f.app], |r| r.get(0))?;
        n = n.min(u(by_endpoint));
    }
    Ok(n)
}

/// Deletes the rows of `table` whose `column` (the first of its primary
/// key) is before `before`, at most `step` of that column's span per call
/// from the oldest, so the writer is held briefly. How many went, and
/// whether nothing older than `before` is left.
pub fn delete_before(
    conn: &Connection,
    table: &str,
    column: &str,
    before: i64,
    step: i64,
) -> rusqlite::Result<(usize, bool)> {
    let oldest: Option<i64> = conn
        .prepare_cached(&format!("SELECT min({column}) FROM {table}"))?
        .query_row([], |r| r.get(0))?;
    let Some(oldest) = oldest.filter(|&o| o < before) else {
        return Ok((0, true));
    };
    let upto = oldest.saturating_add(step).min(before);
    let n = conn
        .prepare_cached(&format!("DELETE FROM {table} WHERE {column} < ?1"))?
        .execute([upto])?;
    Ok((n, upto >= before))
}

/// The number of steps of `step_ms` in `range` (the last may be partial).
pub fn step_count(range: &RollupRange, step_ms: i64) -> usize {
    let span = range.to_ms.saturating_sub(range.from_ms).max(0);
    usize::try_from((span + step_ms - 1) / step_ms).unwrap_or(0)
}

pub fn steps(
    conn: &Connection,
    range: &RollupRange,
    step_ms: i64,
    peak: bool,
) -> Result<Vec<Step>, StoreError> {
    let from = range.from_ms;
    let mut out: Vec<Step> = (0..step_count(range, step_ms))
        .map(|k| Step {
            ts_ms: from + k as i64 * step_ms,
            ..Step::default()
        })
        .collect();
    if out.is_empty() {
        return Ok(out);
    }
    let add = |out: &mut Vec<Step>, rows: &mut rusqlite::Rows<'_>| -> rusqlite::Result<()> {
        while let Some(r) = rows.next()? {
            let Some(s) = usize::try_from(r.get::<_, i64>(0)?)
                .ok()
                .and_then(|k| out.get_mut(k))
            else {
                continue;
            };
            s.calls += u(r.get(1)?);
            s.failures += u(r.get(2)?);
            s.sum_ns = s.sum_ns.saturating_add(u(r.get(3)?));
            s.max_ns = s.max_ns.max(u(r.get(4)?));
        }
        Ok(())
    };
    let app = app_clause(range, 4);
    let cols = "(bucket_ms - ?1) / ?3 AS k, sum(calls), sum(failures), sum(sum_ns), max(max_ns)";
    if step_ms % MINUTE_MS == 0 && from % MINUTE_MS != 0 {
        // Steps of whole minutes from an instant inside a minute: the
        // minutes wholly inside a step from the minute rollup, the minutes
        // a step boundary (or the range's end) cuts second by second.
        let sql = format!(
            "SELECT {cols} FROM host_minute WHERE bucket_ms >= ?1 AND bucket_ms + 60000 <= ?2
             AND (bucket_ms - ?1) / ?3 = (bucket_ms + 59999 - ?1) / ?3{app} GROUP BY k"
        );
        let args = range_params(range, vec![from.into(), range.to_ms.into(), step_ms.into()]);
        let mut stmt = conn.prepare_cached(&sql)?;
        add(&mut out, &mut stmt.query(rusqlite::params_from_iter(args))?)?;
        let mut cut: Vec<i64> = (0..out.len() as i64)
            .map(|j| (from + j * step_ms).div_euclid(MINUTE_MS) * MINUTE_MS)
            .collect();
        if range.to_ms % MINUTE_MS != 0 {
            cut.push(range.to_ms.div_euclid(MINUTE_MS) * MINUTE_MS);
        }
        cut.dedup();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {cols} FROM host_second WHERE bucket_ms >= max(?1, ?5)
             AND bucket_ms < min(?2, ?6) AND (?4 IS NULL OR app = ?4) GROUP BY k"
        ))?;
        for m in cut {
            let mut rows = stmt.query(params![
                from,
                range.to_ms,
                step_ms,
                range.app,
                m,
                m + MINUTE_MS
            ])?;
            add(&mut out, &mut rows)?;
        }
    } else {
        // The coarsest rollup whose buckets tile the steps.
        let table = if from % HOUR_MS == 0 && step_ms % HOUR_MS == 0 {
            "endpoint_hour"
        } else if from % MINUTE_MS == 0 && step_ms % MINUTE_MS == 0 {
            "host_minute"
        } else {
            "host_second"
        };
        let sql = format!(
            "SELECT {cols} FROM {table} WHERE bucket_ms >= ?1 AND bucket_ms < ?2{app} GROUP BY k"
        );
        let args = range_params(range, vec![from.into(), range.to_ms.into(), step_ms.into()]);
        let mut stmt = conn.prepare_cached(&sql)?;
        add(&mut out, &mut stmt.query(rusqlite::params_from_iter(args))?)?;
    }
    if peak {
        let sql = format!(
            "SELECT (bucket_ms - ?1) / ?3 AS k, max(c) FROM (
                SELECT bucket_ms, sum(calls) AS c FROM host_second
                WHERE bucket_ms >= ?1 AND bucket_ms < ?2{app} GROUP BY bucket_ms
             ) GROUP BY k"
        );
        let args = range_params(range, vec![from.into(), range.to_ms.into(), step_ms.into()]);
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            if let Some(s) = usize::try_from(r.get::<_, i64>(0)?)
                .ok()
                .and_then(|k| out.get_mut(k))
            {
                s.peak_tps = u(r.get(1)?);
            }
        }
    }
    Ok(out)
}

pub fn visitors(
    conn: &Connection,
    range: &RollupRange,
    step_ms: i64,
) -> Result<Visitors, StoreError> {
    let n = step_count(range, step_ms);
    let mut per_step: Vec<Option<Hll>> = vec![None; n];
    let app = app_clause(range, 3);
    let sql = format!(
        "SELECT bucket_ms, hll FROM visitors_hour WHERE bucket_ms >= ?1 AND bucket_ms < ?2{app}"
    );
    let args = range_params(range, vec![range.from_ms.into(), range.to_ms.into()]);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut total: Option<Hll> = None;
    while let Some(r) = rows.next()? {
        let t: i64 = r.get(0)?;
        let bytes: Vec<u8> = r.get(1)?;
        let Ok(h) = Hll::from_bytes(&bytes) else {
            tracing::warn!(
                bucket_ms = t,
                "stored visitor sketch does not decode; skipped"
            );
            continue;
        };
        let k = usize::try_from((t - range.from_ms) / step_ms).unwrap_or(usize::MAX);
        for slot in [per_step.get_mut(k), Some(&mut total)]
            .into_iter()
            .flatten()
        {
            match slot {
                Some(acc) => {
                    // Every stored sketch has the default precision.
                    let _ = acc.merge(&h);
                }
                None => *slot = Some(h.clone()),
            }
        }
    }
    Ok(Visitors {
        total: total.map_or(0, |h| h.count()),
        per_step: per_step
            .into_iter()
            .map(|h| h.map_or(0, |h| h.count()))
            .collect(),
    })
}

pub fn insert_host_metrics(
    tx: &Transaction<'_>,
    metrics: &[HostMetrics],
    fallback_host: &str,
) -> rusqlite::Result<u32> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO host_metrics (ts_ms, host, cpu_percent, load1, mem_used_bytes,
            mem_total_bytes, swap_used_bytes, net_rx_bytes, net_tx_bytes, processes,
            db_connections, fpm_active, fpm_idle, fpm_listen_queue, metrics)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?;
    let mut stored = 0;
    for m in metrics {
        let host = if m.hostname.is_empty() {
            fallback_host
        } else {
            &m.hostname
        };
        let pools = |f: fn(&sonde_proto::v1::FpmPoolMetrics) -> u32| -> u32 {
            m.fpm_pools.iter().map(f).fold(0u32, u32::saturating_add)
        };
        stored += insert.execute(params![
            m.ts_unix_ms,
            host,
            m.cpu_percent,
            m.load1,
            i(m.mem_used_bytes),
            i(m.mem_total_bytes),
            i(m.swap_used_bytes),
            i(m.net_rx_bytes),
            i(m.net_tx_bytes),
            m.processes,
            m.db_connections,
            pools(|p| p.active),
            pools(|p| p.idle),
            pools(|p| p.listen_queue),
            m.encode_to_vec(),
        ])? as u32;
    }
    Ok(stored)
}

pub fn host_series(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    host: Option<&str>,
    limit: usize,
) -> Result<(Vec<HostSeries>, bool), StoreError> {
    let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
    let mut stmt = conn.prepare_cached(
        "SELECT host, ts_ms, cpu_percent, load1, mem_used_bytes, mem_total_bytes,
            swap_used_bytes, net_rx_bytes, net_tx_bytes, processes, db_connections, fpm_active,
            fpm_idle, fpm_listen_queue
         FROM host_metrics WHERE ts_ms >= ?1 AND ts_ms <= ?2 AND (?3 IS NULL OR host = ?3)
         ORDER BY ts_ms DESC LIMIT ?4",
    )?;
    let mut rows = stmt.query(params![from_ms, to_ms, host, fetch])?;
    let mut by_host: std::collections::BTreeMap<String, Vec<HostPoint>> = Default::default();
    let mut n = 0usize;
    let mut truncated = false;
    while let Some(r) = rows.next()? {
        if n == limit {
            truncated = true;
            break;
        }
        n += 1;
        let point = HostPoint {
            ts_ms: r.get(1)?,
            cpu_percent: r.get(2)?,
            load1: r.get(3)?,
            mem_used_bytes: u(r.get(4)?),
            mem_total_bytes: u(r.get(5)?),
            swap_used_bytes: u(r.get(6)?),
            net_rx_bytes: u(r.get(7)?),
            net_tx_bytes: u(r.get(8)?),
            processes: r.get(9)?,
            db_connections: r.get(10)?,
            fpm_active: r.get(11)?,
            fpm_idle: r.get(12)?,
            fpm_listen_queue: r.get(13)?,
        };
        by_host.entry(r.get(0)?).or_default().push(point);
    }
    let series = by_host
        .into_iter()
        .map(|(host, mut points)| {
            points.reverse();
            HostSeries { host, points }
        })
        .collect();
    Ok((series, truncated))
}
