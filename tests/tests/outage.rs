//! Collector outages under steady PHP traffic, checked against an
//! independent ledger: nginx's access log (one line per request it served,
//! with the request's unique `ledger=` tag). After the collector comes back
//! every served request is stored exactly once — none lost, none twice.
//!
//! - The collector **stopped for 10 minutes** (SIGTERM, then started again
//!   on the same data): the agent spools to disk and replays.
//! - The collector **frozen** (SIGSTOP, a half-open connection: the socket
//!   stays open, nothing answers): the agent notices by its acknowledgement
//!   timeout, spools, and replays after SIGCONT; batches the frozen
//!   collector had read are stored once thanks to per-record ids.
//!
//! `SONDE_OUTAGE_SECS` (default 600) and `SONDE_FREEZE_SECS` (default 60)
//! shorten them for a quick local run; CI runs the defaults. The two tests
//! run at the same time, each with its own stack.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sonde_e2e::{http, ledger, now_ms, wait_for, Stack, StackOptions};

fn secs(var: &str, default: u64) -> Duration {
    let s = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(s)
}

/// Steady traffic: `rate` requests a second, each tagged `<tag>-<n>`.
struct Traffic {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Duration>>,
}

impl Traffic {
    fn start(port: u16, tag: &'static str, rate: u32) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let every = Duration::from_secs(1) / rate;
            let mut next = Instant::now();
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = http::request(port, "GET", &format!("/health?ledger={tag}-{n}"), &[], "")
                    .expect("PHP answers");
                assert_eq!(r.status, 200, "request {n}: {}", r.body);
                latencies.push(t.elapsed());
                n += 1;
                next += every;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            latencies
        });
        Traffic { stop, handle }
    }

    /// Stops; the latencies of every request, in order.
    fn finish(self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("traffic thread")
    }
}

/// Waits until every served request is stored, then checks exactly once.
fn check_exactly_once(stack: &Stack, from: i64) {
    let served = ledger::served(stack);
    assert!(!served.is_empty(), "nginx logged the traffic");
    ledger::wait_all_stored(stack, &served, from, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    // Late duplicates would arrive with the replay: give them time.
    std::thread::sleep(Duration::from_secs(3));
    let last = ledger::stored(stack, from);
    let twice: Vec<_> = last.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    assert_eq!(
        last.len(),
        served.len(),
        "nothing stored that nginx did not serve"
    );
    assert_eq!(stack.dropped_total(), 0, "nothing dropped");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn collector_pid(stack: &Stack) -> Pid {
    let p = stack.procs.iter().find(|p| p.name == "collector").unwrap();
    Pid::from_raw(p.pid() as i32)
}

#[test]
fn collector_stopped_for_ten_minutes_loses_nothing() {
    let outage = secs("SONDE_OUTAGE_SECS", 600);
    let mut stack = Stack::start(&StackOptions {
        access_log: true,
        ..StackOptions::default()
    })
    .expect("start the stack");
    let from = now_ms() - 1_000;
    let before = Traffic::start(stack.web_port, "before", 20);
    std::thread::sleep(Duration::from_secs(5));
    let before = before.finish();

    let during = Traffic::start(stack.web_port, "stopped", 20);
    let st = stack.stop("collector", Signal::SIGTERM);
    assert!(
        st.is_some_and(|s| s.success()),
        "collector stopped cleanly: {st:?}"
    );
    std::thread::sleep(outage);
    stack.spawn_collector().expect("the collector restarts");
    std::thread::sleep(Duration::from_secs(5));
    let during = during.finish();

    let spooled = stack
        .agent_metric("sonde_agent_records_spooled_total")
        .unwrap_or(0);
    assert!(spooled > 0, "the outage went through the disk spool");
    let (b, d) = (median(before), median(during));
    assert!(
        d <= b * 2 + Duration::from_millis(5),
        "PHP not slowed by the outage: median {b:?} before, {d:?} during"
    );
    check_exactly_once(&stack, from);
}

#[test]
fn collector_frozen_half_open_loses_nothing_and_stores_nothing_twice() {
    let freeze = secs("SONDE_FREEZE_SECS", 60);
    let stack = Stack::start(&StackOptions {
        access_log: true,
        ..StackOptions::default()
    })
    .expect("start the stack");
    let from = now_ms() - 1_000;
    let traffic = Traffic::start(stack.web_port, "frozen", 20);
    std::thread::sleep(Duration::from_secs(3));
    let pid = collector_pid(&stack);
    kill(pid, Signal::SIGSTOP).unwrap();
    std::thread::sleep(freeze);
    kill(pid, Signal::SIGCONT).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let latencies = traffic.finish();
    assert!(
        latencies.iter().all(|l| *l < Duration::from_secs(1)),
        "no request waited on the frozen collector"
    );
    check_exactly_once(&stack, from);
}

/// A spool too small for the outage: the oldest data is dropped, counted
/// in the agent's metrics, reported to the collector when it returns (the
/// server's counters in `/api/v1/agents` and an `agent_dropped` event), and
/// every request is still accounted for: stored + dropped == served.
#[test]
fn a_full_spool_drops_the_oldest_counts_it_and_tells_the_collector() {
    let mut stack = Stack::start(&StackOptions {
        agent_extra: "spool_max_bytes = 1048576".into(),
        ..StackOptions::default()
    })
    .expect("start the stack");
    let from = now_ms() - 1_000;
    let st = stack.stop("collector", Signal::SIGTERM);
    assert!(st.is_some_and(|s| s.success()), "collector stopped: {st:?}");
    // ~2 KB of incompressible URL per request: 1,500 of them overflow 1 MiB.
    let made = 1_500u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..made {
        let pad: String = (0..128)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                format!("{:016x}", seed)
            })
            .collect::<String>()[..2048]
            .to_owned();
        let r = http::request(
            stack.web_port,
            "GET",
            &format!("/health?s={i}&pad={pad}"),
            &[],
            "",
        )
        .unwrap();
        assert_eq!(r.status, 200);
    }
    wait_for("spool-full drops counted", Duration::from_secs(30), || {
        let m = stack
            .agent_metric("sonde_agent_records_dropped_total")
            .unwrap_or(0);
        m > 0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    stack.spawn_collector().expect("the collector restarts");

    let reported = || -> u64 {
        stack
            .api("/api/v1/agents")
            .ok()
            .and_then(|v| {
                v["agents"]
                    .as_array()?
                    .iter()
                    .find_map(|a| a["counters"]["records_dropped_by_reason"]["spool_full"].as_u64())
            })
            .unwrap_or(0)
    };
    wait_for(
        "the collector shows the drops",
        Duration::from_secs(20),
        || reported() > 0,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    let events = stack.api("/api/v1/events?from=0").unwrap();
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "agent_dropped"),
        "an agent_dropped event: {events}"
    );
    let mut last = (0, 0);
    wait_for(
        "stored + dropped == served",
        Duration::from_secs(60),
        || {
            last = (stack.stored_since(from), stack.dropped_total());
            last.0 + last.1 == made
        },
    )
    .unwrap_or_else(|e| panic!("{e}: stored {}, dropped {}", last.0, last.1));
    assert!(
        last.1 > 0 && last.0 > 0,
        "some dropped, the rest stored: {last:?}"
    );
}
