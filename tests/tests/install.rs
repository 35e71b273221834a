//! Installs both packages ON THE MACHINE THE TEST RUNS ON with `dpkg -i`,
//! checks what they set up, runs the installed daemons the way their units
//! would, reinstalls, removes and purges them, and checks that the purge left
//! the machine as it was. It needs root and Debian's php8.2-fpm and
//! php8.2-cli. Do not run it where Sonde is really installed: it purges
//! sonde-agent and sonde-collector first, as leftovers of an earlier run.
//!
//! While it runs, PHP on this machine loads the extension from conf.d; the
//! other tests load it with their own `-d extension=`, which would then load
//! it twice. So this is one #[test] in a test binary of its own (cargo runs
//! test binaries one after another), and a guard purges the packages and
//! removes whatever they installed when the test ends, fails or panics.
//! A killed test run leaves them behind: the next run purges them first.

mod deb;

use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use deb::run;
use nix::sys::signal::Signal;
use sonde_e2e::{free_port, wait_for, Proc};

const PACKAGES: [&str; 2] = ["sonde-agent", "sonde-collector"];

/// The directories the packages touch: `(dir, only entries starting with)`.
const WATCHED: &[(&str, &str)] = &[
    ("/etc/sonde", ""),
    ("/etc/php/8.2", ""),
    ("/usr/lib/php/20220829", ""),
    ("/lib/systemd/system", ""),
    ("/etc/systemd/system", ""),
    ("/var/lib/systemd/deb-systemd-helper-enabled", ""),
    ("/var/lib/systemd/deb-systemd-helper-masked", ""),
    ("/var/lib/php/modules/8.2", ""),
    ("/var/lib/sonde", ""),
    ("/run/sonde", ""),
    ("/usr/share/doc", "sonde"),
    ("/usr/share/man/man1", "sonde"),
    ("/usr/bin", "sonde"),
];

/// Every path under the watched directories: type, mode, owner, and the
/// link target or the content's size and hash.
fn snapshot() -> Result<BTreeMap<PathBuf, String>> {
    fn walk(path: &Path, out: &mut BTreeMap<PathBuf, String>) -> Result<()> {
        let md = fs::symlink_metadata(path)?;
        // php-common's state directories (…/cli/disabled_by_maint): phpdismod
        // makes them, empty, whenever any extension is switched off, and
        // makes them again when needed. Not the packages' to remove.
        if md.is_dir()
            && path.starts_with("/var/lib/php/modules")
            && fs::read_dir(path)?.next().is_none()
        {
            return Ok(());
        }
        let what = if md.file_type().is_symlink() {
            format!("link -> {}", fs::read_link(path)?.display())
        } else if md.is_dir() {
            "dir".to_owned()
        } else {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            fs::read(path).unwrap_or_default().hash(&mut h);
            format!("file {} bytes {:x}", md.len(), h.finish())
        };
        out.insert(
            path.to_owned(),
            format!("{what} {:o} {}:{}", md.mode() & 0o7777, md.uid(), md.gid()),
        );
        if md.is_dir() {
            for entry in fs::read_dir(path)? {
                walk(&entry?.path(), out)?;
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    for (dir, prefix) in WATCHED {
        let dir = Path::new(dir);
        if !dir.exists() {
            out.insert(dir.to_owned(), "absent".to_owned());
            continue;
        }
        if prefix.is_empty() {
            walk(dir, &mut out)?;
            continue;
        }
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                walk(&entry.path(), &mut out)?;
            }
        }
    }
    Ok(out)
}

fn dpkg(args: &[&str]) -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    cmd
}

/// `dpkg-query`'s status of `package` ("install ok installed", …), or
/// "not-installed".
fn status(package: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty() && !s.ends_with("not-installed"))
        .unwrap_or_else(|| "not-installed".to_owned())
}

/// Purges both packages and removes by hand anything they may have left
/// (when dpkg itself failed half-way). Quiet and best effort: it runs from
/// a Drop.
fn remove_everything() {
    let quiet = |cmd: &mut Command| {
        let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    };
    quiet(dpkg(&["--purge"]).args(PACKAGES));
    if PACKAGES.iter().any(|p| status(p) != "not-installed") {
        quiet(dpkg(&["--purge", "--force-all"]).args(PACKAGES));
    }
    // A maintainer script that fails stops even a forced purge: replace the
    // installed scripts with no-ops (the files are removed by hand below).
    if PACKAGES.iter().any(|p| status(p) != "not-installed") {
        for p in PACKAGES {
            for script in ["prerm", "postrm", "postinst"] {
                let path = format!("/var/lib/dpkg/info/{p}.{script}");
                if Path::new(&path).exists() {
                    let _ = fs::write(&path, "#!/bin/sh\nexit 0\n");
                }
            }
        }
        quiet(dpkg(&["--purge", "--force-all"]).args(PACKAGES));
    }
    for p in [
        "/etc/sonde",
        "/var/lib/sonde",
        "/run/sonde",
        "/usr/bin/sonde-agent",
        "/usr/bin/sonde-collector",
        "/usr/lib/php/20220829/sonde.so",
        "/etc/php/8.2/mods-available/sonde.ini",
        "/lib/systemd/system/sonde-agent.service",
        "/lib/systemd/system/sonde-collector.service",
        "/etc/systemd/system/sonde-agent.service",
        "/etc/systemd/system/sonde-collector.service",
        "/etc/systemd/system/multi-user.target.wants/sonde-agent.service",
        "/etc/systemd/system/multi-user.target.wants/sonde-collector.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/sonde-agent.service.dsh-also",
        "/var/lib/systemd/deb-systemd-helper-enabled/sonde-collector.service.dsh-also",
        "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/sonde-agent.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/sonde-collector.service",
        "/var/lib/systemd/deb-systemd-helper-masked/sonde-agent.service",
        "/var/lib/systemd/deb-systemd-helper-masked/sonde-collector.service",
        "/usr/share/doc/sonde-agent",
        "/usr/share/doc/sonde-collector",
        "/usr/share/man/man1/sonde-agent.1.gz",
        "/usr/share/man/man1/sonde-collector.1.gz",
    ] {
        let p = Path::new(p);
        if p.is_dir() && !p.is_symlink() {
            let _ = fs::remove_dir_all(p);
        } else {
            let _ = fs::remove_file(p);
        }
    }
    // The enabled module: conf.d links and phpenmod's state, every SAPI.
    for base in ["/etc/php/8.2", "/var/lib/php/modules/8.2"] {
        let Ok(sapis) = fs::read_dir(base) else {
            continue;
        };
        for sapi in sapis.flatten() {
            let _ = fs::remove_file(sapi.path().join("conf.d/20-sonde.ini"));
            for state in ["enabled_by_maint", "disabled_by_maint", "enabled_by_admin"] {
                let _ = fs::remove_file(sapi.path().join(state).join("sonde"));
            }
        }
    }
}

/// The accounts the packages create (and keep on purge, as Debian packages
/// do): removed before the test, so that postinst must make them, and after.
fn remove_accounts() {
    for (cmd, name) in [
        ("userdel", "sonde-collector"),
        ("groupdel", "sonde-collector"),
        ("groupdel", "sonde"),
    ] {
        let _ = Command::new(cmd)
            .arg(name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// php-common's empty state directories (see `snapshot`) there are now.
fn php_state_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for sapi in fs::read_dir("/var/lib/php/modules/8.2")
        .into_iter()
        .flatten()
        .flatten()
    {
        for state in fs::read_dir(sapi.path()).into_iter().flatten().flatten() {
            let p = state.path();
            if p.is_dir() && fs::read_dir(&p).is_ok_and(|mut d| d.next().is_none()) {
                dirs.push(p);
            }
        }
    }
    dirs
}

/// Runs `remove_everything` and `remove_accounts` when the test ends, also
/// by a failure or a panic, and removes the empty php-common state
/// directories the test's dismod made (harmless, but not there before).
struct Cleanup {
    php_state_dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_everything();
        remove_accounts();
        for dir in php_state_dirs() {
            if !self.php_state_dirs.contains(&dir) {
                let _ = fs::remove_dir(dir);
            }
        }
    }
}

/// Success of a command, without caring for its output.
fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `runuser -u USER -- test FLAG PATH`: what that user may do with a file.
fn user_can(user: &str, flag: &str, path: &str) -> bool {
    succeeds(Command::new("runuser").args(["-u", user, "--", "test", flag, path]))
}

fn group_gid_and_members(group: &str) -> Result<(u32, Vec<String>)> {
    let line = run(Command::new("getent").args(["group", group]))
        .with_context(|| format!("group {group} does not exist"))?;
    let f: Vec<&str> = line.trim().split(':').collect();
    ensure!(f.len() == 4, "getent group {group}: {line}");
    let members = f[3]
        .split(',')
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect();
    Ok((f[2].parse()?, members))
}

/// The installed agent.toml with the socket in `dir` (so it cannot meet
/// anyone else's), no metrics listener and no cloud probe; the group and
/// the spool directory are the packaged ones.
fn agent_config(dir: &Path) -> Result<PathBuf> {
    let text = fs::read_to_string("/etc/sonde/agent.toml")?;
    let from = "socket = \"/run/sonde/agent.sock\"";
    ensure!(
        text.contains(from),
        "{from} not in the installed agent.toml"
    );
    ensure!(text.contains("socket_group = \"sonde\""), "{text}");
    let text = text
        .replace(
            from,
            &format!("socket = \"{}\"", dir.join("agent.sock").display()),
        )
        .replace("provider = \"auto\"", "provider = \"none\"");
    let cfg = dir.join("agent.toml");
    fs::write(&cfg, format!("metrics_listen = \"\"\n{text}"))?;
    Ok(cfg)
}

/// Starts the installed agent as its unit would: root, no capabilities at
/// all (`CapabilityBoundingSet=`), supplementary groups `groups`
/// (`SupplementaryGroups=sonde`); returns the socket's gid and mode.
fn agent_socket_as_the_unit_would(dir: &Path, groups: Option<u32>) -> Result<(u32, u32, Proc)> {
    let cfg = agent_config(dir)?;
    let sock = dir.join("agent.sock");
    let _ = fs::remove_file(&sock);
    let mut cmd = Command::new("setpriv");
    match groups {
        Some(gid) => cmd.arg(format!("--groups={gid}")),
        None => cmd.arg("--clear-groups"),
    };
    cmd.args(["--bounding-set=-all", "--inh-caps=-all", "--"])
        .arg("/usr/bin/sonde-agent")
        .arg("--config")
        .arg(&cfg);
    let log = dir.join(format!("agent-{}.log", groups.is_some()));
    let mut p = Proc::start("agent", cmd, log)?;
    // The agent logs this after bind, the group change and the chmod.
    let ready = wait_for("the agent's socket", Duration::from_secs(15), || {
        p.log_text().contains("listening for the PHP extension")
    });
    if ready.is_err() {
        bail!("{ready:?}; log:\n{}", p.log_text());
    }
    let md = fs::metadata(&sock)?;
    ensure!(p.alive(), "agent exited:\n{}", p.log_text());
    Ok((md.gid(), md.mode() & 0o777, p))
}

#[test]
fn both_packages_install_work_and_purge_without_a_trace() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the install test needs root (it runs dpkg -i on this machine)"
    );
    for p in ["php8.2-fpm", "php8.2-cli"] {
        ensure!(
            status(p) == "install ok installed",
            "{p} is not installed (scripts/install-deps.sh installs it)"
        );
    }
    // Leftovers of a killed run, and accounts postinst must create itself.
    remove_everything();
    remove_accounts();
    let before = snapshot()?;
    let _cleanup = Cleanup {
        php_state_dirs: php_state_dirs(),
    };

    let work = tempfile::tempdir()?;
    // Readable by the users the daemons run as (configs, sockets below).
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755))?;
    let debs = deb::build(&work.path().join("debs"))?;

    // Install. No systemd runs here (a container): postinst must skip
    // starting the services and still succeed.
    run(dpkg(&["-i"]).arg(&debs.agent).arg(&debs.collector))?;
    for p in PACKAGES {
        ensure!(status(p) == "install ok installed", "{p}: {}", status(p));
    }
    check_installed()?;

    // The daemons run as their units would.
    check_agent_socket_group(work.path())?;
    check_collector_runs_as_its_user(work.path())?;

    // Again: prerm upgrade + postinst configure <version> over the same
    // version. Idempotent: same files, same state, www-data in once.
    run(dpkg(&["-i"]).arg(&debs.agent).arg(&debs.collector))?;
    check_installed()?;

    // Remove: the module is off, the binaries gone, the conffiles stay.
    run(dpkg(&["-r"]).args(PACKAGES))?;
    for p in PACKAGES {
        ensure!(
            status(p) == "deinstall ok config-files",
            "{p}: {}",
            status(p)
        );
    }
    for sapi in ["fpm", "cli"] {
        let link = format!("/etc/php/8.2/{sapi}/conf.d/20-sonde.ini");
        ensure!(
            fs::symlink_metadata(&link).is_err(),
            "{link} left after remove"
        );
    }
    ensure!(!php_modules(&mut Command::new("php"))?.contains(&"sonde".to_owned()));
    ensure!(!Path::new("/usr/bin/sonde-agent").exists());
    ensure!(Path::new("/etc/sonde/agent.toml").exists());
    ensure!(Path::new("/etc/sonde/collector.toml").exists());

    // Purge: nothing left, and the scripts can run again.
    let scripts = work.path().join("scripts");
    fs::create_dir(&scripts)?;
    for (p, deb) in [
        ("sonde-agent", &debs.agent),
        ("sonde-collector", &debs.collector),
    ] {
        run(Command::new("dpkg-deb")
            .arg("-e")
            .arg(deb)
            .arg(scripts.join(p)))?;
    }
    run(dpkg(&["--purge"]).args(PACKAGES))?;
    for p in PACKAGES {
        ensure!(status(p) == "not-installed", "{p}: {}", status(p));
    }
    for p in PACKAGES {
        run(Command::new(scripts.join(p).join("postrm"))
            .arg("purge")
            .env("DPKG_MAINTSCRIPT_NAME", "postrm")
            .env("DPKG_MAINTSCRIPT_PACKAGE", p))
        .with_context(|| format!("{p} postrm purge, a second time"))?;
    }
    let after = snapshot()?;
    if before != after {
        let mut diff = String::new();
        for (path, was) in &before {
            match after.get(path) {
                None => diff.push_str(&format!("- {} ({was})\n", path.display())),
                Some(now) if now != was => {
                    diff.push_str(&format!("~ {}: {was} -> {now}\n", path.display()))
                }
                _ => {}
            }
        }
        for (path, now) in &after {
            if !before.contains_key(path) {
                diff.push_str(&format!("+ {} ({now})\n", path.display()));
            }
        }
        bail!("the purge left the machine changed:\n{diff}");
    }
    // Kept on purge, on purpose (docs/fleet.md).
    ensure!(group_gid_and_members("sonde").is_ok());
    ensure!(succeeds(
        Command::new("getent").args(["passwd", "sonde-collector"])
    ));
    Ok(())
}

/// The module names `php -m` (or `php-fpm8.2 -m`) lists; fails on anything
/// on stderr (a module that did not load, one loaded twice).
fn php_modules(cmd: &mut Command) -> Result<Vec<String>> {
    let out = cmd.arg("-m").output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stderr.trim().is_empty(),
        "{cmd:?}: {}\n{stderr}",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(!stdout.contains("Warning"), "{cmd:?} warned:\n{stdout}");
    Ok(stdout.lines().map(|l| l.trim().to_owned()).collect())
}

fn check_installed() -> Result<()> {
    let mode_owner = |path: &str| -> Result<(u32, String, String)> {
        let out = run(Command::new("stat").args(["-c", "%a %U %G", path]))?;
        let f: Vec<&str> = out.split_whitespace().collect();
        ensure!(f.len() == 3, "stat {path}: {out}");
        Ok((u32::from_str_radix(f[0], 8)?, f[1].into(), f[2].into()))
    };
    for (path, mode, user, group) in [
        ("/usr/bin/sonde-agent", 0o755, "root", "root"),
        ("/usr/bin/sonde-collector", 0o755, "root", "root"),
        ("/usr/lib/php/20220829/sonde.so", 0o644, "root", "root"),
        (
            "/lib/systemd/system/sonde-agent.service",
            0o644,
            "root",
            "root",
        ),
        (
            "/lib/systemd/system/sonde-collector.service",
            0o644,
            "root",
            "root",
        ),
        (
            "/etc/php/8.2/mods-available/sonde.ini",
            0o644,
            "root",
            "root",
        ),
        ("/etc/sonde/agent.toml", 0o640, "root", "root"),
        (
            "/etc/sonde/collector.toml",
            0o640,
            "root",
            "sonde-collector",
        ),
        (
            "/var/lib/sonde/collector",
            0o750,
            "sonde-collector",
            "sonde-collector",
        ),
    ] {
        let got = mode_owner(path)?;
        ensure!(
            got == (mode, user.to_owned(), group.to_owned()),
            "{path}: {got:?}, want {mode:o} {user}:{group}"
        );
    }

    // The conffiles dpkg knows, unmodified.
    for (package, want) in [
        (
            "sonde-agent",
            &[
                "/etc/sonde/agent.toml",
                "/etc/php/8.2/mods-available/sonde.ini",
            ][..],
        ),
        ("sonde-collector", &["/etc/sonde/collector.toml"][..]),
    ] {
        let out = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", package]))?;
        let conffiles: Vec<(&str, &str)> = out
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?, f.next()?))
            })
            .collect();
        ensure!(
            conffiles.iter().map(|(p, _)| *p).collect::<Vec<_>>() == want,
            "{package} conffiles: {out}"
        );
        for (path, md5) in conffiles {
            let sum = run(Command::new("md5sum").arg(path))?;
            ensure!(sum.starts_with(md5), "{path} differs from the package's");
        }
    }

    // The module, enabled for php-fpm and the CLI.
    for sapi in ["fpm", "cli"] {
        let link = format!("/etc/php/8.2/{sapi}/conf.d/20-sonde.ini");
        let target = fs::read_link(&link).with_context(|| format!("{link} is not a link"))?;
        ensure!(
            target == Path::new("/etc/php/8.2/mods-available/sonde.ini"),
            "{link} -> {}",
            target.display()
        );
    }
    ensure!(
        php_modules(&mut Command::new("php"))?.contains(&"sonde".to_owned()),
        "php -m does not list sonde"
    );
    ensure!(
        php_modules(&mut Command::new("php-fpm8.2"))?.contains(&"sonde".to_owned()),
        "php-fpm8.2 -m does not list sonde"
    );

    // The socket's group with php-fpm's user in it, once.
    let (_, members) = group_gid_and_members("sonde")?;
    ensure!(
        members.iter().filter(|m| *m == "www-data").count() == 1,
        "group sonde: {members:?}"
    );
    // The collector's system user: no login, home = the data directory.
    let pw = run(Command::new("getent").args(["passwd", "sonde-collector"]))?;
    let f: Vec<&str> = pw.trim().split(':').collect();
    ensure!(f.len() == 7, "{pw}");
    let uid: u32 = f[2].parse()?;
    ensure!(uid < 1000, "not a system user: {pw}");
    ensure!(f[5] == "/var/lib/sonde/collector", "home: {pw}");
    ensure!(
        f[6].ends_with("nologin") || f[6] == "/bin/false",
        "shell: {pw}"
    );

    // Who may read the secrets.
    ensure!(user_can(
        "sonde-collector",
        "-r",
        "/etc/sonde/collector.toml"
    ));
    ensure!(user_can(
        "sonde-collector",
        "-w",
        "/var/lib/sonde/collector"
    ));
    ensure!(!user_can("www-data", "-r", "/etc/sonde/collector.toml"));
    ensure!(!user_can("www-data", "-r", "/etc/sonde/agent.toml"));
    ensure!(!user_can("sonde-collector", "-r", "/etc/sonde/agent.toml"));

    // Enabled for boot (deb-systemd-helper works without a running systemd).
    for unit in ["sonde-agent.service", "sonde-collector.service"] {
        let link = format!("/etc/systemd/system/multi-user.target.wants/{unit}");
        let target = fs::read_link(&link).with_context(|| format!("{link} missing"))?;
        ensure!(
            target == Path::new("/lib/systemd/system").join(unit),
            "{link} -> {}",
            target.display()
        );
        verify_unit(unit)?;
    }
    Ok(())
}

/// `systemd-analyze verify` of the installed unit. It needs no running
/// systemd (it loads the unit files itself; checked in a container), but it
/// exits 0 on unknown keys and bad values, which it only logs ("Unknown key
/// name …, ignoring"), so anything it prints fails the test too. Nothing is
/// filtered: here it prints nothing for a good unit.
fn verify_unit(unit: &str) -> Result<()> {
    let path = format!("/lib/systemd/system/{unit}");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", &path])
        .output()
        .context("systemd-analyze (package systemd)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify {path}: {}\n{text}",
        out.status
    );
    Ok(())
}

/// The agent can give its socket to the group `sonde` only because the
/// unit makes it a member (with no CAP_CHOWN, as CapabilityBoundingSet=
/// leaves it), and www-data can then write to it. Without the group, the
/// same start leaves the socket root's: the first check is not vacuous.
fn check_agent_socket_group(dir: &Path) -> Result<()> {
    let (sonde, _) = group_gid_and_members("sonde")?;
    let (gid, mode, mut p) = agent_socket_as_the_unit_would(dir, Some(sonde))?;
    let sock = dir.join("agent.sock");
    let sock = sock.to_str().context("path")?;
    let www_data_writes = user_can("www-data", "-w", sock);
    let log = p.log_text();
    p.stop_with(Signal::SIGKILL, Duration::from_secs(2));
    ensure!(
        gid == sonde && mode == 0o660,
        "socket gid {gid} mode {mode:o}, want {sonde} 660; log:\n{log}"
    );
    ensure!(www_data_writes, "www-data cannot write {sock}");
    ensure!(
        Path::new("/var/lib/sonde/agent").is_dir(),
        "no spool directory"
    );

    let (gid, _, mut p) = agent_socket_as_the_unit_would(dir, None)?;
    let www_data_writes = user_can("www-data", "-w", sock);
    let log = p.log_text();
    p.stop_with(Signal::SIGKILL, Duration::from_secs(2));
    ensure!(
        gid == 0 && !www_data_writes,
        "without the group the socket got gid {gid}: the test's privilege drop does not work"
    );
    ensure!(log.contains("cannot give the socket to its group"), "{log}");
    Ok(())
}

/// The installed collector, run as sonde-collector, creates its database in
/// the packaged data directory (so the purge must remove a real one).
fn check_collector_runs_as_its_user(dir: &Path) -> Result<()> {
    let shipped = fs::read_to_string("/etc/sonde/collector.toml")?;
    let http_port = free_port();
    let text = shipped
        .replace(
            "listen = \"127.0.0.1:7717\"",
            &format!("listen = \"127.0.0.1:{}\"", free_port()),
        )
        .replace(
            "listen = \"127.0.0.1:7718\"",
            &format!("listen = \"127.0.0.1:{http_port}\""),
        );
    ensure!(!text.contains("listen = \"127.0.0.1:771"), "{text}");
    let cfg = dir.join("collector.toml");
    fs::write(&cfg, text)?;
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o644))?;
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=sonde-collector",
        "--regid=sonde-collector",
        "--init-groups",
        "--bounding-set=-all",
        "--",
        "/usr/bin/sonde-collector",
        "--config",
    ])
    .arg(&cfg);
    let mut p = Proc::start("collector", cmd, dir.join("collector.log"))?;
    deb::wait_healthy(&mut p, http_port)?;
    let status = p.stop_with(Signal::SIGTERM, Duration::from_secs(15));
    ensure!(
        status.is_some_and(|s| s.success()),
        "{status:?}; log:\n{}",
        p.log_text()
    );
    let db = Path::new("/var/lib/sonde/collector/sonde.db");
    let md = fs::metadata(db).context("no database in /var/lib/sonde/collector")?;
    let (uid, _) = (md.uid(), md.gid());
    let pw = run(Command::new("id").args(["-u", "sonde-collector"]))?;
    ensure!(uid.to_string() == pw.trim(), "sonde.db owned by {uid}");
    Ok(())
}
