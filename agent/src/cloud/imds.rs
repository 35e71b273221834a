//! A minimal IMDSv2 client: one HTTP/1.1 request per connection over a
//! tokio `TcpStream` (`Connection: close`), a session token fetched with
//! `PUT /latest/api/token` and sent on every `GET`. Every call is bounded by
//! a short connect timeout and a total timeout, so a host without a metadata
//! service costs well under a second. It never retries on its own.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Connecting to the metadata address: link-local, answers in microseconds
/// on EC2; anything slower means there is no IMDS.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// One whole request, connect included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Lifetime asked for the session token (6 hours, the IMDS maximum).
const TOKEN_TTL_SECS: u64 = 21_600;
/// A token is renewed once it is this old (well before it expires).
const TOKEN_RENEW_AFTER: Duration = Duration::from_secs(TOKEN_TTL_SECS / 2);
/// Largest response accepted; metadata values are tiny.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum ImdsError {
    #[error("imds_endpoint {0:?} is not an http://host[:port] URL")]
    Endpoint(String),
    #[error("cannot connect to the metadata service: {0}")]
    Connect(#[source] std::io::Error),
    #[error("the metadata service did not answer within {0:?}")]
    Timeout(Duration),
    #[error("metadata service I/O: {0}")]
    Io(#[source] std::io::Error),
    #[error("malformed HTTP response from the metadata service: {0}")]
    Malformed(&'static str),
    #[error("{path}: HTTP {status}")]
    Status { path: String, status: u16 },
}

impl ImdsError {
    /// The path exists on no instance of this kind (e.g. tags not enabled,
    /// not in an Auto Scaling group, no spot notice).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ImdsError::Status { status: 404, .. })
    }
}

/// An HTTP response, as far as IMDS needs it.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// A client for one metadata endpoint; holds the current session token.
#[derive(Debug)]
pub struct Imds {
    host: String,
    port: u16,
    token: Mutex<Option<(String, Instant)>>,
}

impl Imds {
    /// `endpoint` is `http://host[:port][/]` (validated by the config).
    pub fn new(endpoint: &str) -> Result<Imds, ImdsError> {
        let bad = || ImdsError::Endpoint(endpoint.to_owned());
        let uri: tonic::transport::Uri = endpoint.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("http") {
            return Err(bad());
        }
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        // `[::1]` → `::1` for connecting; the Host header keeps the brackets.
        Ok(Imds {
            host: host.to_owned(),
            port: uri.port_u16().unwrap_or(80),
            token: Mutex::new(None),
        })
    }

    /// `GET path` with the session token; the body, trimmed. A 401 (token
    /// expired or revoked) fetches a new token and tries once more.
    pub async fn get(&self, path: &str) -> Result<String, ImdsError> {
        let token = self.token(false).await?;
        match self.get_with(path, &token).await {
            Err(ImdsError::Status { status: 401, .. }) => {
                let token = self.token(true).await?;
                self.get_with(path, &token).await
            }
            r => r,
        }
    }

    /// Like [`Imds::get`], but a 404 is `None`.
    pub async fn get_optional(&self, path: &str) -> Result<Option<String>, ImdsError> {
        match self.get(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn get_with(&self, path: &str, token: &str) -> Result<String, ImdsError> {
        let r = self
            .request("GET", path, &[("X-aws-ec2-metadata-token", token)])
            .await?;
        match r.status {
            200 => Ok(r.body.trim().to_owned()),
            status => Err(ImdsError::Status {
                path: path.to_owned(),
                status,
            }),
        }
    }

    /// The cached session token, or a new one (`PUT /latest/api/token`).
    async fn token(&self, renew: bool) -> Result<String, ImdsError> {
        if !renew {
            let cached = self.token.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((t, at)) = cached.as_ref() {
                if at.elapsed() < TOKEN_RENEW_AFTER {
                    return Ok(t.clone());
                }
            }
        }
        let ttl = TOKEN_TTL_SECS.to_string();
        let path = "/latest/api/token";
        let r = self
            .request(
                "PUT",
                path,
                &[("X-aws-ec2-metadata-token-ttl-seconds", &ttl)],
            )
            .await?;
        if r.status != 200 {
            return Err(ImdsError::Status {
                path: path.into(),
                status: r.status,
            });
        }
        let t = r.body.trim().to_owned();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ImdsError::Malformed("empty or unprintable token"));
        }
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some((t.clone(), Instant::now()));
        Ok(t)
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, ImdsError> {
        let exchange = async {
            let addr = (self.host.trim_matches(|c| c == '[' || c == ']'), self.port);
            let mut stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| ImdsError::Timeout(CONNECT_TIMEOUT))?
                .map_err(ImdsError::Connect)?;
            let _ = stream.set_nodelay(true);
            let mut req = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sonde-agent/{}\r\n\
                 Accept: */*\r\nConnection: close\r\nContent-Length: 0\r\n",
                self.host,
                env!("CARGO_PKG_VERSION")
            );
            for (name, value) in headers {
                req.push_str(&format!("{name}: {value}\r\n"));
            }
            req.push_str("\r\n");
            stream
                .write_all(req.as_bytes())
                .await
                .map_err(ImdsError::Io)?;
            let mut buf = Vec::with_capacity(1024);
            let mut limited = (&mut stream).take(MAX_RESPONSE_BYTES as u64 + 1);
            limited.read_to_end(&mut buf).await.map_err(ImdsError::Io)?;
            if buf.len() > MAX_RESPONSE_BYTES {
                return Err(ImdsError::Malformed("response too large"));
            }
            parse_response(&buf)
        };
        timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ImdsError::Timeout(REQUEST_TIMEOUT))?
    }
}

/// Parses a whole HTTP/1.1 response read until the server closed: status
/// line, headers, then a body delimited by `Content-Length`, chunked
/// encoding, or the end of the connection.
pub fn parse_response(raw: &[u8]) -> Result<Response, ImdsError> {
    let head_end = find(raw, b"\r\n\r\n").ok_or(ImdsError::Malformed("no end of headers"))?;
    let head =
        std::str::from_utf8(&raw[..head_end]).map_err(|_| ImdsError::Malformed("headers"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(ImdsError::Malformed("status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or(ImdsError::Malformed("status code"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(ImdsError::Malformed("header line"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| ImdsError::Malformed("content-length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let rest = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or(ImdsError::Malformed("body shorter than content-length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    let body = String::from_utf8(body).map_err(|_| ImdsError::Malformed("body is not UTF-8"))?;
    Ok(Response { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, ImdsError> {
    let mut out = Vec::new();
    loop {
        let eol = find(rest, b"\r\n").ok_or(ImdsError::Malformed("chunk size line"))?;
        let size_text = std::str::from_utf8(&rest[..eol])
            .map_err(|_| ImdsError::Malformed("chunk size"))?
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| ImdsError::Malformed("chunk size"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest
            .get(..size)
            .ok_or(ImdsError::Malformed("truncated chunk"))?;
        out.extend_from_slice(chunk);
        rest = rest
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or(ImdsError::Malformed("chunk not followed by CRLF"))?;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_bodies_are_cut_at_the_length() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 19\r\n\r\ni-0123456789abcdef0",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "i-0123456789abcdef0");
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA").unwrap();
        assert_eq!(r.body, "ok");
    }

    #[test]
    fn chunked_and_close_delimited_bodies() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nus-e\r\n5;x=y\r\nast-1\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, "us-east-1");
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\nnot here").unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "not here"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for raw in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nab\r\n",
            b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
        ] {
            assert!(
                parse_response(raw).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn endpoints_parse_to_host_and_port() {
        let i = Imds::new("http://169.254.169.254").unwrap();
        assert_eq!((i.host.as_str(), i.port), ("169.254.169.254", 80));
        let i = Imds::new("http://127.0.0.1:8111/").unwrap();
        assert_eq!((i.host.as_str(), i.port), ("127.0.0.1", 8111));
        // IMDS's IPv6 address on Nitro instances.
        let i = Imds::new("http://[fd00:ec2::254]").unwrap();
        assert_eq!((i.host.as_str(), i.port), ("[fd00:ec2::254]", 80));
        assert!(Imds::new("https://x").is_err());
    }
}
