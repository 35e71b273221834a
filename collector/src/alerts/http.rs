//! The smallest HTTP/1.1 client the webhooks need: one POST per
//! connection (`Connection: close`), over TCP or TLS, reading only the
//! status line of the answer. No redirects, no proxies, no keep-alive.

use std::sync::Arc;

use thiserror::Error;
use tokio_rustls::rustls::ClientConfig;

use super::tls::Stream;

/// `http(s)://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Url {
    /// Parses a webhook URL; anything else (another scheme, user info, an
    /// empty host, a fragment, spaces) is `None`.
    pub fn parse(url: &str) -> Option<Url> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            return None;
        };
        if rest.contains(|c: char| c.is_whitespace() || c.is_control() || c == '#') {
            return None;
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, rest) = v6.split_once(']')?;
            match rest.strip_prefix(':') {
                Some(p) => (host, p.parse::<u16>().ok()?),
                None if rest.is_empty() => (host, default_port),
                None => return None,
            }
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, p.parse::<u16>().ok()?),
                None => (authority, default_port),
            }
        };
        if host.is_empty() || port == 0 {
            return None;
        }
        Some(Url {
            tls,
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// `host[:port]` for the `Host` header: without the scheme's default
    /// port, as browsers send it (some virtual hosts match it exactly).
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.tls { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The URL without its query (which may hold a token), for logs and
    /// the console.
    pub fn redacted(&self) -> String {
        let path = self.path.split('?').next().unwrap_or("/");
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.authority())
    }
}

/// Why one POST failed.
#[derive(Debug, Error)]
pub enum HttpError {
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS is not available: {0}")]
    NoTls(String),
    #[error("answered with status {0}")]
    Status(u16),
    #[error("answer is not HTTP")]
    BadAnswer,
}

/// POSTs `body` to `url` with `headers` (besides Host, Content-Length,
/// User-Agent and Connection); Ok on a 2xx answer. `tls` is needed for
/// https. The caller bounds the time.
pub async fn post(
    url: &Url,
    tls: Option<Arc<ClientConfig>>,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<(), HttpError> {
    let mut stream = Stream::connect(&url.host, url.port).await?;
    if url.tls {
        let config = tls.ok_or_else(|| HttpError::NoTls("no CA file loaded".into()))?;
        stream = stream.start_tls(config, &url.host).await?;
    }
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nUser-Agent: sonde-collector/{}\r\n\
         Connection: close\r\n",
        url.path,
        url.authority(),
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).await?;
    stream.flush().await?;
    // The status line is all we need.
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 4096 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&answer);
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|l| l.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::BadAnswer)?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(HttpError::Status(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(tls: bool, host: &str, port: u16, path: &str) -> Option<Url> {
        Some(Url {
            tls,
            host: host.into(),
            port,
            path: path.into(),
        })
    }

    #[test]
    fn urls() {
        assert_eq!(
            Url::parse("http://127.0.0.1:8080/hook?x=1"),
            u(false, "127.0.0.1", 8080, "/hook?x=1")
        );
        assert_eq!(
            Url::parse("http://example.com"),
            u(false, "example.com", 80, "/")
        );
        assert_eq!(
            Url::parse("https://hooks.slack.com/services/T0/B0/XYZ"),
            u(true, "hooks.slack.com", 443, "/services/T0/B0/XYZ")
        );
        assert_eq!(
            Url::parse("https://h:8443?x=1"),
            u(true, "h", 8443, "/?x=1")
        );
        assert_eq!(
            Url::parse("http://[::1]:9000/h"),
            u(false, "::1", 9000, "/h")
        );
        for bad in [
            "ftp://example.com/x",
            "http://u:p@example.com/x",
            "http://:80/x",
            "http://h:notaport/x",
            "http://h:0/x",
            "http://h/a b",
            "http://h/x#frag",
            "https://h/x\r\nX-Injected: 1",
        ] {
            assert_eq!(Url::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Url::parse("https://h/services/secret?token=1")
                .unwrap()
                .redacted(),
            "https://h/services/secret"
        );
        assert_eq!(
            Url::parse("http://[::1]:9000/x?t=1").unwrap().redacted(),
            "http://[::1]:9000/x"
        );
    }
}
