//! `kill -9` of the agent while its batches wait for acknowledgements: the
//! collector is frozen (SIGSTOP), so the records of a burst sit in the
//! agent's memory — sent, not acknowledged, not spooled — for longer than
//! the ring's old fixed release lag (3 s) but less than the agent's
//! acknowledgement timeout (10 s, after which it would spool them). The
//! agent is killed then, a new one starts on the same socket, and the
//! collector comes back (resumed, or restarted having lost what sat in its
//! socket buffers): every request is stored exactly once, or counted as
//! dropped — the ring must still hold whatever the dead agent had not made
//! durable.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sonde_e2e::{http, now_ms, wait_for, Stack, StackOptions};

/// Requests of the burst sent while the collector is frozen.
const BURST: u64 = 400;
/// How long the burst's records wait in the agent after the last one was
/// read from the ring: past the old release lag (3 s)…
const HELD_FOR: Duration = Duration::from_millis(4_500);
/// …and the kill comes before the agent's acknowledgement timeout (10 s
/// from the oldest batch sent, at the earliest the moment of the freeze).
const KILL_BEFORE: Duration = Duration::from_secs(9);

fn pid_of(stack: &Stack, name: &str) -> Pid {
    let p = stack.procs.iter().find(|p| p.name == name).unwrap();
    Pid::from_raw(p.pid() as i32)
}

/// `n` requests on 4 threads, each answering 200.
fn load(port: u16, n: u64, tag: &str) {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let tag = tag.to_string();
            std::thread::spawn(move || {
                for i in (t..n).step_by(4) {
                    let r =
                        http::request(port, "GET", &format!("/health?{tag}={i}"), &[], "").unwrap();
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// What becomes of the frozen collector once the agent is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collector {
    /// It resumes (SIGCONT) and reads what the dead agent had sent into
    /// its socket before dying: those records arrive twice.
    Resumes,
    /// It is killed and started again: what the dead agent had sent dies
    /// with its socket buffers, as when a collector crashes or the
    /// network loses it. Only the ring still has those records.
    Restarts,
}

/// Freeze the collector, send a burst, let it wait in the agent's
/// unacknowledged batches past the old 3 s release lag, `kill -9` the
/// agent, start a new one (same config, spool and socket: a restart),
/// bring the collector back: stored + dropped == made, each request
/// stored once.
fn kill_the_agent_while_acknowledgements_wait(after: Collector) {
    let mut stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    // A few requests stored first: the agent is connected and streaming.
    let warm = 8u64;
    load(stack.web_port, warm, "warm");
    let res = wait_for("the warm-up stored", Duration::from_secs(30), || {
        stack.stored_since(from) == warm
    });
    if let Err(e) = res {
        panic!("{e}\n{}", stack.logs());
    }

    let collector = pid_of(&stack, "collector");
    kill(collector, Signal::SIGSTOP).unwrap();
    let frozen_at = Instant::now();
    // Resume the collector whatever happens below (a stopped process
    // ignores SIGTERM, so the stack could not stop it otherwise).
    struct Resume(Pid);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    let mut resume = Some(Resume(collector));

    load(stack.web_port, BURST, "burst");
    let kill_at = Instant::now() + HELD_FOR;
    assert!(
        kill_at < frozen_at + KILL_BEFORE,
        "the burst took {:?}: too slow to test within the acknowledgement timeout",
        frozen_at.elapsed()
    );
    std::thread::sleep(kill_at - Instant::now());
    let metric = |name| stack.agent_metric(name).unwrap_or(u64::MAX);
    let (received, spooled, acked) = (
        metric("sonde_agent_records_received_total"),
        metric("sonde_agent_records_spooled_total"),
        metric("sonde_agent_records_acked_total"),
    );
    eprintln!(
        "{after:?}: {:?} after the freeze, the agent had received {received} records \
         ({acked} acknowledged, {spooled} spooled); killing it",
        frozen_at.elapsed()
    );
    assert_eq!(
        received,
        warm + BURST,
        "the agent read the whole burst from the ring"
    );
    stack.stop("agent", Signal::SIGKILL);
    if after == Collector::Restarts {
        stack.stop("collector", Signal::SIGKILL);
        std::mem::forget(resume.take());
        stack.spawn_collector().expect("restart the collector");
    }
    // Keep the dead agent's log; the new one (same config, spool and
    // metrics port: a restart) writes its own.
    let _ = std::fs::rename(stack.path("agent.log"), stack.path("agent-killed.log"));
    let (token, socket) = (stack.agent_token.clone(), stack.agent_socket.clone());
    stack
        .start_agent("agent", &token, &socket)
        .expect("a new agent on the same socket");
    drop(resume);

    let made = warm + BURST;
    let mut last = (0, 0);
    let balanced = wait_for("stored + dropped == made", Duration::from_secs(40), || {
        last = (stack.stored_since(from), stack.dropped_total());
        last.0 + last.1 >= made
    });
    // Repeats would show up late: give them time.
    std::thread::sleep(Duration::from_millis(1_500));
    last = (stack.stored_since(from), stack.dropped_total());
    eprintln!(
        "{after:?}: made {made}: stored {}, dropped {}; the new agent read {} records again",
        last.0,
        last.1,
        stack
            .agent_metric("sonde_agent_records_received_total")
            .unwrap_or(0)
    );
    if let Err(e) = balanced {
        panic!(
            "{e}: made {made}, stored {}, dropped {}\n{}",
            last.0,
            last.1,
            stack.logs()
        );
    }
    assert_eq!(
        last.0 + last.1,
        made,
        "each request stored once or counted as dropped"
    );
    assert_eq!(last.1, 0, "nothing needed to be dropped");
}

#[test]
fn a_kill_9_while_the_collector_is_frozen_loses_nothing() {
    kill_the_agent_while_acknowledgements_wait(Collector::Restarts);
}

#[test]
fn a_kill_9_while_the_collector_is_frozen_stores_nothing_twice() {
    kill_the_agent_while_acknowledgements_wait(Collector::Resumes);
}

/// The other way round: an agent stopped cleanly (SIGTERM) frees the ring
/// space of everything it made durable, so the next one reads nothing again.
#[test]
fn an_agent_stopped_cleanly_leaves_nothing_to_read_again() {
    let mut stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let made = 50u64;
    load(stack.web_port, made, "clean");
    let res = wait_for("every request stored", Duration::from_secs(30), || {
        stack.stored_since(from) == made
    });
    if let Err(e) = res {
        panic!("{e}\n{}", stack.logs());
    }
    let status = stack.stop("agent", Signal::SIGTERM);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let _ = std::fs::rename(stack.path("agent.log"), stack.path("agent-stopped.log"));
    let (token, socket) = (stack.agent_token.clone(), stack.agent_socket.clone());
    stack
        .start_agent("agent", &token, &socket)
        .expect("a new agent on the same socket");
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(
        stack
            .agent_metric("sonde_agent_records_received_total")
            .unwrap(),
        0,
        "nothing read again"
    );
    assert_eq!(stack.stored_since(from), made);
}
