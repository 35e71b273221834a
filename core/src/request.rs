//! Request attributes derived from headers: queue time, client address and
//! visitor id. Pure functions; the extension feeds them SAPI values.

/// Queue time from an `X-Request-Start` / `X-Queue-Start` value set by a
/// proxy: `t=1700000000.123` (seconds), or a bare number in seconds,
/// milliseconds or microseconds (told apart by magnitude). Returns the time
/// between it and `start_unix_ns`, `None` when unparsable or in the future.
pub fn queue_ns(header: &str, start_unix_ns: i64) -> Option<u64> {
    let v = header.trim();
    let v = v.strip_prefix("t=").unwrap_or(v);
    let x: f64 = v.parse().ok()?;
    if !x.is_finite() || x <= 0.0 {
        return None;
    }
    // Seconds until ~2286 are < 1e10; ms < 1e13; µs < 1e16; else ns.
    let ns = if x < 1e10 {
        x * 1e9
    } else if x < 1e13 {
        x * 1e6
    } else if x < 1e16 {
        x * 1e3
    } else {
        x
    };
    let q = start_unix_ns as f64 - ns;
    // Clocks of different hosts disagree a little; a negative queue is 0,
    // and anything over an hour is a bad header, not a queue.
    if !(-1e9..=3.6e12).contains(&q) {
        return None;
    }
    Some(q.max(0.0) as u64)
}

/// The client address: the first address of the trusted proxy header when
/// configured and present (`X-Forwarded-For: client, proxy1, proxy2`), else
/// the peer address.
pub fn client_ip<'a>(remote_addr: &'a str, trusted_header_value: Option<&'a str>) -> &'a str {
    trusted_header_value
        .and_then(|v| v.split(',').map(str::trim).find(|s| !s.is_empty()))
        .unwrap_or(remote_addr)
}

/// An opaque visitor id: a hash of the first session cookie found among
/// `cookie_names` in the `Cookie` header, else of the client address. The
/// session id itself never leaves the process. Built on the stack (a tag
/// letter and 16 hex digits), since the extension makes one per request.
pub fn visitor_id(cookie_header: Option<&str>, cookie_names: &str, client_ip: &str) -> VisitorId {
    let session = cookie_header.and_then(|h| {
        cookie_names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .find_map(|name| cookie_value(h, name))
    });
    let (tag, value) = match session {
        Some(v) => (b'c', v),
        None => (b'i', client_ip),
    };
    let mut id = VisitorId([0; 17]);
    if value.is_empty() {
        return id;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let h = crate::sql::hash(value);
    id.0[0] = tag;
    for (i, b) in id.0[1..].iter_mut().enumerate() {
        *b = HEX[((h >> (60 - 4 * i)) & 15) as usize];
    }
    id
}

/// A visitor id (`visitor_id`): empty, or a tag letter and 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisitorId([u8; 17]);

impl VisitorId {
    pub fn as_str(&self) -> &str {
        if self.0[0] == 0 {
            return "";
        }
        // ASCII by construction.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name)
            .then(|| v.trim())
            .filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: i64 = 1_700_000_000_500_000_000;

    #[test]
    fn queue_time_units() {
        assert_eq!(queue_ns("t=1700000000.400", START), Some(100_000_000));
        assert_eq!(queue_ns("1700000000400", START), Some(100_000_000));
        assert_eq!(queue_ns("t=1700000000400000", START), Some(100_000_000));
        assert_eq!(queue_ns("garbage", START), None);
        assert_eq!(
            queue_ns("t=1600000000", START),
            None,
            "days ago is a bad header"
        );
        assert_eq!(
            queue_ns("t=1700000000.6", START),
            Some(0),
            "small skew is 0"
        );
    }

    #[test]
    fn client_address() {
        assert_eq!(client_ip("10.0.0.1", None), "10.0.0.1");
        assert_eq!(
            client_ip("10.0.0.1", Some("203.0.113.9, 10.0.0.2")),
            "203.0.113.9"
        );
        assert_eq!(client_ip("10.0.0.1", Some(" ")), "10.0.0.1");
    }

    #[test]
    fn visitor_from_session_cookie_else_ip() {
        let names = "PHPSESSID,laravel_session,ci_session";
        let id = |c: Option<&str>, ip: &str| visitor_id(c, names, ip).as_str().to_string();
        let a = id(Some("theme=dark; PHPSESSID=abc123"), "1.2.3.4");
        let b = id(Some("PHPSESSID=abc123"), "5.6.7.8");
        assert_eq!(a, b, "same session, different IPs: one visitor");
        assert!(a.starts_with('c') && !a.contains("abc123"));
        let c = id(Some("laravel_session=zzz"), "1.2.3.4");
        assert_ne!(a, c);
        let by_ip = id(None, "1.2.3.4");
        assert!(by_ip.starts_with('i'));
        assert_eq!(by_ip.len(), 17);
        // The same id the formatted version gave.
        assert_eq!(by_ip, format!("i{:016x}", crate::sql::hash("1.2.3.4")));
        assert_eq!(by_ip, id(Some("other=1"), "1.2.3.4"));
        assert_eq!(id(None, ""), "");
    }
}
