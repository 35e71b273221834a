//! Alerts end to end: failing requests through nginx + php-fpm + the
//! extension + the agent make the collector's error-rate rule fire; the
//! event shows in `/api/v1/events` and reaches a webhook receiver (a tiny
//! HTTP listener in this test) within 5 s of the first failure, signed, and
//! two SMTP servers in this test (plain, and STARTTLS with AUTH and a
//! certificate made with `openssl`) get an email naming the rule; when the
//! failures stop it resolves, with no duplicate message. A slow endpoint
//! fires the response-time rule naming it, and requests sleeping in flight
//! fire the stuck-requests rule; a killed agent is `down`, a gracefully
//! stopped (deregistered) one raises nothing. A rule made through the
//! console's API fires, its message mentions the deploy recorded with
//! `scripts/sonde-deploy`; a collector restart while it fires sends no
//! second message (the state is saved) and the recovery still comes; and
//! traffic that stops fires the TPS-drop rule against a minute earlier.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use sonde_e2e::{http, now_ms, repo_root, wait_for, Stack, StackOptions};
use tokio_rustls::rustls;

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

/// The hooks of one rule in one state.
fn hooks_of(got: &Mutex<Vec<Hook>>, rule: &str, state: &str) -> Vec<Hook> {
    hooks_in(got, state)
        .into_iter()
        .filter(|h| h.body["event"]["rule"] == rule)
        .collect()
}

/// Every event the collector holds.
fn events(stack: &Stack) -> Vec<Value> {
    stack
        .api(&format!("/api/v1/events?from=0&to={}", now_ms() + 60_000))
        .map(|v| v["events"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
}

/// POSTs JSON to the collector's (open) API: status and body.
fn post_json(stack: &Stack, path: &str, body: &Value) -> (u16, Value) {
    let r = http::request(
        stack.http_port,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        &body.to_string(),
    )
    .unwrap();
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

/// A CA and a server certificate it signed for 127.0.0.1, made with the
/// `openssl` command in `dir`: (ca.pem, leaf.pem, leaf.key).
fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    sonde_e2e::certs::pki(
        dir,
        "e2e",
        &[(
            "leaf",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth",
        )],
    )
    .expect("test certificates");
    (
        dir.join("e2e-ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    )
}

fn tls_server_config(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    let certs = rustls_pemfile::certs(&mut std::fs::read(cert).unwrap().as_slice())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut std::fs::read(key).unwrap().as_slice())
        .unwrap()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    Arc::new(config)
}

/// One message an SMTP test server accepted.
#[derive(Debug, Clone)]
struct Mail {
    at: Instant,
    /// Commands before DATA, in order.
    commands: Vec<String>,
    /// After STARTTLS.
    tls: bool,
    /// The AUTH PLAIN credentials, decoded (`\0user\0password`).
    auth: Option<String>,
    /// Headers and body, CRLF line ends, dot-stuffing undone.
    data: String,
}

impl Mail {
    fn header(&self, name: &str) -> Option<&str> {
        let head = self.data.split("\r\n\r\n").next()?;
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body as text (quoted-printable decoded).
    fn text(&self) -> String {
        let body = self.data.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        if self.header("Content-Transfer-Encoding") != Some("quoted-printable") {
            return body.to_owned();
        }
        let joined = body.replace("=\r\n", "");
        let bytes = joined.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'=' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }
}

fn read_line(s: &mut impl Read) -> Option<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) => {
                line.push(b[0]);
                if b[0] == b'\n' {
                    return Some(String::from_utf8_lossy(&line).into_owned());
                }
            }
            _ => return None,
        }
    }
}

/// Serves one SMTP session on `s`; true when the client asked for
/// STARTTLS (and was told to go ahead).
fn smtp_session(
    s: &mut (impl Read + Write),
    tls: Option<&Arc<rustls::ServerConfig>>,
    in_tls: bool,
    eight_bit: bool,
    mail: &mut Mail,
) -> bool {
    loop {
        let Some(line) = read_line(s) else {
            return false;
        };
        let line = line.trim_end().to_owned();
        let upper = line.to_ascii_uppercase();
        let answer = if upper.starts_with("EHLO") {
            let mut caps = vec!["250-test.local".to_owned()];
            if eight_bit {
                caps.push("250-8BITMIME".into());
            }
            if tls.is_some() && !in_tls {
                caps.push("250-STARTTLS".into());
            }
            if tls.is_some() {
                caps.push("250-AUTH PLAIN".into());
            }
            caps.push("250 SIZE 10000000".into());
            caps.join("\r\n") + "\r\n"
        } else if upper == "STARTTLS" && tls.is_some() && !in_tls {
            mail.commands.push(line);
            let _ = s.write_all(b"220 ready\r\n");
            return true;
        } else if let Some(b64) = line.strip_prefix("AUTH PLAIN ") {
            let decoded = decode_base64(b64);
            let ok = decoded == "\0sonde\0smtp-pw";
            mail.auth = Some(decoded);
            if ok {
                "235 ok\r\n"
            } else {
                "535 bad credentials\r\n"
            }
            .to_owned()
        } else if upper == "DATA" {
            let _ = s.write_all(b"354 go ahead\r\n");
            let mut data = String::new();
            loop {
                let Some(l) = read_line(s) else { return false };
                if l == ".\r\n" {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(&l));
            }
            mail.data = data;
            mail.at = Instant::now();
            "250 queued\r\n".to_owned()
        } else if upper == "QUIT" {
            let _ = s.write_all(b"221 bye\r\n");
            return false;
        } else if upper.starts_with("MAIL FROM:") || upper.starts_with("RCPT TO:") {
            "250 ok\r\n".to_owned()
        } else {
            "502 not implemented\r\n".to_owned()
        };
        if !upper.starts_with("AUTH") {
            mail.commands.push(line);
        }
        if s.write_all(answer.as_bytes()).is_err() {
            return false;
        }
    }
}

fn decode_base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An SMTP server on a free loopback port, one session at a time: plain,
/// or offering STARTTLS (and AUTH PLAIN, only after it) with `tls`.
fn smtp_server(
    tls: Option<Arc<rustls::ServerConfig>>,
    eight_bit: bool,
) -> (u16, Arc<Mutex<Vec<Mail>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the SMTP server");
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = Arc::clone(&got);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut mail = Mail {
                at: Instant::now(),
                commands: Vec::new(),
                tls: false,
                auth: None,
                data: String::new(),
            };
            let _ = s.write_all(b"220 test.local ESMTP\r\n");
            if smtp_session(&mut s, tls.as_ref(), false, eight_bit, &mut mail) {
                let Some(cfg) = &tls else { continue };
                let conn = rustls::ServerConnection::new(Arc::clone(cfg)).unwrap();
                let mut t = rustls::StreamOwned::new(conn, s);
                mail.tls = true;
                smtp_session(&mut t, tls.as_ref(), true, eight_bit, &mut mail);
            }
            if !mail.data.is_empty() {
                g.lock().unwrap().push(mail);
            }
        }
    });
    (port, got)
}

/// Restarts the collector (SIGTERM, then the same config and data); the
/// moment it answers again.
fn restart_collector(stack: &mut Stack) -> Instant {
    let st = stack.stop("collector", Signal::SIGTERM);
    assert!(
        st.is_some_and(|s| s.success()),
        "collector stop: {st:?}\n{}",
        stack.logs()
    );
    stack.spawn_collector().expect("restart the collector");
    Instant::now()
}

/// One stack, timed so that its minute of waiting for the TPS baseline is
/// used: a rule made through the console API fires and names the deploy
/// recorded by `scripts/sonde-deploy`; the collector restarts while that
/// rule fires (no second message; the recovery still comes); then traffic
/// that stopped a minute ago fires the TPS-drop rule.
#[test]
fn console_rule_deploy_marker_restart_and_tps_drop() {
    let (hook_port, got) = receiver();
    let extra = format!(
        "[alerts]\ndefaults = false\ninterval_ms = 500\ndeploy_mention_minutes = 30\n\
         [[alerts.rules]]\nname = \"tps-drop\"\nkind = \"tps_drop\"\nthreshold = 50\n\
         window_secs = 5\ncompare_minutes = 1\nmin_tps = 0.5\napp = \"fanapp\"\n\
         [[alerts.rules]]\nname = \"from-file\"\nkind = \"error_count\"\nthreshold = 100000\n\
         [[alerts.webhooks]]\nname = \"test\"\nurl = \"http://127.0.0.1:{hook_port}/hook\"\n"
    );
    let mut stack = Stack::start(&StackOptions {
        collector_extra: extra,
        ..Default::default()
    })
    .expect("start the stack");

    // The TPS baseline: ~10 calls/s for 12 s, then nothing.
    let traffic_start = Instant::now();
    let web = stack.web_port;
    let traffic = std::thread::spawn(move || {
        let mut n = 0;
        while traffic_start.elapsed() < Duration::from_secs(12) {
            let r = http::request(web, "GET", "/api/v6/photos?lang=en&page=1", &[], "");
            assert_eq!(r.map(|r| r.status).ok(), Some(200));
            n += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        n
    });

    // A console rule (through the API the console's editor uses).
    let (status, body) = post_json(
        &stack,
        "/api/v1/alerts/rules",
        &json!({"name": "boom-console", "kind": "error_count", "threshold": 0, "window_secs": 5,
                "by": "endpoint", "endpoint": "/api/v6/boom", "silence_secs": 600}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["source"].as_str(), body["effective"].as_bool()),
        (Some("console"), Some(true)),
        "{body}"
    );
    // One with the name of a file rule: kept, shown, not in force.
    let (status, body) = post_json(
        &stack,
        "/api/v1/alerts/rules",
        &json!({"name": "from-file", "kind": "error_count", "threshold": 0}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["effective"], false, "{body}");
    assert_eq!(body["overridden_by"], "file", "{body}");
    let list = stack.api("/api/v1/alerts/rules").unwrap();
    assert_eq!(list["precedence"], json!(["file", "console", "default"]));
    let standing: Vec<(String, String, bool)> = list["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["source"].as_str().unwrap().to_owned(),
                r["effective"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        standing,
        [
            ("tps-drop".into(), "file".into(), true),
            ("from-file".into(), "file".into(), true),
            ("boom-console".into(), "console".into(), true),
            ("from-file".into(), "console".into(), false),
        ]
    );

    // A deploy, recorded the way a deploy script would.
    let out = Command::new("sh")
        .arg(repo_root().join("scripts/sonde-deploy"))
        .args(["--url", &format!("http://127.0.0.1:{}", stack.http_port)])
        .args(["--app", "fanapp", "--version", "v1.2.3", "--user", "ci"])
        .args(["--description", "e2e \"quoted\" deploy"])
        .output()
        .expect("run scripts/sonde-deploy");
    assert!(
        out.status.success(),
        "sonde-deploy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).expect("the deploy as JSON");
    let deploys = stack
        .api(&format!(
            "/api/v1/deploys?app=fanapp&from=0&to={}",
            now_ms() + 1000
        ))
        .unwrap();
    assert_eq!(deploys["deploys"].as_array().unwrap().len(), 1, "{deploys}");
    let d = &deploys["deploys"][0];
    assert_eq!(d, &printed);
    assert_eq!(
        (d["app"].as_str(), d["version"].as_str(), d["user"].as_str()),
        (Some("fanapp"), Some("v1.2.3"), Some("ci"))
    );
    assert_eq!(d["description"], "e2e \"quoted\" deploy");
    let other = stack
        .api(&format!("/api/v1/deploys?app=blog&from=0&to={}", now_ms()))
        .unwrap();
    assert_eq!(other["deploys"], json!([]));

    // The console rule fires within 5 s, naming the endpoint and the deploy.
    let first_failure = Instant::now();
    while hooks_of(&got, "boom-console", "firing").is_empty()
        && first_failure.elapsed() < Duration::from_secs(10)
    {
        let r = stack.web("GET", "/api/v6/boom", &[], "").unwrap();
        assert_eq!(r.status, 500);
        std::thread::sleep(Duration::from_millis(200));
    }
    let firing = hooks_of(&got, "boom-console", "firing");
    assert_eq!(firing.len(), 1, "{firing:#?}\n{}", stack.logs());
    let delay = firing[0].at - first_failure;
    eprintln!("console rule webhook {delay:?} after the first failure");
    assert!(delay <= Duration::from_secs(5), "{delay:?}");
    let e = &firing[0].body["event"];
    assert_eq!(e["endpoint"], "/api/v6/boom", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("— deploy v1.2.3 of fanapp")
            && message.contains("(by ci: e2e \"quoted\" deploy)"),
        "{message}"
    );

    // Restart while it fires, and keep failing: the restarted collector
    // sees the failures, restores the firing state and sends nothing new.
    let restarted = restart_collector(&mut stack);
    let restarted_ms = now_ms();
    while restarted.elapsed() < Duration::from_secs(7) {
        let _ = stack.web("GET", "/api/v6/boom", &[], "");
        std::thread::sleep(Duration::from_millis(300));
    }
    let failed_since = stack
        .api(&format!(
            "/api/v1/transactions?errors_only=true&from={restarted_ms}&to={}",
            now_ms() + 1000
        ))
        .map(|v| v["transactions"].as_array().map_or(0, Vec::len))
        .unwrap_or(0);
    assert!(
        failed_since > 0,
        "the restarted collector got failures\n{}",
        stack.logs()
    );
    assert_eq!(
        hooks_of(&got, "boom-console", "firing").len(),
        1,
        "no second firing message after the restart: {:#?}\n{}",
        got.lock().unwrap(),
        stack.logs()
    );
    assert!(
        stack.logs().contains("alert state restored"),
        "{}",
        stack.logs()
    );
    // Failures stop: the restored firing resolves (once its grace of the
    // window plus 10 s after the restart is over).
    let res = wait_for("the console rule resolved", Duration::from_secs(25), || {
        !hooks_of(&got, "boom-console", "resolved").is_empty()
    });
    if let Err(e) = res {
        panic!("{e}: {:#?}\n{}", got.lock().unwrap(), stack.logs());
    }
    eprintln!(
        "console rule resolved {:?} after the restart",
        restarted.elapsed()
    );
    let stored: Vec<String> = events(&stack)
        .iter()
        .filter(|e| e["rule"] == "boom-console")
        .map(|e| e["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored, ["firing", "resolved"]);

    // The traffic stopped at 12 s; about a minute after it started, the
    // window a minute earlier has it and the last 5 s do not.
    let calls = traffic.join().unwrap();
    eprintln!("{calls} baseline calls");
    let res = wait_for("the TPS-drop webhook", Duration::from_secs(90), || {
        !hooks_of(&got, "tps-drop", "firing").is_empty()
    });
    if let Err(e) = res {
        panic!("{e}: {:#?}\n{}", got.lock().unwrap(), stack.logs());
    }
    let drop = hooks_of(&got, "tps-drop", "firing");
    let at = drop[0].at - traffic_start;
    eprintln!("TPS drop webhook {at:?} after the traffic started");
    assert!(
        at >= Duration::from_secs(59),
        "not before the baseline has traffic: {at:?}"
    );
    assert!(at <= Duration::from_secs(66), "{at:?}");
    let e = &drop[0].body["event"];
    assert_eq!(
        (e["kind"].as_str(), e["app"].as_str(), e["level"].as_str()),
        (Some("tps_drop"), Some("fanapp"), Some("critical"))
    );
    assert_eq!(e["value"], 100.0, "nothing now: a 100 % drop: {e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("0.00 TPS over the last 5 s vs")
            && message.contains("1 min earlier: drop 100 %"),
        "{message}"
    );
    assert!(message.contains("deploy v1.2.3 of fanapp"), "{message}");
    assert_eq!(hooks_of(&got, "tps-drop", "firing").len(), 1);
    assert!(hooks_of(&got, "from-file", "firing").is_empty());
}

#[test]
fn error_rate_fires_within_seconds_and_resolves_by_webhook_and_email() {
    let (hook_port, got) = receiver();
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(pki.path());
    // Plain SMTP that takes 8-bit bodies; STARTTLS + AUTH that does not
    // (the collector then sends quoted-printable).
    let (plain_port, plain_mail) = smtp_server(None, true);
    let (tls_port, tls_mail) = smtp_server(Some(tls_server_config(&cert, &key)), false);
    let extra = format!(
        "[alerts]\ndefaults = false\ninterval_ms = 500\n\
         [[alerts.rules]]\nname = \"boom-errors\"\nkind = \"error_rate\"\nthreshold = 20\n\
         window_secs = 5\nmin_tps = 0.1\nsilence_secs = 600\n\
         [[alerts.webhooks]]\nname = \"test\"\nurl = \"http://127.0.0.1:{hook_port}/hook\"\n\
         secret = \"e2e-secret\"\n\
         [[alerts.email]]\nname = \"mail\"\nhost = \"127.0.0.1\"\nport = {plain_port}\ntls = \"none\"\n\
         from = \"sonde@example.com\"\nto = [\"ops@example.com\"]\n\
         [[alerts.email]]\nname = \"mail-tls\"\nhost = \"127.0.0.1\"\nport = {tls_port}\n\
         tls = \"starttls\"\nca_file = \"{ca}\"\nusername = \"sonde\"\npassword = \"smtp-pw\"\n\
         from = \"sonde@example.com\"\nto = [\"ops@example.com\", \"dev@example.com\"]\n",
        ca = ca.display()
    );
    let stack = Stack::start(&StackOptions {
        collector_extra: extra,
        ..Default::default()
    })
    .expect("start the stack");

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

    // Both SMTP servers got the firing email, naming the rule, within 5 s
    // of the first failure too.
    let res = wait_for("the firing emails", Duration::from_secs(10), || {
        !plain_mail.lock().unwrap().is_empty() && !tls_mail.lock().unwrap().is_empty()
    });
    if let Err(e) = res {
        panic!("{e}\n{}", stack.logs());
    }
    for (name, mails) in [("plain", &plain_mail), ("starttls", &tls_mail)] {
        let m = mails.lock().unwrap()[0].clone();
        let delay = m.at - first_failure;
        eprintln!("{name} email {delay:?} after the first failure");
        assert!(
            delay <= Duration::from_secs(5),
            "{name} email after {delay:?}"
        );
        assert_eq!(
            m.header("Subject"),
            Some("[Sonde] FIRING critical: boom-errors (fanapp)"),
            "{name}: {}",
            m.data
        );
        let text = m.text();
        assert!(
            text.contains(e["event"]["message"].as_str().unwrap()),
            "{name}: the body carries the message: {text}"
        );
        assert!(
            text.contains("Rule:       boom-errors (error_rate)"),
            "{name}: {text}"
        );
        assert!(text.contains("State:      firing"), "{name}: {text}");
    }
    let plain = plain_mail.lock().unwrap()[0].clone();
    assert!(!plain.tls && plain.auth.is_none(), "{plain:?}");
    assert_eq!(plain.header("Content-Transfer-Encoding"), Some("8bit"));
    assert!(
        plain
            .commands
            .iter()
            .any(|c| c == "MAIL FROM:<sonde@example.com> BODY=8BITMIME"),
        "{:?}",
        plain.commands
    );
    let secure = tls_mail.lock().unwrap()[0].clone();
    assert!(secure.tls, "STARTTLS was used: {:?}", secure.commands);
    assert_eq!(secure.commands[..2], ["EHLO sonde-collector", "STARTTLS"]);
    assert_eq!(
        secure.auth.as_deref(),
        Some("\0sonde\0smtp-pw"),
        "AUTH inside TLS"
    );
    assert_eq!(
        secure.header("Content-Transfer-Encoding"),
        Some("quoted-printable"),
        "no 8BITMIME offered"
    );
    assert!(
        secure
            .commands
            .iter()
            .filter(|c| c.starts_with("RCPT TO:"))
            .count()
            == 2,
        "{:?}",
        secure.commands
    );

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
    wait_for("the resolved emails", Duration::from_secs(10), || {
        plain_mail.lock().unwrap().len() == 2 && tls_mail.lock().unwrap().len() == 2
    })
    .unwrap();
    assert_eq!(
        tls_mail.lock().unwrap()[1].header("Subject"),
        Some("[Sonde] RESOLVED: boom-errors (fanapp)")
    );

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
    assert_eq!(plain_mail.lock().unwrap().len(), 2, "silenced");

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

    // The "send test" action reaches every channel, email included.
    let r = http::request(stack.http_port, "POST", "/api/v1/alerts/test", &[], "").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let queued: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(queued, json!({"queued": ["test", "mail", "mail-tls"]}));
    wait_for("the test messages", Duration::from_secs(10), || {
        got.lock()
            .unwrap()
            .iter()
            .any(|h| h.body["event"]["kind"] == "test")
            && tls_mail.lock().unwrap().len() == 3
    })
    .unwrap();
    let test_mail = tls_mail.lock().unwrap()[2].clone();
    assert!(
        test_mail
            .header("Subject")
            .is_some_and(|s| s.starts_with("[Sonde] Test message")),
        "{}",
        test_mail.data
    );

    // Counters per channel and in all (delivery is asynchronous).
    let mut stats = Value::Null;
    let counted = wait_for("nine deliveries counted", Duration::from_secs(10), || {
        stats = stack.api("/api/v1/stats").unwrap_or(Value::Null);
        stats["alerts"]["deliveries"]["sent"] == 9
    });
    assert!(counted.is_ok(), "{stats}");
    assert_eq!(
        stats["alerts"]["deliveries"]["failed_attempts"], 0,
        "{stats}"
    );
    assert_eq!(stats["alerts"]["deliveries"]["dropped"], 0, "{stats}");
    assert_eq!(stats["alerts"]["events"], 2, "{stats}");
    let channels = stats["alerts"]["channels"].as_array().unwrap();
    let names: Vec<&str> = channels.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["test", "mail", "mail-tls"], "{stats}");
    assert!(
        channels
            .iter()
            .all(|c| c["sent"] == 3 && c["last_error"].is_null()),
        "{stats}"
    );
    assert_eq!(channels[2]["kind"], "email");
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
fn slowdown_and_stuck_requests_fire_naming_the_endpoint() {
    let (hook_port, got) = receiver();
    // In-flight buckets < 100 ms, < 300 ms, < 1 s and ≥ 1 s: a request
    // running for a second or more is in the slowest one.
    let extra = format!(
        "[live]\nactive_bounds_ms = [100, 300, 1000]\n\
         [alerts]\ndefaults = false\ninterval_ms = 500\n\
         [[alerts.rules]]\nname = \"stuck\"\nkind = \"stuck_requests\"\nthreshold = 1\n\
         by = \"endpoint\"\nlevel = \"warning\"\n\
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
        !hooks_of(&got, "slow", "firing").is_empty()
    });
    if let Err(e) = res {
        panic!("{e}\n{}", stack.logs());
    }
    let firing = hooks_of(&got, "slow", "firing");
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
    assert!(
        hooks_of(&got, "stuck", "firing").is_empty(),
        "one request of 800 ms is not two stuck ones"
    );

    // Two requests sleeping 5 s at once: more than one in the slowest
    // bucket fires the stuck-requests rule while they still run.
    let started = Instant::now();
    let port = stack.web_port;
    let sleepers: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                http::request(port, "GET", "/api/v6/slow?ms=5000", &[], "").map(|r| r.status)
            })
        })
        .collect();
    let res = wait_for("the stuck-requests webhook", Duration::from_secs(5), || {
        !hooks_of(&got, "stuck", "firing").is_empty()
    });
    if let Err(e) = res {
        panic!("{e}\n{}", stack.logs());
    }
    let stuck = hooks_of(&got, "stuck", "firing");
    let after = stuck[0].at - started;
    eprintln!("stuck-requests webhook {after:?} after the requests started");
    // They are stuck from 1 s on; fired well before they end at 5 s.
    assert!(after < Duration::from_millis(4500), "{after:?}");
    let e = &stuck[0].body["event"];
    assert_eq!(e["kind"], "stuck_requests", "{e}");
    assert_eq!(e["endpoint"], "/api/v6/slow", "{e}");
    assert_eq!(e["app"], "fanapp", "{e}");
    assert_eq!(e["value"], 2.0, "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("2 requests in flight for 1 s or more")
            && message.contains("on agent-host"),
        "{message}"
    );
    for s in sleepers {
        assert_eq!(s.join().unwrap().unwrap(), 200);
    }
    // Finished: the stuck requests resolve.
    wait_for("the stuck rule resolved", Duration::from_secs(5), || {
        !hooks_of(&got, "stuck", "resolved").is_empty()
    })
    .unwrap();
    assert_eq!(hooks_of(&got, "stuck", "firing").len(), 1);
}
