//! Redaction of sensitive query parameter values in URLs, before a URL
//! leaves the PHP process.

/// Query parameter names redacted by default (matched case-insensitively,
/// also as a suffix such as `api_key` or `access_token`).
pub const DEFAULT_SENSITIVE: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "session",
    "signature",
    "sig",
];

/// The text that replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// Returns `url` with the values of sensitive query parameters replaced, or
/// `None` when nothing had to change (so callers can skip a copy).
pub fn redact_query(url: &str, sensitive: &[&str]) -> Option<String> {
    let (base, query) = url.split_once('?')?;
    let (query, frag) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let mut changed = false;
    let mut out = String::with_capacity(url.len());
    out.push_str(base);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, v)) if !v.is_empty() && is_sensitive(k, sensitive) => {
                changed = true;
                out.push_str(k);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
    }
    if let Some(f) = frag {
        out.push('#');
        out.push_str(f);
    }
    changed.then_some(out)
}

fn is_sensitive(name: &str, sensitive: &[&str]) -> bool {
    let lower = name.to_ascii_lowercase();
    sensitive.iter().any(|s| {
        lower == *s
            || lower
                .strip_suffix(s)
                .is_some_and(|p| p.ends_with('_') || p.ends_with('-'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_values() {
        assert_eq!(
            redact_query(
                "/login?user=a&password=hunter2&api_key=k",
                DEFAULT_SENSITIVE
            )
            .unwrap(),
            "/login?user=a&password=[redacted]&api_key=[redacted]"
        );
        assert_eq!(redact_query("/x?monkey=1", DEFAULT_SENSITIVE), None);
        assert_eq!(redact_query("/x", DEFAULT_SENSITIVE), None);
        assert_eq!(
            redact_query("/x?Token=1#top", DEFAULT_SENSITIVE).unwrap(),
            "/x?Token=[redacted]#top"
        );
    }
}
