//! The extension under opcache with the tracing JIT and preloading: a long
//! run of requests whose hot loops call hooked functions, with no crash and
//! the same answer every time, and the records still arrive.

use std::process::Command;
use std::time::Duration;

use sonde_e2e::{now_ms, repo_root, wait_for, Stack, StackOptions};

#[test]
fn tracing_jit_and_preload_run_many_requests_unharmed() {
    let preload = repo_root().join("tests/php/preload.php");
    let stack = Stack::start(&StackOptions {
        fpm_ini: vec![
            "opcache.enable=1".into(),
            "opcache.jit=tracing".into(),
            "opcache.jit_buffer_size=32M".into(),
            "opcache.jit_hot_loop=1".into(),
            "opcache.jit_hot_func=1".into(),
            format!("opcache.preload={}", preload.display()),
            "opcache.preload_user=root".into(),
        ],
        ..Default::default()
    })
    .expect("start the stack with JIT");
    let from = now_ms() - 1_000;

    let status = stack.web("GET", "/t/jit.php?status=1", &[], "").unwrap();
    assert_eq!(
        status.body,
        r#"{"jit":true,"preloaded":true}"#,
        "{}",
        stack.logs()
    );
    let first = stack.web("GET", "/t/jit.php", &[], "").unwrap();
    assert_eq!((first.status, first.body.as_str()), (200, "5700\n"));

    // A sustained run (wrk: bounded in time, loopback only): 80 s here is
    // ≈ 100,000 requests; SONDE_JIT_SECS changes it.
    let secs = std::env::var("SONDE_JIT_SECS").unwrap_or_else(|_| "80".into());
    let url = format!("http://127.0.0.1:{}/t/jit.php", stack.web_port);
    let out = Command::new("wrk")
        .args(["-t1", "-c4", &format!("-d{secs}s"), &url])
        .output()
        .expect("run wrk (the README's test command installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "{text}"
    );
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("wrk said: {text}"));
    assert!(requests > 40_000, "only {requests} requests: {text}");
    let last = stack.web("GET", "/t/jit.php", &[], "").unwrap();
    assert_eq!(last.body, "5700\n");

    // No worker crashed (php-fpm logs a child exiting on a signal).
    let fpm_log = std::fs::read_to_string(stack.path("php-fpm-error.log")).unwrap_or_default();
    assert!(!fpm_log.contains("signal"), "{fpm_log}");
    // And the traced requests reached the collector.
    let ok = wait_for("records of the JIT run", Duration::from_secs(20), || {
        stack
            .api(&format!(
                "/api/v1/transactions?from={from}&to={}&limit=1",
                now_ms() + 60_000
            ))
            .is_ok_and(|v| v["truncated"] == true)
    });
    ok.unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    eprintln!("{requests} requests under the tracing JIT");
}
