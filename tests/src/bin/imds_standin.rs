//! A stand-in for the AWS instance metadata service (IMDSv2), for tests that
//! run agents as "instances" in network namespaces. It implements the token
//! flow as EC2 does: `PUT /latest/api/token` with
//! `X-aws-ec2-metadata-token-ttl-seconds` (1–21600) returns a session token;
//! every `GET` must carry it in `X-aws-ec2-metadata-token`, else 401; a
//! request with `X-Forwarded-For` is refused (403), as EC2 refuses proxied
//! token requests. Values are files under `--root`: `GET /latest/meta-data/
//! instance-id` answers `<root>/latest/meta-data/instance-id`, 404 when the
//! file is missing, so a test changes the instance (e.g. writes
//! `autoscaling/target-lifecycle-state`) by writing a file.
//!
//!   imds_standin --listen 169.254.169.254:80 --root DIR
//!
//! Prints `listening <addr>` once bound.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let mut listen = None;
    let mut root = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next(),
            "--root" => root = args.next().map(PathBuf::from),
            other => bail!("unknown argument {other}"),
        }
    }
    let (Some(listen), Some(root)) = (listen, root) else {
        bail!("usage: imds_standin --listen ADDR --root DIR");
    };
    let listener = TcpListener::bind(&listen).with_context(|| format!("bind {listen}"))?;
    println!("listening {}", listener.local_addr()?);
    let tokens = Arc::new(Mutex::new(HashSet::new()));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (root, tokens) = (root.clone(), tokens.clone());
        std::thread::spawn(move || {
            let _ = serve(conn, &root, &tokens);
        });
    }
    Ok(())
}

/// One connection; keep-alive until the client closes or asks to.
fn serve(conn: TcpStream, root: &Path, tokens: &Mutex<HashSet<String>>) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
                if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                }
                headers.push((k, v));
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let (status, text) = answer(&method, &path, &headers, root, tokens);
        let close = headers
            .iter()
            .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            _ => "Method Not Allowed",
        };
        write!(
            out,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Server: EC2ws\r\nConnection: {}\r\n\r\n{text}",
            text.len(),
            if close { "close" } else { "keep-alive" }
        )?;
        out.flush()?;
        if close {
            return Ok(());
        }
    }
}

fn answer(
    method: &str,
    path: &str,
    headers: &[(String, String)],
    root: &Path,
    tokens: &Mutex<HashSet<String>>,
) -> (u16, String) {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if header("x-forwarded-for").is_some() {
        return (403, String::new());
    }
    if path == "/latest/api/token" {
        if method != "PUT" {
            return (405, String::new());
        }
        let ttl =
            header("x-aws-ec2-metadata-token-ttl-seconds").and_then(|t| t.parse::<u32>().ok());
        if !ttl.is_some_and(|t| (1..=21_600).contains(&t)) {
            return (400, String::new());
        }
        let token = format!("AQAEA{:016x}", rand_u64());
        tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone());
        return (200, token);
    }
    if method != "GET" {
        return (405, String::new());
    }
    let valid = header("x-aws-ec2-metadata-token")
        .is_some_and(|t| tokens.lock().unwrap_or_else(|p| p.into_inner()).contains(t));
    if !valid {
        return (401, String::new());
    }
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return (404, String::new());
    }
    match std::fs::read_to_string(root.join(rel)) {
        Ok(v) => (200, v),
        Err(_) => (404, String::new()),
    }
}

/// Token randomness without a dependency: the clock and the address space.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}
