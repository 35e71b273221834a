//! Console login throttling: after [`MAX_FAILURES`] failed logins within
//! [`WINDOW_MS`] for one user name, or [`MAX_FAILURES_PER_IP`] from one
//! client address (higher: many people may share a proxy's address, and
//! it is there for guessing across many names), further attempts for it are
//! refused (429) until the oldest failure leaves the window — without
//! checking the password, so guessing costs time, not CPU. A success clears
//! the user name's failures. The table is bounded: past [`MAX_KEYS`] keys
//! the stalest goes first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

pub const MAX_FAILURES: usize = 5;
pub const MAX_FAILURES_PER_IP: usize = 50;
pub const WINDOW_MS: i64 = 10 * 60_000;
/// Most user names and addresses remembered.
pub const MAX_KEYS: usize = 10_000;

#[derive(Debug, Default)]
pub struct Throttle {
    failures: Mutex<HashMap<String, VecDeque<i64>>>,
}

impl Throttle {
    /// Milliseconds to wait before `user` may try again from `peer_ip`;
    /// `None` when it may try now.
    pub fn wait_ms(&self, user: &str, peer_ip: &str, now_ms: i64) -> Option<i64> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        keys(user, peer_ip)
            .into_iter()
            .filter_map(|(k, limit)| {
                let q = map.get_mut(&k)?;
                while q.front().is_some_and(|&t| now_ms - t >= WINDOW_MS) {
                    q.pop_front();
                }
                (q.len() >= limit).then(|| q.front().map_or(0, |&t| t + WINDOW_MS - now_ms))
            })
            .max()
    }

    /// A failed attempt.
    pub fn failed(&self, user: &str, peer_ip: &str, now_ms: i64) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for (k, limit) in keys(user, peer_ip) {
            if !map.contains_key(&k) && map.len() >= MAX_KEYS {
                // The key whose latest failure is oldest.
                let stalest = map
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied().unwrap_or(i64::MIN))
                    .map(|(k, _)| k.clone());
                if let Some(s) = stalest {
                    map.remove(&s);
                }
            }
            let q = map.entry(k).or_default();
            q.push_back(now_ms);
            while q.len() > limit {
                q.pop_front();
            }
        }
    }

    /// A successful login: the user name's failures are forgotten.
    pub fn succeeded(&self, user: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&key("user", user));
    }
}

fn key(kind: &str, value: &str) -> String {
    format!("{kind}:{value}")
}

/// The keys an attempt counts against, with their limits (no address key
/// when the address is unknown).
fn keys(user: &str, peer_ip: &str) -> Vec<(String, usize)> {
    let mut k = vec![(key("user", user), MAX_FAILURES)];
    if !peer_ip.is_empty() {
        k.push((key("ip", peer_ip), MAX_FAILURES_PER_IP));
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_lock_the_name_and_the_address_for_the_window() {
        let t = Throttle::default();
        for i in 0..MAX_FAILURES as i64 {
            assert_eq!(t.wait_ms("admin", "10.0.0.1", i), None);
            t.failed("admin", "10.0.0.1", i);
        }
        assert_eq!(
            t.wait_ms("admin", "10.0.0.9", 10),
            Some(WINDOW_MS - 10),
            "the name, from anywhere"
        );
        assert_eq!(
            t.wait_ms("other", "10.0.0.1", 10),
            None,
            "other names from that address"
        );
        for i in 0..MAX_FAILURES_PER_IP as i64 {
            t.failed(&format!("name{i}"), "10.0.0.1", 20 + i);
        }
        assert!(
            t.wait_ms("other", "10.0.0.1", 100).is_some(),
            "guessing across names"
        );
        assert_eq!(t.wait_ms("other", "10.0.0.2", 100), None);
        assert_eq!(
            t.wait_ms("admin", "10.0.0.9", WINDOW_MS),
            None,
            "the first failure left the window"
        );
        t.succeeded("admin");
        assert_eq!(
            t.wait_ms("admin", "10.0.0.9", 20),
            None,
            "a success clears the name"
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let t = Throttle::default();
        for i in 0..(MAX_KEYS + 50) {
            t.failed(&format!("u{i}"), "1.2.3.4", i as i64);
        }
        assert!(t.failures.lock().unwrap().len() <= MAX_KEYS);
    }
}
