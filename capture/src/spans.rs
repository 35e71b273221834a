//! The per-request span buffer. PHP-free, so it is unit-tested on its own.
//!
//! Hooks record into it with no allocation: the span vector and the text
//! arena are allocated once per process with fixed capacities and cleared
//! per request. When either is full, spans are dropped or texts cut, and
//! counted. Turning raw spans into `sonde.v1.Span`s (normalising SQL,
//! naming DB instances) happens once, at request end.

use std::collections::HashMap;

use sonde_core::{dsn, sql};
use sonde_proto::v1::SpanKind;

use crate::pb;

/// Default cap on spans per request.
pub const DEFAULT_MAX_SPANS: usize = 2000;
/// Text arena per request (statement texts, DSNs, error messages).
pub const ARENA_BYTES: usize = 512 * 1024;
/// Longest statement text kept from one call (before normalising).
pub const MAX_TEXT: usize = 16 * 1024;
/// Longest normalised statement sent.
pub const MAX_STATEMENT: usize = 4096;
/// Result sets tracked at once for fetch aggregation.
const OPEN_RESULTS: usize = 16;
/// Prepared statements remembered at once (mysqli, pgsql).
const PREPARED: usize = 32;
/// Distinct connections (objects) tracked per request.
pub(crate) const DBS: usize = 32;

/// A range of the text arena.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Text {
    pub(crate) off: u32,
    pub(crate) len: u32,
}

/// The library a span came from: an index into [`Library::NAMES`], so a
/// span carries one byte for it and the raw hand-off copies it as is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Library(pub(crate) u8);

impl Library {
    /// The names, by index (the `library` field of a `Span`).
    pub const NAMES: [&'static str; 9] = [
        "php",
        "pdo",
        "mysqli",
        "pgsql",
        "curl",
        "http-stream",
        "redis",
        "memcached",
        "soap",
    ];
    pub const PHP: Library = Library(0);
    pub const PDO: Library = Library(1);
    pub const MYSQLI: Library = Library(2);
    pub const PGSQL: Library = Library(3);
    pub const CURL: Library = Library(4);
    pub const HTTP_STREAM: Library = Library(5);
    pub const REDIS: Library = Library(6);
    pub const MEMCACHED: Library = Library(7);
    pub const SOAP: Library = Library(8);

    /// The library of index `i`, if there is one.
    pub fn from_index(i: u8) -> Option<Library> {
        (usize::from(i) < Self::NAMES.len()).then_some(Library(i))
    }

    pub fn index(self) -> u8 {
        self.0
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .get(usize::from(self.0))
            .copied()
            .unwrap_or("other")
    }
}

/// What a hook saw of one call, before normalising.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawSpan {
    pub kind: i32,
    pub library: Library,
    pub start_ns: u64,
    pub duration_ns: u64,
    pub text: Text,
    /// DB instance: index into `dbs`, or u16::MAX.
    pub db: u16,
    pub rows: i64,
    pub calls: u32,
    pub error: Text,
    /// External: HTTP status.
    pub status: u32,
    /// External: the span id passed to the callee.
    pub span_id: [u8; 8],
    /// External: the operation (SOAP action, HTTP method).
    pub op: Text,
    /// Slow SQL: the PHP file and line that issued it.
    pub file: Text,
    pub line: u32,
}

/// The error that failed the request, as texts in the arena.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReqError {
    pub(crate) class: Text,
    pub(crate) message: Text,
    pub(crate) file: Text,
    pub(crate) line: u32,
    pub(crate) fatal: bool,
}

/// PHP error types (`E_*`) that end the request.
const FATAL_TYPES: i32 = 1 | 4 | 16 | 64 | 256 | 4096; // E_ERROR, E_PARSE, E_CORE_ERROR, E_COMPILE_ERROR, E_USER_ERROR, E_RECOVERABLE_ERROR

/// A database connection seen in this request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Db {
    /// Identity of the connection object (its address).
    pub(crate) key: usize,
    pub(crate) driver: Text,
    pub(crate) dsn: Text,
}

/// The per-request buffer.
#[derive(Debug)]
#[repr(C)]
pub struct SpanBuf {
    // The fields a recorded call touches come first, declared in order
    // (`repr(C)`): a hooked call that waited for the network finds none of
    // this in the caches, and each further cache line is one more miss.
    pub(crate) spans: Vec<RawSpan>,
    pub(crate) arena: Vec<u8>,
    pub(crate) dbs: Vec<Db>,
    max_spans: usize,
    /// SQL calls at least this long (ticks) record the PHP file and line.
    pub slow_ticks: u64,
    pub dropped_spans: u32,
    pub truncated_texts: u32,
    open_next: usize,
    /// The slot of `open` used last (a hint, checked before use).
    open_last: usize,
    /// (result key, index of its fetch span or usize::MAX before the first fetch, its statement span)
    open: [(usize, usize, usize); OPEN_RESULTS],
    /// Warnings, notices and deprecations raised in the request.
    pub warnings: u32,
    pending_len: usize,
    /// Span ids of outgoing calls in progress (set before, used after).
    pending: [[u8; 8]; 4],
    prepared_next: usize,
    /// Whether `prepared` was written since the last `clear`.
    prepared_used: bool,
    prepared: [(usize, Text, u16); PREPARED],
    /// The last exception thrown in the request (class, message).
    pub(crate) last_exception: Option<(Text, Text)>,
    pub(crate) error: Option<ReqError>,
    /// Whether `multi` was written since the last `clear`.
    multi_used: bool,
    /// curl_multi transfers in progress: (handle, start ticks, span id).
    multi: [(usize, u64, [u8; 8]); MULTI],
    /// Span indices in start order (request end; allocated once).
    order: Vec<u32>,
    /// Whether `streams` was written since the last `clear`.
    streams_used: bool,
    /// Remote streams open now: (stream, its span, start ticks).
    streams: [(usize, usize, u64); STREAMS],
    /// An external span whose outcome the enclosing call decides (a SOAP
    /// request's fault is known only when `__soapCall` returns): its index
    /// and whether its status is known for sure.
    pub pending_outcome: Option<(usize, bool)>,
    /// A mark a plugin keeps between its before and after hooks (SOAP:
    /// the hash of the client's last response headers).
    pub pending_mark: u64,
}

/// Remote streams (http wrapper) tracked open at once per request.
const STREAMS: usize = 16;

/// curl_multi transfers tracked at once per request.
const MULTI: usize = 64;

impl SpanBuf {
    pub fn new(max_spans: usize) -> Self {
        SpanBuf {
            spans: Vec::with_capacity(max_spans),
            max_spans,
            arena: Vec::with_capacity(ARENA_BYTES),
            dbs: Vec::with_capacity(DBS),
            open: [(0, usize::MAX, usize::MAX); OPEN_RESULTS],
            open_next: 0,
            open_last: 0,
            prepared: [(0, Text::default(), u16::MAX); PREPARED],
            prepared_next: 0,
            prepared_used: false,
            dropped_spans: 0,
            truncated_texts: 0,
            last_exception: None,
            error: None,
            warnings: 0,
            pending: [[0; 8]; 4],
            pending_len: 0,
            multi: [(0, 0, [0; 8]); MULTI],
            multi_used: false,
            slow_ticks: u64::MAX,
            order: Vec::with_capacity(max_spans),
            streams: [(0, 0, 0); STREAMS],
            streams_used: false,
            pending_outcome: None,
            pending_mark: 0,
        }
    }

    /// Forgets the previous request (keeps the allocations).
    pub fn clear(&mut self) {
        self.spans.clear();
        self.arena.clear();
        self.dbs.clear();
        self.open = [(0, usize::MAX, usize::MAX); OPEN_RESULTS];
        self.open_next = 0;
        self.open_last = 0;
        // Most requests prepare nothing through mysqli or pgsql: the table
        // (12 cache lines) is rewritten only after use.
        if self.prepared_used {
            self.prepared = [(0, Text::default(), u16::MAX); PREPARED];
            self.prepared_used = false;
        }
        self.prepared_next = 0;
        self.dropped_spans = 0;
        self.truncated_texts = 0;
        self.last_exception = None;
        self.error = None;
        self.warnings = 0;
        self.pending_len = 0;
        // The curl_multi and stream tables are mostly untouched: reset only
        // when used (a slot is freed with key 0 once its transfer ends).
        if self.multi_used {
            self.multi = [(0, 0, [0; 8]); MULTI];
            self.multi_used = false;
        }
        if self.streams_used {
            self.streams = [(0, 0, 0); STREAMS];
            self.streams_used = false;
        }
        self.pending_outcome = None;
        self.pending_mark = 0;
    }

    /// Remote stream `key` opened as span `idx` at `start` (ticks): its
    /// span lasts until it is closed.
    pub fn stream_opened(&mut self, key: usize, idx: usize, start: u64) {
        if let Some(slot) = self.streams.iter_mut().find(|s| s.0 == 0 || s.0 == key) {
            *slot = (key, idx, start);
            self.streams_used = true;
        }
    }

    /// Remote stream `key` closed at `end` (ticks).
    pub fn stream_closed(&mut self, key: usize, end: u64) {
        let Some(slot) = self.streams.iter_mut().find(|s| s.0 == key && key != 0) else {
            return;
        };
        let (_, idx, start) = std::mem::take(slot);
        if let Some(s) = self.spans.get_mut(idx) {
            s.duration_ns = end.saturating_sub(start);
        }
    }

    /// The request ends at `end` (ticks): streams still open end with it.
    pub fn close_streams(&mut self, end: u64) {
        if !self.streams_used {
            return;
        }
        for i in 0..STREAMS {
            let key = self.streams[i].0;
            if key != 0 {
                self.stream_closed(key, end);
            }
        }
    }

    /// A curl_multi transfer on handle `key` starts (added to the multi).
    pub fn multi_start(&mut self, key: usize, start: u64, span_id: [u8; 8]) {
        if let Some(slot) = self.multi.iter_mut().find(|m| m.0 == key || m.0 == 0) {
            *slot = (key, start, span_id);
            self.multi_used = true;
        } else {
            self.dropped_spans += 1;
        }
    }

    /// The transfer on handle `key` is over: its start ticks and span id.
    pub fn multi_end(&mut self, key: usize) -> Option<(u64, [u8; 8])> {
        let slot = self.multi.iter_mut().find(|m| m.0 == key && key != 0)?;
        let out = (slot.1, slot.2);
        *slot = (0, 0, [0; 8]);
        Some(out)
    }

    /// An outgoing call starts with span id `id`.
    pub fn push_pending(&mut self, id: [u8; 8]) {
        if self.pending_len < self.pending.len() {
            self.pending[self.pending_len] = id;
        }
        self.pending_len += 1;
    }

    /// The span id of the outgoing call that just ended.
    pub fn pop_pending(&mut self) -> [u8; 8] {
        if self.pending_len == 0 {
            return [0; 8];
        }
        self.pending_len -= 1;
        self.pending
            .get(self.pending_len)
            .copied()
            .unwrap_or([0; 8])
    }

    /// Records a cache command (`operation`, e.g. `hGetAll`) on `db`.
    pub fn cache(
        &mut self,
        library: Library,
        start_ns: u64,
        duration_ns: u64,
        operation: &[u8],
        db: u16,
        error: &[u8],
    ) {
        let text = self.text(operation);
        let error = if error.is_empty() {
            Text::default()
        } else {
            self.text(error)
        };
        self.push(RawSpan {
            kind: SpanKind::Cache as i32,
            library,
            start_ns,
            duration_ns,
            text,
            db,
            calls: 1,
            error,
            ..Default::default()
        });
    }

    /// Records an outgoing call to `url` (query removed here) doing `op`
    /// (SOAP action, HTTP method; may be empty). Returns the span's index.
    #[allow(clippy::too_many_arguments)]
    pub fn external(
        &mut self,
        library: Library,
        start_ns: u64,
        duration_ns: u64,
        url: &[u8],
        op: &[u8],
        status: u32,
        error: &[u8],
        span_id: [u8; 8],
    ) -> Option<usize> {
        let cut = url
            .iter()
            .position(|b| *b == b'?' || *b == b'#')
            .unwrap_or(url.len());
        let text = self.text(&url[..cut]);
        let op = self.text_or_none(op);
        let error = self.text_or_none(error);
        self.push(RawSpan {
            kind: SpanKind::External as i32,
            library,
            start_ns,
            duration_ns,
            text,
            db: u16::MAX,
            calls: 1,
            error,
            status,
            span_id,
            op,
            ..Default::default()
        })
    }

    /// Sets the outcome of external span `idx` (known only later, e.g. a
    /// SOAP fault parsed after the HTTP exchange).
    pub fn set_outcome(&mut self, idx: usize, status: u32, error: &[u8]) {
        let error = self.text_or_none(error);
        if let Some(s) = self.spans.get_mut(idx) {
            s.status = status;
            if error.len > 0 {
                s.error = error;
            }
        }
    }

    /// Status and whether an error is set, of external span `idx`.
    pub fn outcome(&self, idx: usize) -> Option<(u32, bool)> {
        self.spans.get(idx).map(|s| (s.status, s.error.len > 0))
    }

    fn text_or_none(&mut self, bytes: &[u8]) -> Text {
        if bytes.is_empty() {
            Text::default()
        } else {
            self.text(bytes)
        }
    }

    /// An exception was thrown (caught or not): an error span, and the
    /// request's last exception.
    pub fn exception(&mut self, at_ns: u64, class: &[u8], message: &[u8]) {
        let class = self.text(class);
        let message = self.text(message);
        self.last_exception = Some((class, message));
        self.push(RawSpan {
            kind: SpanKind::Error as i32,
            library: Library::PHP,
            start_ns: at_ns,
            text: class,
            error: message,
            db: u16::MAX,
            ..Default::default()
        });
    }

    /// PHP raised an error of type `kind` (`E_*`, possibly with
    /// E_DONT_BAIL). Fatal ones fail the request; others are counted.
    pub fn php_error(&mut self, kind: i32, file: &[u8], line: u32, message: &[u8]) {
        let kind = kind & 0x7fff;
        if kind & FATAL_TYPES == 0 {
            self.warnings = self.warnings.saturating_add(1);
            return;
        }
        if self.error.is_some_and(|e| e.fatal) {
            return;
        }
        let first_line = message.split(|b| *b == b'\n').next().unwrap_or_default();
        let (class, message) = match self.last_exception {
            // "Uncaught Foo: message in file:line": the exception we saw thrown.
            Some((c, m)) if message.starts_with(b"Uncaught ") => (c, m),
            _ => (
                self.text(error_type_name(kind).as_bytes()),
                self.text(first_line),
            ),
        };
        let file = self.text(file);
        self.error = Some(ReqError {
            class,
            message,
            file,
            line,
            fatal: true,
        });
    }

    /// The application recorded a handled error (`sonde_record_error()`):
    /// an error span, and the request's error unless one is already set.
    /// It does not make the request a failure on its own.
    pub fn recorded_error(&mut self, at_ns: u64, class: &[u8], message: &[u8]) {
        let c = self.text(class);
        let m = self.text(message);
        self.push(RawSpan {
            kind: SpanKind::Error as i32,
            library: Library::PHP,
            start_ns: at_ns,
            text: c,
            error: m,
            db: u16::MAX,
            ..Default::default()
        });
        if self.error.is_none() {
            self.error = Some(ReqError {
                class: c,
                message: m,
                ..Default::default()
            });
        }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Copies `bytes` into the arena (cut to `MAX_TEXT` and to what is left).
    pub fn text(&mut self, bytes: &[u8]) -> Text {
        let room = ARENA_BYTES - self.arena.len();
        let n = bytes.len().min(MAX_TEXT).min(room);
        if n < bytes.len() {
            self.truncated_texts += 1;
        }
        let off = self.arena.len() as u32;
        self.arena.extend_from_slice(&bytes[..n]);
        Text { off, len: n as u32 }
    }

    fn get(&self, t: Text) -> &[u8] {
        &self.arena[t.off as usize..(t.off + t.len) as usize]
    }

    /// The index of the DB connection `key`, registering it with `driver`
    /// and `dsn` (only read the first time) when new; connections with the
    /// same driver and DSN share an entry. u16::MAX when unknown.
    pub fn db<'a>(
        &mut self,
        key: usize,
        driver_dsn: impl FnOnce() -> Option<(&'a [u8], &'a [u8])>,
    ) -> u16 {
        if let Some(i) = self.dbs.iter().position(|d| d.key == key) {
            return i as u16;
        }
        let Some((driver, dsn)) = driver_dsn() else {
            return u16::MAX;
        };
        if let Some(i) = self
            .dbs
            .iter()
            .position(|d| self.get(d.driver) == driver && self.get(d.dsn) == dsn)
        {
            // Same server, another object: remember this key too when room.
            if self.dbs.len() < self.dbs.capacity() {
                let d = self.dbs[i];
                self.dbs.push(Db { key, ..d });
            }
            return i as u16;
        }
        if self.dbs.len() == self.dbs.capacity() {
            return u16::MAX;
        }
        let driver = self.text(driver);
        let dsn = self.text(dsn);
        self.dbs.push(Db { key, driver, dsn });
        (self.dbs.len() - 1) as u16
    }

    /// The index of DB connection `key` if this request has seen it.
    pub fn db_known(&self, key: usize) -> Option<u16> {
        self.dbs.iter().position(|d| d.key == key).map(|i| i as u16)
    }

    /// Remembers the text and connection of a prepared statement `key`
    /// (mysqli, pgsql: drivers that do not keep it readable).
    pub fn prepared(&mut self, key: usize, text: &[u8], db: u16) {
        let text = self.text(text);
        let slot = self
            .prepared
            .iter()
            .position(|p| p.0 == key)
            .unwrap_or_else(|| {
                let i = self.prepared_next;
                self.prepared_next = (self.prepared_next + 1) % PREPARED;
                i
            });
        self.prepared[slot] = (key, text, db);
        self.prepared_used = true;
    }

    /// The text and connection of prepared statement `key`.
    pub fn prepared_text(&self, key: usize) -> Option<(Text, u16)> {
        self.prepared
            .iter()
            .find(|p| p.0 == key && key != 0)
            .map(|p| (p.1, p.2))
    }

    /// Result set `to` comes from the statement that produced `from`
    /// (mysqli_stmt::get_result).
    pub fn alias_result(&mut self, from: usize, to: usize) {
        let stmt = self
            .open
            .iter()
            .find(|o| o.0 == from && from != 0)
            .map(|o| o.2);
        self.open_result(to, stmt.filter(|i| *i != usize::MAX));
    }

    /// The text of prepared statement `key`.
    pub fn prepared_bytes(&self, key: usize) -> Option<&[u8]> {
        self.prepared_text(key).map(|(t, _)| self.get(t))
    }

    /// Attaches the issuing PHP file and line to span `idx`.
    pub fn set_location(&mut self, idx: usize, file: &[u8], line: u32) {
        let file = self.text(file);
        if let Some(s) = self.spans.get_mut(idx) {
            s.file = file;
            s.line = line;
        }
    }

    /// A raw span's text and DB (for plugins that reuse them).
    pub fn span_text(&self, idx: usize) -> Option<(Text, u16)> {
        self.spans.get(idx).map(|s| (s.text, s.db))
    }

    /// Adds a span; returns its index, or None (counted) when full.
    pub fn push(&mut self, span: RawSpan) -> Option<usize> {
        if self.spans.len() >= self.max_spans {
            self.dropped_spans += 1;
            return None;
        }
        self.spans.push(span);
        Some(self.spans.len() - 1)
    }

    /// A statement produced result set `key` (a statement object): later
    /// fetches on it are aggregated into one fetch span.
    pub fn open_result(&mut self, key: usize, statement_span: Option<usize>) {
        let slot = match self.open.iter().position(|o| o.0 == key) {
            Some(i) => i,
            None => {
                let i = self.open_next;
                self.open_next = (self.open_next + 1) % OPEN_RESULTS;
                i
            }
        };
        self.open[slot] = (key, usize::MAX, statement_span.unwrap_or(usize::MAX));
        self.open_last = slot;
    }

    /// The slot of result set `key` (not 0) in `open`: the one used last,
    /// usually (fetches follow their statement), else a search.
    #[inline]
    fn open_slot(&mut self, key: usize) -> Option<usize> {
        if key == 0 {
            return None;
        }
        if self.open.get(self.open_last).is_some_and(|o| o.0 == key) {
            return Some(self.open_last);
        }
        let i = self.open.iter().position(|o| o.0 == key)?;
        self.open_last = i;
        Some(i)
    }

    /// Records one fetch call on result set `key` that returned `rows` rows.
    pub fn fetch(&mut self, key: usize, library: Library, start_ns: u64, end_ns: u64, rows: i64) {
        let duration = end_ns.saturating_sub(start_ns);
        self.fetch_calls(key, library, start_ns, duration, 1, rows);
    }

    /// Records `calls` fetch calls on result set `key`, the first starting
    /// at `start_ns`, together lasting `duration_ns` and returning `rows`.
    pub fn fetch_calls(
        &mut self,
        key: usize,
        library: Library,
        start_ns: u64,
        duration_ns: u64,
        calls: u32,
        rows: i64,
    ) {
        let slot = self.open_slot(key);
        let (fetch_idx, stmt_idx) = match slot {
            Some(i) => (self.open[i].1, self.open[i].2),
            None => (usize::MAX, usize::MAX),
        };
        if fetch_idx != usize::MAX {
            let s = &mut self.spans[fetch_idx];
            s.duration_ns += duration_ns;
            s.calls += calls;
            s.rows += rows;
            return;
        }
        let (text, db) = match self.spans.get(stmt_idx) {
            Some(st) => (st.text, st.db),
            None => (Text::default(), u16::MAX),
        };
        let idx = self.push(RawSpan {
            kind: SpanKind::Fetch as i32,
            library,
            start_ns,
            duration_ns,
            text,
            db,
            rows,
            calls,
            error: Text::default(),
            ..Default::default()
        });
        match (idx, slot) {
            (Some(idx), Some(i)) => self.open[i].1 = idx,
            (Some(idx), None) if key != 0 => {
                self.open_result(key, None);
                if let Some(i) = self.open.iter().position(|o| o.0 == key) {
                    self.open[i].1 = idx;
                }
            }
            _ => {}
        }
    }

    /// Writes the spans as `RequestRecord.spans` (field 17) into `out`: SQL
    /// normalised, instances named, in start order (a span is pushed when
    /// its call returns, so nested work — an exception thrown inside a
    /// query — would otherwise come first). Straight into the frame: no
    /// message structs, no per-span allocation. A statement or instance
    /// seen before in this process costs a hash and a lookup, and its field
    /// comes from the cache already encoded; a fetch span right after its
    /// statement's span (the usual order) does not even look it up again.
    ///
    /// Span times were recorded in `clock::ticks()`; `ns_per_tick` turns
    /// them into nanoseconds.
    pub fn encode_spans(
        &mut self,
        out: &mut Vec<u8>,
        ns_per_tick: f64,
        cache: &mut StatementCache,
    ) {
        // Ticks to ns in 32.32 fixed point: a multiply, no float conversions.
        let per = (ns_per_tick.max(0.0) * 4_294_967_296.0) as u64;
        let ns = |ticks: u64| ((u128::from(ticks) * u128::from(per)) >> 32) as u64;
        // Instance names, once per connection entry.
        let mut keys = [0u64; DBS];
        if cache.instances.len() + self.dbs.len() > STATEMENT_CACHE {
            cache.instances.clear();
        }
        for (k, d) in keys.iter_mut().zip(&self.dbs) {
            *k = cache.instance(self.get(d.driver), self.get(d.dsn));
        }
        let StatementCache {
            statements,
            instances,
        } = cache;
        // (is PostgreSQL, the encoded `db` field) per connection entry.
        let mut names: [(bool, &[u8]); DBS] = [(false, &[]); DBS];
        for (n, k) in names.iter_mut().zip(&keys[..self.dbs.len().min(DBS)]) {
            if let Some((pg, field)) = instances.get(k) {
                *n = (*pg, field);
            }
        }
        // Start order: usually the push order already.
        let sorted = self
            .spans
            .windows(2)
            .all(|w| w[0].start_ns <= w[1].start_ns);
        if !sorted {
            self.order.clear();
            self.order.extend(0..self.spans.len() as u32);
            let spans = &self.spans;
            self.order
                .sort_unstable_by_key(|i| (spans[*i as usize].start_ns, *i));
        }
        // The last statement looked up: (its text, PostgreSQL, its field).
        // A fetch follows its statement, and a loop runs the same statement
        // again: comparing the text costs less than hashing it.
        // (Indices into the cache's fields: `last` is set after every
        // lookup, so it never outlives a clearing of the cache.)
        let mut last: Option<(Text, bool, u32)> = None;
        for k in 0..self.spans.len() {
            let i = if sorted { k } else { self.order[k] as usize };
            let s = &self.spans[i];
            let (pg, instance) = names.get(s.db as usize).copied().unwrap_or((false, &[]));
            if s.kind == SpanKind::Sql as i32 || s.kind == SpanKind::Fetch as i32 {
                let idx = match last {
                    Some((t, p, f))
                        if p == pg && (t == s.text || self.get(t) == self.get(s.text)) =>
                    {
                        f
                    }
                    _ => {
                        let dialect = if pg {
                            sql::Dialect::Postgres
                        } else {
                            sql::Dialect::MySql
                        };
                        let f = normalized(statements, self.get(s.text), dialect);
                        last = Some((s.text, pg, f));
                        f
                    }
                };
                let statement: &[u8] = statements.fields.get(idx as usize).map_or(&[], |f| &f[..]);
                // The common case (no error, not slow): numbers around two
                // encoded texts, the span's length known before its body.
                if s.error.len == 0 && s.file.len == 0 && s.line == 0 {
                    let mut head = pb::Fields::new();
                    head.uint(1, s.kind as u64);
                    head.uint(2, ns(s.start_ns));
                    head.uint(3, ns(s.duration_ns));
                    let mut tail = pb::Fields::new();
                    tail.int64(6, s.rows);
                    tail.uint(10, u64::from(s.calls));
                    tail.str(12, s.library.as_str());
                    if let (Some(head), Some(tail)) = (head.as_slice(), tail.as_slice()) {
                        let len = head.len() + statement.len() + instance.len() + tail.len();
                        out.reserve(len + 12);
                        pb::len_prefix(out, 17, len);
                        out.extend_from_slice(head);
                        out.extend_from_slice(statement);
                        out.extend_from_slice(instance);
                        out.extend_from_slice(tail);
                        continue;
                    }
                }
                let m = pb::begin(out, 17);
                pb::uint(out, 1, s.kind as u64);
                pb::uint(out, 2, ns(s.start_ns));
                pb::uint(out, 3, ns(s.duration_ns));
                out.extend_from_slice(statement);
                out.extend_from_slice(instance);
                pb::int64(out, 6, s.rows);
                pb::string(out, 9, self.get(s.error));
                pb::uint(out, 10, u64::from(s.calls));
                pb::str(out, 12, s.library.as_str());
                pb::string(out, 15, self.get(s.file));
                pb::uint(out, 16, u64::from(s.line));
                pb::end(out, m);
                continue;
            }
            let m = pb::begin(out, 17);
            pb::uint(out, 1, s.kind as u64);
            pb::uint(out, 2, ns(s.start_ns));
            if s.kind == SpanKind::Error as i32 {
                pb::str(out, 12, s.library.as_str());
                let e = pb::begin(out, 13);
                pb::string(out, 1, self.get(s.text));
                pb::string(out, 2, self.get(s.error));
                pb::end(out, e);
                pb::end(out, m);
                continue;
            }
            pb::uint(out, 3, ns(s.duration_ns));
            if s.kind == SpanKind::Cache as i32 {
                out.extend_from_slice(instance);
                pb::string(out, 9, self.get(s.error));
                pb::uint(out, 10, 1);
                // The command, upper case (ASCII, so still UTF-8).
                let at = out.len();
                pb::string(out, 11, self.get(s.text));
                out[at..].make_ascii_uppercase();
                pb::str(out, 12, s.library.as_str());
            } else if s.kind == SpanKind::External as i32 {
                pb::string(out, 7, self.get(s.text));
                pb::uint(out, 8, u64::from(s.status));
                pb::string(out, 9, self.get(s.error));
                pb::uint(out, 10, 1);
                pb::string(out, 11, self.get(s.op));
                pb::str(out, 12, s.library.as_str());
                if s.span_id != [0; 8] {
                    pb::bytes(out, 14, &s.span_id);
                }
            } else {
                out.extend_from_slice(instance);
                pb::int64(out, 6, s.rows);
                pb::string(out, 9, self.get(s.error));
                pb::uint(out, 10, u64::from(s.calls));
                pb::str(out, 12, s.library.as_str());
                pb::string(out, 15, self.get(s.file));
                pb::uint(out, 16, u64::from(s.line));
            }
            pb::end(out, m);
        }
    }

    /// Writes the request's error (`RequestRecord.error`, field 18), if
    /// any: a fatal error or uncaught exception; else, for a response of
    /// 500 or more, the last exception thrown (frameworks catch it and
    /// answer 500 themselves).
    pub fn encode_error(&self, out: &mut Vec<u8>, status: u32) {
        let e = match (self.error, self.last_exception) {
            (Some(e), _) => e,
            (None, Some((class, message))) if status >= 500 => ReqError {
                class,
                message,
                ..Default::default()
            },
            _ => return,
        };
        let m = pb::begin(out, 18);
        pb::string(out, 1, self.get(e.class));
        pb::string(out, 2, self.get(e.message));
        pb::string(out, 3, self.get(e.file));
        pb::uint(out, 4, u64::from(e.line));
        pb::boolean(out, 5, e.fatal);
        pb::end(out, m);
    }
}

/// The `statement` field (4) of `raw` normalised, encoded, from the cache
/// or normalised now (empty when the normalised text is). A text not seen
/// before that differs from a known one only in its numbers (an id inlined
/// into the SQL: `WHERE id = 17`, then `= 233`) is found by its
/// literal-blind hash, so it is not normalised again.
fn normalized(cache: &mut Statements, raw: &[u8], dialect: sql::Dialect) -> u32 {
    let pg = dialect == sql::Dialect::Postgres;
    let key = (text_hash(raw), raw.len() as u32, pg);
    if let Some(i) = cache.exact.get(&key) {
        return *i;
    }
    if cache.exact.len() >= STATEMENT_CACHE {
        cache.exact.clear();
    }
    let blind = (literal_blind_hash(raw), pg);
    if let Some(i) = cache.blind.get(&blind) {
        let i = *i;
        cache.exact.insert(key, i);
        return i;
    }
    if cache.blind.len() >= STATEMENT_CACHE {
        // The fields go with their last index: start over.
        cache.blind.clear();
        cache.exact.clear();
        cache.fields.clear();
    }
    let text = sql::normalize(&String::from_utf8_lossy(raw), dialect, MAX_STATEMENT);
    let mut field = Vec::with_capacity(text.len() + 3);
    pb::str(&mut field, 4, &text);
    let i = cache.fields.len() as u32;
    cache.fields.push(field.into_boxed_slice());
    cache.blind.insert(blind, i);
    cache.exact.insert(key, i);
    i
}

/// A hash of a statement's text that leaves out its numeric literals:
/// digit runs that do not continue an identifier (`t1` keeps its 1),
/// outside double-quoted and backquoted identifiers. Two texts with the
/// same literal-blind hash differ only in numbers the normaliser turns into
/// `?` anyway (in literals, strings or comments), so they normalise alike.
/// (A digit run followed by a letter other than an exponent, hex or binary
/// marker starts a MySQL identifier like `1abc`: its digits count.)
pub fn literal_blind_hash(raw: &[u8]) -> u64 {
    // The text with skipped digit runs replaced by one 0 byte (or kept, as
    // above), hashed 256 bytes at a time.
    let mut out = [0u8; 256];
    let mut n = 0;
    let mut h = 0u64;
    let (mut run_start, mut in_run, mut prev_ident, mut esc) = (0, false, false, false);
    let mut quote = 0u8;
    let mut i = 0;
    while i < raw.len() {
        // The usual bytes, outside quotes and digit runs and neither a
        // digit nor a quote (one table load decides), in a tight loop.
        if quote == 0 && !in_run {
            while let Some(&b) = raw.get(i) {
                let class = BYTE_CLASS[usize::from(b)];
                if class & (DIGIT | QUOTE) != 0 {
                    break;
                }
                if n >= out.len() - 2 {
                    h = text_hash(&out[..n]) ^ h.rotate_left(17);
                    n = 0;
                }
                out[n] = b;
                n += 1;
                prev_ident = class & IDENT != 0;
                i += 1;
            }
            if i >= raw.len() {
                break;
            }
        }
        let b = raw[i];
        if n >= out.len() - 2 {
            h = text_hash(&out[..n]) ^ h.rotate_left(17);
            n = 0;
        }
        if quote == b'"' || quote == b'`' {
            out[n] = b;
            n += 1;
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == quote {
                quote = 0;
            }
            prev_ident = false;
            i += 1;
            continue;
        }
        let digit = b.is_ascii_digit();
        if digit && (in_run || !prev_ident) {
            if !in_run {
                in_run = true;
                run_start = i;
            }
            i += 1;
            continue;
        }
        if in_run {
            in_run = false;
            let ident_start = b.is_ascii_alphabetic() || b == b'_' || b == b'$';
            if ident_start && !matches!(b, b'e' | b'E' | b'x' | b'X' | b'b' | b'B') {
                // `1abc`: the digits are part of an identifier.
                for &d in &raw[run_start..i] {
                    if n >= out.len() - 2 {
                        h = text_hash(&out[..n]) ^ h.rotate_left(17);
                        n = 0;
                    }
                    out[n] = d;
                    n += 1;
                }
            }
            out[n] = 0;
            n += 1;
        }
        out[n] = b;
        n += 1;
        if quote == b'\'' {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'\'' {
                quote = 0;
            }
        } else if matches!(b, b'\'' | b'"' | b'`') {
            quote = b;
        }
        prev_ident = digit || b.is_ascii_alphabetic() || b == b'_' || b == b'$' || b >= 0x80;
        i += 1;
    }
    if in_run {
        out[n] = 0;
        n += 1;
    }
    text_hash(&out[..n]) ^ h.rotate_left(17)
}

/// `BYTE_CLASS` bits: an ASCII digit; a quote (`'`, `"`, `` ` ``); a byte
/// that continues an identifier (letter, `_`, `$`, non-ASCII).
const DIGIT: u8 = 1;
const QUOTE: u8 = 2;
const IDENT: u8 = 4;
static BYTE_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if b.is_ascii_digit() {
            DIGIT
        } else if b == b'\'' || b == b'"' || b == b'`' {
            QUOTE
        } else if b.is_ascii_alphabetic() || b == b'_' || b == b'$' || b >= 0x80 {
            IDENT
        } else {
            0
        };
        i += 1;
    }
    t
};

/// A fast 64-bit hash of a text, eight bytes a step (folded multiply), for
/// the per-process caches. Not the statement hash the collector shows
/// (`sonde_core::sql::hash`); only ever compared within one process.
pub fn text_hash(b: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    #[inline]
    fn fold(a: u64, b: u64) -> u64 {
        let p = u128::from(a) * u128::from(b);
        (p as u64) ^ ((p >> 64) as u64)
    }
    let mut h = (b.len() as u64) ^ 0x243f_6a88_85a3_08d3;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = fold(h ^ u64::from_le_bytes(w), K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = fold(h ^ u64::from_le_bytes(w), K);
    }
    fold(h ^ (h >> 29), K)
}

/// Normalised statements and instance names, per process: the same
/// (prepared) statement is normalised once, not once per execution.
/// Bounded; emptied when full.
#[derive(Debug, Default)]
pub struct StatementCache {
    statements: Statements,
    /// (is PostgreSQL, the encoded `db` field (5) naming the instance) by
    /// (driver, DSN) hash.
    instances: HashMap<u64, (bool, Box<[u8]>), KeyIsHash>,
}

/// Normalised statements, as their encoded `statement` field (4), by raw
/// text and by literal-blind text: indices into `fields` (no reference
/// counts to maintain per span).
#[derive(Debug, Default)]
struct Statements {
    /// By (hash, length, is PostgreSQL) of the raw text.
    exact: HashMap<(u64, u32, bool), u32, KeyIsHash>,
    /// By (literal-blind hash, is PostgreSQL).
    blind: HashMap<(u64, bool), u32, KeyIsHash>,
    /// The encoded fields, emptied with `blind`.
    fields: Vec<Box<[u8]>>,
}

/// The keys are already hashes: hashing them again (SipHash) is waste.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyIsHash;

impl std::hash::BuildHasher for KeyIsHash {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

/// Folds the written integers together; fed only with hashes and lengths.
#[derive(Debug, Default)]
pub struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ *b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = self.0.rotate_left(5) ^ v;
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = self.0.rotate_left(5) ^ v as u64;
    }
    fn write_usize(&mut self, v: usize) {
        self.0 = self.0.rotate_left(5) ^ v as u64;
    }
    fn write_u8(&mut self, v: u8) {
        self.0 = self.0.rotate_left(5) ^ v as u64;
    }
}

/// Entries kept before a cache starts over.
const STATEMENT_CACHE: usize = 1024;

impl StatementCache {
    /// Makes sure the instance of (driver, DSN) is named; returns its key.
    fn instance(&mut self, driver: &[u8], dsn: &[u8]) -> u64 {
        let key = text_hash(driver) ^ text_hash(dsn).rotate_left(1);
        self.instances.entry(key).or_insert_with(|| {
            let d = String::from_utf8_lossy(driver);
            let name = dsn::pdo_instance(&d, &String::from_utf8_lossy(dsn));
            let mut field = Vec::with_capacity(name.len() + 3);
            pb::str(&mut field, 5, &name);
            (d == "pgsql", field.into_boxed_slice())
        });
        key
    }
}

/// The name of a PHP error type.
fn error_type_name(kind: i32) -> &'static str {
    match kind {
        1 => "E_ERROR",
        4 => "E_PARSE",
        16 => "E_CORE_ERROR",
        64 => "E_COMPILE_ERROR",
        256 => "E_USER_ERROR",
        4096 => "E_RECOVERABLE_ERROR",
        _ => "E_ERROR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use sonde_proto::v1::{ErrorInfo, RequestRecord, Span};

    /// The spans as the agent decodes them.
    fn finish(b: &mut SpanBuf, cache: &mut StatementCache) -> Vec<Span> {
        let mut out = Vec::new();
        b.encode_spans(&mut out, 1.0, cache);
        RequestRecord::decode(&out[..]).unwrap().spans
    }

    /// The request error as the agent decodes it.
    fn request_error(b: &SpanBuf, status: u32) -> Option<ErrorInfo> {
        let mut out = Vec::new();
        b.encode_error(&mut out, status);
        RequestRecord::decode(&out[..]).unwrap().error
    }

    fn sql_span(buf: &mut SpanBuf, text: &str, start: u64) -> Option<usize> {
        let text = buf.text(text.as_bytes());
        let db = buf.db(0x1000, || {
            Some((&b"mysql"[..], &b"mysql:host=127.0.0.1;dbname=test"[..]))
        });
        buf.push(RawSpan {
            kind: SpanKind::Sql as i32,
            library: Library::PDO,
            start_ns: start,
            duration_ns: 10,
            text,
            db,
            rows: 3,
            calls: 1,
            error: Text::default(),
            ..Default::default()
        })
    }

    /// The literal-blind hash before its fast path (one table load for the
    /// usual byte): the fast path must not change a single value.
    #[allow(unused_assignments)]
    fn literal_blind_hash_reference(raw: &[u8]) -> u64 {
        // The text with skipped digit runs replaced by one 0 byte (or kept, as
        // above), hashed 256 bytes at a time.
        let mut out = [0u8; 256];
        let mut n = 0;
        let mut h = 0u64;
        let (mut run_start, mut in_run, mut prev_ident, mut esc) = (0, false, false, false);
        let mut quote = 0u8;
        let mut i = 0;
        while i < raw.len() {
            let b = raw[i];
            if n >= out.len() - 2 {
                h = text_hash(&out[..n]) ^ h.rotate_left(17);
                n = 0;
            }
            if quote == b'"' || quote == b'`' {
                out[n] = b;
                n += 1;
                if esc {
                    esc = false;
                } else if b == b'\\' {
                    esc = true;
                } else if b == quote {
                    quote = 0;
                }
                prev_ident = false;
                i += 1;
                continue;
            }
            let digit = b.is_ascii_digit();
            if digit && (in_run || !prev_ident) {
                if !in_run {
                    in_run = true;
                    run_start = i;
                }
                i += 1;
                continue;
            }
            if in_run {
                in_run = false;
                let ident_start = b.is_ascii_alphabetic() || b == b'_' || b == b'$';
                if ident_start && !matches!(b, b'e' | b'E' | b'x' | b'X' | b'b' | b'B') {
                    // `1abc`: the digits are part of an identifier.
                    for &d in &raw[run_start..i] {
                        if n >= out.len() - 2 {
                            h = text_hash(&out[..n]) ^ h.rotate_left(17);
                            n = 0;
                        }
                        out[n] = d;
                        n += 1;
                    }
                }
                out[n] = 0;
                n += 1;
            }
            out[n] = b;
            n += 1;
            if quote == b'\'' {
                if esc {
                    esc = false;
                } else if b == b'\\' {
                    esc = true;
                } else if b == b'\'' {
                    quote = 0;
                }
            } else if matches!(b, b'\'' | b'"' | b'`') {
                quote = b;
            }
            prev_ident = digit || b.is_ascii_alphabetic() || b == b'_' || b == b'$' || b >= 0x80;
            i += 1;
        }
        if in_run {
            out[n] = 0;
            n += 1;
        }
        text_hash(&out[..n]) ^ h.rotate_left(17)
    }

    #[test]
    fn literal_blind_hash_fast_path_changes_no_value() {
        let mut texts: Vec<Vec<u8>> = [
            "UPDATE sonde_bench SET likes = likes + 1 WHERE id = 233",
            "SELECT * FROM t1 WHERE a = 'x 5' -- note 7",
            "SELECT \"col 2\" FROM t WHERE b = 'it\\'s \" 4'",
            "SELECT `a``1` FROM 1abc, 2e5, 0x1F, $1::int, _9, é9",
            "",
            "7",
            "a7",
        ]
        .iter()
        .map(|t| t.as_bytes().to_vec())
        .collect();
        // Long texts (chunked hashing) and every byte value.
        texts.push("SELECT 1, 'a', \"b\", x2 ".repeat(40).into_bytes());
        texts.push((0..=255u8).cycle().take(2000).collect());
        // Pseudo-random texts over a SQL-ish alphabet.
        let alphabet = b"ab_$1209 '\"`\\.eExX\xc3\xa9(),=";
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in 0..400 {
            let t: Vec<u8> = (0..len % 97 + len / 4)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            texts.push(t);
        }
        for t in &texts {
            assert_eq!(
                literal_blind_hash(t),
                literal_blind_hash_reference(t),
                "{:?}",
                String::from_utf8_lossy(t)
            );
        }
    }

    /// Texts with the same literal-blind hash normalise alike; ids
    /// inlined into the SQL share one.
    #[test]
    fn literal_blind_hash_only_merges_what_normalises_alike() {
        let texts = [
            "UPDATE t SET likes = likes + 1 WHERE id = 17",
            "UPDATE t SET likes = likes + 1 WHERE id = 233",
            "UPDATE t SET likes = likes + 2 WHERE id = 5",
            "SELECT * FROM t1 WHERE a = 1.5",
            "SELECT * FROM t2 WHERE a = 2.25",
            "SELECT * FROM t1 WHERE a = 'x 5' -- note 7",
            "SELECT * FROM t1 WHERE a = 'x 6' -- note 8",
            "SELECT `col 1` FROM t",
            "SELECT `col 2` FROM t",
            "SELECT \"col 1\" FROM t WHERE b = 'it\\'s \" 4'",
            "SELECT \"col 2\" FROM t WHERE b = 'it\\'s \" 4'",
            "SELECT * FROM 1abc",
            "SELECT * FROM 2abc",
            "SELECT 1e5, 0x1F",
            "SELECT 2e5, 0x1F",
            "SELECT $1::int + 3",
            "SELECT $2::int + 3",
            "INSERT INTO t VALUES (1, 2), (3, 4)",
            "INSERT INTO t VALUES (5, 6), (7, 8)",
        ];
        let mut merged = 0;
        for (i, a) in texts.iter().enumerate() {
            for b in &texts[i + 1..] {
                if literal_blind_hash(a.as_bytes()) != literal_blind_hash(b.as_bytes()) {
                    continue;
                }
                merged += 1;
                for d in [sql::Dialect::MySql, sql::Dialect::Postgres] {
                    assert_eq!(
                        sql::normalize(a, d, MAX_STATEMENT),
                        sql::normalize(b, d, MAX_STATEMENT),
                        "{a} / {b}"
                    );
                }
            }
        }
        assert!(merged >= 6, "{merged}");
        let h = |t: &str| literal_blind_hash(t.as_bytes());
        assert_eq!(h(texts[0]), h(texts[1]));
        assert_ne!(h(texts[3]), h(texts[4]), "t1 and t2 are other tables");
        assert_ne!(h(texts[7]), h(texts[8]), "quoted identifiers keep digits");
        assert_ne!(h(texts[9]), h(texts[10]));
        assert_ne!(h(texts[11]), h(texts[12]), "1abc is an identifier");
        assert_ne!(h(texts[15]), h(texts[16]), "placeholders keep their number");
        // Through the cache: the second text is found by its blind hash.
        let mut c = Statements::default();
        let n1 = normalized(&mut c, texts[0].as_bytes(), sql::Dialect::MySql);
        let n2 = normalized(&mut c, texts[1].as_bytes(), sql::Dialect::MySql);
        assert_eq!(n1, n2);
        assert_eq!((c.exact.len(), c.blind.len()), (2, 1));
    }

    #[test]
    fn fetches_aggregate_per_result_set() {
        let mut b = SpanBuf::new(100);
        let s1 = sql_span(&mut b, "SELECT * FROM t WHERE id = 1", 0);
        b.open_result(0xAA, s1);
        for i in 0..5 {
            b.fetch(0xAA, Library::PDO, 100 + i * 10, 105 + i * 10, 1);
        }
        b.fetch(0xAA, Library::PDO, 200, 201, 0);
        // Re-executing the same statement object starts a new result set.
        let s2 = sql_span(&mut b, "SELECT * FROM t WHERE id = 2", 300);
        b.open_result(0xAA, s2);
        b.fetch(0xAA, Library::PDO, 400, 450, 1000);
        let spans = finish(&mut b, &mut StatementCache::default());
        assert_eq!(spans.len(), 4);
        assert_eq!(spans[1].kind, SpanKind::Fetch as i32);
        assert_eq!(spans[1].calls, 6);
        assert_eq!(spans[1].rows, 5);
        assert_eq!(spans[1].duration_ns, 26);
        assert_eq!(spans[1].statement, "SELECT * FROM t WHERE id = ?");
        assert_eq!(spans[1].db, "mysql://127.0.0.1:3306/test");
        assert_eq!(spans[3].rows, 1000);
        assert_eq!(spans[3].calls, 1);
    }

    /// Fetches merged before they reach the buffer (the extension's queue
    /// adds up a fetch loop) count as the calls they stand for.
    #[test]
    fn merged_fetches_count_every_call() {
        let mut b = SpanBuf::new(100);
        let s = sql_span(&mut b, "SELECT * FROM t", 0);
        b.open_result(0xBB, s);
        b.fetch_calls(0xBB, Library::PDO, 100, 40, 5, 5);
        b.fetch(0xBB, Library::PDO, 200, 210, 0);
        let spans = finish(&mut b, &mut StatementCache::default());
        assert_eq!(spans.len(), 2);
        assert_eq!((spans[1].calls, spans[1].rows), (6, 5));
        assert_eq!(spans[1].duration_ns, 50);
        assert_eq!(spans[1].start_ns, 100);
    }

    #[test]
    fn uncaught_exception_is_the_request_error() {
        let mut b = SpanBuf::new(10);
        b.exception(5, b"RuntimeException", b"demo failure");
        b.php_error(2, b"/app/x.php", 3, b"Undefined variable $y");
        assert_eq!(b.warnings, 1);
        assert!(
            request_error(&b, 200).is_none(),
            "a caught exception on a 200 is no failure"
        );
        let e = request_error(&b, 500).unwrap();
        assert_eq!(
            (e.class.as_str(), e.message.as_str(), e.fatal),
            ("RuntimeException", "demo failure", false)
        );
        b.php_error(
            1 | (1 << 15),
            b"/app/index.php",
            42,
            b"Uncaught RuntimeException: demo failure in /app/index.php:42\nStack trace:\n#0 {main}",
        );
        let e = request_error(&b, 500).unwrap();
        assert_eq!(e.class, "RuntimeException");
        assert_eq!(e.message, "demo failure");
        assert_eq!(
            (e.file.as_str(), e.line, e.fatal),
            ("/app/index.php", 42, true)
        );
        let spans = finish(&mut b, &mut StatementCache::default());
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].kind, SpanKind::Error as i32);
        assert_eq!(
            spans[0].exception.as_ref().unwrap().class,
            "RuntimeException"
        );
    }

    #[test]
    fn fatal_error_without_exception() {
        let mut b = SpanBuf::new(10);
        b.php_error(
            1,
            b"/app/a.php",
            7,
            b"Allowed memory size of 1 bytes exhausted\nmore",
        );
        let e = request_error(&b, 500).unwrap();
        assert_eq!(e.class, "E_ERROR");
        assert_eq!(e.message, "Allowed memory size of 1 bytes exhausted");
        b.clear();
        assert!(request_error(&b, 500).is_none());
    }

    #[test]
    fn caps_spans_and_texts_and_counts() {
        let mut b = SpanBuf::new(3);
        for i in 0..5 {
            sql_span(&mut b, "SELECT 1", i);
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.dropped_spans, 2);
        let big = vec![b'x'; MAX_TEXT + 10];
        let t = b.text(&big);
        assert_eq!(t.len as usize, MAX_TEXT);
        assert_eq!(b.truncated_texts, 1);
        // Filling the arena never allocates beyond its capacity.
        let cap = b.arena.capacity();
        for _ in 0..100 {
            b.text(&big);
        }
        assert_eq!(b.arena.capacity(), cap);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.dropped_spans, 0);
    }
}
