//! The record ring: a file the agent creates and every PHP worker maps
//! (`MAP_SHARED`), through which finished-request frames reach the agent
//! with no syscall on the PHP side and no wake-up per record on the agent's.
//! Records wait in it while the agent is stalled or restarting.
//!
//! Layout (little-endian): a 4096-byte header, then `capacity` data bytes (a
//! power of two). Header words, each 8-byte aligned:
//! - `head` (u64, atomic): bytes reserved by producers so far;
//! - `tail` (u64): bytes consumed by the agent so far;
//! - `dropped` (u64, atomic): frames producers dropped because the ring was
//!   full.
//!
//! A producer reserves `entry_bytes(len)` by compare-and-swap on `head`
//! (after checking `head + need - tail <= capacity`), writes the entry's
//! length, then its frame, then sets the entry's `state` to `COMMITTED`
//! (release). An entry never wraps: when it would cross the end, the
//! producer reserves the rest of the ring too and marks it `PADDING`. The
//! consumer reads entries from `tail` in order, waits while the next entry
//! is not yet committed, zeroes each consumed entry header, then advances
//! `tail`. This module owns the layout and the pure arithmetic; the atomic
//! stores (extension) and the reads (agent, with `pread`/`pwrite`) live
//! with their owners.

/// File magic.
pub const MAGIC: [u8; 8] = *b"SNDRNG01";
/// Header bytes before the data.
pub const HEADER_BYTES: usize = 4096;
pub const H_MAGIC: usize = 0;
/// u64: data capacity in bytes (a power of two).
pub const H_CAPACITY: usize = 8;
/// u64 (atomic): bytes reserved by producers.
pub const H_HEAD: usize = 64;
/// u64: bytes consumed by the agent.
pub const H_TAIL: usize = 128;
/// u64 (atomic): frames dropped by producers because the ring was full.
pub const H_DROPPED: usize = 192;

/// Entry header bytes: u32 length of the frame, u32 state.
pub const ENTRY_HEADER: usize = 8;
pub const E_LEN: usize = 0;
pub const E_STATE: usize = 4;
pub const STATE_EMPTY: u32 = 0;
pub const STATE_COMMITTED: u32 = 1;
pub const STATE_PADDING: u32 = 2;

/// Default data capacity: 64 MiB (a 1 s stall at 10,000 requests/s of ~1 KiB
/// records uses a sixth of it).
pub const DEFAULT_CAPACITY: u64 = 64 << 20;

/// Bytes an entry carrying a frame of `len` bytes takes (8-aligned).
pub fn entry_bytes(len: usize) -> u64 {
    ((ENTRY_HEADER + len + 7) & !7) as u64
}

/// Where an entry of `need` bytes reserved at `head` goes: (padding bytes
/// before it, its offset in the data). An entry never crosses the end.
pub fn placement(head: u64, need: u64, capacity: u64) -> (u64, u64) {
    let off = head % capacity;
    if off + need <= capacity {
        (0, off)
    } else {
        (capacity - off, 0)
    }
}

/// Whether `pad + need` more bytes fit given `head` and `tail`.
pub fn fits(head: u64, tail: u64, pad: u64, need: u64, capacity: u64) -> bool {
    head.saturating_sub(tail) + pad + need <= capacity
}

/// A header for a ring of `capacity` data bytes.
pub fn header(capacity: u64) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[H_MAGIC..H_MAGIC + 8].copy_from_slice(&MAGIC);
    h[H_CAPACITY..H_CAPACITY + 8].copy_from_slice(&capacity.to_le_bytes());
    h
}

/// The capacity of a valid header, `None` for another layout.
pub fn parse_header(h: &[u8]) -> Option<u64> {
    if h.len() < HEADER_BYTES || h[..8] != MAGIC {
        return None;
    }
    let cap = u64_at(h, H_CAPACITY);
    (cap.is_power_of_two() && cap >= 4096).then_some(cap)
}

/// A little-endian u64 at `off`.
pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or_default())
}

/// A little-endian u32 at `off`.
pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        assert_eq!(entry_bytes(0), 8);
        assert_eq!(entry_bytes(1), 16);
        assert_eq!(entry_bytes(8), 16);
        assert_eq!(entry_bytes(9), 24);
        assert_eq!(placement(0, 16, 64), (0, 0));
        assert_eq!(placement(48, 16, 64), (0, 48));
        assert_eq!(placement(56, 16, 64), (8, 0));
        assert_eq!(placement(64 + 56, 16, 64), (8, 0));
        assert!(fits(64, 0, 0, 0, 64));
        assert!(!fits(64, 0, 0, 8, 64));
        assert!(fits(120, 80, 8, 16, 64));
        assert!(!fits(120, 64, 8, 16, 64));
        assert_eq!(parse_header(&header(1 << 20)), Some(1 << 20));
        assert_eq!(parse_header(&header(1000)), None);
    }
}
