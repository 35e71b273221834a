//! One real request path: nginx -> php-fpm + extension -> agent socket ->
//! sonde-agent -> gRPC -> sonde-collector -> SQLite -> JSON API.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sonde_e2e::{artifact, now_ms, wait_for, Stack, StackOptions};

/// Requests the test sends: (method, uri, body, expected status).
const REQUESTS: &[(&str, &str, &str, u16)] = &[
    ("GET", "/api/v6/photos?lang=ko&page=1", "", 200),
    ("GET", "/api/v6/photos?lang=en&page=2", "", 200),
    ("GET", "/api/v6/photos/0123456789abcdef0123", "", 404),
    (
        "POST",
        "/api/v6/signin",
        r#"{"user":"fan1","password":"pw1"}"#,
        200,
    ),
    (
        "POST",
        "/api/v6/votes",
        r#"{"user_id":1,"photo_id":2,"score":5}"#,
        201,
    ),
    ("GET", "/no/such/page", "", 404),
    ("GET", "/api/v6/slow?ms=50", "", 200),
    ("GET", "/api/v6/boom", "", 500),
];

fn transactions(stack: &Stack, from: i64) -> Vec<Value> {
    let v = stack
        .api(&format!(
            "/api/v1/transactions?from={from}&to={}&app=fanapp",
            now_ms() + 60_000
        ))
        .unwrap_or(Value::Null);
    v["transactions"].as_array().cloned().unwrap_or_default()
}

#[test]
fn known_requests_arrive_exactly_once_with_method_uri_status_and_time() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;

    for (method, uri, body, status) in REQUESTS {
        let headers: &[(&str, &str)] = if method == &"POST" {
            &[("Content-Type", "application/json")]
        } else {
            &[]
        };
        let r = stack
            .web(method, uri, headers, body)
            .expect("request through nginx");
        assert_eq!(
            r.status,
            *status,
            "{method} {uri}: {}\n{}",
            r.body,
            stack.logs()
        );
    }
    // One request carrying a W3C trace context from a caller.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = stack
        .web(
            "GET",
            "/health?traced=1",
            &[("traceparent", traceparent)],
            "",
        )
        .unwrap();
    assert_eq!(r.status, 200);
    // One request queued 200 ms by a proxy before PHP saw it.
    let queued_since = format!("t={:.3}", (now_ms() - 200) as f64 / 1000.0);
    let r = stack
        .web(
            "GET",
            "/health?queued=1",
            &[("X-Request-Start", &queued_since)],
            "",
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let expected_count = REQUESTS.len() + 2;

    let mut txs = Vec::new();
    let res = wait_for(
        "all transactions in the collector",
        Duration::from_secs(15),
        || {
            txs = transactions(&stack, from);
            txs.len() >= expected_count
        },
    );
    if let Err(e) = res {
        panic!(
            "{e}: got {} of {expected_count}: {txs:#?}\n{}",
            txs.len(),
            stack.logs()
        );
    }
    // Nothing arrives twice, even after the agent's next flushes.
    std::thread::sleep(Duration::from_millis(1_500));
    let txs = transactions(&stack, from);
    assert_eq!(txs.len(), expected_count, "{txs:#?}");

    let mut seen = BTreeSet::new();
    for t in &txs {
        let id = t["id"].as_str().expect("id");
        let d = stack
            .api(&format!("/api/v1/transactions/{id}"))
            .expect("detail");
        let method = d["method"].as_str().unwrap().to_string();
        let url = d["url"].as_str().unwrap().to_string();
        let status = d["status"].as_u64().unwrap() as u16;
        assert_eq!(t["status"].as_u64(), Some(status as u64));
        assert_eq!(d["app"], "fanapp");
        assert_eq!(t["host"], "agent-host", "the agent fills the host name");
        let elapsed = t["elapsed_ms"].as_f64().unwrap();
        assert!(elapsed > 0.0 && elapsed < 10_000.0, "elapsed {elapsed}");
        assert!(t["ts_ms"].as_i64().unwrap() >= from);
        if url == "/api/v6/slow?ms=50" {
            assert!(elapsed >= 50.0, "the sleeping page took {elapsed} ms");
        }
        if url == "/api/v6/boom" {
            assert_eq!(t["error"], true, "HTTP 500 is an error");
        } else {
            assert_eq!(t["error"], false, "{url}");
        }
        if url == "/health?traced=1" {
            assert_eq!(t["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        }
        if url == "/health?queued=1" {
            let q = d["queue_ms"].as_f64().unwrap();
            assert!((150.0..10_000.0).contains(&q), "queue_ms {q}");
        } else {
            assert_eq!(d["queue_ms"].as_f64(), Some(0.0), "{url}");
        }
        if url.starts_with("/api/v6/photos/") {
            assert_eq!(t["endpoint"], "/api/v6/photos/{token}");
        }
        seen.insert((method, url, status));
    }
    let mut want: BTreeSet<(String, String, u16)> = REQUESTS
        .iter()
        .map(|(m, u, _, s)| (m.to_string(), u.to_string(), *s))
        .collect();
    want.insert(("GET".into(), "/health?traced=1".into(), 200));
    want.insert(("GET".into(), "/health?queued=1".into(), 200));
    assert_eq!(seen, want);
}

#[test]
fn wrong_token_agent_is_refused_and_the_collector_serves_the_others() {
    let mut stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let bad_socket = stack.path("bad-agent.sock");
    stack
        .start_agent("badagent", "not-a-known-token", &bad_socket)
        .expect("start the second agent");

    // A PHP CLI script traced into the wrong-token agent.
    let out = Command::new("php")
        .arg("-d")
        .arg(format!(
            "extension={}",
            artifact("libsonde_php.so").unwrap().display()
        ))
        .args(["-d", "sonde.trace_cli=1", "-d", "sonde.app_name=fanapp"])
        .arg("-d")
        .arg(format!("sonde.agent_socket={}", bad_socket.display()))
        .args(["-r", "echo 'cli';"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "cli");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let refused = wait_for(
        "the bad agent to log the refusal",
        Duration::from_secs(15),
        || {
            let log = stack.proc("badagent").unwrap().log_text().to_lowercase();
            log.contains("refused") && log.contains("token")
        },
    );
    if let Err(e) = refused {
        panic!("{e}\n{}", stack.logs());
    }

    // The good agent's traffic is still stored.
    for _ in 0..3 {
        assert_eq!(
            stack
                .web("GET", "/api/v6/photos?lang=ja", &[], "")
                .unwrap()
                .status,
            200
        );
    }
    let ok = wait_for(
        "the good agent's transactions",
        Duration::from_secs(15),
        || transactions(&stack, from).len() >= 3,
    );
    if let Err(e) = ok {
        panic!("{e}\n{}", stack.logs());
    }
    let txs = transactions(&stack, from);
    assert_eq!(txs.len(), 3, "{txs:#?}");
    assert!(txs.iter().all(|t| t["host"] == "agent-host"), "{txs:#?}");
    assert!(stack.proc("collector").unwrap().alive());
}

#[test]
fn php_cli_lists_the_module() {
    let out = Command::new("php")
        .arg("-d")
        .arg(format!(
            "extension={}",
            artifact("libsonde_php.so").unwrap().display()
        ))
        .arg("-m")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l == "sonde"), "{stdout}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
