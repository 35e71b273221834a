//! Rollups: what every backend keeps pre-aggregated as records arrive, and
//! the shapes the rollup queries answer. Backend-independent: a backend
//! feeds each newly stored record of a batch to a [`BatchRollup`] (never a
//! duplicate — that is what keeps rollups exactly-once), then writes the
//! batch's aggregates with one upsert per bucket key, in the same
//! transaction as the records.
//!
//! Buckets are keyed by the transaction's end time (`ts_ms`), aligned to
//! the epoch (UTC): per second and minute per (app, host); per minute and
//! hour per (app, endpoint) with a latency [`Sketch`]; per minute and hour
//! per (app, endpoint, statement) for SQL spans; per minute and hour per
//! (app, endpoint, normalised URL) for external calls, with a latency
//! [`Sketch`]; per hour per app a [`Hll`] of visitors. Only the finest level is aggregated per record; the
//! coarser one is folded from it per batch.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::Serialize;
use sonde_core::endpoint::EndpointNamer;
use sonde_core::hll::Hll;
use sonde_core::sketch::Sketch;
use sonde_proto::v1::{RequestRecord, SpanKind};

use super::TxRow;

pub const SECOND_MS: i64 = 1_000;
pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;

/// Start of the bucket of width `width_ms` holding `ts_ms`.
pub fn bucket(ts_ms: i64, width_ms: i64) -> i64 {
    ts_ms.div_euclid(width_ms) * width_ms
}

/// The smallest multiple of `width_ms` at or after `ts_ms`.
pub fn bucket_ceil(ts_ms: i64, width_ms: i64) -> i64 {
    let b = bucket(ts_ms, width_ms);
    if b == ts_ms {
        b
    } else {
        b.saturating_add(width_ms)
    }
}

/// The slow-response thresholds ("bad responses"): a transaction whose
/// elapsed time is at or above its app's threshold is a bad response.
/// Applied when data arrives; changing it does not restate stored rollups.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowThresholds {
    /// For apps without their own, ms.
    pub default_ms: u64,
    /// Per app, ms.
    pub per_app: HashMap<String, u64>,
}

impl Default for SlowThresholds {
    fn default() -> Self {
        SlowThresholds {
            default_ms: 3000,
            per_app: HashMap::new(),
        }
    }
}

impl SlowThresholds {
    /// The threshold of `app`, ns.
    pub fn ns_for(&self, app: &str) -> u64 {
        self.per_app
            .get(app)
            .copied()
            .unwrap_or(self.default_ms)
            .saturating_mul(1_000_000)
    }
}

/// Per (app, endpoint) per minute or hour.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointAgg {
    pub calls: u64,
    pub failures: u64,
    pub bad: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    pub sql_ns: u64,
    pub fetch_ns: u64,
    pub external_ns: u64,
    /// SQL statements executed.
    pub sql_calls: u64,
    /// External calls made.
    pub external_calls: u64,
    /// Elapsed times, ns.
    pub hist: Sketch,
}

impl EndpointAgg {
    fn merge(&mut self, o: &EndpointAgg) {
        self.sql_calls += o.sql_calls;
        self.external_calls += o.external_calls;
        self.calls += o.calls;
        self.failures += o.failures;
        self.bad += o.bad;
        self.sum_ns = self.sum_ns.saturating_add(o.sum_ns);
        self.max_ns = self.max_ns.max(o.max_ns);
        self.sql_ns = self.sql_ns.saturating_add(o.sql_ns);
        self.fetch_ns = self.fetch_ns.saturating_add(o.fetch_ns);
        self.external_ns = self.external_ns.saturating_add(o.external_ns);
        self.hist.merge(&o.hist);
    }
}

/// Counts, failures, sum and max: per (app, host) per second or minute,
/// and per SQL statement per minute or hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountAgg {
    pub calls: u64,
    pub failures: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
}

impl CountAgg {
    fn add(&mut self, ns: u64, failed: bool) {
        self.calls += 1;
        self.failures += u64::from(failed);
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    fn merge(&mut self, o: &CountAgg) {
        self.calls += o.calls;
        self.failures += o.failures;
        self.sum_ns = self.sum_ns.saturating_add(o.sum_ns);
        self.max_ns = self.max_ns.max(o.max_ns);
    }
}

/// Per (app, endpoint, external URL) per minute or hour: calls, failed
/// calls (HTTP status ≥ 400 or an error), sum and max, and a latency
/// sketch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExternalAgg {
    pub calls: u64,
    pub failures: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    /// Call durations, ns.
    pub hist: Sketch,
}

impl ExternalAgg {
    fn add(&mut self, ns: u64, failed: bool) {
        self.calls += 1;
        self.failures += u64::from(failed);
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
        self.hist.add(ns);
    }

    pub fn merge(&mut self, o: &ExternalAgg) {
        self.calls += o.calls;
        self.failures += o.failures;
        self.sum_ns = self.sum_ns.saturating_add(o.sum_ns);
        self.max_ns = self.max_ns.max(o.max_ns);
        self.hist.merge(&o.hist);
    }
}

/// The name external calls are grouped under: scheme, host and port as
/// called (credentials dropped), then the path named as endpoints are
/// (identifier-like segments replaced), without query or fragment:
/// `https://api.example/v1/items/7?k=…` → `https://api.example/v1/items/{num}`.
pub fn external_key(namer: &EndpointNamer, url: &str) -> String {
    let url = url.split('#').next().unwrap_or("");
    let (origin, rest) = match url.find("://") {
        Some(i) => {
            let after = &url[i + 3..];
            let end = after.find(['/', '?']).unwrap_or(after.len());
            let authority = &after[..end];
            let host = authority.rsplit('@').next().unwrap_or(authority);
            (format!("{}{host}", &url[..i + 3]), &after[end..])
        }
        None => (String::new(), url),
    };
    let path = namer.name(rest);
    origin + &path
}

/// A fast non-keyed hasher (FxHash) for the per-batch maps: their keys
/// come from agents, but a map lives for one batch only, so flooding it
/// costs the sender no more than sending the batch.
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// A map keyed by bucket and texts, for one batch.
pub type BatchMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// (bucket start ms, app, endpoint)
pub type EndpointKey<'a> = (i64, &'a str, &'a str);
/// (bucket start ms, app, host)
pub type HostKey<'a> = (i64, &'a str, &'a str);
/// (bucket start ms, app, endpoint, statement)
pub type SqlKey<'a> = (i64, &'a str, &'a str, &'a str);
/// (hour start ms, app)
pub type VisitorKey<'a> = (i64, &'a str);
/// (bucket start ms, app, endpoint, external URL as [`external_key`] names it)
pub type ExternalKey<'a> = (i64, &'a str, &'a str, String);

/// One batch's rollup contributions, borrowed from its records.
#[derive(Debug, Default)]
pub struct BatchRollup<'a> {
    pub endpoint_minute: BatchMap<EndpointKey<'a>, EndpointAgg>,
    pub host_second: BatchMap<HostKey<'a>, CountAgg>,
    pub sql_minute: BatchMap<SqlKey<'a>, CountAgg>,
    pub visitors_hour: BatchMap<VisitorKey<'a>, Hll>,
    pub external_minute: BatchMap<ExternalKey<'a>, ExternalAgg>,
}

/// The coarser level, folded from a [`BatchRollup`].
#[derive(Debug, Default)]
pub struct Coarse<'a> {
    pub endpoint_hour: BatchMap<EndpointKey<'a>, EndpointAgg>,
    pub host_minute: BatchMap<HostKey<'a>, CountAgg>,
    pub sql_hour: BatchMap<SqlKey<'a>, CountAgg>,
    pub external_hour: BatchMap<ExternalKey<'a>, ExternalAgg>,
}

impl<'a> BatchRollup<'a> {
    /// Adds a newly stored record (never a duplicate).
    pub fn add(
        &mut self,
        row: &'a TxRow<'a>,
        record: &'a RequestRecord,
        slow: &SlowThresholds,
        namer: &EndpointNamer,
    ) {
        let ns = record.wall_ns;
        let failed = row.error;
        let minute = bucket(row.end_ms, MINUTE_MS);
        let endpoint: &'a str = &row.endpoint;

        let ep = self
            .endpoint_minute
            .entry((minute, row.app, endpoint))
            .or_default();
        ep.calls += 1;
        ep.failures += u64::from(failed);
        ep.bad += u64::from(ns >= slow.ns_for(row.app));
        ep.sum_ns = ep.sum_ns.saturating_add(ns);
        ep.max_ns = ep.max_ns.max(ns);
        ep.hist.add(ns);
        for span in &record.spans {
            let d = span.duration_ns;
            match span.kind() {
                SpanKind::Sql => {
                    ep.sql_ns = ep.sql_ns.saturating_add(d);
                    ep.sql_calls += 1;
                    if !span.statement.is_empty() {
                        self.sql_minute
                            .entry((minute, row.app, endpoint, &span.statement))
                            .or_default()
                            .add(d, !span.error.is_empty());
                    }
                }
                SpanKind::Fetch => ep.fetch_ns = ep.fetch_ns.saturating_add(d),
                SpanKind::External => {
                    ep.external_ns = ep.external_ns.saturating_add(d);
                    ep.external_calls += 1;
                    self.external_minute
                        .entry((minute, row.app, endpoint, external_key(namer, &span.url)))
                        .or_default()
                        .add(d, span.status >= 400 || !span.error.is_empty());
                }
                SpanKind::Cache | SpanKind::Error | SpanKind::Unspecified => {}
            }
        }

        self.host_second
            .entry((bucket(row.end_ms, SECOND_MS), row.app, row.host))
            .or_default()
            .add(ns, failed);

        let visitor = if record.visitor_id.is_empty() {
            &record.client_ip
        } else {
            &record.visitor_id
        };
        if !visitor.is_empty() {
            self.visitors_hour
                .entry((bucket(row.end_ms, HOUR_MS), row.app))
                .or_default()
                .add(visitor.as_bytes());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.endpoint_minute.is_empty()
    }

    /// The hour, minute and hour levels folded from this batch.
    pub fn coarse(&self) -> Coarse<'a> {
        let mut c = Coarse::default();
        for ((t, app, ep), agg) in &self.endpoint_minute {
            c.endpoint_hour
                .entry((bucket(*t, HOUR_MS), app, ep))
                .or_default()
                .merge(agg);
        }
        for ((t, app, host), agg) in &self.host_second {
            c.host_minute
                .entry((bucket(*t, MINUTE_MS), app, host))
                .or_default()
                .merge(agg);
        }
        for ((t, app, ep, st), agg) in &self.sql_minute {
            c.sql_hour
                .entry((bucket(*t, HOUR_MS), app, ep, st))
                .or_default()
                .merge(agg);
        }
        for ((t, app, ep, url), agg) in &self.external_minute {
            c.external_hour
                .entry((bucket(*t, HOUR_MS), app, ep, url.clone()))
                .or_default()
                .merge(agg);
        }
        c
    }
}

/// A rollup query's range: buckets whose start lies in `[from_ms, to_ms)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupRange {
    pub from_ms: i64,
    pub to_ms: i64,
    pub app: Option<String>,
}

impl RollupRange {
    /// How the range splits between resolutions: minute buckets in
    /// `[a, b)`, hour buckets in `[b, c)` and minute buckets in `[c, d)`.
    /// Whole hours come from the hour rollup, the edges from the minute
    /// rollup, so a long range reads few rows and stays exact to the minute.
    pub fn split(&self) -> [i64; 4] {
        let (from, to) = (self.from_ms, self.to_ms.max(self.from_ms));
        let (h1, h2) = (bucket_ceil(from, HOUR_MS), bucket(to, HOUR_MS));
        if h1 < h2 {
            [from, h1, h2, to]
        } else {
            [from, to, to, to]
        }
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn per(total_ns: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        ms(total_ns) / n as f64
    }
}

/// One row of `GET /api/v1/endpoints`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointStats {
    pub app: String,
    pub endpoint: String,
    pub calls: u64,
    /// Failed transactions (CONTRACT.md's `error` rule).
    pub failures: u64,
    /// Transactions at or above the app's slow threshold.
    pub bad_responses: u64,
    pub avg_ms: f64,
    pub max_ms: f64,
    pub total_ms: f64,
    pub sql_ms_per_tx: f64,
    pub fetch_ms_per_tx: f64,
    pub external_ms_per_tx: f64,
    /// SQL statements executed (drill down: `/api/v1/sql?endpoint=`).
    pub sql_calls: u64,
    /// External calls made (drill down: `/api/v1/externals?endpoint=`).
    pub external_calls: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

impl EndpointStats {
    pub fn new(app: String, endpoint: String, a: &EndpointAgg) -> Self {
        let q = |q: f64| a.hist.quantile(q).map_or(0.0, ms);
        EndpointStats {
            app,
            endpoint,
            calls: a.calls,
            failures: a.failures,
            bad_responses: a.bad,
            avg_ms: per(a.sum_ns, a.calls),
            max_ms: ms(a.max_ns),
            total_ms: ms(a.sum_ns),
            sql_ms_per_tx: per(a.sql_ns, a.calls),
            fetch_ms_per_tx: per(a.fetch_ns, a.calls),
            external_ms_per_tx: per(a.external_ns, a.calls),
            sql_calls: a.sql_calls,
            external_calls: a.external_calls,
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
        }
    }
}

/// One row of `GET /api/v1/sql`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SqlStats {
    pub statement: String,
    pub calls: u64,
    /// Executions that reported an error.
    pub failures: u64,
    pub avg_ms: f64,
    pub max_ms: f64,
    pub total_ms: f64,
}

impl SqlStats {
    pub fn new(statement: String, a: &CountAgg) -> Self {
        SqlStats {
            statement,
            calls: a.calls,
            failures: a.failures,
            avg_ms: per(a.sum_ns, a.calls),
            max_ms: ms(a.max_ns),
            total_ms: ms(a.sum_ns),
        }
    }
}

/// One row of `GET /api/v1/externals`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExternalStats {
    /// As [`external_key`] names it.
    pub url: String,
    pub calls: u64,
    /// Calls answered with HTTP status ≥ 400 or failed with an error.
    pub failures: u64,
    pub avg_ms: f64,
    pub max_ms: f64,
    pub total_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

impl ExternalStats {
    pub fn new(url: String, a: &ExternalAgg) -> Self {
        let q = |q: f64| a.hist.quantile(q).map_or(0.0, ms);
        ExternalStats {
            url,
            calls: a.calls,
            failures: a.failures,
            avg_ms: per(a.sum_ns, a.calls),
            max_ms: ms(a.max_ns),
            total_ms: ms(a.sum_ns),
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
        }
    }
}

/// One time step of a series: the step's totals over apps (or the one
/// app) and hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Step {
    /// Start of the step, epoch ms.
    pub ts_ms: i64,
    pub calls: u64,
    pub failures: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    /// Most transactions ending within one second of the step (0 unless
    /// asked for).
    pub peak_tps: u64,
}

impl Step {
    pub fn avg_ms(&self) -> f64 {
        per(self.sum_ns, self.calls)
    }
}

/// Distinct visitors of a range and of each of its steps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Visitors {
    pub total: u64,
    pub per_step: Vec<u64>,
}

/// One host-metrics sample as stored and served.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostPoint {
    pub ts_ms: i64,
    pub cpu_percent: f64,
    pub load1: f64,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub processes: u32,
    pub db_connections: u32,
    /// Sums over the host's php-fpm pools.
    pub fpm_active: u32,
    pub fpm_idle: u32,
    pub fpm_listen_queue: u32,
}

/// Host metrics of one host, oldest first.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostSeries {
    pub host: String,
    pub points: Vec<HostPoint>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::tests::record;
    use sonde_core::endpoint::EndpointNamer;
    use sonde_proto::v1::Span;

    #[test]
    fn bucket_arithmetic() {
        assert_eq!(bucket(61_001, MINUTE_MS), 60_000);
        assert_eq!(bucket(-1, MINUTE_MS), -60_000);
        assert_eq!(bucket_ceil(60_000, MINUTE_MS), 60_000);
        assert_eq!(bucket_ceil(60_001, MINUTE_MS), 120_000);
        let r = |from_ms, to_ms| RollupRange {
            from_ms,
            to_ms,
            app: None,
        };
        assert_eq!(
            r(HOUR_MS - 5, 3 * HOUR_MS + 7).split(),
            [HOUR_MS - 5, HOUR_MS, 3 * HOUR_MS, 3 * HOUR_MS + 7]
        );
        assert_eq!(r(0, 2 * HOUR_MS).split(), [0, 0, 2 * HOUR_MS, 2 * HOUR_MS]);
        assert_eq!(
            r(10, HOUR_MS + 10).split(),
            [10, HOUR_MS + 10, HOUR_MS + 10, HOUR_MS + 10]
        );
        assert_eq!(r(50, 10).split(), [50, 50, 50, 50]);
    }

    #[test]
    fn thresholds() {
        let mut t = SlowThresholds::default();
        assert_eq!(t.ns_for("any"), 3_000_000_000);
        t.per_app.insert("shop".into(), 500);
        assert_eq!(t.ns_for("shop"), 500_000_000);
    }

    #[test]
    fn aggregates_and_folds() {
        let namer = EndpointNamer::default();
        let naming = crate::storage::naming::EndpointNaming::default();
        let mut recs = vec![
            record(1, 60_500, 10),
            record(2, 61_000, 3000),
            record(3, 120_000, 20),
        ];
        recs[1].status = 500;
        recs[1].visitor_id = "v1".into();
        recs[2].client_ip = "10.0.0.1".into();
        recs[0].spans = vec![
            Span {
                kind: SpanKind::Sql as i32,
                duration_ns: 2_000_000,
                statement: "SELECT 1".into(),
                ..Default::default()
            },
            Span {
                kind: SpanKind::Sql as i32,
                duration_ns: 1_000_000,
                statement: "SELECT 1".into(),
                error: "gone".into(),
                ..Default::default()
            },
            Span {
                kind: SpanKind::External as i32,
                duration_ns: 5_000_000,
                url: "https://api.example/v1/items/7?k=[redacted]".into(),
                status: 503,
                ..Default::default()
            },
            Span {
                kind: SpanKind::External as i32,
                duration_ns: 1_000_000,
                url: "https://api.example/v1/items/8".into(),
                status: 200,
                ..Default::default()
            },
        ];
        let rows: Vec<_> = recs
            .iter()
            .map(|r| TxRow::from_record(r, "web-1", &naming).unwrap())
            .collect();
        let mut b = BatchRollup::default();
        for (row, rec) in rows.iter().zip(&recs) {
            b.add(row, rec, &SlowThresholds::default(), &namer);
        }
        let ep = "/users/{num}";
        let m1 = &b.endpoint_minute[&(60_000, "shop", ep)];
        assert_eq!((m1.calls, m1.failures, m1.bad), (2, 1, 1));
        assert_eq!((m1.sum_ns, m1.max_ns), (3_010_000_000, 3_000_000_000));
        assert_eq!((m1.sql_ns, m1.external_ns), (3_000_000, 6_000_000));
        assert_eq!((m1.sql_calls, m1.external_calls), (2, 2));
        let x = &b.external_minute[&(
            60_000,
            "shop",
            ep,
            "https://api.example/v1/items/{num}".to_owned(),
        )];
        assert_eq!((x.calls, x.failures, x.sum_ns), (2, 1, 6_000_000));
        assert_eq!((x.max_ns, x.hist.count()), (5_000_000, 2));
        assert_eq!(m1.hist.count(), 2);
        let s = b.sql_minute[&(60_000, "shop", ep, "SELECT 1")];
        assert_eq!((s.calls, s.failures, s.sum_ns), (2, 1, 3_000_000));
        assert_eq!(b.host_second.len(), 3);
        assert_eq!(b.visitors_hour[&(0, "shop")].count(), 2);

        let c = b.coarse();
        let h = &c.endpoint_hour[&(0, "shop", ep)];
        assert_eq!((h.calls, h.failures, h.bad, h.hist.count()), (3, 1, 1, 3));
        assert_eq!(c.host_minute[&(60_000, "shop", "web-1")].calls, 2);
        assert_eq!(c.host_minute[&(120_000, "shop", "web-1")].calls, 1);
        assert_eq!(c.sql_hour[&(0, "shop", ep, "SELECT 1")].calls, 2);
        assert_eq!(c.external_hour.len(), 1);
    }

    #[test]
    fn external_keys() {
        let n = EndpointNamer::default();
        for (url, key) in [
            (
                "https://api.example/v1/items/7?k=1#f",
                "https://api.example/v1/items/{num}",
            ),
            ("http://u:p@h:8080/x", "http://h:8080/x"),
            ("https://api.example", "https://api.example/"),
            ("https://api.example?q=1", "https://api.example/"),
            ("/relative/12", "/relative/{num}"),
            ("", "/"),
        ] {
            assert_eq!(external_key(&n, url), key, "{url}");
        }
    }
}
