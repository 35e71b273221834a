//! PDO: `PDO::exec`, `PDO::query`, `PDOStatement::execute` as SQL spans
//! (statement text, rows, DB instance, error), and the `PDOStatement`
//! fetch methods aggregated into one fetch span per result set.
//!
//! Fetch time is PHP-side time: with buffered results (pdo_mysql's
//! default) the rows arrived during execute, so fetch spans measure turning
//! them into PHP values.

use crate::hooks::{Call, HookSpec};
use crate::module::with_spans;
use crate::spans::{RawSpan, Text};
use crate::{sys, zend};
use sonde_proto::v1::SpanKind;

pub const HOOKS: &[HookSpec] = &[
    HookSpec {
        class: Some(c"pdo"),
        function: c"exec",
        record: exec,
    },
    HookSpec {
        class: Some(c"pdo"),
        function: c"query",
        record: query,
    },
    HookSpec {
        class: Some(c"pdostatement"),
        function: c"execute",
        record: execute,
    },
    HookSpec {
        class: Some(c"pdostatement"),
        function: c"fetch",
        record: fetch_one,
    },
    HookSpec {
        class: Some(c"pdostatement"),
        function: c"fetchobject",
        record: fetch_one,
    },
    HookSpec {
        class: Some(c"pdostatement"),
        function: c"fetchcolumn",
        record: fetch_one,
    },
    HookSpec {
        class: Some(c"pdostatement"),
        function: c"fetchall",
        record: fetch_all,
    },
];

const LIBRARY: &str = "pdo";

/// Records a SQL span; returns its index.
fn sql_span(
    call: &Call,
    dbh: *mut sys::zend_object,
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
        let db = buf.db(dbh as usize, || zend::pdo_dbh(dbh));
        let error = match exception {
            Some((c, m)) => {
                let mut e = [0u8; 700];
                let n = write_error(&mut e, c, m);
                buf.text(&e[..n])
            }
            None if failed => buf.text(b"failed (returned false)"),
            None => Text::default(),
        };
        idx = buf.push(RawSpan {
            kind: SpanKind::Sql as i32,
            library: LIBRARY,
            start_ns: call.start.saturating_duration_since(req_start).as_nanos() as u64,
            duration_ns: call.end.saturating_duration_since(call.start).as_nanos() as u64,
            text,
            db,
            rows,
            calls: 1,
            error,
        });
    });
    idx
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

fn exec(call: &Call) {
    let dbh = zend::this(call);
    let sql = zend::arg_str(call, 1);
    let (rows, failed) = match zend::ret_type(call) {
        t if t == sys::IS_LONG => (zend::ret_long(call), false),
        _ => (0, true),
    };
    sql_span(call, dbh, sql, rows, failed);
}

fn query(call: &Call) {
    let dbh = zend::this(call);
    let sql = zend::arg_str(call, 1);
    let stmt = zend::ret_obj(call);
    let rows = zend::pdo_stmt(stmt).map_or(0, |(_, rows, _)| rows);
    let idx = sql_span(call, dbh, sql, rows, stmt.is_null());
    if !stmt.is_null() {
        with_spans(|buf, _| buf.open_result(stmt as usize, idx));
    }
}

fn execute(call: &Call) {
    let stmt = zend::this(call);
    let Some((sql, rows, dbh)) = zend::pdo_stmt(stmt) else {
        return;
    };
    let failed = zend::ret_type(call) != sys::IS_TRUE;
    let idx = sql_span(call, dbh, Some(sql), rows, failed);
    with_spans(|buf, _| buf.open_result(stmt as usize, idx));
}

fn fetch_one(call: &Call) {
    let rows = match zend::ret_type(call) {
        t if t == sys::IS_FALSE || t == sys::IS_UNDEF => 0,
        _ => 1,
    };
    fetch(call, rows);
}

fn fetch_all(call: &Call) {
    fetch(call, zend::ret_count(call) as i64);
}

fn fetch(call: &Call, rows: i64) {
    let stmt = zend::this(call) as usize;
    with_spans(|buf, req_start| {
        let start = call.start.saturating_duration_since(req_start).as_nanos() as u64;
        let end = call.end.saturating_duration_since(req_start).as_nanos() as u64;
        buf.fetch(stmt, LIBRARY, start, end, rows);
    });
}
