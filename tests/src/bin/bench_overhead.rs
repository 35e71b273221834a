//! Benchmark: the extension's cost on a real page, measured against a
//! baseline in the same run. Starts nginx + php-fpm (4 static workers) three
//! ways — without the extension, with it and no agent, with it and the real
//! agent + collector — and for each runs `wrk` against a demo endpoint,
//! reporting throughput and php-fpm CPU per request (utime+stime of the pool
//! from /proc). Runs alternate A/B/C `rounds` times to spread noise.
//!
//! Usage: cargo run --release -p sonde-e2e --bin bench_overhead -- [secs] [rounds] [path]
//! (path defaults to /t/bench_page.php: 10 PDO-MySQL statements, a fetch of
//! 100 rows and one curl call)
//! (build the release binaries first: `cargo build --release`; SONDE_BIN_DIR
//! defaults to target/release here). Needs `wrk` (Debian package).
#![forbid(unsafe_code)]

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sonde_e2e::{Stack, StackOptions};

fn fpm_cpu_ticks(master: u32) -> Result<u64> {
    // The master and its workers (children).
    let mut pids = vec![master];
    let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))?;
    pids.extend(
        children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok()),
    );
    let mut total = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the ")" of comm: utime is the 14th field, stime the 15th.
        let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        total += f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    }
    Ok(total)
}

struct Run {
    rps: f64,
    cpu_us_per_req: f64,
}

fn measure(stack: &mut Stack, path: &str, secs: u64) -> Result<Run> {
    let master = stack.proc("php-fpm").context("php-fpm")?.pid();
    let url = format!("http://127.0.0.1:{}{path}", stack.web_port);
    // Warm up (opcache, connections, DB file).
    Command::new("wrk")
        .args(["-t1", "-c4", "-d1s", &url])
        .output()?;
    let before = fpm_cpu_ticks(master)?;
    let out = Command::new("wrk")
        .args(["-t1", "-c4", &format!("-d{secs}s"), &url])
        .output()
        .context("run wrk (apt-get install wrk)")?;
    let after = fpm_cpu_ticks(master)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let requests: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("wrk output: {text}"))?;
    if text.contains("Non-2xx") {
        bail!("non-2xx responses: {text}");
    }
    // /proc reports clock ticks; USER_HZ is 100 on Linux x86_64 and arm64.
    let cpu_s = (after - before) as f64 / 100.0;
    Ok(Run {
        rps: requests / secs as f64,
        cpu_us_per_req: cpu_s * 1e6 / requests,
    })
}

fn main() -> Result<()> {
    if std::env::var_os("SONDE_BIN_DIR").is_none() {
        std::env::set_var(
            "SONDE_BIN_DIR",
            sonde_e2e::repo_root().join("target/release"),
        );
    }
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let path = args
        .get(3)
        .map(String::as_str)
        .unwrap_or("/t/bench_page.php");
    let configs = [
        (
            "without extension",
            StackOptions {
                collector: false,
                agent: false,
                extension: false,
                ..Default::default()
            },
        ),
        (
            "extension, no agent",
            StackOptions {
                collector: false,
                agent: false,
                extension: true,
                ..Default::default()
            },
        ),
        ("extension + agent + collector", StackOptions::default()),
    ];
    let mut results: Vec<Vec<Run>> = configs.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, (name, opts)) in configs.iter().enumerate() {
            let mut stack = Stack::start(opts)?;
            std::thread::sleep(Duration::from_millis(300));
            let r = measure(&mut stack, path, secs)?;
            eprintln!(
                "round {round} {name:32} {:8.0} req/s {:8.1} µs CPU/req",
                r.rps, r.cpu_us_per_req
            );
            results[i].push(r);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let base_rps = median(results[0].iter().map(|r| r.rps).collect());
    let base_cpu = median(results[0].iter().map(|r| r.cpu_us_per_req).collect());
    // Also each round's ratio to the baseline run just before it: the
    // machine's speed drifts between rounds more than within one.
    let paired = |i: usize, f: fn(&Run) -> f64| -> (f64, f64, f64) {
        let mut v: Vec<f64> = results[i]
            .iter()
            .zip(&results[0])
            .map(|(r, b)| f(r) / f(b))
            .collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    println!("| configuration | req/s (median) | ratio | php-fpm CPU µs/req (median) | ratio | per-round req/s ratio: median (min–max) | per-round CPU ratio: median (min–max) |");
    println!("|---|---|---|---|---|---|---|");
    for (i, (name, _)) in configs.iter().enumerate() {
        let rps = median(results[i].iter().map(|r| r.rps).collect());
        let cpu = median(results[i].iter().map(|r| r.cpu_us_per_req).collect());
        let (pr, pr_lo, pr_hi) = paired(i, |r| r.rps);
        let (pc, pc_lo, pc_hi) = paired(i, |r| r.cpu_us_per_req);
        println!(
            "| {name} | {rps:.0} | ×{:.3} | {cpu:.1} | ×{:.3} | ×{pr:.3} ({pr_lo:.3}–{pr_hi:.3}) | ×{pc:.3} ({pc_lo:.3}–{pc_hi:.3}) |",
            rps / base_rps,
            cpu / base_cpu
        );
    }
    Ok(())
}
