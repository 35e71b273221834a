//! Webhook delivery: one task and one bounded queue per configured webhook,
//! so a slow or dead receiver delays only itself. A full queue drops the
//! new event for that channel (counted, warned on the first drop); a failed
//! POST is retried with exponential backoff up to `max_attempts`, then
//! given up (counted and logged). Plain HTTP/1.1 over a TCP stream: the
//! collector has no HTTP client or TLS stack, and this needs neither.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::config::{WebhookConfig, WebhookFormat};
use crate::shutdown::Shutdown;
use crate::storage::EventRecord;

/// Wait before the first retry; doubled for each further one.
const RETRY_BASE: Duration = Duration::from_secs(1);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Delivery counters over every channel, for `/api/v1/stats`.
#[derive(Debug, Default)]
pub struct DeliveryCounters {
    /// Events delivered (a 2xx answer).
    pub sent: AtomicU64,
    /// Attempts that failed (connection, timeout or non-2xx answer).
    pub failed_attempts: AtomicU64,
    /// Events given up after `max_attempts`.
    pub gave_up: AtomicU64,
    /// Events not queued because a channel's queue was full.
    pub dropped: AtomicU64,
}

/// As `/api/v1/stats` shows them.
#[derive(Debug, Serialize, PartialEq)]
pub struct DeliveryView {
    pub sent: u64,
    pub failed_attempts: u64,
    pub gave_up: u64,
    pub dropped: u64,
}

impl DeliveryCounters {
    pub fn view(&self) -> DeliveryView {
        DeliveryView {
            sent: self.sent.load(Ordering::Relaxed),
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            gave_up: self.gave_up.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// `http://host[:port][/path]` → (host, port, path). Anything else (https,
/// user info, an empty host) is refused.
pub fn parse_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        // [::1]:8080 or [::1]
        let (host, rest) = v6.split_once(']')?;
        match rest.strip_prefix(':') {
            Some(p) => (host, p.parse::<u16>().ok()?),
            None if rest.is_empty() => (host, 80),
            None => return None,
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().ok()?),
            None => (authority, 80),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port, path.to_owned()))
}

/// The request body for `format`.
pub fn body(format: WebhookFormat, event: &EventRecord) -> Vec<u8> {
    let value = match format {
        WebhookFormat::Json => json!({
            "version": 1,
            "source": "sonde",
            "event": {
                "id": (event.id > 0).then_some(event.id),
                "ts_ms": event.ts_ms,
                "level": event.level,
                "kind": event.kind,
                "state": event.state,
                "message": event.message,
                "app": event.app,
                "endpoint": event.endpoint,
                "host": event.host,
                "rule": event.rule,
                "value": event.value,
                "threshold": event.threshold,
            }
        }),
        WebhookFormat::Slack => {
            let icon = match (event.state.as_str(), event.level.as_str()) {
                ("resolved", _) => ":white_check_mark:",
                (_, "critical") => ":red_circle:",
                _ => ":warning:",
            };
            json!({ "text": format!("{icon} {}", event.message) })
        }
    };
    serde_json::to_vec(&value).expect("JSON values always serialise")
}

/// `sha256=HEX`, the HMAC-SHA256 of `body` with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Why one attempt failed.
#[derive(Debug, Error)]
pub enum DeliveryError {
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("answered with status {0}")]
    Status(u16),
    #[error("answer is not HTTP")]
    BadAnswer,
}

/// One POST; Ok on a 2xx answer.
pub async fn post(cfg: &WebhookConfig, body: &[u8]) -> Result<(), DeliveryError> {
    let (host, port, path) = parse_url(&cfg.url).ok_or(DeliveryError::BadAnswer)?;
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let attempt = async {
        let mut stream = TcpStream::connect((host.as_str(), port)).await?;
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nUser-Agent: sonde-collector/{}\r\nConnection: close\r\n",
            body.len(),
            env!("CARGO_PKG_VERSION")
        );
        if !cfg.secret.is_empty() {
            head.push_str(&format!(
                "X-Sonde-Signature: {}\r\n",
                signature(&cfg.secret, body)
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.flush().await?;
        // The status line is all we need.
        let mut answer = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 4096 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&answer);
        let status: u16 = line
            .strip_prefix("HTTP/1.")
            .and_then(|l| l.get(2..5))
            .and_then(|s| s.parse().ok())
            .ok_or(DeliveryError::BadAnswer)?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(DeliveryError::Status(status))
        }
    };
    tokio::time::timeout(Duration::from_millis(cfg.timeout_ms), attempt)
        .await
        .map_err(|_| DeliveryError::Timeout)?
}

/// The sending end of one webhook's queue.
pub struct Channel {
    pub name: String,
    tx: mpsc::Sender<Arc<EventRecord>>,
    counters: Arc<DeliveryCounters>,
    warned: AtomicBool,
}

impl Channel {
    /// Starts the webhook's delivery task; it ends at shutdown (events still
    /// queued then are not sent; they are stored).
    pub fn spawn(
        cfg: WebhookConfig,
        capacity: usize,
        counters: Arc<DeliveryCounters>,
        mut shutdown: Shutdown,
    ) -> Channel {
        let (tx, mut rx) = mpsc::channel::<Arc<EventRecord>>(capacity);
        let name = cfg.name.clone();
        let c = Arc::clone(&counters);
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.wait() => {}
                _ = async {
                    while let Some(event) = rx.recv().await {
                        deliver(&cfg, &event, &c, RETRY_BASE).await;
                    }
                } => {}
            }
        });
        Channel {
            name,
            tx,
            counters,
            warned: AtomicBool::new(false),
        }
    }

    /// Queues `event`, or drops it when the queue is full.
    pub fn send(&self, event: Arc<EventRecord>) {
        if self.tx.try_send(event).is_err() {
            let total = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.warned.swap(true, Ordering::Relaxed) {
                warn!(channel = %self.name, total, "webhook queue full: event dropped for this channel (further drops are counted in /api/v1/stats)");
            }
        }
    }
}

async fn deliver(
    cfg: &WebhookConfig,
    event: &EventRecord,
    counters: &DeliveryCounters,
    retry_base: Duration,
) {
    let body = body(cfg.format, event);
    let mut backoff = retry_base;
    for attempt in 1..=cfg.max_attempts {
        match post(cfg, &body).await {
            Ok(()) => {
                counters.sent.fetch_add(1, Ordering::Relaxed);
                info!(channel = %cfg.name, event = event.id, state = %event.state, attempt, "alert delivered");
                return;
            }
            Err(error) => {
                counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
                warn!(%error, channel = %cfg.name, event = event.id, attempt, max_attempts = cfg.max_attempts, "alert delivery failed");
            }
        }
        if attempt < cfg.max_attempts {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    counters.gave_up.fetch_add(1, Ordering::Relaxed);
    warn!(channel = %cfg.name, event = event.id, "alert delivery given up");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn event() -> EventRecord {
        EventRecord {
            id: 7,
            ts_ms: 1000,
            level: "critical".into(),
            kind: "error_rate".into(),
            state: "firing".into(),
            message: "boom".into(),
            app: Some("shop".into()),
            endpoint: None,
            host: None,
            rule: "r".into(),
            value: 100.0,
            threshold: 5.0,
            acked_ms: None,
            acked_by: None,
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/hook?x=1"),
            Some(("127.0.0.1".into(), 8080, "/hook?x=1".into()))
        );
        assert_eq!(
            parse_url("http://example.com"),
            Some(("example.com".into(), 80, "/".into()))
        );
        assert_eq!(parse_url("https://example.com/x"), None);
        assert_eq!(parse_url("http://u:p@example.com/x"), None);
        assert_eq!(parse_url("http://:80/x"), None);
        assert_eq!(parse_url("http://h:notaport/x"), None);
        assert_eq!(
            parse_url("http://[::1]:9000/h"),
            Some(("::1".into(), 9000, "/h".into()))
        );
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bodies() {
        let v: serde_json::Value =
            serde_json::from_slice(&body(WebhookFormat::Json, &event())).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["event"]["id"], 7);
        assert_eq!(v["event"]["state"], "firing");
        assert_eq!(v["event"]["endpoint"], serde_json::Value::Null);
        let v: serde_json::Value =
            serde_json::from_slice(&body(WebhookFormat::Slack, &event())).unwrap();
        assert_eq!(v["text"], ":red_circle: boom");
    }

    /// Answers each connection with `statuses` in turn; returns the port
    /// and the requests received.
    async fn receiver(statuses: Vec<u16>) -> (u16, mpsc::UnboundedReceiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for status in statuses {
                let (mut s, _) = l.accept().await.unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .unwrap()
                            .trim()
                            .parse()
                            .unwrap();
                        if req.len() >= i + 4 + len {
                            break;
                        }
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&req).to_string());
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                    )
                    .await;
            }
        });
        (port, rx)
    }

    #[tokio::test]
    async fn retries_with_backoff_then_delivers_signed() {
        let (port, mut rx) = receiver(vec![500, 503, 200]).await;
        let cfg = WebhookConfig {
            name: "t".into(),
            url: format!("http://127.0.0.1:{port}/hook"),
            secret: "s3cret".into(),
            max_attempts: 3,
            ..WebhookConfig::default()
        };
        let counters = DeliveryCounters::default();
        deliver(&cfg, &event(), &counters, Duration::from_millis(10)).await;
        assert_eq!(
            counters.view(),
            DeliveryView {
                sent: 1,
                failed_attempts: 2,
                gave_up: 0,
                dropped: 0
            }
        );
        let req = rx.recv().await.unwrap();
        assert!(req.starts_with("POST /hook HTTP/1.1\r\n"), "{req}");
        let body = &req[req.find("\r\n\r\n").unwrap() + 4..];
        let sig = signature("s3cret", body.as_bytes());
        assert!(
            req.contains(&format!("X-Sonde-Signature: {sig}\r\n")),
            "{req}"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let counters = Arc::new(DeliveryCounters::default());
        let (_trigger, shutdown) = crate::shutdown::channel();
        let cfg = WebhookConfig {
            name: "t".into(),
            url: "http://127.0.0.1:9/hook".into(),
            ..WebhookConfig::default()
        };
        let channel = Channel::spawn(cfg, 1, Arc::clone(&counters), shutdown);
        // Current-thread runtime: the delivery task has not run yet, so the
        // first event fills the queue and the next two are dropped.
        for _ in 0..3 {
            channel.send(Arc::new(event()));
        }
        assert_eq!(counters.view().dropped, 2);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts() {
        let (port, _rx) = receiver(vec![500, 500]).await;
        let cfg = WebhookConfig {
            name: "t".into(),
            url: format!("http://127.0.0.1:{port}/hook"),
            max_attempts: 2,
            ..WebhookConfig::default()
        };
        let counters = DeliveryCounters::default();
        deliver(&cfg, &event(), &counters, Duration::from_millis(10)).await;
        assert_eq!(
            counters.view(),
            DeliveryView {
                sent: 0,
                failed_attempts: 2,
                gave_up: 1,
                dropped: 0
            }
        );
    }
}
