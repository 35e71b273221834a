//! Builds both .deb files with `packaging/build-deb.sh` from the binaries
//! this test was built with (target/debug, or SONDE_BIN_DIR) and checks what
//! is in them with `dpkg-deb` and lintian; checks that the shipped
//! configuration files work (the collector starts from collector.toml) and
//! agree with the units and maintainer scripts; validates the Packer
//! template and the cloud-init user data. Nothing is installed here: that
//! is `install.rs`.

mod deb;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use deb::{run, Debs};
use sonde_e2e::{artifact, free_port, repo_root, Proc};

/// Both packages, built once for all the tests of this file (into cargo's
/// scratch directory for integration tests, replaced on every run).
fn debs() -> Result<Debs> {
    static DEBS: OnceLock<Result<Debs, String>> = OnceLock::new();
    DEBS.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packaging-debs");
        let _ = std::fs::remove_dir_all(&out);
        deb::build(&out).map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
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

/// Checks the listing of `deb` against `(path, mode)` and that everything
/// is root's; returns the listing.
fn check_files(deb: &Path, want: &[(&str, &str)]) -> Result<String> {
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    let entries = entries(&listing);
    for (path, mode) in want {
        let (m, owner, _) = entries
            .iter()
            .find(|(_, _, p)| p == path)
            .with_context(|| format!("{path} not in\n{listing}"))?;
        ensure!(m == mode, "{path}: mode {m}, want {mode}");
        ensure!(owner == "root/root", "{path}: owner {owner}");
    }
    ensure!(
        entries.iter().all(|(_, owner, _)| owner == "root/root"),
        "{listing}"
    );
    Ok(listing)
}

/// The control files of `deb`, extracted into `dir`.
fn control(deb: &Path, dir: &Path) -> Result<PathBuf> {
    let control = dir.join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control))?;
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        run(Command::new("sh").arg("-n").arg(&path))?;
        let text = std::fs::read_to_string(&path)?;
        ensure!(!text.contains('@'), "{script}: unreplaced placeholder");
    }
    // md5sums lists every shipped file, and the sums hold.
    let files = dir.join("files");
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&files))?;
    run(Command::new("md5sum")
        .arg("--check")
        .arg("--quiet")
        .arg(control.join("md5sums"))
        .current_dir(&files))?;
    let listed = std::fs::read_to_string(control.join("md5sums"))?
        .lines()
        .count();
    let shipped = run(Command::new("find").arg(&files).arg("-type").arg("f"))?
        .lines()
        .count();
    ensure!(
        listed == shipped,
        "md5sums lists {listed} of {shipped} files"
    );
    Ok(control)
}

/// The shipped file `shipped` (under `files`) is the tree's `source`.
fn same(files: &Path, shipped: &str, source: &str) -> Result<()> {
    let a = std::fs::read_to_string(files.join(shipped))?;
    let b = std::fs::read_to_string(repo_root().join(source))?;
    ensure!(a == b, "{shipped} differs from {source}");
    Ok(())
}

fn field(info: &str, name: &str) -> Result<String> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
        .map(str::to_owned)
        .with_context(|| format!("no {name} in\n{info}"))
}

#[test]
fn the_agent_deb_holds_binary_unit_conffiles_and_the_php_extension() -> Result<()> {
    let debs = debs()?;
    let deb = &debs.agent;
    let out = tempfile::tempdir()?;
    check_files(
        deb,
        &[
            ("/usr/bin/sonde-agent", "-rwxr-xr-x"),
            ("/lib/systemd/system/sonde-agent.service", "-rw-r--r--"),
            ("/etc/sonde/agent.toml", "-rw-r-----"),
            ("/usr/lib/php/20220829/sonde.so", "-rw-r--r--"),
            ("/etc/php/8.2/mods-available/sonde.ini", "-rw-r--r--"),
            ("/usr/share/doc/sonde-agent/copyright", "-rw-r--r--"),
            ("/usr/share/doc/sonde-agent/changelog.gz", "-rw-r--r--"),
            ("/usr/share/doc/sonde-agent/agent.md", "-rw-r--r--"),
            ("/usr/share/doc/sonde-agent/fleet.md", "-rw-r--r--"),
            ("/usr/share/man/man1/sonde-agent.1.gz", "-rw-r--r--"),
        ],
    )?;

    let info = run(Command::new("dpkg-deb").arg("-I").arg(deb))?;
    ensure!(field(&info, "Package")? == "sonde-agent", "{info}");
    ensure!(
        field(&info, "Version")? == env!("CARGO_PKG_VERSION"),
        "{info}"
    );
    let depends = field(&info, "Depends")?;
    // libc6 versioned by dpkg-shlibdeps; adduser for the group; the PHP API.
    ensure!(
        depends.starts_with("libc6") && depends.ends_with(", adduser, phpapi-20220829"),
        "Depends: {depends}"
    );
    ensure!(
        field(&info, "Recommends")? == "php8.2-fpm",
        "Recommends: {info}"
    );

    let control = control(deb, out.path())?;
    let conffiles = std::fs::read_to_string(control.join("conffiles"))?;
    ensure!(
        conffiles.lines().collect::<Vec<_>>()
            == [
                "/etc/sonde/agent.toml",
                "/etc/php/8.2/mods-available/sonde.ini"
            ],
        "{conffiles}"
    );
    let postinst = std::fs::read_to_string(control.join("postinst"))?;
    for want in [
        "php_invoke enmod \"$PHP_VERSION\" ALL sonde",
        "phpenmod -v \"$PHP_VERSION\" -s ALL sonde",
        "deb-systemd-helper",
        "PHP_VERSION=\"8.2\"",
        "addgroup --system --quiet \"$GROUP\"",
        "adduser --quiet \"$FPM_USER\" \"$GROUP\"",
    ] {
        ensure!(postinst.contains(want), "postinst lacks {want:?}");
    }

    // The shipped files are the ones in the tree.
    let files = out.path().join("files");
    same(&files, "etc/sonde/agent.toml", "packaging/agent.toml")?;
    same(
        &files,
        "lib/systemd/system/sonde-agent.service",
        "systemd/sonde-agent.service",
    )?;
    same(
        &files,
        "etc/php/8.2/mods-available/sonde.ini",
        "packaging/sonde.ini",
    )?;
    same(
        &files,
        "usr/share/doc/sonde-agent/agent.md",
        "docs/agent.md",
    )?;
    // Stripped: no symbol table left.
    let syms = run(Command::new("file").arg(files.join("usr/bin/sonde-agent")))?;
    ensure!(syms.contains(", stripped"), "{syms}");
    Ok(())
}

#[test]
fn the_collector_deb_holds_binary_unit_and_conffile() -> Result<()> {
    let debs = debs()?;
    let deb = &debs.collector;
    let out = tempfile::tempdir()?;
    let listing = check_files(
        deb,
        &[
            ("/usr/bin/sonde-collector", "-rwxr-xr-x"),
            ("/lib/systemd/system/sonde-collector.service", "-rw-r--r--"),
            ("/etc/sonde/collector.toml", "-rw-r-----"),
            ("/usr/share/doc/sonde-collector/copyright", "-rw-r--r--"),
            ("/usr/share/doc/sonde-collector/changelog.gz", "-rw-r--r--"),
            ("/usr/share/doc/sonde-collector/collector.md", "-rw-r--r--"),
            ("/usr/share/man/man1/sonde-collector.1.gz", "-rw-r--r--"),
        ],
    )?;
    // Nothing of the agent's in it, and no PHP.
    ensure!(
        !listing.contains("sonde-agent") && !listing.contains("/php"),
        "{listing}"
    );

    let info = run(Command::new("dpkg-deb").arg("-I").arg(deb))?;
    ensure!(field(&info, "Package")? == "sonde-collector", "{info}");
    ensure!(
        field(&info, "Version")? == env!("CARGO_PKG_VERSION"),
        "{info}"
    );
    let depends = field(&info, "Depends")?;
    ensure!(
        depends.starts_with("libc6") && depends.ends_with(", adduser") && !depends.contains("php"),
        "Depends: {depends}"
    );

    let control = control(deb, out.path())?;
    let conffiles = std::fs::read_to_string(control.join("conffiles"))?;
    ensure!(conffiles == "/etc/sonde/collector.toml\n", "{conffiles:?}");
    let postinst = std::fs::read_to_string(control.join("postinst"))?;
    for want in [
        "adduser --system --group",
        "useradd --system --user-group",
        "chown \"root:$SYSUSER\" \"$CONFIG\"",
        "deb-systemd-helper enable \"$UNIT\"",
        "[ -d /run/systemd/system ]",
    ] {
        ensure!(postinst.contains(want), "postinst lacks {want:?}");
    }
    let postrm = std::fs::read_to_string(control.join("postrm"))?;
    ensure!(
        postrm.contains("rm -rf /var/lib/sonde/collector"),
        "{postrm}"
    );

    let files = out.path().join("files");
    same(
        &files,
        "etc/sonde/collector.toml",
        "packaging/collector.toml",
    )?;
    same(
        &files,
        "lib/systemd/system/sonde-collector.service",
        "systemd/sonde-collector.service",
    )?;
    let syms = run(Command::new("file").arg(files.join("usr/bin/sonde-collector")))?;
    ensure!(syms.contains(", stripped"), "{syms}");
    Ok(())
}

#[test]
fn build_deb_builds_one_package_on_request_and_refuses_bad_arguments() -> Result<()> {
    let agent = artifact("sonde-agent")?;
    let bin_dir = agent.parent().context("bin dir")?;
    let out = tempfile::tempdir()?;
    let script = repo_root().join("packaging/build-deb.sh");
    let stdout = run(Command::new(&script)
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--out")
        .arg(out.path())
        .args(["--package", "collector"]))?;
    let written: Vec<_> = std::fs::read_dir(out.path())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    ensure!(
        written.len() == 1 && written[0].starts_with("sonde-collector_"),
        "{written:?}"
    );
    ensure!(
        stdout.trim_end().ends_with(&written[0]) && stdout.trim().lines().count() == 1,
        "{stdout:?}"
    );
    for bad in [&["--package", "php"][..], &["--frobnicate"][..]] {
        let st = Command::new(&script).args(bad).output()?;
        ensure!(st.status.code() == Some(64), "{bad:?}: {st:?}");
    }
    Ok(())
}

/// The `## lintian` table of packaging/README.md: `(tag, packages)` rows.
fn justified_tags() -> Result<Vec<(String, Vec<String>)>> {
    let readme = std::fs::read_to_string(repo_root().join("packaging/README.md"))?;
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("lintian"))
        .context("packaging/README.md has no `## lintian` section")?;
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        ensure!(cells.len() == 3, "not `| tag | packages | why |`: {line}");
        let tag = cells[0].trim_matches('`').to_owned();
        let packages = cells[1].split(',').map(|p| p.trim().to_owned()).collect();
        ensure!(cells[2].len() > 20, "{tag}: no justification: {line}");
        rows.push((tag, packages));
    }
    ensure!(!rows.is_empty(), "no tag rows in the lintian section");
    Ok(rows)
}

#[test]
fn lintian_reports_only_the_tags_packaging_readme_justifies() -> Result<()> {
    let debs = debs()?;
    // Every level, info and pedantic included; the exit status only says
    // whether lintian itself ran.
    let out = Command::new("lintian")
        .args(["--display-info", "--pedantic", "--fail-on", "none"])
        .arg(&debs.agent)
        .arg(&debs.collector)
        .output()
        .context("lintian (scripts/install-deps.sh installs it)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "lintian failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // "W: sonde-agent: non-standard-file-perm 0640 != 0644 [etc/…]"
    let mut reported = Vec::new();
    for line in stdout.lines() {
        let Some((level, rest)) = line.split_once(": ") else {
            continue;
        };
        if !["E", "W", "I", "P", "X"].contains(&level) {
            continue;
        }
        let (package, tag) = rest.split_once(": ").context(line.to_owned())?;
        let package = package.split_whitespace().next().unwrap_or_default();
        let tag = tag.split_whitespace().next().unwrap_or_default();
        reported.push((package.to_owned(), tag.to_owned(), line.to_owned()));
    }
    let justified = justified_tags()?;
    let unjustified: Vec<&str> = reported
        .iter()
        .filter(|(p, t, _)| !justified.iter().any(|(jt, jp)| jt == t && jp.contains(p)))
        .map(|(_, _, line)| line.as_str())
        .collect();
    ensure!(
        unjustified.is_empty(),
        "lintian tags neither fixed nor justified in packaging/README.md:\n{}",
        unjustified.join("\n")
    );
    // And the README lists no tag lintian does not report (it stays the
    // list of what is left, not of what once was).
    let stale: Vec<String> = justified
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (t, p)))
        .filter(|(t, p)| !reported.iter().any(|(rp, rt, _)| rp == *p && rt == *t))
        .map(|(t, p)| format!("{p}: {t}"))
        .collect();
    ensure!(
        stale.is_empty(),
        "packaging/README.md justifies tags lintian no longer reports: {stale:?}\n{stdout}"
    );
    Ok(())
}

/// Replaces `from` with `to` in `text`, insisting that it is there.
fn replace(text: &str, from: &str, to: &str) -> Result<String> {
    ensure!(text.contains(from), "{from:?} not in\n{text}");
    Ok(text.replace(from, to))
}

#[test]
fn the_packaged_collector_toml_runs_a_collector() -> Result<()> {
    let shipped = std::fs::read_to_string(repo_root().join("packaging/collector.toml"))?;
    let dir = tempfile::tempdir()?;
    let (grpc, http_port) = (free_port(), free_port());
    // Only the addresses and the data directory move; every other key is
    // the packaged one, so an unknown or invalid key fails here (exit 64).
    let text = replace(
        &shipped,
        "listen = \"127.0.0.1:7717\"",
        &format!("listen = \"127.0.0.1:{grpc}\""),
    )?;
    let text = replace(
        &text,
        "listen = \"127.0.0.1:7718\"",
        &format!("listen = \"127.0.0.1:{http_port}\""),
    )?;
    let data = dir.path().join("data");
    let text = replace(
        &text,
        "path = \"/var/lib/sonde/collector\"",
        &format!("path = \"{}\"", data.display()),
    )?;
    let cfg = dir.path().join("collector.toml");
    std::fs::write(&cfg, text)?;
    let mut cmd = Command::new(artifact("sonde-collector")?);
    cmd.arg("--config").arg(&cfg);
    let mut p = Proc::start("collector", cmd, dir.path().join("collector.log"))?;
    deb::wait_healthy(&mut p, http_port)?;
    ensure!(data.join("sonde.db").exists(), "no database in {data:?}");
    // The placeholder agent token is set (the collector is not open) ...
    let log = p.log_text();
    ensure!(!log.contains("agent_tokens is empty"), "{log}");
    let status = p.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15));
    ensure!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        p.log_text()
    );
    // ... and differs from the agent package's, so an agent nobody
    // configured is refused.
    let agent = std::fs::read_to_string(repo_root().join("packaging/agent.toml"))?;
    let agent_token = agent
        .lines()
        .find_map(|l| l.strip_prefix("token = "))
        .context("no token in agent.toml")?;
    ensure!(
        !shipped.contains(agent_token),
        "collector.toml accepts agent.toml's placeholder {agent_token}"
    );
    Ok(())
}

/// The value of the first `key` line in `text` (`key = "v"`, `key=v`).
fn value(text: &str, key: &str) -> Result<String> {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
        })
        .with_context(|| format!("no {key} in\n{text}"))
}

#[test]
fn the_socket_group_and_the_collector_user_agree_everywhere() -> Result<()> {
    let read = |p: &str| std::fs::read_to_string(repo_root().join(p));
    let agent_toml = read("packaging/agent.toml")?;
    let agent_unit = read("systemd/sonde-agent.service")?;
    let agent_postinst = read("packaging/debian/sonde-agent.postinst")?;
    let cloud_init = read("packaging/cloud-init.yaml")?;
    let group = value(&agent_toml, "socket_group")?;
    ensure!(group == "sonde", "agent.toml socket_group = {group}");
    ensure!(value(&agent_unit, "SupplementaryGroups")? == group);
    ensure!(value(&agent_postinst, "GROUP")? == group);
    ensure!(value(&cloud_init, "socket_group")? == group);

    let collector_toml = read("packaging/collector.toml")?;
    let collector_unit = read("systemd/sonde-collector.service")?;
    let collector_postinst = read("packaging/debian/sonde-collector.postinst")?;
    let user = value(&collector_postinst, "SYSUSER")?;
    ensure!(user == "sonde-collector");
    ensure!(value(&collector_unit, "User")? == user);
    ensure!(value(&collector_unit, "Group")? == user);
    let data = value(&collector_toml, "path")?;
    ensure!(data == "/var/lib/sonde/collector");
    ensure!(value(&collector_postinst, "DATA")? == data);
    ensure!(format!("/var/lib/{}", value(&collector_unit, "StateDirectory")?) == data);
    ensure!(
        value(&collector_unit, "ExecStart")?
            == "/usr/bin/sonde-collector --config /etc/sonde/collector.toml"
    );
    Ok(())
}

#[test]
fn the_packer_template_validates() -> Result<()> {
    if Command::new("packer").arg("version").output().is_err() {
        // Debian 12 has packer (1.6.6); later Debian releases dropped it.
        eprintln!(
            "SKIPPED the_packer_template_validates: `packer` is not installed \
             (scripts/install-deps.sh installs it where apt has it)"
        );
        return Ok(());
    }
    let debs = debs()?;
    let template = repo_root().join("packaging/ami/sonde-agent.json");
    // Without AWS credentials: validate checks the template, the variables
    // and that the uploaded files exist, and talks to no API.
    let out = run(Command::new("packer")
        .arg("validate")
        .arg("-var")
        .arg(format!("deb={}", debs.agent.display()))
        .arg(&template))?;
    // The .deb is a required variable.
    let without = Command::new("packer")
        .arg("validate")
        .arg(&template)
        .output()?;
    ensure!(
        !without.status.success(),
        "validated without -var deb=…: {out}"
    );
    Ok(())
}

#[test]
fn the_cloud_init_user_data_validates() -> Result<()> {
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(repo_root().join("packaging/cloud-init.yaml"))
        .output()
        .context("cloud-init schema (scripts/install-deps.sh installs cloud-init)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "{}: {text}", out.status);
    ensure!(text.contains("Valid cloud-config"), "{text}");
    // Deprecated keys are reported but still "valid": refuse them too.
    ensure!(!text.to_lowercase().contains("deprecat"), "{text}");
    Ok(())
}
