//! The agent's own counters: what it received, refused, dropped, spooled,
//! sent and saw acknowledged, cumulative since start. They are sent to the
//! collector in every heartbeat and logged every minute; nothing here blocks.

use std::sync::atomic::{AtomicU64, Ordering};

use sonde_proto::v1::AgentCounters;

/// One atomic per counter; shared by every task through an `Arc`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Well-formed records taken from the socket.
    pub records_received: AtomicU64,
    /// Socket messages that were not a valid frame or `ExtMessage`.
    pub records_malformed: AtomicU64,
    /// Records the agent lost: queue full, or a batch the collector rejected.
    pub records_dropped: AtomicU64,
    /// Records written to the disk spool at shutdown.
    pub records_spooled: AtomicU64,
    /// Records sent to the collector (first sending of a batch only).
    pub records_sent: AtomicU64,
    /// Records in batches the collector acknowledged.
    pub records_acked: AtomicU64,
    /// Sum of the extensions' own drop counts (`DropCounts.records`).
    pub ext_records_dropped: AtomicU64,
    /// Batches the collector refused.
    pub batches_rejected: AtomicU64,
}

/// Adds `n` to `counter`.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    /// A consistent-enough copy for a heartbeat or a log line.
    pub fn snapshot(&self) -> AgentCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AgentCounters {
            records_received: get(&self.records_received),
            records_malformed: get(&self.records_malformed),
            records_dropped: get(&self.records_dropped),
            records_spooled: get(&self.records_spooled),
            records_sent: get(&self.records_sent),
            records_acked: get(&self.records_acked),
            ext_records_dropped: get(&self.ext_records_dropped),
            batches_rejected: get(&self.batches_rejected),
        }
    }

    /// Logs every counter as a field, at info.
    pub fn log(&self, message: &'static str) {
        let c = self.snapshot();
        tracing::info!(
            records_received = c.records_received,
            records_malformed = c.records_malformed,
            records_dropped = c.records_dropped,
            records_spooled = c.records_spooled,
            records_sent = c.records_sent,
            records_acked = c.records_acked,
            ext_records_dropped = c.ext_records_dropped,
            batches_rejected = c.batches_rejected,
            "{message}"
        );
    }
}
