//! Shared by the packaging tests (`packaging.rs`, `install.rs`): running a
//! command and building both .deb files with `packaging/build-deb.sh` from
//! the binaries this test was built with (target/debug, or SONDE_BIN_DIR).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use sonde_e2e::{artifact, repo_root};

/// Runs `cmd`; its stdout, or an error with the status and both outputs.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The two packages `build-deb.sh` wrote.
#[derive(Debug, Clone)]
pub struct Debs {
    pub agent: PathBuf,
    pub collector: PathBuf,
}

/// Builds both packages into `out`, for PHP 8.2 (API 20220829) whatever PHP
/// is installed here, and checks the script's output contract: the .deb
/// paths, agent first, one per line, as the last lines.
pub fn build(out: &Path) -> Result<Debs> {
    let agent = artifact("sonde-agent")?;
    artifact("libsonde_php.so")?;
    artifact("sonde-collector")?;
    let bin_dir = agent.parent().context("bin dir")?;
    let stdout = run(Command::new(repo_root().join("packaging/build-deb.sh"))
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--out")
        .arg(out)
        .env("PHP_VERSION", "8.2")
        .env("PHP_API", "20220829"))?;
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    ensure!(lines.len() >= 2, "build-deb.sh printed {stdout:?}");
    let arch = run(Command::new("dpkg").arg("--print-architecture"))?;
    let version = env!("CARGO_PKG_VERSION");
    let want = |name: &str| out.join(format!("{name}_{version}_{}.deb", arch.trim()));
    let debs = Debs {
        agent: want("sonde-agent"),
        collector: want("sonde-collector"),
    };
    ensure!(
        lines[lines.len() - 2..]
            == [
                debs.agent.to_string_lossy().as_ref(),
                debs.collector.to_string_lossy().as_ref()
            ],
        "build-deb.sh's last lines are not the two .deb paths: {stdout:?}"
    );
    ensure!(debs.agent.is_file() && debs.collector.is_file(), "{debs:?}");
    Ok(debs)
}

/// Waits until the collector started as `p` answers `GET /healthz` on
/// `http_port`; fails at once, with its log, if it exits first.
pub fn wait_healthy(p: &mut sonde_e2e::Proc, http_port: u16) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if sonde_e2e::http::request(http_port, "GET", "/healthz", &[], "")
            .is_ok_and(|r| r.status == 200)
        {
            return Ok(());
        }
        ensure!(
            p.alive(),
            "{} exited during start-up:\n{}",
            p.name,
            p.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    anyhow::bail!("{} did not answer within 20 s:\n{}", p.name, p.log_text())
}
