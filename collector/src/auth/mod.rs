//! Who may do what. Bearer-token checks, shared by the gRPC ingest (agent
//! tokens) and the JSON API (API tokens), here; console users with hashed
//! passwords in `users`, their login sessions in `sessions`. This module
//! owns the checks only; callers decide what a refusal looks like on their
//! protocol and log it with the peer.

pub mod sessions;
pub mod throttle;
pub mod users;

use thiserror::Error;

/// Why a request was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `authorization: Bearer …` header.
    #[error("missing token")]
    Missing,
    /// A token that is not configured.
    #[error("unknown token")]
    Unknown,
}

/// A set of accepted tokens; empty = everyone is accepted.
#[derive(Clone)]
pub struct Tokens(Vec<String>);

impl Tokens {
    pub fn new(tokens: Vec<String>) -> Self {
        Tokens(tokens)
    }

    /// True when no token is required.
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks the value of an `authorization` header (`Bearer TOKEN`).
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), AuthError> {
        if self.is_open() {
            return Ok(());
        }
        let value = authorization.ok_or(AuthError::Missing)?;
        let value = std::str::from_utf8(value).map_err(|_| AuthError::Unknown)?;
        let value = value.trim();
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ if value.is_empty() || value.eq_ignore_ascii_case("bearer") => {
                return Err(AuthError::Missing)
            }
            _ => return Err(AuthError::Unknown),
        };
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        // Compare with every token without stopping early, so the time taken
        // says nothing about which prefix matched.
        let mut found = false;
        for t in &self.0 {
            found |= constant_time_eq(t.as_bytes(), token.as_bytes());
        }
        if found {
            Ok(())
        } else {
            Err(AuthError::Unknown)
        }
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_accepts_anything() {
        let t = Tokens::new(vec![]);
        assert_eq!(t.check(None), Ok(()));
        assert_eq!(t.check(Some(b"garbage")), Ok(()));
    }

    #[test]
    fn bearer_tokens() {
        let t = Tokens::new(vec!["s3cret".into(), "other".into()]);
        assert_eq!(t.check(Some(b"Bearer s3cret")), Ok(()));
        assert_eq!(t.check(Some(b"bearer  other ")), Ok(()));
        assert_eq!(t.check(None), Err(AuthError::Missing));
        assert_eq!(t.check(Some(b"")), Err(AuthError::Missing));
        assert_eq!(t.check(Some(b"Bearer ")), Err(AuthError::Missing));
        assert_eq!(t.check(Some(b"Bearer s3cre")), Err(AuthError::Unknown));
        assert_eq!(t.check(Some(b"Basic s3cret")), Err(AuthError::Unknown));
        assert_eq!(t.check(Some(b"s3cret")), Err(AuthError::Unknown));
        assert_eq!(t.check(Some(b"Bearer \xff")), Err(AuthError::Unknown));
    }
}
