//! Recording a hooked call later: the calls a request makes most (SQL
//! statements and fetches) are kept as one fixed-size event each and turned
//! into spans in a batch — when anything else reads the span buffer, when
//! the queue is full, and at request end.
//!
//! Why: after a call that waited for the database, little of the
//! extension's code or data is still cached, and each distinct cache line
//! touched is a miss (`perf` puts ≈ 50 ns on a single such load on this
//! project's VMs). Recording a span touches a few dozen lines (the span
//! buffer's fields, its text arena, connection and result tables, and the
//! code of each step); queuing an event touches the queue's head, one event
//! line and the text copied. In the batch the same lines serve every event.
//!
//! The queue is invisible to the rest of the extension: `module::with_spans`
//! (every reader and writer of the span buffer goes through it or through
//! `flush_into`) empties it first, so spans keep their order and every
//! table (open results, prepared statements, connections) is current.
//!
//! An event holds values, never PHP pointers to follow later: objects
//! appear only as identities (`key`, `db`), and the statement text is
//! copied into the queue's own text space. What can only be read from PHP
//! at call time is read then: a call that threw, took longer than the
//! slow-SQL threshold (its PHP file and line) or used a connection this
//! request has not named yet is recorded at once instead (`Keep::Now`),
//! after the queue is emptied.

use std::cell::UnsafeCell;

use crate::hooks::Call;
use crate::spans::{SpanBuf, MAX_TEXT};

/// Events kept before the queue is emptied into the span buffer.
const EVENTS: usize = 128;
/// Bytes of statement text kept with them (at least one longest text).
const TEXTS: usize = 64 * 1024;
/// Connections known to the span buffer this request, remembered here so
/// a call on one of them need not look it up (or name it) at call time.
const DBS: usize = 4;

/// Turns an event into spans. `now`: it runs at call time, so PHP's state
/// of the call (its exception, the executing file and line, the connection
/// object) may be read; otherwise only the event's values may be.
pub type Replay = fn(&Event, &mut SpanBuf, u64, bool);

/// Fills an event from a finished call, and says what to do with it.
pub type Capture = fn(&Call, &mut Event) -> Keep;

/// What a capture decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Nothing to record.
    No,
    /// Queue it (unless the generic checks — exception, slow — say now).
    Later,
    /// Record it now: it needs PHP's state of the call.
    Now,
    /// Queue it, or add it to the last queued event when that one has the
    /// same `replay` and `key` (a fetch loop on one result set): `end`
    /// grows by this call's duration, `rows` and `calls` add up.
    Merge,
}

/// One hooked call's outcome, one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Event {
    pub replay: Replay,
    /// `clock::ticks()` before and after the call.
    pub start: u64,
    pub end: u64,
    /// The object the call was made on (statement, result): an identity,
    /// never dereferenced later.
    pub key: usize,
    /// The connection's identity (as `SpanBuf::db` keys it).
    pub db: usize,
    pub rows: i64,
    /// The statement text: PHP's bytes during the call, the queue's copy
    /// once queued (see `text`).
    text: *const u8,
    text_len: u32,
    /// Plugin-defined bits (e.g. "failed").
    pub flags: u16,
    /// Calls this event stands for (more than 1 once merged).
    pub calls: u16,
}

fn nothing(_: &Event, _: &mut SpanBuf, _: u64, _: bool) {}

const EMPTY: Event = Event {
    replay: nothing,
    start: 0,
    end: 0,
    key: 0,
    db: 0,
    rows: 0,
    text: std::ptr::null(),
    text_len: 0,
    flags: 0,
    calls: 1,
};

impl Event {
    /// Sets the statement text (PHP's bytes, valid during the call; the
    /// queue copies them before the call's values go away).
    pub fn set_text(&mut self, bytes: &[u8]) {
        // One byte past the cap, so the span buffer still sees (and
        // counts) a text it cuts.
        let n = bytes.len().min(MAX_TEXT + 1);
        self.text = bytes.as_ptr();
        self.text_len = n as u32;
    }

    /// The statement text.
    pub fn text(&self) -> &[u8] {
        if self.text.is_null() {
            return &[];
        }
        // SAFETY: `text` points to `text_len` bytes that live as long as
        // the event can be replayed: PHP's string during the call (an
        // event replayed `now`), or the queue's text space, which is only
        // reused after the events pointing into it were replayed.
        unsafe { std::slice::from_raw_parts(self.text, self.text_len as usize) }
    }
}

/// The queue's bookkeeping, one cache line.
#[repr(C, align(64))]
struct Head {
    len: usize,
    text_len: usize,
    /// Calls at least this long (ticks) are recorded at once (slow SQL
    /// gets the PHP file and line, read at call time).
    slow_ticks: u64,
    dbs: [usize; DBS],
    dbs_next: usize,
}

/// Process-wide state of an NTS PHP build (as `module::Global`).
struct Cell<T>(UnsafeCell<T>);

// SAFETY: NTS PHP runs one request at a time on one thread per process and
// calls hooks only from it; the extension installs no hooks on ZTS builds.
unsafe impl<T> Sync for Cell<T> {}

static HEAD: Cell<Head> = Cell(UnsafeCell::new(Head {
    len: 0,
    text_len: 0,
    slow_ticks: u64::MAX,
    dbs: [0; DBS],
    dbs_next: 0,
}));
static QUEUE: Cell<[Event; EVENTS]> = Cell(UnsafeCell::new([EMPTY; EVENTS]));
static TEXTS_BUF: Cell<[u8; TEXTS]> = Cell(UnsafeCell::new([0; TEXTS]));

fn head() -> &'static mut Head {
    // SAFETY: see `Cell`; callers take the reference for a few statements
    // and never across a call that could take it again.
    unsafe { &mut *HEAD.0.get() }
}

/// A new request: nothing queued, no connection known, the threshold set.
pub fn start(slow_ticks: u64) {
    let h = head();
    h.len = 0;
    h.text_len = 0;
    h.slow_ticks = slow_ticks;
    h.dbs = [0; DBS];
    h.dbs_next = 0;
}

/// Whether connection `key` is known to the span buffer this request.
#[inline]
pub fn db_known(key: usize) -> bool {
    key != 0 && head().dbs.contains(&key)
}

/// Connection `key` is now known to the span buffer.
pub fn db_noted(key: usize) {
    if key == 0 || db_known(key) {
        return;
    }
    let h = head();
    h.dbs[h.dbs_next % DBS] = key;
    h.dbs_next = h.dbs_next.wrapping_add(1);
}

/// After a hooked call whose hook captures: fill an event and queue it, or
/// record it now. `threw`: the call left an exception pending.
pub fn after(capture: Capture, call: &Call, threw: bool) {
    let mut ev = Event {
        start: call.start,
        end: call.end,
        ..EMPTY
    };
    let keep = match capture(call, &mut ev) {
        k @ (Keep::Later | Keep::Merge)
            if !threw && call.end.saturating_sub(call.start) < head().slow_ticks =>
        {
            k
        }
        Keep::No => Keep::No,
        _ => Keep::Now,
    };
    match keep {
        Keep::No => {}
        Keep::Later => queue(ev),
        Keep::Merge => {
            if !merged(&ev) {
                queue(ev)
            }
        }
        Keep::Now => crate::module::with_spans(|buf, req_start| {
            (ev.replay)(&ev, buf, req_start, true);
        }),
    }
}

/// Adds `ev` to the last queued event if that one is the same kind of
/// call on the same object (see `Keep::Merge`).
fn merged(ev: &Event) -> bool {
    let len = head().len;
    if len == 0 {
        return false;
    }
    // SAFETY: see `Cell`; `len - 1 < EVENTS` is a queued event.
    let last = unsafe { &mut (*QUEUE.0.get())[len - 1] };
    let same = last.replay as usize == ev.replay as usize && last.key == ev.key;
    if !same || last.calls == u16::MAX {
        return false;
    }
    last.end = last.end.saturating_add(ev.end.saturating_sub(ev.start));
    last.rows = last.rows.saturating_add(ev.rows);
    last.calls += 1;
    true
}

fn queue(mut ev: Event) {
    let n = ev.text_len as usize;
    let (len, text_len) = {
        let h = head();
        (h.len, h.text_len)
    };
    if len == EVENTS || text_len + n > TEXTS {
        crate::module::flush_later();
    }
    let h = head();
    if h.len == EVENTS || h.text_len + n > TEXTS {
        return; // not traced now (the flush found no request): nothing to keep
    }
    if n > 0 {
        // SAFETY: see `Cell`; the copy stays inside the buffer (checked
        // above) and no event points at bytes from `text_len` on.
        unsafe {
            let dst = (*TEXTS_BUF.0.get()).as_mut_ptr().add(h.text_len);
            std::ptr::copy_nonoverlapping(ev.text, dst, n);
            ev.text = dst;
        }
        h.text_len += n;
    }
    // SAFETY: see `Cell`; `len < EVENTS`.
    unsafe { (*QUEUE.0.get())[h.len] = ev };
    h.len += 1;
}

/// Replays the queued events into `buf` (of the request started at
/// `req_start` ticks), in call order, and empties the queue.
pub fn flush_into(buf: &mut SpanBuf, req_start: u64) {
    let n = std::mem::take(&mut head().len);
    for i in 0..n {
        // SAFETY: see `Cell`; a replay never queues (only `after` does,
        // from a hook), so the event is not overwritten while it runs.
        let ev = unsafe { (*QUEUE.0.get())[i] };
        (ev.replay)(&ev, buf, req_start, false);
    }
    head().text_len = 0;
}

/// Forgets what is queued (the request is not recorded).
pub fn discard() {
    let h = head();
    h.len = 0;
    h.text_len = 0;
}
