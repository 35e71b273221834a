//! Alerts end to end: failing requests through nginx + php-fpm + the
//! extension + the agent make the collector's error-rate rule fire; the
//! event shows in `/api/v1/events` and reaches a webhook receiver (a tiny
//! HTTP listener in this test) within 5 s of the first failure, signed;
//! when the failures stop it resolves, with no duplicate message. A slow
//! endpoint fires the response-time rule naming it; a killed agent is
//! `down`, a gracefully stopped (deregistered) one raises nothing.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use sonde_e2e::{http, wait_for, Stack, StackOptions};

/// One request the receiver got: when, its headers (lower-cased names)
/// and its body as JSON.
#[derive(Debug, Clone)]
struct Hook {
    at: Instant,
    headers: Vec<(String, String)>,
    body: Value,
}

/// Starts a webhook receiver on a free loopback port; answers 200.
fn receiver() -> (u16, Arc<Mutex<Vec<Hook>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = Arc::clone(&got);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            let (head, body) = loop {
                let Ok(n) = s.read(&mut buf) else {
                    break (String::new(), String::new());
                };
                if n == 0 {
                    break (String::new(), String::new());
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some(i) = text.find("\r\n\r\n") {
                    let len: usize = text[..i]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if req.len() >= i + 4 + len {
                        break (text[..i].to_string(), text[i + 4..i + 4 + len].to_string());
                    }
                }
            };
            let at = Instant::now();
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if head.is_empty() {
                continue;
            }
            let headers = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
            g.lock().unwrap().push(Hook { at, headers, body });
        }
    });
    (port, got)
}

/// The most recently started process named `agent`.
fn last_agent(stack: &mut Stack) -> &mut sonde_e2e::Proc {
    stack
        .procs
        .iter_mut()
        .rev()
        .find(|p| p.name == "agent")
        .expect("an agent was started")
}

fn hooks_in(got: &Mutex<Vec<Hook>>, state: &str) -> Vec<Hook> {
    got.lock()
        .unwrap()
        .iter()
        .filter(|h| h.body["event"]["state"] == state)
        .cloned()
        .collect()
}

#[test]
fn error_rate_fires_within_seconds_and_resolves() {
    let (hook_port, got) = receiver();
    let extra = format!(
        "[alerts]\ndefaults = false\ninterval_ms = 500\n\
         [[alerts.rules]]\nname = \"boom-errors\"\nkind = \"error_rate\"\nthreshold = 20\n\
         window_secs = 5\nmin_tps = 0.1\nsilence_secs = 600\n\
         [[alerts.webhooks]]\nname = \"test\"\nurl = \"http://127.0.0.1:{hook_port}/hook\"\n\
         secret = \"e2e-secret\"\n"
    );
    let stack = Stack::start(&StackOptions {
        collector_extra: extra,
        ..Default::default()
    })
    .expect("start the stack");
    let events = |stack: &Stack| -> Vec<Value> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        stack
            .api(&format!("/api/v1/events?from=0&to={}", now + 60_000))
            .map(|v| v["events"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
    };

    // Fail a request every 200 ms until the webhook has the firing event.
    let first_failure = Instant::now();
    let mut failures = 0;
    while hooks_in(&got, "firing").is_empty() && first_failure.elapsed() < Duration::from_secs(15) {
        let r = stack.web("GET", "/api/v6/boom", &[], "").unwrap();
        assert_eq!(r.status, 500, "{}", r.body);
        failures += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let firing = hooks_in(&got, "firing");
    assert_eq!(firing.len(), 1, "{firing:#?}\n{}", stack.logs());
    let delay = firing[0].at - first_failure;
    eprintln!("error-rate webhook {delay:?} after the first failure ({failures} failures)");
    assert!(
        delay <= Duration::from_secs(5),
        "webhook after {delay:?} ({failures} failures)"
    );
    let e = &firing[0].body;
    assert_eq!(e["version"], 1, "{e}");
    assert_eq!(e["event"]["level"], "critical", "{e}");
    assert_eq!(e["event"]["kind"], "error_rate", "{e}");
    assert_eq!(e["event"]["app"], "fanapp", "{e}");
    assert_eq!(e["event"]["rule"], "boom-errors", "{e}");
    let sig = firing[0]
        .headers
        .iter()
        .find(|(k, _)| k == "x-sonde-signature")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        sig.starts_with("sha256=") && sig.len() == 7 + 64,
        "signature header: {:?}",
        firing[0].headers
    );

    // The same event is in the API, firing.
    let listed = events(&stack);
    let fired = listed
        .iter()
        .find(|v| v["state"] == "firing")
        .unwrap_or_else(|| panic!("no firing event: {listed:#?}"));
    assert_eq!(fired["id"], e["event"]["id"]);
    for key in [
        "id", "ts_ms", "level", "kind", "state", "message", "app", "endpoint", "host",
    ] {
        assert!(fired.get(key).is_some(), "{key} missing: {fired}");
    }

    // Failures stop: resolved within the 5 s window plus 5 s.
    let stopped = Instant::now();
    let res = wait_for("the resolved webhook", Duration::from_secs(15), || {
        !hooks_in(&got, "resolved").is_empty()
    });
    if let Err(e) = res {
        panic!("{e}: {:#?}\n{}", got.lock().unwrap(), stack.logs());
    }
    let resolved = hooks_in(&got, "resolved");
    let after = resolved[0].at - stopped;
    eprintln!("resolved webhook {after:?} after the failures stopped");
    assert!(after <= Duration::from_secs(11), "resolved after {after:?}");
    let listed = events(&stack);
    let states: Vec<&str> = listed.iter().filter_map(|v| v["state"].as_str()).collect();
    assert_eq!(states, ["firing", "resolved"], "{listed:#?}");
    assert_eq!(hooks_in(&got, "firing").len(), 1, "no duplicate firing");

    // Failing again within the silence period (600 s): no new event or
    // message.
    for _ in 0..10 {
        stack.web("GET", "/api/v6/boom", &[], "").unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        got.lock().unwrap().len(),
        2,
        "silenced: {:#?}",
        got.lock().unwrap()
    );
    assert_eq!(events(&stack).len(), 2, "silenced");

    // Acknowledge it (the API is open in this stack).
    let id = fired["id"].as_i64().unwrap();
    let r = http::request(
        stack.http_port,
        "POST",
        &format!("/api/v1/events/{id}/ack"),
        &[],
        "",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let acked = events(&stack);
    assert_eq!(acked[0]["acked_by"], "api-token", "{acked:#?}");

    // The "send test" action reaches the webhook too.
    let r = http::request(stack.http_port, "POST", "/api/v1/alerts/test", &[], "").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for("the test message", Duration::from_secs(5), || {
        got.lock()
            .unwrap()
            .iter()
            .any(|h| h.body["event"]["kind"] == "test")
    })
    .unwrap();

    let stats = stack.api("/api/v1/stats").unwrap();
    assert_eq!(stats["alerts"]["deliveries"]["sent"], 3, "{stats}");
    assert_eq!(stats["alerts"]["deliveries"]["dropped"], 0, "{stats}");
    assert_eq!(stats["alerts"]["events"], 2, "{stats}");
}

#[test]
fn killed_agent_is_down_but_a_stopped_one_is_not() {
    let (hook_port, got) = receiver();
    let extra = format!(
        "[alerts]\ndefaults = false\ninterval_ms = 500\n\
         [[alerts.rules]]\nname = \"down\"\nkind = \"agent_down\"\n\
         [[alerts.webhooks]]\nname = \"test\"\nurl = \"http://127.0.0.1:{hook_port}/hook\"\n"
    );
    let mut stack = Stack::start(&StackOptions {
        collector_extra: extra,
        ..Default::default()
    })
    .expect("start the stack");
    let status = |stack: &Stack| -> String {
        stack
            .api("/api/v1/agents")
            .ok()
            .and_then(|v| v["agents"][0]["status"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    wait_for("the agent up", Duration::from_secs(15), || {
        status(&stack) == "up"
    })
    .unwrap();

    // Stopped gracefully: it deregisters, and stays quiet past the down
    // threshold (3 missed heartbeats of 5 s) without an alert.
    last_agent(&mut stack).stop_with(Signal::SIGTERM, Duration::from_secs(10));
    wait_for("the agent stopped", Duration::from_secs(10), || {
        status(&stack) == "stopped"
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(17));
    assert_eq!(status(&stack), "stopped");
    assert!(
        got.lock().unwrap().is_empty(),
        "a deregistered agent alerted: {:#?}",
        got.lock().unwrap()
    );

    // Started again, then killed: no deregistration, heartbeats stop.
    let (token, socket) = (stack.agent_token.clone(), stack.agent_socket.clone());
    stack.start_agent("agent", &token, &socket).unwrap();
    wait_for("the agent up again", Duration::from_secs(15), || {
        status(&stack) == "up"
    })
    .unwrap();
    last_agent(&mut stack).stop_with(Signal::SIGKILL, Duration::from_secs(5));
    let killed = Instant::now();
    // Down after 3 missed heartbeats (≤ 15 s), then ≤ 1 s to notice.
    let res = wait_for("the agent-down webhook", Duration::from_secs(25), || {
        !hooks_in(&got, "firing").is_empty()
    });
    if let Err(e) = res {
        panic!("{e}\n{}", stack.logs());
    }
    let firing = hooks_in(&got, "firing");
    eprintln!(
        "agent down notified {:?} after the kill",
        firing[0].at - killed
    );
    assert_eq!(firing.len(), 1, "{firing:#?}");
    let e = &firing[0].body["event"];
    assert_eq!(e["kind"], "agent_down", "{e}");
    assert_eq!(e["host"], "agent-host", "{e}");
    assert_eq!(e["level"], "critical", "{e}");
    assert_eq!(status(&stack), "down");
}

#[test]
fn slowdown_fires_the_response_time_rule_naming_the_endpoint() {
    let (hook_port, got) = receiver();
    let extra = format!(
        "[alerts]\ndefaults = false\ninterval_ms = 500\n\
         [[alerts.rules]]\nname = \"slow\"\nkind = \"response_time\"\nstat = \"avg\"\n\
         threshold = 300\nwindow_secs = 5\nmin_tps = 0\nby = \"endpoint\"\n\
         endpoint = \"/api/v6/*\"\nlevel = \"warning\"\n\
         [[alerts.webhooks]]\nname = \"test\"\nurl = \"http://127.0.0.1:{hook_port}/hook\"\n\
         format = \"json\"\n"
    );
    let stack = Stack::start(&StackOptions {
        collector_extra: extra,
        ..Default::default()
    })
    .expect("start the stack");
    for page in 1..=3 {
        let r = stack
            .web(
                "GET",
                &format!("/api/v6/photos?lang=ko&page={page}"),
                &[],
                "",
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The first slow request has ended when `web` returns.
    let r = stack.web("GET", "/api/v6/slow?ms=800", &[], "").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let first_slow_done = Instant::now();
    let res = wait_for("the response-time webhook", Duration::from_secs(10), || {
        !hooks_in(&got, "firing").is_empty()
    });
    if let Err(e) = res {
        panic!("{e}\n{}", stack.logs());
    }
    let firing = hooks_in(&got, "firing");
    let delay = firing[0].at - first_slow_done;
    eprintln!("response-time webhook {delay:?} after the slow request ended");
    assert!(delay <= Duration::from_secs(5), "{delay:?}");
    assert_eq!(firing.len(), 1, "only the slow endpoint: {firing:#?}");
    let e = &firing[0].body["event"];
    assert_eq!(e["kind"], "response_time", "{e}");
    assert_eq!(e["level"], "warning", "{e}");
    assert_eq!(e["endpoint"], "/api/v6/slow", "{e}");
    assert_eq!(e["app"], "fanapp", "{e}");
    assert!(e["value"].as_f64().unwrap() >= 800.0, "{e}");
}
