//! Benchmark: the collector's ingest rate, bytes on disk per transaction,
//! the latency of every API query over the data, and how soon a request
//! is visible. It starts the real collector (release build) on a data
//! directory, speaks to it as an agent does (Register, one Stream of
//! batches, waiting for acknowledgements), and sends synthetic transactions
//! of ≈ 10 spans each whose end times cover the last `--hours` hours at
//! `--tps` transactions a second (50 endpoints with a skewed mix, 100 SQL
//! templates, 5 hosts, 1 % failures).
//!
//! Usage (release build first: `cargo build --release`):
//!   cargo run --release -p sonde-e2e --bin bench_collector -- [--hours 1] [--tps 1338]
//!       [--dir DIR] [--keep] [--query-only] [--batch 5000] [--pregen]
//!
//! Batches are encoded as the agent sends them (the agent forwards encoded
//! bytes; so does this generator) on another thread while they are sent,
//! and zstd-compressed by the gRPC layer. `--pregen` encodes every batch
//! before the clock starts and sends them uncompressed, so that the
//! generator takes no CPU from the collector on a shared machine while the
//! ingest is timed (decompressing costs the collector ≈ 0.1 µs per
//! record; memory: ≈ 1.3 KB per transaction).
//!
//! `--hours 24` is the 24-hour data set of issue 5 (≈ 115.6 M transactions,
//! many GB): a benchmark only, never part of the test suite. `--dir` keeps
//! the data in DIR (default: a temporary directory, removed unless
//! `--keep`); `--query-only` skips ingest and measures the queries on an
//! existing DIR.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use prost::Message;
use sonde_core::civil::civil_from_days;
use sonde_e2e::{free_port, http, now_ms, wait_for};
use sonde_proto::v1::collector_client::CollectorClient;
use sonde_proto::v1::{
    agent_message, collector_message, AgentIdentity, AgentMessage, Batch, CollectorMessage,
    RegisterRequest, RequestRecord, Span, StreamHello, TraceContext,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::Bytes;
use tonic::metadata::MetadataValue;
use tonic::Request;

/// Also in `with_token`.
const TOKEN: &str = "bench-token";
const ENDPOINTS: usize = 50;
const TEMPLATES: usize = 100;
const HOSTS: usize = 5;

struct Args {
    hours: f64,
    tps: f64,
    dir: Option<PathBuf>,
    keep: bool,
    query_only: bool,
    batch: usize,
    pregen: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        hours: 1.0,
        tps: 1338.0,
        dir: None,
        keep: false,
        query_only: false,
        batch: 5000,
        pregen: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().context("a value");
        match arg.as_str() {
            "--hours" => a.hours = val()?.parse()?,
            "--tps" => a.tps = val()?.parse()?,
            "--dir" => a.dir = Some(val()?.into()),
            "--batch" => a.batch = val()?.parse()?,
            "--keep" => a.keep = true,
            "--query-only" => a.query_only = true,
            "--pregen" => a.pregen = true,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

/// xorshift64*: fast, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Skewed towards small values (a few endpoints take most traffic).
    fn skewed(&mut self, n: usize) -> usize {
        let a = self.below(n);
        let b = self.below(n);
        a.min(b)
    }
}

/// One synthetic transaction ending at `end_ms`.
fn record(rng: &mut Rng, seq: u64, end_ms: i64) -> RequestRecord {
    let ep = rng.skewed(ENDPOINTS);
    let wall_ms = 5 + rng.below(60) as u64 + if rng.below(100) == 0 { 3000 } else { 0 };
    let start_ns = (end_ms - wall_ms as i64) * 1_000_000;
    let mut spans = Vec::with_capacity(10);
    let mut t = 1_000_000u64;
    for i in 0..8 {
        let tpl = (ep * 7 + i * 13 + rng.below(3)) % TEMPLATES;
        spans.push(Span {
            kind: 1,
            start_ns: t,
            duration_ns: 200_000 + rng.below(800_000) as u64,
            statement: format!(
                "SELECT id, name, created_at FROM table_{tpl} WHERE owner_id = ? AND state = ? ORDER BY id LIMIT ?"
            ),
            db: "mysql://db-1:3306/app".into(),
            rows: rng.below(50) as i64,
            ..Default::default()
        });
        t += 1_500_000;
    }
    spans.push(Span {
        kind: 3,
        start_ns: t,
        duration_ns: 2_000_000,
        url: format!("https://api.partner.example/v1/items/{}", ep % 5),
        status: 200,
        ..Default::default()
    });
    spans.push(Span {
        kind: 4,
        start_ns: t + 2_500_000,
        duration_ns: 150_000,
        operation: "GET".into(),
        db: "redis://cache:6379".into(),
        ..Default::default()
    });
    // Random ids and a trace context, as the extension makes them.
    let _ = seq;
    let mut id = vec![0u8; 16];
    id[..8].copy_from_slice(&rng.next().to_le_bytes());
    id[8..].copy_from_slice(&rng.next().to_le_bytes());
    let mut trace_id = vec![0u8; 16];
    trace_id[..8].copy_from_slice(&rng.next().to_le_bytes());
    trace_id[8..].copy_from_slice(&rng.next().to_le_bytes());
    let failed = rng.below(100) == 0;
    RequestRecord {
        id,
        app: "fanapp".into(),
        host: format!("web-{}", rng.below(HOSTS) + 1),
        method: "GET".into(),
        url: format!("/api/v2/endpoint{ep}/{}?lang=ko", rng.below(100_000)),
        status: if failed { 500 } else { 200 },
        start_unix_ns: start_ns,
        wall_ns: wall_ms * 1_000_000,
        cpu_user_ns: wall_ms * 250_000,
        cpu_sys_ns: wall_ms * 50_000,
        peak_memory_bytes: 2 << 20,
        client_ip: format!("10.1.{}.{}", rng.below(250), rng.below(250)),
        trace: Some(TraceContext {
            trace_id,
            span_id: rng.next().to_le_bytes().to_vec(),
            ..Default::default()
        }),
        spans,
        ..Default::default()
    }
}

fn collector_bin() -> Result<PathBuf> {
    let root = sonde_e2e::repo_root();
    for p in [
        "target/release/sonde-collector",
        "target/debug/sonde-collector",
    ] {
        let path = root.join(p);
        if path.exists() {
            return Ok(path);
        }
    }
    bail!("no sonde-collector binary: cargo build --release first")
}

struct Collector {
    child: Child,
    grpc: u16,
    http: u16,
}

impl Collector {
    fn start(dir: &Path) -> Result<Collector> {
        let (grpc, http) = (free_port(), free_port());
        std::fs::create_dir_all(dir)?;
        let cfg = dir.join("bench-collector.toml");
        std::fs::write(
            &cfg,
            format!(
                "[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n\
                 [storage]\npath = \"{}\"\n[auth]\nagent_tokens = [\"{TOKEN}\"]\n\
                 [alerts]\ndefaults = false\n",
                dir.join("data").display()
            ),
        )?;
        let child = Command::new(collector_bin()?)
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        wait_for("the collector", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", http)).is_ok()
        })?;
        Ok(Collector { child, grpc, http })
    }

    /// utime + stime of the collector, seconds.
    fn cpu_s(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            };
        }
    }
    total
}

/// Adds the agent token. tonic fixes the interceptor's error type.
#[allow(clippy::result_large_err)]
fn with_token(mut r: Request<()>) -> Result<Request<()>, tonic::Status> {
    r.metadata_mut().insert(
        "authorization",
        MetadataValue::from_static("Bearer bench-token"),
    );
    Ok(r)
}

/// A gRPC codec that sends agent messages already encoded (as the agent
/// forwards its records) and decodes the collector's replies.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct ReplyDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for ReplyDecoder {
    type Item = CollectorMessage;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<CollectorMessage>, tonic::Status> {
        CollectorMessage::decode(buf)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = CollectorMessage;
    type Encoder = RawEncoder;
    type Decoder = ReplyDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ReplyDecoder {
        ReplyDecoder
    }
}

/// One batch of `n` transactions from `seq` on, encoded as an agent message.
fn encoded_batch(
    rng: &mut Rng,
    seq: u64,
    n: usize,
    batch_id: u64,
    from_ms: i64,
    per_ms: f64,
) -> Bytes {
    let records = (0..n)
        .map(|i| {
            let s = seq + i as u64;
            record(rng, s, from_ms + (s as f64 * per_ms) as i64)
        })
        .collect();
    let msg = AgentMessage {
        msg: Some(agent_message::Msg::Batch(Batch {
            batch_id,
            records,
            ..Default::default()
        })),
    };
    msg.encode_to_vec().into()
}

/// Sends `total` transactions ending between `from_ms` and `to_ms`, in
/// batches, keeping up to 4 unacknowledged. Returns the wall time.
async fn ingest(
    c: &Collector,
    total: u64,
    from_ms: i64,
    to_ms: i64,
    batch: usize,
    pregen: bool,
) -> Result<Duration> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", c.grpc))?
        .connect()
        .await?;
    let mut client = CollectorClient::with_interceptor(channel.clone(), with_token);
    let reg = client
        .register(RegisterRequest {
            identity: Some(AgentIdentity {
                agent_id: "bench".into(),
                hostname: "bench".into(),
                session_id: "bench-session".into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();

    // Generate on another thread so that the sender is never the limit;
    // with `pregen`, everything before the clock starts.
    let per_ms = (to_ms - from_ms).max(1) as f64 / total.max(1) as f64;
    let batches = total.div_ceil(batch as u64) as usize;
    let (gen_tx, mut gen_rx) =
        tokio::sync::mpsc::channel::<Bytes>(if pregen { batches.max(1) } else { 4 });
    let generator = std::thread::spawn(move || {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut seq = 0u64;
        let mut batch_id = 0u64;
        while seq < total {
            let n = batch.min((total - seq) as usize);
            batch_id += 1;
            let b = encoded_batch(&mut rng, seq, n, batch_id, from_ms, per_ms);
            seq += n as u64;
            if gen_tx.blocking_send(b).is_err() {
                return;
            }
        }
    });
    if pregen {
        eprintln!("  encoding {batches} batches before the clock starts…");
        tokio::task::spawn_blocking(move || generator.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the generator panicked"))?;
    }

    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let hello = AgentMessage {
        msg: Some(agent_message::Msg::Hello(StreamHello {
            agent_id: reg.agent_id.clone(),
            session_id: "bench-session".into(),
        })),
    };
    tx.send(hello.encode_to_vec().into()).await?;
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
    if !pregen {
        grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Zstd);
    }
    grpc.ready().await?;
    let mut request = Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::from_static("Bearer bench-token"),
    );
    let mut inbound = grpc
        .streaming(
            request,
            tonic::codegen::http::uri::PathAndQuery::from_static("/sonde.v1.Collector/Stream"),
            RawCodec,
        )
        .await?
        .into_inner();

    let started = Instant::now();
    let mut in_flight = 0usize;
    let mut acked = 0u64;
    let mut generated_all = false;
    let mut last_report = Instant::now();
    while acked < total {
        tokio::select! {
            b = gen_rx.recv(), if in_flight < 4 && !generated_all => match b {
                Some(b) => {
                    tx.send(b).await?;
                    in_flight += 1;
                }
                None => generated_all = true,
            },
            m = inbound.message() => match m? {
                Some(m) => match m.msg {
                    Some(collector_message::Msg::Ack(a)) => {
                        in_flight -= 1;
                        acked += u64::from(a.stored + a.duplicates);
                    }
                    Some(collector_message::Msg::Reject(r)) => bail!("batch rejected: {r:?}"),
                    _ => {}
                },
                None => bail!("the collector ended the stream"),
            },
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            let rate = acked as f64 / started.elapsed().as_secs_f64();
            eprintln!("  {acked}/{total} stored, {rate:.0}/s");
            last_report = Instant::now();
        }
    }
    Ok(started.elapsed())
}

/// p50 and p95 of `n` runs of GET `path`, milliseconds.
fn latency(port: u16, path: &str, n: usize) -> Result<(f64, f64)> {
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = http::request(port, "GET", path, &[], "")?;
        if r.status != 200 {
            bail!(
                "GET {path}: {} {}",
                r.status,
                &r.body[..r.body.len().min(200)]
            );
        }
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    Ok((at(0.5), at(0.95)))
}

fn main() -> Result<()> {
    let a = args()?;
    let temp = tempfile::Builder::new()
        .prefix("sonde-bench-collector-")
        .tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    let collector = Collector::start(&dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // The data set ends when it was made; `--query-only` reads back when
    // that was, so the queries look at the data's last minutes.
    let end_file = dir.join("bench-end-ms");
    let to_ms = if a.query_only {
        std::fs::read_to_string(&end_file)
            .context("--query-only needs a --dir made by an earlier run")?
            .trim()
            .parse()?
    } else {
        let t = now_ms();
        std::fs::write(&end_file, t.to_string())?;
        t
    };
    let from_ms = to_ms - (a.hours * 3_600_000.0) as i64;
    let total = (a.hours * 3600.0 * a.tps) as u64;

    if !a.query_only {
        let disk_before = dir_bytes(&dir.join("data"));
        let cpu_before = collector.cpu_s();
        eprintln!(
            "ingesting {total} transactions ({} h at {} TPS, 10 spans each)…",
            a.hours, a.tps
        );
        let wall =
            runtime.block_on(ingest(&collector, total, from_ms, to_ms, a.batch, a.pregen))?;
        let cpu = collector.cpu_s() - cpu_before;
        // Let the WAL checkpoint, then measure the files.
        std::thread::sleep(Duration::from_secs(2));
        let disk = dir_bytes(&dir.join("data")) - disk_before;
        println!("ingest: {total} transactions in {:.1} s = {:.0}/s wall; collector CPU {:.1} s = {:.2} µs/transaction ({:.0}/s per core)",
            wall.as_secs_f64(), total as f64 / wall.as_secs_f64(), cpu, cpu * 1e6 / total as f64, total as f64 / cpu.max(1e-9));
        println!(
            "disk: {disk} bytes = {:.0} bytes/transaction",
            disk as f64 / total.max(1) as f64
        );
    }

    // Every screen's queries over the whole range.
    let day = |ms: i64| {
        let (y, m, d) = civil_from_days(ms.div_euclid(86_400_000));
        format!("{y:04}-{m:02}-{d:02}")
    };
    // The data ends when ingest started (`to_ms`); the screens look at
    // its last minutes.
    let five_min = to_ms - 300_000;
    let last = |path: &str| -> Option<serde_json::Value> {
        http::request(collector.http, "GET", path, &[], "")
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
    };
    let one = last(&format!(
        "/api/v1/transactions?from={}&to={to_ms}&limit=1",
        to_ms - 60_000
    ))
    .and_then(|v| v["transactions"].get(0).cloned())
    .unwrap_or_default();
    let some_id = one["id"].as_str().unwrap_or_default().to_owned();
    let some_trace = one["trace_id"].as_str().unwrap_or_default().to_owned();
    let some_ts = one["ts_ms"].as_i64().unwrap_or(to_ms);
    let queries = [
        (
            "endpoints, whole range",
            format!("/api/v1/endpoints?from={from_ms}&to={to_ms}"),
        ),
        (
            "endpoints, last hour",
            format!("/api/v1/endpoints?from={}&to={to_ms}", to_ms - 3_600_000),
        ),
        (
            "sql, whole range",
            format!("/api/v1/sql?from={from_ms}&to={to_ms}"),
        ),
        (
            "sql, one endpoint",
            format!("/api/v1/sql?from={from_ms}&to={to_ms}&endpoint=/api/v2/endpoint1/%7Bnum%7D"),
        ),
        (
            "externals, whole range",
            format!("/api/v1/externals?from={from_ms}&to={to_ms}"),
        ),
        (
            "externals, one endpoint",
            format!(
                "/api/v1/externals?from={from_ms}&to={to_ms}&endpoint=/api/v2/endpoint1/%7Bnum%7D"
            ),
        ),
        (
            "series, whole range",
            format!("/api/v1/series?from={from_ms}&to={to_ms}"),
        ),
        (
            "series, last 5 min by second",
            format!("/api/v1/series?from={five_min}&to={to_ms}&step_s=1"),
        ),
        (
            "daily report with comparisons",
            format!("/api/v1/reports/daily?date={}&tz=UTC", day(to_ms)),
        ),
        (
            "scatter, 5 min (limit 10000)",
            format!("/api/v1/transactions?from={five_min}&to={to_ms}"),
        ),
        (
            "scatter, 5 min (limit 200000)",
            format!("/api/v1/transactions?from={five_min}&to={to_ms}&limit=200000"),
        ),
        (
            "scatter, whole range (limit 10000)",
            format!("/api/v1/transactions?from={from_ms}&to={to_ms}"),
        ),
        (
            "drag-select, 30 s ≥ 1 s",
            format!(
                "/api/v1/transactions?from={}&to={}&min_ms=1000",
                to_ms - 60_000,
                to_ms - 30_000
            ),
        ),
        (
            "trace lookup (±60 s)",
            format!("/api/v1/transactions?trace_id={some_trace}&around_ms={some_ts}"),
        ),
        (
            "transaction detail",
            format!("/api/v1/transactions/{some_id}"),
        ),
    ];
    println!("queries (p50 / p95 of 20 runs, ms):");
    for (name, path) in &queries {
        match latency(collector.http, path, 20) {
            Ok((p50, p95)) => println!("  {name:32} {p50:8.1} {p95:8.1}"),
            Err(e) => println!("  {name:32} failed: {e:#}"),
        }
    }

    // Request end → visible in the API.
    let visible = runtime.block_on(async {
        let end = now_ms();
        ingest(&collector, 1, end, end, 1, false).await?;
        let t = Instant::now();
        let path = format!(
            "/api/v1/transactions?from={}&to={}&limit=10",
            end - 5,
            end + 5
        );
        loop {
            let r = http::request(collector.http, "GET", &path, &[], "")?;
            if r.body.contains("\"id\"") {
                return Ok::<_, anyhow::Error>((now_ms() - end, t.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })?;
    println!(
        "end → visible in the API: {} ms (of which after the acknowledgement: {:?})",
        visible.0, visible.1
    );
    if a.keep || a.dir.is_some() {
        println!("data kept in {}", dir.display());
        std::mem::forget(temp);
    }
    Ok(())
}
