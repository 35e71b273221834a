//! Batches handed to the collector but not yet acknowledged, in order: the
//! in-memory window of the stream. A batch leaves only when acknowledged or
//! rejected. Each entry is either backed by a spool frame (its position) or
//! held only here ("direct"); the sink spools direct entries before the
//! connection is given up, so a lost connection never loses them. The window
//! is bounded: when it is full, new batches go to the spool.

use std::collections::VecDeque;
use std::time::Instant;

use crate::buffer::batch::EncodedBatch;
use crate::buffer::spool::Position;

/// One batch waiting for its acknowledgement.
#[derive(Debug)]
pub struct Entry {
    pub batch: EncodedBatch,
    /// When it was last written to the stream.
    pub sent_at: Option<Instant>,
    /// Its spool frame, if it has one; done once acknowledged.
    pub spool: Option<Position>,
    /// Whether it was sent at least once (for `records_sent`).
    pub ever_sent: bool,
}

#[derive(Debug)]
pub struct Outbox {
    entries: VecDeque<Entry>,
    /// `entries[..sent]` are on the current stream.
    sent: usize,
    max_batches: usize,
    next_id: u64,
}

impl Outbox {
    /// `first_id`: the first batch id to hand out. Ids only grow.
    pub fn new(max_batches: usize, first_id: u64) -> Self {
        Outbox {
            entries: VecDeque::new(),
            sent: 0,
            max_batches: max_batches.max(1),
            next_id: first_id.max(1),
        }
    }

    pub fn has_room(&self) -> bool {
        self.entries.len() < self.max_batches
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds a new batch; returns the id it is given.
    pub fn push(&mut self, batch: EncodedBatch) -> u64 {
        self.push_entry(batch, None)
    }

    /// Adds a batch read back from the spool, under a new id.
    pub fn push_replay(&mut self, mut batch: EncodedBatch, at: Position) -> u64 {
        batch.replay = true;
        self.push_entry(batch, Some(at))
    }

    /// A fresh batch id, for a batch that goes to the spool instead.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn push_entry(&mut self, mut batch: EncodedBatch, spool: Option<Position>) -> u64 {
        let id = self.next_id();
        batch.batch_id = id;
        self.entries.push_back(Entry {
            batch,
            sent_at: None,
            spool,
            ever_sent: false,
        });
        id
    }

    pub fn has_unsent(&self) -> bool {
        self.sent < self.entries.len()
    }

    /// Marks the oldest unsent batch as sent at `now` and returns it.
    pub fn send_next(&mut self, now: Instant) -> Option<&mut Entry> {
        let e = self.entries.get_mut(self.sent)?;
        self.sent += 1;
        e.sent_at = Some(now);
        Some(e)
    }

    /// After a reconnect: everything must go out again.
    pub fn mark_all_unsent(&mut self) {
        self.sent = 0;
        for e in &mut self.entries {
            e.sent_at = None;
        }
    }

    /// When the oldest batch on the stream was sent, if any is waiting.
    pub fn oldest_sent_at(&self) -> Option<Instant> {
        if self.sent == 0 {
            return None;
        }
        self.entries.front().and_then(|e| e.sent_at)
    }

    /// The oldest batch's id.
    pub fn oldest_id(&self) -> Option<u64> {
        self.entries.front().map(|e| e.batch.batch_id)
    }

    /// Removes the batch `id` (acknowledged or rejected).
    pub fn remove(&mut self, id: u64) -> Option<Entry> {
        let i = self.entries.iter().position(|e| e.batch.batch_id == id)?;
        if i < self.sent {
            self.sent -= 1;
        }
        self.entries.remove(i)
    }

    /// Entries held only in memory, oldest first.
    pub fn direct_mut(&mut self) -> impl Iterator<Item = &mut Entry> + '_ {
        self.entries.iter_mut().filter(|e| e.spool.is_none())
    }

    pub fn has_direct(&self) -> bool {
        self.entries.iter().any(|e| e.spool.is_none())
    }

    /// A lost connection: takes the batches backed by the spool (read from
    /// there again), keeps the others to be sent first, all as unsent.
    pub fn drain_spooled(&mut self) -> Vec<Entry> {
        self.mark_all_unsent();
        let (spooled, kept): (Vec<Entry>, Vec<Entry>) =
            self.entries.drain(..).partition(|e| e.spool.is_some());
        self.entries = kept.into();
        spooled
    }

    /// Takes every batch (shutdown).
    pub fn drain(&mut self) -> impl Iterator<Item = Entry> + '_ {
        self.sent = 0;
        self.entries.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(n: u32) -> EncodedBatch {
        EncodedBatch::from_body(Default::default(), n)
    }

    #[test]
    fn ids_grow_acks_release_and_reconnect_resends_all() {
        let now = Instant::now();
        let mut o = Outbox::new(3, 100);
        assert_eq!(o.push(recs(1)), 100);
        assert_eq!(o.push(recs(2)), 101);
        assert_eq!(o.push(recs(3)), 102);
        assert!(!o.has_room());
        assert_eq!(o.send_next(now).unwrap().batch.batch_id, 100);
        assert_eq!(o.send_next(now).unwrap().batch.batch_id, 101);
        assert_eq!(o.oldest_sent_at(), Some(now));
        assert_eq!(o.remove(100).unwrap().batch.records, 1);
        assert!(o.has_room());
        assert!(o.has_unsent());
        o.mark_all_unsent();
        assert_eq!(o.oldest_sent_at(), None);
        let resent: Vec<u64> =
            std::iter::from_fn(|| o.send_next(now).map(|e| e.batch.batch_id)).collect();
        assert_eq!(resent, [101, 102]);
        assert!(o.remove(999).is_none());
        o.remove(102).unwrap();
        o.remove(101).unwrap();
        assert!(o.is_empty() && !o.has_unsent());
    }

    #[test]
    fn replayed_batches_get_new_ids_and_the_replay_flag() {
        let mut o = Outbox::new(2, 7);
        let mut old = recs(2);
        old.batch_id = 3;
        let at = Position {
            segment: 4,
            frame: 1,
        };
        assert_eq!(o.push_replay(old, at), 7);
        let e = o.send_next(Instant::now()).unwrap();
        assert!(e.batch.replay);
        assert_eq!(e.batch.batch_id, 7);
        assert_eq!(e.spool, Some(at));
        assert!(!o.has_direct());
        o.push(recs(1));
        assert!(o.has_direct());
        assert_eq!(o.direct_mut().count(), 1);
    }
}
