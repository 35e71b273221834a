//! php-fpm's own life cycle with the extension: workers recycled after a
//! few requests (`pm.max_requests`) and a graceful reload (SIGUSR2) in the
//! middle of traffic. No worker crashes, every request answers, and every
//! request is recorded exactly once (nothing dropped).

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sonde_e2e::{now_ms, wait_for, Stack, StackOptions};

#[test]
fn recycling_and_reload_lose_nothing_and_crash_nothing() {
    let mut stack = Stack::start(&StackOptions {
        fpm_pool: vec!["pm.max_requests = 5".into()],
        ..Default::default()
    })
    .expect("start the stack");
    let from = now_ms() - 1_000;
    let mut answered = 0u64;
    for i in 0..60 {
        let r = stack
            .web(
                "GET",
                &format!("/api/v6/photos?lang=ko&page={}", i % 3 + 1),
                &[],
                "",
            )
            .unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        answered += 1;
    }
    // A graceful reload: the master re-executes itself, workers finish
    // their request and are replaced.
    let master = stack.proc("php-fpm").unwrap().pid();
    kill(Pid::from_raw(master as i32), Signal::SIGUSR2).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let port = stack.web_port;
    wait_for(
        "php-fpm back after the reload",
        Duration::from_secs(10),
        || {
            sonde_e2e::http::request(port, "GET", "/health?probe=1", &[], "")
                .is_ok_and(|r| r.status == 200)
        },
    )
    .unwrap();
    answered += 1; // the probe that answered
    for i in 0..40 {
        let r = stack
            .web(
                "GET",
                &format!("/api/v6/photos?lang=en&page={}", i % 3 + 1),
                &[],
                "",
            )
            .unwrap();
        assert_eq!(r.status, 200, "after reload, request {i}: {}", r.body);
        answered += 1;
    }
    // Probes that failed while php-fpm restarted never reached PHP; count
    // what PHP served: the collector must hold exactly those.
    let mut stored = 0u64;
    let res = wait_for(
        "every answered request stored",
        Duration::from_secs(15),
        || {
            stored = stack.stored_since(from);
            stored >= answered
        },
    );
    if let Err(e) = res {
        panic!(
            "{e}: answered {answered}, stored {stored}\n{}",
            stack.logs()
        );
    }
    std::thread::sleep(Duration::from_millis(1_500));
    let again = stack.stored_since(from);
    assert_eq!(again, answered, "each request stored exactly once");
    let fpm_log = std::fs::read_to_string(stack.path("php-fpm-error.log")).unwrap_or_default();
    assert!(!fpm_log.contains("signal"), "a worker crashed: {fpm_log}");
    assert!(
        fpm_log.contains("reloading"),
        "the reload happened: {fpm_log}"
    );
    let _ = stack.proc("php-fpm");
}
