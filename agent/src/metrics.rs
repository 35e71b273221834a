//! The agent's own metrics for Prometheus: `GET /metrics` on
//! `metrics_listen` (loopback by default), text exposition format 0.0.4.
//! A deliberately tiny HTTP/1.1 responder: one request per connection, a
//! bounded request head read under a timeout, nothing else served. It reads
//! the shared counters and never blocks the data path.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::counters::{get, Counters, DropReason};
use crate::shutdown::Shutdown;

/// Longest request head read.
const MAX_HEAD: usize = 8 << 10;
/// A client has this long to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr`. A failure is the caller's to report: the endpoint is an
/// aid, not a reason to stop forwarding data.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    TcpListener::bind(addr).await
}

/// Serves until shutdown.
pub async fn serve(listener: TcpListener, counters: Arc<Counters>, mut shutdown: Shutdown) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving the agent's metrics at /metrics");
    }
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let counters = counters.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, &counters)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(error)) => debug!(%error, %peer, "metrics request failed"),
                            Err(_) => debug!(%peer, "metrics request timed out"),
                        }
                    });
                }
                Err(error) => {
                    warn!(%error, "cannot accept a metrics connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn answer(mut stream: TcpStream, counters: &Counters) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = render(counters);
            let body = if method == "HEAD" {
                String::new()
            } else {
                body
            };
            respond(&mut stream, "200 OK", &body).await
        }
        ("GET" | "HEAD", _) => {
            respond(&mut stream, "404 Not Found", "not found; try /metrics\n").await
        }
        _ => respond(&mut stream, "405 Method Not Allowed", "").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The exposition text.
pub fn render(c: &Counters) -> String {
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP sonde_agent_{name} {help}");
        let _ = writeln!(out, "# TYPE sonde_agent_{name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "sonde_agent_{name}{labels} {v}");
        }
    };
    let counter = "counter";
    let gauge = "gauge";
    metric(
        "messages_received_total",
        counter,
        "Messages read from the extension socket, valid or not.",
        &[("", get(&c.messages_received))],
    );
    metric(
        "received_bytes_total",
        counter,
        "Bytes read from the extension socket.",
        &[("", get(&c.bytes_received))],
    );
    metric(
        "records_received_total",
        counter,
        "Well-formed records decoded from the extension socket.",
        &[("", get(&c.records_received))],
    );
    metric(
        "records_malformed_total",
        counter,
        "Socket messages refused: bad frame, undecodable, empty, no id or oversized.",
        &[("", get(&c.records_malformed))],
    );
    let by_reason: Vec<(String, u64)> = DropReason::ALL
        .iter()
        .map(|r| (format!("{{reason=\"{}\"}}", r.label()), c.dropped(*r)))
        .collect();
    let by_reason: Vec<(&str, u64)> = by_reason.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(
        "records_dropped_total",
        counter,
        "Records the agent lost, by reason.",
        &by_reason,
    );
    metric(
        "ext_records_dropped_total",
        counter,
        "Records the PHP extension reported it could not send.",
        &[("", get(&c.ext_records_dropped))],
    );
    metric(
        "records_spooled_total",
        counter,
        "Records written to the disk spool.",
        &[("", get(&c.records_spooled))],
    );
    metric(
        "spooled_bytes_total",
        counter,
        "Bytes written to the disk spool.",
        &[("", get(&c.bytes_spooled))],
    );
    metric(
        "records_replayed_total",
        counter,
        "Records sent to the collector from the disk spool.",
        &[("", get(&c.records_replayed))],
    );
    metric(
        "records_sent_total",
        counter,
        "Records sent to the collector (each batch counted once).",
        &[("", get(&c.records_sent))],
    );
    metric(
        "sent_bytes_total",
        counter,
        "Encoded bytes of batches sent to the collector, before compression.",
        &[("", get(&c.bytes_sent))],
    );
    metric(
        "records_acked_total",
        counter,
        "Records in batches the collector acknowledged.",
        &[("", get(&c.records_acked))],
    );
    metric(
        "batches_acked_total",
        counter,
        "Batches the collector acknowledged.",
        &[("", get(&c.batches_acked))],
    );
    metric(
        "batches_rejected_total",
        counter,
        "Batches the collector rejected.",
        &[("", get(&c.batches_rejected))],
    );
    metric(
        "host_samples_total",
        counter,
        "Host metrics samples taken.",
        &[("", get(&c.host_samples))],
    );
    metric(
        "spool_bytes",
        gauge,
        "Bytes in the disk spool now.",
        &[("", get(&c.spool_bytes))],
    );
    metric(
        "spool_segments",
        gauge,
        "Segment files in the disk spool now.",
        &[("", get(&c.spool_segments))],
    );
    metric(
        "collector_connected",
        gauge,
        "1 while a stream to the collector is open.",
        &[("", get(&c.connected))],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::add;

    #[test]
    fn exposition_has_every_counter_and_the_drop_reasons() {
        let c = Counters::default();
        add(&c.records_received, 3);
        c.drop_records(DropReason::SpoolFull, 2);
        let text = render(&c);
        assert!(
            text.contains("sonde_agent_records_received_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("sonde_agent_records_dropped_total{reason=\"spool_full\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("sonde_agent_records_dropped_total{reason=\"queue_full\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE sonde_agent_spool_bytes gauge\n"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("sonde_agent_"), "{line}");
            value.parse::<u64>().unwrap();
        }
    }

    #[tokio::test]
    async fn answers_get_metrics_and_refuses_the_rest() {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        add(&counters.records_acked, 7);
        let (_stop, shutdown) = crate::shutdown::channel();
        tokio::spawn(serve(listener, counters, shutdown));
        let ask = |req: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("sonde_agent_records_acked_total 7\n"), "{ok}");
        let nf = ask("GET / HTTP/1.1\r\n\r\n").await;
        assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
        let bad = ask("POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 405"), "{bad}");
    }
}
