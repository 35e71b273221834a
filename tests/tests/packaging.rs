//! Builds the agent's .deb with `packaging/build-deb.sh` from the binaries
//! this test was built with (target/debug, or SONDE_BIN_DIR) and checks what
//! is in it with `dpkg-deb -c`, `-I` and `-e`. Nothing is installed.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use sonde_e2e::{artifact, repo_root};

fn run(cmd: &mut Command) -> Result<String> {
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

/// `(mode, owner, path)` of each entry in `dpkg-deb -c` output.
fn entries(listing: &str) -> Vec<(String, String, String)> {
    listing
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(5)?.trim_start_matches('.');
            Some((f[0].to_owned(), f[1].to_owned(), path.to_owned()))
        })
        .collect()
}

#[test]
fn the_agent_deb_holds_binary_unit_conffiles_and_the_php_extension() -> Result<()> {
    let agent = artifact("sonde-agent")?;
    artifact("libsonde_php.so")?;
    let bin_dir = agent.parent().context("bin dir")?;
    let out = tempfile::tempdir()?;
    // Pinned so that the test does not depend on the PHP installed here.
    let stdout = run(Command::new(repo_root().join("packaging/build-deb.sh"))
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--out")
        .arg(out.path())
        .env("PHP_VERSION", "8.2")
        .env("PHP_API", "20220829"))?;
    let deb = Path::new(stdout.lines().last().context("no output")?.trim()).to_path_buf();
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    ensure!(
        name.starts_with("sonde-agent_") && name.ends_with(".deb"),
        "{name}"
    );
    let arch = run(Command::new("dpkg").arg("--print-architecture"))?;
    ensure!(
        name == format!(
            "sonde-agent_{}_{}.deb",
            env!("CARGO_PKG_VERSION"),
            arch.trim()
        ),
        "{name}"
    );
    ensure!(deb.is_file(), "{} missing", deb.display());

    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb))?;
    let entries = entries(&listing);
    let find = |path: &str| entries.iter().find(|(_, _, p)| p == path);
    for (path, mode) in [
        ("/usr/bin/sonde-agent", "-rwxr-xr-x"),
        ("/lib/systemd/system/sonde-agent.service", "-rw-r--r--"),
        ("/etc/sonde/agent.toml", "-rw-r-----"),
        ("/usr/lib/php/20220829/sonde.so", "-rw-r--r--"),
        ("/etc/php/8.2/mods-available/sonde.ini", "-rw-r--r--"),
        ("/usr/share/doc/sonde-agent/copyright", "-rw-r--r--"),
    ] {
        let (m, owner, _) = find(path).with_context(|| format!("{path} not in\n{listing}"))?;
        ensure!(m == mode, "{path}: mode {m}, want {mode}");
        ensure!(owner == "root/root", "{path}: owner {owner}");
    }
    ensure!(
        entries.iter().all(|(_, owner, _)| owner == "root/root"),
        "{listing}"
    );

    let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb))?;
    for want in [
        "Package: sonde-agent",
        &format!("Version: {}", env!("CARGO_PKG_VERSION")),
        "Depends: libc6, phpapi-20220829",
        "conffiles",
        "postinst",
        "prerm",
        "postrm",
    ] {
        ensure!(info.contains(want), "{want:?} not in\n{info}");
    }

    let control = out.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control))?;
    let conffiles = std::fs::read_to_string(control.join("conffiles"))?;
    ensure!(
        conffiles.lines().collect::<Vec<_>>()
            == [
                "/etc/sonde/agent.toml",
                "/etc/php/8.2/mods-available/sonde.ini"
            ],
        "{conffiles}"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        run(Command::new("sh").arg("-n").arg(&path))?;
        let text = std::fs::read_to_string(&path)?;
        ensure!(!text.contains('@'), "{script}: unreplaced placeholder");
    }
    let postinst = std::fs::read_to_string(control.join("postinst"))?;
    for want in [
        "php_invoke enmod \"$PHP_VERSION\" ALL sonde",
        "phpenmod -v \"$PHP_VERSION\" -s ALL sonde",
        "deb-systemd-helper",
        "PHP_VERSION=\"8.2\"",
    ] {
        ensure!(postinst.contains(want), "postinst lacks {want:?}");
    }

    // The shipped files are the ones in the tree.
    let files = out.path().join("files");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&files))?;
    let same = |shipped: &str, source: &str| -> Result<()> {
        let a = std::fs::read_to_string(files.join(shipped))?;
        let b = std::fs::read_to_string(repo_root().join(source))?;
        ensure!(a == b, "{shipped} differs from {source}");
        Ok(())
    };
    same("etc/sonde/agent.toml", "packaging/agent.toml")?;
    same(
        "lib/systemd/system/sonde-agent.service",
        "systemd/sonde-agent.service",
    )?;
    same(
        "etc/php/8.2/mods-available/sonde.ini",
        "packaging/sonde.ini",
    )?;
    Ok(())
}
