//! Console login sessions: random tokens held in memory, each with its
//! user, role and expiry. A restart logs everyone out (sessions are cheap
//! to make again, and nothing secret ever reaches the disk). Bounded: past
//! [`MAX_SESSIONS`], the session closest to expiry goes.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rand::RngCore;
use sonde_core::ids::to_hex;

use super::users::Role;

/// Name of the session cookie.
pub const COOKIE: &str = "sonde_session";
/// A session ends this long after its last use.
pub const IDLE_MS: i64 = 12 * 60 * 60 * 1000;
/// Sessions held at most.
pub const MAX_SESSIONS: usize = 10_000;

/// Who is behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub role: Role,
}

struct Entry {
    principal: Principal,
    expires_ms: i64,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new session for `principal`; returns its token.
    pub fn create(&self, principal: Principal, now_ms: i64) -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = to_hex(&bytes);
        let mut map = self.lock();
        map.retain(|_, e| e.expires_ms > now_ms);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.expires_ms)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            token.clone(),
            Entry {
                principal,
                expires_ms: now_ms + IDLE_MS,
            },
        );
        token
    }

    /// The session's principal, extending it, if it is live.
    pub fn get(&self, token: &str, now_ms: i64) -> Option<Principal> {
        let mut map = self.lock();
        let entry = map.get_mut(token)?;
        if entry.expires_ms <= now_ms {
            map.remove(token);
            return None;
        }
        entry.expires_ms = now_ms + IDLE_MS;
        Some(entry.principal.clone())
    }

    /// Ends a session.
    pub fn remove(&self, token: &str) {
        self.lock().remove(token);
    }

    /// Ends every session of `user` (deleted users).
    pub fn remove_user(&self, user: &str) {
        self.lock().retain(|_, e| e.principal.user != user);
    }
}

/// The session token in a `Cookie` header, if any.
pub fn token_from_cookie(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value for a session (HttpOnly, SameSite=Strict).
pub fn set_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        IDLE_MS / 1000
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let s = Sessions::default();
        let p = Principal {
            user: "ann".into(),
            role: Role::ReadOnly,
        };
        let t = s.create(p.clone(), 0);
        assert_eq!(t.len(), 64);
        assert_eq!(s.get(&t, 1000), Some(p.clone()));
        // Used at 1000, so it lives until 1000 + IDLE_MS.
        assert_eq!(s.get(&t, IDLE_MS + 999), Some(p));
        assert_eq!(s.get(&t, 2 * IDLE_MS + 999), None);
        let t = s.create(
            Principal {
                user: "bob".into(),
                role: Role::Admin,
            },
            0,
        );
        s.remove_user("bob");
        assert_eq!(s.get(&t, 1), None);
        assert_eq!(s.get("nope", 1), None);
    }

    #[test]
    fn cookies() {
        assert_eq!(
            token_from_cookie("a=1; sonde_session=abc; b=2"),
            Some("abc")
        );
        assert_eq!(token_from_cookie("sonde_session="), None);
        assert_eq!(token_from_cookie("other=1"), None);
        let c = set_cookie("abc");
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
        assert!(clear_cookie().contains("Max-Age=0"));
    }
}
