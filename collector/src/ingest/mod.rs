//! gRPC ingest: the `sonde.v1.Collector` service agents call. Owns agent
//! authentication, registration and the per-agent batch streams (see
//! `stream`). It must never acknowledge a batch before the store has
//! committed it: the agent deletes what was acknowledged.

pub mod identity_doc;
pub mod registry;
mod stream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sonde_proto::v1::collector_server::{Collector, CollectorServer};
use sonde_proto::v1::deregister_request::Reason;
use sonde_proto::v1::{DeregisterRequest, DeregisterResponse, RegisterRequest, RegisterResponse};
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::auth::{AuthError, Tokens};
use crate::clock::now_ms;
use crate::config::VerifyIdentity;
use crate::live::LiveState;
use crate::live_stats::LiveStats;
use crate::presence::Presence;
use crate::shutdown::Shutdown;
use crate::storage::{run_blocking, AgentState, EventRecord, SharedStore};

/// Cumulative ingest counters, exposed on `/api/v1/stats`.
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub batches: AtomicU64,
    pub records_stored: AtomicU64,
    pub records_duplicate: AtomicU64,
    pub records_invalid: AtomicU64,
    /// Calls refused for a missing or unknown agent token.
    pub auth_rejected: AtomicU64,
    /// Batches not acknowledged because the store failed.
    pub store_errors: AtomicU64,
    /// Registrations whose signed instance identity did not verify.
    pub identity_unverified: AtomicU64,
    /// For the newest record of the last stored batch: milliseconds from
    /// its end to its commit.
    pub lag_ms: std::sync::atomic::AtomicI64,
}

/// A point-in-time copy of [`IngestCounters`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CountersView {
    pub batches: u64,
    pub records_stored: u64,
    pub records_duplicate: u64,
    pub records_invalid: u64,
    pub auth_rejected: u64,
    pub store_errors: u64,
    pub identity_unverified: u64,
    pub lag_ms: i64,
}

impl IngestCounters {
    pub fn view(&self) -> CountersView {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersView {
            batches: get(&self.batches),
            records_stored: get(&self.records_stored),
            records_duplicate: get(&self.records_duplicate),
            records_invalid: get(&self.records_invalid),
            auth_rejected: get(&self.auth_rejected),
            store_errors: get(&self.store_errors),
            identity_unverified: get(&self.identity_unverified),
            lag_ms: self.lag_ms.load(Ordering::Relaxed),
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What the service needs; one per collector.
#[derive(Clone)]
pub struct Ingest {
    pub store: SharedStore,
    pub tokens: Tokens,
    pub live: Arc<LiveState>,
    /// Which agent processes are connected now.
    pub presence: Arc<Presence>,
    /// The dashboard's live statistics, fed after each commit.
    pub stats: Arc<LiveStats>,
    pub counters: Arc<IngestCounters>,
    pub shutdown: Shutdown,
    pub heartbeat_interval_ms: u32,
    pub max_message_bytes: u32,
    /// `[fleet] verify_identity`, and the keys when it is not off.
    pub verify: VerifyIdentity,
    pub verifier: Option<Arc<identity_doc::Verifier>>,
}

impl Ingest {
    /// Checks a cloud identity's signed document; `None` when not checked
    /// (verification off, or no cloud identity).
    fn check_identity(
        &self,
        identity: &sonde_proto::v1::AgentIdentity,
    ) -> Option<Result<(), identity_doc::VerifyError>> {
        let verifier = self.verifier.as_ref()?;
        if self.verify == VerifyIdentity::Off || identity.instance_id.is_empty() {
            return None;
        }
        Some(verifier.verify(identity))
    }

    /// Checks the call's agent token; logs and counts a refusal.
    fn authorize<T>(&self, request: &Request<T>, call: &'static str) -> Result<(), AuthError> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        self.tokens.check(header).inspect_err(|error| {
            add(&self.counters.auth_rejected, 1);
            let peer = peer(request);
            warn!(%error, %peer, call, "agent refused");
        })
    }
}

/// The answer to a refused agent.
fn refused(error: AuthError) -> Status {
    Status::unauthenticated(match error {
        AuthError::Missing => "missing agent token",
        AuthError::Unknown => "unknown agent token",
    })
}

/// The caller's address, for logs.
fn peer<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "unknown".to_owned(), |a: SocketAddr| a.to_string())
}

fn unavailable(error: &crate::storage::StoreError) -> Status {
    Status::unavailable(format!("storage unavailable: {error}"))
}

#[tonic::async_trait]
impl Collector for Ingest {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        self.authorize(&request, "Register").map_err(refused)?;
        let peer = peer(&request);
        let Some(mut identity) = request.into_inner().identity else {
            return Err(Status::invalid_argument("identity is required"));
        };
        if identity.agent_id.is_empty() {
            if identity.hostname.is_empty() {
                return Err(Status::invalid_argument(
                    "identity needs an agent_id or a hostname",
                ));
            }
            identity.agent_id = identity.hostname.clone();
        }
        let hostname = identity.hostname.clone();
        let proposed = identity.agent_id.clone();
        let check = self.check_identity(&identity);
        if let Some(Err(error)) = &check {
            add(&self.counters.identity_unverified, 1);
            let instance = &identity.instance_id;
            warn!(%error, agent = %proposed, %instance, %hostname, %peer,
                refused = self.verify == VerifyIdentity::Require,
                "instance identity not verified");
            if self.verify == VerifyIdentity::Require {
                return Err(Status::permission_denied(format!(
                    "instance identity not verified: {error}"
                )));
            }
        }
        let verified = check.as_ref().map(Result::is_ok);
        let unverified_event = match &check {
            Some(Err(e)) => Some(e.to_string()),
            _ => None,
        };
        let presence = self.presence.clone();
        let registration = run_blocking(&self.store, move |s| {
            let now = now_ms();
            let r = registry::register(s, &mut presence.lock(), &mut identity, verified, now)?;
            if r.conflict {
                s.insert_event(&duplicate_event(&r, &identity, now))?;
            }
            if let Some(why) = unverified_event {
                s.insert_event(&unverified_identity_event(&r, &identity, &why, now))?;
            }
            Ok(r)
        })
        .await
        .map_err(|error| {
            warn!(%error, agent = %proposed, %peer, "registering agent failed");
            unavailable(&error)
        })?;
        let agent_id = registration.agent_id;
        match &registration.duplicate_of {
            Some(original) => warn!(agent = %agent_id, %original, key = %registration.identity_key,
                %hostname, %peer, "agent registered as a duplicate: another live agent holds this identity"),
            None => info!(agent = %agent_id, %hostname, %peer, "agent registered"),
        }
        Ok(Response::new(RegisterResponse {
            agent_id,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            max_message_bytes: self.max_message_bytes,
            collector_version: env!("CARGO_PKG_VERSION").to_owned(),
            duplicate_of: registration.duplicate_of.unwrap_or_default(),
        }))
    }

    type StreamStream = ReceiverStream<Result<sonde_proto::v1::CollectorMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<sonde_proto::v1::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        self.authorize(&request, "Stream").map_err(refused)?;
        let peer = request.remote_addr();
        let (tx, rx) = tokio::sync::mpsc::channel(stream::OUTBOUND_QUEUE);
        let session = stream::Session::new(self.clone(), peer, tx);
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        self.authorize(&request, "Deregister").map_err(refused)?;
        let peer = peer(&request);
        let req = request.into_inner();
        if req.agent_id.is_empty() {
            return Err(Status::invalid_argument("agent_id is required"));
        }
        let state = match req.reason() {
            Reason::Terminating => AgentState::Terminated,
            Reason::Shutdown | Reason::Unspecified => AgentState::Stopped,
        };
        self.live.remove(&req.agent_id);
        self.presence.deregistered(&req.agent_id);
        let agent_id = req.agent_id.clone();
        let known = run_blocking(&self.store, move |s| {
            s.set_agent_state(&agent_id, state, now_ms())
        })
        .await
        .map_err(|error| {
            warn!(%error, agent = %req.agent_id, %peer, "deregistering agent failed");
            unavailable(&error)
        })?;
        if known {
            info!(agent = %req.agent_id, state = state.as_str(), %peer, "agent deregistered");
        } else {
            warn!(agent = %req.agent_id, %peer, "deregister from an agent that never registered");
        }
        Ok(Response::new(DeregisterResponse {}))
    }
}

/// The event for an agent whose signed identity did not verify (flag mode).
fn unverified_identity_event(
    r: &registry::Registration,
    identity: &sonde_proto::v1::AgentIdentity,
    why: &str,
    now_ms: i64,
) -> EventRecord {
    EventRecord {
        ts_ms: now_ms,
        level: "warning".into(),
        kind: "identity_unverified".into(),
        state: "firing".into(),
        message: format!(
            "agent {} on {} says it is instance {} but its identity did not verify: {why}",
            r.agent_id, identity.hostname, identity.instance_id
        ),
        host: (!identity.hostname.is_empty()).then(|| identity.hostname.clone()),
        rule: "identity_unverified".into(),
        ..Default::default()
    }
}

/// The event for a second live agent claiming an identity.
fn duplicate_event(
    r: &registry::Registration,
    identity: &sonde_proto::v1::AgentIdentity,
    now_ms: i64,
) -> EventRecord {
    EventRecord {
        ts_ms: now_ms,
        level: "warning".into(),
        kind: "duplicate_identity".into(),
        state: "firing".into(),
        message: format!(
            "agent {} on {} claims identity {} already held by live agent {}; kept apart and flagged \
             (a cloned image or copied state?)",
            r.agent_id,
            identity.hostname,
            r.identity_key,
            r.duplicate_of.as_deref().unwrap_or_default()
        ),
        host: (!identity.hostname.is_empty()).then(|| identity.hostname.clone()),
        rule: "duplicate_identity".into(),
        value: 2.0,
        threshold: 1.0,
        ..Default::default()
    }
}

/// Serves the ingest service on `listener` until `shutdown` fires, then
/// lets calls in progress finish (streams end after their current batch).
pub async fn serve(
    listener: TcpListener,
    ingest: Ingest,
    tls: Option<tonic::transport::ServerTlsConfig>,
    mut shutdown: Shutdown,
) -> Result<(), tonic::transport::Error> {
    let max = ingest.max_message_bytes as usize;
    let service = CollectorServer::new(ingest)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(max);
    /// HTTP/2 receive window per agent stream, bytes: what an agent may
    /// have in flight unread, so also the memory a fleet replaying at once
    /// can hold here (100 agents: 400 MiB at most, beside one decoded
    /// batch each). 16 MiB measured no faster.
    const STREAM_WINDOW: u32 = 4 << 20;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    server
        // Notice agents that vanished without closing their connection.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // Room for the next batch to arrive while the current one is
        // stored: with HTTP/2's default windows a big uncompressed batch
        // crossed in pieces, each waiting for the collector to read.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(STREAM_WINDOW * 2))
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.wait().await
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{
        AgentRecord, EndpointStats, HostSeries, InsertOutcome, RollupRange, SqlStats, Step, Store,
        StoreError, TxDetail, TxFilter, TxPage, Visitors,
    };
    use sonde_proto::v1::agent_message::Msg;
    use sonde_proto::v1::collector_client::CollectorClient;
    use sonde_proto::v1::{AgentIdentity, AgentMessage, Batch, HostMetrics, RequestRecord};
    use tonic::Code;

    /// A store whose disk is full: every write fails.
    struct FullDisk;

    fn full<T>() -> Result<T, StoreError> {
        Err(StoreError::Backend("database or disk is full".into()))
    }

    impl Store for FullDisk {
        fn insert_records(
            &self,
            _: &[RequestRecord],
            _: &str,
        ) -> Result<InsertOutcome, StoreError> {
            full()
        }
        fn insert_host_metrics(&self, _: &[HostMetrics], _: &str) -> Result<u32, StoreError> {
            full()
        }
        fn endpoints(&self, _: &RollupRange) -> Result<Vec<EndpointStats>, StoreError> {
            full()
        }
        fn sql_statements(
            &self,
            _: &RollupRange,
            _: Option<&str>,
        ) -> Result<Vec<SqlStats>, StoreError> {
            full()
        }
        fn steps(&self, _: &RollupRange, _: i64, _: bool) -> Result<Vec<Step>, StoreError> {
            full()
        }
        fn visitors(&self, _: &RollupRange, _: i64) -> Result<Visitors, StoreError> {
            full()
        }
        fn host_series(
            &self,
            _: i64,
            _: i64,
            _: Option<&str>,
            _: usize,
        ) -> Result<(Vec<HostSeries>, bool), StoreError> {
            full()
        }
        fn query_transactions(&self, _: &TxFilter) -> Result<TxPage, StoreError> {
            full()
        }
        fn transaction(&self, _: &[u8]) -> Result<Option<TxDetail>, StoreError> {
            full()
        }
        fn upsert_agent(
            &self,
            _: &AgentIdentity,
            _: &str,
            _: Option<&str>,
            _: Option<bool>,
            _: i64,
        ) -> Result<(), StoreError> {
            full()
        }
        fn agents_by_key(&self, _: &str) -> Result<Vec<AgentRecord>, StoreError> {
            full()
        }
        fn heartbeat(&self, _: &str, _: i64) -> Result<bool, StoreError> {
            full()
        }
        fn set_agent_state(&self, _: &str, _: AgentState, _: i64) -> Result<bool, StoreError> {
            full()
        }
        fn add_agent_apps(&self, _: &str, _: &[String]) -> Result<(), StoreError> {
            full()
        }
        fn agent(&self, _: &str) -> Result<Option<AgentRecord>, StoreError> {
            full()
        }
        fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
            full()
        }
        fn insert_event(&self, _: &crate::storage::EventRecord) -> Result<i64, StoreError> {
            full()
        }
        fn list_events(
            &self,
            _: i64,
            _: i64,
            _: usize,
        ) -> Result<Vec<crate::storage::EventRecord>, StoreError> {
            full()
        }
        fn ack_event(&self, _: i64, _: &str, _: i64) -> Result<bool, StoreError> {
            full()
        }
        fn flush(&self) -> Result<(), StoreError> {
            full()
        }
    }

    #[tokio::test]
    async fn storage_failure_is_never_acknowledged() {
        let (trigger, shutdown) = crate::shutdown::channel();
        let counters = Arc::new(IngestCounters::default());
        let ingest = Ingest {
            store: Arc::new(FullDisk),
            tokens: Tokens::new(vec![]),
            live: Arc::default(),
            presence: Arc::new(Presence::new(5000)),
            stats: Arc::default(),
            counters: Arc::clone(&counters),
            shutdown: shutdown.clone(),
            heartbeat_interval_ms: 5000,
            max_message_bytes: 1 << 20,
            verify: VerifyIdentity::Off,
            verifier: None,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, ingest, None, shutdown));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = CollectorClient::new(channel);

        let e = client
            .register(RegisterRequest {
                identity: Some(AgentIdentity {
                    agent_id: "a".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);

        let batch = AgentMessage {
            msg: Some(Msg::Batch(Batch {
                batch_id: 1,
                records: vec![RequestRecord {
                    id: vec![1; 16],
                    ..Default::default()
                }],
                ..Default::default()
            })),
        };
        let mut replies = client
            .stream(tokio_stream::iter(vec![batch]))
            .await
            .unwrap()
            .into_inner();
        let e = replies.message().await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert_eq!(counters.view().store_errors, 1);
        assert_eq!(counters.view().records_stored, 0);

        trigger.fire();
        drop(client);
        server.await.unwrap().unwrap();
    }
}
