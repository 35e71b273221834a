//! Live state: the latest in-flight snapshot of each connected agent, held
//! in memory only (never stored: it is stale within seconds). Ingest writes
//! it; `/api/v1/active` reads it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use sonde_core::endpoint::EndpointNamer;
use sonde_proto::v1::LiveSnapshot;

/// Default upper bounds of the elapsed-time buckets of `/api/v1/active`,
/// ms (`[live] active_bounds_ms`).
pub const BOUNDS_MS: [u64; 3] = [1000, 3000, 8000];

struct Entry {
    hostname: String,
    received_ms: i64,
    snapshot: LiveSnapshot,
}

/// Latest snapshot per agent id. Its size is bounded by the number of
/// connected agents: an agent's entry goes when its stream ends.
pub struct LiveState {
    agents: Mutex<HashMap<String, Entry>>,
    /// Bucket bounds (`[live] active_bounds_ms`).
    bounds_ms: [u64; 3],
}

impl Default for LiveState {
    fn default() -> Self {
        LiveState::new(BOUNDS_MS)
    }
}

/// What `/api/v1/active` returns.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActiveView {
    pub bounds_ms: [u64; 3],
    /// Requests per bucket: below each bound, and at or above the last.
    pub buckets: [u64; 4],
    /// Longest running first.
    pub active: Vec<ActiveRequest>,
}

/// One request in flight.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActiveRequest {
    pub host: String,
    pub app: String,
    pub endpoint: String,
    pub method: String,
    pub pid: u32,
    /// Running for this long, now.
    pub elapsed_ms: f64,
    /// The SQL statement or URL it is running, if known.
    pub current: Option<String>,
}

impl LiveState {
    /// Buckets requests by the rising `bounds_ms`.
    pub fn new(bounds_ms: [u64; 3]) -> Self {
        LiveState {
            agents: Mutex::default(),
            bounds_ms,
        }
    }

    /// Replaces `agent_id`'s snapshot.
    pub fn update(&self, agent_id: &str, hostname: &str, snapshot: LiveSnapshot, now_ms: i64) {
        let entry = Entry {
            hostname: hostname.to_owned(),
            received_ms: now_ms,
            snapshot,
        };
        self.lock().insert(agent_id.to_owned(), entry);
    }

    /// Forgets an agent (its stream ended or it deregistered).
    pub fn remove(&self, agent_id: &str) {
        self.lock().remove(agent_id);
    }

    /// Requests in flight across agents whose snapshot is younger than
    /// `max_age_ms`, optionally of one app.
    pub fn active(&self, app: Option<&str>, now_ms: i64, max_age_ms: i64) -> ActiveView {
        let namer = EndpointNamer::default();
        let mut view = ActiveView {
            bounds_ms: self.bounds_ms,
            buckets: [0; 4],
            active: Vec::new(),
        };
        for entry in self.lock().values() {
            let age_ms = now_ms.saturating_sub(entry.received_ms);
            if age_ms > max_age_ms {
                continue;
            }
            let host = match &entry.snapshot.host {
                Some(h) if !h.hostname.is_empty() => &h.hostname,
                _ => &entry.hostname,
            };
            for r in &entry.snapshot.active {
                if app.is_some_and(|a| a != r.app) {
                    continue;
                }
                // The request kept running since the snapshot was taken.
                let elapsed_ms = r.elapsed_ms + age_ms.max(0) as f64;
                let bucket = self
                    .bounds_ms
                    .iter()
                    .position(|&b| elapsed_ms < b as f64)
                    .unwrap_or(self.bounds_ms.len());
                view.buckets[bucket] += 1;
                view.active.push(ActiveRequest {
                    host: host.clone(),
                    app: r.app.clone(),
                    endpoint: if r.endpoint.is_empty() {
                        namer.name(&r.url)
                    } else {
                        r.endpoint.clone()
                    },
                    method: r.method.clone(),
                    pid: r.pid,
                    elapsed_ms,
                    current: (!r.current.is_empty()).then(|| r.current.clone()),
                });
            }
        }
        view.active
            .sort_by(|a, b| b.elapsed_ms.total_cmp(&a.elapsed_ms));
        view
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.agents.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_proto::v1::InflightRequest;

    fn req(app: &str, url: &str, elapsed_ms: f64) -> InflightRequest {
        InflightRequest {
            app: app.into(),
            url: url.into(),
            elapsed_ms,
            ..Default::default()
        }
    }

    #[test]
    fn buckets_and_ageing() {
        let live = LiveState::default();
        let snap = |reqs| LiveSnapshot {
            active: reqs,
            ..Default::default()
        };
        live.update(
            "a",
            "web-1",
            snap(vec![
                req("shop", "/users/1", 100.0),
                req("shop", "/slow", 2500.0),
                req("blog", "/post/2", 9000.0),
            ]),
            10_000,
        );
        live.update("b", "web-2", snap(vec![req("shop", "/x", 10.0)]), 0);

        // Agent b's snapshot is too old; a's aged by 600 ms, which moves
        // the 2500 ms request past the 3000 ms bound.
        let v = live.active(None, 10_600, 5_000);
        assert_eq!(v.buckets, [1, 0, 1, 1]);
        assert_eq!(v.active[0].elapsed_ms, 9600.0);
        assert_eq!(v.active[2].endpoint, "/users/{num}");
        assert_eq!(v.active[2].host, "web-1");
        assert_eq!(v.active[2].current, None);

        let v = live.active(Some("shop"), 10_000, 5_000);
        assert_eq!(v.active.len(), 2);
        live.remove("a");
        assert!(live.active(None, 10_000, 5_000).active.is_empty());
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["bounds_ms"], serde_json::json!([1000, 3000, 8000]));
    }
}
