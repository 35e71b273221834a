//! php-fpm pool metrics on the real stack (a static pool of 4 workers):
//! while two requests sit in a slow SQL statement, the agent's host sample
//! shows 2 workers active and 2 idle from the extension's scoreboard alone;
//! with the pool's status page configured (`pm.status_path`, nginx in front,
//! `fpm_status_urls`), it shows php-fpm's own counts — the two slow requests
//! plus the status request itself — and the listen queue. Both reach the
//! collector (`/api/v1/hosts/series`). The host figures sum every php-fpm
//! pool on the machine, so the test counts from a baseline taken before its
//! requests (CI runs this binary alone; another php-fpm busy meanwhile
//! would disturb it).

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::Value;
use sonde_e2e::{http, now_ms, wait_for, Stack, StackOptions};

/// The latest host sample that satisfies `cond`, waiting up to 20 s.
fn sample_where(stack: &Stack, cond: impl Fn(&Value) -> bool) -> Result<Value> {
    let mut found = Value::Null;
    wait_for("a host sample", Duration::from_secs(20), || {
        let from = now_ms() - 60_000;
        let Ok(v) = stack.api(&format!("/api/v1/hosts/series?from={from}")) else {
            return false;
        };
        let points = v["hosts"][0]["points"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match points.iter().rev().find(|p| cond(p)) {
            Some(p) => {
                found = p.clone();
                true
            }
            None => false,
        }
    })?;
    Ok(found)
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(u64::MAX)
}

/// Two requests held in `SELECT SLEEP(6)` on background threads.
fn two_slow_requests(stack: &Stack) -> Vec<std::thread::JoinHandle<()>> {
    (0..2)
        .map(|_| {
            let port = stack.web_port;
            std::thread::spawn(move || {
                let r = http::request(port, "GET", "/t/sleep_sql.php?s=6", &[], "").unwrap();
                assert_eq!(r.status, 200, "{}", r.body);
            })
        })
        .collect()
}

#[test]
fn pool_workers_from_the_scoreboard_and_from_the_status_page() -> Result<()> {
    // The scoreboard alone.
    let stack = Stack::start(&StackOptions {
        agent_extra: "host_metrics_interval_secs = 1".into(),
        ..StackOptions::default()
    })?;
    let base = stack.with_logs(
        sample_where(&stack, |p| p["fpm_idle"].as_u64() >= Some(4)),
        10_000,
    )?;
    let (a0, i0) = (n(&base["fpm_active"]), n(&base["fpm_idle"]));
    let slow = two_slow_requests(&stack);
    let busy = sample_where(&stack, |p| n(&p["fpm_active"]) == a0 + 2);
    let busy = stack.with_logs(busy, 10_000)?;
    ensure!(
        n(&busy["fpm_idle"]) == i0 - 2,
        "4 workers, 2 busy (from {base}): {busy}"
    );
    for t in slow {
        t.join().unwrap();
    }
    let calm = sample_where(&stack, |p| n(&p["fpm_active"]) == a0);
    let calm = stack.with_logs(calm, 10_000)?;
    ensure!(n(&calm["fpm_idle"]) == i0, "{calm}");
    drop(stack);

    // With php-fpm's status page.
    let stack = Stack::start(&StackOptions {
        agent_extra: "host_metrics_interval_secs = 1\n\
                      fpm_status_urls = [\"http://127.0.0.1:{web_port}/fpm-status\"]"
            .into(),
        fpm_pool: vec!["pm.status_path = /fpm-status".into()],
        ..StackOptions::default()
    })?;
    let page = http::request(stack.web_port, "GET", "/fpm-status?json", &[], "")?;
    ensure!(
        page.status == 200 && page.body.contains("\"listen queue\""),
        "{}",
        page.body
    );
    let base = stack.with_logs(
        sample_where(&stack, |p| p["fpm_idle"].as_u64() >= Some(3)),
        10_000,
    )?;
    let (a0, i0) = (n(&base["fpm_active"]), n(&base["fpm_idle"]));
    ensure!(
        a0 >= 1,
        "php-fpm counts its status request as active (the scoreboard cannot see it): {base}"
    );
    let slow = two_slow_requests(&stack);
    // php-fpm's own count: the two slow requests more than the baseline
    // (which already counts the status request itself).
    let busy = sample_where(&stack, |p| n(&p["fpm_active"]) == a0 + 2);
    let busy = stack.with_logs(busy, 10_000)?;
    ensure!(n(&busy["fpm_idle"]) == i0 - 2, "(from {base}) {busy}");
    ensure!(busy["fpm_listen_queue"] == 0, "{busy}");
    for t in slow {
        t.join().unwrap();
    }
    Ok(())
}
