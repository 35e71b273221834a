//! This worker's slot in the in-flight scoreboard (layout in
//! `sonde_core::scoreboard`). PHP-free, so it is unit-tested on its own.
//!
//! The file is created by the agent; a worker opens and maps it lazily on
//! its first traced request (never in MINIT: php-fpm forks after it), claims
//! a slot for its pid, and from then on only stores into shared memory —
//! no syscall, no allocation, no lock per request or per call. A missing
//! file is retried at most every `RETRY_AFTER`.

use std::ffi::CStr;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sonde_core::scoreboard as sb;

/// How long to wait before looking for a missing scoreboard again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// A mapped scoreboard and this worker's slot in it.
#[derive(Debug)]
pub struct Board {
    base: *mut u8,
    len: usize,
    slots: u32,
    slot: Option<u32>,
    pid: u32,
    retry_at: Option<Instant>,
    /// Owns the mapping (unmapped on drop).
    mapping: Option<crate::shm::Mapping>,
}

impl Default for Board {
    fn default() -> Self {
        Board {
            base: std::ptr::null_mut(),
            len: 0,
            slots: 0,
            slot: None,
            pid: 0,
            retry_at: None,
            mapping: None,
        }
    }
}

impl Board {
    /// Makes sure this process holds a slot; false when there is no
    /// scoreboard (agent absent) or no free slot.
    pub fn attach(&mut self, path: &CStr, pid: u32, now: Instant) -> bool {
        if self.slot.is_some() && self.pid == pid {
            return true;
        }
        if self.base.is_null() {
            if self.retry_at.is_some_and(|t| now < t) {
                return false;
            }
            if !self.map(path) {
                self.retry_at = Some(now + RETRY_AFTER);
                return false;
            }
        }
        // A new process (first use, or a fork): claim a slot of its own.
        self.pid = pid;
        self.slot = self.claim(pid);
        self.slot.is_some()
    }

    fn map(&mut self, path: &CStr) -> bool {
        let mut slots = 0;
        let Some(m) = crate::shm::map_file(path, sb::HEADER_BYTES, |h| {
            slots = sb::parse_header(h)?;
            Some(sb::file_bytes(slots))
        }) else {
            return false;
        };
        self.base = m.base;
        self.len = m.len;
        self.slots = slots;
        self.mapping = Some(m);
        true
    }

    fn atomic(&self, slot: u32, field: usize) -> &AtomicU32 {
        let off = sb::slot_offset(slot) + field;
        debug_assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: `off` is inside the mapping and 4-aligned (slots are
        // 1024-aligned after a 64-byte header; fields are 4-aligned); the
        // mapping lives as long as `self`, and every process accesses these
        // words atomically.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    fn claim(&self, pid: u32) -> Option<u32> {
        if pid == 0 || self.slots == 0 {
            return None;
        }
        for i in 0..self.slots {
            let idx = (pid.wrapping_add(i)) % self.slots;
            let owner = self.atomic(idx, sb::S_PID);
            match owner.compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(idx),
                // Ours already (a previous process with this pid died and
                // the agent has not freed it yet).
                Err(p) if p == pid => return Some(idx),
                Err(_) => {}
            }
        }
        None
    }

    /// Writes into this worker's slot under the sequence lock.
    fn write(&mut self, f: impl FnOnce(&mut [u8])) {
        let Some(slot) = self.slot else {
            return;
        };
        let seq = self.atomic(slot, sb::S_SEQ);
        let s = seq.load(Ordering::Relaxed);
        let s = s | (s & 1); // recover from a write cut short (odd)
        seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        // SAFETY: the slot lies inside the mapping; only this process (its
        // owner) writes it, and readers use the sequence lock.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(self.base.add(sb::slot_offset(slot)), sb::SLOT_BYTES)
        };
        f(bytes);
        seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// A request starts; the worker holds `db_connections` open.
    pub fn begin(
        &mut self,
        start_unix_ns: i64,
        request_id: &[u8; 16],
        method: &[u8],
        app: &[u8],
        url: &[u8],
        db_connections: u32,
    ) {
        self.write(|b| {
            b[sb::S_DB_CONNECTIONS..sb::S_DB_CONNECTIONS + 4]
                .copy_from_slice(&db_connections.to_le_bytes());
            b[sb::S_STATE..sb::S_STATE + 4].copy_from_slice(&sb::STATE_BUSY.to_le_bytes());
            b[sb::S_START_NS..sb::S_START_NS + 8].copy_from_slice(&start_unix_ns.to_le_bytes());
            b[sb::S_REQUEST_ID..sb::S_REQUEST_ID + 16].copy_from_slice(request_id);
            b[sb::S_CURRENT_KIND..sb::S_CURRENT_KIND + 4]
                .copy_from_slice(&sb::CURRENT_NONE.to_le_bytes());
            b[sb::S_CURRENT_START_NS..sb::S_CURRENT_START_NS + 8]
                .copy_from_slice(&0i64.to_le_bytes());
            sb::put_text(b, sb::S_METHOD, sb::METHOD_CAP, method);
            sb::put_text(b, sb::S_APP, sb::APP_CAP, app);
            sb::put_text(b, sb::S_URL, sb::URL_CAP, url);
            sb::put_text(b, sb::S_CURRENT, sb::CURRENT_CAP, b"");
        });
    }

    /// The request now runs `text` (a SQL statement, URL or command).
    pub fn current(&mut self, kind: u32, text: &[u8], now_unix_ns: i64) {
        self.write(|b| {
            b[sb::S_CURRENT_KIND..sb::S_CURRENT_KIND + 4].copy_from_slice(&kind.to_le_bytes());
            b[sb::S_CURRENT_START_NS..sb::S_CURRENT_START_NS + 8]
                .copy_from_slice(&now_unix_ns.to_le_bytes());
            sb::put_text(b, sb::S_CURRENT, sb::CURRENT_CAP, text);
        });
    }

    /// The worker now holds `n` open database connections.
    pub fn db_connections(&mut self, n: u32) {
        self.write(|b| {
            b[sb::S_DB_CONNECTIONS..sb::S_DB_CONNECTIONS + 4].copy_from_slice(&n.to_le_bytes());
        });
    }

    /// The request ended.
    pub fn end(&mut self) {
        self.write(|b| {
            b[sb::S_STATE..sb::S_STATE + 4].copy_from_slice(&sb::STATE_IDLE.to_le_bytes());
            b[sb::S_CURRENT_KIND..sb::S_CURRENT_KIND + 4]
                .copy_from_slice(&sb::CURRENT_NONE.to_le_bytes());
            let served = u64::from_le_bytes(
                b[sb::S_SERVED..sb::S_SERVED + 8]
                    .try_into()
                    .unwrap_or_default(),
            );
            b[sb::S_SERVED..sb::S_SERVED + 8]
                .copy_from_slice(&served.wrapping_add(1).to_le_bytes());
        });
    }

    /// Gives the slot back when the process `pid` shutting down cleanly is
    /// the one that claimed it (a forked child exiting must not free its
    /// parent's slot).
    pub fn release(&mut self, pid: u32) {
        if self.pid != pid {
            return;
        }
        if let Some(slot) = self.slot.take() {
            self.atomic(slot, sb::S_PID).store(0, Ordering::Release);
        }
    }

    /// The slot index held, if any.
    pub fn slot(&self) -> Option<u32> {
        self.slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    fn board_file(slots: u32) -> (std::path::PathBuf, CString) {
        let dir = std::env::temp_dir().join(format!("sonde-sb-{}-{slots}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("scoreboard");
        let mut bytes = vec![0u8; sb::file_bytes(slots)];
        bytes[..sb::HEADER_BYTES].copy_from_slice(&sb::header(slots));
        std::fs::write(&p, &bytes).unwrap();
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        (p, c)
    }

    fn read_slot(p: &std::path::Path, i: u32) -> Option<sb::Slot> {
        let all = std::fs::read(p).unwrap();
        let off = sb::slot_offset(i);
        sb::parse_slot(&all[off..off + sb::SLOT_BYTES])
    }

    #[test]
    fn claims_writes_and_releases() {
        let (p, c) = board_file(4);
        let mut b = Board::default();
        let now = Instant::now();
        assert!(b.attach(&c, 10, now));
        let slot = b.slot().unwrap();
        assert_eq!(slot, 10 % 4);
        b.begin(123, &[7; 16], b"GET", b"shop", b"/a?b=1", 2);
        let s = read_slot(&p, slot).unwrap();
        assert!(s.busy);
        assert_eq!(s.db_connections, 2);
        b.db_connections(3);
        assert_eq!(read_slot(&p, slot).unwrap().db_connections, 3);
        assert_eq!(
            (s.pid, s.start_unix_ns, s.url.as_str()),
            (10, 123, "/a?b=1")
        );
        b.current(sb::CURRENT_SQL, b"SELECT 1", 456);
        let s = read_slot(&p, slot).unwrap();
        assert_eq!(
            (s.current.as_str(), s.current_kind, s.current_start_unix_ns),
            ("SELECT 1", 1, 456)
        );
        b.end();
        let s = read_slot(&p, slot).unwrap();
        assert!(!s.busy);
        assert_eq!(s.served, 1);
        assert_eq!(s.seq % 2, 0);
        // Another pid (a fork) takes another slot.
        let mut child = Board::default();
        assert!(child.attach(&c, 11, now));
        assert_eq!(child.slot(), Some(11 % 4));
        // A forked child exiting does not free the parent's slot.
        b.release(11);
        assert_eq!(read_slot(&p, slot).unwrap().pid, 10);
        b.release(10);
        assert!(read_slot(&p, slot).is_none());
        // When every slot is taken, attach says no.
        let mut boards: Vec<Board> = (0..3).map(|_| Board::default()).collect();
        for (k, o) in boards.iter_mut().enumerate() {
            assert!(o.attach(&c, 30 + k as u32, now));
        }
        assert!(!Board::default().attach(&c, 99, now));
    }

    #[test]
    fn missing_board_is_retried_later_only() {
        let c = CString::new("/nonexistent/sonde/scoreboard").unwrap();
        let mut b = Board::default();
        let now = Instant::now();
        assert!(!b.attach(&c, 5, now));
        assert!(b.retry_at.unwrap() > now);
        assert!(!b.attach(&c, 5, now));
        b.begin(1, &[0; 16], b"", b"", b"", 0); // no slot: nothing happens
    }
}
