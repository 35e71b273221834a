//! The bounded queue between the socket connections and the sink. Bounded in
//! records and in bytes; when full the incoming (newest) record is dropped and
//! counted, so a stalled collector costs memory up to the bound and no more.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use sonde_proto::v1::RequestRecord;
use tokio::sync::mpsc;

use crate::counters::{Counters, DropReason};
use crate::ratelimit::RateLimit;

/// How often the "dropping" warning repeats while drops go on.
const DROP_LOG_PERIOD: Duration = Duration::from_secs(10);

/// The sending side; cloned into each connection task.
#[derive(Debug, Clone)]
pub struct RecordQueue {
    tx: mpsc::Sender<RequestRecord>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    counters: Arc<Counters>,
    drop_log: Arc<RateLimit>,
}

/// The receiving side, owned by the sink.
#[derive(Debug)]
pub struct QueueReceiver {
    rx: mpsc::Receiver<RequestRecord>,
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
    pub fn push(&self, record: RequestRecord) -> bool {
        let size = record.encoded_len();
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
    pub async fn recv(&mut self) -> Option<RequestRecord> {
        let r = self.rx.recv().await?;
        self.bytes.fetch_sub(r.encoded_len(), Ordering::Relaxed);
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8, url_len: usize) -> RequestRecord {
        RequestRecord {
            id: vec![n; 16],
            url: "x".repeat(url_len),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn full_queue_drops_the_newest_and_counts() {
        let counters = Arc::new(Counters::default());
        let (q, mut rx) = bounded(2, 1 << 20, counters.clone());
        assert!(q.push(record(1, 0)));
        assert!(q.push(record(2, 0)));
        assert!(!q.push(record(3, 0)));
        assert_eq!(counters.snapshot().records_dropped, 1);
        assert_eq!(rx.recv().await.unwrap().id, vec![1; 16]);
        assert!(q.push(record(4, 0)));
        assert_eq!(rx.recv().await.unwrap().id, vec![2; 16]);
        assert_eq!(rx.recv().await.unwrap().id, vec![4; 16]);
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
