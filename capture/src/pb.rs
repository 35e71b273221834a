//! Protobuf wire writing, by hand, into a reused buffer. PHP-free.
//!
//! The record is written straight from the per-request span buffer into its
//! frame: no `sonde.v1` message structs, no per-span `String`, nothing to
//! drop. Fields are written in field-number order and default values are
//! left out, as prost does, so the bytes are the ones prost would write for
//! the same record (the tests decode them with prost and compare). The
//! agent reads the frame with the generated `sonde.v1` code, unchanged.
//!
//! A nested message is written in place: its tag, a one-byte length
//! placeholder, its body, then the length is patched in, the body moved
//! right when the length needs more than one byte (rare: bodies are mostly
//! shorter than 128 bytes).

/// Wire type of varints.
const VARINT: u8 = 0;
/// Wire type of length-delimited fields (strings, bytes, messages).
const LEN: u8 = 2;

/// Appends the varints of `vals` (at most two, ten bytes each) with one
/// capacity check: the bytes are written through a local index, not one
/// `Vec::push` (check, store of the length) per byte.
#[inline(always)]
fn put(out: &mut Vec<u8>, vals: &[u64]) {
    debug_assert!(vals.len() <= 2);
    out.reserve(20);
    let len = out.len();
    let mut n = 0;
    {
        let spare = out.spare_capacity_mut();
        for &v in vals {
            let mut v = v;
            while v >= 0x80 {
                spare[n].write(v as u8 | 0x80);
                v >>= 7;
                n += 1;
            }
            spare[n].write(v as u8);
            n += 1;
        }
    }
    // SAFETY: `reserve(20)` made room for 20 more bytes and the loop above
    // initialised the first `n` (<= 20: two varints of at most 10 bytes).
    unsafe { out.set_len(len + n) };
}

#[inline]
pub fn varint(out: &mut Vec<u8>, v: u64) {
    put(out, &[v]);
}

/// Bytes the varint of `v` takes.
#[inline]
pub fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits, at least 1.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline(always)]
fn key(field: u32, wire: u8) -> u64 {
    (u64::from(field) << 3) | u64::from(wire)
}

/// A uint32/uint64/enum field, left out when 0.
#[inline]
pub fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put(out, &[key(field, VARINT), v]);
    }
}

/// An int64 field (negative values take ten bytes), left out when 0.
#[inline]
pub fn int64(out: &mut Vec<u8>, field: u32, v: i64) {
    uint(out, field, v as u64);
}

/// A bool field, left out when false.
#[inline]
pub fn boolean(out: &mut Vec<u8>, field: u32, v: bool) {
    uint(out, field, u64::from(v));
}

/// A bytes field, left out when empty.
#[inline]
pub fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    if !b.is_empty() {
        put(out, &[key(field, LEN), b.len() as u64]);
        out.extend_from_slice(b);
    }
}

/// A string field from raw bytes, left out when empty. Protobuf strings
/// must be UTF-8 (the agent's decoder refuses the whole record otherwise):
/// invalid sequences, e.g. a text cut inside a character, become U+FFFD.
#[inline]
pub fn string(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    if b.is_empty() {
        return;
    }
    match std::str::from_utf8(b) {
        Ok(_) => bytes(out, field, b),
        Err(_) => bytes(out, field, String::from_utf8_lossy(b).as_bytes()),
    }
}

/// A string field from text already known to be UTF-8, left out when
/// empty.
#[inline]
pub fn str(out: &mut Vec<u8>, field: u32, s: &str) {
    bytes(out, field, s.as_bytes());
}

/// Starts a nested message (or any length-delimited field written in
/// place); pass the mark to `end`.
#[inline]
pub fn begin(out: &mut Vec<u8>, field: u32) -> usize {
    put(out, &[key(field, LEN), 0]);
    out.len()
}

/// Ends the nested message started at `mark`: patches its length in.
#[inline]
pub fn end(out: &mut Vec<u8>, mark: usize) {
    let len = out.len() - mark;
    if len < 0x80 {
        out[mark - 1] = len as u8;
        return;
    }
    let n = varint_len(len as u64);
    let mut v = [0u8; 10];
    let mut i = 0;
    let mut x = len as u64;
    while x >= 0x80 {
        v[i] = x as u8 | 0x80;
        x >>= 7;
        i += 1;
    }
    v[i] = x as u8;
    // Room for the extra length bytes, then the body moves right.
    out.resize(out.len() + n - 1, 0);
    out.copy_within(mark..mark + len, mark + n - 1);
    out[mark - 1..mark - 1 + n].copy_from_slice(&v[..n]);
}

/// A short run of small fields written on the stack, appended to a span in
/// one copy once the span's length is known (the numbers around its
/// pre-encoded texts). Holds any three varint fields plus a string of up to
/// `Fields::MAX_STR` bytes; a write that does not fit is refused and
/// remembered (`as_slice` then gives None), never a panic.
pub struct Fields {
    buf: [u8; 128],
    n: usize,
    full: bool,
}

impl Fields {
    /// Longest string `str` takes.
    pub const MAX_STR: usize = 64;

    #[inline]
    pub fn new() -> Self {
        Fields {
            buf: [0; 128],
            n: 0,
            full: false,
        }
    }

    #[inline(always)]
    fn varint(&mut self, mut v: u64) {
        // One check per varint; the index masked to the buffer needs none
        // per byte (and cannot wrap: at most 10 bytes from n <= 118).
        if self.n > self.buf.len() - 10 {
            self.full = true;
            return;
        }
        let mut n = self.n;
        while v >= 0x80 {
            self.buf[n & 127] = v as u8 | 0x80;
            v >>= 7;
            n += 1;
        }
        self.buf[n & 127] = v as u8;
        self.n = n + 1;
    }

    /// A uint32/uint64/enum field, left out when 0.
    #[inline]
    pub fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.varint(key(field, VARINT));
            self.varint(v);
        }
    }

    /// An int64 field, left out when 0.
    #[inline]
    pub fn int64(&mut self, field: u32, v: i64) {
        self.uint(field, v as u64);
    }

    /// A string field known to be UTF-8 (at most `MAX_STR` bytes), left
    /// out when empty.
    #[inline]
    pub fn str(&mut self, field: u32, s: &str) {
        let b = s.as_bytes();
        if b.is_empty() {
            return;
        }
        if b.len() > Self::MAX_STR {
            self.full = true;
            return;
        }
        self.varint(key(field, LEN));
        self.varint(b.len() as u64);
        match self.buf.get_mut(self.n..self.n + b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                self.n += b.len();
            }
            None => self.full = true,
        }
    }

    /// The fields written, or None when some did not fit.
    #[inline]
    pub fn as_slice(&self) -> Option<&[u8]> {
        (!self.full).then(|| &self.buf[..self.n])
    }
}

impl Default for Fields {
    fn default() -> Self {
        Self::new()
    }
}

/// The tag and length of a length-delimited field (a nested message whose
/// body, `len` bytes long, the caller writes next).
#[inline]
pub fn len_prefix(out: &mut Vec<u8>, field: u32, len: usize) {
    put(out, &[key(field, LEN), len as u64]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use sonde_proto::v1::{ErrorInfo, Span};

    #[test]
    fn varint_lengths() {
        for (v, n) in [
            (0u64, 1),
            (1, 1),
            (127, 1),
            (128, 2),
            (16383, 2),
            (16384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(v), n, "{v}");
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out.len(), n, "{v}");
        }
    }

    #[test]
    fn same_bytes_as_prost_for_nested_and_long_messages() {
        for msg_len in [0usize, 10, 120, 127, 128, 300, 20_000] {
            let message = "m".repeat(msg_len);
            let span = Span {
                kind: 5,
                start_ns: 123_456,
                rows: -3,
                library: "php".into(),
                exception: Some(ErrorInfo {
                    class: "E".into(),
                    message: message.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let mut ours = Vec::new();
            let m = begin(&mut ours, 17);
            uint(&mut ours, 1, 5);
            uint(&mut ours, 2, 123_456);
            int64(&mut ours, 6, -3);
            string(&mut ours, 12, b"php");
            let e = begin(&mut ours, 13);
            string(&mut ours, 1, b"E");
            string(&mut ours, 2, message.as_bytes());
            end(&mut ours, e);
            end(&mut ours, m);
            let mut theirs = Vec::new();
            prost::encoding::message::encode(17, &span, &mut theirs);
            assert_eq!(ours, theirs, "message of {msg_len} bytes");
        }
    }

    #[test]
    fn fields_write_what_the_vec_writers_write() {
        for (start, dur, rows, lib) in [
            (0u64, 0u64, 0i64, ""),
            (1, 127, 1, "pdo"),
            (128, 16_384, -300, "mysqli"),
            (u64::MAX, 1 << 40, i64::MIN, &"l".repeat(64)[..]),
        ] {
            let mut head = Fields::new();
            head.uint(1, 3);
            head.uint(2, start);
            head.uint(3, dur);
            let mut tail = Fields::new();
            tail.int64(6, rows);
            tail.uint(10, 1);
            tail.str(12, lib);
            let (head, tail) = (head.as_slice().unwrap(), tail.as_slice().unwrap());
            let mut ours = Vec::new();
            len_prefix(&mut ours, 17, head.len() + tail.len());
            ours.extend_from_slice(head);
            ours.extend_from_slice(tail);
            let mut theirs = Vec::new();
            let m = begin(&mut theirs, 17);
            uint(&mut theirs, 1, 3);
            uint(&mut theirs, 2, start);
            uint(&mut theirs, 3, dur);
            int64(&mut theirs, 6, rows);
            uint(&mut theirs, 10, 1);
            str(&mut theirs, 12, lib);
            end(&mut theirs, m);
            assert_eq!(ours, theirs);
        }
        // Too long: refused, no panic.
        let mut f = Fields::new();
        f.str(12, &"l".repeat(65));
        assert!(f.as_slice().is_none());
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        let mut out = Vec::new();
        let m = begin(&mut out, 1);
        string(&mut out, 9, b"ok \xe2\x82");
        end(&mut out, m);
        let span = Span::decode(&out[2..]).unwrap();
        assert_eq!(span.error, "ok \u{fffd}");
    }
}
