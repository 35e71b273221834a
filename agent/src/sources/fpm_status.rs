//! php-fpm's own pool status page (`pm.status_path`, off by default in
//! Debian), read as JSON when `fpm_status_urls` names it: listen queue,
//! max-children-reached, and php-fpm's count of active, idle and total
//! workers. Plain HTTP on loopback (nginx in front of the pool, or any
//! server passing the path to it), one short request per sample, bounded by
//! a timeout; a page that does not answer only leaves those fields out.

use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::cloud::imds::parse_response;

/// The whole exchange, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Largest answer read (a pool's JSON is a few hundred bytes).
const MAX_RESPONSE: u64 = 64 * 1024;

/// One pool's status, as php-fpm names the fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PoolStatus {
    pub pool: String,
    #[serde(rename = "listen queue", default)]
    pub listen_queue: u32,
    #[serde(rename = "max children reached", default)]
    pub max_children_reached: u64,
    #[serde(rename = "active processes", default)]
    pub active: u32,
    #[serde(rename = "idle processes", default)]
    pub idle: u32,
    #[serde(rename = "total processes", default)]
    pub total: u32,
}

/// Parses `http://HOST:PORT/PATH`; `None` for anything else.
pub fn parse_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (authority, 80),
    };
    (!host.is_empty()).then(|| (host.to_owned(), port, path.to_owned()))
}

/// GETs `url` with `?json` and parses the pool's status.
pub async fn fetch(url: &str) -> Result<PoolStatus, String> {
    let (host, port, path) =
        parse_url(url).ok_or_else(|| format!("{url}: not http://HOST:PORT/PATH"))?;
    let sep = if path.contains('?') { '&' } else { '?' };
    let exchange = async {
        let mut s = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!(
            "GET {path}{sep}json HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sonde-agent\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.take(MAX_RESPONSE)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let raw = timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {} ms", TIMEOUT.as_millis()))??;
    let resp = parse_response(&raw).map_err(|e| e.to_string())?;
    if resp.status != 200 {
        return Err(format!("status {}", resp.status));
    }
    serde_json::from_str(&resp.body).map_err(|e| format!("not php-fpm's JSON status: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/fpm-status"),
            Some(("127.0.0.1".into(), 8080, "/fpm-status".into()))
        );
        assert_eq!(
            parse_url("http://localhost"),
            Some(("localhost".into(), 80, "/".into()))
        );
        assert_eq!(parse_url("https://x/status"), None);
        assert_eq!(parse_url("http://:80/x"), None);
    }

    #[test]
    fn php_fpm_json() {
        let body = r#"{"pool":"www","process manager":"dynamic","start time":1,"start since":5,
            "accepted conn":12,"listen queue":3,"max listen queue":4,"listen queue len":511,
            "idle processes":2,"active processes":1,"total processes":3,"max active processes":2,
            "max children reached":7,"slow requests":0}"#;
        let s: PoolStatus = serde_json::from_str(body).unwrap();
        assert_eq!(
            s,
            PoolStatus {
                pool: "www".into(),
                listen_queue: 3,
                max_children_reached: 7,
                active: 1,
                idle: 2,
                total: 3,
            }
        );
    }
}
