//! The agent frozen (SIGSTOP) under load: every page still answers at once
//! (the extension never waits), the records wait in the shared-memory ring,
//! and afterwards every request is accounted for — stored in the collector
//! or counted as dropped — exactly, with nothing dropped.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sonde_e2e::{http, now_ms, wait_for, Stack, StackOptions};

/// Waits until stored + dropped == `made` and returns (stored, dropped).
fn balance(stack: &Stack, from: i64, made: u64, timeout: Duration) -> (u64, u64) {
    let mut last = (0, 0);
    let balanced = wait_for("stored + dropped == made", timeout, || {
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
    last
}

/// Sends `n` requests on 4 threads; every one must answer 200.
fn load(stack: &Stack, n: usize, pad: &str) {
    let port = stack.web_port;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let pad = pad.to_string();
            std::thread::spawn(move || {
                for i in (t..n).step_by(4) {
                    let r =
                        http::request(port, "GET", &format!("/health?i={i}&pad={pad}"), &[], "")
                            .unwrap();
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_frozen_agent_never_slows_php_and_the_ledger_balances() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    // Large records (a 4 KB URL each) so the socket buffers fill quickly.
    let pad = "x".repeat(4000);
    let (before, during, after) = (100, 1500, 200);

    load(&stack, before, &pad);
    let agent = stack
        .procs
        .iter()
        .find(|p| p.name == "agent")
        .unwrap()
        .pid();
    kill(Pid::from_raw(agent as i32), Signal::SIGSTOP).unwrap();
    // While it is frozen, every page is served: nothing waits on the agent.
    load(&stack, during, &pad);
    kill(Pid::from_raw(agent as i32), Signal::SIGCONT).unwrap();
    // More traffic, so each worker reports what it had to drop.
    load(&stack, after, "");

    let made = (before + during + after) as u64;
    let last = balance(&stack, from, made, Duration::from_secs(30));
    // The shared-memory ring holds the records of the stall: none is lost.
    assert_eq!(
        last.1, 0,
        "records dropped during a short stall (stored {})",
        last.0
    );
    eprintln!(
        "made {made}: stored {}, dropped and counted {}",
        last.0, last.1
    );
}

/// php-cgi runs a page `n` times in one process — each run a full request
/// through the extension's real send path (the shared-memory ring) — as
/// fast as it can (≈ 10,000 requests/s with the debug build the tests use,
/// more with a release build; printed, not asserted), and still every
/// request is stored or counted as dropped.
#[test]
fn a_fast_sender_keeps_the_ledger() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let n: u64 = 50_000;
    let page = sonde_e2e::repo_root().join("bench/empty.php");
    let so = sonde_e2e::artifact("libsonde_php.so").unwrap();
    let cgi = ["/usr/bin/php-cgi8.2", "/usr/bin/php-cgi"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("php-cgi (the README's test command installs php8.2-cgi)");
    let started = std::time::Instant::now();
    let out = std::process::Command::new(cgi)
        .arg("-q")
        .arg("-d")
        .arg(format!("extension={}", so.display()))
        .arg("-d")
        .arg(format!(
            "sonde.agent_socket={}",
            stack.agent_socket.display()
        ))
        .args(["-d", "sonde.app_name=fanapp", "-T", &n.to_string()])
        .arg(&page)
        .output()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len() as u64, 2 * n, "every run printed its page");
    let rate = n as f64 / secs;

    eprintln!("{n} requests sent at {rate:.0}/s");
    let last = balance(&stack, from, n, Duration::from_secs(60));
    eprintln!(
        "{n} requests at {rate:.0}/s: stored {}, dropped {}",
        last.0, last.1
    );
}

/// `kill -9` of the agent under load, then a new agent on the same socket:
/// PHP never notices, and every request is stored exactly once — what the
/// dead agent had read but not made durable is read again from the ring, and
/// the collector drops the repeats by record id.
#[test]
fn an_agent_killed_under_load_loses_nothing_and_stores_nothing_twice() {
    let mut stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let made = 1_200u64;
    let port = stack.web_port;
    let load = std::thread::spawn(move || {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in (t..made as usize).step_by(4) {
                        let r =
                            http::request(port, "GET", &format!("/health?k={i}"), &[], "").unwrap();
                        assert_eq!(r.status, 200);
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(400));
    let agent = stack
        .procs
        .iter()
        .find(|p| p.name == "agent")
        .unwrap()
        .pid();
    kill(Pid::from_raw(agent as i32), Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (token, socket) = (stack.agent_token.clone(), stack.agent_socket.clone());
    stack
        .start_agent("agent2", &token, &socket)
        .expect("a new agent on the same socket");
    load.join().unwrap();

    let count = || stack.stored_since(from);
    let mut stored = 0;
    let res = wait_for("every request stored", Duration::from_secs(30), || {
        stored = count();
        stored >= made
    });
    if let Err(e) = res {
        panic!("{e}: made {made}, stored {stored}\n{}", stack.logs());
    }
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(count(), made, "each request stored exactly once");
}
