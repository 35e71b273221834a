//! The in-flight view: requests running now show in the collector with the
//! SQL they are running, and a worker killed mid-request becomes a failed
//! transaction that says what it was doing.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use sonde_core::scoreboard as sb;
use sonde_e2e::{now_ms, wait_for, Stack, StackOptions};

/// Busy slots of the scoreboard the agent created: (pid, url).
fn busy_workers(stack: &Stack) -> Vec<(u32, String)> {
    let Ok(all) = std::fs::read(stack.path("agent.scoreboard")) else {
        return Vec::new();
    };
    let Some(slots) = sb::parse_header(&all) else {
        return Vec::new();
    };
    (0..slots)
        .filter_map(|i| {
            let off = sb::slot_offset(i);
            sb::parse_slot(all.get(off..off + sb::SLOT_BYTES)?)
        })
        .filter(|s| s.busy)
        .map(|s| (s.pid, s.url))
        .collect()
}

#[test]
fn running_requests_show_and_a_killed_worker_is_a_failed_transaction() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let port = stack.web_port;
    let slow = std::thread::spawn(move || {
        sonde_e2e::http::request(port, "GET", "/t/sleep_sql.php?s=4", &[], "").map(|r| r.status)
    });

    // Within a couple of seconds the collector shows it running, with its SQL.
    let mut active = Value::Null;
    let seen = wait_for(
        "the request in /api/v1/active",
        Duration::from_secs(4),
        || {
            active = stack.api("/api/v1/active").unwrap_or(Value::Null);
            active["active"].as_array().is_some_and(|a| {
                a.iter().any(|r| {
                    r["endpoint"] == "/t/sleep_sql.php" && r["current"] == "SELECT SLEEP(?)"
                })
            })
        },
    );
    if let Err(e) = seen {
        panic!("{e}: {active:#}\n{}", stack.logs());
    }
    let busy: u64 = active["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .sum();
    assert!(busy >= 1, "{active:#}");

    // Kill the worker running it.
    let workers = busy_workers(&stack);
    let (pid, _) = workers
        .iter()
        .find(|(_, url)| url.starts_with("/t/sleep_sql.php"))
        .cloned()
        .unwrap_or_else(|| panic!("no busy slot for the request: {workers:?}"));
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let status = slow.join().unwrap().unwrap();
    assert_eq!(status, 502, "nginx answers 502 for the dead worker");

    let mut failed = None;
    let res = wait_for(
        "the orphaned request as a failed transaction",
        Duration::from_secs(10),
        || {
            let v = stack
                .api(&format!(
                    "/api/v1/transactions?from={from}&to={}&errors_only=true",
                    now_ms() + 60_000
                ))
                .unwrap_or(Value::Null);
            failed = v["transactions"].as_array().and_then(|a| {
                a.iter()
                    .find(|t| t["endpoint"] == "/t/sleep_sql.php")
                    .cloned()
            });
            failed.is_some()
        },
    );
    if let Err(e) = res {
        panic!("{e}\n{}", stack.logs());
    }
    let t = failed.unwrap();
    assert_eq!(t["error"], true);
    let d = stack
        .api(&format!(
            "/api/v1/transactions/{}",
            t["id"].as_str().unwrap()
        ))
        .unwrap();
    assert_eq!(d["error"]["class"], "WorkerDied", "{d}");
    let msg = d["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("pid {pid}")) && msg.contains("SELECT SLEEP(?)"),
        "{msg}"
    );
    assert!(d["elapsed_ms"].as_f64().unwrap() >= 500.0, "{d}");
}
