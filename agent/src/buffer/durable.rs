//! How far the record ring may be freed: the ring offset up to which every
//! record read from it is durable — acknowledged by the collector, written
//! to the disk spool, or counted as dropped. Until then its frames stay in
//! the ring, so that after a `kill -9` the next agent reads again whatever
//! existed only in this one's memory (the collector stores each record id
//! once).
//!
//! Each ring record carries the ring offset just past it
//! (`Record::ring_end`), each batch the largest of its records'
//! (`EncodedBatch::ring_end`). Ring records go into batches in ring order
//! and batches are sealed in order, so their ends grow from batch to batch,
//! and the durable prefix is simply: the sealed batches with ring records,
//! in order, up to the first that is not durable yet. The sink (`Tracker`)
//! keeps that list — one entry per batch, nothing per record — and
//! publishes the end of the prefix through one atomic (`Watermark`) that
//! the ring source reads before freeing. The ring source, when too much of
//! the ring waits on the sink, asks it to make what it holds durable now
//! (spool it) rather than wait for acknowledgements.
//!
//! "Written to the spool" means written to its file, not synced: that
//! survives a `kill -9` of the agent, which is what the ring guards
//! against. A host crash loses the ring itself (it lives in /run, a tmpfs);
//! the spool is synced every second for that case.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// Shared by the sink (writes) and the ring source (reads).
#[derive(Debug, Default)]
pub struct Watermark {
    /// Every ring record ending at or before this offset is durable.
    durable: AtomicU64,
    /// The ring source wants what the sink holds made durable now.
    wanted: Notify,
}

impl Watermark {
    /// The ring offset up to which the ring may be freed.
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Asks the sink to spool what it holds (from any thread; a request
    /// made while one is pending is the same request).
    pub fn want_durable(&self) {
        self.wanted.notify_one();
    }

    /// Resolves when the ring source asks for durability (cancel-safe).
    pub async fn wanted(&self) {
        self.wanted.notified().await
    }

    fn publish(&self, offset: u64) {
        self.durable.fetch_max(offset, Ordering::Release);
    }
}

/// The sink's side: sealed batches holding ring records that are not yet
/// durable, and those durable but behind one that is not.
#[derive(Debug)]
pub struct Tracker {
    /// (ring end, durable), ring ends increasing.
    batches: VecDeque<(u64, bool)>,
    mark: std::sync::Arc<Watermark>,
}

impl Tracker {
    pub fn new(mark: std::sync::Arc<Watermark>) -> Tracker {
        Tracker {
            batches: VecDeque::new(),
            mark,
        }
    }

    /// A batch was sealed and went where it goes: `durable` if to the spool
    /// (or counted as dropped), not if it is held in memory until
    /// acknowledged. `ring_end` 0: no ring records in it, nothing to track.
    pub fn sealed(&mut self, ring_end: u64, durable: bool) {
        if ring_end == 0 {
            return;
        }
        debug_assert!(self.batches.back().is_none_or(|b| b.0 < ring_end));
        self.batches.push_back((ring_end, durable));
        self.advance();
    }

    /// The batch ending at `ring_end` is durable now (acknowledged, rejected
    /// and counted, spooled, or lost and counted). Settling one twice, or
    /// one never tracked, does nothing.
    pub fn settle(&mut self, ring_end: u64) {
        if ring_end == 0 {
            return;
        }
        if let Ok(i) = self.batches.binary_search_by_key(&ring_end, |b| b.0) {
            self.batches[i].1 = true;
            self.advance();
        }
    }

    /// Batches with ring records not yet durable (or behind one that is
    /// not).
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    fn advance(&mut self) {
        let mut upto = None;
        while let Some(&(end, true)) = self.batches.front() {
            upto = Some(end);
            self.batches.pop_front();
        }
        if let Some(end) = upto {
            self.mark.publish(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_watermark_is_the_end_of_the_durable_prefix() {
        let mark = Arc::new(Watermark::default());
        let mut t = Tracker::new(mark.clone());
        t.sealed(100, false);
        t.sealed(0, false); // host samples only: not tracked
        t.sealed(250, false);
        t.sealed(300, true); // spooled, but behind two held in memory
        assert_eq!((mark.durable(), t.len()), (0, 3));
        t.settle(250); // acknowledged out of order
        assert_eq!(mark.durable(), 0, "100 is still only in memory");
        t.settle(100);
        assert_eq!((mark.durable(), t.len()), (300, 0));
        t.settle(100); // again: nothing
        t.settle(999); // never tracked: nothing
        assert_eq!(mark.durable(), 300);
        t.sealed(400, true);
        assert_eq!((mark.durable(), t.len()), (400, 0));
    }

    #[tokio::test]
    async fn a_request_made_before_the_sink_waits_is_not_lost() {
        let mark = Watermark::default();
        mark.want_durable();
        mark.want_durable();
        tokio::time::timeout(std::time::Duration::from_secs(1), mark.wanted())
            .await
            .expect("the pending request wakes the sink");
    }
}
