//! Live statistics behind the dashboard stream (`GET /api/v1/live`): the
//! last minute of finished transactions per second and per (app, host,
//! endpoint), the visitors of the last minutes, and the latest host metrics
//! of each host — in memory only, never stored (the rollups are the durable
//! record). Ingest feeds it after a batch is committed; the API reads it.
//!
//! It must never hold ingest up: one short lock per batch, and memory
//! bounded by [`WINDOW_S`] seconds × [`MAX_KEYS_PER_SECOND`] small
//! histograms plus [`VISITOR_MINUTES`] HyperLogLogs per app.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use sonde_core::hll::Hll;
use sonde_proto::v1::{HostMetrics, RequestRecord, SpanKind};

use crate::storage::rollup::SlowThresholds;
use crate::storage::EndpointNaming;
use crate::storage::{end_ms, is_failure};

/// Seconds of transactions kept (the endpoint board's window and the
/// dashboard's per-second history).
pub const WINDOW_S: i64 = 60;
/// Concurrent users: distinct visitors in this many minutes.
pub const VISITOR_MINUTES: i64 = 5;
/// Distinct (app, host, endpoint) keys per second; more are folded into one
/// `(other)` endpoint per app and host.
pub const MAX_KEYS_PER_SECOND: usize = 2000;
/// A host whose latest metrics are older than this is left out.
pub const HOST_STALE_MS: i64 = 60_000;
/// Endpoint name of the keys folded when a second has too many.
pub const OTHER_ENDPOINT: &str = "(other)";

/// Buckets of [`LiveHist`]: log-spaced from 0.1 ms to 100 s.
const HIST_BUCKETS: usize = 160;
const HIST_MIN_MS: f64 = 0.1;
/// Each bucket's upper bound is this times its lower bound (1e6^(1/160)),
/// so a quantile is within ±4.4 % of the true value.
const HIST_RATIO_LN: f64 = 0.086_346_6;

/// A small fixed histogram of elapsed times, mergeable by addition. The
/// collector's [`sonde_core::sketch::Sketch`] is exact to 0.4 % but too big
/// to keep per endpoint per second; a live board needs far less.
#[derive(Clone)]
struct LiveHist([u32; HIST_BUCKETS]);

impl Default for LiveHist {
    fn default() -> Self {
        LiveHist([0; HIST_BUCKETS])
    }
}

impl LiveHist {
    fn bucket(ms: f64) -> usize {
        // Also NaN.
        if ms.is_nan() || ms <= HIST_MIN_MS {
            return 0;
        }
        ((ms / HIST_MIN_MS).ln() / HIST_RATIO_LN).min((HIST_BUCKETS - 1) as f64) as usize
    }

    fn add(&mut self, ms: f64) {
        let b = &mut self.0[Self::bucket(ms)];
        *b = b.saturating_add(1);
    }

    fn merge(&mut self, other: &LiveHist) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// Nearest-rank quantile: the geometric middle of the bucket holding
    /// it, clamped to `[min, max]`.
    fn quantile(&self, q: f64, min: f64, max: f64) -> Option<f64> {
        let total: u64 = self.0.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (i, &c) in self.0.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                let mid = HIST_MIN_MS * ((i as f64 + 0.5) * HIST_RATIO_LN).exp();
                return Some(mid.clamp(min, max));
            }
        }
        Some(max)
    }
}

/// Totals of some transactions.
#[derive(Clone, Default)]
struct Agg {
    calls: u64,
    errors: u64,
    /// SQL statements that failed (the alerts' `sql_errors` rule).
    sql_errors: u64,
    sum_ms: f64,
    min_ms: f64,
    max_ms: f64,
    hist: LiveHist,
}

impl Agg {
    fn add(&mut self, elapsed_ms: f64, failed: bool, sql_errors: u64) {
        if self.calls == 0 || elapsed_ms < self.min_ms {
            self.min_ms = elapsed_ms;
        }
        self.max_ms = self.max_ms.max(elapsed_ms);
        self.calls += 1;
        self.errors += u64::from(failed);
        self.sql_errors += sql_errors;
        self.sum_ms += elapsed_ms;
        self.hist.add(elapsed_ms);
    }

    fn merge(&mut self, o: &Agg) {
        if o.calls == 0 {
            return;
        }
        if self.calls == 0 || o.min_ms < self.min_ms {
            self.min_ms = o.min_ms;
        }
        self.max_ms = self.max_ms.max(o.max_ms);
        self.calls += o.calls;
        self.errors += o.errors;
        self.sql_errors += o.sql_errors;
        self.sum_ms += o.sum_ms;
        self.hist.merge(&o.hist);
    }

    /// [`Agg::merge`] without the histogram.
    fn merge_counts(&mut self, o: &Agg) {
        if o.calls == 0 {
            return;
        }
        if self.calls == 0 || o.min_ms < self.min_ms {
            self.min_ms = o.min_ms;
        }
        self.max_ms = self.max_ms.max(o.max_ms);
        self.calls += o.calls;
        self.errors += o.errors;
        self.sql_errors += o.sql_errors;
        self.sum_ms += o.sum_ms;
    }

    fn avg_ms(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.sum_ms / self.calls as f64
        }
    }

    fn p90_ms(&self) -> f64 {
        self.hist
            .quantile(0.9, self.min_ms, self.max_ms)
            .unwrap_or(0.0)
    }
}

/// (app, host, endpoint)
type Key = (String, String, String);

struct HostEntry {
    received_ms: i64,
    metrics: HostMetrics,
}

#[derive(Default)]
struct Inner {
    /// Per end second (epoch s), per key.
    seconds: BTreeMap<i64, HashMap<Key, Agg>>,
    /// Per minute (epoch min), per app.
    visitors: BTreeMap<i64, HashMap<String, Hll>>,
    /// Latest metrics per hostname.
    hosts: HashMap<String, HostEntry>,
    /// Transactions that ended outside the window when they arrived.
    late: u64,
}

/// The live statistics; one per collector, shared by ingest and the API.
pub struct LiveStats {
    inner: Mutex<Inner>,
    slow: SlowThresholds,
    /// The store's naming (`[storage] endpoint_rules`), so that the live
    /// view and the stored rollups call an endpoint the same.
    naming: EndpointNaming,
}

impl Default for LiveStats {
    fn default() -> Self {
        LiveStats::new(SlowThresholds::default(), EndpointNaming::default())
    }
}

/// Which transactions a view covers.
#[derive(Debug, Clone, Default)]
pub struct LiveFilter {
    pub app: Option<String>,
    pub host: Option<String>,
}

impl LiveFilter {
    fn keeps(&self, key: &Key) -> bool {
        self.app.as_ref().is_none_or(|a| *a == key.0)
            && self.host.as_ref().is_none_or(|h| *h == key.1)
    }
}

/// Totals over the headline window, as the stream sends them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowView {
    /// Start of the window (inclusive), epoch ms.
    pub from_ms: i64,
    /// End of the window (exclusive), epoch ms.
    pub to_ms: i64,
    pub calls: u64,
    /// Calls per second over the window.
    pub tps: f64,
    pub avg_ms: f64,
    pub p90_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
}

/// One second of the recent history.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SecondView {
    pub ts_ms: i64,
    pub calls: u64,
    pub errors: u64,
    pub avg_ms: f64,
    pub p90_ms: f64,
}

/// One endpoint on the board, over the last [`WINDOW_S`] seconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointView {
    pub app: String,
    pub endpoint: String,
    pub calls: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub avg_ms: f64,
    pub p90_ms: f64,
    /// `ok`, `warn` or `bad` (see [`level`]).
    pub level: &'static str,
}

/// Latest metrics of one host.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostView {
    pub host: String,
    pub ts_ms: i64,
    pub cpu_percent: f64,
    pub load1: f64,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    pub db_connections: u32,
    pub fpm_active: u32,
    pub fpm_idle: u32,
    /// Mounted filesystems, fullest first.
    pub disks: Vec<DiskView>,
}

/// Use of one mounted filesystem.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DiskView {
    pub mount: String,
    pub used_bytes: u64,
    pub total_bytes: u64,
    pub used_percent: f64,
}

/// Everything the stream sends that comes from finished transactions.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatsView {
    pub window: WindowView,
    /// The last [`WINDOW_S`] complete seconds, oldest first.
    pub recent: Vec<SecondView>,
    pub concurrent_users: u64,
    pub endpoints: Vec<EndpointView>,
    pub hosts: Vec<HostView>,
    /// Open database connections over the hosts shown.
    pub db_connections: u64,
}

/// Totals of one group of transactions over a window, for the alert rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupTotals {
    pub calls: u64,
    pub errors: u64,
    /// Failed SQL statements.
    pub sql_errors: u64,
    pub avg_ms: f64,
    pub p90_ms: f64,
}

/// The latest metrics of the hosts heard from in the last
/// [`HOST_STALE_MS`] (only `host` when given), by name.
fn hosts_of(inner: &Inner, host: Option<&str>, now_ms: i64) -> Vec<HostView> {
    let mut hosts: Vec<HostView> = inner
        .hosts
        .iter()
        .filter(|(name, h)| {
            now_ms.saturating_sub(h.received_ms) <= HOST_STALE_MS
                && host.is_none_or(|f| f == name.as_str())
        })
        .map(|(name, h)| {
            let m = &h.metrics;
            HostView {
                host: name.clone(),
                ts_ms: m.ts_unix_ms,
                cpu_percent: m.cpu_percent,
                load1: m.load1,
                mem_used_bytes: m.mem_used_bytes,
                mem_total_bytes: m.mem_total_bytes,
                db_connections: m.db_connections,
                fpm_active: m.fpm_pools.iter().map(|p| p.active).sum(),
                fpm_idle: m.fpm_pools.iter().map(|p| p.idle).sum(),
                disks: disks_of(m),
            }
        })
        .collect();
    hosts.sort_by(|a, b| a.host.cmp(&b.host));
    hosts
}

/// The sample's filesystems with a size, fullest first.
fn disks_of(m: &HostMetrics) -> Vec<DiskView> {
    let mut disks: Vec<DiskView> = m
        .disks
        .iter()
        .filter(|d| d.total_bytes > 0)
        .map(|d| DiskView {
            mount: d.mount.clone(),
            used_bytes: d.used_bytes,
            total_bytes: d.total_bytes,
            used_percent: 100.0 * d.used_bytes as f64 / d.total_bytes as f64,
        })
        .collect();
    disks.sort_by(|a, b| b.used_percent.total_cmp(&a.used_percent));
    disks
}

/// How an endpoint looks on the board: `bad` when its p90 reaches the
/// app's slow threshold or 5 % of its calls fail; `warn` at half the
/// threshold or with any failure; else `ok`.
pub fn level(p90_ms: f64, error_rate: f64, slow_ms: f64) -> &'static str {
    if p90_ms >= slow_ms || error_rate >= 0.05 {
        "bad"
    } else if p90_ms >= slow_ms / 2.0 || error_rate > 0.0 {
        "warn"
    } else {
        "ok"
    }
}

impl LiveStats {
    pub fn new(slow: SlowThresholds, naming: EndpointNaming) -> Self {
        LiveStats {
            inner: Mutex::default(),
            slow,
            naming,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Folds newly stored records in. Records that ended before the window
    /// (replays, spooled data) only count as `late`.
    pub fn observe(&self, records: &[RequestRecord], fallback_host: &str, now_ms: i64) {
        let oldest_s = now_ms.div_euclid(1000) - WINDOW_S - 1;
        let oldest_min = now_ms.div_euclid(60_000) - VISITOR_MINUTES;
        let mut inner = self.lock();
        for r in records {
            let end = end_ms(r);
            let second = end.div_euclid(1000);
            if second < oldest_s {
                inner.late += 1;
                continue;
            }
            let host = if r.host.is_empty() {
                fallback_host
            } else {
                &r.host
            };
            let endpoint = self.naming.name(r).into_owned();
            let by_key = inner.seconds.entry(second).or_default();
            let mut key = (r.app.clone(), host.to_owned(), endpoint);
            if by_key.len() >= MAX_KEYS_PER_SECOND && !by_key.contains_key(&key) {
                key.2 = OTHER_ENDPOINT.to_owned();
            }
            let sql_errors = r
                .spans
                .iter()
                .filter(|s| s.kind == SpanKind::Sql as i32 && !s.error.is_empty())
                .count() as u64;
            by_key.entry(key).or_default().add(
                crate::storage::elapsed_ms(r),
                is_failure(r),
                sql_errors,
            );

            let visitor = if r.visitor_id.is_empty() {
                &r.client_ip
            } else {
                &r.visitor_id
            };
            let minute = end.div_euclid(60_000);
            if !visitor.is_empty() && minute >= oldest_min {
                inner
                    .visitors
                    .entry(minute)
                    .or_default()
                    .entry(r.app.clone())
                    .or_default()
                    .add(visitor.as_bytes());
            }
        }
        inner.seconds.retain(|&s, _| s >= oldest_s);
        inner.visitors.retain(|&m, _| m >= oldest_min);
    }

    /// Keeps `metrics` as its host's latest unless a newer sample is held.
    pub fn host_metrics(&self, metrics: &HostMetrics, fallback_host: &str, now_ms: i64) {
        let host = if metrics.hostname.is_empty() {
            fallback_host
        } else {
            &metrics.hostname
        };
        let mut inner = self.lock();
        if inner
            .hosts
            .get(host)
            .is_some_and(|h| h.metrics.ts_unix_ms > metrics.ts_unix_ms)
        {
            return;
        }
        inner.hosts.insert(
            host.to_owned(),
            HostEntry {
                received_ms: now_ms,
                metrics: metrics.clone(),
            },
        );
        inner
            .hosts
            .retain(|_, h| now_ms.saturating_sub(h.received_ms) <= 10 * HOST_STALE_MS);
    }

    /// The view at `now_ms`. The headline window is the `window_s` whole
    /// seconds before the previous one: the current second is still
    /// running and the previous one may still be on its way from agents.
    pub fn view(&self, filter: &LiveFilter, now_ms: i64, window_s: i64) -> StatsView {
        let cur_s = now_ms.div_euclid(1000);
        let to_s = cur_s - 1;
        let from_s = to_s - window_s.max(1);
        let inner = self.lock();

        let mut window = Agg::default();
        let mut per_second: BTreeMap<i64, Agg> = BTreeMap::new();
        let mut per_endpoint: HashMap<(&str, &str), Agg> = HashMap::new();
        for (&s, by_key) in inner.seconds.range(to_s - WINDOW_S..to_s) {
            let sec = per_second.entry(s).or_default();
            for (key, agg) in by_key.iter().filter(|(k, _)| filter.keeps(k)) {
                sec.merge(agg);
                if s >= from_s {
                    window.merge(agg);
                }
                per_endpoint
                    .entry((key.0.as_str(), key.2.as_str()))
                    .or_default()
                    .merge(agg);
            }
        }
        let recent = (to_s - WINDOW_S..to_s)
            .map(|s| {
                let a = per_second.get(&s).cloned().unwrap_or_default();
                SecondView {
                    ts_ms: s * 1000,
                    calls: a.calls,
                    errors: a.errors,
                    avg_ms: a.avg_ms(),
                    p90_ms: a.p90_ms(),
                }
            })
            .collect();
        let mut endpoints: Vec<EndpointView> = per_endpoint
            .into_iter()
            .map(|((app, endpoint), a)| {
                let error_rate = a.errors as f64 / a.calls.max(1) as f64;
                let p90_ms = a.p90_ms();
                let slow_ms = self.slow.ns_for(app) as f64 / 1e6;
                EndpointView {
                    app: app.to_owned(),
                    endpoint: endpoint.to_owned(),
                    calls: a.calls,
                    errors: a.errors,
                    error_rate,
                    avg_ms: a.avg_ms(),
                    p90_ms,
                    level: level(p90_ms, error_rate, slow_ms),
                }
            })
            .collect();
        // Worst first, then busiest: what needs looking at leads the board.
        let rank = |l: &str| match l {
            "bad" => 0,
            "warn" => 1,
            _ => 2,
        };
        endpoints.sort_by(|a, b| {
            rank(a.level)
                .cmp(&rank(b.level))
                .then(b.calls.cmp(&a.calls))
                .then(a.endpoint.cmp(&b.endpoint))
        });

        let oldest_min = now_ms.div_euclid(60_000) - VISITOR_MINUTES + 1;
        let mut users = Hll::new();
        for by_app in inner.visitors.range(oldest_min..).map(|(_, v)| v) {
            for (app, hll) in by_app {
                if filter.app.as_ref().is_none_or(|a| a == app) {
                    // Same precision everywhere: merging cannot fail.
                    let _ = users.merge(hll);
                }
            }
        }

        let hosts = hosts_of(&inner, filter.host.as_deref(), now_ms);
        let db_connections = hosts.iter().map(|h| u64::from(h.db_connections)).sum();

        let span_s = (to_s - from_s) as f64;
        StatsView {
            window: WindowView {
                from_ms: from_s * 1000,
                to_ms: to_s * 1000,
                calls: window.calls,
                tps: window.calls as f64 / span_s,
                avg_ms: window.avg_ms(),
                p90_ms: window.p90_ms(),
                max_ms: window.max_ms,
                errors: window.errors,
            },
            recent,
            concurrent_users: users.count(),
            endpoints,
            hosts,
            db_connections,
        }
    }

    /// Totals over the `window_s` complete seconds before the current one
    /// (the previous second included: alerts want the newest data), grouped
    /// by `group_of(app, host, endpoint)`; `None` leaves a key out. Without
    /// `p90`, histograms are not merged (the lock is held for less) and
    /// `p90_ms` is 0.
    pub fn grouped<K: Hash + Eq>(
        &self,
        now_ms: i64,
        window_s: i64,
        p90: bool,
        mut group_of: impl FnMut(&str, &str, &str) -> Option<K>,
    ) -> HashMap<K, GroupTotals> {
        let to_s = now_ms.div_euclid(1000);
        let from_s = to_s - window_s.clamp(1, WINDOW_S);
        let inner = self.lock();
        let mut groups: HashMap<K, Agg> = HashMap::new();
        for by_key in inner.seconds.range(from_s..to_s).map(|(_, v)| v) {
            for (key, agg) in by_key {
                if let Some(k) = group_of(&key.0, &key.1, &key.2) {
                    let g = groups.entry(k).or_default();
                    if p90 {
                        g.merge(agg);
                    } else {
                        g.merge_counts(agg);
                    }
                }
            }
        }
        groups
            .into_iter()
            .map(|(k, a)| {
                let t = GroupTotals {
                    calls: a.calls,
                    errors: a.errors,
                    sql_errors: a.sql_errors,
                    avg_ms: a.avg_ms(),
                    p90_ms: a.p90_ms(),
                };
                (k, t)
            })
            .collect()
    }

    /// The latest metrics of each host heard from in the last
    /// [`HOST_STALE_MS`], by host name.
    pub fn latest_hosts(&self, now_ms: i64) -> Vec<HostView> {
        hosts_of(&self.lock(), None, now_ms)
    }

    /// Records that arrived too late for the window, since start.
    pub fn late(&self) -> u64 {
        self.lock().late
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::tests::record;

    #[test]
    fn histogram_quantiles_are_close() {
        let mut h = LiveHist::default();
        for ms in 1..=1000 {
            h.add(ms as f64);
        }
        let p90 = h.quantile(0.9, 1.0, 1000.0).unwrap();
        assert!((p90 - 900.0).abs() / 900.0 < 0.05, "{p90}");
        let p50 = h.quantile(0.5, 1.0, 1000.0).unwrap();
        assert!((p50 - 500.0).abs() / 500.0 < 0.05, "{p50}");
        assert_eq!(LiveHist::bucket(0.0), 0);
        assert_eq!(LiveHist::bucket(f64::NAN), 0);
        assert_eq!(LiveHist::bucket(1e9), HIST_BUCKETS - 1);
        assert_eq!(LiveHist::default().quantile(0.9, 0.0, 0.0), None);
    }

    #[test]
    fn window_board_and_users() {
        let stats = LiveStats::default();
        let now = 1_000_000_500; // second 1_000_000, half-way through
        let mut recs = Vec::new();
        // 10 calls per second in seconds 999_990..999_999 (the window is
        // the 5 seconds 999_994..999_998, the last one excluded).
        let mut id = 0u8;
        for s in 999_990..1_000_000i64 {
            for i in 0..10 {
                id = id.wrapping_add(1);
                let mut r = record(id, s * 1000 + i * 10, 20 + i as u64);
                r.visitor_id = format!("v{}", i % 4);
                recs.push(r);
            }
        }
        let mut slow = record(250, 999_997_000, 5000);
        slow.url = "/slow".into();
        slow.status = 500;
        recs.push(slow);
        // Too old: counted as late only.
        recs.push(record(251, 1_000, 5));
        stats.observe(&recs, "web-1", now);
        assert_eq!(stats.late(), 1);

        let v = stats.view(&LiveFilter::default(), now, 5);
        assert_eq!(v.window.from_ms, 999_994_000);
        assert_eq!(v.window.to_ms, 999_999_000);
        assert_eq!(v.window.calls, 51);
        assert_eq!(v.window.errors, 1);
        assert!((v.window.tps - 10.2).abs() < 1e-9);
        assert_eq!(v.window.max_ms, 5000.0);
        assert_eq!(v.recent.len(), WINDOW_S as usize);
        assert_eq!(v.recent.last().unwrap().ts_ms, 999_998_000);
        assert_eq!(v.recent.last().unwrap().calls, 10);
        assert_eq!(v.concurrent_users, 4);
        assert_eq!(v.endpoints[0].endpoint, "/slow");
        assert_eq!(v.endpoints[0].level, "bad");
        assert_eq!(v.endpoints[1].endpoint, "/users/{num}");
        assert_eq!(v.endpoints[1].calls, 90, "second 999_999 is not complete");
        assert_eq!(v.endpoints[1].level, "ok");

        let other = stats.view(
            &LiveFilter {
                app: Some("blog".into()),
                host: None,
            },
            now,
            5,
        );
        assert_eq!((other.window.calls, other.concurrent_users), (0, 0));
        let host = stats.view(
            &LiveFilter {
                app: None,
                host: Some("web-1".into()),
            },
            now,
            5,
        );
        assert_eq!(host.window.calls, 51);

        // A minute later everything has aged out.
        let later = stats.view(&LiveFilter::default(), now + 70_000, 5);
        assert_eq!(later.window.calls, 0);
        assert!(later.endpoints.is_empty());
    }

    #[test]
    fn endpoint_rules_name_the_live_view_as_the_store() {
        let rules = [(r"^/users/\d+".to_owned(), "/user-page".to_owned(), None)];
        let stats = LiveStats::new(
            SlowThresholds::default(),
            EndpointNaming::new(&rules).unwrap(),
        );
        let now = 1_000_000_500;
        let recs: Vec<_> = (0..5u8)
            .map(|i| record(i, 999_997_000 + i64::from(i), 20))
            .collect();
        stats.observe(&recs, "web-1", now);
        let v = stats.view(&LiveFilter::default(), now, 5);
        let names: Vec<_> = v.endpoints.iter().map(|e| e.endpoint.as_str()).collect();
        assert_eq!(names, ["/user-page"]);
    }

    #[test]
    fn hosts_keep_the_latest_sample() {
        let stats = LiveStats::default();
        let m = |ts, cpu| HostMetrics {
            ts_unix_ms: ts,
            cpu_percent: cpu,
            db_connections: 3,
            ..Default::default()
        };
        stats.host_metrics(&m(2000, 50.0), "web-1", 10_000);
        stats.host_metrics(&m(1000, 10.0), "web-1", 10_000);
        let v = stats.view(&LiveFilter::default(), 10_000, 5);
        assert_eq!(v.hosts.len(), 1);
        assert_eq!(
            (v.hosts[0].host.as_str(), v.hosts[0].cpu_percent),
            ("web-1", 50.0)
        );
        assert_eq!(v.db_connections, 3);
        assert!(stats
            .view(&LiveFilter::default(), 10_000 + HOST_STALE_MS + 1, 5)
            .hosts
            .is_empty());
    }

    #[test]
    fn levels() {
        assert_eq!(level(10.0, 0.0, 3000.0), "ok");
        assert_eq!(level(1600.0, 0.0, 3000.0), "warn");
        assert_eq!(level(10.0, 0.01, 3000.0), "warn");
        assert_eq!(level(3000.0, 0.0, 3000.0), "bad");
        assert_eq!(level(10.0, 0.05, 3000.0), "bad");
    }
}
