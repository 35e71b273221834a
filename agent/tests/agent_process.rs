//! Runs the real `sonde-agent` binary against a fake collector (a tonic
//! server implementing `sonde.v1.Collector` on a loopback port chosen at run
//! time) and feeds it frames over its SOCK_SEQPACKET socket, as the PHP
//! extension does. Every child process is killed by a drop guard.

use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use prost::Message;
use sonde_core::frame;
use sonde_proto::v1::collector_server::{Collector, CollectorServer};
use sonde_proto::v1::{
    agent_message, collector_message, deregister_request, ext_message, Ack, AgentMessage, Batch,
    CollectorMessage, DeregisterRequest, DeregisterResponse, DropCounts, ExtMessage,
    RegisterRequest, RegisterResponse, RequestRecord,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_seqpacket::UnixSeqpacket;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status, Streaming};

const TOKEN: &str = "test-token";
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- fake collector

#[derive(Debug, Default)]
struct Seen {
    registers: Vec<(String, RegisterRequest)>,
    stream_auth: Vec<String>,
    hellos: Vec<String>,
    batches: Vec<Batch>,
    heartbeats: usize,
    lives: usize,
    /// Live snapshots that carried host metrics.
    live_hosts: usize,
    deregisters: Vec<(String, DeregisterRequest)>,
    protocol_errors: Vec<String>,
    /// Batches to answer by failing the stream instead of acknowledging.
    fail_next_batches: usize,
    /// Unreachable: Register fails, open streams fail at their next message.
    down: bool,
}

#[derive(Clone)]
struct FakeCollector {
    token: String,
    seen: Arc<Mutex<Seen>>,
}

impl FakeCollector {
    /// The `authorization` value when it carries the expected token.
    fn auth<T>(&self, req: &Request<T>) -> Option<String> {
        let got = req.metadata().get("authorization")?.to_str().ok()?;
        (got == format!("Bearer {}", self.token)).then(|| got.to_owned())
    }
}

enum Reply {
    Nothing,
    Ack(Ack),
    /// End the stream with an error, as a collector restart would.
    Fail,
}

fn refused() -> Status {
    Status::unauthenticated("unknown agent token")
}

#[tonic::async_trait]
impl Collector for FakeCollector {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let auth = self.auth(&req).ok_or_else(refused)?;
        if self.seen.lock().unwrap().down {
            return Err(Status::unavailable("collector down"));
        }
        let r = req.into_inner();
        let agent_id = r
            .identity
            .as_ref()
            .map(|i| i.agent_id.clone())
            .unwrap_or_default();
        self.seen.lock().unwrap().registers.push((auth, r));
        Ok(Response::new(RegisterResponse {
            agent_id,
            heartbeat_interval_ms: 500,
            max_message_bytes: 4 << 20,
            collector_version: "fake".into(),
            ..Default::default()
        }))
    }

    type StreamStream = ReceiverStream<Result<CollectorMessage, Status>>;

    async fn stream(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let auth = self.auth(&req).ok_or_else(refused)?;
        self.seen.lock().unwrap().stream_auth.push(auth);
        let seen = self.seen.clone();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut first = true;
            while let Ok(Some(m)) = inbound.message().await {
                let reply = {
                    let mut s = seen.lock().unwrap();
                    let is_hello = matches!(m.msg, Some(agent_message::Msg::Hello(_)));
                    if first != is_hello {
                        s.protocol_errors
                            .push(format!("hello first? first={first} msg={m:?}"));
                    }
                    first = false;
                    if s.down {
                        let _ = tx.try_send(Err(Status::unavailable("collector down")));
                        break;
                    }
                    match m.msg {
                        Some(agent_message::Msg::Hello(h)) => {
                            s.hellos.push(h.agent_id);
                            Reply::Nothing
                        }
                        Some(agent_message::Msg::Batch(b)) if s.fail_next_batches > 0 => {
                            s.fail_next_batches -= 1;
                            s.batches.push(b);
                            Reply::Fail
                        }
                        Some(agent_message::Msg::Batch(b)) => {
                            let ack = Ack {
                                batch_id: b.batch_id,
                                stored: b.records.len() as u32,
                                duplicates: 0,
                            };
                            s.batches.push(b);
                            Reply::Ack(ack)
                        }
                        Some(agent_message::Msg::Heartbeat(_)) => {
                            s.heartbeats += 1;
                            Reply::Nothing
                        }
                        Some(agent_message::Msg::Live(l)) => {
                            s.lives += 1;
                            s.live_hosts += usize::from(l.host.is_some());
                            Reply::Nothing
                        }
                        None => Reply::Nothing,
                    }
                };
                let msg = match reply {
                    Reply::Nothing => continue,
                    Reply::Ack(ack) => Ok(CollectorMessage {
                        msg: Some(collector_message::Msg::Ack(ack)),
                    }),
                    Reply::Fail => Err(Status::unavailable("collector restarting")),
                };
                let fail = msg.is_err();
                if tx.send(msg).await.is_err() || fail {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn deregister(
        &self,
        req: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        let auth = self.auth(&req).ok_or_else(refused)?;
        self.seen
            .lock()
            .unwrap()
            .deregisters
            .push((auth, req.into_inner()));
        Ok(Response::new(DeregisterResponse {}))
    }
}

struct RunningCollector {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    _stop: oneshot::Sender<()>,
}

async fn start_collector(token: &str, listener: TcpListener) -> RunningCollector {
    let addr = listener.local_addr().unwrap();
    let fake = FakeCollector {
        token: token.into(),
        seen: Arc::default(),
    };
    let seen = fake.seen.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let service = CollectorServer::new(fake).accept_compressed(CompressionEncoding::Gzip);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    RunningCollector {
        addr,
        seen,
        _stop: stop,
    }
}

async fn free_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

// ---------------------------------------------------------------- the agent process

struct Agent {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(dir: &Path, config: &str) -> Agent {
        Agent::start_with_env(dir, config, &[])
    }

    fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Agent {
        let path = dir.join("agent.toml");
        fs::write(&path, config).unwrap();
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let log = dir.join(format!(
            "agent-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_sonde-agent"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "sonde_agent=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent {
            child,
            socket: dir.join("run/agent.sock"),
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    async fn connect(&mut self) -> UnixSeqpacket {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(s) = UnixSeqpacket::connect(&self.socket).await {
                return s;
            }
            assert!(self.is_running(), "agent exited early:\n{}", self.log());
            assert!(
                Instant::now() < deadline,
                "agent socket never appeared:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no chance to flush or spool anything more.
    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for the exit.
    async fn terminate(&mut self) -> ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent ignored SIGTERM:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn config(dir: &Path, collector: SocketAddr, token: &str) -> String {
    format!(
        r#"
collector = "http://{collector}"
token = "{token}"
socket = "{socket}"
socket_group = "sonde-test-no-such-group"
socket_mode = "0660"
spool_dir = "{spool}"
hostname = "test-host"
flush_interval_ms = 100
host_metrics_interval_secs = 0
metrics_listen = ""
[cloud]
provider = "none"
"#,
        socket = dir.join("run/agent.sock").display(),
        spool = dir.join("spool").display(),
    )
}

fn record(n: u8) -> RequestRecord {
    RequestRecord {
        id: vec![n; 16],
        app: "shop".into(),
        pid: 4242,
        method: "GET".into(),
        url: format!("/item/{n}"),
        status: 200,
        wall_ns: 1_000_000 * u64::from(n),
        php_version: "8.3.0".into(),
        ext_version: "0.1.0".into(),
        dropped: Some(DropCounts {
            records: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn frame_of(r: RequestRecord) -> Vec<u8> {
    let mut buf = Vec::new();
    frame::start(&mut buf, frame::Kind::ExtMessage);
    ExtMessage {
        msg: Some(ext_message::Msg::Record(r)),
    }
    .encode(&mut buf)
    .unwrap();
    buf
}

fn received(seen: &Mutex<Seen>) -> Vec<RequestRecord> {
    let s = seen.lock().unwrap();
    s.batches.iter().flat_map(|b| b.records.clone()).collect()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spool_files(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir.join("spool")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with("spool-") && name.ends_with(".seg")
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn spool_bytes(dir: &Path) -> u64 {
    spool_files(dir)
        .iter()
        .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

/// A loopback port free now (bound then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /metrics` from the agent's endpoint.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// One sample's value from a scrape (`name` with its labels).
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// All ids received, in order.
fn received_ids(seen: &Mutex<Seen>) -> Vec<u8> {
    received(seen).iter().map(|r| r.id[0]).collect()
}

/// A port with nothing behind it yet.
async fn unused_addr() -> SocketAddr {
    let listener = free_listener().await;
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_the_collector_with_the_token_and_garbage_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let collector = start_collector(TOKEN, free_listener().await).await;
    let mut agent = Agent::start(dir.path(), &config(dir.path(), collector.addr, TOKEN));
    let sock = agent.connect().await;

    for n in 1..=3 {
        sock.send(&frame_of(record(n))).await.unwrap();
    }
    wait_until("3 records", || received(&collector.seen).len() >= 3).await;

    // Garbage of every kind; the agent must carry on.
    let mut oversized = frame_of(record(99));
    oversized.resize(frame::MAX_FRAME_BYTES + 10, 0);
    for garbage in [
        &b"not a frame at all"[..],
        b"SN\x01\x01\xff\xff\xff\xff",
        b"SN\x09\x01",
        b"SN\x01\x01",
        &oversized,
    ] {
        sock.send(garbage).await.unwrap();
    }
    sock.send(&frame_of(record(4))).await.unwrap();
    wait_until("the record after the garbage", || {
        received(&collector.seen).len() >= 4
    })
    .await;
    assert!(
        agent.is_running(),
        "agent died on garbage:\n{}",
        agent.log()
    );
    assert!(agent.log().contains("malformed message"), "{}", agent.log());

    let got = received(&collector.seen);
    let ids: Vec<u8> = got.iter().map(|r| r.id[0]).collect();
    assert_eq!(
        ids,
        [1, 2, 3, 4],
        "exactly the records sent, once, in order"
    );
    for r in &got {
        assert_eq!(r.host, "test-host");
        assert_eq!(r.app, "shop");
        let mut want = record(r.id[0]);
        want.host = "test-host".into();
        assert_eq!(r, &want, "records pass through unchanged but for the host");
    }

    wait_until("a heartbeat and a live snapshot", || {
        let s = collector.seen.lock().unwrap();
        s.heartbeats > 0 && s.lives > 0
    })
    .await;
    {
        let s = collector.seen.lock().unwrap();
        assert!(s.protocol_errors.is_empty(), "{:?}", s.protocol_errors);
        assert!(s.batches.iter().all(|b| !b.replay));
        let (auth, reg) = &s.registers[0];
        assert_eq!(auth, &format!("Bearer {TOKEN}"));
        let identity = reg.identity.as_ref().unwrap();
        assert_eq!(identity.hostname, "test-host");
        assert!(!identity.agent_id.is_empty());
        let versions = identity.versions.as_ref().unwrap();
        assert_eq!(versions.protocol, sonde_proto::PROTOCOL_VERSION);
        assert_eq!(versions.agent, env!("CARGO_PKG_VERSION"));
        assert_eq!(s.stream_auth, [format!("Bearer {TOKEN}")]);
        assert_eq!(s.hellos, std::slice::from_ref(&identity.agent_id));
    }

    let status = agent.terminate().await;
    assert!(status.success(), "{status:?}\n{}", agent.log());
    assert!(!agent.socket.exists(), "socket removed on shutdown");
    assert!(
        spool_files(dir.path()).is_empty(),
        "everything was acknowledged"
    );
    let s = collector.seen.lock().unwrap();
    let (auth, dereg) = s.deregisters.last().expect("deregistered");
    assert_eq!(auth, &format!("Bearer {TOKEN}"));
    assert_eq!(dereg.reason, deregister_request::Reason::Shutdown as i32);
    let log = agent.log();
    assert!(log.contains("records_malformed=5"), "{log}");
    assert!(log.contains("ext_records_dropped=4"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_records_are_spooled_and_replayed_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    // A port with nothing behind it yet.
    let listener = free_listener().await;
    let addr = listener.local_addr().unwrap();
    drop(listener);

    let mut agent = Agent::start(dir.path(), &config(dir.path(), addr, TOKEN));
    let sock = agent.connect().await;
    for n in 10..=12 {
        sock.send(&frame_of(record(n))).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = agent.terminate().await;
    assert!(status.success(), "{status:?}\n{}", agent.log());
    assert!(
        !spool_files(dir.path()).is_empty(),
        "spooled:\n{}",
        agent.log()
    );
    assert!(agent.log().contains("records_spooled=3"), "{}", agent.log());
    drop(sock);
    drop(agent);

    let collector = start_collector(TOKEN, TcpListener::bind(addr).await.unwrap()).await;
    let mut agent = Agent::start(dir.path(), &config(dir.path(), addr, TOKEN));
    let sock = agent.connect().await;
    sock.send(&frame_of(record(13))).await.unwrap();
    wait_until("replayed and new records", || {
        received(&collector.seen).len() >= 4
    })
    .await;
    wait_until("the spool to empty", || spool_files(dir.path()).is_empty()).await;
    {
        let s = collector.seen.lock().unwrap();
        let replayed: BTreeSet<u8> = s
            .batches
            .iter()
            .filter(|b| b.replay)
            .flat_map(|b| b.records.iter().map(|r| r.id[0]))
            .collect();
        assert_eq!(replayed, BTreeSet::from([10, 11, 12]));
        // Replayed first, then new data.
        assert!(s.batches[0].replay);
        let ids: Vec<u64> = s.batches.iter().map(|b| b.batch_id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "batch ids grow: {ids:?}"
        );
    }
    let all: Vec<u8> = received(&collector.seen).iter().map(|r| r.id[0]).collect();
    assert_eq!(all, [10, 11, 12, 13]);
    assert!(agent.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_is_reopened_and_unacknowledged_batches_resent() {
    let dir = tempfile::tempdir().unwrap();
    let collector = start_collector(TOKEN, free_listener().await).await;
    collector.seen.lock().unwrap().fail_next_batches = 1;
    let mut agent = Agent::start(dir.path(), &config(dir.path(), collector.addr, TOKEN));
    let sock = agent.connect().await;
    for n in 20..=22 {
        sock.send(&frame_of(record(n))).await.unwrap();
    }
    wait_until("the resent batch", || {
        collector.seen.lock().unwrap().batches.len() >= 2
    })
    .await;
    {
        let s = collector.seen.lock().unwrap();
        let ids = |b: &Batch| b.records.iter().map(|r| r.id[0]).collect::<Vec<_>>();
        assert_eq!(ids(&s.batches[0]), [20, 21, 22]);
        // Through the spool: the same records, under a new batch id.
        assert_eq!(ids(&s.batches[1]), [20, 21, 22], "the same records, resent");
        assert!(s.batches[1].replay);
        assert!(s.batches[0].batch_id < s.batches[1].batch_id);
        assert_eq!(s.stream_auth.len(), 2, "a second stream was opened");
        assert_eq!(s.hellos.len(), 2);
        assert!(s.protocol_errors.is_empty(), "{:?}", s.protocol_errors);
    }
    assert!(agent.terminate().await.success());
    assert!(
        spool_files(dir.path()).is_empty(),
        "acknowledged after the resend"
    );
    assert!(agent.log().contains("records_sent=3"), "{}", agent.log());
    assert!(agent.log().contains("records_acked=3"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_an_error_and_the_agent_keeps_trying() {
    let dir = tempfile::tempdir().unwrap();
    let collector = start_collector("the-right-token", free_listener().await).await;
    let mut agent = Agent::start(
        dir.path(),
        &config(dir.path(), collector.addr, "a-wrong-token"),
    );
    let _sock = agent.connect().await;
    wait_until("the UNAUTHENTICATED error", || {
        agent
            .log()
            .contains("collector refused the agent token (UNAUTHENTICATED)")
    })
    .await;
    assert!(agent.log().contains("ERROR"), "{}", agent.log());
    assert!(agent.is_running());
    assert!(agent.terminate().await.success());
}

#[test]
fn a_bad_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    fs::write(
        &path,
        "collector = \"http://127.0.0.1:1\"\nsocket_mod = 438\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sonde-agent"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("socket_mod"), "{err}");
    assert_eq!(err.lines().count(), 1, "one message: {err}");

    let out = Command::new(env!("CARGO_BIN_EXE_sonde-agent"))
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

fn config_with(dir: &Path, collector: SocketAddr, extra: &str) -> String {
    // Top-level keys must come before the [cloud] table.
    config(dir, collector, TOKEN).replace(
        "host_metrics_interval_secs = 0\nmetrics_listen = \"\"\n",
        extra,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_spools_while_running_and_a_kill_9_loses_nothing_spooled() {
    let dir = tempfile::tempdir().unwrap();
    let addr = unused_addr().await;
    let port = free_port();
    let cfg = config_with(
        dir.path(),
        addr,
        &format!("host_metrics_interval_secs = 0\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
    );
    let mut agent = Agent::start(dir.path(), &cfg);
    let sock = agent.connect().await;
    for n in 1..=5 {
        sock.send(&frame_of(record(n))).await.unwrap();
    }
    // No collector: the batch goes to disk while the agent runs.
    wait_until("records spooled while running", || {
        metric(&scrape(port), "sonde_agent_records_spooled_total") >= Some(5)
    })
    .await;
    assert!(!spool_files(dir.path()).is_empty());
    let text = scrape(port);
    assert_eq!(
        metric(&text, "sonde_agent_records_received_total"),
        Some(5),
        "{text}"
    );
    assert_eq!(
        metric(&text, "sonde_agent_collector_connected"),
        Some(0),
        "{text}"
    );
    assert!(
        metric(&text, "sonde_agent_spool_bytes").unwrap() > 0,
        "{text}"
    );

    // kill -9 with a torn frame at the end of the spool, as if killed mid-write.
    agent.kill9();
    drop(sock);
    let seg = spool_files(dir.path()).into_iter().max().unwrap();
    let mut torn = fs::read(&seg).unwrap();
    torn.extend_from_slice(&[40, 0, 0, 0, 1, 0, 0, 0, 9, 9]);
    fs::write(&seg, torn).unwrap();

    let collector = start_collector(TOKEN, TcpListener::bind(addr).await.unwrap()).await;
    let mut agent = Agent::start(dir.path(), &cfg);
    let sock = agent.connect().await;
    sock.send(&frame_of(record(6))).await.unwrap();
    wait_until("replayed and new records", || {
        received(&collector.seen).len() >= 6
    })
    .await;
    wait_until("the spool to empty", || spool_files(dir.path()).is_empty()).await;
    assert_eq!(
        received_ids(&collector.seen),
        [1, 2, 3, 4, 5, 6],
        "in order, once"
    );
    assert!(
        agent.log().contains("torn or corrupt tail"),
        "{}",
        agent.log()
    );
    wait_until("the replay counted", || {
        metric(&scrape(port), "sonde_agent_records_replayed_total") == Some(5)
    })
    .await;
    assert!(agent.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_leaves_while_running_gets_everything_once_when_back() {
    let dir = tempfile::tempdir().unwrap();
    let collector = start_collector(TOKEN, free_listener().await).await;
    let mut agent = Agent::start(dir.path(), &config(dir.path(), collector.addr, TOKEN));
    let sock = agent.connect().await;
    sock.send(&frame_of(record(1))).await.unwrap();
    wait_until("the first record", || received(&collector.seen).len() == 1).await;

    // The collector goes away; records keep coming and go to the spool.
    collector.seen.lock().unwrap().down = true;
    wait_until("the agent to notice", || {
        agent.log().contains("collector connection failed")
    })
    .await;
    for n in 2..=9 {
        sock.send(&frame_of(record(n))).await.unwrap();
    }
    wait_until("spooled", || !spool_files(dir.path()).is_empty()).await;

    collector.seen.lock().unwrap().down = false;
    wait_until("the rest, replayed", || {
        received(&collector.seen).len() >= 9
    })
    .await;
    wait_until("the spool to empty", || spool_files(dir.path()).is_empty()).await;
    assert_eq!(received_ids(&collector.seen), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert!(collector.seen.lock().unwrap().batches[1..]
        .iter()
        .all(|b| b.replay));
    assert!(agent.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_the_oldest_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let addr = unused_addr().await;
    let port = free_port();
    let cfg = config_with(
        dir.path(),
        addr,
        &format!(
            "host_metrics_interval_secs = 0\nmetrics_listen = \"127.0.0.1:{port}\"\n\
             spool_max_bytes = 1048576\nbatch_max_records = 1\n"
        ),
    );
    let mut agent = Agent::start(dir.path(), &cfg);
    let sock = agent.connect().await;
    // 40 records of ~100 KB: about 4 MB into a 1 MiB spool.
    for n in 1..=40u8 {
        let mut r = record(n);
        r.url = format!("/big/{n}/{}", "x".repeat(100_000));
        sock.send(&frame_of(r)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_until("all 40 taken", || {
        let t = scrape(port);
        metric(&t, "sonde_agent_records_spooled_total") == Some(40)
    })
    .await;
    let text = scrape(port);
    let dropped = metric(
        &text,
        "sonde_agent_records_dropped_total{reason=\"spool_full\"}",
    )
    .unwrap();
    assert!(dropped > 0, "{text}");
    assert!(
        spool_bytes(dir.path()) <= 1 << 20,
        "{}",
        spool_bytes(dir.path())
    );
    assert!(agent.log().contains("spool full"), "{}", agent.log());

    let collector = start_collector(TOKEN, TcpListener::bind(addr).await.unwrap()).await;
    let kept = 40 - dropped as usize;
    wait_until("what the spool kept", || {
        received(&collector.seen).len() >= kept
    })
    .await;
    let ids = received_ids(&collector.seen);
    let want: Vec<u8> = (41 - kept as u8..=40).collect();
    assert_eq!(
        ids, want,
        "the newest {kept} kept, in order; the oldest dropped"
    );
    let status = agent.terminate().await;
    assert!(status.success());
    assert!(
        agent.log().contains(&format!("records_dropped={dropped}")),
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_metrics_travel_in_batches_and_live_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let collector = start_collector(TOKEN, free_listener().await).await;
    let cfg = config_with(
        dir.path(),
        collector.addr,
        "host_metrics_interval_secs = 1\nmetrics_listen = \"\"\n",
    );
    let mut agent = Agent::start(dir.path(), &cfg);
    let _sock = agent.connect().await;
    wait_until(
        "a batch with host metrics and a live snapshot with host",
        || {
            let s = collector.seen.lock().unwrap();
            s.live_hosts > 0 && s.batches.iter().any(|b| !b.host_metrics.is_empty())
        },
    )
    .await;
    {
        let s = collector.seen.lock().unwrap();
        let m = s
            .batches
            .iter()
            .flat_map(|b| &b.host_metrics)
            .next()
            .unwrap();
        assert_eq!(m.hostname, "test-host");
        assert!(m.mem_total_bytes > 0 && !m.cpu_per_core.is_empty() && m.processes > 0);
    }
    assert!(agent.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_gets_ready_after_the_socket_then_watchdog_pings_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let addr = unused_addr().await;
    let notify_env = notify_path.display().to_string();
    let mut agent = Agent::start_with_env(
        dir.path(),
        &config(dir.path(), addr, TOKEN),
        &[("NOTIFY_SOCKET", &notify_env), ("WATCHDOG_USEC", "1000000")],
    );
    let socket = agent.socket.clone();
    let recv = move || {
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("a notification");
        (String::from_utf8_lossy(&buf[..n]).into_owned(), notify)
    };
    let (first, notify) = tokio::task::spawn_blocking(recv).await.unwrap();
    assert_eq!(first, "READY=1", "{}", agent.log());
    assert!(socket.exists(), "READY only once the socket listens");
    let mut pings = 0;
    let mut notify = notify;
    while pings < 3 {
        let (msg, n) = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 256];
            let len = notify.recv(&mut buf).expect("a watchdog ping");
            (String::from_utf8_lossy(&buf[..len]).into_owned(), notify)
        })
        .await
        .unwrap();
        notify = n;
        assert_eq!(msg, "WATCHDOG=1");
        pings += 1;
    }
    kill(Pid::from_raw(agent.child.id() as i32), Signal::SIGTERM).unwrap();
    let stopping = tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        loop {
            let mut buf = [0u8; 256];
            let Ok(len) = notify.recv(&mut buf) else {
                return Err(got);
            };
            if &buf[..len] == b"STOPPING=1" {
                return Ok(());
            }
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
    })
    .await
    .unwrap();
    assert!(
        stopping.is_ok(),
        "no STOPPING=1 after {:?}:\n{}",
        stopping,
        agent.log()
    );
    assert!(agent.terminate().await.success());
}
