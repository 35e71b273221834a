//! SIGHUP reloads the agent's configuration while it runs (the real agent
//! and collector): an agent started with a wrong token is refused; after
//! the file gets the right token and SIGHUP, it reconnects at once and
//! registers, its log level follows the file, a key that needs a restart is
//! named in a warning, and a broken file is refused while the agent carries
//! on.

use std::fs;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sonde_e2e::{artifact, wait_for, Proc, Stack, StackOptions};

#[test]
fn sighup_applies_token_and_log_level_and_refuses_a_broken_file() -> Result<()> {
    let stack = Stack::start(&StackOptions {
        agent: false,
        extension: false,
        web: false,
        ..StackOptions::default()
    })?;
    let cfg = stack.path("reload-agent.toml");
    let write = |token: &str, extra: &str| {
        fs::write(
            &cfg,
            format!(
                "collector = \"http://127.0.0.1:{port}\"\ntoken = \"{token}\"\nsocket = \"{sock}\"\n\
                 socket_group = \"root\"\nspool_dir = \"{spool}\"\nmetrics_listen = \"\"\n\
                 host_metrics_interval_secs = 0\nhostname = \"reload-host\"\n{extra}\n\
                 [cloud]\nprovider = \"none\"\n",
                port = stack.grpc_port,
                sock = stack.path("reload.sock").display(),
                spool = stack.path("reload-spool").display(),
            ),
        )
    };
    write("not-the-token", "")?;
    let mut cmd = Command::new(artifact("sonde-agent")?);
    // No RUST_LOG: the file's log level rules.
    cmd.arg("--config").arg(&cfg).env_remove("RUST_LOG");
    let mut agent = Proc::start("reload-agent", cmd, stack.path("reload-agent.log"))?;
    let pid = Pid::from_raw(agent.pid() as i32);
    let registered = || {
        stack
            .agents()
            .iter()
            .any(|a| a["hostname"] == "reload-host" && a["status"] == "up")
    };
    let result = (|| -> Result<()> {
        wait_for("the refusal", Duration::from_secs(10), || {
            agent.log_text().contains("refused the agent token")
        })?;
        ensure!(!registered(), "a wrong token does not register");
        ensure!(!agent.log_text().contains("DEBUG"), "info level at first");

        // The refused agent waits the longest backoff; a reload cuts it short.
        write(
            &stack.agent_token,
            "spool_max_bytes = 2097152\n[log]\nlevel = \"debug\"",
        )?;
        kill(pid, Signal::SIGHUP)?;
        wait_for(
            "registered after SIGHUP",
            Duration::from_secs(5),
            registered,
        )?;
        let log = agent.log_text();
        ensure!(log.contains("SIGHUP: configuration reloaded"), "{log}");
        ensure!(
            log.contains("take effect only after a restart") && log.contains("spool_max_bytes"),
            "{log}"
        );
        wait_for("debug lines", Duration::from_secs(10), || {
            agent.log_text().contains("DEBUG")
        })?;

        fs::write(
            &cfg,
            "collector = \"http://127.0.0.1:1\"\nno_such_key = 1\n",
        )?;
        kill(pid, Signal::SIGHUP)?;
        wait_for("the broken file refused", Duration::from_secs(5), || {
            agent.log_text().contains("was not reloaded")
        })?;
        ensure!(agent.log_text().contains("no_such_key"), "names the key");
        std::thread::sleep(Duration::from_millis(500));
        ensure!(agent.alive(), "still running");
        ensure!(registered(), "still connected with the running settings");
        Ok(())
    })();
    if let Err(e) = result {
        anyhow::bail!("{e:#}\n{}", agent.log_text());
    }
    let st = agent.stop_with(Signal::SIGTERM, Duration::from_secs(15));
    ensure!(st.is_some_and(|s| s.success()), "clean exit: {st:?}");
    Ok(())
}
