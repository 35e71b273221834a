//! A mergeable latency histogram with bounded relative error: log-linear
//! buckets (HdrHistogram's layout). Values are non-negative integers — the
//! collector records nanoseconds. Values below 128 have a bucket each
//! (exact); above, every power of two is split into 128 equal buckets, so a
//! bucket is at most 1/128 of its lower bound wide and its midpoint is within
//! 1/256 (0.4 %) of any value in it.
//!
//! Quantiles use the nearest-rank definition (the smallest recorded value
//! with at least `q·n` values at or below it), answered with the midpoint of
//! the bucket holding that value and clamped to the exact min and max. Two
//! histograms merge exactly: merging and then asking equals asking a
//! histogram that saw both inputs. Pure and allocation-light; owns no I/O.

use thiserror::Error;

/// Bits of linear sub-buckets per power of two.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// First byte of the encoding; bumped if the layout ever changes.
const VERSION: u8 = 1;

/// Why bytes could not be read as a [`Sketch`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("sketch encoding is empty or truncated")]
    Truncated,
    #[error("unknown sketch encoding version {0}")]
    Version(u8),
    #[error("sketch encoding is malformed: {0}")]
    Malformed(&'static str),
}

/// The histogram. `Default` is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sketch {
    /// Index of `counts[0]`.
    offset: u32,
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
}

/// The bucket index of `v`.
fn index(v: u64) -> u32 {
    if v < SUB {
        return v as u32;
    }
    let shift = 63 - v.leading_zeros() - SUB_BITS;
    let mantissa = v >> shift; // in [SUB, 2·SUB)
    ((shift + 1) << SUB_BITS) + (mantissa - SUB) as u32
}

/// The smallest and largest value of bucket `i`.
fn bounds(i: u32) -> (u64, u64) {
    let i = u64::from(i);
    if i < SUB {
        return (i, i);
    }
    let shift = (i >> SUB_BITS) - 1;
    let mantissa = SUB + (i & (SUB - 1));
    let lo = mantissa << shift;
    (lo, lo + ((1u64 << shift) - 1))
}

impl Sketch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Smallest value recorded, exact; `None` when empty.
    pub fn min(&self) -> Option<u64> {
        (!self.is_empty()).then_some(self.min)
    }

    /// Largest value recorded, exact; `None` when empty.
    pub fn max(&self) -> Option<u64> {
        (!self.is_empty()).then_some(self.max)
    }

    /// Records `v` once.
    pub fn add(&mut self, v: u64) {
        self.add_n(v, 1);
    }

    /// Records `v` `n` times.
    pub fn add_n(&mut self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        let i = index(v);
        self.reserve(i, i);
        self.counts[(i - self.offset) as usize] += n;
        if self.total == 0 {
            (self.min, self.max) = (v, v);
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.total += n;
    }

    /// Grows `counts` so that indexes `lo..=hi` have a slot.
    fn reserve(&mut self, lo: u32, hi: u32) {
        if self.counts.is_empty() {
            self.offset = lo;
            self.counts = vec![0; (hi - lo + 1) as usize];
            return;
        }
        if lo < self.offset {
            let grow = (self.offset - lo) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = lo;
        }
        let end = self.offset + self.counts.len() as u32;
        if hi >= end {
            self.counts.resize((hi - self.offset + 1) as usize, 0);
        }
    }

    /// Adds everything `other` recorded.
    pub fn merge(&mut self, other: &Sketch) {
        if other.is_empty() {
            return;
        }
        let hi = other.offset + other.counts.len() as u32 - 1;
        self.reserve(other.offset, hi);
        let at = (other.offset - self.offset) as usize;
        for (slot, n) in self.counts[at..].iter_mut().zip(&other.counts) {
            *slot += n;
        }
        if self.total == 0 {
            (self.min, self.max) = (other.min, other.max);
        } else {
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
        }
        self.total += other.total;
    }

    /// The `q`-quantile (`0.0..=1.0`, clamped), nearest rank; `None` when
    /// empty. Within 1/256 of the true nearest-rank value.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.is_empty() {
            return None;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        // The extremes are known exactly.
        if rank == 1 {
            return Some(self.min);
        }
        if rank == self.total {
            return Some(self.max);
        }
        let mut seen = 0;
        for (k, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (lo, hi) = bounds(self.offset + k as u32);
                let mid = lo + (hi - lo) / 2;
                return Some(mid.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// The compact encoding: version, total, min, max, then each non-empty
    /// bucket as (gap from the previous index, count), all LEB128 varints.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 3 * self.counts.len().min(64));
        out.push(VERSION);
        put(&mut out, self.total);
        if self.total == 0 {
            return out;
        }
        put(&mut out, self.min);
        put(&mut out, self.max);
        let mut prev = 0u32;
        for (k, &n) in self.counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let i = self.offset + k as u32;
            put(&mut out, u64::from(i - prev));
            put(&mut out, n);
            prev = i;
        }
        out
    }

    /// Reads [`Sketch::to_bytes`] output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (&version, mut rest) = bytes.split_first().ok_or(DecodeError::Truncated)?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let total = get(&mut rest)?;
        let mut s = Sketch::default();
        if total == 0 {
            return if rest.is_empty() {
                Ok(s)
            } else {
                Err(DecodeError::Malformed("trailing bytes"))
            };
        }
        let min = get(&mut rest)?;
        let max = get(&mut rest)?;
        if min > max {
            return Err(DecodeError::Malformed("min above max"));
        }
        let (first, last) = (index(min), index(max));
        let mut i = 0u64;
        let mut sum = 0u64;
        let mut seen_any = false;
        while !rest.is_empty() {
            let gap = get(&mut rest)?;
            if seen_any && gap == 0 {
                return Err(DecodeError::Malformed("bucket repeated"));
            }
            i = i.checked_add(gap).ok_or(DecodeError::Malformed("index"))?;
            let n = get(&mut rest)?;
            if i < u64::from(first) || i > u64::from(last) || n == 0 {
                return Err(DecodeError::Malformed("bucket outside min..max"));
            }
            if s.counts.is_empty() {
                s.offset = first;
                s.counts = vec![0; (last - first + 1) as usize];
            }
            s.counts[(i as u32 - first) as usize] = n;
            sum = sum
                .checked_add(n)
                .ok_or(DecodeError::Malformed("count overflow"))?;
            seen_any = true;
        }
        if sum != total {
            return Err(DecodeError::Malformed("counts do not add up to total"));
        }
        s.total = total;
        s.min = min;
        s.max = max;
        Ok(s)
    }
}

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get(bytes: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first().ok_or(DecodeError::Truncated)?;
        *bytes = rest;
        let part = u64::from(b & 0x7f);
        if shift == 63 && part > 1 {
            return Err(DecodeError::Malformed("varint overflow"));
        }
        v |= part << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DecodeError::Malformed("varint too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so tests need no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// Log-uniform between 1 µs and ~100 s, in ns: latencies span decades.
        fn latency_ns(&mut self) -> u64 {
            let decades = (self.next() % 8_000) as f64 / 1000.0;
            (1_000.0 * 10f64.powf(decades)) as u64
        }
    }

    fn exact(sorted: &[u64], q: f64) -> u64 {
        let n = sorted.len() as u64;
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        sorted[rank as usize - 1]
    }

    #[test]
    fn buckets_are_contiguous_and_narrow() {
        let mut prev_hi = None;
        for i in 0..=index(u64::MAX) {
            let (lo, hi) = bounds(i);
            if let Some(p) = prev_hi {
                assert_eq!(lo, p + 1, "bucket {i}");
            }
            assert_eq!(index(lo), i);
            assert_eq!(index(hi), i);
            assert!((hi - lo) as f64 <= lo as f64 / SUB as f64, "bucket {i}");
            prev_hi = Some(hi);
        }
        let (_, hi) = bounds(index(u64::MAX));
        assert_eq!(hi, u64::MAX);
    }

    #[test]
    fn every_value_is_within_half_a_percent() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..100_000 {
            let v = rng.next() >> (rng.next() % 64);
            let (lo, hi) = bounds(index(v));
            assert!(lo <= v && v <= hi);
            let mid = lo + (hi - lo) / 2;
            let err = (mid as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err <= 1.0 / 256.0 + 1e-12, "{v}: {mid}");
        }
    }

    #[test]
    fn quantiles_within_one_percent() {
        let mut rng = Rng(42);
        let mut values: Vec<u64> = (0..50_000).map(|_| rng.latency_ns()).collect();
        let mut s = Sketch::new();
        for &v in &values {
            s.add(v);
        }
        values.sort_unstable();
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let want = exact(&values, q);
            let got = s.quantile(q).unwrap();
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err <= 0.01, "q{q}: got {got}, want {want}");
        }
        assert_eq!(s.quantile(0.0), Some(values[0]));
        assert_eq!(s.quantile(1.0), Some(*values.last().unwrap()));
        assert_eq!(s.count(), 50_000);
    }

    #[test]
    fn small_and_degenerate() {
        let mut s = Sketch::new();
        assert_eq!(s.quantile(0.5), None);
        assert_eq!((s.min(), s.max()), (None, None));
        s.add(7);
        assert_eq!(s.quantile(0.99), Some(7));
        s.add_n(3, 0);
        assert_eq!(s.count(), 1);
        s.add(0);
        assert_eq!(s.quantile(0.5), Some(0));
        assert_eq!(s.quantile(f64::NAN), Some(0));
        let mut big = Sketch::new();
        big.add(u64::MAX);
        big.add(u64::MAX - 1);
        assert_eq!(big.quantile(1.0), Some(u64::MAX));
    }

    #[test]
    fn merge_equals_one_sketch_of_both() {
        let mut rng = Rng(7);
        let (mut a, mut b, mut both) = (Sketch::new(), Sketch::new(), Sketch::new());
        for k in 0..20_000 {
            // Disjoint ranges, so merging has to grow both ends.
            let v = if k % 2 == 0 {
                rng.next() % 1_000
            } else {
                1_000_000 + rng.next() % 1_000_000_000
            };
            if k % 2 == 0 { &mut a } else { &mut b }.add(v);
            both.add(v);
        }
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, both);
        assert_eq!(ba, both);
        let mut e = Sketch::new();
        e.merge(&a);
        assert_eq!(e, a);
        a.merge(&Sketch::new());
        assert_eq!(e, a);
    }

    #[test]
    fn bytes_round_trip_and_reject_garbage() {
        let mut rng = Rng(99);
        let mut s = Sketch::new();
        assert_eq!(Sketch::from_bytes(&s.to_bytes()).unwrap(), s);
        for _ in 0..1_000 {
            s.add(rng.latency_ns());
        }
        let bytes = s.to_bytes();
        assert_eq!(Sketch::from_bytes(&bytes).unwrap(), s);
        assert!(bytes.len() < 3_000, "{} bytes", bytes.len());

        assert_eq!(Sketch::from_bytes(&[]), Err(DecodeError::Truncated));
        assert_eq!(Sketch::from_bytes(&[9]), Err(DecodeError::Version(9)));
        assert!(Sketch::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = bytes.clone();
        bad[1] ^= 1; // total no longer matches the counts
        assert!(Sketch::from_bytes(&bad).is_err());
        // Every truncation and every single-byte corruption is an error or
        // a valid sketch, never a panic.
        for cut in 0..bytes.len() {
            let _ = Sketch::from_bytes(&bytes[..cut]);
        }
        for at in 0..bytes.len().min(200) {
            let mut b = bytes.clone();
            b[at] = b[at].wrapping_add(0x55);
            let _ = Sketch::from_bytes(&b);
        }
    }
}
