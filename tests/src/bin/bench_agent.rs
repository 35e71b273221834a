//! Benchmark: the agent's cost per record. Starts the real collector and
//! agent (release builds), writes synthetic request records (≈ 10 spans
//! each, ~1 KiB) into the agent's record ring the way PHP workers do, and
//! measures the agent process's CPU time (utime+stime from /proc) and RSS:
//! (1) at 1,338 and 10,000 records/s for 10 s each, from a fresh agent;
//! (2) as fast as the producer can (300,000 records unless given), for the
//! maximum rate on one core: the agent's CPU time until the collector has
//! acknowledged the last record, divided by the records.
//!
//! With `--raw` the records are raw frames, as the extension hands them
//! over (`sonde-capture::raw`): the shape of the realistic benchmark page
//! (10 SQL statements with inlined ids, a fetch of 100 rows, one curl call),
//! which the agent normalises and encodes itself.
//!
//! With `--encode-only` no agent runs: up to 100,000 such raw frames are
//! made, then turned into records 20 times over by one `Encoder` in this
//! process — the agent's added cost per raw record, warm.
//!
//! With `--null-collector` the agent talks to a stand-in collector in this
//! process that acknowledges every batch at once and stores nothing: the
//! agent's own ceiling, without the collector's pace (a collector slower
//! than the agent sends its batches through the disk spool, which the
//! figures then include).
//!
//! Usage: cargo build --release && cargo run --release -p sonde-e2e --bin bench_agent -- [RECORDS] [--null-collector] [--raw] [--encode-only]

#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use prost::Message;
use sonde_core::ring as r;
use sonde_e2e::{wait_for, Stack, StackOptions};
use sonde_proto::v1::collector_server::{Collector, CollectorServer};
use sonde_proto::v1::{
    agent_message, collector_message, ext_message, Ack, AgentMessage, CollectorMessage,
    DeregisterRequest, DeregisterResponse, ExtMessage, RegisterRequest, RegisterResponse,
    RequestRecord, Span,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status, Streaming};

/// A producer writing the ring file directly (one process, so plain
/// reads and writes of `head` suffice).
struct Producer {
    file: std::fs::File,
    cap: u64,
    head: u64,
}

impl Producer {
    fn open(path: &std::path::Path) -> Result<Producer> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut h = vec![0u8; r::HEADER_BYTES];
        file.read_exact_at(&mut h, 0)?;
        let cap = r::parse_header(&h).context("not a ring")?;
        let head = r::u64_at(&h, r::H_HEAD);
        Ok(Producer { file, cap, head })
    }

    fn tail(&self) -> u64 {
        let mut b = [0u8; 8];
        let _ = self.file.read_exact_at(&mut b, r::H_TAIL as u64);
        u64::from_le_bytes(b)
    }

    /// Writes one frame; false when the ring is full.
    fn push(&mut self, frame: &[u8]) -> bool {
        let need = r::entry_bytes(frame.len());
        let (pad, off) = r::placement(self.head, need, self.cap);
        if !r::fits(self.head, self.tail(), pad, need, self.cap) {
            return false;
        }
        let base = r::HEADER_BYTES as u64;
        if pad > 0 {
            let mut e = [0u8; 8];
            e[..4].copy_from_slice(&((pad - 8) as u32).to_le_bytes());
            e[4..].copy_from_slice(&r::STATE_PADDING.to_le_bytes());
            let _ = self.file.write_all_at(&e, base + self.head % self.cap);
        }
        let mut entry = Vec::with_capacity(8 + frame.len());
        entry.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        entry.extend_from_slice(&r::STATE_COMMITTED.to_le_bytes());
        entry.extend_from_slice(frame);
        let _ = self.file.write_all_at(&entry, base + off);
        self.head += pad + need;
        let _ = self
            .file
            .write_all_at(&self.head.to_le_bytes(), r::H_HEAD as u64);
        true
    }
}

fn frame(i: u64) -> Vec<u8> {
    let span = |k: i32, n: u64| Span {
        kind: k,
        start_ns: n * 1000,
        duration_ns: 250_000,
        statement: "SELECT id, title, likes FROM photos WHERE lang = ? ORDER BY id LIMIT ?".into(),
        db: "mysql://127.0.0.1:3306/app".into(),
        rows: 20,
        library: "pdo".into(),
        ..Default::default()
    };
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&i.to_be_bytes());
    id[8..].copy_from_slice(&0x5eed_u64.to_be_bytes());
    let rec = RequestRecord {
        id: id.to_vec(),
        app: "bench".into(),
        pid: 4242,
        start_unix_ns: 1_800_000_000_000_000_000 + i as i64 * 1000,
        wall_ns: 3_000_000,
        method: "GET".into(),
        url: format!("/api/v6/photos?lang=ko&page={}", i % 7),
        endpoint: "/api/v6/photos".into(),
        status: 200,
        spans: (0..10)
            .map(|n| span(if n % 2 == 0 { 1 } else { 2 }, n))
            .collect(),
        ..Default::default()
    };
    let mut out = Vec::new();
    sonde_core::frame::start(&mut out, sonde_core::frame::Kind::ExtMessage);
    ExtMessage {
        msg: Some(ext_message::Msg::Record(rec)),
    }
    .encode(&mut out)
    .unwrap();
    out
}

/// A raw frame like the realistic page's (10 statements, ids inlined and
/// varying per record; a fetch of 100 rows; one curl call).
fn raw_frame(i: u64, buf: &mut sonde_capture::spans::SpanBuf, out: &mut Vec<u8>) {
    use sonde_capture::record::{Captured, Ids};
    use sonde_capture::spans::{Library, RawSpan};
    use sonde_proto::v1::SpanKind;
    buf.clear();
    let db = buf.db(1, || {
        Some((&b"mysql"[..], &b"host=127.0.0.1;port=3306;dbname=app"[..]))
    });
    for n in 0..10u64 {
        let sql = match n % 3 {
            0 => format!(
                "SELECT id, title, likes FROM photos WHERE id = {}",
                (i + n) % 5000
            ),
            1 => format!(
                "UPDATE photos SET views = views + 1 WHERE id = {}",
                (i * 7 + n) % 5000
            ),
            _ => "SELECT id, name FROM users WHERE lang = 'ko' ORDER BY id LIMIT 20".to_string(),
        };
        let text = buf.text(sql.as_bytes());
        let idx = buf.push(RawSpan {
            kind: SpanKind::Sql as i32,
            library: Library::PDO,
            start_ns: 10_000 + n * 300_000,
            duration_ns: 250_000,
            text,
            db,
            rows: 1,
            calls: 1,
            ..Default::default()
        });
        if n == 9 {
            buf.open_result(77, idx);
            buf.fetch(77, Library::PDO, 3_100_000, 3_300_000, 100);
        }
    }
    buf.external(
        Library::CURL,
        3_400_000,
        500_000,
        b"http://127.0.0.1:8080/t/callee.php?via=curl",
        b"GET",
        200,
        b"",
        [7; 8],
    );
    let mut record = [0u8; 16];
    record[..8].copy_from_slice(&i.to_be_bytes());
    record[8..].copy_from_slice(&0x5eed_u64.to_be_bytes());
    let ids = Ids {
        record,
        trace: record,
        span: [1; 8],
        ..Default::default()
    };
    let uri = format!("/api/v6/photos?lang=ko&page={}", i % 7);
    let c = Captured {
        app: "bench",
        pid: 4242,
        start_unix_ns: 1_800_000_000_000_000_000 + i as i64 * 1000,
        wall_ns: 3_000_000,
        method: "GET",
        uri: &uri,
        status: 200,
        client_ip: "10.0.0.7",
        visitor_id: "v-17",
        http_host: "bench.local",
        ids: Some(&ids),
        sapi: "fpm-fcgi",
        php_version: "8.2.36",
        ext_version: "0.1.0",
        ..Default::default()
    };
    sonde_capture::raw::write(out, &c, "", Some((buf, 0.4)));
}

/// `--encode-only`: the time to turn one raw frame into its record.
fn encode_only(n: u64) -> Result<()> {
    let mut spans = sonde_capture::spans::SpanBuf::new(100);
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut out = Vec::new();
            raw_frame(i, &mut spans, &mut out);
            out
        })
        .collect();
    let mut enc = sonde_capture::raw::Encoder::new();
    let passes = 20;
    let t = Instant::now();
    let mut bytes = 0;
    for _ in 0..passes {
        for f in &frames {
            bytes += enc.encode(f).map_err(|e| anyhow::anyhow!("{e}"))?.len();
        }
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / (n * passes) as f64;
    println!(
        "encode only: {n} raw frames x{passes}, {per:.2} µs each, {} bytes per record",
        bytes / (n * passes) as usize
    );
    Ok(())
}

/// utime+stime (ticks, 100/s) and RSS (KiB) of `pid`.
fn usage(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let cpu = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((cpu, rss))
}

/// A collector that acknowledges every batch as it arrives and keeps
/// nothing.
struct NullCollector;

#[tonic::async_trait]
impl Collector for NullCollector {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let agent_id = req.into_inner().identity.unwrap_or_default().agent_id;
        Ok(Response::new(RegisterResponse {
            agent_id,
            heartbeat_interval_ms: 5000,
            max_message_bytes: 16 << 20,
            collector_version: "bench-null".into(),
            ..Default::default()
        }))
    }

    type StreamStream = ReceiverStream<Result<CollectorMessage, Status>>;

    async fn stream(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(agent_message::Msg::Batch(b)) = m.msg {
                    let ack = Ack {
                        batch_id: b.batch_id,
                        stored: b.records.len() as u32,
                        duplicates: 0,
                    };
                    let msg = CollectorMessage {
                        msg: Some(collector_message::Msg::Ack(ack)),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn deregister(
        &self,
        _: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        Ok(Response::new(DeregisterResponse {}))
    }
}

/// Serves `NullCollector` on 127.0.0.1:`port` from a thread of its own.
fn start_null_collector(port: u16) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let service = CollectorServer::new(NullCollector)
            .accept_compressed(CompressionEncoding::Zstd)
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(64 << 20);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let served = rt.block_on(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve(addr),
        );
        if let Err(e) = served {
            eprintln!("null collector: {e}");
        }
    });
}

fn main() -> Result<()> {
    if std::env::var_os("SONDE_BIN_DIR").is_none() {
        std::env::set_var(
            "SONDE_BIN_DIR",
            sonde_e2e::repo_root().join("target/release"),
        );
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let null_collector = args.iter().any(|a| a == "--null-collector");
    let raw = args.iter().any(|a| a == "--raw");
    let mut spans = sonde_capture::spans::SpanBuf::new(100);
    let mut out = Vec::new();
    let mut frame = |i: u64| -> Vec<u8> {
        if raw {
            raw_frame(i, &mut spans, &mut out);
            out.clone()
        } else {
            frame(i)
        }
    };
    let n: u64 = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|a| a.parse())
        .transpose()
        .context("usage: bench_agent [RECORDS] [--null-collector] [--raw] [--encode-only]")?
        .unwrap_or(300_000);
    if args.iter().any(|a| a == "--encode-only") {
        return encode_only(n.min(100_000));
    }
    let stack = Stack::start(&StackOptions {
        extension: false,
        collector: !null_collector,
        ..Default::default()
    })?;
    if null_collector {
        start_null_collector(stack.grpc_port);
        let metrics = || stack.agent_metric("sonde_agent_collector_connected");
        wait_for("the agent to connect", Duration::from_secs(30), || {
            metrics().unwrap_or(0) == 1
        })?;
    }
    println!(
        "collector: {}",
        if null_collector {
            "a stand-in acknowledging every batch at once"
        } else {
            "the real one"
        }
    );
    let agent = stack
        .procs
        .iter()
        .find(|p| p.name == "agent")
        .context("agent")?
        .pid();
    let mut p = Producer::open(&stack.path("agent.ring"))?;
    let bytes = frame(0).len();

    // (1) Fixed rates, from a fresh agent.
    for rate in [1_338u64, 10_000] {
        let secs = 10u64;
        let (c0, _) = usage(agent)?;
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < Duration::from_secs(secs) {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                if p.push(&frame(1_000_000 + rate * 100_000 + sent)) {
                    sent += 1;
                } else {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let (c1, rss) = usage(agent)?;
        let pct = (c1 - c0) as f64 / 100.0 / secs as f64 * 100.0;
        println!(
            "at {rate}/s for {secs} s: agent CPU {pct:.2}% of one core, RSS {} MiB, {sent} records",
            rss / 1024
        );
    }
    // (2) As fast as possible: the agent's CPU from the first record to the
    // collector's acknowledgement of the last, so everything it does for
    // them (checking, batching, compressing, sending, any spooling) counts.
    let metric = |name: &str| stack.agent_metric(name).unwrap_or(0);
    let acked0 = metric("sonde_agent_records_acked_total");
    let dropped0 = metric("sonde_agent_records_dropped_total");
    let spooled0 = metric("sonde_agent_records_spooled_total");
    let (cpu0, _) = usage(agent)?;
    let t0 = Instant::now();
    let mut i = 0u64;
    while i < n {
        if p.push(&frame(i)) {
            i += 1;
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let produced = t0.elapsed();
    wait_for(
        "the collector to acknowledge every record",
        Duration::from_secs(300),
        || {
            metric("sonde_agent_records_acked_total") - acked0
                + (metric("sonde_agent_records_dropped_total") - dropped0)
                >= n
        },
    )?;
    let acked = t0.elapsed();
    let (cpu1, rss1) = usage(agent)?;
    let cpu_s = (cpu1 - cpu0) as f64 / 100.0;
    println!("record size ≈ {bytes} bytes (10 spans)");
    println!(
        "max: {n} records produced in {:.2} s, all acknowledged after {:.2} s \
         (dropped {}, spooled {}); agent CPU {:.2} s = {:.2} µs/record = {:.0} records/s per core; RSS {} MiB",
        produced.as_secs_f64(),
        acked.as_secs_f64(),
        metric("sonde_agent_records_dropped_total") - dropped0,
        metric("sonde_agent_records_spooled_total") - spooled0,
        cpu_s,
        cpu_s * 1e6 / n as f64,
        n as f64 / cpu_s,
        rss1 / 1024
    );
    // Drops since the agent started, by reason (none expected below the
    // spool's size).
    let text = sonde_e2e::http::request(stack.agent_metrics_port, "GET", "/metrics", &[], "")
        .map(|r| r.body)
        .unwrap_or_default();
    for line in text.lines() {
        if line.starts_with("sonde_agent_records_dropped_total{") && !line.ends_with(" 0") {
            println!("  {line}");
        }
    }

    Ok(())
}
