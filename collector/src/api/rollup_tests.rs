//! Rollup correctness through the HTTP API: synthetic records of known
//! shape, inserted in shuffled batches (late data), some twice
//! (duplicates); every view is compared with figures computed directly from
//! the records — counts exactly, sums and averages to rounding, percentiles
//! within 1 % relative.

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::http::StatusCode;
use serde_json::Value;
use sonde_proto::v1::{RequestRecord, Span, SpanKind};

use super::tests::{get, state};
use crate::storage::rollup::{bucket, HOUR_MS, MINUTE_MS, SECOND_MS};
use crate::storage::{end_ms, is_failure};

const SLOW_NS: u64 = 3_000_000_000;
const APPS: [&str; 2] = ["shop", "blog"];
const ENDPOINTS: [&str; 3] = ["/cart", "/users/{num}", "/search"];
const HOSTS: [&str; 2] = ["web-1", "web-2"];
const STATEMENTS: [&str; 3] = [
    "SELECT * FROM users WHERE id = ?",
    "UPDATE cart SET n = ? WHERE id = ?",
    "SELECT count(*) FROM items",
];
/// 2024-03-12 00:00 in Asia/Seoul (UTC+9).
const DAY0: i64 = 1_710_169_200_000;
const DAY: i64 = 24 * HOUR_MS;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn make(rng: &mut Rng, id: u32, end_ms: i64) -> RequestRecord {
    // Log-uniform 1 ms .. 10 s, with sub-ms precision.
    let exp = rng.below(4_000) as f64 / 1000.0;
    let wall_ns = (1e6 * 10f64.powf(exp)) as u64 + rng.below(1000);
    let mut id_bytes = vec![0u8; 16];
    id_bytes[..4].copy_from_slice(&id.to_be_bytes());
    id_bytes[15] = 0xaa;
    let mut r = RequestRecord {
        id: id_bytes,
        app: APPS[rng.below(2) as usize].into(),
        host: HOSTS[rng.below(2) as usize].into(),
        endpoint: ENDPOINTS[rng.below(3) as usize].into(),
        method: "GET".into(),
        url: "/x".into(),
        // Ends exactly at `end_ms`.
        start_unix_ns: end_ms * 1_000_000 - wall_ns as i64,
        wall_ns,
        status: if rng.below(10) == 0 { 500 } else { 200 },
        visitor_id: format!("v{}", rng.below(150)),
        ..Default::default()
    };
    for _ in 0..rng.below(4) {
        r.spans.push(Span {
            kind: SpanKind::Sql as i32,
            duration_ns: 10_000 + rng.below(50_000_000),
            statement: STATEMENTS[rng.below(3) as usize].into(),
            error: if rng.below(8) == 0 {
                "deadlock".into()
            } else {
                String::new()
            },
            ..Default::default()
        });
    }
    if rng.below(2) == 0 {
        r.spans.push(Span {
            kind: SpanKind::Fetch as i32,
            duration_ns: rng.below(5_000_000),
            rows: 3,
            ..Default::default()
        });
    }
    for _ in 0..rng.below(3) {
        let (url, key) = EXTERNALS[rng.below(EXTERNALS.len() as u64) as usize];
        let id = rng.below(1000);
        r.spans.push(Span {
            kind: SpanKind::External as i32,
            duration_ns: rng.below(200_000_000),
            url: url.replace("{n}", &id.to_string()),
            status: [200, 200, 404, 502, 0][rng.below(5) as usize],
            error: if rng.below(10) == 0 {
                "timed out".into()
            } else {
                String::new()
            },
            ..Default::default()
        });
        let _ = key;
    }
    r
}

/// External URLs called (`{n}` an id) and the name their calls roll up to.
const EXTERNALS: [(&str, &str); 3] = [
    (
        "https://api.pay.example/v1/charges/{n}?key=[redacted]",
        "https://api.pay.example/v1/charges/{num}",
    ),
    (
        "http://search:9200/items/_search",
        "http://search:9200/items/_search",
    ),
    (
        "https://cdn.example/img/{n}.png",
        "https://cdn.example/img/{n}.png",
    ),
];

fn external_key(url: &str) -> String {
    crate::storage::rollup::external_key(&sonde_core::endpoint::EndpointNamer::default(), url)
}

/// Records over the report day, the day before and the week before, plus a
/// burst of 40 in one second.
fn dataset() -> Vec<RequestRecord> {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut out = Vec::new();
    let mut id = 0;
    for (day_start, n) in [(DAY0, 2_500), (DAY0 - DAY, 800), (DAY0 - 7 * DAY, 500)] {
        for _ in 0..n {
            id += 1;
            let end = day_start + rng.below(DAY as u64) as i64;
            out.push(make(&mut rng, id, end));
        }
    }
    let burst = DAY0 + 10 * HOUR_MS + 1234 * SECOND_MS;
    for k in 0..40 {
        id += 1;
        out.push(make(&mut rng, id, burst + k * 20));
    }
    // Arrival order is not time order: shuffle.
    for i in (1..out.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        out.swap(i, j);
    }
    out
}

fn ns_of(r: &RequestRecord, kind: SpanKind) -> u64 {
    r.spans
        .iter()
        .filter(|s| s.kind() == kind)
        .map(|s| s.duration_ns)
        .sum()
}

fn nearest_rank(sorted: &[u64], q: f64) -> f64 {
    let n = sorted.len() as u64;
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    sorted[rank as usize - 1] as f64 / 1e6
}

fn close(got: &Value, want: f64, rel: f64, what: &str) {
    let got = got.as_f64().unwrap_or_else(|| panic!("{what}: {got}"));
    let tol = rel * want.abs().max(1e-9);
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want}");
}

fn in_range(r: &RequestRecord, from: i64, to: i64, app: Option<&str>) -> bool {
    // A minute bucket counts when it starts in [from, to).
    let b = bucket(end_ms(r), MINUTE_MS);
    b >= from && b < to && app.is_none_or(|a| a == r.app)
}

async fn check_endpoints(
    s: &super::ApiState,
    recs: &[RequestRecord],
    from: i64,
    to: i64,
    app: Option<&str>,
) {
    let mut want: BTreeMap<(String, String), Vec<&RequestRecord>> = BTreeMap::new();
    for r in recs.iter().filter(|r| in_range(r, from, to, app)) {
        want.entry((r.app.clone(), r.endpoint.clone()))
            .or_default()
            .push(r);
    }
    let app_q = app.map_or(String::new(), |a| format!("&app={a}"));
    let (status, body) = get(
        s,
        &format!("/api/v1/endpoints?from={from}&to={to}{app_q}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows = body["endpoints"].as_array().unwrap();
    assert_eq!(rows.len(), want.len(), "{body}");
    assert!(!want.is_empty());
    for row in rows {
        let key = (
            row["app"].as_str().unwrap().to_owned(),
            row["endpoint"].as_str().unwrap().to_owned(),
        );
        let rs = &want[&key];
        let n = rs.len() as f64;
        let what = format!("{key:?}");
        assert_eq!(row["calls"], rs.len(), "{what}");
        let failures = rs.iter().filter(|r| is_failure(r)).count();
        assert_eq!(row["failures"], failures, "{what}");
        let bad = rs.iter().filter(|r| r.wall_ns >= SLOW_NS).count();
        assert_eq!(row["bad_responses"], bad, "{what}");
        let sum: u64 = rs.iter().map(|r| r.wall_ns).sum();
        close(&row["avg_ms"], sum as f64 / 1e6 / n, 1e-9, &what);
        close(&row["total_ms"], sum as f64 / 1e6, 1e-9, &what);
        let max = rs.iter().map(|r| r.wall_ns).max().unwrap();
        close(&row["max_ms"], max as f64 / 1e6, 1e-12, &what);
        for (field, kind) in [
            ("sql_ms_per_tx", SpanKind::Sql),
            ("fetch_ms_per_tx", SpanKind::Fetch),
            ("external_ms_per_tx", SpanKind::External),
        ] {
            let total: u64 = rs.iter().map(|r| ns_of(r, kind)).sum();
            close(&row[field], total as f64 / 1e6 / n, 1e-9, field);
        }
        let count = |kind: SpanKind| -> usize {
            rs.iter()
                .map(|r| r.spans.iter().filter(|s| s.kind() == kind).count())
                .sum()
        };
        assert_eq!(row["sql_calls"], count(SpanKind::Sql), "{what}");
        assert_eq!(row["external_calls"], count(SpanKind::External), "{what}");
        let mut sorted: Vec<u64> = rs.iter().map(|r| r.wall_ns).collect();
        sorted.sort_unstable();
        for (field, q) in [
            ("p50_ms", 0.5),
            ("p90_ms", 0.9),
            ("p95_ms", 0.95),
            ("p99_ms", 0.99),
        ] {
            close(&row[field], nearest_rank(&sorted, q), 0.01, field);
        }
    }
}

/// `/api/v1/externals` against the records' external spans.
async fn check_externals(
    s: &super::ApiState,
    recs: &[RequestRecord],
    from: i64,
    to: i64,
    endpoint: Option<&str>,
) {
    let mut want: BTreeMap<String, Vec<&Span>> = BTreeMap::new();
    for r in recs
        .iter()
        .filter(|r| in_range(r, from, to, None) && endpoint.is_none_or(|e| e == r.endpoint))
    {
        for sp in r.spans.iter().filter(|s| s.kind() == SpanKind::External) {
            want.entry(external_key(&sp.url)).or_default().push(sp);
        }
    }
    let ep_q = endpoint.map_or(String::new(), |e| format!("&endpoint={e}"));
    let (status, body) = get(
        s,
        &format!("/api/v1/externals?from={from}&to={to}{ep_q}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows = body["externals"].as_array().unwrap();
    assert_eq!(rows.len(), want.len(), "{body}");
    assert!(!want.is_empty());
    for row in rows {
        let url = row["url"].as_str().unwrap();
        let spans = &want[url];
        assert_eq!(row["calls"], spans.len(), "{url}");
        let failures = spans
            .iter()
            .filter(|s| s.status >= 400 || !s.error.is_empty())
            .count();
        assert_eq!(row["failures"], failures, "{url}");
        let sum: u64 = spans.iter().map(|s| s.duration_ns).sum();
        close(&row["total_ms"], sum as f64 / 1e6, 1e-9, "total_ms");
        let max = spans.iter().map(|s| s.duration_ns).max().unwrap();
        close(&row["max_ms"], max as f64 / 1e6, 1e-12, "max_ms");
        let mut sorted: Vec<u64> = spans.iter().map(|s| s.duration_ns).collect();
        sorted.sort_unstable();
        for (field, q) in [("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)] {
            close(&row[field], nearest_rank(&sorted, q), 0.01, field);
        }
    }
}

#[tokio::test]
async fn rollups_agree_with_the_records() {
    let (_dir, s) = state(&[]);
    let recs = dataset();
    for chunk in recs.chunks(700) {
        let o = s.store.insert_records(chunk, "fallback").unwrap();
        assert_eq!(o.stored as usize, chunk.len());
    }

    // Endpoints: whole hours from the hour rollup, edges from minutes.
    let from = DAY0 + 17 * MINUTE_MS;
    let to = DAY0 + 20 * HOUR_MS + 42 * MINUTE_MS;
    check_endpoints(&s, &recs, from, to, None).await;
    check_endpoints(&s, &recs, from, to, Some("shop")).await;
    // Shorter than an hour: minutes only.
    check_endpoints(&s, &recs, DAY0 + 3 * MINUTE_MS, DAY0 + 50 * MINUTE_MS, None).await;
    // Over all three days, hour-aligned.
    check_endpoints(&s, &recs, DAY0 - 8 * DAY, DAY0 + DAY, Some("blog")).await;

    // SQL per statement, one app and endpoint.
    let (app, endpoint) = ("shop", "/cart");
    let mut want: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for r in recs
        .iter()
        .filter(|r| in_range(r, from, to, Some(app)) && r.endpoint == endpoint)
    {
        for sp in r.spans.iter().filter(|s| s.kind() == SpanKind::Sql) {
            want.entry(&sp.statement).or_default().push(sp);
        }
    }
    let (_, body) = get(
        &s,
        &format!("/api/v1/sql?from={from}&to={to}&app={app}&endpoint=/cart"),
        None,
    )
    .await;
    let rows = body["statements"].as_array().unwrap();
    assert_eq!(rows.len(), want.len(), "{body}");
    for row in rows {
        let spans = &want[row["statement"].as_str().unwrap()];
        assert_eq!(row["calls"], spans.len());
        let failures = spans.iter().filter(|s| !s.error.is_empty()).count();
        assert_eq!(row["failures"], failures);
        let sum: u64 = spans.iter().map(|s| s.duration_ns).sum();
        close(&row["total_ms"], sum as f64 / 1e6, 1e-9, "total_ms");
        close(
            &row["avg_ms"],
            sum as f64 / 1e6 / spans.len() as f64,
            1e-9,
            "avg_ms",
        );
        let max = spans.iter().map(|s| s.duration_ns).max().unwrap();
        close(&row["max_ms"], max as f64 / 1e6, 1e-12, "max_ms");
    }
    let (_, body) = get(&s, "/api/v1/sql?from=0&to=1&endpoint=/nowhere", None).await;
    assert_eq!(body["statements"], serde_json::json!([]));

    // External calls per normalised URL: all endpoints, then one.
    check_externals(&s, &recs, from, to, None).await;
    check_externals(&s, &recs, DAY0 - 8 * DAY, DAY0 + DAY, Some("/search")).await;
    let (_, body) = get(&s, "/api/v1/externals?from=0&to=1&endpoint=/nowhere", None).await;
    assert_eq!(body["externals"], serde_json::json!([]));

    // Series at three resolutions: seconds, minutes, hours.
    for (from, step_s, n, app) in [
        (DAY0 + 10 * HOUR_MS + 1200 * SECOND_MS, 1, 90, None),
        (DAY0 + 10 * HOUR_MS + 1200 * SECOND_MS, 7, 20, Some("blog")),
        (DAY0 + 5 * MINUTE_MS, 300, 36, Some("shop")),
        // Whole-minute steps from inside a minute: minutes and seconds.
        (DAY0 + 5 * MINUTE_MS + 17_250, 300, 36, Some("shop")),
        (DAY0 + 30 * MINUTE_MS + 1, 3600, 30, None),
        (DAY0 - DAY, 3600, 48, None),
    ] {
        let step_ms = step_s * 1000;
        let to = from + n * step_ms;
        let app_q = app.map_or(String::new(), |a| format!("&app={a}"));
        let (status, body) = get(
            &s,
            &format!("/api/v1/series?from={from}&to={to}&step_s={step_s}{app_q}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let points = body["points"].as_array().unwrap();
        assert_eq!(points.len(), n as usize);
        let mut total_calls = 0;
        for (k, p) in points.iter().enumerate() {
            let start = from + k as i64 * step_ms;
            let rs: Vec<_> = recs
                .iter()
                .filter(|r| {
                    // Steps are tiled by the finest rollup needed (seconds here
                    // unless the step is a whole number of minutes/hours).
                    let width = if from % HOUR_MS == 0 && step_ms % HOUR_MS == 0 {
                        HOUR_MS
                    } else if from % MINUTE_MS == 0 && step_ms % MINUTE_MS == 0 {
                        MINUTE_MS
                    } else {
                        SECOND_MS
                    };
                    let b = bucket(end_ms(r), width);
                    b >= start && b < start + step_ms && app.is_none_or(|a| a == r.app)
                })
                .collect();
            assert_eq!(p["ts_ms"], start);
            assert_eq!(p["calls"], rs.len(), "step {k} of {step_s}s");
            assert_eq!(p["errors"], rs.iter().filter(|r| is_failure(r)).count());
            close(&p["tps"], rs.len() as f64 / step_s as f64, 1e-12, "tps");
            if !rs.is_empty() {
                let sum: u64 = rs.iter().map(|r| r.wall_ns).sum();
                close(
                    &p["avg_ms"],
                    sum as f64 / 1e6 / rs.len() as f64,
                    1e-9,
                    "avg",
                );
            }
            total_calls += rs.len();
        }
        assert!(total_calls > 0, "series {step_s}s has data");
    }

    // The daily report in Seoul (whole-hour offset: hour rollups) with the
    // default comparisons, and in Kolkata (half-hour offset: minutes).
    for (tz, offset_ms) in [
        ("Asia/Seoul", 0),
        ("Asia/Kolkata", 3 * HOUR_MS + HOUR_MS / 2),
    ] {
        let day0 = DAY0 + offset_ms;
        let (status, body) = get(
            &s,
            &format!("/api/v1/reports/daily?date=2024-03-12&tz={tz}&app=shop"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            (body["date"].as_str(), body["tz"].as_str()),
            (Some("2024-03-12"), Some(tz))
        );
        let day = |start: i64| -> Vec<&RequestRecord> {
            recs.iter()
                .filter(|r| r.app == "shop" && end_ms(r) >= start && end_ms(r) < start + DAY)
                .collect()
        };
        let today = day(day0);
        assert_eq!(body["calls"], today.len(), "{tz}");
        assert_eq!(
            body["errors"],
            today.iter().filter(|r| is_failure(r)).count()
        );
        let sum: u64 = today.iter().map(|r| r.wall_ns).sum();
        close(
            &body["avg_ms"],
            sum as f64 / 1e6 / today.len() as f64,
            1e-9,
            "avg",
        );
        let mut per_second: HashMap<i64, u64> = HashMap::new();
        let mut per_hour: BTreeMap<i64, Vec<&RequestRecord>> = BTreeMap::new();
        for r in &today {
            *per_second.entry(bucket(end_ms(r), SECOND_MS)).or_default() += 1;
            per_hour
                .entry((end_ms(r) - day0).div_euclid(HOUR_MS))
                .or_default()
                .push(r);
        }
        assert_eq!(body["peak_tps"], *per_second.values().max().unwrap());
        assert!(
            body["peak_tps"].as_u64().unwrap() >= 10,
            "the burst is the peak"
        );
        let hourly = body["hourly"].as_array().unwrap();
        assert_eq!(hourly.len(), 24);
        for (k, h) in hourly.iter().enumerate() {
            assert_eq!(h["hour"], k);
            let rs = per_hour.get(&(k as i64)).cloned().unwrap_or_default();
            assert_eq!(h["calls"], rs.len(), "{tz} hour {k}");
            let peak = rs
                .iter()
                .fold(HashMap::<i64, u64>::new(), |mut m, r| {
                    *m.entry(bucket(end_ms(r), SECOND_MS)).or_default() += 1;
                    m
                })
                .into_values()
                .max()
                .unwrap_or(0);
            assert_eq!(h["max_tps"], peak, "{tz} hour {k}");
        }
        let busiest = per_hour
            .iter()
            .max_by_key(|(k, v)| (v.len(), std::cmp::Reverse(**k)))
            .map(|(k, _)| *k)
            .unwrap();
        assert_eq!(body["peak_hour"], busiest);
        // 150 visitor ids in all: HyperLogLog is near exact at this size.
        let distinct: HashSet<&str> = today.iter().map(|r| r.visitor_id.as_str()).collect();
        if offset_ms == 0 {
            close(&body["visitors"], distinct.len() as f64, 0.02, "visitors");
        }
        let compare = body["compare"].as_array().unwrap();
        assert_eq!(compare.len(), 2);
        assert_eq!(compare[0]["date"], "2024-03-11");
        assert_eq!(compare[1]["date"], "2024-03-05");
        for (c, start) in compare.iter().zip([day0 - DAY, day0 - 7 * DAY]) {
            let rs = day(start);
            assert_eq!(c["calls"], rs.len(), "{tz} {}", c["date"]);
            assert!(c["peak_tps"].as_u64().unwrap() >= 1);
        }
    }

    // Duplicates: every record again, in other batches; nothing changes.
    let before = get(&s, &format!("/api/v1/endpoints?from={from}&to={to}"), None).await;
    let daily_before = get(
        &s,
        "/api/v1/reports/daily?date=2024-03-12&tz=Asia/Seoul",
        None,
    )
    .await;
    for chunk in recs.chunks(333) {
        let o = s.store.insert_records(chunk, "fallback").unwrap();
        assert_eq!((o.stored, o.duplicates as usize), (0, chunk.len()));
    }
    assert_eq!(
        get(&s, &format!("/api/v1/endpoints?from={from}&to={to}"), None).await,
        before
    );
    assert_eq!(
        get(
            &s,
            "/api/v1/reports/daily?date=2024-03-12&tz=Asia/Seoul",
            None
        )
        .await,
        daily_before
    );

    // Late data: a record for an hour long closed folds into its buckets.
    let mut rng = Rng(77);
    let mut late = make(&mut rng, 999_999, DAY0 + 2 * HOUR_MS + 5);
    late.app = "shop".into();
    late.endpoint = "/late".into();
    let mut all = recs.clone();
    all.push(late.clone());
    s.store.insert_records(&[late], "fallback").unwrap();
    check_endpoints(&s, &all, from, to, Some("shop")).await;
    let (_, after) = get(&s, &format!("/api/v1/endpoints?from={from}&to={to}"), None).await;
    let total = |v: &Value| -> u64 {
        v["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["calls"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(total(&after), total(&before.1) + 1);
}

#[tokio::test]
async fn bad_parameters_and_empty_ranges() {
    let (_dir, s) = state(&[]);
    for (uri, name) in [
        ("/api/v1/endpoints?from=5&to=1", "from"),
        ("/api/v1/series?from=0&to=1000&step_s=0", "step_s"),
        ("/api/v1/series?from=0&to=100000000&step_s=1", "step_s"),
        ("/api/v1/reports/daily?date=12/03/2024", "date"),
        ("/api/v1/reports/daily?tz=Mars/Olympus", "tz"),
        ("/api/v1/reports/daily?date=2024-03-12&compare=x", "compare"),
        ("/api/v1/hosts/series?limit=0", "limit"),
    ] {
        let (status, body) = get(&s, uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{name}: ")),
            "{uri}: {body}"
        );
    }
    let (_, body) = get(&s, "/api/v1/endpoints?from=0&to=1000", None).await;
    assert_eq!(body, serde_json::json!({"endpoints": []}));
    let (_, body) = get(&s, "/api/v1/series?from=0&to=180000&step_s=60", None).await;
    assert_eq!(body["points"].as_array().unwrap().len(), 3);
    assert_eq!(body["points"][2]["avg_ms"], 0.0);
    let (status, body) = get(
        &s,
        "/api/v1/reports/daily?date=2024-03-12&tz=UTC&compare=2024-01-01,2024-02-01",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["calls"], 0);
    assert_eq!(body["peak_hour"], Value::Null);
    assert_eq!(body["hourly"].as_array().unwrap().len(), 24);
    assert_eq!(body["compare"][1]["date"], "2024-02-01");
}

#[tokio::test]
async fn host_metrics_are_stored_once_and_served() {
    use sonde_proto::v1::{FpmPoolMetrics, HostMetrics};
    let (_dir, s) = state(&[]);
    let sample = |ts: i64, host: &str, cpu: f64| HostMetrics {
        ts_unix_ms: ts,
        hostname: host.into(),
        cpu_percent: cpu,
        mem_used_bytes: 1 << 30,
        fpm_pools: vec![
            FpmPoolMetrics {
                active: 2,
                idle: 3,
                ..Default::default()
            },
            FpmPoolMetrics {
                active: 1,
                listen_queue: 4,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let batch = vec![
        sample(1000, "web-1", 10.0),
        sample(2000, "web-1", 20.0),
        sample(1500, "", 5.0),
    ];
    assert_eq!(
        s.store.insert_host_metrics(&batch, "agent-host").unwrap(),
        3
    );
    assert_eq!(
        s.store.insert_host_metrics(&batch, "agent-host").unwrap(),
        0
    );
    let (status, body) = get(&s, "/api/v1/hosts/series?from=0&to=5000", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["truncated"], false);
    let hosts = body["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0]["host"], "agent-host");
    assert_eq!(hosts[1]["host"], "web-1");
    let p = &hosts[1]["points"];
    assert_eq!(p[0]["ts_ms"], 1000);
    assert_eq!(p[1]["cpu_percent"], 20.0);
    assert_eq!(
        (p[0]["fpm_active"].as_u64(), p[0]["fpm_idle"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(p[0]["fpm_listen_queue"], 4);
    assert_eq!(p[0]["mem_used_bytes"], 1u64 << 30);
    let (_, body) = get(
        &s,
        "/api/v1/hosts/series?from=0&to=5000&host=web-1&limit=1",
        None,
    )
    .await;
    assert_eq!(body["truncated"], true);
    assert_eq!(body["hosts"][0]["points"][0]["ts_ms"], 2000);
}
