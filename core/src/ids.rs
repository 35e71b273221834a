//! Record and span ids without a syscall per request: a per-process
//! generator seeded once (from the OS, the pid and the clock) and advanced
//! with SplitMix64. After `fork` the caller must reseed (the extension does
//! when it sees a new pid), or two workers would produce the same ids.

/// A 128-bit id generator. Not cryptographic; ids only need to be unique.
#[derive(Debug, Clone)]
pub struct IdGen {
    state: u64,
    salt: u64,
}

impl IdGen {
    /// Seeds from caller-supplied entropy (e.g. 16 bytes from getrandom,
    /// mixed with the pid and the time).
    pub fn new(seed_a: u64, seed_b: u64) -> Self {
        let mut g = IdGen {
            state: seed_a,
            salt: 0,
        };
        g.salt = g.next_u64() ^ seed_b;
        g
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A new 16-byte id (never all zero).
    pub fn id128(&mut self) -> [u8; 16] {
        let a = self.next_u64();
        let b = self.next_u64() ^ self.salt;
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&a.to_be_bytes());
        out[8..].copy_from_slice(&b.to_be_bytes());
        if out == [0u8; 16] {
            out[15] = 1;
        }
        out
    }

    /// A new 8-byte id (never all zero), e.g. a W3C span id.
    pub fn id64(&mut self) -> [u8; 8] {
        let v = self.next_u64().max(1);
        v.to_be_bytes()
    }
}

/// Lower-case hex of `bytes`, as the API shows ids.
pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Parses lower- or upper-case hex; `None` on odd length or a non-hex digit.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_distinct() {
        let mut g = IdGen::new(1, 2);
        let set: HashSet<_> = (0..100_000).map(|_| g.id128()).collect();
        assert_eq!(set.len(), 100_000);
    }

    #[test]
    fn different_seeds_differ() {
        let a = IdGen::new(1, 2).id128();
        let b = IdGen::new(1, 3).id128();
        let c = IdGen::new(2, 2).id128();
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn hex_round_trip() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(to_hex(&bytes), "0001abff");
        assert_eq!(from_hex("0001ABff").unwrap(), bytes);
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
