//! Endpoint names: the URL path with the query dropped and identifier-like
//! segments replaced, so `/photos/123` and `/photos/456` are one endpoint
//! (CONTRACT.md). Operators may keep routing query parameters
//! (`index.php?r=site/login`).

/// Turns request URLs into endpoint names.
#[derive(Debug, Clone, Default)]
pub struct EndpointNamer {
    /// Query parameters whose value is part of the endpoint name (e.g. `r`
    /// for Yii's `index.php?r=site/login`).
    pub keep_query_params: Vec<String>,
}

/// Placeholder for a numeric segment.
pub const NUM: &str = "{num}";
/// Placeholder for a UUID segment.
pub const UUID: &str = "{uuid}";
/// Placeholder for a long hex, base64 or otherwise token-like segment.
pub const TOKEN: &str = "{token}";

impl EndpointNamer {
    /// The endpoint name of `url` (a path with optional query, or a full
    /// `scheme://host/path` URL whose scheme and host are dropped).
    pub fn name(&self, url: &str) -> String {
        let (path, query) = split_url(url);
        let mut out = String::with_capacity(path.len() + 8);
        for (i, seg) in path.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            out.push_str(classify(seg).unwrap_or(seg));
        }
        if out.is_empty() {
            out.push('/');
        }
        if let Some(q) = query {
            let mut first = true;
            for pair in q.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if self.keep_query_params.iter().any(|p| p == k) {
                    out.push(if first { '?' } else { '&' });
                    first = false;
                    out.push_str(k);
                    out.push('=');
                    out.push_str(v);
                }
            }
        }
        out
    }
}

/// Splits `url` into its path and query, dropping scheme, host and fragment.
fn split_url(url: &str) -> (&str, Option<&str>) {
    let url = url.split('#').next().unwrap_or("");
    let url = match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            match rest.find('/') {
                Some(j) => &rest[j..],
                None => "/",
            }
        }
        None => url,
    };
    match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    }
}

/// The placeholder for an identifier-like segment, `None` for a name.
fn classify(seg: &str) -> Option<&'static str> {
    if seg.is_empty() {
        return None;
    }
    let b = seg.as_bytes();
    if b.iter().all(u8::is_ascii_digit) {
        return Some(NUM);
    }
    if is_uuid(b) {
        return Some(UUID);
    }
    let hex = b.iter().all(u8::is_ascii_hexdigit);
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    if hex && b.len() >= 16 && digits > 0 {
        return Some(TOKEN);
    }
    // base64 / url-safe tokens: long, mixed letters and digits, no vowels-only words.
    let tokenish = b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'=' | b'+' | b'.'));
    if tokenish && b.len() >= 24 && digits >= 2 {
        return Some(TOKEN);
    }
    // A number with a short prefix or suffix, e.g. `p123` or `123.json` stays a name.
    None
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(url: &str) -> String {
        EndpointNamer::default().name(url)
    }

    #[test]
    fn drops_query_and_ids() {
        assert_eq!(n("/api/v6/photos?lang=ko&hash=abc"), "/api/v6/photos");
        assert_eq!(n("/users/42/posts/7"), "/users/{num}/posts/{num}");
        assert_eq!(n("/a/123e4567-e89b-12d3-a456-426614174000"), "/a/{uuid}");
        assert_eq!(n("/"), "/");
        assert_eq!(n(""), "/");
        assert_eq!(n("http://example.com"), "/");
        assert_eq!(n("https://example.com/x/9?y=1#frag"), "/x/{num}");
    }

    #[test]
    fn contract_example_is_one_endpoint() {
        let a = n("/api/v6/GetHaveDungdung/aa081ad2636f7e0c9b1d");
        let b = n("/api/v6/GetHaveDungdung/26516c92331b44aa01fe");
        assert_eq!(a, b);
        assert_eq!(a, "/api/v6/GetHaveDungdung/{token}");
    }

    #[test]
    fn keeps_names() {
        assert_eq!(n("/api/v6/GetHaveDungdung"), "/api/v6/GetHaveDungdung");
        assert_eq!(n("/v2/deadbeef"), "/v2/deadbeef");
        assert_eq!(n("/index.php"), "/index.php");
    }

    #[test]
    fn base64_tokens() {
        assert_eq!(
            n("/reset/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOjF9.Zm9v"),
            "/reset/{token}"
        );
    }

    #[test]
    fn keeps_routing_query_param() {
        let namer = EndpointNamer {
            keep_query_params: vec!["r".into()],
        };
        assert_eq!(
            namer.name("/index.php?id=5&r=site/login"),
            "/index.php?r=site/login"
        );
        assert_eq!(namer.name("/index.php?id=5"), "/index.php");
    }
}
