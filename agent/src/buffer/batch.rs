//! Groups records (and host metrics samples) into batches by count, by size
//! and by age. Pure and clock-free: the caller passes `now` and seals at `deadline()`, so the rules
//! are unit-tested without waiting.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use prost::Message;
use sonde_proto::v1::{Batch, HostMetrics, RequestRecord};

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
    open_host: Vec<HostMetrics>,
    open_bytes: usize,
    opened_at: Option<Instant>,
    /// Sealed batches, without an id yet.
    sealed: VecDeque<Batch>,
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
            open_host: Vec::new(),
            open_bytes: 0,
            opened_at: None,
            sealed: VecDeque::new(),
        }
    }

    /// Lowers the byte limit (the collector announces its own maximum).
    /// New limits (a configuration reload); the collector's cap is applied
    /// again at the next connection.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn cap_bytes(&mut self, max_bytes: usize) {
        self.limits.max_bytes = self.limits.max_bytes.min(max_bytes.max(1));
    }

    /// Adds a record. Seals the open batch first if the record would not fit
    /// in it, and seals it after if it is now full; a record larger than the
    /// byte limit travels alone.
    pub fn push(&mut self, record: RequestRecord, now: Instant) {
        let size = wire_len(&record);
        if !self.is_open_empty() && self.open_bytes + size > self.limits.max_bytes {
            self.seal();
        }
        if self.is_open_empty() {
            self.opened_at = Some(now);
        }
        self.open.push(record);
        self.open_bytes += size;
        if self.open.len() >= self.limits.max_records || self.open_bytes >= self.limits.max_bytes {
            self.seal();
        }
    }

    /// Adds a host metrics sample; it travels with the records of the same
    /// period (a few hundred bytes every few seconds: it never seals a batch
    /// by itself).
    pub fn push_host(&mut self, sample: HostMetrics, now: Instant) {
        if self.is_open_empty() {
            self.opened_at = Some(now);
        }
        self.open_bytes += 2 + sample.encoded_len();
        self.open_host.push(sample);
    }

    fn is_open_empty(&self) -> bool {
        self.open.is_empty() && self.open_host.is_empty()
    }

    /// When the open batch must be sealed by age, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.limits.max_age)
    }

    /// Seals the open batch now (time flush, shutdown).
    pub fn seal(&mut self) {
        if !self.is_open_empty() {
            self.sealed.push_back(Batch {
                records: std::mem::take(&mut self.open),
                host_metrics: std::mem::take(&mut self.open_host),
                ..Default::default()
            });
        }
        self.open_bytes = 0;
        self.opened_at = None;
    }

    /// The oldest sealed batch (its `batch_id` still 0).
    pub fn pop_sealed(&mut self) -> Option<Batch> {
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

    fn ids(batch: &Batch) -> Vec<u8> {
        batch.records.iter().map(|r| r.id[0]).collect()
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
        while let Some(batch) = b.pop_sealed() {
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

    #[test]
    fn host_samples_ride_with_records_and_open_a_batch_alone() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(2, 1 << 20));
        let sample = |ts| HostMetrics {
            ts_unix_ms: ts,
            ..Default::default()
        };
        b.push_host(sample(1), t0);
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(1000)));
        b.push(rec(1, 0), t0);
        b.push(rec(2, 0), t0);
        let batch = b.pop_sealed().unwrap();
        assert_eq!(ids(&batch), [1, 2]);
        assert_eq!(batch.host_metrics, [sample(1)]);
        b.push_host(sample(2), t0);
        b.seal();
        let batch = b.pop_sealed().unwrap();
        assert!(batch.records.is_empty());
        assert_eq!(batch.host_metrics, [sample(2)]);
    }
}
