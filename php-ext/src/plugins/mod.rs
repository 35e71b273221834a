//! Instrumented libraries: one file each, plus its line in `ALL`. Shared
//! recording helpers live here.

pub mod curl;
pub mod http_stream;
pub mod mysqli;
pub mod pdo;
pub mod pgsql;
pub mod redis;

use sonde_proto::v1::SpanKind;

use crate::hooks::{Call, HookSpec};
use crate::module::with_spans;
use crate::spans::{RawSpan, Text};
use crate::zend;

/// Every plugin's hooks.
pub const ALL: &[&[HookSpec]] = &[
    pdo::HOOKS,
    mysqli::HOOKS,
    pgsql::HOOKS,
    curl::HOOKS,
    http_stream::HOOKS,
    redis::HOOKS,
    redis::COMMANDS,
];

/// Records a SQL span for `call`: statement `text`, connection `db_key`
/// with its (driver, DSN), `rows`, and an error when the call threw or
/// `failed`. Returns the span's index.
pub(crate) fn sql_span(
    call: &Call,
    library: &'static str,
    db_key: usize,
    driver_dsn: Option<(&[u8], &[u8])>,
    text: Option<&[u8]>,
    rows: i64,
    failed: bool,
) -> Option<usize> {
    let mut class = [0u8; 128];
    let mut msg = [0u8; 512];
    let exception = zend::exception(&mut class, &mut msg);
    let mut idx = None;
    with_spans(|buf, req_start| {
        let text = buf.text(text.unwrap_or_default());
        let db = buf.db(db_key, || driver_dsn);
        let error = error_text(buf, exception, failed);
        idx = buf.push(RawSpan {
            kind: SpanKind::Sql as i32,
            library,
            start_ns: call.start.saturating_sub(req_start),
            duration_ns: call.end.saturating_sub(call.start),
            text,
            db,
            rows: rows.max(0),
            calls: 1,
            error,
            ..Default::default()
        });
    });
    slow_location(call, idx);
    idx
}

/// For a statement slower than the threshold, where in the app it ran.
fn slow_location(call: &Call, idx: Option<usize>) {
    let Some(idx) = idx else {
        return;
    };
    let (file, line) = zend::executed_location();
    with_spans(|buf, _| {
        if call.end.saturating_sub(call.start) >= buf.slow_ticks {
            buf.set_location(idx, file, line);
        }
    });
}

/// Like `sql_span`, for a statement whose text and DB were recorded at
/// prepare time.
pub(crate) fn prepared_span(
    call: &Call,
    library: &'static str,
    key: usize,
    rows: i64,
    failed: bool,
) -> Option<usize> {
    let mut class = [0u8; 128];
    let mut msg = [0u8; 512];
    let exception = zend::exception(&mut class, &mut msg);
    let mut idx = None;
    with_spans(|buf, req_start| {
        let (text, db) = buf
            .prepared_text(key)
            .unwrap_or((Text::default(), u16::MAX));
        let error = error_text(buf, exception, failed);
        idx = buf.push(RawSpan {
            kind: SpanKind::Sql as i32,
            library,
            start_ns: call.start.saturating_sub(req_start),
            duration_ns: call.end.saturating_sub(call.start),
            text,
            db,
            rows: rows.max(0),
            calls: 1,
            error,
            ..Default::default()
        });
    });
    slow_location(call, idx);
    idx
}

fn error_text(
    buf: &mut crate::spans::SpanBuf,
    exception: Option<(&str, &str)>,
    failed: bool,
) -> Text {
    match exception {
        Some((c, m)) => {
            let mut e = [0u8; 700];
            let n = write_error(&mut e, c, m);
            buf.text(&e[..n])
        }
        None if failed => buf.text(b"failed (returned false)"),
        None => Text::default(),
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
pub(crate) fn fetch(call: &Call, library: &'static str, key: usize, rows: i64) {
    with_spans(|buf, req_start| {
        let start = call.start.saturating_sub(req_start);
        let end = call.end.saturating_sub(req_start);
        buf.fetch(key, library, start, end, rows);
    });
}
