//! Starts the real `sonde-collector` binary on loopback ports chosen at run
//! time, sends it data over gRPC as an agent would, and reads it back over
//! the JSON API.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sonde_proto::v1::agent_message::Msg;
use sonde_proto::v1::collector_client::CollectorClient;
use sonde_proto::v1::collector_message::Msg as Reply;
use sonde_proto::v1::deregister_request::Reason;
use sonde_proto::v1::{
    Ack, AgentIdentity, AgentMessage, Batch, DeregisterRequest, HostMetrics, RegisterRequest,
    RequestRecord, StreamHello,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

const AGENT_TOKEN: &str = "agent-secret";
const API_TOKEN: &str = "api-secret";

/// The collector process; killed when dropped, whatever happened.
struct Collector {
    child: Child,
    grpc: u16,
    http: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> Collector {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port(), free_port());
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n\
             [storage]\npath = {:?}\n\
             [auth]\nagent_tokens = [\"{AGENT_TOKEN}\"]\napi_tokens = [\"{API_TOKEN}\"]\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sonde-collector"))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut c = Collector {
        child,
        grpc,
        http,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for port in [grpc, http] {
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = c.child.try_wait().unwrap() {
                panic!("collector exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "collector did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    c
}

/// A minimal HTTP/1.1 GET: status code and body.
fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

async fn client(port: u16) -> CollectorClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Compressed like a real agent's requests.
    CollectorClient::new(channel).send_compressed(CompressionEncoding::Gzip)
}

/// Opens a stream, sends hello and `batch`, closes the sending side and
/// returns every reply.
async fn send_batch(client: &mut CollectorClient<Channel>, batch: Batch) -> Vec<Ack> {
    let msgs = vec![
        AgentMessage {
            msg: Some(Msg::Hello(StreamHello {
                agent_id: "i-test".into(),
                ..Default::default()
            })),
        },
        AgentMessage {
            msg: Some(Msg::Batch(batch)),
        },
    ];
    let mut replies = client
        .stream(authed(tokio_stream::iter(msgs), AGENT_TOKEN))
        .await
        .unwrap()
        .into_inner();
    let mut acks = Vec::new();
    while let Some(reply) = replies.message().await.unwrap() {
        match reply.msg {
            Some(Reply::Ack(ack)) => acks.push(ack),
            other => panic!("unexpected reply {other:?}"),
        }
    }
    acks
}

fn records(now_ns: i64) -> Vec<RequestRecord> {
    (1..=2u8)
        .map(|i| RequestRecord {
            id: vec![i; 16],
            app: "shop".into(),
            start_unix_ns: now_ns - 2_000_000_000,
            wall_ns: 12_500_000,
            method: "GET".into(),
            url: format!("/orders/{i}?page=2"),
            status: 200,
            ..Default::default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_to_api() {
    let collector = start();
    let mut client = client(collector.grpc).await;
    let identity = AgentIdentity {
        agent_id: "i-test".into(),
        hostname: "web-test".into(),
        ..Default::default()
    };

    // A wrong or missing token is refused; the collector keeps serving.
    let refused = client
        .register(authed(
            RegisterRequest {
                identity: Some(identity.clone()),
            },
            "wrong",
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(refused.message(), "unknown agent token");
    let refused = client
        .register(Request::new(RegisterRequest {
            identity: Some(identity.clone()),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(refused.message(), "missing agent token");

    let registered = client
        .register(authed(
            RegisterRequest {
                identity: Some(identity),
            },
            AGENT_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(registered.agent_id, "i-test");
    assert_eq!(registered.heartbeat_interval_ms, 5000);
    assert!(registered.max_message_bytes >= 1 << 20);

    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let batch = Batch {
        batch_id: 7,
        records: records(now_ns),
        host_metrics: vec![HostMetrics {
            ts_unix_ms: now_ns / 1_000_000,
            cpu_percent: 12.5,
            ..Default::default()
        }],
        ..Default::default()
    };
    let acks = send_batch(&mut client, batch.clone()).await;
    assert_eq!(
        acks,
        [Ack {
            batch_id: 7,
            stored: 2,
            duplicates: 0
        }]
    );
    // The same batch again (a replay after a lost Ack) is stored once.
    let acks = send_batch(
        &mut client,
        Batch {
            replay: true,
            ..batch
        },
    )
    .await;
    assert_eq!(
        acks,
        [Ack {
            batch_id: 7,
            stored: 0,
            duplicates: 2
        }]
    );

    let http = collector.http;
    let (status, body) = tokio::task::spawn_blocking(move || http_get(http, "/healthz", None))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, body) =
        tokio::task::spawn_blocking(move || http_get(http, "/api/v1/transactions", None))
            .await
            .unwrap();
    assert_eq!(status, 401, "{body}");
    // Default window: the last 15 minutes.
    let (status, body) = tokio::task::spawn_blocking(move || {
        http_get(http, "/api/v1/transactions", Some(API_TOKEN))
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let list = json(&body);
    let txs = list["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 2, "{body}");
    assert_eq!(list["truncated"], false);
    let first = &txs[0];
    assert_eq!(first["host"], "web-test", "host falls back to the agent's");
    assert_eq!(first["endpoint"], "/orders/{num}");
    assert_eq!(first["elapsed_ms"], 12.5);
    assert_eq!(first["error"], false);
    let end_ms = (now_ns - 2_000_000_000 + 12_500_000) / 1_000_000;
    assert_eq!(first["ts_ms"], end_ms);
    // The API id: the end time, then the record id.
    assert_eq!(first["id"], format!("{end_ms:012x}{}", "01".repeat(16)));

    // The rollups saw each record once, despite the replay.
    let path = format!("/api/v1/endpoints?from=0&to={}", end_ms + 60_000);
    let (status, body) =
        tokio::task::spawn_blocking(move || http_get(http, &path, Some(API_TOKEN)))
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    let endpoints = json(&body);
    assert_eq!(
        endpoints["endpoints"][0]["endpoint"], "/orders/{num}",
        "{body}"
    );
    assert_eq!(endpoints["endpoints"][0]["calls"], 2, "{body}");
    assert_eq!(endpoints["endpoints"][0]["avg_ms"], 12.5, "{body}");
    // Host metrics from the batch, named after the agent's host.
    let (status, body) = tokio::task::spawn_blocking(move || {
        http_get(http, "/api/v1/hosts/series", Some(API_TOKEN))
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let hosts = json(&body);
    assert_eq!(hosts["hosts"][0]["host"], "web-test", "{body}");
    assert_eq!(
        hosts["hosts"][0]["points"][0]["cpu_percent"], 12.5,
        "{body}"
    );

    let path = format!("/api/v1/transactions/{}", "02".repeat(16));
    let (status, body) =
        tokio::task::spawn_blocking(move || http_get(http, &path, Some(API_TOKEN)))
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    let detail = json(&body);
    assert_eq!(detail["url"], "/orders/2?page=2");
    assert_eq!(detail["spans"], serde_json::json!([]));

    // Deregistering marks the agent stopped.
    client
        .deregister(authed(
            DeregisterRequest {
                agent_id: "i-test".into(),
                reason: Reason::Shutdown as i32,
            },
            AGENT_TOKEN,
        ))
        .await
        .unwrap();
    let (status, body) =
        tokio::task::spawn_blocking(move || http_get(http, "/api/v1/agents", Some(API_TOKEN)))
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    let agents = json(&body);
    assert_eq!(agents["agents"][0]["id"], "i-test");
    assert_eq!(agents["agents"][0]["status"], "stopped");
    assert_eq!(agents["agents"][0]["apps"], serde_json::json!(["shop"]));

    // SIGTERM with an agent stream open: the stream is ended with
    // UNAVAILABLE (so the agent reconnects) and the collector exits 0.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentMessage {
        msg: Some(Msg::Hello(StreamHello {
            agent_id: "i-test".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut replies = client
        .stream(authed(ReceiverStream::new(rx), AGENT_TOKEN))
        .await
        .unwrap()
        .into_inner();
    let pid = collector.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let ended = tokio::time::timeout(Duration::from_secs(15), replies.message())
        .await
        .expect("stream ended on shutdown");
    assert_eq!(ended.unwrap_err().code(), Code::Unavailable);
    drop(tx);
    wait_exit_0(collector);
}

fn wait_exit_0(mut collector: Collector) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = collector.child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0), "exit status {status}");
            return;
        }
        assert!(Instant::now() < deadline, "collector ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_config_exits_64_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[grpc]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n").unwrap();
    check_refused(&config, "grpc.lisen");
    std::fs::write(&config, "[http]\nlisten = \"nowhere\"\n").unwrap();
    check_refused(&config, "http.listen");
    check_refused(&dir.path().join("missing.toml"), "missing.toml");
}

fn check_refused(config: &Path, expect: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_sonde-collector"))
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
    assert!(stderr.contains(expect), "{stderr}");
}

#[test]
fn check_config_says_ok_or_names_the_problem_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let data = dir.path().join("data");
    // Ports no one could bind twice: a started collector would fail or hang.
    std::fs::write(
        &config,
        format!(
            "[grpc]\nlisten = \"192.0.2.1:1\"\n[storage]\npath = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sonde-collector"))
        .arg("--check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
    assert!(!data.exists(), "nothing was started or created");
    std::fs::write(&config, "[grpc]\nheartbeat_interval_ms = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sonde-collector"))
        .args(["--check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("grpc.heartbeat_interval_ms"));
}
