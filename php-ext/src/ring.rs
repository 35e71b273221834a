//! This process's side of the record ring (layout: `sonde_core::ring`):
//! finished-request frames go into a shared-memory ring the agent drains,
//! with no syscall per request and no wake-up of the agent per record, and
//! they wait there while the agent is stalled or restarting. PHP-free.
//!
//! Mapped lazily on the first record (never in MINIT); a missing ring is
//! looked for again at most every `RETRY_AFTER`, and the socket is used
//! meanwhile. A full ring drops the frame and counts it, never waits.

use std::ffi::CStr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sonde_core::ring as r;

/// How long to wait before looking for a missing ring again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Why a frame did not go into the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// No ring (agent absent or too old).
    NoRing,
    /// The agent has not kept up; the frame is dropped and counted.
    Full,
    /// Larger than a quarter of the ring.
    TooLarge,
}

/// A mapped ring.
#[derive(Debug)]
pub struct Ring {
    base: *mut u8,
    len: usize,
    cap: u64,
    retry_at: Option<Instant>,
    /// Owns the mapping (unmapped on drop).
    mapping: Option<crate::shm::Mapping>,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            base: std::ptr::null_mut(),
            len: 0,
            cap: 0,
            retry_at: None,
            mapping: None,
        }
    }
}

impl Ring {
    /// Maps the ring at `path` if not done yet; false when there is none.
    pub fn attach(&mut self, path: &CStr, now: Instant) -> bool {
        if !self.base.is_null() {
            return true;
        }
        if self.retry_at.is_some_and(|t| now < t) {
            return false;
        }
        if self.map(path) {
            true
        } else {
            self.retry_at = Some(now + RETRY_AFTER);
            false
        }
    }

    fn map(&mut self, path: &CStr) -> bool {
        let mut cap = 0;
        let Some(m) = crate::shm::map_file(path, r::HEADER_BYTES, |h| {
            cap = r::parse_header(h)?;
            Some(r::HEADER_BYTES + cap as usize)
        }) else {
            return false;
        };
        self.base = m.base;
        self.len = m.len;
        self.cap = cap;
        self.mapping = Some(m);
        true
    }

    fn u64_word(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off + 8 <= self.len && off.is_multiple_of(8));
        // SAFETY: inside the mapping, 8-aligned (page-aligned base, header
        // words at multiples of 8), shared with other processes that access
        // it atomically (the agent writes `tail` with one aligned 8-byte
        // pwrite).
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }

    fn u32_word(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: as `u64_word`; entry headers are 8-aligned.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    /// Puts one frame into the ring, or says why not. Never waits.
    pub fn push(&mut self, frame: &[u8]) -> Result<(), PushError> {
        if self.base.is_null() {
            return Err(PushError::NoRing);
        }
        let need = r::entry_bytes(frame.len());
        if need > self.cap / 4 {
            return Err(PushError::TooLarge);
        }
        let head = self.u64_word(r::H_HEAD);
        let tail = self.u64_word(r::H_TAIL);
        loop {
            let h = head.load(Ordering::Acquire);
            let t = tail.load(Ordering::Acquire);
            let (pad, off) = r::placement(h, need, self.cap);
            if !r::fits(h, t, pad, need, self.cap) {
                self.u64_word(r::H_DROPPED).fetch_add(1, Ordering::Relaxed);
                return Err(PushError::Full);
            }
            if head
                .compare_exchange_weak(h, h + pad + need, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            let data = r::HEADER_BYTES;
            if pad > 0 {
                let p = data + (h % self.cap) as usize;
                self.u32_word(p + r::E_LEN)
                    .store((pad as usize - r::ENTRY_HEADER) as u32, Ordering::Relaxed);
                self.u32_word(p + r::E_STATE)
                    .store(r::STATE_PADDING, Ordering::Release);
            }
            let p = data + off as usize;
            self.u32_word(p + r::E_LEN)
                .store(frame.len() as u32, Ordering::Relaxed);
            // SAFETY: [p + 8, p + 8 + len) lies inside the region this
            // process just reserved, which no other producer writes and the
            // consumer reads only after the commit below.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    frame.as_ptr(),
                    self.base.add(p + r::ENTRY_HEADER),
                    frame.len(),
                );
            }
            self.u32_word(p + r::E_STATE)
                .store(r::STATE_COMMITTED, Ordering::Release);
            return Ok(());
        }
    }

    /// Whether a ring is mapped.
    pub fn is_mapped(&self) -> bool {
        !self.base.is_null()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileExt;

    fn ring_file(cap: u64, tag: &str) -> (std::path::PathBuf, CString) {
        let dir = std::env::temp_dir().join(format!("sonde-ring-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("ring");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(r::HEADER_BYTES as u64 + cap).unwrap();
        f.write_all_at(&r::header(cap), 0).unwrap();
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        (p, c)
    }

    /// The agent's side, as it reads the file (pread/pwrite), for the tests.
    fn drain(path: &std::path::Path) -> Vec<Vec<u8>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut h = vec![0u8; r::HEADER_BYTES];
        f.read_exact_at(&mut h, 0).unwrap();
        let cap = r::parse_header(&h).unwrap();
        let head = r::u64_at(&h, r::H_HEAD);
        let mut tail = r::u64_at(&h, r::H_TAIL);
        let mut out = Vec::new();
        while tail < head {
            let pos = r::HEADER_BYTES as u64 + tail % cap;
            let mut eh = [0u8; 8];
            f.read_exact_at(&mut eh, pos).unwrap();
            let len = r::u32_at(&eh, r::E_LEN) as usize;
            match r::u32_at(&eh, r::E_STATE) {
                r::STATE_COMMITTED => {
                    let mut frame = vec![0u8; len];
                    f.read_exact_at(&mut frame, pos + 8).unwrap();
                    out.push(frame);
                }
                r::STATE_PADDING => {}
                _ => break,
            }
            f.write_all_at(&[0u8; 8], pos).unwrap();
            tail += r::ENTRY_HEADER as u64 + ((len as u64 + 7) & !7);
        }
        f.write_all_at(&tail.to_le_bytes(), r::H_TAIL as u64)
            .unwrap();
        out
    }

    #[test]
    fn frames_go_round_and_full_drops_are_counted() {
        let (p, c) = ring_file(4096, "a");
        let mut ring = Ring::default();
        assert!(ring.attach(&c, Instant::now()));
        let frame = vec![7u8; 500]; // 512 bytes an entry: 8 fit in 4096
        for _ in 0..8 {
            ring.push(&frame).unwrap();
        }
        assert_eq!(ring.push(&frame), Err(PushError::Full));
        let h = std::fs::read(&p).unwrap();
        assert_eq!(r::u64_at(&h, r::H_DROPPED), 1);
        assert_eq!(drain(&p).len(), 8);
        // Wrapping, with odd sizes and padding at the end, many times.
        let mut sent = Vec::new();
        let mut got = Vec::new();
        for i in 0..500u32 {
            let f: Vec<u8> = (0..(i * 37 % 900) as usize)
                .map(|k| (k as u32 + i) as u8)
                .collect();
            if ring.push(&f).is_ok() {
                sent.push(f);
            }
            if i % 3 == 0 {
                got.extend(drain(&p));
            }
        }
        got.extend(drain(&p));
        assert_eq!(got, sent);
        assert_eq!(ring.push(&vec![0u8; 2000]), Err(PushError::TooLarge));
    }

    #[test]
    fn missing_ring_is_retried_later() {
        let c = CString::new("/nonexistent/sonde/ring").unwrap();
        let mut ring = Ring::default();
        let now = Instant::now();
        assert!(!ring.attach(&c, now));
        assert_eq!(ring.push(b"x"), Err(PushError::NoRing));
        assert!(ring.retry_at.unwrap() > now);
    }
}
