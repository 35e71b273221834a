//! How long each kind of data is kept, and the disk-usage guard: the
//! policy (from `[storage]`) and what a run did, backend-independent. A
//! backend applies it at start and periodically; raw data goes by whole UTC
//! days (partitions), rollups by bucket.

use serde::Serialize;
use sonde_core::civil::civil_from_days;

pub const DAY_MS: i64 = 86_400_000;

/// Days kept per kind; 0 disk limits mean no limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Span detail (the stored record behind `/transactions/{id}`).
    pub spans_days: u32,
    /// Transaction summaries (`/transactions`, the X-View); never shorter
    /// than `spans_days` in effect: a day's spans go with its summaries.
    pub transactions_days: u32,
    /// Per-second rollups (peak TPS, the TPS alert baselines).
    pub second_rollup_days: u32,
    /// Per-minute rollups (endpoints, SQL, external calls, hosts).
    pub minute_rollup_days: u32,
    /// Per-hour rollups and hourly visitor sketches.
    pub hour_rollup_days: u32,
    /// Host-metrics samples (`/hosts/series`).
    pub host_metrics_days: u32,
    /// The database may take at most this many bytes (0: no cap).
    pub max_disk_bytes: u64,
    /// Keep at least this much free on the file system (0: no floor).
    pub min_free_disk_bytes: u64,
    /// Seconds between retention runs and disk checks.
    pub interval_secs: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            spans_days: 7,
            transactions_days: 14,
            second_rollup_days: 8,
            minute_rollup_days: 31,
            hour_rollup_days: 400,
            host_metrics_days: 31,
            max_disk_bytes: 0,
            min_free_disk_bytes: 1 << 30,
            interval_secs: 60,
        }
    }
}

/// The first UTC day (days since the epoch) still kept when data older
/// than `days` days before `now_ms` goes: a day is dropped once all of it
/// is older than that.
pub fn first_kept_day(now_ms: i64, days: u32) -> i64 {
    (now_ms - i64::from(days) * DAY_MS).div_euclid(DAY_MS)
}

/// The UTC day of an instant, days since the epoch.
pub fn day_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(DAY_MS)
}

/// `YYYYMMDD` of a day number (proleptic Gregorian, see
/// [`sonde_core::civil`]), as partitions are named.
pub fn civil(day: i64) -> i64 {
    let (y, m, d) = civil_from_days(day);
    y * 10_000 + i64::from(m) * 100 + i64::from(d)
}

/// What one retention run removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionOutcome {
    /// Days whose span detail was dropped for age.
    pub spans_days_dropped: u32,
    /// Days whose transactions were dropped for age.
    pub transaction_days_dropped: u32,
    /// Rollup and host-metric rows deleted for age.
    pub rollup_rows_deleted: u64,
    /// Raw-data pieces (a day's spans or transactions) the disk guard
    /// dropped, oldest first.
    pub disk_guard_drops: u32,
}

/// The storage's own figures, for `/api/v1/stats` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StorageStats {
    /// Raw-data partitions (UTC days) held.
    pub partitions: u32,
    /// The oldest day with transactions, `YYYY-MM-DD`, if any.
    pub oldest_day: Option<String>,
    /// The oldest day with span detail, if any.
    pub oldest_spans_day: Option<String>,
    /// Bytes of the database files (main file and write-ahead log).
    pub disk_bytes: u64,
    /// Of the main file, the pages holding data (what `max_disk_bytes`
    /// caps).
    pub data_bytes: u64,
    /// Of the main file, free pages (reused before the file grows).
    pub free_bytes: u64,
    /// Free space on the file system holding the database.
    pub fs_free_bytes: u64,
    /// Retention runs since start.
    pub retention_runs: u64,
    pub spans_days_dropped: u64,
    pub transaction_days_dropped: u64,
    pub rollup_rows_deleted: u64,
    /// Pieces the disk guard dropped since start.
    pub disk_guard_drops: u64,
    /// Records that arrived for days already dropped: acknowledged, not
    /// stored.
    pub records_expired: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days() {
        assert_eq!(civil(0), 19_700_101);
        assert_eq!(civil(19_723), 20_240_101);
        assert_eq!(civil(day_of(1_710_028_800_000)), 20_240_310);
        assert_eq!(civil(-1), 19_691_231);
        assert_eq!(day_of(-1), -1);
        // 7 days: at 10 days + 1 ms, day 3 still holds data younger than 7 days.
        let now = 10 * DAY_MS + 1;
        assert_eq!(first_kept_day(now, 7), 3);
        assert_eq!(first_kept_day(10 * DAY_MS, 7), 3);
        assert_eq!(first_kept_day(10 * DAY_MS - 1, 7), 2);
    }
}
