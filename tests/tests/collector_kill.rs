//! `kill -9` of the collector under load — real PHP traffic through nginx,
//! php-fpm with the extension and the agent — three times, restarting it on
//! the same data each time. Afterwards every request nginx served (its
//! access log is the ledger) is stored exactly once, nothing else is, and
//! the agent was acknowledged for all it received and dropped nothing:
//! what was acknowledged before a kill was durable, what was not was
//! resent, and resends of what had been committed were recognised.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use sonde_e2e::{http, ledger, now_ms, Stack, StackOptions};

#[test]
fn kill_9_under_load_loses_nothing_acknowledged_and_stores_nothing_twice() {
    let mut stack = Stack::start(&StackOptions {
        access_log: true,
        ..StackOptions::default()
    })
    .expect("start the stack");
    let from = now_ms() - 1_000;

    // Steady traffic, a few requests in flight at a time.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<_> = (0..3)
        .map(|w| {
            let (stop, port) = (stop.clone(), stack.web_port);
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r =
                        http::request(port, "GET", &format!("/health?ledger=w{w}-{n}"), &[], "")
                            .expect("PHP answers");
                    assert_eq!(r.status, 200, "{}", r.body);
                    n += 1;
                    std::thread::sleep(Duration::from_millis(15));
                }
                n
            })
        })
        .collect();

    for round in 0..3 {
        std::thread::sleep(Duration::from_secs(4));
        let before = ledger::stored(&stack, from).len();
        assert!(before > 0 || round > 0, "data flows before the kill");
        // SIGKILL: no flush, no goodbye; in-flight batches are cut off.
        stack.stop("collector", Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(1500));
        stack.spawn_collector().expect("the collector restarts");
    }
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = traffic.into_iter().map(|t| t.join().unwrap()).sum();

    let served = ledger::served(&stack);
    assert_eq!(served.len() as u64, sent, "nginx logged every request");
    ledger::wait_all_stored(&stack, &served, from, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    // Replays of batches the killed collector had committed but not
    // acknowledged arrive with the catch-up: give them time.
    std::thread::sleep(Duration::from_secs(3));
    let last = ledger::stored(&stack, from);
    let twice: Vec<_> = last.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    assert_eq!(
        last.len(),
        served.len(),
        "nothing stored that nginx did not serve"
    );

    // The agent's side: all it received was acknowledged (some batches
    // twice: those the collector committed just before it was killed),
    // nothing dropped.
    let metric = |m: &str| stack.agent_metric(m).unwrap_or(0);
    let received = metric("sonde_agent_records_received_total");
    let acked = metric("sonde_agent_records_acked_total");
    assert_eq!(received, served.len() as u64, "the agent saw every request");
    assert!(acked >= received, "acknowledged {acked} of {received}");
    assert_eq!(stack.dropped_total(), 0, "nothing dropped");
    let dups = stack.api("/api/v1/stats").unwrap()["ingest"]["records_duplicate"]
        .as_u64()
        .unwrap_or(0);
    eprintln!(
        "served {}, stored once each; agent acked {acked} (received {received}); \
         duplicates recognised since the last restart: {dups}",
        served.len()
    );
}
