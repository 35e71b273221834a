//! Runs the real `sonde-agent` binary on "AWS": a stand-in IMDSv2 server on a
//! loopback port (token `PUT`, token header checked on every `GET`, 401
//! without it, 404 for paths this instance does not have) and a fake
//! collector, both in this test process. Checks the identity carried by
//! Register, and the Deregister reason after a scale-in notice or a plain
//! stop. Every child process is killed by a drop guard.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sonde_proto::v1::collector_server::{Collector, CollectorServer};
use sonde_proto::v1::{
    deregister_request, AgentIdentity, AgentMessage, CollectorMessage, DeregisterRequest,
    DeregisterResponse, RegisterRequest, RegisterResponse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status, Streaming};

const WAIT: Duration = Duration::from_secs(15);
const INSTANCE_ID: &str = "i-0fa1e2d3c4b5a6978";

// ---------------------------------------------------------------- stand-in IMDSv2

#[derive(Debug, Default)]
struct ImdsState {
    /// Metadata path → value; a path not here is a 404.
    paths: HashMap<String, String>,
    tokens: Vec<String>,
    /// Requests answered 401 (no or unknown token).
    unauthorized: usize,
    /// GETs answered with a valid token.
    authorized: usize,
}

struct FakeImds {
    addr: SocketAddr,
    state: Arc<Mutex<ImdsState>>,
}

impl FakeImds {
    async fn start(paths: &[(&str, &str)]) -> FakeImds {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ImdsState {
            paths: paths
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }));
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_imds(conn, s.clone()));
            }
        });
        FakeImds { addr, state }
    }

    fn set(&self, path: &str, value: &str) {
        self.state
            .lock()
            .unwrap()
            .paths
            .insert(path.into(), value.into());
    }
}

/// One request per connection, as IMDS answers a `Connection: close`
/// client.
async fn serve_imds(mut conn: TcpStream, state: Arc<Mutex<ImdsState>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 16 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let (status, body) = {
        let mut s = state.lock().unwrap();
        match (method, path) {
            ("PUT", "/latest/api/token") => {
                let ttl = header("x-aws-ec2-metadata-token-ttl-seconds")
                    .and_then(|v| v.parse::<u32>().ok());
                match ttl {
                    Some(1..=21600) => {
                        let token = format!("AQAEAfake-token-{}", s.tokens.len());
                        s.tokens.push(token.clone());
                        (200, token)
                    }
                    _ => (400, "missing or invalid TTL".into()),
                }
            }
            ("GET", p) => {
                let valid =
                    header("x-aws-ec2-metadata-token").is_some_and(|t| s.tokens.contains(&t));
                if !valid {
                    s.unauthorized += 1;
                    (401, String::new())
                } else {
                    s.authorized += 1;
                    match s.paths.get(p) {
                        Some(v) => (200, v.clone()),
                        None => (404, "Not Found".into()),
                    }
                }
            }
            _ => (405, String::new()),
        }
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\nServer: EC2ws\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(resp.as_bytes()).await;
    let _ = conn.shutdown().await;
}

fn aws_paths(with_tags: bool) -> Vec<(&'static str, &'static str)> {
    let mut p = vec![
        ("/latest/meta-data/instance-id", INSTANCE_ID),
        ("/latest/meta-data/ami-id", "ami-0abcdef1234567890"),
        ("/latest/meta-data/instance-type", "m6i.large"),
        (
            "/latest/meta-data/placement/availability-zone",
            "ap-northeast-2c",
        ),
        ("/latest/meta-data/placement/region", "ap-northeast-2"),
        ("/latest/meta-data/local-ipv4", "10.20.3.44"),
        (
            "/latest/meta-data/autoscaling/target-lifecycle-state",
            "InService",
        ),
    ];
    if with_tags {
        p.push((
            "/latest/meta-data/tags/instance/aws:autoscaling:groupName",
            "web-asg",
        ));
    }
    p
}

// ---------------------------------------------------------------- fake collector

#[derive(Debug, Default)]
struct Calls {
    registers: Vec<RegisterRequest>,
    deregisters: Vec<DeregisterRequest>,
}

#[derive(Clone, Default)]
struct FakeCollector {
    calls: Arc<Mutex<Calls>>,
}

#[tonic::async_trait]
impl Collector for FakeCollector {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let r = req.into_inner();
        let agent_id = r
            .identity
            .as_ref()
            .map(|i| i.agent_id.clone())
            .unwrap_or_default();
        self.calls.lock().unwrap().registers.push(r);
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
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(8);
        // Reads (and ignores) hello and heartbeats; no batches here.
        tokio::spawn(async move {
            while let Ok(Some(_)) = inbound.message().await {}
            drop(tx);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn deregister(
        &self,
        req: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        self.calls
            .lock()
            .unwrap()
            .deregisters
            .push(req.into_inner());
        Ok(Response::new(DeregisterResponse {}))
    }
}

async fn start_collector() -> (SocketAddr, Arc<Mutex<Calls>>, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = FakeCollector::default();
    let calls = fake.calls.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let service = CollectorServer::new(fake).accept_compressed(CompressionEncoding::Gzip);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    (addr, calls, stop)
}

// ---------------------------------------------------------------- the agent process

struct Agent {
    child: Child,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(dir: &Path, collector: SocketAddr, cloud: &str) -> Agent {
        let config = format!(
            r#"
collector = "http://{collector}"
socket = "{socket}"
socket_group = "sonde-test-no-such-group"
spool_dir = "{spool}"
hostname = "test-host"
flush_interval_ms = 100
host_metrics_interval_secs = 0
metrics_listen = ""
[cloud]
{cloud}
"#,
            socket = dir.join("run/agent.sock").display(),
            spool = dir.join("spool").display(),
        );
        let path = dir.join("agent.toml");
        fs::write(&path, config).unwrap();
        let log = dir.join("agent.log");
        let child = Command::new(env!("CARGO_BIN_EXE_sonde-agent"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "sonde_agent=debug")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

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

    async fn wait_until(&mut self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "agent exited ({status}) waiting for {what}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn registered(calls: &Mutex<Calls>) -> Option<AgentIdentity> {
    calls.lock().unwrap().registers.first()?.identity.clone()
}

fn reasons(calls: &Mutex<Calls>) -> Vec<(String, deregister_request::Reason)> {
    calls
        .lock()
        .unwrap()
        .deregisters
        .iter()
        .map(|d| (d.agent_id.clone(), d.reason()))
        .collect()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_in_imds_refuses_requests_without_a_token() {
    let imds = FakeImds::start(&aws_paths(true)).await;
    let get = |headers: &'static str| async move {
        let mut c = TcpStream::connect(imds.addr).await.unwrap();
        let req = format!(
            "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(get("").await.starts_with("HTTP/1.1 401"));
    assert!(get("X-aws-ec2-metadata-token: forged\r\n")
        .await
        .starts_with("HTTP/1.1 401"));
    let s = imds.state.lock().unwrap();
    assert_eq!((s.unauthorized, s.authorized), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_identity_is_registered_and_a_scale_in_deregisters_as_terminating() {
    let dir = tempfile::tempdir().unwrap();
    let imds = FakeImds::start(&aws_paths(true)).await;
    let (collector, calls, _stop) = start_collector().await;
    let cloud = format!(
        "provider = \"aws\"\nimds_endpoint = \"http://{}\"\nlifecycle_poll_secs = 1",
        imds.addr
    );
    let mut agent = Agent::start(dir.path(), collector, &cloud);
    agent
        .wait_until("Register", || registered(&calls).is_some())
        .await;
    let id = registered(&calls).unwrap();
    assert_eq!(id.agent_id, INSTANCE_ID, "the instance id names the agent");
    assert_eq!(id.cloud_provider, "aws");
    assert_eq!(id.instance_id, INSTANCE_ID);
    assert_eq!(id.ami_id, "ami-0abcdef1234567890");
    assert_eq!(id.instance_type, "m6i.large");
    assert_eq!(id.zone, "ap-northeast-2c");
    assert_eq!(id.region, "ap-northeast-2");
    assert_eq!(id.group, "web-asg");
    assert_eq!(id.private_ip, "10.20.3.44");
    assert_eq!(id.hostname, "test-host");
    {
        let s = imds.state.lock().unwrap();
        assert_eq!(s.unauthorized, 0, "every GET carried a valid token");
        assert!(s.authorized >= 7, "{}", s.authorized);
    }

    // Scale-in: Auto Scaling moves the target state first, then the
    // instance shuts down (SIGTERM from systemd).
    imds.set(
        "/latest/meta-data/autoscaling/target-lifecycle-state",
        "Terminated",
    );
    let log = agent.log.clone();
    agent
        .wait_until("the lifecycle poll to notice", || {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("being terminated")
        })
        .await;
    let status = agent.terminate().await;
    assert!(status.success(), "{status}:\n{}", agent.log());
    assert_eq!(
        reasons(&calls),
        [(
            INSTANCE_ID.to_owned(),
            deregister_request::Reason::Terminating
        )],
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tags_the_group_is_empty_and_a_plain_stop_is_a_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let imds = FakeImds::start(&aws_paths(false)).await;
    let (collector, calls, _stop) = start_collector().await;
    let cloud = format!(
        "provider = \"auto\"\nimds_endpoint = \"http://{}\"",
        imds.addr
    );
    let mut agent = Agent::start(dir.path(), collector, &cloud);
    agent
        .wait_until("Register", || registered(&calls).is_some())
        .await;
    let id = registered(&calls).unwrap();
    assert_eq!(
        (id.instance_id.as_str(), id.group.as_str()),
        (INSTANCE_ID, "")
    );
    let status = agent.terminate().await;
    assert!(status.success(), "{status}:\n{}", agent.log());
    assert_eq!(
        reasons(&calls),
        [(INSTANCE_ID.to_owned(), deregister_request::Reason::Shutdown)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_notice_seen_only_at_sigterm_still_deregisters_as_terminating() {
    let dir = tempfile::tempdir().unwrap();
    let imds = FakeImds::start(&aws_paths(true)).await;
    let (collector, calls, _stop) = start_collector().await;
    // Polling off: only the last look at shutdown can see the notice.
    let cloud = format!(
        "provider = \"aws\"\nimds_endpoint = \"http://{}\"\nlifecycle_poll_secs = 0",
        imds.addr
    );
    let mut agent = Agent::start(dir.path(), collector, &cloud);
    agent
        .wait_until("Register", || registered(&calls).is_some())
        .await;
    imds.set(
        "/latest/meta-data/spot/instance-action",
        r#"{"action": "terminate", "time": "2026-11-26T23:00:00Z"}"#,
    );
    let status = agent.terminate().await;
    assert!(status.success(), "{status}:\n{}", agent.log());
    assert_eq!(
        reasons(&calls),
        [(
            INSTANCE_ID.to_owned(),
            deregister_request::Reason::Terminating
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_against_a_closed_port_falls_back_to_no_cloud_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (collector, calls, _stop) = start_collector().await;
    let cloud = format!("provider = \"auto\"\nimds_endpoint = \"http://{closed}\"");
    let started = Instant::now();
    let mut agent = Agent::start(dir.path(), collector, &cloud);
    agent
        .wait_until("Register", || registered(&calls).is_some())
        .await;
    let took = started.elapsed();
    let id = registered(&calls).unwrap();
    assert_eq!(id.cloud_provider, "");
    assert_eq!(id.instance_id, "");
    assert_ne!(id.agent_id, "");
    let log = agent.log();
    let probe_ms: u64 = log
        .lines()
        .find(|l| l.contains("no instance metadata service"))
        .and_then(|l| l.split("took_ms=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no fallback line in the log:\n{log}"));
    assert!(probe_ms < 1000, "probe took {probe_ms} ms");
    assert!(took < Duration::from_secs(5), "registered after {took:?}");
    let status = agent.terminate().await;
    assert!(status.success());
    assert_eq!(reasons(&calls)[0].1, deregister_request::Reason::Shutdown);
}
