//! Raw transactions, partitioned by UTC day of their end time: per day a
//! summary table `tx_YYYYMMDD` (what the X-View lists, rowid = arrival
//! order) and a detail table `blk_YYYYMMDD` holding the compact records
//! (see `storage::codec`) in zstd-compressed blocks of up to
//! [`BLOCK_RECORDS`] consecutive rowids, keyed by the first one: ids, times
//! and statement ids repeat from record to record, so a block takes about
//! 40 % of its records' bytes. A detail lookup reads and unpacks one block
//! (≈ 50 KB, tens of µs). Days written before blocks keep their
//! `rec_YYYYMMDD` table (one compact record per rowid) and are read and
//! appended to as they are. Retention drops whole tables; all of them live
//! in the one database file, so a batch that spans midnight still commits
//! its rows in both days, their dedup marks and the rollups in one SQLite
//! transaction.
//!
//! Indexes are kept off random keys (a random-key B-tree costs a page write
//! per insert once it outgrows the cache): the dedup mark is the UNIQUE
//! index on `(end_ms, id_hi)` — time first, so inserts land near "now" —
//! which is also the time index. A record always falls in the same day and
//! time, so a replay meets its earlier copy there: exactly-once holds
//! across partitions. The API's transaction id carries the end time for
//! the same reason (`storage::TxId`). A partial index on `end_ms` holds the
//! failed and slow transactions only, which the scatter keeps when it
//! samples. Transactions sharing a trace id are found by time window.
//!
//! The request URL lives in the compact record, not the summary row (the
//! X-View list does not show it; older rows still hold it there).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use prost::Message;
use rusqlite::types::Value;
use rusqlite::{params, CachedStatement, Connection, OptionalExtension, Transaction};
use sonde_core::hll::hash64;
use sonde_core::ids::to_hex;
use sonde_proto::v1::RequestRecord;

use super::rollup::{TextMap, Texts};
use crate::storage::codec::{self, CodecError, Columns};
use crate::storage::retention::{civil, day_of};
use crate::storage::{StoreError, TxDetail, TxFilter, TxId, TxPage, TxRow, TxSummary};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS partitions (
    day   INTEGER PRIMARY KEY,
    spans INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// `meta` key: records ending before this day are expired (dropped by
/// retention or the disk guard) and not stored again.
pub const FLOOR_KEY: &str = "raw_floor_day";

pub fn tx_table(day: i64) -> String {
    format!("tx_{}", civil(day))
}

/// The per-record detail table of days written before blocks.
pub fn rec_table(day: i64) -> String {
    format!("rec_{}", civil(day))
}

/// The block detail table.
pub fn blk_table(day: i64) -> String {
    format!("blk_{}", civil(day))
}

/// Records per detail block at most (and [`BLOCK_BYTES`] before
/// compression): bigger blocks compress a little better and make a detail
/// lookup unpack more.
pub const BLOCK_RECORDS: usize = 256;
const BLOCK_BYTES: usize = 256 * 1024;
/// zstd level of the blocks: level 3 and 5 save 1–2 % more for twice the
/// CPU.
const BLOCK_LEVEL: i32 = 1;

/// Whether the day's detail is in a `rec_` table (written before blocks).
pub fn legacy_detail(conn: &Connection, day: i64) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
    )?
    .query_row([rec_table(day)], |r| r.get(0))
}

fn create_sql(day: i64) -> String {
    let (t, b) = (tx_table(day), blk_table(day));
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (
            seq      INTEGER PRIMARY KEY,
            end_ms   INTEGER NOT NULL,
            id_hi    INTEGER NOT NULL,
            id_rest  BLOB    NOT NULL,
            full_id  INTEGER NOT NULL,
            wall_ns  INTEGER NOT NULL,
            app      INTEGER NOT NULL,
            host     INTEGER NOT NULL,
            endpoint INTEGER NOT NULL,
            method   INTEGER NOT NULL,
            url      TEXT    NOT NULL,
            status   INTEGER NOT NULL,
            error    INTEGER NOT NULL,
            notable  INTEGER NOT NULL,
            trace_id BLOB
        );
        CREATE UNIQUE INDEX IF NOT EXISTS {t}_key ON {t} (end_ms, id_hi);
        CREATE INDEX IF NOT EXISTS {t}_notable ON {t} (end_ms, id_hi) WHERE notable = 1;
        CREATE TABLE IF NOT EXISTS {b} (
            seq    INTEGER PRIMARY KEY,
            last   INTEGER NOT NULL,
            block  BLOB    NOT NULL
        );
        INSERT OR IGNORE INTO partitions (day, spans) VALUES ({day}, 1);"
    )
}

/// The partitions as committed: day → whether its span detail is kept.
#[derive(Debug, Clone, Default)]
pub struct Partitions {
    pub days: BTreeMap<i64, bool>,
    /// Records ending before this day are expired.
    pub floor: i64,
}

impl Partitions {
    pub fn load(conn: &Connection) -> rusqlite::Result<Self> {
        let days = conn
            .prepare("SELECT day, spans FROM partitions")?
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, bool>(1)?)))?
            .collect::<Result<_, _>>()?;
        let floor = conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [FLOOR_KEY], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(i64::MIN);
        Ok(Partitions { days, floor })
    }
}

/// What [`put`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Stored,
    Duplicate,
    Expired,
}

/// The first 8 bytes of a 16-byte record id as the key (ids are random),
/// the other 8 as the rest; any other id is keyed by its hash and kept
/// whole (`full`).
fn split_id(id: &[u8]) -> (i64, &[u8], bool) {
    match <[u8; 8]>::try_from(&id[..8.min(id.len())]) {
        Ok(hi) if id.len() == 16 => (i64::from_be_bytes(hi), &id[8..], false),
        _ => (hash64(id) as i64, id, true),
    }
}

fn join_id(hi: i64, rest: &[u8], full: bool) -> Vec<u8> {
    if full {
        return rest.to_vec();
    }
    let mut id = hi.to_be_bytes().to_vec();
    id.extend_from_slice(rest);
    id
}

/// Writes one batch's raw records: the committed partitions plus those
/// this transaction created (kept apart until it commits), with each
/// day's statements prepared once per batch. [`RawWriter::finish`] writes
/// the last blocks; call it before committing.
pub struct RawWriter<'t> {
    tx: &'t Transaction<'t>,
    parts: &'t Partitions,
    pub created: Vec<i64>,
    days: Vec<DayStatements<'t>>,
    blob: Vec<u8>,
    packed: Vec<u8>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

struct DayStatements<'t> {
    day: i64,
    insert: CachedStatement<'t>,
    detail: Detail<'t>,
}

enum Detail<'t> {
    /// The day's span detail was dropped.
    None,
    /// A day written before blocks: one row per record.
    Rows(CachedStatement<'t>),
    Blocks {
        insert: CachedStatement<'t>,
        block: Block,
    },
}

/// A detail block being filled: `(varint seq − first, varint len, blob)*`.
#[derive(Default)]
struct Block {
    first: i64,
    last: i64,
    count: usize,
    bytes: Vec<u8>,
}

impl Block {
    fn push(&mut self, seq: i64, blob: &[u8]) {
        if self.count == 0 {
            self.first = seq;
            self.bytes.clear();
        }
        codec::put_varint(&mut self.bytes, (seq - self.first) as u64);
        codec::put_varint(&mut self.bytes, blob.len() as u64);
        self.bytes.extend_from_slice(blob);
        self.last = seq;
        self.count += 1;
    }

    fn full(&self) -> bool {
        self.count >= BLOCK_RECORDS || self.bytes.len() >= BLOCK_BYTES
    }
}

/// The record `seq` from an unpacked block whose first rowid is `first`.
fn find_in_block(bytes: &[u8], first: i64, seq: i64) -> Option<&[u8]> {
    let mut r = codec::Reader::new(bytes);
    while !r.is_empty() {
        let at = first + r.varint().ok()? as i64;
        let blob = r.bytes().ok()?;
        if at == seq {
            return Some(blob);
        }
    }
    None
}

fn pack_error(e: std::io::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

impl<'t> RawWriter<'t> {
    pub fn new(tx: &'t Transaction<'t>, parts: &'t Partitions) -> Self {
        RawWriter {
            tx,
            parts,
            created: Vec::new(),
            days: Vec::new(),
            blob: Vec::new(),
            packed: Vec::new(),
            zstd: None,
        }
    }

    /// The day's statements (creating its tables first if needed).
    fn day(&mut self, day: i64) -> rusqlite::Result<usize> {
        if let Some(i) = self.days.iter().position(|d| d.day == day) {
            return Ok(i);
        }
        let spans = match self.parts.days.get(&day) {
            Some(&spans) => spans,
            None => {
                if !self.created.contains(&day) {
                    self.tx.execute_batch(&create_sql(day))?;
                    self.created.push(day);
                }
                true
            }
        };
        let t = tx_table(day);
        let insert = self.tx.prepare_cached(&format!(
            "INSERT OR IGNORE INTO {t} (end_ms, id_hi, id_rest, full_id, wall_ns, app, host,
                endpoint, method, url, status, error, notable, trace_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, '', ?10, ?11, ?12, ?13)"
        ))?;
        let detail = if !spans {
            Detail::None
        } else if legacy_detail(self.tx, day)? {
            Detail::Rows(self.tx.prepare_cached(&format!(
                "INSERT INTO {} (seq, record) VALUES (?1, ?2)",
                rec_table(day)
            ))?)
        } else {
            Detail::Blocks {
                insert: self.tx.prepare_cached(&format!(
                    "INSERT INTO {} (seq, last, block) VALUES (?1, ?2, ?3)",
                    blk_table(day)
                ))?,
                block: Block::default(),
            }
        };
        self.days.push(DayStatements {
            day,
            insert,
            detail,
        });
        Ok(self.days.len() - 1)
    }

    /// Stores one record's summary and detail in its day's partition
    /// unless it is there already (or its day is gone). `notable`: failed
    /// or slow.
    pub fn put(
        &mut self,
        texts: &mut Texts<'_>,
        row: &TxRow<'_>,
        record: &RequestRecord,
        notable: bool,
    ) -> rusqlite::Result<Put> {
        let day = day_of(row.end_ms);
        if day < self.parts.floor {
            return Ok(Put::Expired);
        }
        let i = self.day(day)?;
        let tx = self.tx;
        let (hi, rest, full) = split_id(row.id);
        let app = texts.id(tx, row.app)?;
        let host = texts.id(tx, row.host)?;
        let endpoint = texts.id(tx, &row.endpoint)?;
        let method = texts.id(tx, row.method)?;
        let d = &mut self.days[i];
        let n = d.insert.execute(params![
            row.end_ms,
            hi,
            rest,
            full,
            i64::try_from(record.wall_ns).unwrap_or(i64::MAX),
            app,
            host,
            endpoint,
            method,
            row.status,
            row.error,
            notable,
            row.trace_id,
        ])?;
        if n == 0 {
            // The same (time, key): the same record, but for a 64-bit key
            // collision within one millisecond (not expected in the
            // lifetime of a collector); say so rather than hide it.
            let stored: Option<(Vec<u8>, bool)> = tx
                .prepare_cached(&format!(
                    "SELECT id_rest, full_id FROM {} WHERE end_ms = ?1 AND id_hi = ?2",
                    tx_table(day)
                ))?
                .query_row(params![row.end_ms, hi], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((r, f)) = stored {
                if join_id(hi, &r, f) != row.id {
                    tracing::warn!(
                        id = %to_hex(row.id),
                        end_ms = row.end_ms,
                        "record id collides with another stored in the same millisecond; not stored"
                    );
                }
            }
            return Ok(Put::Duplicate);
        }
        if matches!(d.detail, Detail::None) {
            return Ok(Put::Stored);
        }
        let seq = tx.last_insert_rowid();
        self.blob.clear();
        codec::encode(record, row.end_ms, &mut |s| texts.id(tx, s), &mut self.blob)?;
        let d = &mut self.days[i];
        match &mut d.detail {
            Detail::None => {}
            Detail::Rows(insert) => {
                insert.execute(params![seq, &self.blob[..]])?;
            }
            Detail::Blocks { insert, block } => {
                block.push(seq, &self.blob);
                if block.full() {
                    write_block(insert, block, &mut self.zstd, &mut self.packed)?;
                }
            }
        }
        Ok(Put::Stored)
    }

    /// Writes the blocks still open; returns the days this batch created.
    pub fn finish(mut self) -> rusqlite::Result<Vec<i64>> {
        for d in &mut self.days {
            if let Detail::Blocks { insert, block } = &mut d.detail {
                write_block(insert, block, &mut self.zstd, &mut self.packed)?;
            }
        }
        Ok(std::mem::take(&mut self.created))
    }
}

fn write_block(
    insert: &mut CachedStatement<'_>,
    block: &mut Block,
    zstd: &mut Option<zstd::bulk::Compressor<'static>>,
    packed: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    if block.count == 0 {
        return Ok(());
    }
    let z = match zstd {
        Some(z) => z,
        None => zstd.insert(zstd::bulk::Compressor::new(BLOCK_LEVEL).map_err(pack_error)?),
    };
    packed.clear();
    packed.reserve(zstd::zstd_safe::compress_bound(block.bytes.len()));
    z.compress_to_buffer(&block.bytes, packed)
        .map_err(pack_error)?;
    insert.execute(params![block.first, block.last, &packed[..]])?;
    block.count = 0;
    Ok(())
}

/// Texts by id for readers (ids are never reused, so entries stay true).
#[derive(Debug, Default)]
pub struct TextCache {
    map: HashMap<i64, Arc<str>>,
}

/// Texts cached by a reader at most; past it the cache starts over.
const READER_TEXTS_MAX: usize = 100_000;

impl TextCache {
    pub fn get(&mut self, conn: &Connection, id: i64) -> rusqlite::Result<Option<Arc<str>>> {
        if let Some(t) = self.map.get(&id) {
            return Ok(Some(Arc::clone(t)));
        }
        let text: Option<String> = conn
            .prepare_cached("SELECT text FROM texts WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        Ok(text.map(|t| {
            if self.map.len() >= READER_TEXTS_MAX {
                self.map.clear();
            }
            let t: Arc<str> = t.into();
            self.map.insert(id, Arc::clone(&t));
            t
        }))
    }

    fn string(&mut self, conn: &Connection, id: i64) -> rusqlite::Result<String> {
        Ok(self
            .get(conn, id)?
            .map(|t| t.to_string())
            .unwrap_or_default())
    }
}

/// The id of `text`, if it was ever stored.
fn text_id(conn: &Connection, text: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM texts WHERE text = ?1")?
        .query_row([text], |r| r.get(0))
        .optional()
}

/// The days with transactions, newest first, overlapping `[from, to]`.
fn days_in(conn: &Connection, from_ms: i64, to_ms: i64) -> rusqlite::Result<Vec<(i64, bool)>> {
    let mut days = conn
        .prepare_cached(
            "SELECT day, spans FROM partitions WHERE day >= ?1 AND day <= ?2 ORDER BY day DESC",
        )?
        .query_map(params![day_of(from_ms), day_of(to_ms)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    days.shrink_to_fit();
    Ok(days)
}

const SUMMARY_COLUMNS: &str = "end_ms, id_hi, id_rest, full_id, wall_ns, app, host, endpoint, \
     method, status, error, trace_id";

fn summary(
    conn: &Connection,
    texts: &mut TextCache,
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<TxSummary> {
    let end_ms: i64 = r.get(0)?;
    let id = join_id(r.get(1)?, &r.get::<_, Vec<u8>>(2)?, r.get(3)?);
    let trace_id: Option<Vec<u8>> = r.get(11)?;
    Ok(TxSummary {
        id: TxId::format(end_ms, &id),
        ts_ms: end_ms,
        elapsed_ms: r.get::<_, i64>(4)? as f64 / 1e6,
        app: texts.string(conn, r.get(5)?)?,
        host: texts.string(conn, r.get(6)?)?,
        endpoint: texts.string(conn, r.get(7)?)?,
        method: texts.string(conn, r.get(8)?)?,
        status: r.get(9)?,
        error: r.get(10)?,
        url: None,
        trace_id: trace_id.as_deref().map(to_hex),
    })
}

/// The filter's conditions other than time, as SQL and arguments (from
/// `?4` on: `?1`, `?2` are the time bounds and `?3` a row limit). `None`
/// when a named text was never stored, so nothing can match.
fn conditions(
    conn: &Connection,
    filter: &TxFilter,
) -> rusqlite::Result<Option<(String, Vec<Value>)>> {
    let mut sql = String::new();
    let mut args: Vec<Value> = Vec::new();
    let mut cond = |sql: &mut String, clause: &str, v: Value| {
        args.push(v);
        sql.push_str(&format!(" AND {clause} ?{}", args.len() + 3));
    };
    for (column, text) in [
        ("app =", &filter.app),
        ("endpoint =", &filter.endpoint),
        ("host =", &filter.host),
    ] {
        if let Some(text) = text {
            match text_id(conn, text)? {
                Some(id) => cond(&mut sql, column, id.into()),
                None => return Ok(None),
            }
        }
    }
    if let Some(trace_id) = &filter.trace_id {
        cond(&mut sql, "trace_id =", trace_id.clone().into());
    }
    if let Some(min) = filter.min_ms {
        cond(&mut sql, "wall_ns / 1000000.0 >=", min.into());
    }
    if let Some(max) = filter.max_ms {
        cond(&mut sql, "wall_ns / 1000000.0 <=", max.into());
    }
    if filter.errors_only {
        sql.push_str(" AND notable = 1 AND error <> 0");
    }
    Ok(Some((sql, args)))
}

/// Scans `[from, to]` newest first, keeping at most `limit + 1` rows that
/// match `extra` (SQL) besides the filter.
#[allow(clippy::too_many_arguments)]
fn scan(
    conn: &Connection,
    texts: &mut TextCache,
    days: &[(i64, bool)],
    from_ms: i64,
    to_ms: i64,
    cond: &(String, Vec<Value>),
    extra: &str,
    ordered: bool,
    limit: usize,
    out: &mut Vec<TxSummary>,
) -> rusqlite::Result<()> {
    let (sql_cond, args) = cond;
    for &(day, _) in days {
        if day < day_of(from_ms) || day > day_of(to_ms) {
            continue;
        }
        let room = limit + 1 - out.len().min(limit + 1);
        if room == 0 {
            break;
        }
        let order = if ordered {
            " ORDER BY end_ms DESC, id_hi DESC"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM {} WHERE end_ms >= ?1 AND end_ms <= ?2{sql_cond}{extra}{order} LIMIT ?3",
            tx_table(day)
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut all: Vec<Value> = vec![
            from_ms.into(),
            to_ms.into(),
            i64::try_from(room).unwrap_or(i64::MAX).into(),
        ];
        all.extend(args.iter().cloned());
        let mut rows = stmt.query(rusqlite::params_from_iter(all))?;
        while let Some(r) = rows.next()? {
            out.push(summary(conn, texts, r)?);
        }
    }
    Ok(())
}

/// Rows matched in `[from, to]` above which a scan with a selective
/// filter (elapsed bounds) samples instead of reading them all.
const SCAN_BUDGET: u64 = 500_000;
/// Time slices a sampled scatter reads at most.
const MAX_SLICES: u64 = 1000;

/// About `rate` of the rows matching `extra` in `[from, to]`, at most
/// `room`, read as up to [`MAX_SLICES`] short time slices spread evenly
/// over the range, so that a sample costs what it returns.
#[allow(clippy::too_many_arguments)]
fn sample(
    conn: &Connection,
    texts: &mut TextCache,
    days: &[(i64, bool)],
    (from, to): (i64, i64),
    cond: &(String, Vec<Value>),
    extra: &str,
    rate: f64,
    room: usize,
) -> rusqlite::Result<Vec<TxSummary>> {
    let span = to as f64 - from as f64 + 1.0;
    let width_total = span * rate;
    let k = (width_total.floor() as u64).clamp(1, MAX_SLICES.min(room.max(1) as u64));
    let width = (width_total / k as f64).max(1.0);
    let per_slice = (room / k as usize) * 2 + 16;
    let mut out = Vec::new();
    for i in 0..k {
        let offset = ((i as f64 + 0.5) * span / k as f64 - width / 2.0).floor() as i64;
        let a = from.saturating_add(offset.max(0));
        let b = a.saturating_add(width.round() as i64 - 1).min(to);
        let mut slice = Vec::new();
        scan(
            conn, texts, days, a, b, cond, extra, false, per_slice, &mut slice,
        )?;
        slice.truncate(per_slice);
        out.extend(slice);
    }
    if out.len() > room {
        // Thin evenly.
        let step = out.len() as f64 / room as f64;
        out = (0..room)
            .map(|j| out[(j as f64 * step) as usize].clone())
            .collect();
    }
    Ok(out)
}

/// `GET /api/v1/transactions`: with few enough matches, the most recent
/// `limit` in full; otherwise every notable (failed or slow) transaction
/// and an even sample of the rest, read as short time slices spread over
/// the range — and when the notable ones alone are too many, an even
/// sample of them. `estimate` tells how many transactions the range holds
/// (from the rollups).
pub fn list(
    conn: &Connection,
    texts: &mut TextCache,
    filter: &TxFilter,
    estimate: impl FnOnce() -> rusqlite::Result<u64>,
) -> rusqlite::Result<TxPage> {
    let page = |transactions, truncated, sampled, rate, notable_rate| TxPage {
        transactions,
        truncated,
        sampled,
        sample_rate: rate,
        notable_sample_rate: notable_rate,
    };
    let Some(cond) = conditions(conn, filter)? else {
        return Ok(page(Vec::new(), false, false, 1.0, 1.0));
    };
    let days = days_in(conn, filter.from_ms, filter.to_ms)?;
    if days.is_empty() {
        return Ok(page(Vec::new(), false, false, 1.0, 1.0));
    }
    let (from, to, limit) = (filter.from_ms, filter.to_ms, filter.limit);
    let selective = filter.min_ms.is_some() || filter.max_ms.is_some();
    // Errors and trace members are few: read them all.
    let n = if filter.errors_only || filter.trace_id.is_some() {
        None
    } else {
        Some(estimate()?)
    };
    let exact = match n {
        None => true,
        Some(n) => n <= limit as u64 || (selective && n <= SCAN_BUDGET),
    };
    let mut out = Vec::new();
    if exact {
        scan(
            conn, texts, &days, from, to, &cond, "", true, limit, &mut out,
        )?;
        let truncated = out.len() > limit;
        out.truncate(limit);
        out.reverse();
        return Ok(page(out, truncated, false, 1.0, 1.0));
    }
    // Slices spread over where data is, not over an empty stretch of the
    // range (the index answers the ends at once).
    let (from, to) = extent(conn, &days, from, to)?.unwrap_or((from, to));

    // Every failed and slow transaction, read newest first.
    scan(
        conn,
        texts,
        &days,
        from,
        to,
        &cond,
        " AND notable = 1",
        true,
        limit,
        &mut out,
    )?;
    if out.len() > limit {
        // Too many even so: their density over the newest `limit` tells
        // about how many the range holds; sample them evenly instead.
        let oldest = out[limit - 1].ts_ms;
        let density = limit as f64 / (to as f64 - oldest as f64 + 1.0);
        let rate = (1.0 / (density * (to as f64 - from as f64 + 1.0))) * limit as f64;
        let rate = rate.min(1.0);
        let mut sampled = sample(
            conn,
            texts,
            &days,
            (from, to),
            &cond,
            " AND notable = 1",
            rate,
            limit,
        )?;
        if sampled.is_empty() {
            // Slices too thin to meet any (a tiny limit): the newest.
            out.truncate(limit);
            sampled = out;
        }
        sampled.sort_by_key(|t| t.ts_ms);
        return Ok(page(sampled, true, true, 0.0, rate));
    }
    // The rest: `room` of about `n` ordinary ones.
    let room = limit - out.len();
    let n = n.unwrap_or(1).saturating_sub(out.len() as u64).max(1);
    let rate = (room as f64 / n as f64).min(1.0);
    let sampled = sample(
        conn,
        texts,
        &days,
        (from, to),
        &cond,
        " AND notable = 0",
        rate,
        room,
    )?;
    out.extend(sampled);
    out.sort_by_key(|t| t.ts_ms);
    Ok(page(out, true, true, rate, 1.0))
}

/// The first and last end time stored in `[from, to]`.
fn extent(
    conn: &Connection,
    days: &[(i64, bool)],
    from_ms: i64,
    to_ms: i64,
) -> rusqlite::Result<Option<(i64, i64)>> {
    let bound = |day: i64, f: &str| -> rusqlite::Result<Option<i64>> {
        conn.prepare_cached(&format!(
            "SELECT {f}(end_ms) FROM {} WHERE end_ms >= ?1 AND end_ms <= ?2",
            tx_table(day)
        ))?
        .query_row(params![from_ms, to_ms], |r| r.get(0))
    };
    let mut first = None;
    for &(day, _) in days.iter().rev() {
        if let Some(t) = bound(day, "min")? {
            first = Some(t);
            break;
        }
    }
    let mut last = None;
    for &(day, _) in days {
        if let Some(t) = bound(day, "max")? {
            last = Some(t);
            break;
        }
    }
    Ok(first.zip(last))
}

/// The end time of the stored record `id` ending in `[from, to]`, found
/// through the time index alone.
fn find_end(
    conn: &Connection,
    id: &[u8],
    from_ms: i64,
    to_ms: i64,
) -> rusqlite::Result<Option<i64>> {
    let (hi, rest, full) = split_id(id);
    for (day, _) in days_in(conn, from_ms, to_ms)? {
        let found: Option<(i64, Vec<u8>, bool)> = conn
            .prepare_cached(&format!(
                "SELECT end_ms, id_rest, full_id FROM {} \
                 WHERE end_ms >= ?1 AND end_ms <= ?2 AND id_hi = ?3",
                tx_table(day)
            ))?
            .query_row(params![from_ms, to_ms, hi], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        if let Some((end, r, f)) = found {
            if r == rest && f == full {
                return Ok(Some(end));
            }
        }
    }
    Ok(None)
}

/// How far before now a bare record id (without its time) is looked for.
pub const BARE_ID_WINDOW_MS: i64 = 3_600_000;

/// `GET /api/v1/transactions/{id}`. `now_ms` bounds the search for a bare
/// record id; the caller's transaction (`parent_id`) is looked up near this
/// one's time so that its id can be given in full.
pub fn detail(
    conn: &Connection,
    texts: &mut TextCache,
    id: &TxId,
    now_ms: i64,
) -> Result<Option<TxDetail>, StoreError> {
    let end_ms = match id.end_ms {
        Some(t) => t,
        None => match find_end(
            conn,
            &id.record_id,
            now_ms - BARE_ID_WINDOW_MS,
            now_ms + 300_000,
        )? {
            Some(t) => t,
            None => return Ok(None),
        },
    };
    let day = day_of(end_ms);
    let Some(&(_, spans)) = days_in(conn, end_ms, end_ms)?.first() else {
        return Ok(None);
    };
    let (hi, rest, full) = split_id(&id.record_id);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT seq, id_rest, full_id, wall_ns, app, host, endpoint, method, url, status,
                trace_id
         FROM {} WHERE end_ms = ?1 AND id_hi = ?2",
        tx_table(day)
    ))?;
    let mut rows = stmt.query(params![end_ms, hi])?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    if r.get::<_, Vec<u8>>(1)? != rest || r.get::<_, bool>(2)? != full {
        return Ok(None);
    }
    let seq: i64 = r.get(0)?;
    let cols = Columns {
        id: id.record_id.clone(),
        end_ms,
        wall_ns: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
        app: texts.string(conn, r.get(4)?)?,
        host: texts.string(conn, r.get(5)?)?,
        endpoint: texts.string(conn, r.get(6)?)?,
        method: texts.string(conn, r.get(7)?)?,
        url: r.get(8)?,
        status: r.get(9)?,
        trace_id: r.get(10)?,
    };
    drop(rows);
    drop(stmt);
    let blob = if spans {
        record_blob(conn, day, seq, legacy_detail(conn, day)?)?
    } else {
        None
    };
    let (host, endpoint) = (cols.host.clone(), cols.endpoint.clone());
    let record = match blob {
        Some(b) => {
            let mut lookup = |id: i64| texts.get(conn, id).ok().flatten().map(|t| t.to_string());
            codec::decode(&b, cols, &mut lookup).map_err(|e| StoreError::Backend(Box::new(e)))?
        }
        // The span detail is past its retention: what the summary holds.
        None => summary_record(cols),
    };
    let mut d = TxDetail::from_record(&record, &host, &endpoint);
    d.id = TxId::format(end_ms, &id.record_id);
    d.ts_ms = end_ms;
    d.spans_expired = !spans;
    if let Some(parent) = record
        .trace
        .as_ref()
        .map(|t| &t.parent_record_id)
        .filter(|p| !p.is_empty())
    {
        // A caller ends after its callee (unless it did not wait): look
        // just after first, then wider.
        let start = end_ms - (record.wall_ns / 1_000_000) as i64;
        let found = match find_end(conn, parent, end_ms, end_ms + 60_000)? {
            Some(t) => Some(t),
            None => find_end(conn, parent, start - 60_000, end_ms + 900_000)?,
        };
        if let Some(t) = found {
            d.parent_id = Some(TxId::format(t, parent));
        }
    } else if let Some(t) = record
        .trace
        .as_ref()
        .filter(|t| !t.trace_id.is_empty() && !t.parent_span_id.is_empty())
    {
        // Called with a `traceparent` only (the W3C way): the caller is the
        // transaction of the same trace with an outgoing call of that span
        // id, ended from this one's start (a caller that did not wait) to a
        // minute after its end. No index on trace ids: the window is
        // scanned, so it stays that narrow (a caller from another monitor
        // is simply not found).
        let start = end_ms - (record.wall_ns / 1_000_000) as i64;
        let own = &id.record_id;
        let found = find_caller(
            conn,
            &t.trace_id,
            &t.parent_span_id,
            own,
            start - 1_000,
            end_ms + 60_000,
        )?;
        if let Some((t, caller)) = found {
            d.parent_id = Some(TxId::format(t, &caller));
        }
    }
    Ok(Some(d))
}

/// Transactions of one trace looked at per day when finding a caller.
const CALLER_CANDIDATES: usize = 256;

/// The transaction (end, record id) of trace `trace_id` that ended within
/// `from_ms..=to_ms` and made an outgoing call with span id `span_id`,
/// other than `own`.
fn find_caller(
    conn: &Connection,
    trace_id: &[u8],
    span_id: &[u8],
    own: &[u8],
    from_ms: i64,
    to_ms: i64,
) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
    for (day, spans) in days_in(conn, from_ms, to_ms)? {
        if !spans {
            continue;
        }
        let candidates: Vec<(i64, i64, Vec<u8>, bool, i64)> = conn
            .prepare_cached(&format!(
                "SELECT end_ms, id_hi, id_rest, full_id, seq FROM {} \
                 WHERE end_ms >= ?1 AND end_ms <= ?2 AND trace_id = ?3 LIMIT {CALLER_CANDIDATES}",
                tx_table(day)
            ))?
            .query_map(params![from_ms, to_ms, trace_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let legacy = legacy_detail(conn, day)?;
        for (end, hi, rest, full, seq) in candidates {
            let caller = join_id(hi, &rest, full);
            if caller == own {
                continue;
            }
            let Some(blob) = record_blob(conn, day, seq, legacy)? else {
                continue;
            };
            // Only the spans matter here: texts are not looked up.
            let Ok(record) = codec::decode(&blob, Columns::default(), &mut |_| Some(String::new()))
            else {
                continue;
            };
            if record.spans.iter().any(|s| s.span_id == span_id) {
                return Ok(Some((end, caller)));
            }
        }
    }
    Ok(None)
}

/// See `Store::transaction_urls`. Listed transactions lie close together,
/// so a block, once unpacked, usually serves the next ones too.
pub fn urls(conn: &Connection, ids: &[TxId]) -> Result<Vec<Option<String>>, StoreError> {
    let backend = |e: CodecError| StoreError::Backend(Box::new(e));
    let mut out = Vec::with_capacity(ids.len());
    // day → (table exists, span detail kept, legacy layout)
    let mut days: HashMap<i64, (bool, bool, bool)> = HashMap::new();
    // (day, first, last, unpacked block)
    let mut block: Option<(i64, i64, i64, Vec<u8>)> = None;
    for id in ids {
        let Some(end_ms) = id.end_ms else {
            out.push(None);
            continue;
        };
        let day = day_of(end_ms);
        let (exists, spans, legacy) = match days.get(&day) {
            Some(&d) => d,
            None => {
                let spans = days_in(conn, end_ms, end_ms)?.first().map(|&(_, s)| s);
                let d = match spans {
                    Some(spans) => (true, spans, legacy_detail(conn, day)?),
                    None => (false, false, false),
                };
                days.insert(day, d);
                d
            }
        };
        if !exists {
            out.push(None);
            continue;
        }
        let (hi, rest, full) = split_id(&id.record_id);
        let row: Option<(i64, Vec<u8>, bool, String)> = conn
            .prepare_cached(&format!(
                "SELECT seq, id_rest, full_id, url FROM {} WHERE end_ms = ?1 AND id_hi = ?2",
                tx_table(day)
            ))?
            .query_row(params![end_ms, hi], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let Some((seq, _, _, url)) = row.filter(|r| r.1 == rest && r.2 == full) else {
            out.push(None);
            continue;
        };
        // Rows written before blocks hold the URL; as in `detail`, the
        // blob's wins when it has one.
        let row_url = (!url.is_empty()).then_some(url);
        if !spans {
            out.push(row_url);
            continue;
        }
        let blob: Option<Vec<u8>> = if legacy {
            legacy_record(conn, day, seq)?
        } else {
            let cached = block
                .as_ref()
                .is_some_and(|b| b.0 == day && b.1 <= seq && seq <= b.2);
            if !cached {
                block = block_of(conn, day, seq)?.map(|(first, last, b)| (day, first, last, b));
            }
            block
                .as_ref()
                .and_then(|b| find_in_block(&b.3, b.1, seq))
                .map(<[u8]>::to_vec)
        };
        let blob_url = match blob {
            Some(b) => Some(codec::url_of(&b).map_err(backend)?).filter(|u| !u.is_empty()),
            None => None,
        };
        out.push(blob_url.or(row_url));
    }
    Ok(out)
}

/// The compact record `seq` of a day written before blocks.
/// The compact record of row `seq` of `day`: from its detail block, or
/// from the day's `rec_` table when the day is `legacy`.
fn record_blob(
    conn: &Connection,
    day: i64,
    seq: i64,
    legacy: bool,
) -> Result<Option<Vec<u8>>, StoreError> {
    if legacy {
        return legacy_record(conn, day, seq);
    }
    Ok(block_of(conn, day, seq)?
        .and_then(|(first, _, bytes)| find_in_block(&bytes, first, seq).map(<[u8]>::to_vec)))
}

fn legacy_record(conn: &Connection, day: i64, seq: i64) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT record FROM {} WHERE seq = ?1",
            rec_table(day)
        ))?
        .query_row([seq], |r| r.get(0))
        .optional()?)
}

/// The detail block holding rowid `seq`, unpacked: (first, last, bytes).
fn block_of(
    conn: &Connection,
    day: i64,
    seq: i64,
) -> Result<Option<(i64, i64, Vec<u8>)>, StoreError> {
    let packed: Option<(i64, i64, Vec<u8>)> = conn
        .prepare_cached(&format!(
            "SELECT seq, last, block FROM {} WHERE seq <= ?1 AND last >= ?1
             ORDER BY seq DESC LIMIT 1",
            blk_table(day)
        ))?
        .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    packed
        .map(|(first, last, packed)| {
            zstd::decode_all(&packed[..])
                .map(|bytes| (first, last, bytes))
                .map_err(|e| StoreError::Backend(Box::new(e)))
        })
        .transpose()
}

fn summary_record(c: Columns) -> RequestRecord {
    let wall = i64::try_from(c.wall_ns).unwrap_or(i64::MAX);
    RequestRecord {
        id: c.id,
        app: c.app,
        host: c.host,
        endpoint: c.endpoint,
        method: c.method,
        url: c.url,
        status: c.status,
        wall_ns: c.wall_ns,
        start_unix_ns: c.end_ms.saturating_mul(1_000_000).saturating_sub(wall),
        trace: c.trace_id.map(|trace_id| sonde_proto::v1::TraceContext {
            trace_id,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Brings the single `transactions` table of schema version ≤ 5 into the
/// day partitions, in chunks (each one transaction: rows leave the old
/// table as they enter the new ones, so a crash resumes where it was),
/// then drops it. Rollups already hold these records.
pub fn migrate_legacy(
    conn: &mut Connection,
    parts: &mut Partitions,
    cache: &mut TextMap,
    slow: &crate::storage::rollup::SlowThresholds,
) -> Result<u64, StoreError> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'transactions'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    let naming = crate::storage::EndpointNaming::default();
    let mut moved = 0u64;
    loop {
        let tx = conn.transaction()?;
        let rows: Vec<(i64, i64, String, String, bool, Vec<u8>)> = tx
            .prepare(
                "SELECT seq, end_ms, host, endpoint, error, record FROM transactions
                 ORDER BY seq LIMIT 5000",
            )?
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = rows.last().map(|r| r.0) else {
            tx.execute_batch("DROP TABLE transactions;")?;
            tx.commit()?;
            break;
        };
        let mut texts = Texts {
            committed: cache,
            pending: TextMap::default(),
        };
        let mut raw = RawWriter::new(&tx, parts);
        for (_, _, host, endpoint, error, bytes) in &rows {
            let Ok(mut record) = RequestRecord::decode(bytes.as_slice()) else {
                tracing::warn!("a stored record does not decode; left out of the migration");
                continue;
            };
            record.endpoint.clone_from(endpoint);
            let Some(mut row) = TxRow::from_record(&record, host, &naming) else {
                continue;
            };
            row.error = *error;
            row.host = host;
            let notable = *error || record.wall_ns >= slow.ns_for(&record.app);
            raw.put(&mut texts, &row, &record, notable)?;
            moved += 1;
        }
        tx.execute("DELETE FROM transactions WHERE seq <= ?1", [last])?;
        let created = raw.finish()?;
        let pending = texts.pending;
        tx.commit()?;
        for day in created {
            parts.days.insert(day, true);
        }
        cache.extend(pending);
    }
    Ok(moved)
}
