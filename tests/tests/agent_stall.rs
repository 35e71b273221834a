//! The acceptance run for a frozen agent: under steady load the agent is
//! stopped (SIGSTOP) for 30 s. Every page answers byte-identically (status,
//! headers except Date, body) with nothing in PHP's logs, no request waits
//! on the agent (latencies stay those of a run with no agent at all), and
//! afterwards requests made = records stored + records counted as dropped.
//!
//! Takes about a minute; `SONDE_STALL_SECS` shortens the stall.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sonde_e2e::{http, now_ms, wait_for, Stack, StackOptions};

/// Pages of the demo app and the test pages, each answered the same every
/// time.
const PAGES: &[&str] = &[
    "/api/v6/photos?lang=ko&page=1",
    "/api/v6/photos/0123456789abcdef0123",
    "/no/such/page",
    "/t/callee.php",
];

/// Status, headers without Date, body.
type Page = (u16, Vec<(String, String)>, String);

fn fetch(port: u16, path: &str) -> Page {
    let r = http::request(port, "GET", path, &[], "").expect("request");
    let headers = r.headers.into_iter().filter(|(k, _)| k != "date").collect();
    (r.status, headers, r.body)
}

/// What one load phase saw.
#[derive(Default)]
struct Seen {
    /// Latencies, ms.
    latencies: Vec<f64>,
    /// Responses that differed from the reference.
    different: Vec<(String, Page)>,
}

impl Seen {
    fn quantile(&self, q: f64) -> f64 {
        let mut l = self.latencies.clone();
        l.sort_by(f64::total_cmp);
        l.get(((l.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    }
}

/// Four clients, each about 100 requests/s, for `secs` (paced, so the ring
/// holds a long stall); every response is checked against `reference`.
fn load(port: u16, secs: f64, reference: &[Page]) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (seen, reference) = (seen.clone(), reference.to_vec());
            std::thread::spawn(move || {
                let mut i = t;
                while Instant::now() < deadline {
                    let page = PAGES[i % PAGES.len()];
                    let started = Instant::now();
                    let got = fetch(port, page);
                    let ms = started.elapsed().as_secs_f64() * 1e3;
                    let mut s = seen.lock().unwrap();
                    s.latencies.push(ms);
                    if got != reference[i % PAGES.len()] {
                        s.different.push((page.to_string(), got));
                    }
                    drop(s);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(10).saturating_sub(started.elapsed()));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    Arc::try_unwrap(seen)
        .ok()
        .expect("threads done")
        .into_inner()
        .unwrap()
}

fn assert_quiet_logs(stack: &Stack) {
    let php_errors = std::fs::read_to_string(stack.path("php-errors.log")).unwrap_or_default();
    assert!(php_errors.is_empty(), "PHP logged: {php_errors}");
    let fpm = std::fs::read_to_string(stack.path("php-fpm-error.log")).unwrap_or_default();
    for line in fpm.lines() {
        assert!(
            !line.contains("WARNING") && !line.contains("ERROR"),
            "php-fpm logged: {line}"
        );
    }
}

#[test]
fn a_30_second_agent_freeze_under_load_changes_nothing_and_loses_nothing() {
    let stall: f64 = std::env::var("SONDE_STALL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30.0);

    // The reference: the same pages with no agent at all.
    let (reference, no_agent) = {
        let stack = Stack::start(&StackOptions {
            collector: false,
            agent: false,
            ..Default::default()
        })
        .expect("start php-fpm + nginx without an agent");
        let reference: Vec<Page> = PAGES.iter().map(|p| fetch(stack.web_port, p)).collect();
        let seen = load(stack.web_port, 5.0, &reference);
        assert!(seen.different.is_empty(), "{:?}", seen.different);
        assert_quiet_logs(&stack);
        (reference, seen)
    };

    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let port = stack.web_port;
    for (p, want) in PAGES.iter().zip(&reference) {
        assert_eq!(&fetch(port, p), want, "{p} with the agent");
    }
    let warm = load(port, 3.0, &reference);

    let agent = stack
        .procs
        .iter()
        .find(|p| p.name == "agent")
        .unwrap()
        .pid();
    kill(Pid::from_raw(agent as i32), Signal::SIGSTOP).unwrap();
    let frozen = load(port, stall, &reference);
    kill(Pid::from_raw(agent as i32), Signal::SIGCONT).unwrap();
    let after = load(port, 2.0, &reference);

    // Byte-identical pages, nothing logged.
    for s in [&warm, &frozen, &after] {
        assert!(
            s.different.is_empty(),
            "responses changed: {:?}",
            s.different
        );
    }
    assert_quiet_logs(&stack);

    // No request waited on the agent: latencies as with no agent at all.
    let (m0, p0) = (no_agent.quantile(0.5), no_agent.quantile(0.99));
    let (m1, p1, max1) = (
        frozen.quantile(0.5),
        frozen.quantile(0.99),
        frozen.quantile(1.0),
    );
    eprintln!(
        "latency ms: no agent median {m0:.2} p99 {p0:.2} ({} requests); agent frozen {stall} s: \
         median {m1:.2} p99 {p1:.2} max {max1:.2} ({} requests)",
        no_agent.latencies.len(),
        frozen.latencies.len()
    );
    assert!(
        m1 <= m0 * 1.5 + 2.0,
        "median {m1:.2} ms vs {m0:.2} ms with no agent"
    );
    assert!(
        p1 <= p0 * 2.0 + 20.0,
        "p99 {p1:.2} ms vs {p0:.2} ms with no agent"
    );
    assert!(
        max1 < 1_000.0,
        "a request took {max1:.0} ms while the agent was frozen"
    );

    // The ledger: every request stored, or dropped and counted.
    let made = (PAGES.len() + warm.latencies.len() + frozen.latencies.len() + after.latencies.len())
        as u64;
    let mut last = (0, 0);
    let balanced = wait_for("stored + dropped == made", Duration::from_secs(90), || {
        last = (stack.stored_since(from), stack.dropped_total());
        last.0 + last.1 == made
    });
    if let Err(e) = balanced {
        panic!(
            "{e}: made {made}, stored {}, dropped {}\n{}",
            last.0,
            last.1,
            stack.logs()
        );
    }
    eprintln!(
        "made {made}: stored {}, dropped and counted {}",
        last.0, last.1
    );
}
