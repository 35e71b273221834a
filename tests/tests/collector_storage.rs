//! The collector's storage through its real process, fed over gRPC as an
//! agent feeds it (a synthetic generator, so that the data set is known):
//!
//! - the API's rollup views — `/endpoints`, `/sql`, `/externals`,
//!   `/series`, `/reports/daily` — agree exactly (counts) with the
//!   transactions sent, which span three UTC days and batches that cross
//!   midnight; resending them all changes nothing;
//! - retention drops whole days at start (and refuses records for days
//!   already dropped), the disk guard drops the oldest raw data first and
//!   says so in `/api/v1/stats`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use sonde_core::civil::civil_from_days;
use sonde_e2e::{now_ms, wait_for, Stack, StackOptions};
use sonde_proto::v1::collector_client::CollectorClient;
use sonde_proto::v1::{
    agent_message, collector_message, AgentIdentity, AgentMessage, Batch, ErrorInfo,
    RegisterRequest, RequestRecord, Span, SpanKind, StreamHello,
};
use tokio_stream::wrappers::ReceiverStream;

const TOKEN: &str = "e2e-agent-token";
/// calls, failures, bad responses, SQL calls, external calls
type Counts = (u64, u64, u64, u64, u64);
const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;
const ENDPOINTS: [&str; 4] = ["/cart", "/items/{num}", "/search", "/login"];
const STATEMENTS: [&str; 3] = [
    "SELECT * FROM items WHERE id = ?",
    "UPDATE carts SET n = ? WHERE id = ?",
    "SELECT count(*) FROM users",
];
/// (called URL with `{n}` an id, what it rolls up to)
const EXTERNALS: [(&str, &str); 2] = [
    (
        "https://pay.example/v1/charges/{n}?key=[redacted]",
        "https://pay.example/v1/charges/{num}",
    ),
    ("http://search:9200/_search", "http://search:9200/_search"),
];

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn record(rng: &mut Rng, n: u64, end_ms: i64) -> RequestRecord {
    let wall_ns = 1_000_000 + rng.below(4_000_000_000);
    let mut id = [0u8; 16];
    for b in &mut id {
        *b = rng.below(256) as u8;
    }
    id[..8].copy_from_slice(&(n ^ (rng.below(u64::MAX))).to_be_bytes());
    let mut r = RequestRecord {
        id: id.to_vec(),
        app: if n.is_multiple_of(3) { "blog" } else { "shop" }.into(),
        host: format!("web-{}", n % 2),
        endpoint: ENDPOINTS[rng.below(4) as usize].into(),
        method: "GET".into(),
        url: format!("/x/{n}"),
        start_unix_ns: end_ms * 1_000_000 - wall_ns as i64,
        wall_ns,
        status: if rng.below(20) == 0 { 503 } else { 200 },
        visitor_id: format!("v{}", rng.below(40)),
        ..Default::default()
    };
    if rng.below(30) == 0 {
        r.error = Some(ErrorInfo {
            class: "E".into(),
            fatal: true,
            ..Default::default()
        });
    }
    for _ in 0..rng.below(4) {
        r.spans.push(Span {
            kind: SpanKind::Sql as i32,
            duration_ns: rng.below(30_000_000),
            statement: STATEMENTS[rng.below(3) as usize].into(),
            db: "mysql://db/shop".into(),
            error: if rng.below(9) == 0 {
                "deadlock".into()
            } else {
                String::new()
            },
            ..Default::default()
        });
    }
    for _ in 0..rng.below(3) {
        let (url, _) = EXTERNALS[rng.below(2) as usize];
        r.spans.push(Span {
            kind: SpanKind::External as i32,
            duration_ns: rng.below(300_000_000),
            url: url.replace("{n}", &rng.below(500).to_string()),
            status: [200, 201, 404, 500, 0][rng.below(5) as usize],
            error: if rng.below(12) == 0 {
                "timeout".into()
            } else {
                String::new()
            },
            ..Default::default()
        });
    }
    r
}

/// Adds the agent token. tonic fixes the interceptor's error type.
#[allow(clippy::result_large_err)]
fn with_token(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let token = tonic::metadata::MetadataValue::from_static("Bearer e2e-agent-token");
    r.metadata_mut().insert("authorization", token);
    Ok(r)
}

/// Speaks to the collector as an agent does: one stream, each batch sent
/// and its acknowledgement awaited.
struct Agent {
    runtime: tokio::runtime::Runtime,
    tx: tokio::sync::mpsc::Sender<AgentMessage>,
    inbound: tonic::Streaming<sonde_proto::v1::CollectorMessage>,
    next_batch: u64,
}

impl Agent {
    fn connect(grpc_port: u16) -> Agent {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, inbound) = runtime.block_on(async {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc_port}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
            let mut client = CollectorClient::with_interceptor(channel, with_token)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            let reg = client
                .register(RegisterRequest {
                    identity: Some(AgentIdentity {
                        agent_id: "gen".into(),
                        hostname: "gen".into(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap()
                .into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(AgentMessage {
                msg: Some(agent_message::Msg::Hello(StreamHello {
                    agent_id: reg.agent_id,
                    session_id: "s".into(),
                })),
            })
            .await
            .unwrap();
            let inbound = client
                .stream(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            (tx, inbound)
        });
        Agent {
            runtime,
            tx,
            inbound,
            next_batch: 1,
        }
    }

    /// Sends one batch; (stored, duplicates) from its acknowledgement.
    fn send(&mut self, records: Vec<RequestRecord>) -> (u32, u32) {
        let batch_id = self.next_batch;
        self.next_batch += 1;
        let (tx, inbound) = (&self.tx, &mut self.inbound);
        self.runtime.block_on(async {
            tx.send(AgentMessage {
                msg: Some(agent_message::Msg::Batch(Batch {
                    batch_id,
                    records,
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
            loop {
                let m = inbound.message().await.unwrap().expect("an answer");
                if let Some(collector_message::Msg::Ack(a)) = m.msg {
                    assert_eq!(a.batch_id, batch_id);
                    return (a.stored, a.duplicates);
                }
            }
        })
    }
}

/// A collector (only) with `storage` keys in its `[storage]` table.
fn collector(storage: &str) -> Stack {
    let mut stack = Stack::start(&StackOptions {
        collector: false,
        agent: false,
        web: false,
        ..StackOptions::default()
    })
    .unwrap();
    write_config(&stack, storage);
    stack.spawn_collector().unwrap();
    stack
}

fn write_config(stack: &Stack, storage: &str) {
    std::fs::write(
        stack.path("collector.toml"),
        format!(
            "[grpc]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n\
             [storage]\npath = \"{}\"\n{storage}\n[auth]\nagent_tokens = [\"{TOKEN}\"]\n\
             [alerts]\ndefaults = false\n",
            stack.grpc_port,
            stack.http_port,
            stack.path("collector-data").display()
        ),
    )
    .unwrap();
}

fn restart(stack: &mut Stack, storage: &str) {
    let st = stack.stop("collector", Signal::SIGTERM);
    assert!(st.is_some_and(|s| s.success()), "stopped cleanly: {st:?}");
    write_config(stack, storage);
    stack.spawn_collector().unwrap();
}

fn date(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY));
    format!("{y:04}-{m:02}-{d:02}")
}

fn failed(r: &RequestRecord) -> bool {
    r.error.as_ref().is_some_and(|e| e.fatal) || r.status >= 500
}

fn end(r: &RequestRecord) -> i64 {
    (r.start_unix_ns + r.wall_ns as i64).div_euclid(1_000_000)
}

fn rows<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v[key].as_array().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn rollup_views_agree_exactly_with_what_was_sent() {
    let stack = collector("");
    let mut agent = Agent::connect(stack.grpc_port);
    // Yesterday (the report's date), the day before and a week before;
    // batches of 250 in time order, so some cross midnight.
    let today = now_ms().div_euclid(DAY) * DAY;
    let report_day = today - DAY;
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut recs = Vec::new();
    for (day, n) in [
        (report_day - 7 * DAY, 300),
        (report_day - DAY, 1200),
        (report_day, 3000),
    ] {
        for _ in 0..n {
            let at = day + rng.below(DAY as u64) as i64;
            let k = recs.len() as u64;
            recs.push(record(&mut rng, k, at));
        }
    }
    recs.sort_by_key(end);
    for chunk in recs.chunks(250) {
        assert_eq!(agent.send(chunk.to_vec()), (chunk.len() as u32, 0));
    }

    let api = |q: &str| stack.api(q).unwrap();
    let (from, to) = (report_day - 8 * DAY, today);
    let in_range = |r: &&RequestRecord| end(r) >= from && end(r) < to;

    // Endpoints.
    let mut want: BTreeMap<(String, String), Counts> = BTreeMap::new();
    for r in recs.iter().filter(in_range) {
        let e = want.entry((r.app.clone(), r.endpoint.clone())).or_default();
        e.0 += 1;
        e.1 += u64::from(failed(r));
        e.2 += u64::from(r.wall_ns >= 3_000_000_000);
        e.3 += r.spans.iter().filter(|s| s.kind() == SpanKind::Sql).count() as u64;
        e.4 += r
            .spans
            .iter()
            .filter(|s| s.kind() == SpanKind::External)
            .count() as u64;
    }
    let v = api(&format!("/api/v1/endpoints?from={from}&to={to}"));
    let got: BTreeMap<(String, String), Counts> = rows(&v, "endpoints")
        .iter()
        .map(|e| {
            let n = |k: &str| e[k].as_u64().unwrap();
            (
                (
                    e["app"].as_str().unwrap().into(),
                    e["endpoint"].as_str().unwrap().into(),
                ),
                (
                    n("calls"),
                    n("failures"),
                    n("bad_responses"),
                    n("sql_calls"),
                    n("external_calls"),
                ),
            )
        })
        .collect();
    assert_eq!(got, want);

    // SQL statements and external calls of one endpoint.
    let mut sql: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut ext: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in recs
        .iter()
        .filter(in_range)
        .filter(|r| r.endpoint == "/cart")
    {
        for s in &r.spans {
            match s.kind() {
                SpanKind::Sql => {
                    let e = sql.entry(s.statement.clone()).or_default();
                    e.0 += 1;
                    e.1 += u64::from(!s.error.is_empty());
                }
                SpanKind::External => {
                    let key = EXTERNALS
                        .iter()
                        .find(|(u, _)| s.url.starts_with(u.split('{').next().unwrap()))
                        .unwrap()
                        .1;
                    let e = ext.entry(key.to_owned()).or_default();
                    e.0 += 1;
                    e.1 += u64::from(s.status >= 400 || !s.error.is_empty());
                }
                _ => {}
            }
        }
    }
    let pairs = |v: &Value, list: &str, key: &str| -> BTreeMap<String, (u64, u64)> {
        rows(v, list)
            .iter()
            .map(|s| {
                (
                    s[key].as_str().unwrap().to_owned(),
                    (
                        s["calls"].as_u64().unwrap(),
                        s["failures"].as_u64().unwrap(),
                    ),
                )
            })
            .collect()
    };
    let v = api(&format!("/api/v1/sql?from={from}&to={to}&endpoint=/cart"));
    assert_eq!(pairs(&v, "statements", "statement"), sql);
    let v = api(&format!(
        "/api/v1/externals?from={from}&to={to}&endpoint=/cart"
    ));
    assert_eq!(pairs(&v, "externals", "url"), ext);

    // Series: per hour over the report day, and per second around midnight.
    for (f, step_s, n) in [(report_day, 3600, 24), (report_day - 30_000, 1, 60)] {
        let t = f + n * step_s * 1000;
        let v = api(&format!(
            "/api/v1/series?from={f}&to={t}&step_s={step_s}&app=shop"
        ));
        let got: Vec<u64> = rows(&v, "points")
            .iter()
            .map(|p| p["calls"].as_u64().unwrap())
            .collect();
        let want: Vec<u64> = (0..n)
            .map(|k| {
                let (a, b) = (f + k * step_s * 1000, f + (k + 1) * step_s * 1000);
                recs.iter()
                    .filter(|r| r.app == "shop" && end(r) >= a && end(r) < b)
                    .count() as u64
            })
            .collect();
        assert_eq!(got, want, "series by {step_s}s");
    }

    // The daily report, with the day before and a week before.
    let v = api(&format!(
        "/api/v1/reports/daily?date={}&tz=UTC",
        date(report_day)
    ));
    let day_of = |start: i64| -> Vec<&RequestRecord> {
        recs.iter()
            .filter(|r| end(r) >= start && end(r) < start + DAY)
            .collect()
    };
    let today_recs = day_of(report_day);
    assert_eq!(v["calls"], today_recs.len());
    assert_eq!(v["errors"], today_recs.iter().filter(|r| failed(r)).count());
    let hourly: Vec<u64> = rows(&v, "hourly")
        .iter()
        .map(|h| h["calls"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = (0..24)
        .map(|h| {
            today_recs
                .iter()
                .filter(|r| (end(r) - report_day) / HOUR == h)
                .count() as u64
        })
        .collect();
    assert_eq!(hourly, want);
    let compare: Vec<u64> = rows(&v, "compare")
        .iter()
        .map(|c| c["calls"].as_u64().unwrap())
        .collect();
    assert_eq!(
        compare,
        [
            day_of(report_day - DAY).len() as u64,
            day_of(report_day - 7 * DAY).len() as u64
        ]
    );

    // Everything again, re-batched: all duplicates, no view changes.
    let before = api(&format!("/api/v1/endpoints?from={from}&to={to}"));
    for chunk in recs.chunks(333) {
        assert_eq!(agent.send(chunk.to_vec()), (0, chunk.len() as u32));
    }
    assert_eq!(
        api(&format!("/api/v1/endpoints?from={from}&to={to}")),
        before
    );
    // And the raw transactions: each once, across the three days.
    let mut ids = HashMap::new();
    for day in [report_day - 7 * DAY, report_day - DAY, report_day] {
        let v = api(&format!(
            "/api/v1/transactions?from={day}&to={}&limit=200000",
            day + DAY - 1
        ));
        assert_eq!(v["sampled"], false);
        for t in rows(&v, "transactions") {
            *ids.entry(t["id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
    }
    assert_eq!(ids.len(), recs.len());
    assert!(ids.values().all(|&n| n == 1));
}

#[test]
fn retention_and_the_disk_guard_drop_old_days_first() {
    let mut stack = collector("");
    let mut agent = Agent::connect(stack.grpc_port);
    let today = now_ms().div_euclid(DAY) * DAY;
    let mut rng = Rng(42);
    let mut day = |d: i64, n: u64| -> Vec<RequestRecord> {
        (0..n)
            .map(|k| {
                record(
                    &mut rng,
                    (d as u64) << 20 | k,
                    today - d * DAY + 1000 + k as i64 * 10,
                )
            })
            .collect()
    };
    // 20 days ago: past the default 14, dropped at start already.
    let (stored, _) = agent.send(day(20, 50));
    assert_eq!(stored, 0, "a day past retention is not stored");
    // 10, 4, 3 days ago and today.
    for d in [10, 4, 3, 0] {
        assert_eq!(agent.send(day(d, 2000)).0, 2000);
    }
    let stats = stack.api("/api/v1/stats").unwrap();
    assert_eq!(stats["storage"]["records_expired"], 50, "{stats}");
    assert_eq!(stats["storage"]["partitions"], 4, "{stats}");
    drop(agent);

    // Keep 5 days of transactions, 2 of spans: the 10-day-old partition
    // goes at start, the 4- and 3-day-old ones keep their summaries only.
    restart(
        &mut stack,
        "transactions_retention_days = 5\nspans_retention_days = 2\n",
    );
    let count = |stack: &Stack, d: i64| -> usize {
        let from = today - d * DAY;
        stack
            .api(&format!(
                "/api/v1/transactions?from={from}&to={}&limit=200000",
                from + DAY - 1
            ))
            .map(|v| rows(&v, "transactions").len())
            .unwrap_or(0)
    };
    assert_eq!(
        [10, 4, 3, 0].map(|d| count(&stack, d)),
        [0, 2000, 2000, 2000]
    );
    let v = stack
        .api(&format!(
            "/api/v1/transactions?from={}&to={}&limit=1",
            today - 3 * DAY,
            today - 2 * DAY
        ))
        .unwrap();
    let id = rows(&v, "transactions")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = stack.api(&format!("/api/v1/transactions/{id}")).unwrap();
    assert_eq!(d["spans_expired"], true, "{d}");
    let stats = stack.api("/api/v1/stats").unwrap();
    let s = &stats["storage"];
    assert_eq!(
        (
            s["transaction_days_dropped"].as_u64(),
            s["spans_days_dropped"].as_u64()
        ),
        (Some(1), Some(2)),
        "{stats}"
    );
    let log = std::fs::read_to_string(stack.path("collector.log")).unwrap();
    assert!(
        log.contains("retention: transactions of the day dropped"),
        "{log}"
    );

    // A disk cap the data does not fit: the oldest raw data goes, the
    // newest day stays, each drop logged and counted.
    restart(&mut stack, "max_disk_bytes = 1\n");
    wait_for("the disk guard", Duration::from_secs(10), || {
        stack
            .api("/api/v1/stats")
            .is_ok_and(|v| v["storage"]["partitions"] == 1)
    })
    .unwrap();
    assert_eq!([4, 3, 0].map(|d| count(&stack, d)), [0, 0, 2000]);
    let stats = stack.api("/api/v1/stats").unwrap();
    assert_eq!(stats["storage"]["disk_guard_drops"], 2, "{stats}");
    let log = std::fs::read_to_string(stack.path("collector.log")).unwrap();
    assert!(log.contains("disk guard: oldest raw data dropped"), "{log}");
    assert!(
        log.contains("disk guard: over its limit with only the newest day"),
        "{log}"
    );
}
