//! Instrumented libraries: one file each, plus its line in `ALL` (or, for
//! `http_stream`, which wraps a stream wrapper rather than functions, its
//! `install` call in the module). Shared recording helpers live here.

pub mod curl;
pub mod http_stream;
pub mod memcached;
pub mod mysqli;
pub mod pdo;
pub mod pgsql;
pub mod redis;
pub mod soap;

use sonde_proto::v1::SpanKind;

use crate::hooks::{Call, HookSpec};
use crate::later::{self, Event};
use crate::module::with_spans;
use crate::spans::{Library, RawSpan, SpanBuf, Text};
use crate::zend;

/// Every plugin's hooks.
pub const ALL: &[&[HookSpec]] = &[
    pdo::HOOKS,
    mysqli::HOOKS,
    pgsql::HOOKS,
    curl::HOOKS,
    redis::HOOKS,
    redis::COMMANDS,
    memcached::HOOKS,
    soap::HOOKS,
];

/// Where a SQL span's text and connection come from.
pub(crate) enum Statement<'a> {
    /// The text as passed, and the connection `key` with its (driver, DSN).
    Text(Option<&'a [u8]>, usize, Option<(&'a [u8], &'a [u8])>),
    /// A statement prepared earlier in the request, by its key.
    Prepared(usize),
}

/// `Event::flags`: the call returned false (or no statement).
pub(crate) const FAILED: u16 = 1;

/// Records a SQL span for `call`: its statement, `rows`, and an error when
/// the call threw or `failed`; a slow one also gets the PHP file and line.
/// Returns the span's index.
pub(crate) fn sql_span(
    call: &Call,
    library: Library,
    statement: Statement<'_>,
    rows: i64,
    failed: bool,
) -> Option<usize> {
    let mut idx = None;
    with_spans(|buf, req_start| {
        let (text, db) = match statement {
            Statement::Text(text, key, driver_dsn) => (
                buf.text(text.unwrap_or_default()),
                buf.db(key, || driver_dsn),
            ),
            Statement::Prepared(key) => buf
                .prepared_text(key)
                .unwrap_or((Text::default(), u16::MAX)),
        };
        let (start, end) = (call.start, call.end);
        idx = push_sql(
            buf, req_start, true, library, text, db, start, end, rows, failed,
        );
    });
    idx
}

/// Records the SQL span of a call recorded `later` (`now`: at call time).
/// The connection (`ev.db`) is named from `driver_dsn` the first time the
/// request sees it (only ever asked at call time: an event is queued only
/// for a connection already named).
pub(crate) fn sql_event<'a>(
    ev: &Event,
    buf: &mut SpanBuf,
    req_start: u64,
    now: bool,
    library: Library,
    driver_dsn: impl FnOnce() -> Option<(&'a [u8], &'a [u8])>,
) -> Option<usize> {
    let text = buf.text(ev.text());
    let db = buf.db(ev.db, driver_dsn);
    if db != u16::MAX {
        later::db_noted(ev.db);
    }
    let failed = ev.flags & FAILED != 0;
    push_sql(
        buf, req_start, now, library, text, db, ev.start, ev.end, ev.rows, failed,
    )
}

/// The SQL span itself; at call time (`now`) with the exception it threw
/// and, when slow, the PHP file and line.
#[allow(clippy::too_many_arguments)]
fn push_sql(
    buf: &mut SpanBuf,
    req_start: u64,
    now: bool,
    library: Library,
    text: Text,
    db: u16,
    start: u64,
    end: u64,
    rows: i64,
    failed: bool,
) -> Option<usize> {
    let threw = now && zend::has_exception();
    let error = error_text(buf, threw, failed);
    let duration = end.saturating_sub(start);
    let idx = buf.push(RawSpan {
        kind: SpanKind::Sql as i32,
        library,
        start_ns: start.saturating_sub(req_start),
        duration_ns: duration,
        text,
        db,
        rows: rows.max(0),
        calls: 1,
        error,
        ..Default::default()
    });
    if let (true, true, Some(i)) = (now, duration >= buf.slow_ticks, idx) {
        let (file, line) = zend::executed_location();
        buf.set_location(i, file, line);
    }
    idx
}

/// `host=…;port=…;dbname=…` written into `buf` (cut to fit), the form the
/// span buffer names instances from (`sonde_core::dsn::pdo_instance`).
pub(crate) fn dsn_into<'b>(buf: &'b mut [u8], host: &[u8], port: u64, db: &[u8]) -> &'b [u8] {
    use std::io::Write;
    let mut w = std::io::Cursor::new(&mut *buf);
    let _ = w.write_all(b"host=");
    let _ = w.write_all(host);
    let _ = write!(w, ";port={port}");
    if !db.is_empty() {
        let _ = w.write_all(b";dbname=");
        let _ = w.write_all(db);
    }
    let n = w.position() as usize;
    &buf[..n]
}

/// The error of a call: "Class: message" of the exception it threw, or
/// that it returned false, or none.
fn error_text(buf: &mut crate::spans::SpanBuf, threw: bool, failed: bool) -> Text {
    if threw {
        let mut class = [0u8; 128];
        let mut msg = [0u8; 512];
        if let Some((c, m)) = zend::exception(&mut class, &mut msg) {
            let mut e = [0u8; 700];
            let n = write_error(&mut e, c, m);
            return buf.text(&e[..n]);
        }
    }
    if failed {
        buf.text(b"failed (returned false)")
    } else {
        Text::default()
    }
}

/// "Class: message" into `out`, without allocating.
fn write_error(out: &mut [u8], class: &str, msg: &str) -> usize {
    let mut n = 0;
    for part in [class.as_bytes(), b": ", msg.as_bytes()] {
        let k = part.len().min(out.len() - n);
        out[n..n + k].copy_from_slice(&part[..k]);
        n += k;
    }
    n
}

/// Records one fetch call on result set `key` returning `rows` rows.
pub(crate) fn fetch(call: &Call, library: Library, key: usize, rows: i64) {
    with_spans(|buf, req_start| {
        let start = call.start.saturating_sub(req_start);
        let end = call.end.saturating_sub(req_start);
        buf.fetch(key, library, start, end, rows);
    });
}
