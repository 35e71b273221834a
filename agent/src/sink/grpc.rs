//! The collector connection: Register, then one long-lived bidirectional
//! `Stream` carrying batches, heartbeats and live snapshots, with
//! acknowledgements coming back. This module owns the batching loop, the
//! window of unacknowledged batches, the decision of what goes to the disk
//! spool (everything while the collector is unreachable; new batches while
//! the window is full or older data waits in the spool), replay from the
//! spool in order, reconnection with backoff, and the shutdown sequence
//! (flush, wait for acks, spool the rest, Deregister). It never drops an
//! unacknowledged batch on a connection error: it spools and resends it.
//! It tells the record ring how far what it read is durable (acknowledged,
//! spooled or counted as dropped: `buffer::durable`), and spools the
//! batches awaiting acknowledgement when the ring asks.
//! Batches travel as the bytes the batcher encoded (`StreamCodec`), zstd-
//! compressed (gzip for a collector that does not take zstd).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message as _;
use rand::Rng;
use sonde_proto::v1::collector_client::CollectorClient;
use sonde_proto::v1::{
    agent_message, collector_message, AgentMessage, CollectorMessage, DeregisterRequest, Heartbeat,
    HostMetrics, LiveSnapshot, RegisterRequest, RegisterResponse, StreamHello,
};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{
    BufferSettings, Codec, CompressionEncoding, EncodeBuf, Encoder, ProstCodec, Streaming,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

use crate::config::TlsConfig;
use tracing::{debug, error, info, warn};

use crate::buffer::batch::{Batcher, EncodedBatch, Limits};
use crate::buffer::durable::{Tracker, Watermark};
use crate::buffer::outbox::Outbox;
use crate::buffer::queue::QueueReceiver;
use crate::buffer::record::Record;
use crate::buffer::spool::{self, Appended, Spool};
use crate::cloud::lifecycle::Lifecycle;
use crate::counters::{add, set, Counters, DropReason};
use crate::identity::{Identity, Seen};
use crate::live::LiveTable;
use crate::ratelimit::RateLimit;
use crate::shutdown::Shutdown;

/// Heartbeat period unless the collector asks for another.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Live snapshot period.
const LIVE_EVERY: Duration = Duration::from_secs(1);
/// The oldest sent batch must be acknowledged within this, or the stream is
/// considered stuck and reopened.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Batches in the in-memory window at most (up to this many times
/// `batch_max_bytes` of memory). When full, new batches go to the spool.
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
/// How often spool appends are made durable against a host crash (a crash
/// of the agent alone loses nothing written).
const SPOOL_SYNC_EVERY: Duration = Duration::from_secs(1);
/// How often a spool warning (full, write error) may repeat.
const SPOOL_LOG_PERIOD: Duration = Duration::from_secs(10);
/// Room left for the `AgentMessage`/`Batch` framing when the collector
/// announces its largest message.
const MESSAGE_OVERHEAD: usize = 1024;
/// Most records taken from the queue at a time.
const RECV_AT_ONCE: usize = 512;
/// How requests are compressed: zstd (at tonic's level, 3: several times
/// cheaper than gzip's 6 for a better ratio) — or gzip for a collector that
/// answers that it does not take zstd (older collectors).
const COMPRESSION: CompressionEncoding = CompressionEncoding::Zstd;
const COMPRESSION_FALLBACK: CompressionEncoding = CompressionEncoding::Gzip;
/// `AgentMessage.batch`.
const AGENT_MESSAGE_BATCH: u32 = 2;

/// Why talking to the collector failed.
#[derive(Debug, Error)]
pub enum SinkError {
    #[error("cannot connect: {}", chain(.0))]
    Connect(#[from] tonic::transport::Error),
    #[error("{call}: {} ({}{})", .status.code(), .status.message(), status_source(.status))]
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
    #[error("the settings were reloaded")]
    Reconfigured,
}

impl SinkError {
    fn call(call: &'static str) -> impl FnOnce(tonic::Status) -> SinkError {
        move |status| SinkError::Call { call, status }
    }

    fn is_unauthenticated(&self) -> bool {
        matches!(self, SinkError::Call { status, .. } if status.code() == tonic::Code::Unauthenticated)
    }
}

/// What lies under a status that came from the transport (a TLS alert, a
/// reset): ": " and its source chain, or nothing.
fn status_source(status: &tonic::Status) -> String {
    use std::error::Error as _;
    status
        .source()
        .map(|e| format!(": {}", chain(e)))
        .unwrap_or_default()
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
#[derive(Clone)]
struct Auth(Option<MetadataValue<Ascii>>);

impl Auth {
    /// `Bearer <token>`, none for an empty token (the config check
    /// guarantees printable ASCII).
    fn bearer(token: &str) -> Auth {
        Auth(if token.is_empty() {
            None
        } else {
            MetadataValue::try_from(format!("Bearer {token}")).ok()
        })
    }
}

/// Never prints the token.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Auth(Bearer …)"
        } else {
            "Auth(none)"
        })
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = CollectorClient<InterceptedService<Channel, Auth>>;

/// What goes on the stream: a message for prost to encode, or a batch
/// already encoded.
#[derive(Debug)]
enum Outgoing {
    Message(AgentMessage),
    Batch(EncodedBatch),
}

impl Outgoing {
    fn message(msg: agent_message::Msg) -> Outgoing {
        Outgoing::Message(AgentMessage { msg: Some(msg) })
    }

    /// Writes the `AgentMessage` it stands for: a batch as the `batch`
    /// field around its bytes, copied as they are.
    fn encode(&self, buf: &mut impl prost::bytes::BufMut) {
        match self {
            Outgoing::Message(m) => m.encode_raw(buf),
            Outgoing::Batch(b) => {
                encode_key(AGENT_MESSAGE_BATCH, WireType::LengthDelimited, buf);
                encode_varint(b.encoded_len() as u64, buf);
                b.encode(buf);
            }
        }
    }
}

/// The `Stream` call's codec: `Outgoing` out, `CollectorMessage` (prost)
/// in. On the wire the same as the generated client's.
#[derive(Debug, Clone, Copy, Default)]
struct StreamCodec;

#[derive(Debug)]
struct StreamEncoder;

impl Encoder for StreamEncoder {
    type Item = Outgoing;
    type Error = tonic::Status;

    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        item.encode(dst);
        Ok(())
    }
}

type ProstStreamCodec = ProstCodec<AgentMessage, CollectorMessage>;

impl Codec for StreamCodec {
    type Encode = Outgoing;
    type Decode = CollectorMessage;
    type Encoder = StreamEncoder;
    type Decoder = <ProstStreamCodec as Codec>::Decoder;

    fn encoder(&mut self) -> StreamEncoder {
        StreamEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstStreamCodec::raw_decoder(BufferSettings::default())
    }
}

/// Whether the collector refused a request for its compression (tonic
/// answers UNIMPLEMENTED "Content is compressed with `zstd` which isn't
/// supported").
fn refuses_compression(e: &SinkError) -> bool {
    matches!(e, SinkError::Call { status, .. }
        if status.code() == tonic::Code::Unimplemented && status.message().contains("compressed with"))
}

/// An open stream to the collector.
struct Connection {
    client: Client,
    tx: mpsc::Sender<Outgoing>,
    inbound: Streaming<CollectorMessage>,
    heartbeat_every: Duration,
    /// The collector's largest message (0: not announced).
    max_message_bytes: usize,
    /// `Seen::generation` last registered.
    registered: u64,
    opened_at: Instant,
    got_ack: bool,
}

/// What the sink needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `http://host:port` or `https://host:port`, already validated.
    pub collector: String,
    /// For an `https://` collector.
    pub tls: Option<ClientTlsConfig>,
    pub token: String,
    pub limits: Limits,
}

/// The TLS settings for an `https://` collector from `[tls]` (files
/// already checked by the config): the CA file, else the system's roots;
/// the client certificate when given; the server name when given.
pub fn client_tls(tls: &TlsConfig) -> std::io::Result<ClientTlsConfig> {
    let mut c = ClientTlsConfig::new();
    c = match &tls.ca {
        Some(ca) => c.ca_certificate(Certificate::from_pem(std::fs::read(ca)?)),
        None => c.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        c = c.identity(TlsIdentity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    }
    if let Some(name) = &tls.server_name {
        c = c.domain_name(name.clone());
    }
    Ok(c)
}

/// Shared state the sink reads.
#[derive(Debug)]
pub struct Shared {
    pub identity: Identity,
    pub seen: Arc<Seen>,
    pub live: Arc<LiveTable>,
    pub counters: Arc<Counters>,
    /// Whether the instance is leaving: decides the Deregister reason.
    pub lifecycle: Arc<Lifecycle>,
}

/// What connecting needs; cloned into the connect future so that the sink
/// goes on taking records (into the spool) while it connects.
#[derive(Debug, Clone)]
struct Dialer {
    collector: String,
    tls: Option<ClientTlsConfig>,
    auth: Auth,
    identity: Identity,
    seen: Arc<Seen>,
}

impl Dialer {
    async fn channel(&self, connect_timeout: Duration) -> Result<Channel, SinkError> {
        let mut endpoint = Endpoint::from_shared(self.collector.clone())?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        let channel = endpoint
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect()
            .await?;
        Ok(channel)
    }

    fn client_on(&self, channel: Channel, compression: CompressionEncoding) -> Client {
        CollectorClient::with_interceptor(channel, self.auth.clone()).send_compressed(compression)
    }

    async fn client(&self, connect_timeout: Duration) -> Result<Client, SinkError> {
        let channel = self.channel(connect_timeout).await?;
        Ok(self.client_on(channel, COMPRESSION_FALLBACK))
    }

    /// Registers, in zstd, or in gzip when the collector does not take zstd;
    /// returns the answer and the compression that worked.
    async fn register(
        &self,
        channel: &Channel,
        request: RegisterRequest,
    ) -> Result<(Client, RegisterResponse, CompressionEncoding), SinkError> {
        let call = |mut client: Client, request| async move {
            let resp = timeout(CALL_TIMEOUT, client.register(request))
                .await
                .map_err(|_| SinkError::Timeout("Register"))?
                .map_err(SinkError::call("Register"))?;
            Ok::<_, SinkError>((client, resp.into_inner()))
        };
        let zstd = self.client_on(channel.clone(), COMPRESSION);
        match call(zstd, request.clone()).await {
            Ok((client, resp)) => Ok((client, resp, COMPRESSION)),
            Err(e) if refuses_compression(&e) => {
                debug!(error = %e, "the collector does not take zstd; using gzip");
                let gzip = self.client_on(channel.clone(), COMPRESSION_FALLBACK);
                let (client, resp) = call(gzip, request).await?;
                Ok((client, resp, COMPRESSION_FALLBACK))
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the `Stream` call with `StreamCodec`.
    async fn open_stream(
        &self,
        channel: Channel,
        compression: CompressionEncoding,
        rx: mpsc::Receiver<Outgoing>,
    ) -> Result<Streaming<CollectorMessage>, tonic::Status> {
        use tonic::codegen::http::uri::PathAndQuery;
        let mut grpc =
            tonic::client::Grpc::new(InterceptedService::new(channel, self.auth.clone()))
                .send_compressed(compression);
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        req.extensions_mut()
            .insert(tonic::GrpcMethod::new("sonde.v1.Collector", "Stream"));
        let path = PathAndQuery::from_static("/sonde.v1.Collector/Stream");
        Ok(grpc.streaming(req, path, StreamCodec).await?.into_inner())
    }

    /// Connects, registers and opens the stream (its first message: hello).
    async fn connect(self) -> Result<Connection, SinkError> {
        let channel = self.channel(CONNECT_TIMEOUT).await?;
        let seen = self.seen.get();
        let request = RegisterRequest {
            identity: Some(self.identity.to_proto(&seen)),
        };
        let (client, resp, compression) = self.register(&channel, request).await?;
        let heartbeat_every = match resp.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms.into()),
        };
        debug!(collector_version = %resp.collector_version, heartbeat_ms = heartbeat_every.as_millis() as u64,
            "registered");
        // Older collectors echo the proposal; newer ones may assign another.
        if !resp.agent_id.is_empty() {
            if let Err(error) = self.identity.assign(&resp.agent_id) {
                warn!(%error, "could not keep the assigned agent id; it is used until restart");
            }
        }
        if !resp.duplicate_of.is_empty() {
            warn!(agent_id = %resp.agent_id, duplicate_of = %resp.duplicate_of,
                "another live agent already claims this instance identity; the collector keeps this \
                 agent apart and flags it (a cloned image or a copied state directory?)");
        }

        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        // Queued before the call so a collector that waits for it can answer.
        let hello = agent_message::Msg::Hello(StreamHello {
            agent_id: self.identity.agent_id(),
            session_id: self.identity.session_id.clone(),
        });
        let _ = tx.try_send(Outgoing::message(hello));
        let inbound = timeout(CALL_TIMEOUT, self.open_stream(channel, compression, rx))
            .await
            .map_err(|_| SinkError::Timeout("Stream"))?
            .map_err(SinkError::call("Stream"))?;
        Ok(Connection {
            client,
            tx,
            inbound,
            heartbeat_every,
            max_message_bytes: resp.max_message_bytes as usize,
            registered: seen.generation,
            opened_at: Instant::now(),
            got_ack: false,
        })
    }
}

pub struct GrpcSink {
    dialer: Dialer,
    shared: Shared,
    queue: QueueReceiver,
    queue_open: bool,
    /// Records just taken from the queue.
    incoming: Vec<Record>,
    /// Host metrics samples (`None`: host metrics are off).
    host: Option<mpsc::Receiver<HostMetrics>>,
    latest_host: Option<HostMetrics>,
    batcher: Batcher,
    outbox: Outbox,
    spool: Spool,
    /// How far the records read from the ring are durable.
    durable: Tracker,
    mark: Arc<Watermark>,
    spool_full_log: RateLimit,
    spool_error_log: RateLimit,
    /// New settings from a configuration reload (SIGHUP).
    reload: watch::Receiver<Settings>,
}

/// How a wait while not connected ended.
enum Waited<T> {
    Done(T),
    /// New settings arrived: dial again with them now.
    Reconfigured,
    Shutdown,
}

/// Where a sealed batch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Connected: to the in-memory window when it has room and nothing older
    /// waits in the spool.
    Stream,
    /// Not connected: to the spool.
    Spool,
}

impl GrpcSink {
    pub fn new(
        settings: Settings,
        shared: Shared,
        queue: QueueReceiver,
        host: Option<mpsc::Receiver<HostMetrics>>,
        spool: Spool,
        mark: Arc<Watermark>,
        reload: watch::Receiver<Settings>,
    ) -> GrpcSink {
        let auth = Auth::bearer(&settings.token);
        let sink = GrpcSink {
            dialer: Dialer {
                collector: settings.collector.clone(),
                tls: settings.tls.clone(),
                auth,
                identity: shared.identity.clone(),
                seen: shared.seen.clone(),
            },
            batcher: Batcher::new(settings.limits),
            shared,
            queue,
            queue_open: true,
            incoming: Vec::with_capacity(RECV_AT_ONCE),
            host,
            latest_host: None,
            // Batch ids grow across restarts: they start at the clock in µs.
            outbox: Outbox::new(MAX_UNACKED_BATCHES, unix_micros()),
            spool,
            durable: Tracker::new(mark.clone()),
            mark,
            spool_full_log: RateLimit::new(SPOOL_LOG_PERIOD),
            spool_error_log: RateLimit::new(SPOOL_LOG_PERIOD),
            reload,
        };
        sink.update_gauges();
        sink
    }

    /// Runs until shutdown, then flushes, spools what is unacknowledged and
    /// deregisters.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut backoff = Backoff::new();
        let mut conn = None;
        while !shutdown.is_triggered() {
            let dial = self.dialer.clone().connect();
            let mut c = match self.buffer_while(dial, &mut shutdown).await {
                Waited::Shutdown => break,
                Waited::Reconfigured => {
                    backoff.reset();
                    continue;
                }
                Waited::Done(Ok(c)) => c,
                Waited::Done(Err(e)) => {
                    let delay = if e.is_unauthenticated() {
                        backoff.max()
                    } else {
                        backoff.next()
                    };
                    self.log_failure(&e, delay);
                    let wait = tokio::time::sleep(delay);
                    match self.buffer_while(wait, &mut shutdown).await {
                        Waited::Shutdown => break,
                        Waited::Reconfigured => backoff.reset(),
                        Waited::Done(()) => {}
                    }
                    continue;
                }
            };
            if c.max_message_bytes > 0 {
                self.batcher
                    .cap_bytes(c.max_message_bytes.saturating_sub(MESSAGE_OVERHEAD));
            }
            info!(collector = %self.dialer.collector, agent_id = %self.shared.identity.agent_id(),
                spool_bytes = self.spool.bytes(), "connected to the collector");
            set(&self.shared.counters.connected, 1);
            let result = self.stream(&mut c, &mut shutdown).await;
            set(&self.shared.counters.connected, 0);
            match result {
                Ok(()) => {
                    conn = Some(c);
                    break;
                }
                Err(SinkError::Reconfigured) => {
                    drop(c);
                    self.connection_lost();
                    backoff.reset();
                    info!(collector = %self.dialer.collector, "reconnecting with the reloaded settings");
                }
                Err(e) => {
                    if c.got_ack || c.opened_at.elapsed() >= HEALTHY_AFTER {
                        backoff.reset();
                    }
                    drop(c);
                    self.connection_lost();
                    let delay = if e.is_unauthenticated() {
                        backoff.max()
                    } else {
                        backoff.next()
                    };
                    self.log_failure(&e, delay);
                    let wait = tokio::time::sleep(delay);
                    match self.buffer_while(wait, &mut shutdown).await {
                        Waited::Shutdown => break,
                        Waited::Reconfigured => backoff.reset(),
                        Waited::Done(()) => {}
                    }
                }
            }
        }
        self.finish(conn).await;
    }

    /// Takes reloaded settings: the next connection uses them.
    fn apply_reload(&mut self) {
        let s = self.reload.borrow_and_update().clone();
        self.dialer.collector = s.collector;
        self.dialer.tls = s.tls;
        self.dialer.auth = Auth::bearer(&s.token);
        self.batcher.set_limits(s.limits);
    }

    fn log_failure(&self, e: &SinkError, retry_in: Duration) {
        let collector = &self.dialer.collector;
        let retry_in_ms = retry_in.as_millis() as u64;
        if e.is_unauthenticated() {
            error!(%collector, retry_in_ms,
                "collector refused the agent token (UNAUTHENTICATED); check `token` in agent.toml");
        } else {
            warn!(error = %e, %collector, retry_in_ms, spool_bytes = self.spool.bytes(),
                "collector connection failed; spooling to disk and retrying");
        }
    }

    /// While not connected (connecting, or waiting to retry): runs `fut`
    /// and meanwhile keeps taking records and host samples, sealing batches
    /// and writing them to the spool. Stops early for shutdown or reloaded
    /// settings.
    async fn buffer_while<F: Future>(
        &mut self,
        fut: F,
        shutdown: &mut Shutdown,
    ) -> Waited<F::Output> {
        tokio::pin!(fut);
        let mut sync = tokio::time::interval(SPOOL_SYNC_EVERY);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let mark = self.mark.clone();
        loop {
            self.route_sealed(Route::Spool);
            let deadline = self.batcher.deadline().map(Instant::from_std);
            let host_open = self.host.is_some();
            tokio::select! {
                biased;
                _ = shutdown.wait() => return Waited::Shutdown,
                r = self.reload.changed() => if r.is_ok() {
                    self.apply_reload();
                    return Waited::Reconfigured;
                },
                out = &mut fut => return Waited::Done(out),
                _ = sync.tick() => self.sync_spool(),
                _ = mark.wanted() => self.make_durable(),
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    self.batcher.seal();
                }
                m = recv_host(&mut self.host), if host_open => self.on_host(m),
                n = self.queue.recv_many(&mut self.incoming, RECV_AT_ONCE), if self.queue_open => {
                    self.on_records(n);
                }
            }
        }
    }

    /// Batches the records just taken (`n`: 0 when the queue is closed).
    fn on_records(&mut self, n: usize) {
        if n == 0 {
            self.queue_open = false;
        }
        let now = std::time::Instant::now();
        for record in self.incoming.drain(..) {
            self.batcher.push(&record, now);
        }
    }

    fn on_host(&mut self, m: Option<HostMetrics>) {
        match m {
            Some(sample) => {
                self.latest_host = Some(sample.clone());
                self.batcher.push_host(sample, std::time::Instant::now());
            }
            None => self.host = None,
        }
    }

    /// Moves sealed batches on: to the stream's window when `route` allows,
    /// the window has room and nothing older waits in the spool; else to the
    /// spool.
    fn route_sealed(&mut self, route: Route) {
        while let Some(batch) = self.batcher.pop_sealed() {
            if route == Route::Stream && !self.spool.has_unread() && self.outbox.has_room() {
                // Held in memory only: durable once acknowledged.
                self.durable.sealed(batch.ring_end, false);
                self.outbox.push(batch);
            } else {
                // Older batches held only in memory go first, so the spool
                // keeps the order and a lost connection loses none of them.
                self.spill_direct();
                let mut batch = batch;
                batch.batch_id = self.outbox.next_id();
                // Spooled, or lost and counted.
                self.spool_new(&batch);
                self.durable.sealed(batch.ring_end, true);
            }
        }
    }

    /// Writes a new batch to the spool; counts what is spooled or lost.
    fn spool_new(&mut self, batch: &EncodedBatch) {
        let records = u64::from(batch.records);
        match self.spool.append(batch, false) {
            Ok(a) => self.on_spooled(records, batch, &a),
            Err(error) => {
                self.shared
                    .counters
                    .drop_records(DropReason::SpoolWrite, records);
                if let Some(silenced) = self.spool_error_log.check(std::time::Instant::now()) {
                    error!(%error, records, since_last_error = silenced + 1,
                        "cannot write to the spool; the batch is lost");
                }
            }
        }
    }

    fn on_spooled(&self, records: u64, batch: &EncodedBatch, a: &Appended) {
        let counters = &self.shared.counters;
        add(&counters.records_spooled, records);
        add(
            &counters.bytes_spooled,
            (batch.encoded_len() + spool::FRAME_HEADER) as u64,
        );
        if a.dropped_records > 0 || a.dropped_segments > 0 {
            counters.drop_records(DropReason::SpoolFull, a.dropped_records);
            if let Some(silenced) = self.spool_full_log.check(std::time::Instant::now()) {
                warn!(
                    dropped_records = a.dropped_records,
                    since_last_warning = silenced + 1,
                    records_dropped_spool_full = counters.dropped(DropReason::SpoolFull),
                    spool_bytes = self.spool.bytes(),
                    "spool full (spool_max_bytes): deleted the oldest spooled data"
                );
            }
        }
        self.update_gauges();
    }

    /// Writes the window's in-memory-only batches to the spool (they stay in
    /// the window, now backed by a frame). One that cannot be written stays
    /// in memory only.
    fn spill_direct(&mut self) {
        if !self.outbox.has_direct() {
            return;
        }
        let mut spooled = Vec::new();
        for e in self.outbox.direct_mut() {
            match self.spool.append(&e.batch, true) {
                Ok(a) => {
                    if let Some(p) = a.position {
                        if e.ever_sent {
                            self.spool.mark_sent(p);
                        }
                    }
                    e.spool = a.position;
                    self.durable.settle(e.batch.ring_end);
                    spooled.push((u64::from(e.batch.records), e.batch.encoded_len(), a));
                }
                Err(error) => {
                    if let Some(silenced) = self.spool_error_log.check(std::time::Instant::now()) {
                        error!(%error, since_last_error = silenced + 1,
                            "cannot write to the spool; the batch stays in memory only");
                    }
                }
            }
        }
        let counters = &self.shared.counters;
        for (records, bytes, a) in spooled {
            add(&counters.records_spooled, records);
            add(
                &counters.bytes_spooled,
                (bytes + spool::FRAME_HEADER) as u64,
            );
            counters.drop_records(DropReason::SpoolFull, a.dropped_records);
        }
        self.update_gauges();
    }

    /// The ring asks for durability (too much of it was read but is held
    /// only here): the batches awaiting acknowledgement go to the spool now
    /// rather than at the acknowledgement timeout.
    fn make_durable(&mut self) {
        if self.outbox.has_direct() {
            debug!(
                batches = self.outbox.direct_mut().count(),
                ring_batches_waiting = self.durable.len(),
                "the record ring is filling up: spooling the batches awaiting acknowledgement"
            );
            self.spill_direct();
        }
    }

    /// The stream is gone: every batch in the window is either in the spool
    /// (read again from there, in order) or, if it could not be spooled, kept
    /// in memory to be sent first.
    fn connection_lost(&mut self) {
        self.spill_direct();
        let mut lost = 0u64;
        for e in self.outbox.drain_spooled() {
            if let Some(p) = e.spool {
                if !self.spool.holds(p) {
                    // Its segment was deleted for room while it was in flight.
                    lost += u64::from(e.batch.records);
                }
            }
        }
        self.shared
            .counters
            .drop_records(DropReason::SpoolFull, lost);
        self.spool.rewind();
        self.sync_spool();
    }

    fn sync_spool(&mut self) {
        if let Err(error) = self.spool.sync() {
            if let Some(silenced) = self.spool_error_log.check(std::time::Instant::now()) {
                error!(%error, since_last_error = silenced + 1, "cannot sync the spool to disk");
            }
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        let c = &self.shared.counters;
        set(&c.spool_bytes, self.spool.bytes());
        set(&c.spool_segments, self.spool.segments() as u64);
    }

    /// Loads spooled batches into the window while it has room.
    fn refill(&mut self) {
        while self.outbox.has_room() {
            match self.spool.read_next() {
                None => break,
                Some(Ok((at, batch))) => {
                    self.outbox.push_replay(batch, at);
                }
                Some(Err(error)) => {
                    self.shared
                        .counters
                        .drop_records(DropReason::SpoolCorrupt, error.lost_records);
                    warn!(%error, "skipping damaged spooled data");
                    self.update_gauges();
                }
            }
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
        let mut sync = tokio::time::interval(SPOOL_SYNC_EVERY);
        for t in [&mut heartbeat, &mut live, &mut ack_check, &mut sync] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let mark = self.mark.clone();
        loop {
            self.route_sealed(Route::Stream);
            self.refill();
            let deadline = self.batcher.deadline().map(Instant::from_std);
            let host_open = self.host.is_some();
            // Timers come before the data branches: under load the queue is
            // always ready, and `biased` would otherwise starve them.
            tokio::select! {
                biased;
                _ = shutdown.wait() => return Ok(()),
                r = self.reload.changed() => if r.is_ok() {
                    self.apply_reload();
                    return Err(SinkError::Reconfigured);
                },
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
                        host: self.latest_host.clone(),
                    };
                    // Live data is best effort: skipped when the stream is busy.
                    let _ = c.tx.try_send(Outgoing::message(agent_message::Msg::Live(snapshot)));
                }
                _ = sync.tick() => self.sync_spool(),
                _ = mark.wanted() => self.make_durable(),
                permit = c.tx.reserve(), if self.outbox.has_unsent() => {
                    let permit = permit.map_err(|_| SinkError::Closed)?;
                    self.send_next(permit);
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    self.batcher.seal();
                }
                m = recv_host(&mut self.host), if host_open => self.on_host(m),
                n = self.queue.recv_many(&mut self.incoming, RECV_AT_ONCE), if self.queue_open => {
                    self.on_records(n);
                }
            }
        }
    }

    fn send_next(&mut self, permit: mpsc::Permit<'_, Outgoing>) {
        let Some(e) = self.outbox.send_next(Instant::now().into_std()) else {
            return;
        };
        let records = u64::from(e.batch.records);
        let counters = &self.shared.counters;
        // Count each batch once, however often it is sent: in memory by its
        // entry, in the spool by its frame (an entry read again after a
        // reconnect is a new entry for the same frame).
        let first = match e.spool {
            Some(p) => self.spool.mark_sent(p),
            None => !e.ever_sent,
        };
        e.ever_sent = true;
        if first {
            add(&counters.records_sent, records);
            if e.batch.replay {
                add(&counters.records_replayed, records);
            }
        }
        add(&counters.bytes_sent, e.batch.encoded_len() as u64);
        debug!(
            batch_id = e.batch.batch_id,
            records,
            host_samples = e.batch.host_samples,
            replay = e.batch.replay,
            "sending batch"
        );
        permit.send(Outgoing::Batch(e.batch.clone()));
    }

    fn heartbeat(&self, c: &Connection) {
        let hb = Heartbeat {
            ts_unix_ms: unix_nanos() / 1_000_000,
            counters: Some(self.shared.counters.snapshot()),
        };
        let _ =
            c.tx.try_send(Outgoing::message(agent_message::Msg::Heartbeat(hb)));
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
        let counters = self.shared.counters.clone();
        match m.msg {
            Some(collector_message::Msg::Ack(ack)) => {
                let Some(e) = self.outbox.remove(ack.batch_id) else {
                    debug!(
                        batch_id = ack.batch_id,
                        "acknowledgement of an unknown batch (already acknowledged?)"
                    );
                    return true;
                };
                add(&counters.records_acked, u64::from(e.batch.records));
                add(&counters.batches_acked, 1);
                self.durable.settle(e.batch.ring_end);
                debug!(
                    batch_id = ack.batch_id,
                    stored = ack.stored,
                    duplicates = ack.duplicates,
                    "batch acknowledged"
                );
                if let Some(at) = e.spool {
                    self.spool.ack(at);
                    self.update_gauges();
                }
                true
            }
            Some(collector_message::Msg::Reject(rej)) => {
                let Some(e) = self.outbox.remove(rej.batch_id) else {
                    debug!(batch_id = rej.batch_id, "rejection of an unknown batch");
                    return false;
                };
                let records = u64::from(e.batch.records);
                add(&counters.batches_rejected, 1);
                counters.drop_records(DropReason::Rejected, records);
                self.durable.settle(e.batch.ring_end);
                warn!(batch_id = rej.batch_id, records, reason = %rej.reason,
                    "the collector rejected a batch; its records are dropped");
                if let Some(at) = e.spool {
                    self.spool.ack(at);
                    self.update_gauges();
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
                Ok(Some(record)) => self.batcher.push(&record, std::time::Instant::now()),
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
        self.route_sealed(if conn.is_some() {
            Route::Stream
        } else {
            Route::Spool
        });

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

        self.spill_direct();
        let mut lost = 0u64;
        for e in self.outbox.drain() {
            if e.spool.is_none() {
                lost += u64::from(e.batch.records);
                // Counted as dropped: the next agent must not read them again.
                self.durable.settle(e.batch.ring_end);
            }
        }
        if lost > 0 {
            error!(
                records = lost,
                "cannot spool unacknowledged records; they are lost"
            );
            self.shared
                .counters
                .drop_records(DropReason::SpoolWrite, lost);
        }
        self.sync_spool();
        if !self.spool.is_empty() {
            info!(dir = %self.spool.dir().display(), spool_bytes = self.spool.bytes(),
                segments = self.spool.segments(), "unacknowledged data stays in the spool for the next start");
        }
        self.deregister(conn).await;
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
        let reason = self.shared.lifecycle.reason_at_shutdown().await;
        let request = DeregisterRequest {
            agent_id: self.shared.identity.agent_id(),
            reason: reason as i32,
        };
        let call = async {
            let mut client = match conn {
                // Close our half of the stream first.
                Some(c) => c.client,
                None => self.dialer.client(Duration::from_secs(1)).await?,
            };
            client
                .deregister(request)
                .await
                .map_err(SinkError::call("Deregister"))
        };
        match timeout(DEREGISTER_TIMEOUT, call).await {
            Ok(Ok(_)) => info!(
                reason = reason.as_str_name(),
                "deregistered from the collector"
            ),
            Ok(Err(error)) => warn!(%error, "could not deregister from the collector"),
            Err(_) => warn!("deregistering from the collector timed out"),
        }
    }
}

/// The next host sample; pending forever when host metrics are off.
async fn recv_host(rx: &mut Option<mpsc::Receiver<HostMetrics>>) -> Option<HostMetrics> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
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
    fn an_encoded_batch_goes_out_as_the_agent_message_prost_would_decode() {
        use crate::buffer::batch::Batcher;
        use sonde_proto::v1::{Batch, RequestRecord};
        let mut b = Batcher::new(Limits {
            max_records: 10,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(1),
        });
        let recs: Vec<RequestRecord> = (0..3u8)
            .map(|n| RequestRecord {
                id: vec![n; 16],
                url: format!("/{n}"),
                ..Default::default()
            })
            .collect();
        let now = std::time::Instant::now();
        for r in &recs {
            b.push(&Record::from_message(r), now);
        }
        b.push_host(
            HostMetrics {
                ts_unix_ms: 5,
                ..Default::default()
            },
            now,
        );
        b.seal();
        let mut batch = b.pop_sealed().unwrap();
        batch.batch_id = 77;
        batch.replay = true;
        let out = Outgoing::Batch(batch);
        let mut wire = Vec::new();
        out.encode(&mut wire);
        let got = AgentMessage::decode(wire.as_slice()).unwrap();
        let want = AgentMessage {
            msg: Some(agent_message::Msg::Batch(Batch {
                batch_id: 77,
                records: recs,
                host_metrics: vec![HostMetrics {
                    ts_unix_ms: 5,
                    ..Default::default()
                }],
                replay: true,
            })),
        };
        assert_eq!(got, want);
        // Other messages are prost's own encoding.
        let hb = Outgoing::message(agent_message::Msg::Heartbeat(Heartbeat::default()));
        let mut wire = Vec::new();
        hb.encode(&mut wire);
        let Outgoing::Message(m) = hb else { panic!() };
        assert_eq!(wire, m.encode_to_vec());
    }

    #[test]
    fn a_collector_without_zstd_is_recognised() {
        let e = SinkError::Call {
            call: "Register",
            status: tonic::Status::unimplemented(
                "Content is compressed with `zstd` which isn't supported",
            ),
        };
        assert!(refuses_compression(&e));
        let other = SinkError::Call {
            call: "Register",
            status: tonic::Status::unimplemented("no such method"),
        };
        assert!(!refuses_compression(&other));
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
