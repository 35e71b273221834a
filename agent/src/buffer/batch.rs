//! Groups records into batches by count, by size and by age. Pure and
//! clock-free: the caller passes `now` and seals at `deadline()`, so the rules
//! are unit-tested without waiting.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use prost::Message;
use sonde_proto::v1::RequestRecord;

/// When a batch is full or old enough to send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_records: usize,
    /// Encoded bytes of the records inside the `Batch` message.
    pub max_bytes: usize,
    /// Longest the first record of a batch waits.
    pub max_age: Duration,
}

/// The open batch plus the batches sealed but not yet taken.
#[derive(Debug)]
pub struct Batcher {
    limits: Limits,
    open: Vec<RequestRecord>,
    open_bytes: usize,
    opened_at: Option<Instant>,
    sealed: VecDeque<Vec<RequestRecord>>,
}

/// Bytes `record` adds to an encoded `Batch` (field 2: tag, length, body).
pub fn wire_len(record: &RequestRecord) -> usize {
    let body = record.encoded_len();
    1 + prost::encoding::encoded_len_varint(body as u64) + body
}

impl Batcher {
    pub fn new(limits: Limits) -> Self {
        Batcher {
            limits,
            open: Vec::new(),
            open_bytes: 0,
            opened_at: None,
            sealed: VecDeque::new(),
        }
    }

    /// Lowers the byte limit (the collector announces its own maximum).
    pub fn cap_bytes(&mut self, max_bytes: usize) {
        self.limits.max_bytes = self.limits.max_bytes.min(max_bytes.max(1));
    }

    /// Adds a record. Seals the open batch first if the record would not fit
    /// in it, and seals it after if it is now full; a record larger than the
    /// byte limit travels alone.
    pub fn push(&mut self, record: RequestRecord, now: Instant) {
        let size = wire_len(&record);
        if !self.open.is_empty() && self.open_bytes + size > self.limits.max_bytes {
            self.seal();
        }
        if self.open.is_empty() {
            self.opened_at = Some(now);
        }
        self.open.push(record);
        self.open_bytes += size;
        if self.open.len() >= self.limits.max_records || self.open_bytes >= self.limits.max_bytes {
            self.seal();
        }
    }

    /// When the open batch must be sealed by age, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.limits.max_age)
    }

    /// Seals the open batch now (time flush, shutdown).
    pub fn seal(&mut self) {
        if !self.open.is_empty() {
            self.sealed.push_back(std::mem::take(&mut self.open));
        }
        self.open_bytes = 0;
        self.opened_at = None;
    }

    /// Whether sealed batches wait to be taken.
    pub fn has_sealed(&self) -> bool {
        !self.sealed.is_empty()
    }

    /// The oldest sealed batch's records.
    pub fn pop_sealed(&mut self) -> Option<Vec<RequestRecord>> {
        self.sealed.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8, url_len: usize) -> RequestRecord {
        RequestRecord {
            id: vec![n; 16],
            url: "u".repeat(url_len),
            ..Default::default()
        }
    }

    fn limits(max_records: usize, max_bytes: usize) -> Limits {
        Limits {
            max_records,
            max_bytes,
            max_age: Duration::from_millis(1000),
        }
    }

    fn ids(batch: &[RequestRecord]) -> Vec<u8> {
        batch.iter().map(|r| r.id[0]).collect()
    }

    #[test]
    fn seals_by_count() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(3, 1 << 20));
        for n in 1..=7 {
            b.push(rec(n, 10), now);
        }
        assert_eq!(ids(&b.pop_sealed().unwrap()), [1, 2, 3]);
        assert_eq!(ids(&b.pop_sealed().unwrap()), [4, 5, 6]);
        assert!(b.pop_sealed().is_none());
        b.seal();
        assert_eq!(ids(&b.pop_sealed().unwrap()), [7]);
        assert!(b.deadline().is_none());
    }

    #[test]
    fn seals_by_size_and_never_exceeds_it_except_alone() {
        let now = Instant::now();
        let one = wire_len(&rec(0, 100));
        let mut b = Batcher::new(limits(1000, one * 2 + one / 2));
        for n in 1..=5 {
            b.push(rec(n, 100), now);
        }
        assert_eq!(ids(&b.pop_sealed().unwrap()), [1, 2]);
        assert_eq!(ids(&b.pop_sealed().unwrap()), [3, 4]);
        assert!(b.pop_sealed().is_none());
        // A record bigger than the limit goes alone, after the open batch.
        b.push(rec(6, one * 4), now);
        assert_eq!(ids(&b.pop_sealed().unwrap()), [5]);
        assert_eq!(ids(&b.pop_sealed().unwrap()), [6]);
        assert!(b.pop_sealed().is_none());
    }

    #[test]
    fn the_encoded_batch_respects_the_byte_limit() {
        let now = Instant::now();
        let max = 4096;
        let mut b = Batcher::new(limits(1000, max));
        for n in 0..100u8 {
            b.push(rec(n, n as usize * 3), now);
        }
        b.seal();
        while let Some(records) = b.pop_sealed() {
            let batch = sonde_proto::v1::Batch {
                records,
                ..Default::default()
            };
            let records_len = batch.encoded_len();
            assert!(records_len <= max, "{records_len}");
        }
    }

    #[test]
    fn seals_by_age_from_the_first_record() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(100, 1 << 20));
        b.push(rec(1, 0), t0);
        b.push(rec(2, 0), t0 + Duration::from_millis(900));
        // The deadline runs from the first record, not the last.
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(1000)));
        assert!(b.pop_sealed().is_none());
        b.seal();
        assert_eq!(ids(&b.pop_sealed().unwrap()), [1, 2]);
        assert!(b.deadline().is_none());
        b.push(rec(3, 0), t0 + Duration::from_millis(5000));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(6000)));
    }
}
