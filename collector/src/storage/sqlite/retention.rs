//! Retention and the disk guard for the SQLite backend: whole day
//! partitions are dropped (a `DROP TABLE`, no row-by-row delete), rollup
//! rows are deleted by bucket range in short chunks, and when the disk
//! runs short the oldest raw data goes first — a day's span detail, then
//! its transactions — never the newest day. Each drop is logged and
//! counted. Runs at open and then every `interval_secs` on a thread of its
//! own that ends with the store.
//!
//! Freed pages stay in the file and are reused before it grows. A
//! database created by this version uses `auto_vacuum = INCREMENTAL`, and
//! only when the disk guard acts are freed pages handed back to the file
//! system (moving pages costs I/O the size of what was freed; a steady
//! state reuses them instead).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::Duration;

use rusqlite::Connection;
use tracing::{info, warn};

use super::partition::{blk_table, rec_table, tx_table, FLOOR_KEY};
use super::{rollup, Inner};
use crate::storage::retention::{civil, first_kept_day, RetentionOutcome, StorageStats, DAY_MS};
use crate::storage::rollup::HOUR_MS;
use crate::storage::StoreError;

/// Cumulative counts, for [`StorageStats`].
#[derive(Debug, Default)]
pub struct Counters {
    pub runs: AtomicU64,
    pub spans_days_dropped: AtomicU64,
    pub transaction_days_dropped: AtomicU64,
    pub rollup_rows_deleted: AtomicU64,
    pub disk_guard_drops: AtomicU64,
    pub records_expired: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Rollup tables by retention kind: (table, time column, chunk span).
fn rollup_tables(r: &crate::storage::Retention) -> [(&'static str, &'static str, u32, i64); 10] {
    [
        ("host_second", "bucket_ms", r.second_rollup_days, HOUR_MS),
        ("endpoint_minute", "bucket_ms", r.minute_rollup_days, DAY_MS),
        ("host_minute", "bucket_ms", r.minute_rollup_days, DAY_MS),
        ("sql_minute", "bucket_ms", r.minute_rollup_days, DAY_MS),
        ("external_minute", "bucket_ms", r.minute_rollup_days, DAY_MS),
        (
            "endpoint_hour",
            "bucket_ms",
            r.hour_rollup_days,
            30 * DAY_MS,
        ),
        ("sql_hour", "bucket_ms", r.hour_rollup_days, 30 * DAY_MS),
        (
            "external_hour",
            "bucket_ms",
            r.hour_rollup_days,
            30 * DAY_MS,
        ),
        (
            "visitors_hour",
            "bucket_ms",
            r.hour_rollup_days,
            30 * DAY_MS,
        ),
        ("host_metrics", "ts_ms", r.host_metrics_days, DAY_MS),
    ]
}

/// A day's raw data, as the guard drops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Spans(i64),
    Transactions(i64),
}

/// Sizes of the database, bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskUse {
    /// The main file.
    pub file: u64,
    /// The write-ahead log (transient: checkpointed into the main file,
    /// kept below `journal_size_limit`).
    pub wal: u64,
    /// Free pages inside the main file.
    pub free: u64,
    /// Free for us on the file system.
    pub fs_free: u64,
}

impl DiskUse {
    pub fn measure(conn: &Connection, db: &Path, dir: &Path) -> rusqlite::Result<DiskUse> {
        let page: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages: u64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: u64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let mut wal_path = db.as_os_str().to_owned();
        wal_path.push("-wal");
        let wal = std::fs::metadata(&wal_path).map_or(0, |m| m.len());
        let fs_free = nix::sys::statvfs::statvfs(dir).map_or(u64::MAX, |s| {
            s.blocks_available().saturating_mul(s.fragment_size())
        });
        Ok(DiskUse {
            file: pages * page,
            wal,
            free: free * page,
            fs_free,
        })
    }

    /// Bytes of the main file holding data (what `max_disk_bytes` caps).
    pub fn used(&self) -> u64 {
        self.file.saturating_sub(self.free)
    }
}

impl Inner {
    /// One retention run as of `now_ms` (see the module comment).
    pub fn retention(&self, now_ms: i64) -> Result<RetentionOutcome, StoreError> {
        let policy = &self.opts.retention;
        let mut out = RetentionOutcome::default();
        add(&self.counters.runs, 1);

        // Raw data by age: spans first (they may be kept for less time).
        let spans_floor = first_kept_day(now_ms, policy.spans_days);
        let tx_floor = first_kept_day(now_ms, policy.transactions_days.max(policy.spans_days));
        let days: Vec<(i64, bool)> = {
            let w = self.writer();
            w.parts.days.iter().map(|(&d, &s)| (d, s)).collect()
        };
        for (day, spans) in days {
            if day < tx_floor {
                self.drop_piece(Piece::Transactions(day))?;
                out.transaction_days_dropped += 1;
                info!(
                    day = civil(day),
                    "retention: transactions of the day dropped"
                );
            } else if spans && day < spans_floor {
                self.drop_piece(Piece::Spans(day))?;
                out.spans_days_dropped += 1;
                info!(
                    day = civil(day),
                    "retention: span detail of the day dropped"
                );
            }
        }
        self.raise_floor(tx_floor)?;
        add(
            &self.counters.spans_days_dropped,
            out.spans_days_dropped.into(),
        );
        add(
            &self.counters.transaction_days_dropped,
            out.transaction_days_dropped.into(),
        );

        // Rollups by bucket, in chunks.
        for (table, column, days, step) in rollup_tables(policy) {
            let before = now_ms - i64::from(days) * DAY_MS;
            loop {
                let (n, done) = {
                    let w = self.writer();
                    rollup::delete_before(&w.conn, table, column, before, step)?
                };
                out.rollup_rows_deleted += n as u64;
                if done {
                    break;
                }
            }
        }
        add(&self.counters.rollup_rows_deleted, out.rollup_rows_deleted);
        if out.rollup_rows_deleted > 0 {
            info!(
                rows = out.rollup_rows_deleted,
                "retention: old rollup rows deleted"
            );
        }

        out.disk_guard_drops = self.disk_guard()?;
        Ok(out)
    }

    /// Records ending before `day` are no longer stored.
    fn raise_floor(&self, day: i64) -> Result<(), StoreError> {
        let mut w = self.writer();
        if day > w.parts.floor {
            w.conn.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                rusqlite::params![FLOOR_KEY, day],
            )?;
            w.parts.floor = day;
        }
        Ok(())
    }

    fn drop_piece(&self, piece: Piece) -> Result<(), StoreError> {
        let mut w = self.writer();
        let tx = w.conn.transaction()?;
        match piece {
            Piece::Spans(day) => {
                tx.execute_batch(&format!(
                    "DROP TABLE IF EXISTS {};
                     DROP TABLE IF EXISTS {};
                     UPDATE partitions SET spans = 0 WHERE day = {day};",
                    rec_table(day),
                    blk_table(day)
                ))?;
            }
            Piece::Transactions(day) => {
                tx.execute_batch(&format!(
                    "DROP TABLE IF EXISTS {};
                     DROP TABLE IF EXISTS {};
                     DROP TABLE IF EXISTS {};
                     DELETE FROM partitions WHERE day = {day};",
                    rec_table(day),
                    blk_table(day),
                    tx_table(day)
                ))?;
            }
        }
        tx.commit()?;
        match piece {
            Piece::Spans(day) => {
                w.parts.days.insert(day, false);
            }
            Piece::Transactions(day) => {
                w.parts.days.remove(&day);
            }
        }
        Ok(())
    }

    /// The disk guard: while the database holds more than `max_disk_bytes`
    /// or the file system has less than `min_free_disk_bytes` free
    /// (counting free pages inside the file as free), drops the oldest raw
    /// data. How many pieces it dropped.
    fn disk_guard(&self) -> Result<u32, StoreError> {
        let policy = &self.opts.retention;
        if policy.max_disk_bytes == 0 && policy.min_free_disk_bytes == 0 {
            return Ok(0);
        }
        let mut drops = 0u32;
        loop {
            let disk = {
                let w = self.writer();
                DiskUse::measure(&w.conn, &self.file, &self.dir)?
            };
            let over = policy.max_disk_bytes > 0 && disk.used() > policy.max_disk_bytes;
            let low = policy.min_free_disk_bytes > 0
                && disk.fs_free.saturating_add(disk.free) < policy.min_free_disk_bytes;
            if !over && !low {
                break;
            }
            let next = {
                let w = self.writer();
                let newest = w.parts.days.keys().next_back().copied();
                w.parts
                    .days
                    .iter()
                    .find(|(&d, _)| Some(d) != newest)
                    .map(|(&d, &spans)| {
                        if spans {
                            Piece::Spans(d)
                        } else {
                            Piece::Transactions(d)
                        }
                    })
            };
            let Some(piece) = next else {
                if !self.guard_stuck.swap(true, Ordering::Relaxed) {
                    warn!(
                        used_bytes = disk.used(),
                        fs_free_bytes = disk.fs_free,
                        max_disk_bytes = policy.max_disk_bytes,
                        min_free_disk_bytes = policy.min_free_disk_bytes,
                        "disk guard: over its limit with only the newest day's raw data left"
                    );
                }
                break;
            };
            self.guard_stuck.store(false, Ordering::Relaxed);
            self.drop_piece(piece)?;
            if let Piece::Transactions(day) = piece {
                self.raise_floor(day + 1)?;
            }
            drops += 1;
            add(&self.counters.disk_guard_drops, 1);
            let (kind, day) = match piece {
                Piece::Spans(d) => ("span detail", d),
                Piece::Transactions(d) => ("transactions", d),
            };
            warn!(
                day = civil(day),
                kind,
                used_bytes = disk.used(),
                fs_free_bytes = disk.fs_free,
                "disk guard: oldest raw data dropped"
            );
            if low {
                self.give_back()?;
            }
        }
        Ok(drops)
    }

    /// Hands free pages back to the file system (incremental auto-vacuum),
    /// a few MB per writer lock.
    fn give_back(&self) -> Result<(), StoreError> {
        if !self.incremental {
            return Ok(());
        }
        loop {
            let w = self.writer();
            let free: i64 = w
                .conn
                .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            if free == 0 {
                // Shrink the WAL the page moves went through.
                w.conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
                return Ok(());
            }
            let mut stmt = w.conn.prepare("PRAGMA incremental_vacuum(2048)")?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
        }
    }

    pub fn stats(&self) -> Result<StorageStats, StoreError> {
        let (parts, disk) = {
            let r = self.reader();
            let parts: (u32, Option<i64>, Option<i64>) = r.conn.query_row(
                "SELECT count(*), min(day), (SELECT min(day) FROM partitions WHERE spans = 1)
                 FROM partitions",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            (parts, DiskUse::measure(&r.conn, &self.file, &self.dir)?)
        };
        let date = |d: i64| {
            let c = civil(d);
            format!("{:04}-{:02}-{:02}", c / 10_000, c / 100 % 100, c % 100)
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        Ok(StorageStats {
            partitions: parts.0,
            oldest_day: parts.1.map(date),
            oldest_spans_day: parts.2.map(date),
            disk_bytes: disk.file + disk.wal,
            data_bytes: disk.used(),
            free_bytes: disk.free,
            fs_free_bytes: disk.fs_free,
            retention_runs: get(&c.runs),
            spans_days_dropped: get(&c.spans_days_dropped),
            transaction_days_dropped: get(&c.transaction_days_dropped),
            rollup_rows_deleted: get(&c.rollup_rows_deleted),
            disk_guard_drops: get(&c.disk_guard_drops),
            records_expired: get(&c.records_expired),
        })
    }
}

/// Stops the retention thread when dropped.
#[derive(Debug, Default)]
pub struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    pub fn fire(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }

    /// Waits `d`; true when stopped.
    fn wait(&self, d: Duration) -> bool {
        let g = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        let (g, _) = self
            .wake
            .wait_timeout_while(g, d, |s| !*s)
            .unwrap_or_else(PoisonError::into_inner);
        *g
    }
}

/// Runs retention every `interval` until `stop` fires or the store goes.
pub fn spawn(inner: Weak<Inner>, stop: Arc<Stop>, interval: Duration) {
    let spawned = std::thread::Builder::new()
        .name("sonde-retention".into())
        .spawn(move || loop {
            if stop.wait(interval) {
                return;
            }
            let Some(inner) = inner.upgrade() else {
                return;
            };
            if let Err(error) = inner.retention(crate::clock::now_ms()) {
                warn!(%error, "retention run failed; trying again later");
            }
        });
    if let Err(error) = spawned {
        warn!(%error, "cannot start the retention thread; retention runs at start only");
    }
}
