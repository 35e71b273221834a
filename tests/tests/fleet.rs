//! A simulated Auto Scaling group. Every "instance" is a network namespace
//! made by this test, joined to a bridge on this host, with its own
//! stand-in IMDSv2 (`imds_standin`, at the real metadata address
//! 169.254.169.254:80 inside the namespace, token flow and all) and a real
//! `sonde-agent` using `provider = "aws"` and the default metadata endpoint.
//! The real collector listens on the bridge. The test launches 20 instances
//! in one burst and checks that all are `up` within 5 s; scales 5 in
//! (lifecycle state `Terminated`, then SIGTERM) → `terminated`, stops 2
//! (SIGTERM) → `stopped`, neither raising an alert; kills 2 → `down` with an
//! `agent_down` event within 15 s; relaunches one on the same instance (same
//! agent id); launches one from a "baked image" copy of another's state (its
//! own id); and one claiming a live instance's identity (flagged, with an
//! event, kept apart).
//!
//! Needs root (network namespaces), `ip` from iproute2, and a kernel with
//! veth and bridge support: this machine kind has them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;
use serde_json::Value;
use sonde_e2e::{artifact, certs, wait_for, Proc, Stack, StackOptions};

const GROUP: &str = "sonde-web-asg";
const LAUNCH: usize = 20;

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run `ip` (iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The bridge and the namespaces; removed on drop (a namespace's veth goes
/// with it).
struct Net {
    tag: String,
    bridge: String,
    /// Second octet of this run's 10.x.0.0/16.
    octet: u32,
    namespaces: Vec<String>,
}

impl Net {
    fn new() -> Result<Net> {
        // Tests of this file run at once: each its own names and subnet.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:x}{n}", pid % 0xffff);
        let octet = 100 + (pid % 50 * 2 + n) % 100;
        let net = Net {
            bridge: format!("sbr{tag}"),
            tag,
            octet,
            namespaces: Vec::new(),
        };
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.{octet}.0.1/16"),
            "dev",
            &net.bridge,
        ])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        Ok(net)
    }

    fn host_ip(&self) -> String {
        format!("10.{}.0.1", self.octet)
    }

    /// A namespace with eth0 on the bridge and the metadata address on lo.
    fn add(&mut self, n: usize) -> Result<(String, String)> {
        let ns = format!("sn{}-{n}", self.tag);
        let host_end = format!("sv{}x{n}", self.tag);
        let addr = format!("10.{}.1.{}", self.octet, n + 10);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &host_end, "master", &self.bridge, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/16"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "addr", "add", "169.254.169.254/32", "dev", "lo"])?;
        Ok((ns, addr))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// One simulated EC2 instance.
struct Instance {
    ns: String,
    dir: PathBuf,
    instance_id: String,
    hostname: String,
    imds: Proc,
    agent: Option<Proc>,
}

impl Instance {
    /// Writes the metadata, starts the stand-in IMDS in the namespace and
    /// writes the agent's config (the agent is started by `launch`).
    fn new(
        stack: &Stack,
        net: &mut Net,
        n: usize,
        instance_id: &str,
        collector: &str,
    ) -> Result<Instance> {
        let (ns, addr) = net.add(n)?;
        let dir = stack.path(&format!("instance-{n}"));
        let hostname = format!("ip-{}.ec2.internal", addr.replace('.', "-"));
        let md = dir.join("imds/latest/meta-data");
        let files = [
            ("instance-id", instance_id.to_owned()),
            ("ami-id", "ami-0sonde0baked".to_owned()),
            ("instance-type", "c6i.large".to_owned()),
            ("placement/availability-zone", "ap-northeast-2a".to_owned()),
            ("placement/region", "ap-northeast-2".to_owned()),
            ("local-ipv4", addr.clone()),
            ("local-hostname", hostname.clone()),
            ("tags/instance/aws:autoscaling:groupName", GROUP.to_owned()),
        ];
        for (path, value) in files {
            let p = md.join(path);
            fs::create_dir_all(p.parent().unwrap())?;
            fs::write(p, value)?;
        }
        let dynamic = dir.join("imds/latest/dynamic/instance-identity");
        fs::create_dir_all(&dynamic)?;
        fs::write(
            dynamic.join("document"),
            format!(
                "{{\n  \"accountId\" : \"123456789012\",\n  \"instanceId\" : \"{instance_id}\",\n  \
                 \"region\" : \"ap-northeast-2\",\n  \"imageId\" : \"ami-0sonde0baked\",\n  \
                 \"privateIp\" : \"{addr}\"\n}}"
            ),
        )?;
        fs::write(dynamic.join("signature"), "c3RhbmQtaW4gc2lnbmF0dXJl\n")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns])
            .arg(artifact("imds_standin")?)
            .args(["--listen", "169.254.169.254:80", "--root"])
            .arg(dir.join("imds"));
        let imds = Proc::start(
            &format!("imds-{n}"),
            cmd,
            stack.path(&format!("imds-{n}.log")),
        )?;
        let log = imds.log.clone();
        wait_for("the stand-in IMDS", Duration::from_secs(10), || {
            fs::read_to_string(&log).is_ok_and(|t| t.contains("listening"))
        })?;
        fs::create_dir_all(dir.join("spool"))?;
        fs::write(
            dir.join("agent.toml"),
            format!(
                "collector = \"{collector}\"\ntoken = \"{token}\"\nsocket = \"{sock}\"\n\
                 socket_group = \"root\"\nspool_dir = \"{spool}\"\nmetrics_listen = \"\"\n\
                 host_metrics_interval_secs = 0\nhostname = \"{hostname}\"\n\
                 [cloud]\nprovider = \"aws\"\nlifecycle_poll_secs = 1\n",
                token = stack.agent_token,
                sock = dir.join("agent.sock").display(),
                spool = dir.join("spool").display(),
            ),
        )?;
        Ok(Instance {
            ns,
            dir,
            instance_id: instance_id.to_owned(),
            hostname,
            imds,
            agent: None,
        })
    }

    /// Starts (or restarts) the agent inside the namespace.
    fn launch(&mut self, stack: &Stack, n: usize, run: usize) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(artifact("sonde-agent")?)
            .arg("--config")
            .arg(self.dir.join("agent.toml"))
            .env("RUST_LOG", "info");
        self.agent = Some(Proc::start(
            &format!("agent-{n}"),
            cmd,
            stack.path(&format!("agent-{n}-{run}.log")),
        )?);
        Ok(())
    }

    /// Signs the instance-identity document with `key` (RSA PKCS#1 v1.5,
    /// SHA-256, base64 over lines, as AWS does).
    fn sign_document(&self, key: &Path) -> Result<()> {
        let dynamic = self.dir.join("imds/latest/dynamic/instance-identity");
        let key = key.display().to_string();
        let sig = certs::openssl(&dynamic, &["dgst", "-sha256", "-sign", &key, "document"])?;
        let b64 = base64_lines(&sig);
        fs::write(dynamic.join("signature"), b64)?;
        Ok(())
    }

    /// Replaces the document (keeping the signature).
    fn set_document(&self, text: &str) -> Result<()> {
        let p = self
            .dir
            .join("imds/latest/dynamic/instance-identity/document");
        fs::write(p, text)?;
        Ok(())
    }

    fn document(&self) -> Result<String> {
        let p = self
            .dir
            .join("imds/latest/dynamic/instance-identity/document");
        Ok(fs::read_to_string(p)?)
    }

    fn set_lifecycle(&self, state: &str) -> Result<()> {
        let p = self
            .dir
            .join("imds/latest/meta-data/autoscaling/target-lifecycle-state");
        fs::create_dir_all(p.parent().unwrap())?;
        fs::write(p, state)?;
        Ok(())
    }

    /// Signals the agent; for SIGTERM waits for its clean exit.
    fn stop(&mut self, sig: Signal) -> Result<()> {
        let mut agent = self.agent.take().context("agent not running")?;
        let st = agent.stop_with(sig, Duration::from_secs(20));
        if sig == Signal::SIGTERM {
            ensure!(
                st.is_some_and(|s| s.success()),
                "agent in {} did not exit cleanly on SIGTERM ({st:?}):\n{}",
                self.ns,
                agent.log_text()
            );
        }
        Ok(())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.stop_with(Signal::SIGKILL, Duration::from_secs(1));
        }
        self.imds.stop_with(Signal::SIGKILL, Duration::from_secs(1));
    }
}

/// Base64 (standard alphabet, padded) in 64-column lines.
fn base64_lines(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out.as_bytes()
        .chunks(64)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn agents(stack: &Stack) -> Vec<Value> {
    stack.agents()
}

/// The agent row of `hostname` (the first, or the one whose id is `id`).
fn row<'a>(all: &'a [Value], hostname: &str) -> Option<&'a Value> {
    all.iter().find(|a| a["hostname"] == hostname)
}

fn status_of(all: &[Value], hostname: &str) -> String {
    row(all, hostname)
        .and_then(|a| a["status"].as_str())
        .unwrap_or("missing")
        .to_owned()
}

fn events(stack: &Stack) -> Vec<Value> {
    stack
        .api("/api/v1/events?from=0&limit=1000")
        .ok()
        .and_then(|v| v["events"].as_array().cloned())
        .unwrap_or_default()
}

fn fired_for(events: &[Value], kind: &str, host: &str) -> bool {
    events
        .iter()
        .any(|e| e["kind"] == kind && e["state"] == "firing" && e["host"] == host)
}

#[test]
fn a_simulated_auto_scaling_group_connects_scales_in_and_is_told_apart() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "this test makes network namespaces and needs root"
    );
    let mut net = Net::new()?;
    let stack = Stack::start(&StackOptions {
        agent: false,
        extension: false,
        web: false,
        grpc_ip: "0.0.0.0".into(),
        ..StackOptions::default()
    })?;
    let collector = format!("http://{}:{}", net.host_ip(), stack.grpc_port);
    let result = (|| -> Result<()> {
        let mut fleet = Vec::new();
        for n in 0..LAUNCH {
            let id = format!("i-0{:016x}", 0x5eed_0000 + n);
            fleet.push(Instance::new(&stack, &mut net, n, &id, &collector)?);
        }

        // The burst: every instance boots at once.
        let t0 = Instant::now();
        for (n, inst) in fleet.iter_mut().enumerate() {
            inst.launch(&stack, n, 0)?;
        }
        wait_for("all 20 agents up", Duration::from_secs(5), || {
            let all = agents(&stack);
            fleet.iter().all(|i| status_of(&all, &i.hostname) == "up")
        })?;
        let up_after = t0.elapsed();
        let all = agents(&stack);
        for inst in &fleet {
            let a = row(&all, &inst.hostname).unwrap();
            ensure!(a["id"] == inst.instance_id.as_str(), "agent id {a}");
            ensure!(a["instance_id"] == inst.instance_id.as_str(), "{a}");
            ensure!(a["group"] == GROUP && a["zone"] == "ap-northeast-2a", "{a}");
            ensure!(a["ami_id"] == "ami-0sonde0baked", "{a}");
            ensure!(a["identity_document"] == true, "{a}");
            ensure!(a["cloud_hostname"] == inst.hostname.as_str(), "{a}");
            ensure!(a["duplicate_of"].is_null(), "{a}");
        }
        eprintln!("20 instances up after {up_after:?}");

        // Scale-in: the group marks 5 instances, then they are shut down.
        for inst in &fleet[0..5] {
            inst.set_lifecycle("Terminated")?;
        }
        for inst in &mut fleet[0..5] {
            inst.stop(Signal::SIGTERM)?;
        }
        // An operator stops two (upgrade, reboot).
        for inst in &mut fleet[5..7] {
            inst.stop(Signal::SIGTERM)?;
        }
        // Two die.
        let killed_at = Instant::now();
        for inst in &mut fleet[7..9] {
            inst.stop(Signal::SIGKILL)?;
        }
        let killed: Vec<String> = fleet[7..9].iter().map(|i| i.hostname.clone()).collect();
        wait_for(
            "the killed agents down, each with an agent_down event",
            Duration::from_secs(15),
            || {
                let all = agents(&stack);
                let ev = events(&stack);
                killed
                    .iter()
                    .all(|h| status_of(&all, h) == "down" && fired_for(&ev, "agent_down", h))
            },
        )?;
        eprintln!(
            "killed agents down with events after {:?}",
            killed_at.elapsed()
        );
        let all = agents(&stack);
        for inst in &fleet[0..5] {
            ensure!(
                status_of(&all, &inst.hostname) == "terminated",
                "{}",
                inst.hostname
            );
        }
        for inst in &fleet[5..7] {
            ensure!(
                status_of(&all, &inst.hostname) == "stopped",
                "{}",
                inst.hostname
            );
        }
        for inst in &fleet[9..] {
            ensure!(status_of(&all, &inst.hostname) == "up", "{}", inst.hostname);
        }

        // Relaunched on the same instances: the same ids, up again.
        fleet[5].launch(&stack, 5, 1)?;
        fleet[7].launch(&stack, 7, 1)?;
        wait_for("relaunched agents up", Duration::from_secs(10), || {
            let all = agents(&stack);
            [5, 7]
                .iter()
                .all(|&n| status_of(&all, &fleet[n].hostname) == "up")
        })?;
        let all = agents(&stack);
        for n in [5, 7] {
            let a = row(&all, &fleet[n].hostname).unwrap();
            ensure!(a["id"] == fleet[n].instance_id.as_str(), "kept its id: {a}");
        }
        let same_id = all
            .iter()
            .filter(|a| a["instance_id"] == fleet[7].instance_id.as_str())
            .count();
        ensure!(same_id == 1, "a relaunch is not a new agent");

        // An instance launched from an image baked with instance 9's state.
        let baked_id = "i-0baked000000000a1";
        let mut baked = Instance::new(&stack, &mut net, LAUNCH, baked_id, &collector)?;
        for f in fs::read_dir(fleet[9].dir.join("spool"))? {
            let f = f?;
            if f.file_type()?.is_file() {
                fs::copy(f.path(), baked.dir.join("spool").join(f.file_name()))?;
            }
        }
        ensure!(
            fs::read_to_string(baked.dir.join("spool/agent-id"))?.trim() == fleet[9].instance_id,
            "the copied state holds instance 9's agent id"
        );
        baked.launch(&stack, LAUNCH, 0)?;

        // A second live agent claiming instance 10's identity.
        let mut clone = Instance::new(
            &stack,
            &mut net,
            LAUNCH + 1,
            &fleet[10].instance_id,
            &collector,
        )?;
        clone.launch(&stack, LAUNCH + 1, 0)?;
        wait_for(
            "the baked and the cloned agents up",
            Duration::from_secs(10),
            || {
                let all = agents(&stack);
                status_of(&all, &baked.hostname) == "up" && status_of(&all, &clone.hostname) == "up"
            },
        )?;
        let all = agents(&stack);
        let b = row(&all, &baked.hostname).unwrap();
        ensure!(
            b["id"] == baked_id && b["duplicate_of"].is_null(),
            "baked: {b}"
        );
        let nine = row(&all, &fleet[9].hostname).unwrap();
        ensure!(
            nine["id"] == fleet[9].instance_id.as_str() && nine["status"] == "up",
            "{nine}"
        );
        ensure!(
            fs::read_to_string(baked.dir.join("spool/agent-id"))?.trim() == baked_id,
            "the baked instance keeps its own id from now on"
        );
        let c = row(&all, &clone.hostname).unwrap();
        ensure!(
            c["duplicate_of"] == fleet[10].instance_id.as_str(),
            "clone: {c}"
        );
        ensure!(c["id"] != fleet[10].instance_id.as_str(), "kept apart: {c}");
        let ten = row(&all, &fleet[10].hostname).unwrap();
        ensure!(
            ten["duplicate_of"].is_null() && ten["status"] == "up",
            "{ten}"
        );
        let ev = events(&stack);
        ensure!(
            fired_for(&ev, "duplicate_identity", &clone.hostname),
            "a duplicate_identity event: {ev:?}"
        );

        // Neither scale-in nor a stop raised an alert.
        for inst in &fleet[0..7] {
            ensure!(
                !fired_for(&ev, "agent_down", &inst.hostname),
                "no alert for {}: {ev:?}",
                inst.hostname
            );
        }
        drop(baked);
        drop(clone);
        Ok(())
    })();
    stack.with_logs(result, 20_000)?;
    drop(net);
    Ok(())
}

#[test]
fn signed_instance_identities_are_required_when_configured() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "this test makes network namespaces and needs root"
    );
    // The stand-in for AWS's signing key and its public certificate.
    let keys = tempfile::tempdir()?;
    certs::openssl(
        keys.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "aws.key",
            "-out",
            "aws.pem",
            "-days",
            "2",
            "-subj",
            "/CN=stand-in AWS identity signer",
        ],
    )?;
    let (key, cert) = (keys.path().join("aws.key"), keys.path().join("aws.pem"));

    let mut net = Net::new()?;
    let stack = Stack::start(&StackOptions {
        agent: false,
        extension: false,
        web: false,
        grpc_ip: "0.0.0.0".into(),
        collector_extra: format!(
            "[fleet]\nverify_identity = \"require\"\naws_identity_certs = \"{}\"\n",
            cert.display()
        ),
        ..StackOptions::default()
    })?;
    let collector = format!("http://{}:{}", net.host_ip(), stack.grpc_port);
    let result = (|| -> Result<()> {
        let mut genuine = Instance::new(&stack, &mut net, 0, "i-0aaaa00000000000a", &collector)?;
        genuine.sign_document(&key)?;
        // Replays another instance's genuine document and signature.
        let mut replayed = Instance::new(&stack, &mut net, 1, "i-0bbbb00000000000b", &collector)?;
        replayed.set_document(&genuine.document()?)?;
        genuine.sign_document(&key)?;
        let sig = genuine
            .dir
            .join("imds/latest/dynamic/instance-identity/signature");
        fs::copy(
            &sig,
            replayed
                .dir
                .join("imds/latest/dynamic/instance-identity/signature"),
        )?;
        // Its own document, but a signature that is not AWS's.
        let mut forged = Instance::new(&stack, &mut net, 2, "i-0cccc00000000000c", &collector)?;
        forged.sign_document(&key)?;
        let doc = forged.document()?.replace("123456789012", "999999999999");
        forged.set_document(&doc)?;

        for (n, inst) in [&mut genuine, &mut replayed, &mut forged]
            .into_iter()
            .enumerate()
        {
            inst.launch(&stack, n, 0)?;
        }
        wait_for("the genuine instance up", Duration::from_secs(10), || {
            status_of(&agents(&stack), &genuine.hostname) == "up"
        })?;
        for inst in [&replayed, &forged] {
            let log = stack.path(&format!(
                "agent-{}-0.log",
                if inst.hostname == replayed.hostname {
                    1
                } else {
                    2
                }
            ));
            wait_for(
                "the refusal in the agent's log",
                Duration::from_secs(10),
                || {
                    fs::read_to_string(&log)
                        .is_ok_and(|t| t.contains("instance identity not verified"))
                },
            )?;
        }
        let all = agents(&stack);
        let g = row(&all, &genuine.hostname).unwrap();
        ensure!(g["identity_verified"] == true, "{g}");
        for inst in [&replayed, &forged] {
            ensure!(
                row(&all, &inst.hostname).is_none(),
                "refused: {}",
                inst.hostname
            );
        }
        let stats = stack.api("/api/v1/stats")?;
        let unverified = stats["ingest"]["identity_unverified"].as_u64().unwrap_or(0);
        ensure!(unverified >= 2, "counted: {stats}");
        Ok(())
    })();
    stack.with_logs(result, 20_000)?;
    drop(net);
    Ok(())
}
