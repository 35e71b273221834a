//! Measures the SQLite layouts considered for raw transactions (docs/collector.md
//! "Partitions"): which indexes a day table carries, and what dropping a day
//! costs with one table per day in one file (with and without
//! auto_vacuum=INCREMENTAL) or one attached file per day.
//!
//!   cargo bench -p sonde-collector --bench storage_layouts -- [ROWS]
//!
//! `ONLY_KEYS=1` leaves out the slow random-key layouts.
use std::path::Path;
use std::time::Instant;

use rusqlite::{params, Connection};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn open(path: &Path, pre: &str) -> Connection {
    let c = Connection::open(path).unwrap();
    c.execute_batch(pre).unwrap();
    c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    c.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA cache_size = -65536;")
        .unwrap();
    c
}

fn table(c: &Connection, schema: &str, name: &str, idx: &[&str]) {
    c.execute_batch(&format!(
        "CREATE TABLE {schema}{name} (seq INTEGER PRIMARY KEY, record_id BLOB NOT NULL, \
         end_ms INTEGER NOT NULL, elapsed_ms REAL NOT NULL, app TEXT, host TEXT, endpoint TEXT, \
         status INTEGER, error INTEGER, trace_id BLOB, record BLOB NOT NULL);"
    ))
    .unwrap();
    for (i, cols) in idx.iter().enumerate() {
        let (uniq, cols) = match cols.strip_prefix('!') {
            Some(c) => ("UNIQUE ", c),
            None => ("", *cols),
        };
        c.execute_batch(&format!(
            "CREATE {uniq}INDEX {schema}{name}_i{i} ON {name} ({cols});"
        ))
        .unwrap();
    }
}

/// Inserts `rows` rows in 5000-row transactions; rows per second.
fn fill(c: &mut Connection, name: &str, rows: u64, t0: i64, rng: &mut Rng) -> f64 {
    let blob: Vec<u8> = (0..150).map(|i| (i * 7) as u8).collect();
    let start = Instant::now();
    let mut done = 0;
    while done < rows {
        let tx = c.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached(&format!(
                    "INSERT INTO {name} (record_id, end_ms, elapsed_ms, app, host, endpoint, status, \
                     error, trace_id, record) VALUES (?1, ?2, 12.5, 'fanapp', 'web-1', '/api/x', 200, 0, ?3, ?4)"
                ))
                .unwrap();
            for _ in 0..5000.min(rows - done) {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&rng.next().to_le_bytes());
                id[8..].copy_from_slice(&rng.next().to_le_bytes());
                let trace = rng.next().is_multiple_of(2).then_some(id);
                st.execute(params![
                    &id[..],
                    t0 + done as i64 / 4,
                    trace.as_ref().map(|t| &t[..]),
                    blob
                ])
                .unwrap();
                done += 1;
            }
        }
        tx.commit().unwrap();
    }
    rows as f64 / start.elapsed().as_secs_f64()
}

fn size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn main() {
    // `cargo bench` passes `--bench` first.
    let rows: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    println!("{rows} rows of ~220 bytes per layout, 5000-row transactions");
    let mut rng = Rng(42);
    let only_keys = std::env::var_os("ONLY_KEYS").is_some();
    for (label, idx) in [
        ("no index", &[][..]),
        ("UNIQUE(record_id)", &["!record_id"][..]),
        ("UNIQUE(record_id) + end_ms", &["!record_id", "end_ms"][..]),
        ("UNIQUE(end_ms, record_id)", &["!end_ms, record_id"][..]),
        (
            "UNIQUE(end_ms, first 8 bytes of record_id)",
            &["!end_ms, record_id"][..],
        ),
        ("end_ms", &["end_ms"][..]),
        (
            "UNIQUE(record_id) + end_ms + trace_id (50 % traced)",
            &["!record_id", "end_ms", "trace_id"][..],
        ),
    ] {
        if only_keys && label.contains("UNIQUE(record_id)") {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut c = open(&dir.path().join("a.db"), "");
        let name = if label.contains("first 8") {
            "tx_hi"
        } else {
            "tx"
        };
        table(&c, "", name, idx);
        let rate = fill(&mut c, name, rows, 0, &mut rng);
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        println!(
            "  {label:55} {rate:>9.0} rows/s  {:>5.0} bytes/row",
            size(dir.path()) as f64 / rows as f64
        );
    }

    println!(
        "dropping the oldest of three days ({} rows each):",
        rows / 3
    );
    for (label, pre) in [
        ("tables in one file, auto_vacuum NONE", ""),
        (
            "tables in one file, auto_vacuum INCREMENTAL",
            "PRAGMA auto_vacuum = INCREMENTAL;",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = open(&dir.path().join("a.db"), pre);
        let mut rate = 0.0;
        for d in 0..3 {
            table(&c, "", &format!("tx_{d}"), &["!record_id"]);
            rate += fill(
                &mut c,
                &format!("tx_{d}"),
                rows / 3,
                d * 86_400_000,
                &mut rng,
            ) / 3.0;
        }
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        let before = size(dir.path());
        let t = Instant::now();
        c.execute_batch("DROP TABLE tx_0;").unwrap();
        let drop_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        if !pre.is_empty() {
            let mut st = c.prepare("PRAGMA incremental_vacuum").unwrap();
            let mut rows = st.query([]).unwrap();
            while rows.next().unwrap().is_some() {}
        }
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        let vac_s = t.elapsed().as_secs_f64();
        let free: i64 = c
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .unwrap();
        println!(
            "  {label:45} ingest {rate:>8.0} rows/s; DROP {drop_s:.2} s, vacuum+checkpoint {vac_s:.2} s; file {} → {} MB, {} free pages",
            before >> 20,
            size(dir.path()) >> 20,
            free
        );
    }
    {
        let dir = tempfile::tempdir().unwrap();
        let mut c = open(&dir.path().join("main.db"), "");
        let mut rate = 0.0;
        for d in 0..3 {
            c.execute_batch(&format!(
                "ATTACH '{}' AS d{d};",
                dir.path().join(format!("day{d}.db")).display()
            ))
            .unwrap();
            c.query_row(&format!("PRAGMA d{d}.journal_mode = WAL"), [], |_| Ok(()))
                .unwrap();
            table(&c, &format!("d{d}."), "tx", &["!record_id"]);
            rate += fill(
                &mut c,
                &format!("d{d}.tx"),
                rows / 3,
                d * 86_400_000,
                &mut rng,
            ) / 3.0;
        }
        let before = size(dir.path());
        let t = Instant::now();
        c.execute_batch("DETACH d0;").unwrap();
        for f in ["day0.db", "day0.db-wal", "day0.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        println!(
            "  {:45} ingest {rate:>8.0} rows/s; DETACH+unlink {:.3} s; files {} → {} MB (not atomic across files in WAL mode)",
            "one attached file per day",
            t.elapsed().as_secs_f64(),
            before >> 20,
            size(dir.path()) >> 20
        );
    }
}
