//! Groups records (and host metrics samples) into batches by count, by size
//! and by age, encoding each batch once as it fills: a record is copied
//! into the open batch's buffer as it arrives (its bytes as received, never
//! re-encoded), so sealing, sending, spooling and replaying a batch only
//! move reference-counted bytes. Pure and clock-free: the caller passes
//! `now` and seals at `deadline()`, so the rules are unit-tested without
//! waiting.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use prost::bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;
#[cfg(test)]
use sonde_proto::v1::Batch;
use sonde_proto::v1::HostMetrics;

use super::record::Record;

/// `Batch` field numbers.
const BATCH_ID: u32 = 1;
const RECORDS: u32 = 2;
const HOST_METRICS: u32 = 3;
const REPLAY: u32 = 4;
/// Smallest buffer reserved for a new batch.
const MIN_RESERVE: usize = 4 << 10;

/// When a batch is full or old enough to send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_records: usize,
    /// Encoded bytes of the records inside the `Batch` message.
    pub max_bytes: usize,
    /// Longest the first record of a batch waits.
    pub max_age: Duration,
}

/// An encoded `sonde.v1.Batch`: its records and host samples as they will
/// go on the wire, plus the id and replay flag, which are written after
/// them (a batch read back from the spool already holds an older id: the
/// later value is the one that counts). Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedBatch {
    /// Encoded `Batch` fields: `records` and `host_metrics` (and, read back
    /// from the spool, the id it was written with).
    body: Bytes,
    /// Records inside.
    pub records: u32,
    /// Host samples inside (0 when read back from the spool: not counted).
    pub host_samples: u32,
    /// 0 until the outbox gives it one.
    pub batch_id: u64,
    pub replay: bool,
    /// The ring offset just past its last record read from the ring (0:
    /// none, or read back from the spool): once the batch is durable, the
    /// ring may free up to here (`buffer::durable`).
    pub ring_end: u64,
}

impl EncodedBatch {
    /// A batch from encoded `Batch` fields holding `records` records.
    pub fn from_body(body: Bytes, records: u32) -> EncodedBatch {
        EncodedBatch {
            body,
            records,
            ..Default::default()
        }
    }

    /// The encoding of `batch`, as it is (tests).
    #[cfg(test)]
    pub fn from_batch(batch: &Batch) -> EncodedBatch {
        EncodedBatch {
            body: batch.encode_to_vec().into(),
            records: batch.records.len() as u32,
            host_samples: batch.host_metrics.len() as u32,
            ..Default::default()
        }
    }

    /// Bytes of the encoded `Batch`.
    pub fn encoded_len(&self) -> usize {
        let id = if self.batch_id != 0 {
            1 + encoded_len_varint(self.batch_id)
        } else {
            0
        };
        self.body.len() + id + if self.replay { 2 } else { 0 }
    }

    /// Writes the encoded `Batch`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.body);
        if self.batch_id != 0 {
            encode_key(BATCH_ID, WireType::Varint, buf);
            encode_varint(self.batch_id, buf);
        }
        if self.replay {
            encode_key(REPLAY, WireType::Varint, buf);
            buf.put_u8(1);
        }
    }

    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v);
        v
    }

    /// Decoded (tests only: the agent never needs to).
    #[cfg(test)]
    pub fn decode(&self) -> Batch {
        Batch::decode(self.to_vec().as_slice()).expect("an encoded batch decodes")
    }
}

/// The open batch plus the batches sealed but not yet taken.
#[derive(Debug)]
pub struct Batcher {
    limits: Limits,
    /// The open batch's encoded records.
    open: BytesMut,
    open_records: u32,
    /// The open batch's largest `Record::ring_end`.
    open_ring_end: u64,
    open_host: Vec<HostMetrics>,
    /// `open` plus what the host samples will add.
    open_bytes: usize,
    opened_at: Option<Instant>,
    /// Size of the last sealed batch: what to reserve for the next.
    last_len: usize,
    /// Sealed batches, without an id yet.
    sealed: VecDeque<EncodedBatch>,
}

impl Batcher {
    pub fn new(limits: Limits) -> Self {
        Batcher {
            limits,
            open: BytesMut::new(),
            open_records: 0,
            open_ring_end: 0,
            open_host: Vec::new(),
            open_bytes: 0,
            opened_at: None,
            last_len: 0,
            sealed: VecDeque::new(),
        }
    }

    /// New limits (a configuration reload); the collector's cap is applied
    /// again at the next connection.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Lowers the byte limit (the collector announces its own maximum).
    pub fn cap_bytes(&mut self, max_bytes: usize) {
        self.limits.max_bytes = self.limits.max_bytes.min(max_bytes.max(1));
    }

    /// Adds a record. Seals the open batch first if the record would not fit
    /// in it, and seals it after if it is now full; a record larger than the
    /// byte limit travels alone.
    pub fn push(&mut self, record: &Record, now: Instant) {
        let size = record.wire_len();
        if !self.is_open_empty() && self.open_bytes + size > self.limits.max_bytes {
            self.seal();
        }
        if self.is_open_empty() {
            self.open_batch(now, size);
        }
        record.put_field(RECORDS, &mut self.open);
        self.open_records += 1;
        self.open_ring_end = self.open_ring_end.max(record.ring_end());
        self.open_bytes += size;
        if self.open_records as usize >= self.limits.max_records
            || self.open_bytes >= self.limits.max_bytes
        {
            self.seal();
        }
    }

    /// Adds a host metrics sample; it travels with the records of the same
    /// period (a few hundred bytes every few seconds: it never seals a batch
    /// by itself).
    pub fn push_host(&mut self, sample: HostMetrics, now: Instant) {
        if self.is_open_empty() {
            self.open_batch(now, 0);
        }
        self.open_bytes += 2 + sample.encoded_len();
        self.open_host.push(sample);
    }

    fn open_batch(&mut self, now: Instant, first: usize) {
        self.opened_at = Some(now);
        // About what the last batch took (at most the limit), so a busy
        // batch fills without being copied as it grows.
        let want = self
            .last_len
            .min(self.limits.max_bytes)
            .max(first)
            .max(MIN_RESERVE);
        self.open.reserve(want);
    }

    fn is_open_empty(&self) -> bool {
        self.open_records == 0 && self.open_host.is_empty()
    }

    /// When the open batch must be sealed by age, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.limits.max_age)
    }

    /// Seals the open batch now (time flush, shutdown).
    pub fn seal(&mut self) {
        if !self.is_open_empty() {
            let host_samples = self.open_host.len() as u32;
            for sample in self.open_host.drain(..) {
                prost::encoding::message::encode(HOST_METRICS, &sample, &mut self.open);
            }
            let body = self.open.split().freeze();
            self.last_len = body.len();
            self.sealed.push_back(EncodedBatch {
                body,
                records: std::mem::take(&mut self.open_records),
                host_samples,
                batch_id: 0,
                replay: false,
                ring_end: std::mem::take(&mut self.open_ring_end),
            });
        }
        self.open_bytes = 0;
        self.opened_at = None;
    }

    /// The oldest sealed batch (its `batch_id` still 0).
    pub fn pop_sealed(&mut self) -> Option<EncodedBatch> {
        self.sealed.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_proto::v1::RequestRecord;

    fn rec(n: u8, url_len: usize) -> Record {
        Record::from_message(&RequestRecord {
            id: vec![n; 16],
            url: "u".repeat(url_len),
            ..Default::default()
        })
    }

    fn limits(max_records: usize, max_bytes: usize) -> Limits {
        Limits {
            max_records,
            max_bytes,
            max_age: Duration::from_millis(1000),
        }
    }

    fn ids(batch: &EncodedBatch) -> Vec<u8> {
        let b = batch.decode();
        assert_eq!(b.records.len(), batch.records as usize);
        b.records.iter().map(|r| r.id[0]).collect()
    }

    #[test]
    fn seals_by_count() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(3, 1 << 20));
        for n in 1..=7 {
            b.push(&rec(n, 10), now);
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
        let one = rec(0, 100).wire_len();
        let mut b = Batcher::new(limits(1000, one * 2 + one / 2));
        for n in 1..=5 {
            b.push(&rec(n, 100), now);
        }
        assert_eq!(ids(&b.pop_sealed().unwrap()), [1, 2]);
        assert_eq!(ids(&b.pop_sealed().unwrap()), [3, 4]);
        assert!(b.pop_sealed().is_none());
        // A record bigger than the limit goes alone, after the open batch.
        b.push(&rec(6, one * 4), now);
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
            b.push(&rec(n, n as usize * 3), now);
        }
        b.seal();
        while let Some(batch) = b.pop_sealed() {
            let records_len = batch.encoded_len();
            assert!(records_len <= max, "{records_len}");
            assert_eq!(batch.decode().encoded_len(), records_len);
        }
    }

    #[test]
    fn seals_by_age_from_the_first_record() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(100, 1 << 20));
        b.push(&rec(1, 0), t0);
        b.push(&rec(2, 0), t0 + Duration::from_millis(900));
        // The deadline runs from the first record, not the last.
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(1000)));
        assert!(b.pop_sealed().is_none());
        b.seal();
        assert_eq!(ids(&b.pop_sealed().unwrap()), [1, 2]);
        assert!(b.deadline().is_none());
        b.push(&rec(3, 0), t0 + Duration::from_millis(5000));
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
        b.push(&rec(1, 0), t0);
        b.push(&rec(2, 0), t0);
        let batch = b.pop_sealed().unwrap();
        assert_eq!(ids(&batch), [1, 2]);
        assert_eq!(batch.host_samples, 1);
        assert_eq!(batch.decode().host_metrics, [sample(1)]);
        b.push_host(sample(2), t0);
        b.seal();
        let batch = b.pop_sealed().unwrap();
        assert_eq!(batch.records, 0);
        assert_eq!(batch.decode().host_metrics, [sample(2)]);
    }

    #[test]
    fn a_batch_carries_the_end_of_its_last_ring_record() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(3, 1 << 20));
        for (n, end) in [(1, 100), (2, 0), (3, 250), (4, 300), (5, 0)] {
            b.push(&rec(n, 1).with_ring_end(end), now);
        }
        assert_eq!(b.pop_sealed().unwrap().ring_end, 250);
        b.seal();
        assert_eq!(b.pop_sealed().unwrap().ring_end, 300);
        b.push(&rec(6, 1), now);
        b.seal();
        assert_eq!(b.pop_sealed().unwrap().ring_end, 0, "no ring record");
    }

    #[test]
    fn the_id_and_replay_flag_written_last_win() {
        let mut b = Batcher::new(limits(10, 1 << 20));
        b.push(&rec(1, 5), Instant::now());
        b.seal();
        let mut batch = b.pop_sealed().unwrap();
        batch.batch_id = 41;
        let d = batch.decode();
        assert_eq!((d.batch_id, d.replay), (41, false));
        // Read back from the spool (its body now holds id 41), then resent
        // under a new id as a replay.
        let mut again = EncodedBatch::from_body(batch.to_vec().into(), batch.records);
        again.batch_id = 7;
        again.replay = true;
        let d = again.decode();
        assert_eq!((d.batch_id, d.replay, d.records.len()), (7, true, 1));
        assert_eq!(d.encoded_len() + 2, again.encoded_len(), "one id more");
        // From a decoded batch, as it was.
        let whole = Batch {
            batch_id: 3,
            records: vec![rec(9, 1).decode()],
            ..Default::default()
        };
        let e = EncodedBatch::from_batch(&whole);
        assert_eq!((e.records, e.decode()), (1, whole));
    }
}
