//! The agent's own counters: what it received, refused, dropped (and why),
//! spooled, replayed, sent and saw acknowledged, cumulative since start, plus
//! a few gauges. The proto's `AgentCounters` subset goes to the collector in
//! every heartbeat; all of them are served on the Prometheus endpoint
//! (`metrics.rs`) and the main ones logged every minute. Nothing here blocks.

use std::sync::atomic::{AtomicU64, Ordering};

use sonde_proto::v1::AgentCounters;

/// Why records were lost; each has its own counter and all add up to
/// `records_dropped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The in-memory queue was full (records or bytes).
    QueueFull,
    /// The collector answered a batch with `Reject`.
    Rejected,
    /// The spool was full: its oldest unsent data was deleted.
    SpoolFull,
    /// Writing to the spool failed (disk error, a batch larger than the spool).
    SpoolWrite,
    /// Spooled data was found damaged when read back.
    SpoolCorrupt,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::QueueFull,
        DropReason::Rejected,
        DropReason::SpoolFull,
        DropReason::SpoolWrite,
        DropReason::SpoolCorrupt,
    ];

    /// The `reason` label on the metrics endpoint.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Rejected => "rejected",
            DropReason::SpoolFull => "spool_full",
            DropReason::SpoolWrite => "spool_write",
            DropReason::SpoolCorrupt => "spool_corrupt",
        }
    }
}

/// One atomic per counter; shared by every task through an `Arc`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Socket messages read (frames of any kind, valid or not).
    pub messages_received: AtomicU64,
    /// Bytes of those messages.
    pub bytes_received: AtomicU64,
    /// Well-formed records taken from the socket.
    pub records_received: AtomicU64,
    /// Socket messages that were not a valid frame or `ExtMessage`.
    pub records_malformed: AtomicU64,
    /// Records the agent lost, all reasons (the sum of `dropped`).
    pub records_dropped: AtomicU64,
    /// The same, by reason (indexed like `DropReason::ALL`).
    dropped: [AtomicU64; 5],
    /// Records written to the disk spool (a batch spooled twice counts twice).
    pub records_spooled: AtomicU64,
    /// Bytes written to the spool (frames).
    pub bytes_spooled: AtomicU64,
    /// Records sent to the collector from the spool.
    pub records_replayed: AtomicU64,
    /// Records sent to the collector (first sending of a batch only).
    pub records_sent: AtomicU64,
    /// Encoded bytes of the batches sent (every sending, before compression).
    pub bytes_sent: AtomicU64,
    /// Records in batches the collector acknowledged.
    pub records_acked: AtomicU64,
    /// Sum of the extensions' own drop counts (`DropCounts.records`).
    pub ext_records_dropped: AtomicU64,
    /// Batches the collector refused.
    pub batches_rejected: AtomicU64,
    /// Batches acknowledged.
    pub batches_acked: AtomicU64,
    /// Host metrics samples taken.
    pub host_samples: AtomicU64,
    /// Gauge: bytes in the spool now.
    pub spool_bytes: AtomicU64,
    /// Gauge: spool segment files now.
    pub spool_segments: AtomicU64,
    /// Gauge: 1 while a stream to the collector is open.
    pub connected: AtomicU64,
}

/// Adds `n` to `counter`.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Sets a gauge.
pub fn set(gauge: &AtomicU64, v: u64) {
    gauge.store(v, Ordering::Relaxed);
}

pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Counters {
    /// Counts `n` records lost for `reason` (and in the total).
    pub fn drop_records(&self, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        add(&self.records_dropped, n);
        add(&self.dropped[reason as usize], n);
    }

    /// Records lost for `reason` so far.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        get(&self.dropped[reason as usize])
    }

    /// A consistent-enough copy for a heartbeat or a log line.
    pub fn snapshot(&self) -> AgentCounters {
        AgentCounters {
            records_received: get(&self.records_received),
            records_malformed: get(&self.records_malformed),
            records_dropped: get(&self.records_dropped),
            records_spooled: get(&self.records_spooled),
            records_sent: get(&self.records_sent),
            records_acked: get(&self.records_acked),
            ext_records_dropped: get(&self.ext_records_dropped),
            batches_rejected: get(&self.batches_rejected),
            records_dropped_by_reason: DropReason::ALL
                .iter()
                .map(|&r| (r.label().to_owned(), self.dropped(r)))
                .collect(),
            records_replayed: get(&self.records_replayed),
            spool_bytes: get(&self.spool_bytes),
        }
    }

    /// Logs the main counters as fields, at info.
    pub fn log(&self, message: &'static str) {
        let c = self.snapshot();
        tracing::info!(
            records_received = c.records_received,
            records_malformed = c.records_malformed,
            records_dropped = c.records_dropped,
            records_spooled = c.records_spooled,
            records_replayed = get(&self.records_replayed),
            records_sent = c.records_sent,
            records_acked = c.records_acked,
            ext_records_dropped = c.ext_records_dropped,
            batches_rejected = c.batches_rejected,
            spool_bytes = get(&self.spool_bytes),
            "{message}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_add_up_by_reason() {
        let c = Counters::default();
        c.drop_records(DropReason::QueueFull, 2);
        c.drop_records(DropReason::SpoolFull, 5);
        c.drop_records(DropReason::Rejected, 0);
        assert_eq!(c.snapshot().records_dropped, 7);
        assert_eq!(c.dropped(DropReason::SpoolFull), 5);
        assert_eq!(c.dropped(DropReason::Rejected), 0);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
