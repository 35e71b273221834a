//! The raw hand-off: a request's captured values and span buffer copied as
//! they are into one frame (`frame::Kind::Raw`), and read back by the agent.
//!
//! Writing is a handful of copies — fixed-width fields, length-prefixed
//! strings, the span buffer's text arena in one piece and 80 bytes per span
//! — with no normalising, hashing, redaction or protobuf in the PHP
//! process. [`Encoder`] (in the agent) reads a frame back into a
//! [`SpanBuf`] and [`Captured`] values and runs the same
//! [`Builder::frame`] the extension would have run, so a raw frame becomes
//! exactly the record the extension would have encoded itself.
//!
//! Reading checks everything (lengths, text ranges inside the arena, UTF-8
//! of strings, known library names) and never panics: a malformed frame is
//! an error, not a crash.
//!
//! Layout (little-endian), after the 4-byte frame header:
//! ```text
//! f64 ns_per_tick
//! u32 pid, status, truncated_texts, dropped_records
//! i64 start_unix_ns; u64 wall_ns, queue_ns, cpu_user_ns, cpu_sys_ns, peak_memory_bytes
//! [16] record id, [16] trace id, [8] span id
//! u8 flags (1: parent span, 2: parent record, 4: name, 8: spans)
//! [8] parent span, [16] parent record      (zeros when absent)
//! u32 lengths of 13 strings, then their UTF-8 bytes: app, method, uri,
//!     client_ip, visitor_id, http_host, sapi, php_version, ext_version,
//!     extra_redact, endpoint_params, tracestate, name
//! u32 attributes; then str key, str value each
//! when flag 8:
//!   u32 dropped_spans, truncated_texts, warnings
//!   u8 has error; text class, message, file; u32 line; u8 fatal
//!   u8 has last exception; text class, message
//!   u32 dbs; text driver, dsn each
//!   u32 arena length; the arena
//!   u32 spans; SPAN_BYTES each
//! ```
//! where `str` is a u32 length and UTF-8 bytes and `text` two u32s (offset,
//! length) into the arena. A span: u8 kind, u8 library (`Library` index),
//! u16 database entry (or u16::MAX), u32 line, u64 start and u64 duration
//! (ticks; times `ns_per_tick` is nanoseconds), i64 rows, u32 calls, u32
//! status, text (statement, URL or command), text error, text operation,
//! text file, [8] span id of an outgoing call.

use sonde_core::frame;
use thiserror::Error;

use crate::record::{Builder, Captured, Ids, Spans};
use crate::spans::{Db, Library, RawSpan, ReqError, SpanBuf, StatementCache, Text};

/// Strings after the fixed header.
const STRINGS: usize = 13;
/// The fixed header and the strings' lengths.
const HEAD_BYTES: usize = 8 + 4 * 4 + 8 + 5 * 8 + 16 + 16 + 8 + 1 + 8 + 16 + STRINGS * 4;

/// Bytes per span in a raw frame.
pub const SPAN_BYTES: usize = 80;

const PARENT_SPAN: u8 = 1;
const PARENT_RECORD: u8 = 2;
const NAME: u8 = 4;
const SPANS: u8 = 8;

/// Why a raw frame was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RawError {
    #[error("raw record ends early (in {0})")]
    Short(&'static str),
    #[error("raw record: {0} is not UTF-8")]
    Utf8(&'static str),
    #[error("raw record: a text range lies outside its {0}-byte arena")]
    TextRange(u32),
    #[error("raw record: unknown library index {0}")]
    Library(u8),
    #[error("raw record: {0} trailing bytes")]
    Trailing(usize),
    #[error("raw record: {0} database entries (at most {max})", max = crate::spans::DBS)]
    Dbs(u32),
    #[error("not a raw record frame: {0}")]
    Frame(#[from] frame::FrameError),
    #[error("not a raw record frame (kind {0:?})")]
    Kind(frame::Kind),
}

/// Writes the raw frame of one request into `out` (cleared first): the
/// frame header, `c`, the `sonde.endpoint_params` value the agent names the
/// endpoint with, and — when given — the span buffer with the process's
/// ticks-to-nanoseconds ratio. The caller checks the length against
/// `frame::MAX_FRAME_BYTES`.
pub fn write(
    out: &mut Vec<u8>,
    c: &Captured<'_>,
    endpoint_params: &str,
    spans: Option<(&SpanBuf, f64)>,
) {
    frame::start(out, frame::Kind::Raw);
    let fallback = Ids::default();
    let ids = c.ids.unwrap_or(&fallback);
    let mut flags = 0;
    if ids.parent_span.is_some() {
        flags |= PARENT_SPAN;
    }
    if ids.parent_record.is_some() {
        flags |= PARENT_RECORD;
    }
    if c.name.is_some() {
        flags |= NAME;
    }
    if spans.is_some() {
        flags |= SPANS;
    }
    let strings: [&str; STRINGS] = [
        c.app,
        c.method,
        c.uri,
        c.client_ip,
        c.visitor_id,
        c.http_host,
        c.sapi,
        c.php_version,
        c.ext_version,
        c.extra_redact,
        endpoint_params,
        &ids.tracestate,
        c.name.unwrap_or(""),
    ];
    // The fixed part and the strings' lengths in one piece.
    let mut h = [0u8; HEAD_BYTES];
    let mut at = 0;
    let mut put = |b: &[u8]| {
        h[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    };
    put(&spans.map_or(1.0, |s| s.1).to_le_bytes());
    for v in [c.pid, c.status, c.truncated_texts, c.dropped_records] {
        put(&v.to_le_bytes());
    }
    put(&c.start_unix_ns.to_le_bytes());
    for v in [
        c.wall_ns,
        c.queue_ns,
        c.cpu_user_ns,
        c.cpu_sys_ns,
        c.peak_memory_bytes,
    ] {
        put(&v.to_le_bytes());
    }
    put(&ids.record);
    put(&ids.trace);
    put(&ids.span);
    put(&[flags]);
    put(&ids.parent_span.unwrap_or_default());
    put(&ids.parent_record.unwrap_or_default());
    for s in strings {
        put(&(s.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(&h);
    for s in strings {
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&(c.attributes.len() as u32).to_le_bytes());
    for (k, v) in c.attributes {
        put_str(out, k.as_bytes());
        put_str(out, v.as_bytes());
    }
    let Some((buf, _)) = spans else {
        return;
    };
    for v in [buf.dropped_spans, buf.truncated_texts, buf.warnings] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    match &buf.error {
        Some(e) => {
            out.push(1);
            for t in [e.class, e.message, e.file] {
                put_text(out, t);
            }
            out.extend_from_slice(&e.line.to_le_bytes());
            out.push(u8::from(e.fatal));
        }
        None => out.push(0),
    }
    match &buf.last_exception {
        Some((class, message)) => {
            out.push(1);
            put_text(out, *class);
            put_text(out, *message);
        }
        None => out.push(0),
    }
    out.extend_from_slice(&(buf.dbs.len() as u32).to_le_bytes());
    for d in &buf.dbs {
        put_text(out, d.driver);
        put_text(out, d.dsn);
    }
    put_str(out, &buf.arena);
    out.extend_from_slice(&(buf.spans.len() as u32).to_le_bytes());
    // One resize, then each span written in place.
    let at = out.len();
    out.resize(at + buf.spans.len() * SPAN_BYTES, 0);
    for (b, s) in out[at..].chunks_exact_mut(SPAN_BYTES).zip(&buf.spans) {
        b[0] = s.kind as u8;
        b[1] = s.library.index();
        b[2..4].copy_from_slice(&s.db.to_le_bytes());
        b[4..8].copy_from_slice(&s.line.to_le_bytes());
        b[8..16].copy_from_slice(&s.start_ns.to_le_bytes());
        b[16..24].copy_from_slice(&s.duration_ns.to_le_bytes());
        b[24..32].copy_from_slice(&s.rows.to_le_bytes());
        b[32..36].copy_from_slice(&s.calls.to_le_bytes());
        b[36..40].copy_from_slice(&s.status.to_le_bytes());
        for (at, t) in [(40, s.text), (48, s.error), (56, s.op), (64, s.file)] {
            b[at..at + 4].copy_from_slice(&t.off.to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&t.len.to_le_bytes());
        }
        b[72..80].copy_from_slice(&s.span_id);
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s);
}

fn put_text(out: &mut Vec<u8>, t: Text) {
    out.extend_from_slice(&t.off.to_le_bytes());
    out.extend_from_slice(&t.len.to_le_bytes());
}

/// The parts of a request read back from a raw frame that a [`Captured`]
/// borrows rather than holds: kept by the reader, reused frame after frame.
#[derive(Debug, Default)]
pub struct Owned {
    ids: Ids,
    attributes: Vec<(String, String)>,
}

/// A raw frame read back: the request as the extension captured it (its
/// strings borrowed from the frame), and what encoding it needs besides.
#[derive(Debug)]
pub struct Read<'a> {
    pub captured: Captured<'a>,
    /// Ticks to nanoseconds for the worker's span times.
    pub ns_per_tick: f64,
    /// Whether the span buffer was filled.
    pub has_spans: bool,
    /// The worker's `sonde.endpoint_params`.
    pub endpoint_params: &'a str,
}

/// A cursor over a raw payload; every read checks the length.
struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], RawError> {
        if self.b.len() < n {
            return Err(RawError::Short(what));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], RawError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, RawError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, RawError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, RawError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], RawError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    fn string(&mut self, what: &'static str) -> Result<String, RawError> {
        let b = self.bytes(what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| RawError::Utf8(what))
    }
}

fn checked_text(off: u32, len: u32, arena: u32) -> Result<Text, RawError> {
    if u64::from(off) + u64::from(len) > u64::from(arena) {
        return Err(RawError::TextRange(arena));
    }
    Ok(Text { off, len })
}

/// Reads the payload of a raw frame (after its header): the request's
/// values (ids and attributes into `owned`), and its spans into `buf`
/// (both cleared first).
pub fn read<'a>(
    payload: &'a [u8],
    owned: &'a mut Owned,
    buf: &mut SpanBuf,
) -> Result<Read<'a>, RawError> {
    buf.clear();
    owned.attributes.clear();
    let mut c = Cursor { b: payload };
    let mut ns_per_tick = f64::from_le_bytes(c.array("header")?);
    if !ns_per_tick.is_finite() || ns_per_tick < 0.0 {
        ns_per_tick = 1.0;
    }
    let mut u32s = [0u32; 4];
    for v in &mut u32s {
        *v = c.u32("header")?;
    }
    let [pid, status, truncated_texts, dropped_records] = u32s;
    let mut u64s = [0u64; 6];
    for v in &mut u64s {
        *v = c.u64("header")?;
    }
    let [start, wall_ns, queue_ns, cpu_user_ns, cpu_sys_ns, peak_memory_bytes] = u64s;
    let ids = &mut owned.ids;
    ids.record = c.array("ids")?;
    ids.trace = c.array("ids")?;
    ids.span = c.array("ids")?;
    let flags = c.u8("flags")?;
    let parent_span: [u8; 8] = c.array("ids")?;
    let parent_record: [u8; 16] = c.array("ids")?;
    ids.parent_span = (flags & PARENT_SPAN != 0).then_some(parent_span);
    ids.parent_record = (flags & PARENT_RECORD != 0).then_some(parent_record);
    let mut lens = [0usize; STRINGS];
    for l in &mut lens {
        *l = c.u32("string lengths")? as usize;
    }
    let mut strings: [&str; STRINGS] = [""; STRINGS];
    const WHAT: [&str; STRINGS] = [
        "app",
        "method",
        "uri",
        "client_ip",
        "visitor_id",
        "http_host",
        "sapi",
        "php_version",
        "ext_version",
        "extra_redact",
        "endpoint_params",
        "tracestate",
        "name",
    ];
    for ((s, len), what) in strings.iter_mut().zip(lens).zip(WHAT) {
        let b = c.take(len, what)?;
        *s = std::str::from_utf8(b).map_err(|_| RawError::Utf8(what))?;
    }
    let [app, method, uri, client_ip, visitor_id, http_host, sapi, php_version, ext_version, extra_redact, endpoint_params, tracestate, name] =
        strings;
    ids.tracestate.clear();
    ids.tracestate.push_str(tracestate);
    let n = c.u32("attributes")?;
    // Each attribute takes at least 8 bytes: a count beyond what is left
    // is malformed, and never reserves more than the frame could hold.
    if n as usize > c.b.len() / 8 {
        return Err(RawError::Short("attributes"));
    }
    owned.attributes.reserve(n as usize);
    for _ in 0..n {
        let k = c.string("attribute")?;
        let v = c.string("attribute")?;
        owned.attributes.push((k, v));
    }
    let has_spans = flags & SPANS != 0;
    if has_spans {
        read_spans(&mut c, buf)?;
    }
    if !c.b.is_empty() {
        return Err(RawError::Trailing(c.b.len()));
    }
    let owned: &'a Owned = owned;
    Ok(Read {
        captured: Captured {
            app,
            pid,
            start_unix_ns: start as i64,
            wall_ns,
            method,
            uri,
            status,
            cpu_user_ns,
            cpu_sys_ns,
            peak_memory_bytes,
            client_ip,
            visitor_id,
            queue_ns,
            http_host,
            ids: Some(&owned.ids),
            sapi,
            php_version,
            extra_redact,
            truncated_texts,
            dropped_records,
            name: (flags & NAME != 0).then_some(name),
            attributes: &owned.attributes,
            ext_version,
        },
        ns_per_tick,
        has_spans,
        endpoint_params,
    })
}

fn read_spans(c: &mut Cursor<'_>, buf: &mut SpanBuf) -> Result<(), RawError> {
    buf.dropped_spans = c.u32("span counts")?;
    buf.truncated_texts = c.u32("span counts")?;
    buf.warnings = c.u32("span counts")?;
    // Texts are checked against the arena, which comes after them: keep
    // the raw ranges until its length is known.
    let error = match c.u8("error")? {
        0 => None,
        _ => {
            let mut t = [(0u32, 0u32); 3];
            for x in &mut t {
                *x = (c.u32("error")?, c.u32("error")?);
            }
            Some((t, c.u32("error")?, c.u8("error")? != 0))
        }
    };
    let exception = match c.u8("exception")? {
        0 => None,
        _ => Some([
            (c.u32("exception")?, c.u32("exception")?),
            (c.u32("exception")?, c.u32("exception")?),
        ]),
    };
    let n_dbs = c.u32("dbs")?;
    if n_dbs as usize > crate::spans::DBS {
        return Err(RawError::Dbs(n_dbs));
    }
    let dbs = c.take(n_dbs as usize * 16, "dbs")?;
    let arena = c.bytes("arena")?;
    let alen = arena.len() as u32;
    buf.arena.extend_from_slice(arena);
    for d in dbs.chunks_exact(16) {
        let w = |i: usize| u32::from_le_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
        buf.dbs.push(Db {
            key: 0,
            driver: checked_text(w(0), w(4), alen)?,
            dsn: checked_text(w(8), w(12), alen)?,
        });
    }
    if let Some((t, line, fatal)) = error {
        buf.error = Some(ReqError {
            class: checked_text(t[0].0, t[0].1, alen)?,
            message: checked_text(t[1].0, t[1].1, alen)?,
            file: checked_text(t[2].0, t[2].1, alen)?,
            line,
            fatal,
        });
    }
    if let Some([class, message]) = exception {
        buf.last_exception = Some((
            checked_text(class.0, class.1, alen)?,
            checked_text(message.0, message.1, alen)?,
        ));
    }
    let n = c.u32("spans")? as usize;
    let all = c.take(
        n.checked_mul(SPAN_BYTES).ok_or(RawError::Short("spans"))?,
        "spans",
    )?;
    buf.spans.reserve(n);
    for b in all.chunks_exact(SPAN_BYTES) {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let library = Library::from_index(b[1]).ok_or(RawError::Library(b[1]))?;
        // The four texts checked together, without a `Result` each.
        let text = |at: usize| Text {
            off: u32_at(at),
            len: u32_at(at + 4),
        };
        let (text, error, op, file) = (text(40), text(48), text(56), text(64));
        let end = |t: Text| u64::from(t.off) + u64::from(t.len);
        if end(text).max(end(error)).max(end(op)).max(end(file)) > u64::from(alen) {
            return Err(RawError::TextRange(alen));
        }
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&b[72..80]);
        buf.spans.push(RawSpan {
            kind: i32::from(b[0]),
            library,
            db: u16::from_le_bytes([b[2], b[3]]),
            line: u32_at(4),
            start_ns: u64_at(8),
            duration_ns: u64_at(16),
            rows: u64_at(24) as i64,
            calls: u32_at(32),
            status: u32_at(36),
            text,
            error,
            op,
            file,
            span_id,
        });
    }
    Ok(())
}

/// Turns raw frames into `ExtMessage` frames holding a `RequestRecord`
/// (the agent's side): one builder, one statement cache, one span buffer
/// and the read-back ids and attributes, reused for every frame.
#[derive(Debug)]
pub struct Encoder {
    builder: Builder,
    cache: StatementCache,
    spans: SpanBuf,
    owned: Owned,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            // Ids come with every raw frame; the builder's own generator,
            // which makes ids only for a request without them, is unused.
            builder: Builder::new([0, 0]),
            cache: StatementCache::default(),
            spans: SpanBuf::new(0),
            owned: Owned::default(),
        }
    }
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The `ExtMessage` frame for the raw frame `raw` (header included):
    /// exactly what the extension's `Builder::frame` would have written.
    pub fn encode<'s>(&'s mut self, raw: &'s [u8]) -> Result<&'s [u8], RawError> {
        let (kind, payload) = frame::decode(raw)?;
        if kind != frame::Kind::Raw {
            return Err(RawError::Kind(kind));
        }
        Ok(self.frame(payload)?.0)
    }

    /// Encodes the payload of a raw frame (after its header) and calls `f`
    /// with the encoded `RequestRecord` (the bytes inside the `ExtMessage`)
    /// and the request it was read from: for a caller that needs the
    /// record's own fields without walking the encoding it was just given.
    pub fn encode_record<R>(
        &mut self,
        payload: &[u8],
        f: impl FnOnce(&[u8], &Captured<'_>) -> R,
    ) -> Result<R, RawError> {
        let (frame, captured) = self.frame(payload)?;
        Ok(f(record_body(frame), &captured))
    }

    /// Reads `payload` and writes its `ExtMessage` frame.
    fn frame<'s>(&'s mut self, payload: &'s [u8]) -> Result<(&'s [u8], Captured<'s>), RawError> {
        let r = read(payload, &mut self.owned, &mut self.spans)?;
        self.builder.set_endpoint_params(r.endpoint_params);
        let spans = r.has_spans.then_some(Spans {
            buf: &mut self.spans,
            ns_per_tick: r.ns_per_tick,
            cache: &mut self.cache,
        });
        let frame = self.builder.frame(&r.captured, spans);
        Ok((frame, r.captured))
    }
}

/// The `RequestRecord` inside an `ExtMessage` frame `Builder::frame` wrote:
/// after the frame header, the tag of field 1 and the varint length.
fn record_body(frame: &[u8]) -> &[u8] {
    let rest = frame.get(frame::HEADER_LEN + 1..).unwrap_or_default();
    let n = rest.iter().take_while(|b| **b & 0x80 != 0).count() + 1;
    rest.get(n..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_proto::v1::SpanKind;

    /// A request with one of everything the span buffer can hold.
    fn sample(buf: &mut SpanBuf, b: &mut Builder) -> (Ids, Vec<(String, String)>) {
        let ids = b.start(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some(&format!("x=1,sonde={}", "cd".repeat(16))),
        );
        for (i, sql) in [
            "SELECT * FROM t WHERE id = 17",
            "SELECT * FROM t WHERE id = 18",
        ]
        .iter()
        .enumerate()
        {
            let t = buf.text(sql.as_bytes());
            let db = buf.db(1, || {
                Some((&b"mysql"[..], &b"host=db;port=3307;dbname=shop"[..]))
            });
            let idx = buf.push(RawSpan {
                kind: SpanKind::Sql as i32,
                library: Library::PDO,
                start_ns: 100 + i as u64 * 1000,
                duration_ns: 500,
                text: t,
                db,
                rows: 3,
                calls: 1,
                ..Default::default()
            });
            buf.open_result(7 + i, idx);
            buf.fetch(
                7 + i,
                Library::PDO,
                700 + i as u64 * 1000,
                800 + i as u64 * 1000,
                2,
            );
        }
        let url = buf.text(b"http://api.local/v1/x?token=abc");
        let err = buf.text(b"connection refused");
        buf.push(RawSpan {
            kind: SpanKind::External as i32,
            library: Library::CURL,
            start_ns: 5000,
            duration_ns: 40,
            text: url,
            error: err,
            status: 0,
            span_id: [9; 8],
            ..Default::default()
        });
        let cmd = buf.text(b"get");
        buf.push(RawSpan {
            kind: SpanKind::Cache as i32,
            library: Library::REDIS,
            start_ns: 6000,
            duration_ns: 10,
            text: cmd,
            db: u16::MAX,
            calls: 1,
            ..Default::default()
        });
        buf.exception(6500, b"DomainException", b"coupon expired");
        buf.php_error(2, b"/app/x.php", 12, b"Undefined variable $y");
        let attrs = vec![("tier".to_string(), "gold".to_string())];
        (ids, attrs)
    }

    fn captured<'a>(ids: &'a Ids, attrs: &'a [(String, String)]) -> Captured<'a> {
        Captured {
            app: "shop",
            pid: 42,
            start_unix_ns: 1_700_000_000_000_000_000,
            wall_ns: 51_000_000,
            method: "POST",
            uri: "/photos/17?lang=ko&token=secret",
            status: 503,
            cpu_user_ns: 7,
            cpu_sys_ns: 8,
            peak_memory_bytes: 2 << 20,
            client_ip: "10.0.0.9",
            visitor_id: "v-1",
            queue_ns: 33,
            http_host: "shop.local",
            ids: Some(ids),
            sapi: "fpm-fcgi",
            php_version: "8.2.36",
            extra_redact: "lang",
            truncated_texts: 1,
            dropped_records: 2,
            name: Some("checkout/confirm"),
            attributes: attrs,
            ext_version: "9.9.9",
        }
    }

    #[test]
    fn a_raw_frame_encodes_to_the_bytes_the_extension_would_write() {
        let mut b = Builder::new([1, 2]);
        let mut buf = SpanBuf::new(100);
        let (ids, attrs) = sample(&mut buf, &mut b);
        let c = captured(&ids, &attrs);
        let mut raw = Vec::new();
        write(&mut raw, &c, "r", Some((&buf, 0.37)));
        // What the extension itself would have written.
        b.set_endpoint_params("r");
        let mut cache = StatementCache::default();
        let direct = b
            .frame(
                &c,
                Some(Spans {
                    buf: &mut buf,
                    ns_per_tick: 0.37,
                    cache: &mut cache,
                }),
            )
            .to_vec();
        let mut enc = Encoder::new();
        assert_eq!(enc.encode(&raw).unwrap(), &direct[..]);
        // The record alone, as the agent takes it, with the request's fields.
        let (kind, payload) = frame::decode(&direct).unwrap();
        assert_eq!(kind, frame::Kind::ExtMessage);
        let (body, app, id) = enc
            .encode_record(&raw[frame::HEADER_LEN..], |body, c| {
                (body.to_vec(), c.app.to_string(), c.ids.map(|i| i.record))
            })
            .unwrap();
        assert_eq!((app.as_str(), id), ("shop", Some(ids.record)));
        let msg = <sonde_proto::v1::ExtMessage as prost::Message>::decode(payload).unwrap();
        let Some(sonde_proto::v1::ext_message::Msg::Record(rec)) = msg.msg else {
            panic!("not a record")
        };
        assert_eq!(body, prost::Message::encode_to_vec(&rec));
        // Again, with the agent's caches warm.
        assert_eq!(enc.encode(&raw).unwrap(), &direct[..]);
        // And without spans.
        let c = Captured { name: None, ..c };
        write(&mut raw, &c, "", None);
        b.set_endpoint_params("");
        let direct = b.frame(&c, None).to_vec();
        assert_eq!(enc.encode(&raw).unwrap(), &direct[..]);
    }

    #[test]
    fn every_cut_and_every_corrupted_byte_is_an_error_or_a_record_never_a_panic() {
        let mut b = Builder::new([1, 2]);
        let mut buf = SpanBuf::new(100);
        let (ids, attrs) = sample(&mut buf, &mut b);
        let mut raw = Vec::new();
        write(&mut raw, &captured(&ids, &attrs), "", Some((&buf, 1.0)));
        let mut enc = Encoder::new();
        for n in 0..raw.len() {
            assert!(enc.encode(&raw[..n]).is_err(), "cut at {n}");
        }
        for i in frame::HEADER_LEN..raw.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut bad = raw.clone();
                bad[i] = v;
                // Whatever is accepted encodes into a record the collector
                // decodes (the agent forwards it without checking it again).
                if let Ok(frame) = enc.encode(&bad) {
                    let (_, payload) = frame::decode(frame).unwrap();
                    <sonde_proto::v1::ExtMessage as prost::Message>::decode(payload)
                        .unwrap_or_else(|e| panic!("byte {i} = {v}: {e}"));
                }
            }
        }
        let mut long = raw.clone();
        long.push(0);
        assert_eq!(enc.encode(&long), Err(RawError::Trailing(1)));
    }

    /// The raw frame of a request with ids and nothing else but `buf`.
    fn raw_of(buf: &SpanBuf) -> Vec<u8> {
        let ids = Builder::new([1, 2]).start(None, None);
        let c = Captured {
            ids: Some(&ids),
            ..Default::default()
        };
        let mut raw = Vec::new();
        write(&mut raw, &c, "", Some((buf, 1.0)));
        raw
    }

    #[test]
    fn a_text_outside_the_arena_is_refused() {
        let mut buf = SpanBuf::new(10);
        let t = buf.text(b"SELECT 1");
        buf.push(RawSpan {
            kind: SpanKind::Sql as i32,
            library: Library::PDO,
            text: t,
            db: u16::MAX,
            ..Default::default()
        });
        let mut raw = raw_of(&buf);
        // The span's text length is at 44 bytes into its 80: make it long.
        let at = raw.len() - SPAN_BYTES + 44;
        raw[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
        let mut enc = Encoder::new();
        assert_eq!(enc.encode(&raw), Err(RawError::TextRange(8)));
    }

    #[test]
    fn more_database_entries_than_a_request_tracks_are_refused() {
        let mut buf = SpanBuf::new(10);
        let t = buf.text(b"mysql");
        for key in 0..=crate::spans::DBS {
            buf.dbs.push(Db {
                key,
                driver: t,
                dsn: t,
            });
        }
        let raw = raw_of(&buf);
        let mut enc = Encoder::new();
        assert_eq!(enc.encode(&raw), Err(RawError::Dbs(33)));
    }

    #[test]
    fn an_unknown_library_is_refused() {
        let mut buf = SpanBuf::new(10);
        buf.push(RawSpan {
            kind: SpanKind::Cache as i32,
            library: Library::REDIS,
            db: u16::MAX,
            ..Default::default()
        });
        let mut raw = raw_of(&buf);
        let at = raw.len() - SPAN_BYTES + 1;
        assert_eq!(raw[at], Library::REDIS.index());
        raw[at] = Library::NAMES.len() as u8;
        let mut enc = Encoder::new();
        assert_eq!(enc.encode(&raw), Err(RawError::Library(9)));
    }
}
