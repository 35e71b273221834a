//! Open database connections per worker: the extension keeps the count in
//! the worker's scoreboard slot (`db_connections`), where the agent reads
//! it. While a page holds a PDO-MySQL, a mysqli and a pgsql connection its
//! slot says 3 (an SQLite handle, a connection freed, one closed and one
//! that failed do not count); afterwards 0, or 3 when the connections were
//! persistent (they stay open in the worker). The agent sums the slots
//! into its host sample, which reaches the collector.

use std::time::Duration;

use sonde_core::scoreboard as sb;
use sonde_e2e::{http, wait_for, Stack, StackOptions};

/// Every claimed slot of the scoreboard the agent created.
fn slots(stack: &Stack) -> Vec<sb::Slot> {
    let Ok(all) = std::fs::read(stack.path("agent.scoreboard")) else {
        return Vec::new();
    };
    let Some(n) = sb::parse_header(&all) else {
        return Vec::new();
    };
    (0..n)
        .filter_map(|i| {
            let off = sb::slot_offset(i);
            sb::parse_slot(all.get(off..off + sb::SLOT_BYTES)?)
        })
        .collect()
}

/// Runs the page (holding its connections for a while) and returns the
/// count its busy slot showed meanwhile, and the worker's pid.
fn held(stack: &Stack, query: &str) -> (u32, u32) {
    let port = stack.web_port;
    let url = format!("/t/db_conns.php?hold_ms=1500{query}");
    let page = {
        let url = url.clone();
        std::thread::spawn(move || http::request(port, "GET", &url, &[], "").map(|r| r.body))
    };
    let mut seen = None;
    let res = wait_for(
        "the page's busy slot with 3 connections",
        Duration::from_secs(5),
        || {
            seen = slots(stack)
                .into_iter()
                .find(|s| s.busy && s.url == url)
                .map(|s| (s.db_connections, s.pid));
            seen.is_some_and(|(n, _)| n == 3)
        },
    );
    let body = page.join().unwrap().unwrap();
    assert_eq!(body, "held\n");
    if let Err(e) = res {
        panic!("{e}: {seen:?} {:#?}\n{}", slots(stack), stack.logs());
    }
    seen.unwrap()
}

#[test]
fn workers_publish_their_open_database_connections() {
    let stack = Stack::start(&StackOptions {
        agent_extra: "host_metrics_interval_secs = 1".into(),
        ..StackOptions::default()
    })
    .expect("start the stack");
    // Warm every worker once so all four hold a slot.
    for _ in 0..8 {
        http::request(stack.web_port, "GET", "/health", &[], "").unwrap();
    }

    let (n, pid) = held(&stack, "");
    assert_eq!(n, 3);
    // Once the request is over its connections are closed.
    let after = wait_for("the slot back at 0", Duration::from_secs(5), || {
        slots(&stack)
            .iter()
            .any(|s| s.pid == pid && !s.busy && s.db_connections == 0)
    });
    after.unwrap_or_else(|e| panic!("{e}: {:#?}", slots(&stack)));

    // Persistent connections stay open in the worker after the request.
    let (n, pid) = held(&stack, "&persistent=1");
    assert_eq!(n, 3);
    let after = wait_for("the slot keeping 3", Duration::from_secs(5), || {
        slots(&stack)
            .iter()
            .any(|s| s.pid == pid && !s.busy && s.db_connections == 3)
    });
    after.unwrap_or_else(|e| panic!("{e}: {:#?}", slots(&stack)));
    let total: u32 = slots(&stack).iter().map(|s| s.db_connections).sum();
    assert_eq!(total, 3, "{:#?}", slots(&stack));

    // The agent's host sample sums the slots; the collector shows it.
    let mut last = serde_json::Value::Null;
    let shown = wait_for(
        "db_connections 3 at the collector",
        Duration::from_secs(20),
        || {
            let from = sonde_e2e::now_ms() - 10_000;
            last = stack
                .api(&format!("/api/v1/hosts/series?from={from}"))
                .map(|v| {
                    v["hosts"][0]["points"]
                        .as_array()
                        .and_then(|p| p.last().cloned())
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            last["db_connections"] == 3
        },
    );
    shown.unwrap_or_else(|e| panic!("{e}: {last}\n{}", stack.logs()));
}
