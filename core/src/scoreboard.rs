//! The in-flight scoreboard: a file the agent creates and every PHP worker
//! maps (`MAP_SHARED`), one fixed-size slot per worker, so the agent sees
//! which requests run, since when and what each is doing now — with no
//! syscall and no allocation on the PHP side (stores into shared memory).
//!
//! Layout (little-endian): a 64-byte header, then `slots` slots of
//! `SLOT_BYTES`. A worker claims a slot by compare-and-swap of its `pid`
//! from 0 (probing from `pid % slots`); the agent frees slots of workers
//! that died. Each slot is written under a sequence lock: `seq` is odd while
//! the worker writes; a reader copies the slot and accepts the copy when
//! `seq` was even and unchanged across the copy.
//!
//! This module owns the layout and the pure encoding of a slot; the atomic
//! stores (extension) and the reads (agent, with `pread`) live with their
//! owners.

/// File magic, first 8 bytes.
pub const MAGIC: [u8; 8] = *b"SNDSCB01";
/// Header bytes before the first slot.
pub const HEADER_BYTES: usize = 64;
/// Bytes per slot.
pub const SLOT_BYTES: usize = 1024;
/// Default number of slots (workers per host).
pub const DEFAULT_SLOTS: u32 = 1024;

// Header fields.
pub const H_MAGIC: usize = 0;
/// u32: number of slots.
pub const H_SLOTS: usize = 8;
/// u32: slot size (SLOT_BYTES), so readers can refuse another layout.
pub const H_SLOT_BYTES: usize = 12;

// Slot fields (offsets inside a slot).
/// u32 (atomic): owning pid, 0 = free.
pub const S_PID: usize = 0;
/// u32 (atomic): sequence lock, odd while being written.
pub const S_SEQ: usize = 4;
/// u32: `STATE_*`.
pub const S_STATE: usize = 8;
/// u32: kind of `current` (`CURRENT_*`).
pub const S_CURRENT_KIND: usize = 12;
/// i64: request start, Unix ns.
pub const S_START_NS: usize = 16;
/// [16]: the request's record id.
pub const S_REQUEST_ID: usize = 24;
/// i64: when `current` started, Unix ns (0 = nothing running).
pub const S_CURRENT_START_NS: usize = 40;
/// u64: requests this worker finished.
pub const S_SERVED: usize = 48;
/// u32: open database connections of the worker.
pub const S_DB_CONNECTIONS: usize = 56;
/// Text fields: u16 length then bytes.
pub const S_METHOD: usize = 64;
pub const METHOD_CAP: usize = 14;
pub const S_APP: usize = 80;
pub const APP_CAP: usize = 62;
pub const S_URL: usize = 144;
pub const URL_CAP: usize = 382;
pub const S_CURRENT: usize = 528;
pub const CURRENT_CAP: usize = 494;

pub const STATE_IDLE: u32 = 0;
pub const STATE_BUSY: u32 = 1;

pub const CURRENT_NONE: u32 = 0;
pub const CURRENT_SQL: u32 = 1;
pub const CURRENT_EXTERNAL: u32 = 2;
pub const CURRENT_CACHE: u32 = 3;

// The fields fit their slot, in order, without overlapping (checked when
// compiling).
const _: () = {
    assert!(S_DB_CONNECTIONS + 4 <= S_METHOD);
    assert!(S_METHOD + 2 + METHOD_CAP <= S_APP);
    assert!(S_APP + 2 + APP_CAP <= S_URL);
    assert!(S_URL + 2 + URL_CAP <= S_CURRENT);
    assert!(S_CURRENT + 2 + CURRENT_CAP <= SLOT_BYTES);
    assert!(HEADER_BYTES.is_multiple_of(8) && SLOT_BYTES.is_multiple_of(8));
};

/// Total file size for `slots` slots.
pub fn file_bytes(slots: u32) -> usize {
    HEADER_BYTES + slots as usize * SLOT_BYTES
}

/// Offset of slot `i`.
pub fn slot_offset(i: u32) -> usize {
    HEADER_BYTES + i as usize * SLOT_BYTES
}

/// A header for `slots` slots.
pub fn header(slots: u32) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[H_MAGIC..H_MAGIC + 8].copy_from_slice(&MAGIC);
    h[H_SLOTS..H_SLOTS + 4].copy_from_slice(&slots.to_le_bytes());
    h[H_SLOT_BYTES..H_SLOT_BYTES + 4].copy_from_slice(&(SLOT_BYTES as u32).to_le_bytes());
    h
}

/// The slot count of a valid header, `None` for another layout.
pub fn parse_header(h: &[u8]) -> Option<u32> {
    if h.len() < HEADER_BYTES || h[..8] != MAGIC || u32_at(h, H_SLOT_BYTES) != SLOT_BYTES as u32 {
        return None;
    }
    Some(u32_at(h, H_SLOTS)).filter(|n| *n > 0)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or_default())
}

fn text_at(b: &[u8], off: usize, cap: usize) -> &[u8] {
    let len = (u16::from_le_bytes([b[off], b[off + 1]]) as usize).min(cap);
    &b[off + 2..off + 2 + len]
}

/// Writes a length-prefixed text field (cut to `cap`) into `slot`.
pub fn put_text(slot: &mut [u8], off: usize, cap: usize, text: &[u8]) {
    let n = text.len().min(cap);
    slot[off..off + 2].copy_from_slice(&(n as u16).to_le_bytes());
    slot[off + 2..off + 2 + n].copy_from_slice(&text[..n]);
}

/// One slot as read by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Slot {
    pub pid: u32,
    pub seq: u32,
    pub busy: bool,
    pub start_unix_ns: i64,
    pub request_id: [u8; 16],
    pub method: String,
    pub app: String,
    pub url: String,
    pub current_kind: u32,
    pub current: String,
    pub current_start_unix_ns: i64,
    pub served: u64,
    pub db_connections: u32,
}

/// Decodes a slot copy; `None` when free or caught mid-write (odd `seq`).
pub fn parse_slot(b: &[u8]) -> Option<Slot> {
    if b.len() < SLOT_BYTES {
        return None;
    }
    let pid = u32_at(b, S_PID);
    let seq = u32_at(b, S_SEQ);
    if pid == 0 || seq % 2 == 1 {
        return None;
    }
    let lossy = |t: &[u8]| String::from_utf8_lossy(t).into_owned();
    let mut request_id = [0u8; 16];
    request_id.copy_from_slice(&b[S_REQUEST_ID..S_REQUEST_ID + 16]);
    Some(Slot {
        pid,
        seq,
        busy: u32_at(b, S_STATE) == STATE_BUSY,
        start_unix_ns: u64_at(b, S_START_NS) as i64,
        request_id,
        method: lossy(text_at(b, S_METHOD, METHOD_CAP)),
        app: lossy(text_at(b, S_APP, APP_CAP)),
        url: lossy(text_at(b, S_URL, URL_CAP)),
        current_kind: u32_at(b, S_CURRENT_KIND),
        current: lossy(text_at(b, S_CURRENT, CURRENT_CAP)),
        current_start_unix_ns: u64_at(b, S_CURRENT_START_NS) as i64,
        served: u64_at(b, S_SERVED),
        db_connections: u32_at(b, S_DB_CONNECTIONS),
    })
}

/// The sequence number of a slot copy (to compare two reads).
pub fn slot_seq(b: &[u8]) -> u32 {
    u32_at(b, S_SEQ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        assert_eq!(file_bytes(2), 64 + 2048);
        assert_eq!(parse_header(&header(7)), Some(7));
        assert_eq!(parse_header(&[0u8; 64]), None);
    }

    #[test]
    fn slot_round_trip_and_torn_reads() {
        let mut s = vec![0u8; SLOT_BYTES];
        assert_eq!(parse_slot(&s), None, "free");
        s[S_PID..S_PID + 4].copy_from_slice(&42u32.to_le_bytes());
        s[S_SEQ..S_SEQ + 4].copy_from_slice(&2u32.to_le_bytes());
        s[S_STATE..S_STATE + 4].copy_from_slice(&STATE_BUSY.to_le_bytes());
        s[S_START_NS..S_START_NS + 8].copy_from_slice(&7i64.to_le_bytes());
        put_text(&mut s, S_METHOD, METHOD_CAP, b"GET");
        put_text(&mut s, S_APP, APP_CAP, b"shop");
        put_text(&mut s, S_URL, URL_CAP, &[b'x'; 1000]);
        put_text(&mut s, S_CURRENT, CURRENT_CAP, b"SELECT 1");
        let slot = parse_slot(&s).unwrap();
        assert_eq!((slot.pid, slot.busy, slot.start_unix_ns), (42, true, 7));
        assert_eq!(slot.method, "GET");
        assert_eq!(slot.url.len(), URL_CAP);
        assert_eq!(slot.current, "SELECT 1");
        s[S_SEQ..S_SEQ + 4].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(parse_slot(&s), None, "mid-write");
        // Garbage lengths never read past the field.
        s[S_SEQ..S_SEQ + 4].copy_from_slice(&4u32.to_le_bytes());
        s[S_CURRENT..S_CURRENT + 2].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(parse_slot(&s).unwrap().current.len(), CURRENT_CAP);
    }
}
