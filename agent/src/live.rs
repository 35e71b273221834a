//! The in-flight table: requests the extension reported as started and not
//! yet finished, shown live in the console. Live data only: it is sent as a
//! `LiveSnapshot` while connected and never batched, spooled or replayed.

use std::collections::HashMap;
use std::sync::Mutex;

use sonde_proto::v1::inflight_update::State;
use sonde_proto::v1::{InflightRequest, InflightUpdate};

/// Most requests tracked; updates for new requests beyond it are ignored
/// (a php-fpm host rarely runs more than a few hundred workers).
const MAX_INFLIGHT: usize = 10_000;

#[derive(Debug)]
struct Entry {
    /// The socket connection (one per PHP worker) that reported it.
    conn: u64,
    request: InflightRequest,
}

#[derive(Debug, Default)]
pub struct LiveTable {
    map: Mutex<HashMap<Vec<u8>, Entry>>,
    /// Requests running now as read from the scoreboard (replaced whole
    /// every scan).
    board: Mutex<Vec<InflightRequest>>,
    db_connections: std::sync::atomic::AtomicU32,
}

impl LiveTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies an update from connection `conn`.
    pub fn update(&self, conn: u64, u: InflightUpdate) {
        let mut map = self.lock();
        if u.state() == State::Finished {
            map.remove(&u.request_id);
            return;
        }
        if let Some(e) = map.get_mut(&u.request_id) {
            // Started fields do not change; what runs now does.
            e.request.current = u.current;
            return;
        }
        if map.len() >= MAX_INFLIGHT {
            return;
        }
        let request = InflightRequest {
            request_id: u.request_id.clone(),
            pid: u.pid,
            app: u.app,
            method: u.method,
            endpoint: u.endpoint,
            url: u.url,
            start_unix_ns: u.start_unix_ns,
            elapsed_ms: 0.0,
            current: u.current,
        };
        map.insert(u.request_id, Entry { conn, request });
    }

    /// The request's record arrived: it is over even if FINISHED was lost.
    pub fn finish(&self, request_id: &[u8]) {
        self.lock().remove(request_id);
    }

    /// The worker's connection closed: its requests are over.
    pub fn drop_connection(&self, conn: u64) {
        self.lock().retain(|_, e| e.conn != conn);
    }

    /// The requests the scoreboard shows running now.
    pub fn set_board(&self, running: Vec<InflightRequest>) {
        *self.board.lock().unwrap_or_else(|p| p.into_inner()) = running;
    }

    /// Every request with its elapsed time at `now_unix_ns`, oldest first.
    /// Database connections the PHP workers hold, as of the last
    /// scoreboard scan.
    pub fn set_db_connections(&self, n: u32) {
        self.db_connections
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn db_connections(&self) -> u32 {
        self.db_connections
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The process ids of the PHP workers in a request now.
    pub fn busy_pids(&self) -> std::collections::HashSet<u32> {
        let map = self.lock();
        let board = self.board.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .map(|e| e.request.pid)
            .chain(board.iter().map(|r| r.pid))
            .filter(|&p| p != 0)
            .collect()
    }

    pub fn snapshot(&self, now_unix_ns: i64) -> Vec<InflightRequest> {
        let map = self.lock();
        let board = self.board.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<InflightRequest> = map
            .values()
            .map(|e| e.request.clone())
            .chain(
                board
                    .iter()
                    .filter(|r| !map.contains_key(&r.request_id))
                    .cloned(),
            )
            .map(|mut r| {
                r.elapsed_ms = (now_unix_ns.saturating_sub(r.start_unix_ns)).max(0) as f64 / 1e6;
                r
            })
            .collect();
        out.sort_by_key(|r| r.start_unix_ns);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upd(id: u8, state: State, current: &str) -> InflightUpdate {
        InflightUpdate {
            state: state as i32,
            request_id: vec![id; 16],
            pid: 42,
            app: "shop".into(),
            start_unix_ns: 1_000_000_000,
            current: current.into(),
            ..Default::default()
        }
    }

    #[test]
    fn started_running_finished() {
        let t = LiveTable::default();
        t.update(1, upd(1, State::Started, ""));
        t.update(1, upd(1, State::Running, "SELECT ?"));
        t.update(2, upd(2, State::Started, ""));
        let s = t.snapshot(1_250_000_000);
        assert_eq!(s.len(), 2);
        let one = s.iter().find(|r| r.request_id == vec![1; 16]).unwrap();
        assert_eq!(one.current, "SELECT ?");
        assert_eq!(one.elapsed_ms, 250.0);
        t.update(1, upd(1, State::Finished, ""));
        assert_eq!(t.snapshot(0).len(), 1);
        t.drop_connection(2);
        assert!(t.snapshot(0).is_empty());
        t.update(3, upd(3, State::Started, ""));
        t.finish(&[3; 16]);
        assert!(t.snapshot(0).is_empty());
    }
}
