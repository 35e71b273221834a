//! The day partitions end to end through the `Store` interface: batches
//! across midnight, exactly-once across partitions and across `kill -9`
//! (a child process killed while it writes), the schema-5 migration,
//! retention and the disk guard, the scatter's sampling, trace lookups and
//! endpoint rules.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rusqlite::Connection;
use sonde_proto::v1::{ErrorInfo, RequestRecord, Span, SpanKind, TraceContext};

use super::partition::{blk_table, rec_table, tx_table};
use super::*;
use crate::storage::end_ms;
use crate::storage::retention::{day_of, DAY_MS};
use crate::storage::rollup::MINUTE_MS;

/// 2024-03-12 00:00 UTC.
const MIDNIGHT: i64 = 1_710_201_600_000;

/// A record `n` (its id), of `app`, ending at `end_ms` after `elapsed_ms`.
fn rec(n: u64, app: &str, end_ms: i64, elapsed_ms: u64) -> RequestRecord {
    let mut id = vec![0u8; 16];
    id[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    id[8..].copy_from_slice(&n.to_be_bytes());
    let wall_ns = elapsed_ms * 1_000_000;
    RequestRecord {
        id,
        app: app.into(),
        host: "web-1".into(),
        start_unix_ns: end_ms * 1_000_000 - wall_ns as i64,
        wall_ns,
        method: "GET".into(),
        url: format!("/items/{n}"),
        status: 200,
        spans: vec![Span {
            kind: SpanKind::Sql as i32,
            start_ns: 1000,
            duration_ns: 2_000_000,
            statement: "SELECT * FROM items WHERE id = ?".into(),
            db: "mysql://db/shop".into(),
            rows: 1,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// No filter but the end-time range and `limit`; `mod.rs`'s tests use it too.
pub(super) fn all(from_ms: i64, to_ms: i64, limit: usize) -> TxFilter {
    TxFilter {
        from_ms,
        to_ms,
        app: None,
        endpoint: None,
        host: None,
        trace_id: None,
        min_ms: None,
        max_ms: None,
        errors_only: false,
        limit,
    }
}

fn open_with(dir: &Path, opts: StoreOptions) -> SqliteStore {
    SqliteStore::open_opts(dir, opts).unwrap()
}

/// Rows per app, straight from the partitions.
fn rows_per_app(dir: &Path) -> HashMap<String, u64> {
    let conn = Connection::open(dir.join(DB_FILE)).unwrap();
    let days: Vec<i64> = conn
        .prepare("SELECT day FROM partitions")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = HashMap::new();
    for day in days {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT t.text, count(*) FROM {} x JOIN texts t ON t.id = x.app GROUP BY t.text",
                tx_table(day)
            ))
            .unwrap();
        for row in stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))
            .unwrap()
        {
            let (app, n) = row.unwrap();
            *out.entry(app).or_insert(0) += n;
        }
    }
    out
}

/// Calls per app in the per-minute host rollup.
fn rolled_up_per_app(dir: &Path) -> HashMap<String, u64> {
    let conn = Connection::open(dir.join(DB_FILE)).unwrap();
    let mut stmt = conn
        .prepare("SELECT app, sum(calls) FROM host_minute GROUP BY app")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows
}

#[test]
fn a_batch_across_midnight_lands_in_both_days_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(dir.path(), StoreOptions::default());
    let batch: Vec<_> = (0..10)
        .map(|i| rec(i, "shop", MIDNIGHT - 5 + i as i64, 3))
        .collect();
    let o = s.insert_records(&batch, "h").unwrap();
    assert_eq!((o.stored, o.duplicates), (10, 0));
    let parts: Vec<i64> = s.inner.writer().parts.days.keys().copied().collect();
    assert_eq!(parts, [day_of(MIDNIGHT) - 1, day_of(MIDNIGHT)]);

    // Listed across both days, in time order; each found by its id.
    let page = s
        .query_transactions(&all(MIDNIGHT - DAY_MS, MIDNIGHT + DAY_MS, 100))
        .unwrap();
    let ts: Vec<i64> = page.transactions.iter().map(|t| t.ts_ms).collect();
    assert_eq!(ts, (0..10).map(|i| MIDNIGHT - 5 + i).collect::<Vec<_>>());
    for t in &page.transactions {
        let d = s
            .transaction_at(&TxId::parse(&t.id).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!((d.id.as_str(), d.ts_ms), (t.id.as_str(), t.ts_ms));
        assert_eq!(d.spans.len(), 1);
        assert_eq!(
            d.spans[0].statement.as_deref(),
            Some("SELECT * FROM items WHERE id = ?")
        );
    }

    // Resent (also re-batched with new ones): stored once, across days.
    let mut again = batch.clone();
    again.push(rec(99, "shop", MIDNIGHT + 7, 3));
    let o = s.insert_records(&again, "h").unwrap();
    assert_eq!((o.stored, o.duplicates), (1, 10));
    assert_eq!(rows_per_app(dir.path())["shop"], 11);
    assert_eq!(rolled_up_per_app(dir.path())["shop"], 11);
}

/// Records of batch `b` of round `round`: half end just before a
/// midnight, half just after.
fn crash_batch(round: u64, b: u64) -> Vec<RequestRecord> {
    let app = format!("r{round}b{b}");
    let midnight = MIDNIGHT + (b % 3) as i64 * DAY_MS;
    (0..CRASH_BATCH)
        .map(|i| {
            let n = (round << 40) | (b << 20) | i;
            let end = midnight - CRASH_BATCH as i64 / 2 + i as i64;
            rec(n, &app, end, 1 + i % 50)
        })
        .collect()
}

const CRASH_BATCH: u64 = 2000;

/// The child of `kill_9_during_batches_across_midnight`: writes batches
/// until it is killed, saying after each commit which one it was.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os("SONDE_CRASH_DIR") else {
        return;
    };
    let round: u64 = std::env::var("SONDE_CRASH_ROUND").unwrap().parse().unwrap();
    let s = open_with(Path::new(&dir), StoreOptions::default());
    let mut out = std::io::stdout();
    for b in 0..1000 {
        s.insert_records(&crash_batch(round, b), "h").unwrap();
        use std::io::Write;
        writeln!(out, "committed {b}").unwrap();
        out.flush().unwrap();
    }
}

/// `kill -9` of a process writing batches that span midnight (rows in two
/// partitions, dedup marks and rollups in one transaction), at many
/// moments; after each, every batch is all there or not at all, every
/// batch the writer saw committed is there, and the rollups count exactly
/// the rows. Resending everything then stores each record once.
#[test]
fn kill_9_during_batches_across_midnight() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut attempted: Vec<(u64, u64)> = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..8u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "storage::sqlite::partition_tests::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SONDE_CRASH_DIR", dir.path())
            .env("SONDE_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.strip_prefix("committed ")?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Past the child's start (a few hundred ms), then at a moment
        // within a batch or its commit.
        std::thread::sleep(Duration::from_millis(600 + seed % 900));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let committed = reader.join().unwrap();
        let written = committed.last().map_or(0, |b| b + 1);
        // The batch being written when killed counts as attempted too.
        attempted.extend((0..=written).map(|b| (round, b)));

        let s = open_with(dir.path(), StoreOptions::default());
        let rows = rows_per_app(dir.path());
        let rolled = rolled_up_per_app(dir.path());
        for &(r, b) in &attempted {
            let app = format!("r{r}b{b}");
            let n = rows.get(&app).copied().unwrap_or(0);
            assert!(
                n == 0 || n == CRASH_BATCH,
                "batch {app} partly stored: {n} rows"
            );
            assert_eq!(
                rolled.get(&app).copied().unwrap_or(0),
                n,
                "rollups of {app} count its rows"
            );
        }
        for b in committed.iter().map(|&b| (round, b)) {
            let app = format!("r{}b{}", b.0, b.1);
            assert_eq!(rows.get(&app), Some(&CRASH_BATCH), "{app} was committed");
        }
        drop(s);
    }

    // The agent resends what was not acknowledged — here everything.
    let s = open_with(dir.path(), StoreOptions::default());
    let before: u64 = rows_per_app(dir.path()).values().sum();
    let mut stored = 0u64;
    for &(r, b) in &attempted {
        let o = s.insert_records(&crash_batch(r, b), "h").unwrap();
        stored += u64::from(o.stored);
        assert_eq!(u64::from(o.stored + o.duplicates), CRASH_BATCH);
    }
    let rows = rows_per_app(dir.path());
    assert_eq!(before + stored, attempted.len() as u64 * CRASH_BATCH);
    for &(r, b) in &attempted {
        assert_eq!(rows[&format!("r{r}b{b}")], CRASH_BATCH);
    }
    assert_eq!(rolled_up_per_app(dir.path()), rows);
}

#[test]
fn a_single_table_database_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What schema 5 made (the raw table and a rollup without the new
        // columns), with rows in it.
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(
            "CREATE TABLE transactions (
                seq INTEGER PRIMARY KEY, record_id BLOB NOT NULL UNIQUE,
                end_ms INTEGER NOT NULL, elapsed_ms REAL NOT NULL, app TEXT NOT NULL,
                host TEXT NOT NULL, endpoint TEXT NOT NULL, method TEXT NOT NULL,
                url TEXT NOT NULL, status INTEGER NOT NULL, error INTEGER NOT NULL,
                trace_id BLOB, record BLOB NOT NULL);
             CREATE TABLE endpoint_minute (
                bucket_ms INTEGER NOT NULL, app TEXT NOT NULL, endpoint_id INTEGER NOT NULL,
                calls INTEGER NOT NULL, failures INTEGER NOT NULL, bad INTEGER NOT NULL,
                sum_ns INTEGER NOT NULL, max_ns INTEGER NOT NULL, sql_ns INTEGER NOT NULL,
                fetch_ns INTEGER NOT NULL, external_ns INTEGER NOT NULL, hist BLOB NOT NULL,
                PRIMARY KEY (bucket_ms, app, endpoint_id));
             PRAGMA user_version = 5;",
        )
        .unwrap();
        for i in 0..12_000u64 {
            let mut r = rec(i, "legacy", MIDNIGHT - 6_000 + i as i64, 2);
            r.status = if i % 100 == 0 { 500 } else { 200 };
            conn.execute(
                "INSERT INTO transactions (record_id, end_ms, elapsed_ms, app, host, endpoint,
                    method, url, status, error, trace_id, record)
                 VALUES (?1, ?2, 2.0, 'legacy', 'web-9', '/items/{num}', 'GET', ?3, ?4, ?5,
                    NULL, ?6)",
                params![
                    r.id,
                    end_ms(&r),
                    r.url,
                    r.status,
                    r.status >= 500,
                    r.encode_to_vec()
                ],
            )
            .unwrap();
        }
    }
    let s = open_with(dir.path(), StoreOptions::default());
    assert_eq!(rows_per_app(dir.path())["legacy"], 12_000);
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let (version, legacy): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version),
                    (SELECT count(*) FROM sqlite_schema WHERE name = 'transactions')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((version, legacy), (SCHEMA_VERSION, 0));
    let page = s
        .query_transactions(&TxFilter {
            errors_only: true,
            ..all(0, i64::MAX, 1000)
        })
        .unwrap();
    assert_eq!(page.transactions.len(), 120);
    let t = &page.transactions[0];
    assert_eq!(
        (t.host.as_str(), t.endpoint.as_str()),
        ("web-9", "/items/{num}")
    );
    let d = s
        .transaction_at(&TxId::parse(&t.id).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(d.status, 500);
    assert_eq!(d.spans.len(), 1);
    // Its records were rolled up by the old collector: a resend is a
    // duplicate and counts nowhere again.
    let o = s
        .insert_records(&[rec(5, "legacy", MIDNIGHT - 6_000 + 5, 2)], "h")
        .unwrap();
    assert_eq!(o.duplicates, 1);
    assert!(rolled_up_per_app(dir.path()).is_empty());
}

#[test]
fn retention_drops_whole_days_and_old_rollups() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(
        dir.path(),
        StoreOptions {
            retention: Retention {
                spans_days: 2,
                transactions_days: 5,
                minute_rollup_days: 3,
                min_free_disk_bytes: 0,
                ..Retention::default()
            },
            ..StoreOptions::default()
        },
    );
    // Ten days of data, the last one today.
    let today = MIDNIGHT + 9 * DAY_MS;
    let now = today + 12 * 3_600_000;
    let batch: Vec<_> = (0..10u64)
        .flat_map(|d| {
            (0..3).map(move |k| {
                rec(
                    d * 10 + k,
                    "shop",
                    MIDNIGHT + d as i64 * DAY_MS + 1000 * k as i64,
                    5,
                )
            })
        })
        .collect();
    assert_eq!(s.insert_records(&batch, "h").unwrap().stored, 30);
    let o = s.run_retention(now).unwrap();
    // Kept: days whose data is younger than 5 days (today and 5 before);
    // span detail younger than 2 days.
    assert_eq!(o.transaction_days_dropped, 4, "{o:?}");
    assert_eq!(o.spans_days_dropped, 3, "{o:?}");
    assert!(o.rollup_rows_deleted > 0);
    let days: Vec<(i64, bool)> = s
        .inner
        .writer()
        .parts
        .days
        .iter()
        .map(|(&d, &sp)| (d - day_of(MIDNIGHT), sp))
        .collect();
    assert_eq!(
        days,
        [
            (4, false),
            (5, false),
            (6, false),
            (7, true),
            (8, true),
            (9, true)
        ]
    );
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN (?1, ?2, ?3)",
            params![
                tx_table(day_of(MIDNIGHT)),
                blk_table(day_of(MIDNIGHT) + 5),
                tx_table(day_of(MIDNIGHT) + 5)
            ],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 1, "old tables are gone, the kept one stays");
    let oldest_minute: i64 = conn
        .query_row("SELECT min(bucket_ms) FROM endpoint_minute", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(oldest_minute >= now - 3 * DAY_MS);

    // A transaction of a day without span detail: its summary only.
    let page = s
        .query_transactions(&all(MIDNIGHT + 5 * DAY_MS, MIDNIGHT + 6 * DAY_MS - 1, 10))
        .unwrap();
    assert_eq!(page.transactions.len(), 3);
    let d = s
        .transaction_at(&TxId::parse(&page.transactions[0].id).unwrap())
        .unwrap()
        .unwrap();
    assert!(d.spans_expired && d.spans.is_empty());
    assert_eq!((d.app.as_str(), d.elapsed_ms), ("shop", 5.0));

    // Late data for a dropped day is acknowledged, not stored (nor rolled
    // up); a day still kept takes it.
    let o = s
        .insert_records(
            &[
                rec(500, "late", MIDNIGHT + 1000, 5),
                rec(501, "late", MIDNIGHT + 5 * DAY_MS + 7, 5),
            ],
            "h",
        )
        .unwrap();
    assert_eq!((o.stored, o.expired), (1, 1));
    assert_eq!(rolled_up_per_app(dir.path())["late"], 1);
    let stats = s.storage_stats().unwrap();
    assert_eq!(stats.partitions, 6);
    assert_eq!(stats.oldest_day.as_deref(), Some("2024-03-16"));
    assert_eq!(stats.oldest_spans_day.as_deref(), Some("2024-03-19"));
    assert_eq!(
        (
            stats.transaction_days_dropped,
            stats.spans_days_dropped,
            stats.records_expired
        ),
        (4, 3, 1)
    );
}

/// 160 hex digits that do not compress (detail blocks are zstd'ed).
fn noise(seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..10)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{x:016x}")
        })
        .collect()
}

#[test]
fn the_disk_guard_drops_the_oldest_raw_data_first() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 5 << 19;
    let s = open_with(
        dir.path(),
        StoreOptions {
            retention: Retention {
                max_disk_bytes: cap,
                min_free_disk_bytes: 0,
                ..Retention::default()
            },
            ..StoreOptions::default()
        },
    );
    // Four days of ~0.9 MB each.
    for d in 0..4u64 {
        let batch: Vec<_> = (0..5000u64)
            .map(|k| {
                let mut r = rec(
                    (d << 32) | k,
                    "shop",
                    MIDNIGHT + d as i64 * DAY_MS + k as i64,
                    5,
                );
                r.client_ip = format!("10.0.{}.{}", k % 250, d);
                r.attributes.insert("pad".into(), noise(d << 32 | k));
                r
            })
            .collect();
        s.insert_records(&batch, "h").unwrap();
    }
    let now = MIDNIGHT + 4 * DAY_MS;
    let before = s.storage_stats().unwrap();
    assert!(before.data_bytes > cap, "{before:?}");
    let o = s.run_retention(now).unwrap();
    assert!(o.disk_guard_drops > 0, "{o:?}");
    let after = s.storage_stats().unwrap();
    assert!(after.data_bytes <= cap, "{after:?}");
    assert!(
        after.partitions >= 2,
        "only what was needed went: {after:?}"
    );
    assert_eq!(after.disk_guard_drops, u64::from(o.disk_guard_drops));
    // Oldest first: day 0's spans went before anything of a later day.
    let days = s.inner.writer().parts.days.clone();
    let newest = day_of(MIDNIGHT) + 3;
    assert_eq!(
        days.get(&newest),
        Some(&true),
        "the newest day is never touched"
    );
    let first = days.keys().next().copied().unwrap();
    for (&d, &spans) in &days {
        if d > first {
            assert!(
                spans,
                "day {d} lost spans before day {first} was dropped: {days:?}"
            );
        }
    }
    // A cap the newest day alone exceeds: the guard stops at it.
    let s = open_with(
        dir.path(),
        StoreOptions {
            retention: Retention {
                max_disk_bytes: 1,
                min_free_disk_bytes: 0,
                ..Retention::default()
            },
            ..StoreOptions::default()
        },
    );
    s.run_retention(now).unwrap();
    let left: Vec<i64> = s.inner.writer().parts.days.keys().copied().collect();
    assert_eq!(left, [newest]);
    drop(s);

    // Short of free space on the file system: freed pages go back to it
    // (incremental auto-vacuum), the file shrinks.
    let s = open_with(dir.path(), StoreOptions::default());
    let batch: Vec<_> = (0..5000u64)
        .map(|k| {
            let mut r = rec((9 << 32) | k, "shop", MIDNIGHT + 4 * DAY_MS + k as i64, 5);
            r.attributes.insert("pad".into(), noise(9 << 32 | k));
            r
        })
        .collect();
    s.insert_records(&batch, "h").unwrap();
    s.flush().unwrap();
    let file = || std::fs::metadata(dir.path().join(DB_FILE)).unwrap().len();
    let big = file();
    drop(s);
    let s = open_with(
        dir.path(),
        StoreOptions {
            retention: Retention {
                min_free_disk_bytes: u64::MAX / 2,
                ..Retention::default()
            },
            ..StoreOptions::default()
        },
    );
    let o = s.run_retention(now).unwrap();
    assert_eq!(o.disk_guard_drops, 2, "{o:?}");
    let st = s.storage_stats().unwrap();
    assert_eq!(st.free_bytes, 0, "{st:?}");
    assert!(file() < big, "{} → {}", big, file());
}

#[test]
fn a_huge_scatter_keeps_failed_and_slow_and_samples_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(dir.path(), StoreOptions::default());
    // 20,000 over 20 minutes: 1 in 100 failed, 1 in 100 slow.
    let from = MIDNIGHT;
    let recs: Vec<_> = (0..20_000u64)
        .map(|i| {
            let slow = i % 100 == 50;
            let mut r = rec(
                i,
                "shop",
                from + i as i64 * 60,
                if slow { 4000 } else { 20 },
            );
            if i % 100 == 7 {
                r.error = Some(ErrorInfo {
                    fatal: true,
                    ..Default::default()
                });
            }
            r
        })
        .collect();
    for c in recs.chunks(5000) {
        s.insert_records(c, "h").unwrap();
    }
    let to = from + 20 * MINUTE_MS;
    let page = s.query_transactions(&all(from, to, 1000)).unwrap();
    assert!(page.sampled && page.truncated);
    assert_eq!(page.notable_sample_rate, 1.0);
    let n = page.transactions.len();
    assert!((900..=1000).contains(&n), "{n}");
    let errors = page.transactions.iter().filter(|t| t.error).count();
    let slow = page
        .transactions
        .iter()
        .filter(|t| t.elapsed_ms >= 3000.0)
        .count();
    assert_eq!((errors, slow), (200, 200), "every failed and slow one");
    // The rest evenly over the range: every 2-minute tenth has some.
    let ordinary: Vec<i64> = page
        .transactions
        .iter()
        .filter(|t| !t.error && t.elapsed_ms < 3000.0)
        .map(|t| t.ts_ms)
        .collect();
    assert!(
        (page.sample_rate - 600.0 / 19_600.0).abs() < 0.01,
        "{}",
        page.sample_rate
    );
    for tenth in 0..10 {
        let (a, b) = (
            from + tenth * 2 * MINUTE_MS,
            from + (tenth + 1) * 2 * MINUTE_MS,
        );
        let k = ordinary.iter().filter(|&&t| t >= a && t < b).count();
        assert!((40..=80).contains(&k), "tenth {tenth}: {k}");
    }
    assert!(page
        .transactions
        .windows(2)
        .all(|w| w[0].ts_ms <= w[1].ts_ms));

    // Fewer than the notable ones: those sampled evenly, none other.
    let page = s.query_transactions(&all(from, to, 100)).unwrap();
    assert!(page.sampled && page.sample_rate == 0.0);
    assert!(
        page.notable_sample_rate < 0.3,
        "{}",
        page.notable_sample_rate
    );
    assert!(page
        .transactions
        .iter()
        .all(|t| t.error || t.elapsed_ms >= 3000.0));
    let first = page.transactions.first().unwrap().ts_ms;
    let last = page.transactions.last().unwrap().ts_ms;
    assert!(first < from + 3 * MINUTE_MS && last > to - 3 * MINUTE_MS);

    // A narrow selection with an elapsed bound is read exactly.
    let page = s
        .query_transactions(&TxFilter {
            min_ms: Some(3000.0),
            ..all(from, to, 1000)
        })
        .unwrap();
    assert!(!page.sampled);
    assert_eq!(page.transactions.len(), 200);
    // Errors only: all of them, no sampling.
    let page = s
        .query_transactions(&TxFilter {
            errors_only: true,
            ..all(from, to, 1000)
        })
        .unwrap();
    assert_eq!((page.transactions.len(), page.sampled), (200, false));
}

#[test]
fn traces_by_time_window_and_the_caller_linked_by_its_full_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(dir.path(), StoreOptions::default());
    let trace = vec![0xaa; 16];
    let mut caller = rec(1, "front", MIDNIGHT + 500, 300);
    caller.trace = Some(TraceContext {
        trace_id: trace.clone(),
        ..Default::default()
    });
    let mut callee = rec(2, "api", MIDNIGHT - 100, 200);
    callee.trace = Some(TraceContext {
        trace_id: trace.clone(),
        parent_record_id: caller.id.clone(),
        ..Default::default()
    });
    let others: Vec<_> = (10..200)
        .map(|i| rec(i, "api", MIDNIGHT - 60_000 + i as i64 * 600, 5))
        .collect();
    s.insert_records(&others, "h").unwrap();
    // The callee arrives first, from another host's agent.
    s.insert_records(&[callee.clone()], "h2").unwrap();
    s.insert_records(&[caller.clone()], "h").unwrap();
    let page = s
        .query_transactions(&TxFilter {
            trace_id: Some(trace),
            ..all(MIDNIGHT - 60_000, MIDNIGHT + 60_000, 100)
        })
        .unwrap();
    let apps: Vec<&str> = page.transactions.iter().map(|t| t.app.as_str()).collect();
    assert_eq!(apps, ["api", "front"], "both sides of midnight");
    let d = s
        .transaction_at(&TxId::parse(&page.transactions[0].id).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(d.parent_id, Some(page.transactions[1].id.clone()));
    // The bare record id is looked for near now only.
    assert!(s.transaction(&caller.id).unwrap().is_none());
}

/// A callee that got only a `traceparent` (no `sonde=` record id) is linked
/// to the transaction of its trace whose outgoing call has that span id —
/// not to another transaction of the same trace.
#[test]
fn the_caller_is_found_by_trace_and_span_id_without_a_record_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(dir.path(), StoreOptions::default());
    let trace = vec![0xbb; 16];
    let call = |span_id: u8| Span {
        kind: SpanKind::External as i32,
        start_ns: 5_000,
        duration_ns: 1_000_000,
        url: "http://api/items".into(),
        status: 200,
        span_id: vec![span_id; 8],
        ..Default::default()
    };
    // Two transactions of the trace, each with an outgoing call; the
    // callee was called by the second.
    let mut other = rec(1, "front", MIDNIGHT + 2_000, 300);
    other.trace = Some(TraceContext {
        trace_id: trace.clone(),
        ..Default::default()
    });
    other.spans.push(call(0x11));
    let mut caller = rec(2, "front", MIDNIGHT + 2_500, 300);
    caller.trace = other.trace.clone();
    caller.spans.push(call(0x22));
    let mut callee = rec(3, "api", MIDNIGHT + 2_400, 100);
    callee.trace = Some(TraceContext {
        trace_id: trace.clone(),
        parent_span_id: vec![0x22; 8],
        ..Default::default()
    });
    let noise: Vec<_> = (10..100)
        .map(|i| rec(i, "api", MIDNIGHT + i as i64 * 50, 5))
        .collect();
    s.insert_records(&noise, "h").unwrap();
    s.insert_records(&[other, callee.clone(), caller.clone()], "h")
        .unwrap();
    let id = |r: &RequestRecord| TxId::format(end_ms(r), &r.id);
    let d = s
        .transaction_at(&TxId::parse(&id(&callee)).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(d.parent_id, Some(id(&caller)));
    // A span id no transaction made: no caller.
    let mut orphan = rec(4, "api", MIDNIGHT + 2_450, 100);
    orphan.trace = Some(TraceContext {
        trace_id: trace,
        parent_span_id: vec![0x33; 8],
        ..Default::default()
    });
    s.insert_records(&[orphan.clone()], "h").unwrap();
    let d = s
        .transaction_at(&TxId::parse(&id(&orphan)).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(d.parent_id, None);
}

#[test]
fn endpoint_rules_name_records_as_they_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let naming = EndpointNaming::new(&[(
        r"^/index\.php\?(?:.*&)?r=([^&]*)".into(),
        "/index.php?r=$1".into(),
        None,
    )])
    .unwrap();
    let s = open_with(
        dir.path(),
        StoreOptions {
            naming,
            ..StoreOptions::default()
        },
    );
    let mut a = rec(1, "yii", MIDNIGHT, 5);
    a.url = "/index.php?lang=ko&r=site/login".into();
    a.endpoint = "/index.php".into();
    let mut b = rec(2, "yii", MIDNIGHT + 1, 5);
    b.url = "/users/42".into();
    let mut c = rec(3, "yii", MIDNIGHT + 2, 5);
    c.url = "/users/43?x=1".into();
    s.insert_records(&[a, b, c], "h").unwrap();
    let eps = s
        .endpoints(&RollupRange {
            from_ms: MIDNIGHT - MINUTE_MS,
            to_ms: MIDNIGHT + MINUTE_MS,
            app: None,
        })
        .unwrap();
    let mut names: Vec<(String, u64)> = eps.into_iter().map(|e| (e.endpoint, e.calls)).collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("/index.php?r=site/login".to_owned(), 1),
            ("/users/{num}".to_owned(), 2)
        ]
    );
}

/// The detail of `n` (stored by [`rec`]) ending at `end_ms`, by its full id.
fn detail_of(s: &SqliteStore, n: u64, end_ms: i64) -> Option<TxDetail> {
    let id = rec(n, "shop", end_ms, 5).id;
    s.transaction_at(&TxId::parse(&TxId::format(end_ms, &id)).unwrap())
        .unwrap()
}

#[test]
fn details_come_back_from_blocks_of_many_batches() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(dir.path(), StoreOptions::default());
    let end = |n: u64| MIDNIGHT + 1000 + n as i64 % 7_000;
    // One batch of several blocks, a small one, and a replay of both.
    let big: Vec<_> = (0..700).map(|n| rec(n, "shop", end(n), 5)).collect();
    let small: Vec<_> = (700..705).map(|n| rec(n, "shop", end(n), 5)).collect();
    assert_eq!(s.insert_records(&big, "h").unwrap().stored, 700);
    assert_eq!(s.insert_records(&small, "h").unwrap().stored, 5);
    assert_eq!(s.insert_records(&big, "h").unwrap().duplicates, 700);
    for n in [0, 1, 255, 256, 257, 511, 512, 699, 700, 704] {
        let d = detail_of(&s, n, end(n)).unwrap_or_else(|| panic!("record {n}"));
        assert_eq!(d.url, format!("/items/{n}"), "record {n}");
        assert_eq!(d.spans.len(), 1, "record {n}");
        assert_eq!(
            d.spans[0].statement.as_deref(),
            Some("SELECT * FROM items WHERE id = ?")
        );
    }
    assert!(detail_of(&s, 705, end(705)).is_none());
    let ids: Vec<TxId> = [3u64, 600, 2, 705, 701]
        .iter()
        .map(|&n| TxId::parse(&TxId::format(end(n), &rec(n, "shop", end(n), 5).id)).unwrap())
        .collect();
    assert_eq!(
        s.transaction_urls(&ids).unwrap(),
        [
            Some("/items/3".to_owned()),
            Some("/items/600".to_owned()),
            Some("/items/2".to_owned()),
            None,
            Some("/items/701".to_owned()),
        ]
    );
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let blocks: Vec<(i64, i64)> = conn
        .prepare(&format!(
            "SELECT seq, last FROM {} ORDER BY seq",
            blk_table(day_of(MIDNIGHT))
        ))
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(blocks, [(1, 256), (257, 512), (513, 700), (701, 705)]);
}

#[test]
fn a_day_written_before_blocks_is_read_and_appended_to_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(dir.path(), StoreOptions::default());
    s.insert_records(&[rec(1, "shop", MIDNIGHT + 10, 5)], "h")
        .unwrap();
    drop(s);
    // Turn the day into the earlier layout: one compact record per row,
    // the URL in the summary row.
    let day = day_of(MIDNIGHT);
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let (seq, block): (i64, Vec<u8>) = conn
        .query_row(
            &format!("SELECT seq, block FROM {}", blk_table(day)),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let bytes = zstd::decode_all(&block[..]).unwrap();
    let mut r = crate::storage::codec::Reader::new(&bytes);
    assert_eq!(r.varint().unwrap(), 0);
    let blob = r.bytes().unwrap().to_vec();
    conn.execute_batch(&format!(
        "CREATE TABLE {} (seq INTEGER PRIMARY KEY, record BLOB NOT NULL);
         DROP TABLE {};
         UPDATE {} SET url = '/from-the-row';",
        rec_table(day),
        blk_table(day),
        tx_table(day)
    ))
    .unwrap();
    conn.execute(
        &format!(
            "INSERT INTO {} (seq, record) VALUES (?1, ?2)",
            rec_table(day)
        ),
        params![seq, blob],
    )
    .unwrap();
    drop(conn);

    let s = open_with(dir.path(), StoreOptions::default());
    // The blob written with blocks carries its URL; one without gets the row's.
    assert_eq!(detail_of(&s, 1, MIDNIGHT + 10).unwrap().url, "/items/1");
    let one = TxId::parse(&TxId::format(MIDNIGHT + 10, &rec(1, "shop", 0, 5).id)).unwrap();
    assert_eq!(
        s.transaction_urls(std::slice::from_ref(&one)).unwrap(),
        [Some("/items/1".to_owned())]
    );
    s.insert_records(&[rec(2, "shop", MIDNIGHT + 20, 5)], "h")
        .unwrap();
    let d = detail_of(&s, 2, MIDNIGHT + 20).unwrap();
    assert_eq!((d.url.as_str(), d.spans.len()), ("/items/2", 1));
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let rows: i64 = conn
        .query_row(
            &format!("SELECT count(*) FROM {}", rec_table(day)),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 2, "appended to the day's own layout");
    let blk: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = ?1",
            [blk_table(day)],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(blk, 0);
}
