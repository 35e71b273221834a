//! The collector connection: Register, then one long-lived bidirectional
//! `Stream` carrying batches, heartbeats and live snapshots, with
//! acknowledgements coming back. This module owns the batching loop, the
//! window of unacknowledged batches, reconnection with backoff, and the
//! shutdown sequence (flush, wait for acks, spool the rest, Deregister). It
//! never drops an unacknowledged batch on a connection error: it resends.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use sonde_proto::v1::collector_client::CollectorClient;
use sonde_proto::v1::{
    agent_message, collector_message, deregister_request, AgentMessage, CollectorMessage,
    DeregisterRequest, Heartbeat, LiveSnapshot, RegisterRequest, StreamHello,
};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{CompressionEncoding, Streaming};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, error, info, warn};

use crate::buffer::batch::{Batcher, Limits};
use crate::buffer::outbox::Outbox;
use crate::buffer::queue::QueueReceiver;
use crate::buffer::spool::{self, Spool, SpoolError};
use crate::counters::{add, Counters};
use crate::identity::{Identity, Seen};
use crate::live::LiveTable;
use crate::shutdown::Shutdown;

/// Heartbeat period unless the collector asks for another.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Live snapshot period.
const LIVE_EVERY: Duration = Duration::from_secs(1);
/// The oldest sent batch must be acknowledged within this, or the stream is
/// considered stuck and reopened.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Sent-but-unacknowledged batches at most (up to this many times
/// `batch_max_bytes` of memory). When full, no new batch is formed.
const MAX_UNACKED_BATCHES: usize = 32;
/// Reconnection backoff: first delay, doubling up to the maximum, jittered.
const BACKOFF_INITIAL: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that lasted this long (or got an ack) resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// TCP connect, and each unary call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// At shutdown: how long to wait for the socket connections to finish, for
/// acknowledgements, and for Deregister.
const SOURCE_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages queued towards the HTTP/2 stream.
const OUTBOUND_CAPACITY: usize = 16;
/// Room left for the `AgentMessage`/`Batch` framing when the collector
/// announces its largest message.
const MESSAGE_OVERHEAD: usize = 1024;

/// Why talking to the collector failed.
#[derive(Debug, Error)]
pub enum SinkError {
    #[error("cannot connect: {}", chain(.0))]
    Connect(#[from] tonic::transport::Error),
    #[error("{call}: {} ({})", .status.code(), .status.message())]
    Call {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("the collector ended the stream")]
    Closed,
    #[error("no acknowledgement of batch {batch_id} within {} s", ACK_TIMEOUT.as_secs())]
    AckTimeout { batch_id: u64 },
}

impl SinkError {
    fn call(call: &'static str) -> impl FnOnce(tonic::Status) -> SinkError {
        move |status| SinkError::Call { call, status }
    }

    fn is_unauthenticated(&self) -> bool {
        matches!(self, SinkError::Call { status, .. } if status.code() == tonic::Code::Unauthenticated)
    }
}

/// An error and its sources on one line (tonic's transport error alone says
/// only "transport error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let part = c.to_string();
        // hyper repeats some messages one level down.
        if parts.last() != Some(&part) {
            parts.push(part);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Debug, Clone)]
struct Auth(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = CollectorClient<InterceptedService<Channel, Auth>>;

/// An open stream to the collector.
struct Connection {
    client: Client,
    tx: mpsc::Sender<AgentMessage>,
    inbound: Streaming<CollectorMessage>,
    heartbeat_every: Duration,
    /// `Seen::generation` last registered.
    registered: u64,
    opened_at: Instant,
    got_ack: bool,
}

/// What the sink needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `http://host:port`, already validated.
    pub collector: String,
    pub token: String,
    pub limits: Limits,
}

/// Shared state the sink reads.
#[derive(Debug)]
pub struct Shared {
    pub identity: Identity,
    pub seen: Arc<Seen>,
    pub live: Arc<LiveTable>,
    pub counters: Arc<Counters>,
}

pub struct GrpcSink {
    settings: Settings,
    auth: Auth,
    shared: Shared,
    queue: QueueReceiver,
    queue_open: bool,
    batcher: Batcher,
    outbox: Outbox,
    spool: Spool,
    /// Spooled files not yet loaded, oldest first; loaded ahead of new data.
    replay: VecDeque<PathBuf>,
}

impl GrpcSink {
    /// Lists the spool so its batches go out before new data.
    pub fn new(
        settings: Settings,
        shared: Shared,
        queue: QueueReceiver,
        spool: Spool,
    ) -> Result<GrpcSink, SpoolError> {
        let replay: VecDeque<PathBuf> = spool.list()?.into();
        if !replay.is_empty() {
            info!(
                batches = replay.len(),
                "replaying batches spooled by the previous run"
            );
        }
        // Batch ids grow across restarts: start above the clock in µs and
        // above anything spooled.
        let spooled_max = replay
            .iter()
            .filter_map(|p| spool::batch_id_of(p))
            .max()
            .unwrap_or(0);
        let first_id = unix_micros().max(spooled_max.saturating_add(1));
        let auth = Auth(if settings.token.is_empty() {
            None
        } else {
            // The config check guarantees printable ASCII.
            MetadataValue::try_from(format!("Bearer {}", settings.token)).ok()
        });
        Ok(GrpcSink {
            auth,
            batcher: Batcher::new(settings.limits),
            settings,
            shared,
            queue,
            queue_open: true,
            outbox: Outbox::new(MAX_UNACKED_BATCHES, first_id),
            spool,
            replay,
        })
    }

    /// Runs until shutdown, then flushes, spools what is unacknowledged and
    /// deregisters.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut backoff = Backoff::new();
        let mut conn = None;
        while !shutdown.is_triggered() {
            let mut c = tokio::select! {
                _ = shutdown.wait() => break,
                r = self.connect() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        let delay = if e.is_unauthenticated() { backoff.max() } else { backoff.next() };
                        self.log_failure(&e, delay);
                        tokio::select! {
                            _ = shutdown.wait() => break,
                            _ = tokio::time::sleep(delay) => continue,
                        }
                    }
                },
            };
            let resend = self.outbox.len();
            info!(collector = %self.settings.collector, agent_id = %self.shared.identity.agent_id,
                unacked_batches = resend, "connected to the collector");
            match self.stream(&mut c, &mut shutdown).await {
                Ok(()) => {
                    conn = Some(c);
                    break;
                }
                Err(e) => {
                    if c.got_ack || c.opened_at.elapsed() >= HEALTHY_AFTER {
                        backoff.reset();
                    }
                    self.outbox.mark_all_unsent();
                    let delay = if e.is_unauthenticated() {
                        backoff.max()
                    } else {
                        backoff.next()
                    };
                    self.log_failure(&e, delay);
                    drop(c);
                    tokio::select! {
                        _ = shutdown.wait() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.finish(conn).await;
    }

    fn log_failure(&self, e: &SinkError, retry_in: Duration) {
        let collector = &self.settings.collector;
        let retry_in_ms = retry_in.as_millis() as u64;
        if e.is_unauthenticated() {
            error!(%collector, retry_in_ms,
                "collector refused the agent token (UNAUTHENTICATED); check `token` in agent.toml");
        } else {
            warn!(error = %e, %collector, retry_in_ms, unacked_batches = self.outbox.len(),
                "collector connection failed; retrying");
        }
    }

    async fn client(&self, connect_timeout: Duration) -> Result<Client, SinkError> {
        let channel = Endpoint::from_shared(self.settings.collector.clone())?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect()
            .await?;
        Ok(
            CollectorClient::with_interceptor(channel, self.auth.clone())
                .send_compressed(CompressionEncoding::Gzip),
        )
    }

    /// Connects, registers and opens the stream (its first message: hello).
    async fn connect(&mut self) -> Result<Connection, SinkError> {
        let mut client = self.client(CONNECT_TIMEOUT).await?;
        let seen = self.shared.seen.get();
        let request = RegisterRequest {
            identity: Some(self.shared.identity.to_proto(&seen)),
        };
        let resp = timeout(CALL_TIMEOUT, client.register(request))
            .await
            .map_err(|_| SinkError::Timeout("Register"))?
            .map_err(SinkError::call("Register"))?
            .into_inner();
        if resp.max_message_bytes > 0 {
            self.batcher
                .cap_bytes((resp.max_message_bytes as usize).saturating_sub(MESSAGE_OVERHEAD));
        }
        let heartbeat_every = match resp.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms.into()),
        };
        debug!(collector_version = %resp.collector_version, heartbeat_ms = heartbeat_every.as_millis() as u64,
            "registered");

        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        // Queued before the call so a collector that waits for it can answer.
        let hello = agent_message::Msg::Hello(StreamHello {
            agent_id: self.shared.identity.agent_id.clone(),
        });
        let _ = tx.try_send(AgentMessage { msg: Some(hello) });
        let inbound = timeout(CALL_TIMEOUT, client.stream(ReceiverStream::new(rx)))
            .await
            .map_err(|_| SinkError::Timeout("Stream"))?
            .map_err(SinkError::call("Stream"))?
            .into_inner();
        Ok(Connection {
            client,
            tx,
            inbound,
            heartbeat_every,
            registered: seen.generation,
            opened_at: Instant::now(),
            got_ack: false,
        })
    }

    /// Whether a new record may be taken from the queue: the window has room
    /// and no sealed batch is waiting for it.
    fn can_take(&self) -> bool {
        self.outbox.has_room() && !self.batcher.has_sealed()
    }

    /// Loads spooled batches, then sealed batches, into the window.
    fn refill(&mut self) {
        while self.outbox.has_room() {
            let Some(path) = self.replay.pop_front() else {
                break;
            };
            match self.spool.read(&path) {
                Ok(batch) => {
                    self.outbox.push_replay(batch, path);
                }
                Err(error @ SpoolError::Decode { .. }) => {
                    warn!(%error, "setting an unreadable spool file aside");
                    if let Err(error) = self.spool.quarantine(&path) {
                        warn!(%error, "cannot set the spool file aside");
                    }
                }
                Err(error) => {
                    warn!(%error, "cannot read a spool file; skipped until the next start")
                }
            }
        }
        while self.outbox.has_room() {
            let Some(records) = self.batcher.pop_sealed() else {
                break;
            };
            self.outbox.push(records);
        }
    }

    /// The connected loop. `Ok` when shutdown starts (the connection is kept
    /// for the final flush), `Err` when the stream must be reopened.
    async fn stream(
        &mut self,
        c: &mut Connection,
        shutdown: &mut Shutdown,
    ) -> Result<(), SinkError> {
        let mut heartbeat = tokio::time::interval(c.heartbeat_every);
        let mut live = tokio::time::interval(LIVE_EVERY);
        let mut ack_check = tokio::time::interval(Duration::from_secs(1));
        for t in [&mut heartbeat, &mut live, &mut ack_check] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            self.refill();
            let take = self.queue_open && self.can_take();
            let deadline = self.batcher.deadline().map(Instant::from_std);
            // Timers come before the data branches: under load the queue is
            // always ready, and `biased` would otherwise starve them.
            tokio::select! {
                biased;
                _ = shutdown.wait() => return Ok(()),
                msg = c.inbound.message() => match msg {
                    Ok(Some(m)) => c.got_ack |= self.on_message(m),
                    Ok(None) => return Err(SinkError::Closed),
                    Err(status) => return Err(SinkError::Call { call: "Stream", status }),
                },
                _ = ack_check.tick() => {
                    if let Some(sent_at) = self.outbox.oldest_sent_at() {
                        if sent_at.elapsed() >= ACK_TIMEOUT {
                            let batch_id = self.outbox.oldest_id().unwrap_or_default();
                            return Err(SinkError::AckTimeout { batch_id });
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    self.heartbeat(c);
                    self.reregister_if_needed(&c.client, &mut c.registered);
                }
                _ = live.tick() => {
                    let now_ns = unix_nanos();
                    let snapshot = LiveSnapshot {
                        ts_unix_ms: now_ns / 1_000_000,
                        active: self.shared.live.snapshot(now_ns),
                        host: None,
                    };
                    // Live data is best effort: skipped when the stream is busy.
                    let _ = c.tx.try_send(AgentMessage { msg: Some(agent_message::Msg::Live(snapshot)) });
                }
                permit = c.tx.reserve(), if self.outbox.has_unsent() => {
                    let permit = permit.map_err(|_| SinkError::Closed)?;
                    self.send_next(permit);
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() && self.can_take() => {
                    self.batcher.seal();
                }
                r = self.queue.recv(), if take => match r {
                    Some(record) => self.batcher.push(record, std::time::Instant::now()),
                    None => self.queue_open = false,
                },
            }
        }
    }

    fn send_next(&mut self, permit: mpsc::Permit<'_, AgentMessage>) {
        let Some(e) = self.outbox.send_next(Instant::now().into_std()) else {
            return;
        };
        if !e.ever_sent {
            e.ever_sent = true;
            add(
                &self.shared.counters.records_sent,
                e.batch.records.len() as u64,
            );
        }
        debug!(
            batch_id = e.batch.batch_id,
            records = e.batch.records.len(),
            replay = e.batch.replay,
            "sending batch"
        );
        permit.send(AgentMessage {
            msg: Some(agent_message::Msg::Batch(e.batch.clone())),
        });
    }

    fn heartbeat(&self, c: &Connection) {
        let hb = Heartbeat {
            ts_unix_ms: unix_nanos() / 1_000_000,
            counters: Some(self.shared.counters.snapshot()),
        };
        let _ = c.tx.try_send(AgentMessage {
            msg: Some(agent_message::Msg::Heartbeat(hb)),
        });
    }

    /// Registration is idempotent: call it again when new apps or versions
    /// have shown up, so the console lists them without a restart.
    fn reregister_if_needed(&self, client: &Client, registered: &mut u64) {
        let seen = self.shared.seen.get();
        if seen.generation == *registered {
            return;
        }
        *registered = seen.generation;
        let mut client = client.clone();
        let request = RegisterRequest {
            identity: Some(self.shared.identity.to_proto(&seen)),
        };
        tokio::spawn(async move {
            match timeout(CALL_TIMEOUT, client.register(request)).await {
                Ok(Ok(_)) => debug!(
                    apps = seen.apps.len(),
                    "re-registered with new apps or versions"
                ),
                Ok(Err(status)) => {
                    warn!(code = %status.code(), message = status.message(), "re-registration failed")
                }
                Err(_) => warn!("re-registration timed out"),
            }
        });
    }

    /// Handles an Ack or Reject; true for an Ack.
    fn on_message(&mut self, m: CollectorMessage) -> bool {
        let counters = &self.shared.counters;
        match m.msg {
            Some(collector_message::Msg::Ack(ack)) => {
                let Some(e) = self.outbox.remove(ack.batch_id) else {
                    debug!(
                        batch_id = ack.batch_id,
                        "acknowledgement of an unknown batch (already acknowledged?)"
                    );
                    return true;
                };
                add(&counters.records_acked, e.batch.records.len() as u64);
                debug!(
                    batch_id = ack.batch_id,
                    stored = ack.stored,
                    duplicates = ack.duplicates,
                    "batch acknowledged"
                );
                if let Some(path) = e.spool_file {
                    if let Err(error) = self.spool.remove(&path) {
                        warn!(%error, "cannot delete a replayed spool file; it will be replayed again");
                    }
                }
                true
            }
            Some(collector_message::Msg::Reject(rej)) => {
                let Some(e) = self.outbox.remove(rej.batch_id) else {
                    debug!(batch_id = rej.batch_id, "rejection of an unknown batch");
                    return false;
                };
                let records = e.batch.records.len() as u64;
                add(&counters.batches_rejected, 1);
                add(&counters.records_dropped, records);
                warn!(batch_id = rej.batch_id, records, reason = %rej.reason,
                    "the collector rejected a batch; its records are dropped");
                if let Some(path) = e.spool_file {
                    let _ = self.spool.remove(&path);
                }
                false
            }
            None => false,
        }
    }

    /// Shutdown: take what the socket still delivers, send it, wait a little
    /// for acknowledgements, spool the rest, deregister.
    async fn finish(&mut self, mut conn: Option<Connection>) {
        let deadline = Instant::now() + SOURCE_DRAIN_TIMEOUT;
        while self.queue_open {
            match timeout_at(deadline, self.queue.recv()).await {
                Ok(Some(record)) => self.batcher.push(record, std::time::Instant::now()),
                Ok(None) => self.queue_open = false,
                Err(_) => {
                    warn!(
                        "the extension socket did not close in time; records still queued are lost"
                    );
                    break;
                }
            }
        }
        self.batcher.seal();
        while let Some(records) = self.batcher.pop_sealed() {
            // Past the window bound on purpose: the queue bound still holds.
            self.outbox.push(records);
        }

        if let Some(c) = conn.as_mut() {
            if !self.outbox.is_empty() {
                match timeout(SHUTDOWN_GRACE, self.flush(c)).await {
                    Ok(Ok(())) => info!("every batch acknowledged"),
                    Ok(Err(error)) => warn!(%error, "collector stream failed during shutdown"),
                    Err(_) => warn!(
                        unacked_batches = self.outbox.len(),
                        "not every batch was acknowledged within the shutdown grace period"
                    ),
                }
            }
        }

        let mut spooled = 0usize;
        let entries: Vec<_> = self.outbox.drain().collect();
        for e in entries {
            if e.spool_file.is_some() {
                continue; // still in the spool from the previous run
            }
            let records = e.batch.records.len() as u64;
            match self.spool.write(&e.batch) {
                Ok(_) => {
                    spooled += 1;
                    add(&self.shared.counters.records_spooled, records);
                }
                Err(error) => {
                    error!(%error, records, "cannot spool a batch; its records are lost");
                    add(&self.shared.counters.records_dropped, records);
                }
            }
        }
        if spooled > 0 {
            info!(batches = spooled, dir = %self.spool_dir(), "spooled unacknowledged batches for the next start");
        }
        self.deregister(conn).await;
    }

    fn spool_dir(&self) -> String {
        self.spool.dir().display().to_string()
    }

    /// Sends every unsent batch and handles acks until none is left.
    async fn flush(&mut self, c: &mut Connection) -> Result<(), SinkError> {
        while !self.outbox.is_empty() {
            tokio::select! {
                msg = c.inbound.message() => match msg {
                    Ok(Some(m)) => c.got_ack |= self.on_message(m),
                    Ok(None) => return Err(SinkError::Closed),
                    Err(status) => return Err(SinkError::Call { call: "Stream", status }),
                },
                permit = c.tx.reserve(), if self.outbox.has_unsent() => {
                    let permit = permit.map_err(|_| SinkError::Closed)?;
                    self.send_next(permit);
                }
            }
        }
        Ok(())
    }

    async fn deregister(&self, conn: Option<Connection>) {
        let request = DeregisterRequest {
            agent_id: self.shared.identity.agent_id.clone(),
            reason: deregister_request::Reason::Shutdown as i32,
        };
        let call = async {
            let mut client = match conn {
                // Close our half of the stream first.
                Some(c) => c.client,
                None => self.client(Duration::from_secs(1)).await?,
            };
            client
                .deregister(request)
                .await
                .map_err(SinkError::call("Deregister"))
        };
        match timeout(DEREGISTER_TIMEOUT, call).await {
            Ok(Ok(_)) => info!("deregistered from the collector"),
            Ok(Err(error)) => warn!(%error, "could not deregister from the collector"),
            Err(_) => warn!("deregistering from the collector timed out"),
        }
    }
}

/// Exponential backoff with jitter: each delay is drawn from the upper half
/// of the current step, so many agents restarted together spread out.
#[derive(Debug)]
struct Backoff {
    step: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            step: BACKOFF_INITIAL,
        }
    }

    fn reset(&mut self) {
        self.step = BACKOFF_INITIAL;
    }

    fn next(&mut self) -> Duration {
        let d = jitter(self.step);
        self.step = (self.step * 2).min(BACKOFF_MAX);
        d
    }

    fn max(&mut self) -> Duration {
        self.step = BACKOFF_MAX;
        jitter(BACKOFF_MAX)
    }
}

fn jitter(step: Duration) -> Duration {
    let half = step / 2;
    half + half.mul_f64(rand::thread_rng().gen::<f64>())
}

fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn unix_micros() -> u64 {
    (unix_nanos() / 1000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_maximum_with_jitter() {
        let mut b = Backoff::new();
        let mut steps = Vec::new();
        for _ in 0..12 {
            steps.push(b.next());
        }
        assert!(steps[0] >= Duration::from_millis(100) && steps[0] <= Duration::from_millis(200));
        assert!(steps[1] >= Duration::from_millis(200) && steps[1] <= Duration::from_millis(400));
        for d in &steps {
            assert!(*d <= BACKOFF_MAX);
        }
        assert!(steps[11] >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next() <= BACKOFF_INITIAL);
        assert!(b.max() >= BACKOFF_MAX / 2);
    }

    #[test]
    fn unauthenticated_is_recognised() {
        let e = SinkError::Call {
            call: "Register",
            status: tonic::Status::unauthenticated("bad token"),
        };
        assert!(e.is_unauthenticated());
        assert!(!SinkError::Closed.is_unauthenticated());
    }
}
