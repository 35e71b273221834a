//! The bounded queue between the sources (ring, socket connections,
//! scoreboard) and the sink. Bounded in records and in bytes; when full the
//! incoming (newest) record is dropped and counted, so a stalled collector
//! costs memory up to the bound and no more. The sink takes records in
//! runs, not one wake-up per record.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::record::Record;

use crate::counters::{Counters, DropReason};
use crate::ratelimit::RateLimit;

/// How often the "dropping" warning repeats while drops go on.
const DROP_LOG_PERIOD: Duration = Duration::from_secs(10);

/// The sending side; cloned into each connection task.
#[derive(Debug, Clone)]
pub struct RecordQueue {
    tx: mpsc::Sender<Record>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    counters: Arc<Counters>,
    drop_log: Arc<RateLimit>,
}

/// The receiving side, owned by the sink.
#[derive(Debug)]
pub struct QueueReceiver {
    rx: mpsc::Receiver<Record>,
    bytes: Arc<AtomicUsize>,
}

/// A queue holding at most `capacity` records and `max_bytes` encoded bytes.
pub fn bounded(
    capacity: usize,
    max_bytes: usize,
    counters: Arc<Counters>,
) -> (RecordQueue, QueueReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        RecordQueue {
            tx,
            bytes: bytes.clone(),
            max_bytes,
            counters,
            drop_log: Arc::new(RateLimit::new(DROP_LOG_PERIOD)),
        },
        QueueReceiver { rx, bytes },
    )
}

impl RecordQueue {
    /// Queues `record`, or drops it (counted) when the queue is full. Never
    /// waits.
    pub fn push(&self, record: Record) -> bool {
        let size = record.len();
        let before = self.bytes.fetch_add(size, Ordering::Relaxed);
        if before + size > self.max_bytes {
            self.bytes.fetch_sub(size, Ordering::Relaxed);
            self.dropped("bytes");
            return false;
        }
        match self.tx.try_send(record) {
            Ok(()) => true,
            Err(e) => {
                self.bytes.fetch_sub(size, Ordering::Relaxed);
                let reason = match e {
                    mpsc::error::TrySendError::Full(_) => "records",
                    mpsc::error::TrySendError::Closed(_) => "closed",
                };
                self.dropped(reason);
                false
            }
        }
    }

    /// Room left now: (records, bytes). A source that can leave its
    /// records where they are (the ring) reads no more than this.
    pub fn room(&self) -> (usize, usize) {
        let bytes = self.bytes.load(Ordering::Relaxed);
        (self.tx.capacity(), self.max_bytes.saturating_sub(bytes))
    }

    fn dropped(&self, limit: &'static str) {
        self.counters.drop_records(DropReason::QueueFull, 1);
        if let Some(silenced) = self.drop_log.check(Instant::now()) {
            let total = self.counters.snapshot().records_dropped;
            tracing::warn!(
                records_dropped = total,
                since_last_warning = silenced + 1,
                limit,
                "record queue full: dropping the newest records"
            );
        }
    }
}

impl QueueReceiver {
    /// The next record; `None` once every sender is gone and the queue is
    /// empty. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Record> {
        let r = self.rx.recv().await?;
        self.bytes.fetch_sub(r.len(), Ordering::Relaxed);
        Some(r)
    }

    /// A queued record, without waiting (tests).
    #[cfg(test)]
    pub fn try_recv(&mut self) -> Option<Record> {
        let r = self.rx.try_recv().ok()?;
        self.bytes.fetch_sub(r.len(), Ordering::Relaxed);
        Some(r)
    }

    /// Waits for records, then appends up to `limit` of those queued to
    /// `out`; 0 once every sender is gone and the queue is empty.
    /// Cancel-safe.
    pub async fn recv_many(&mut self, out: &mut Vec<Record>, limit: usize) -> usize {
        let from = out.len();
        let n = self.rx.recv_many(out, limit).await;
        let bytes: usize = out[from..].iter().map(Record::len).sum();
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use sonde_proto::v1::RequestRecord;

    fn record(n: u8, url_len: usize) -> Record {
        Record::from_message(&RequestRecord {
            id: vec![n; 16],
            url: "x".repeat(url_len),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn full_queue_drops_the_newest_and_counts() {
        let counters = Arc::new(Counters::default());
        let (q, mut rx) = bounded(2, 1 << 20, counters.clone());
        assert!(q.push(record(1, 0)));
        assert!(q.push(record(2, 0)));
        assert!(!q.push(record(3, 0)));
        assert_eq!(counters.snapshot().records_dropped, 1);
        assert_eq!(rx.recv().await.unwrap().decode().id, vec![1; 16]);
        assert!(q.push(record(4, 0)));
        let mut got = Vec::new();
        assert_eq!(rx.recv_many(&mut got, 10).await, 2);
        let ids: Vec<u8> = got.iter().map(|r| r.decode().id[0]).collect();
        assert_eq!(ids, [2, 4]);
        assert_eq!(q.bytes.load(Ordering::Relaxed), 0, "bytes are released");
    }

    #[tokio::test]
    async fn room_counts_records_and_bytes() {
        let counters = Arc::new(Counters::default());
        let (q, mut rx) = bounded(10, 1000, counters);
        let r = record(1, 100);
        let len = r.len();
        assert_eq!(q.room(), (10, 1000));
        q.push(r);
        assert_eq!(q.room(), (9, 1000 - len));
        rx.recv().await.unwrap();
        assert_eq!(q.room(), (10, 1000));
    }

    #[tokio::test]
    async fn byte_bound_applies_too() {
        let counters = Arc::new(Counters::default());
        let (q, mut rx) = bounded(100, 1000, counters.clone());
        assert!(q.push(record(1, 600)));
        assert!(!q.push(record(2, 600)));
        assert_eq!(counters.snapshot().records_dropped, 1);
        rx.recv().await.unwrap();
        assert!(q.push(record(3, 600)), "bytes are released on receive");
    }
}
