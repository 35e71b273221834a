//! Agent → collector over TLS with client certificates (mutual TLS), end
//! to end: certificates made here with the `openssl` command (a test CA, a
//! server certificate for 127.0.0.1, a client certificate, and a stranger
//! CA); requests through nginx + php-fpm + the extension reach the
//! collector through an `https://` agent; agents without a client
//! certificate, trusting the wrong CA, or speaking plain HTTP/2 are refused
//! and say so in their logs; and bad TLS settings stop either daemon at
//! start with the key named (exit 64).

use std::fs;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use sonde_e2e::certs::pki;
use sonde_e2e::{artifact, now_ms, wait_for, Proc, Stack, StackOptions};

fn agents(stack: &Stack) -> Vec<String> {
    stack
        .agents()
        .iter()
        .filter_map(|a| a["hostname"].as_str().map(str::to_owned))
        .collect()
}

/// An agent with its own config body, outside the stack's list.
fn stranger(stack: &Stack, name: &str, collector: &str, tls: &str) -> Result<Proc> {
    let cfg = stack.path(&format!("{name}.toml"));
    fs::write(
        &cfg,
        format!(
            "collector = \"{collector}\"\ntoken = \"{token}\"\nsocket = \"{sock}\"\n\
             socket_group = \"root\"\nspool_dir = \"{spool}\"\nmetrics_listen = \"\"\n\
             host_metrics_interval_secs = 0\nhostname = \"{name}\"\n[cloud]\nprovider = \"none\"\n{tls}\n",
            token = stack.agent_token,
            sock = stack.path(&format!("{name}.sock")).display(),
            spool = stack.path(&format!("{name}-spool")).display(),
        ),
    )?;
    let mut cmd = Command::new(artifact("sonde-agent")?);
    cmd.arg("--config").arg(&cfg).env("RUST_LOG", "info");
    Proc::start(name, cmd, stack.path(&format!("{name}.log")))
}

#[test]
fn agents_over_mutual_tls_deliver_and_strangers_are_refused() -> Result<()> {
    let pki_dir = tempfile::tempdir()?;
    let d = pki_dir.path();
    pki(
        d,
        "sonde",
        &[
            (
                "server",
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth",
            ),
            ("client", "extendedKeyUsage=clientAuth"),
        ],
    )?;
    pki(
        d,
        "stranger",
        &[("stranger-client", "extendedKeyUsage=clientAuth")],
    )?;
    let p = |f: &str| d.join(f).display().to_string();

    let mut stack = Stack::start(&StackOptions {
        grpc_https: true,
        grpc_extra: format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\n",
            p("server.pem"),
            p("server.key"),
            p("sonde-ca.pem")
        ),
        agent_extra: format!(
            "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            p("sonde-ca.pem"),
            p("client.pem"),
            p("client.key")
        ),
        ..StackOptions::default()
    })?;
    let result = (|| -> Result<()> {
        let from = now_ms();
        for i in 0..20 {
            let r = stack.web("GET", &format!("/t/api.php?n={i}"), &[], "")?;
            ensure!(r.status == 200, "status {}", r.status);
        }
        wait_for("20 transactions over TLS", Duration::from_secs(10), || {
            stack.stored_since(from) >= 20
        })?;
        ensure!(stack.stored_since(from) == 20, "exactly the 20 requests");
        ensure!(agents(&stack) == ["agent-host"], "{:?}", agents(&stack));

        let https = format!("https://127.0.0.1:{}", stack.grpc_port);
        let http = format!("http://127.0.0.1:{}", stack.grpc_port);
        let mut refused = vec![
            // Trusts the collector but has no client certificate.
            stranger(
                &stack,
                "no-client-cert",
                &https,
                &format!("[tls]\nca = \"{}\"", p("sonde-ca.pem")),
            )?,
            // A client certificate from another CA.
            stranger(
                &stack,
                "foreign-client-cert",
                &https,
                &format!(
                    "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
                    p("sonde-ca.pem"),
                    p("stranger-client.pem"),
                    p("stranger-client.key")
                ),
            )?,
            // Does not trust the collector's certificate.
            stranger(
                &stack,
                "wrong-ca",
                &https,
                &format!(
                    "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
                    p("stranger-ca.pem"),
                    p("client.pem"),
                    p("client.key")
                ),
            )?,
            // Plain HTTP/2 to a TLS port.
            stranger(&stack, "plaintext", &http, "")?,
        ];
        wait_for(
            "each stranger to log a failed connection",
            Duration::from_secs(15),
            || {
                refused
                    .iter()
                    .all(|a| a.log_text().contains("collector connection failed"))
            },
        )?;
        for a in &mut refused {
            ensure!(
                a.alive(),
                "{} keeps running (and spooling): {}",
                a.name,
                a.log_text()
            );
        }
        ensure!(
            agents(&stack) == ["agent-host"],
            "no stranger registered: {:?}",
            agents(&stack)
        );
        // The good agent is still delivering.
        let from = now_ms();
        stack.web("GET", "/t/api.php?after=1", &[], "")?;
        wait_for("one more transaction", Duration::from_secs(10), || {
            stack.stored_since(from) >= 1
        })?;
        Ok(())
    })();
    if let Err(e) = result {
        anyhow::bail!("{e:#}\n{}", stack.logs());
    }
    let _ = stack.proc("agent");
    Ok(())
}

#[test]
fn bad_tls_settings_stop_either_daemon_at_start_naming_the_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    pki(d, "only", &[("leaf", "extendedKeyUsage=serverAuth")])?;
    let p = |f: &str| d.join(f).display().to_string();
    let run = |bin: &str, body: &str| -> Result<(Option<i32>, String)> {
        let cfg = d.join(format!("{bin}.toml"));
        fs::write(&cfg, body)?;
        let out = Command::new(artifact(bin)?)
            .arg("--config")
            .arg(&cfg)
            .output()?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let data = p("data");
    let collector_cases = [
        (
            format!(
                "[grpc]\ntls_cert = \"{}\"\n[storage]\npath = \"{data}\"\n",
                p("leaf.pem")
            ),
            "grpc.tls_cert",
        ),
        (
            format!(
                "[grpc]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[storage]\npath = \"{data}\"\n",
                p("leaf.key"),
                p("leaf.pem")
            ),
            "grpc.tls_cert",
        ),
        (
            format!(
                "[grpc]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[storage]\npath = \"{data}\"\n",
                p("leaf.pem"),
                p("missing.key")
            ),
            "grpc.tls_key",
        ),
        (
            format!(
                "[grpc]\ntls_client_ca = \"{}\"\n[storage]\npath = \"{data}\"\n",
                p("only-ca.pem")
            ),
            "grpc.tls_client_ca",
        ),
    ];
    let refused = |bin: &str, cases: &[(String, &str)]| -> Result<()> {
        for (body, key) in cases {
            let (code, err) = run(bin, body)?;
            ensure!(code == Some(64), "{bin} {body}: exit {code:?}: {err}");
            ensure!(err.contains(key), "{bin} names {key}: {err}");
        }
        Ok(())
    };
    refused("sonde-collector", &collector_cases)?;
    let spool = p("spool");
    let agent_cases = [
        (
            format!("collector = \"http://127.0.0.1:1\"\nspool_dir = \"{spool}\"\n[tls]\nca = \"{}\"\n", p("only-ca.pem")),
            "collector",
        ),
        (
            format!("collector = \"https://127.0.0.1:1\"\nspool_dir = \"{spool}\"\n[tls]\nca = \"{}\"\n", p("leaf.key")),
            "tls.ca",
        ),
        (
            format!(
                "collector = \"https://127.0.0.1:1\"\nspool_dir = \"{spool}\"\n[tls]\ncert = \"{}\"\n",
                p("leaf.pem")
            ),
            "tls.cert",
        ),
    ];
    refused("sonde-agent", &agent_cases)
}
