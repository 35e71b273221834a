//! Channels: one task and one bounded queue per configured webhook or email
//! channel, so a slow or dead receiver delays only itself. A full queue
//! drops the new event for that channel (counted, warned on the first
//! drop); a failed attempt is retried with exponential backoff up to
//! `max_attempts`, then given up — counted, logged, and reported to the
//! evaluation task, which stores a `delivery` event so the failure shows on
//! the dashboard and in `/api/v1/events`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_rustls::rustls::ClientConfig;
use tracing::{info, warn};

use super::config::{EmailConfig, SmtpTls, WebhookConfig};
use super::http::Url;
use crate::clock::now_ms;
use crate::shutdown::Shutdown;
use crate::storage::EventRecord;

/// Wait before the first retry; doubled for each further one.
const RETRY_BASE: Duration = Duration::from_secs(1);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Given-up deliveries waiting to be stored as events; more are counted
/// in `gave_up` and logged only.
const MAX_PENDING_FAILURES: usize = 100;

/// Delivery counters over every channel, for `/api/v1/stats`.
#[derive(Debug, Default)]
pub struct DeliveryCounters {
    /// Events delivered (a 2xx answer, or a message the SMTP server took).
    pub sent: AtomicU64,
    /// Attempts that failed (connection, TLS, timeout, refusal).
    pub failed_attempts: AtomicU64,
    /// Events given up after `max_attempts`.
    pub gave_up: AtomicU64,
    /// Events not queued because a channel's queue was full.
    pub dropped: AtomicU64,
    /// Given-up deliveries not yet stored as events.
    failures: Mutex<VecDeque<GaveUp>>,
}

/// As `/api/v1/stats` shows them.
#[derive(Debug, Serialize, PartialEq)]
pub struct DeliveryView {
    pub sent: u64,
    pub failed_attempts: u64,
    pub gave_up: u64,
    pub dropped: u64,
}

/// A delivery that was given up.
#[derive(Debug, Clone, PartialEq)]
pub struct GaveUp {
    pub channel: String,
    pub ts_ms: i64,
    pub attempts: u32,
    pub error: String,
    /// The event that was not delivered.
    pub event: Arc<EventRecord>,
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

    pub(crate) fn report(&self, failure: GaveUp) {
        let mut q = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if q.len() < MAX_PENDING_FAILURES {
            q.push_back(failure);
        }
    }

    /// The given-up deliveries reported since the last call.
    pub fn take_failures(&self) -> Vec<GaveUp> {
        let mut q = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        q.drain(..).collect()
    }
}

/// One channel's own counters and last outcome, for `/api/v1/stats` and
/// the console.
#[derive(Debug, Default)]
struct ChannelState {
    sent: AtomicU64,
    failed_attempts: AtomicU64,
    gave_up: AtomicU64,
    dropped: AtomicU64,
    last: Mutex<LastOutcome>,
}

#[derive(Debug, Default, Clone)]
struct LastOutcome {
    sent_ms: Option<i64>,
    error: Option<String>,
    error_ms: Option<i64>,
}

/// A channel as `/api/v1/stats` (`alerts.channels`) and
/// `/api/v1/alerts/channels` show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChannelView {
    pub name: String,
    /// `webhook` or `email`.
    pub kind: &'static str,
    /// Where it delivers: the URL without its query, or `smtp://host:port`
    /// and the recipients.
    pub target: String,
    pub sent: u64,
    pub failed_attempts: u64,
    pub gave_up: u64,
    pub dropped: u64,
    pub last_sent_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
}

/// Where a channel delivers.
pub enum Sink {
    Webhook {
        cfg: WebhookConfig,
        url: Url,
        /// For https: the client configuration, or why it could not be
        /// made (then every attempt fails with it).
        tls: Option<Result<Arc<ClientConfig>, String>>,
    },
    Email {
        cfg: EmailConfig,
        tls: Option<Result<Arc<ClientConfig>, String>>,
    },
}

impl Sink {
    pub fn webhook(cfg: WebhookConfig) -> Option<Sink> {
        let url = Url::parse(&cfg.url)?;
        let tls = url.tls.then(|| super::tls::client_config(&cfg.ca_file));
        Some(Sink::Webhook { cfg, url, tls })
    }

    pub fn email(cfg: EmailConfig) -> Sink {
        let tls = (cfg.tls != SmtpTls::None).then(|| super::tls::client_config(&cfg.ca_file));
        Sink::Email { cfg, tls }
    }

    fn name(&self) -> &str {
        match self {
            Sink::Webhook { cfg, .. } => &cfg.name,
            Sink::Email { cfg, .. } => &cfg.name,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Sink::Webhook { .. } => "webhook",
            Sink::Email { .. } => "email",
        }
    }

    fn target(&self) -> String {
        match self {
            Sink::Webhook { url, .. } => url.redacted(),
            Sink::Email { cfg, .. } => {
                format!("smtp://{}:{} → {}", cfg.host, cfg.port, cfg.to.join(", "))
            }
        }
    }

    fn max_attempts(&self) -> u32 {
        match self {
            Sink::Webhook { cfg, .. } => cfg.max_attempts,
            Sink::Email { cfg, .. } => cfg.max_attempts,
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(match self {
            Sink::Webhook { cfg, .. } => cfg.timeout_ms,
            Sink::Email { cfg, .. } => cfg.timeout_ms,
        })
    }

    /// One attempt; the error is one line.
    async fn attempt(&self, event: &EventRecord) -> Result<(), String> {
        let tls = |t: &Option<Result<Arc<ClientConfig>, String>>| match t {
            None => Ok(None),
            Some(Ok(c)) => Ok(Some(Arc::clone(c))),
            Some(Err(e)) => Err(format!("TLS is not available: {e}")),
        };
        let work = async {
            match self {
                Sink::Webhook { cfg, url, tls: t } => {
                    super::webhook::send(cfg, url, tls(t)?, event)
                        .await
                        .map_err(|e| e.to_string())
                }
                Sink::Email { cfg, tls: t } => {
                    let mail = super::smtp::compose(cfg, event);
                    super::smtp::send(cfg, tls(t)?, &mail, now_ms())
                        .await
                        .map_err(|e| e.to_string())
                }
            }
        };
        tokio::time::timeout(self.timeout(), work)
            .await
            .map_err(|_| format!("timed out after {} ms", self.timeout().as_millis()))?
    }
}

/// The sending end of one channel's queue.
pub struct Channel {
    pub name: String,
    pub kind: &'static str,
    target: String,
    tx: mpsc::Sender<Arc<EventRecord>>,
    counters: Arc<DeliveryCounters>,
    state: Arc<ChannelState>,
    warned: AtomicBool,
}

impl Channel {
    /// Starts the channel's delivery task; it ends at shutdown (events still
    /// queued then are not sent; they are stored).
    pub fn spawn(
        sink: Sink,
        capacity: usize,
        counters: Arc<DeliveryCounters>,
        shutdown: Shutdown,
    ) -> Channel {
        Self::spawn_with(sink, capacity, counters, shutdown, RETRY_BASE)
    }

    fn spawn_with(
        sink: Sink,
        capacity: usize,
        counters: Arc<DeliveryCounters>,
        mut shutdown: Shutdown,
        retry_base: Duration,
    ) -> Channel {
        let (tx, mut rx) = mpsc::channel::<Arc<EventRecord>>(capacity);
        let (name, kind, target) = (sink.name().to_owned(), sink.kind(), sink.target());
        if let Some(Err(error)) = match &sink {
            Sink::Webhook { tls, .. } | Sink::Email { tls, .. } => tls,
        } {
            warn!(channel = %name, %error, "alert channel has no usable TLS set-up; its deliveries will fail");
        }
        let state = Arc::new(ChannelState::default());
        let (c, s) = (Arc::clone(&counters), Arc::clone(&state));
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.wait() => {}
                _ = async {
                    while let Some(event) = rx.recv().await {
                        deliver(&sink, event, &c, &s, retry_base).await;
                    }
                } => {}
            }
        });
        Channel {
            name,
            kind,
            target,
            tx,
            counters,
            state,
            warned: AtomicBool::new(false),
        }
    }

    /// Queues `event`, or drops it when the queue is full.
    pub fn send(&self, event: Arc<EventRecord>) {
        if self.tx.try_send(event).is_err() {
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
            let total = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.warned.swap(true, Ordering::Relaxed) {
                warn!(channel = %self.name, total, "alert channel queue full: event dropped for this channel (further drops are counted in /api/v1/stats)");
            }
        }
    }

    pub fn view(&self) -> ChannelView {
        let s = &self.state;
        let last = s
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        ChannelView {
            name: self.name.clone(),
            kind: self.kind,
            target: self.target.clone(),
            sent: s.sent.load(Ordering::Relaxed),
            failed_attempts: s.failed_attempts.load(Ordering::Relaxed),
            gave_up: s.gave_up.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            last_sent_ms: last.sent_ms,
            last_error: last.error,
            last_error_ms: last.error_ms,
        }
    }
}

async fn deliver(
    sink: &Sink,
    event: Arc<EventRecord>,
    counters: &DeliveryCounters,
    state: &ChannelState,
    retry_base: Duration,
) {
    let name = sink.name();
    let max = sink.max_attempts();
    let mut backoff = retry_base;
    let mut last_error = String::new();
    for attempt in 1..=max {
        match sink.attempt(&event).await {
            Ok(()) => {
                counters.sent.fetch_add(1, Ordering::Relaxed);
                state.sent.fetch_add(1, Ordering::Relaxed);
                state
                    .last
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .sent_ms = Some(now_ms());
                info!(channel = %name, event = event.id, state = %event.state, attempt, "alert delivered");
                return;
            }
            Err(error) => {
                counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
                state.failed_attempts.fetch_add(1, Ordering::Relaxed);
                {
                    let mut last = state.last.lock().unwrap_or_else(PoisonError::into_inner);
                    last.error = Some(error.clone());
                    last.error_ms = Some(now_ms());
                }
                warn!(%error, channel = %name, event = event.id, attempt, max_attempts = max, "alert delivery failed");
                last_error = error;
            }
        }
        if attempt < max {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    counters.gave_up.fetch_add(1, Ordering::Relaxed);
    state.gave_up.fetch_add(1, Ordering::Relaxed);
    warn!(channel = %name, event = event.id, error = %last_error, "alert delivery given up");
    counters.report(GaveUp {
        channel: name.to_owned(),
        ts_ms: now_ms(),
        attempts: max,
        error: last_error,
        event,
    });
}

/// The event that records a given-up delivery. It is stored and shown,
/// never sent (a failing channel must not start a loop of messages).
pub fn failure_event(f: &GaveUp) -> EventRecord {
    let e = &f.event;
    let what = if e.kind == "test" {
        "test message".to_owned()
    } else {
        format!("{} event of rule {}", e.state, e.rule)
    };
    EventRecord {
        id: 0,
        ts_ms: f.ts_ms,
        level: "warning".into(),
        kind: "delivery".into(),
        state: "firing".into(),
        message: format!(
            "alert delivery to channel {} failed after {} attempts ({}): {what}",
            f.channel, f.attempts, f.error
        ),
        app: e.app.clone(),
        endpoint: e.endpoint.clone(),
        host: e.host.clone(),
        rule: format!("delivery:{}", f.channel),
        value: f64::from(f.attempts),
        threshold: 0.0,
        acked_ms: None,
        acked_by: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::config::WebhookFormat;
    use crate::alerts::tls::testing;
    use crate::alerts::webhook::signature;
    use crate::alerts::webhook::tests::event;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> String {
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
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
        String::from_utf8_lossy(&req).to_string()
    }

    async fn answer<S: AsyncWrite + Unpin>(s: &mut S, status: u16) {
        let _ = s
            .write_all(format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .await;
        let _ = s.shutdown().await;
    }

    /// Answers each connection with `statuses` in turn (over TLS with
    /// `acceptor`); returns the port and the requests received.
    async fn receiver(
        statuses: Vec<u16>,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
    ) -> (u16, mpsc::UnboundedReceiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for status in statuses {
                let (mut s, _) = l.accept().await.unwrap();
                let req = match &acceptor {
                    Some(a) => {
                        let mut t = a.accept(s).await.unwrap();
                        let r = read_request(&mut t).await;
                        answer(&mut t, status).await;
                        r
                    }
                    None => {
                        let r = read_request(&mut s).await;
                        answer(&mut s, status).await;
                        r
                    }
                };
                let _ = tx.send(req);
            }
        });
        (port, rx)
    }

    async fn deliver_once(sink: &Sink, counters: &DeliveryCounters) {
        let state = ChannelState::default();
        deliver(
            sink,
            Arc::new(event()),
            counters,
            &state,
            Duration::from_millis(10),
        )
        .await
    }

    #[tokio::test]
    async fn retries_with_backoff_then_delivers_signed() {
        let (port, mut rx) = receiver(vec![500, 503, 200], None).await;
        let sink = Sink::webhook(WebhookConfig {
            name: "t".into(),
            url: format!("http://127.0.0.1:{port}/hook"),
            secret: "s3cret".into(),
            max_attempts: 3,
            ..WebhookConfig::default()
        })
        .unwrap();
        let counters = DeliveryCounters::default();
        deliver_once(&sink, &counters).await;
        assert_eq!(
            counters.view(),
            DeliveryView {
                sent: 1,
                failed_attempts: 2,
                gave_up: 0,
                dropped: 0
            }
        );
        assert!(counters.take_failures().is_empty());
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
    async fn https_webhook_with_a_configured_ca() {
        let pki = testing::pki();
        let (port, mut rx) = receiver(vec![200], Some(pki.acceptor())).await;
        let sink = Sink::webhook(WebhookConfig {
            name: "slack".into(),
            url: format!("https://127.0.0.1:{port}/services/T0/B0/x"),
            format: WebhookFormat::Slack,
            ca_file: pki.ca.to_str().unwrap().into(),
            max_attempts: 1,
            ..WebhookConfig::default()
        })
        .unwrap();
        let counters = DeliveryCounters::default();
        deliver_once(&sink, &counters).await;
        assert_eq!(counters.view().sent, 1, "{:?}", counters.view());
        let req = rx.recv().await.unwrap();
        assert!(
            req.starts_with("POST /services/T0/B0/x HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.ends_with(r#"{"text":":red_circle: boom"}"#), "{req}");

        // Trusting another CA: refused, given up, and reported for a
        // `delivery` event.
        let (port, _rx) = receiver(vec![200], Some(pki.acceptor())).await;
        let sink = Sink::webhook(WebhookConfig {
            name: "strict".into(),
            url: format!("https://127.0.0.1:{port}/x"),
            ca_file: testing::pki().ca.to_str().unwrap().into(),
            max_attempts: 1,
            ..WebhookConfig::default()
        })
        .unwrap();
        let counters = DeliveryCounters::default();
        deliver_once(&sink, &counters).await;
        assert_eq!(counters.view().gave_up, 1);
        let failures = counters.take_failures();
        assert_eq!(failures.len(), 1);
        assert!(
            failures[0].error.contains("certificate"),
            "{}",
            failures[0].error
        );
        let e = failure_event(&failures[0]);
        assert_eq!((e.kind.as_str(), e.level.as_str()), ("delivery", "warning"));
        assert!(
            e.message.contains("channel strict failed after 1 attempts"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let counters = Arc::new(DeliveryCounters::default());
        let (_trigger, shutdown) = crate::shutdown::channel();
        let sink = Sink::webhook(WebhookConfig {
            name: "t".into(),
            url: "http://127.0.0.1:9/hook".into(),
            ..WebhookConfig::default()
        })
        .unwrap();
        let channel = Channel::spawn(sink, 1, Arc::clone(&counters), shutdown);
        // Current-thread runtime: the delivery task has not run yet, so the
        // first event fills the queue and the next two are dropped.
        for _ in 0..3 {
            channel.send(Arc::new(event()));
        }
        assert_eq!(counters.view().dropped, 2);
        assert_eq!(channel.view().dropped, 2);
        assert_eq!(channel.view().target, "http://127.0.0.1:9/hook");
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_and_reports_it() {
        let (port, _rx) = receiver(vec![500, 500], None).await;
        let counters = Arc::new(DeliveryCounters::default());
        let (_trigger, shutdown) = crate::shutdown::channel();
        let sink = Sink::webhook(WebhookConfig {
            name: "t".into(),
            url: format!("http://127.0.0.1:{port}/hook"),
            max_attempts: 2,
            ..WebhookConfig::default()
        })
        .unwrap();
        let channel = Channel::spawn_with(
            sink,
            10,
            Arc::clone(&counters),
            shutdown,
            Duration::from_millis(10),
        );
        channel.send(Arc::new(event()));
        for _ in 0..200 {
            if counters.view().gave_up == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            counters.view(),
            DeliveryView {
                sent: 0,
                failed_attempts: 2,
                gave_up: 1,
                dropped: 0
            }
        );
        let v = channel.view();
        assert_eq!((v.failed_attempts, v.gave_up), (2, 1));
        assert_eq!(v.last_error.as_deref(), Some("answered with status 500"));
        assert!(v.last_error_ms.is_some() && v.last_sent_ms.is_none());
        let f = counters.take_failures();
        assert_eq!((f.len(), f[0].channel.as_str()), (1, "t"));
        assert!(counters.take_failures().is_empty(), "taken once");
    }

    #[tokio::test]
    async fn email_channel_delivers_through_smtp() {
        let (port, mut rx) = crate::alerts::smtp::tests::server(
            crate::alerts::smtp::tests::Behaviour {
                starttls: false,
                auth: false,
                ..Default::default()
            },
            None,
        )
        .await;
        let sink = Sink::email(EmailConfig {
            name: "mail".into(),
            host: "127.0.0.1".into(),
            port,
            tls: SmtpTls::None,
            from: "a@b".into(),
            to: vec!["c@d".into()],
            ..EmailConfig::default()
        });
        let counters = DeliveryCounters::default();
        deliver_once(&sink, &counters).await;
        assert_eq!(counters.view().sent, 1);
        let s = rx.recv().await.unwrap();
        assert!(
            s.data
                .contains("Subject: [Sonde] FIRING critical: r (shop)\r\n"),
            "{}",
            s.data
        );
    }
}
