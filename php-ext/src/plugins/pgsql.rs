//! pgsql: `pg_query`, `pg_query_params`, `pg_execute` as SQL spans
//! (`pg_prepare` remembers the text by statement name), and the
//! `pg_fetch_*` functions aggregated per result. The instance comes from
//! the connection string seen by `pg_connect`/`pg_pconnect` in the same
//! request; a connection opened in an earlier request (persistent) shows
//! no instance. Row counts come from the fetch spans (the result internals
//! are not in PHP's installed headers). Connections count in the worker's
//! open database connections until `pg_close` or their object is freed.

use super::{fetch, sql_span, Statement};
use crate::connections::Kind;
use crate::hooks::{After, Before, Call, HookSpec};
use crate::module::with_spans;
use crate::{sys, zend};

const LIBRARY: crate::spans::Library = crate::spans::Library::PGSQL;
/// The key of "the last connection opened", used by calls without one.
const DEFAULT_CONN: usize = usize::MAX;

macro_rules! spec {
    ($f:expr, $rec:expr) => {
        spec!($f, $rec, Before::No)
    };
    ($f:expr, $rec:expr, $before:expr) => {
        HookSpec {
            class: None,
            function: $f,
            after: After::Now($rec),
            before: $before,
        }
    };
}

pub const HOOKS: &[HookSpec] = &[
    spec!(c"pg_connect", |c| connect(c, false)),
    spec!(c"pg_pconnect", |c| connect(c, true)),
    spec!(c"pg_close", close),
    spec!(
        c"pg_query",
        |c| query(c, 2),
        Before::Shown(|c| running(c, 2))
    ),
    spec!(
        c"pg_exec",
        |c| query(c, 2),
        Before::Shown(|c| running(c, 2))
    ),
    spec!(
        c"pg_query_params",
        |c| query(c, 3),
        Before::Shown(|c| running(c, 3))
    ),
    spec!(c"pg_prepare", prepare),
    spec!(c"pg_execute", execute, Before::Shown(running_prepared)),
    spec!(c"pg_fetch_assoc", fetch_one),
    spec!(c"pg_fetch_row", fetch_one),
    spec!(c"pg_fetch_array", fetch_one),
    spec!(c"pg_fetch_object", fetch_one),
    spec!(c"pg_fetch_result", fetch_one),
    spec!(c"pg_fetch_all", fetch_all),
];

fn connect(call: &Call, persistent: bool) {
    let conn = zend::ret_obj(call);
    if conn.is_null() {
        return;
    }
    crate::module::db_opened(conn, Kind::Pgsql, persistent);
    let Some(connstr) = zend::arg_str(call, 1) else {
        return;
    };
    with_spans(|buf, _| {
        buf.db(conn as usize, || Some((&b"pgsql"[..], connstr)));
        buf.db(DEFAULT_CONN, || Some((&b"pgsql"[..], connstr)));
    });
}

/// `pg_close($link)`, or of the default (last opened) link.
fn close(call: &Call) {
    let link = zend::arg_obj(call, 1);
    crate::module::db_closed((!link.is_null()).then_some(link), Kind::Pgsql);
}

/// (connection key, argument offset): with `full_args` arguments the first
/// is the connection; with one fewer it was left out (default connection).
fn conn_of(call: &Call, full_args: u32) -> (usize, u32) {
    if zend::num_args(call) >= full_args {
        (zend::arg_obj(call, 1) as usize, 1)
    } else {
        (DEFAULT_CONN, 0)
    }
}

fn query(call: &Call, full_args: u32) {
    let (conn, shift) = conn_of(call, full_args);
    let sql = zend::arg_str(call, 1 + shift);
    let result = zend::ret_obj(call);
    let idx = sql_span(
        call,
        LIBRARY,
        Statement::Text(sql, conn, None),
        0,
        result.is_null(),
    );
    if !result.is_null() {
        with_spans(|buf, _| buf.open_result(result as usize, idx));
    }
}

/// A prepared statement is named per connection.
fn statement_key(conn: usize, name: &[u8]) -> usize {
    (crate::spans::text_hash(name) as usize) ^ conn.rotate_left(17) | 1
}

fn prepare(call: &Call) {
    let (conn, shift) = conn_of(call, 3);
    let (Some(name), Some(sql)) = (
        zend::arg_str(call, 1 + shift),
        zend::arg_str(call, 2 + shift),
    ) else {
        return;
    };
    let key = statement_key(conn, name);
    if zend::ret_type(call) == sys::IS_FALSE {
        sql_span(
            call,
            LIBRARY,
            Statement::Text(Some(sql), conn, None),
            0,
            true,
        );
        return;
    }
    with_spans(|buf, _| {
        let db = buf.db(conn, || None);
        buf.prepared(key, sql, db);
    });
}

fn execute(call: &Call) {
    let (conn, shift) = conn_of(call, 3);
    let Some(name) = zend::arg_str(call, 1 + shift) else {
        return;
    };
    let result = zend::ret_obj(call);
    let key = statement_key(conn, name);
    let idx = sql_span(call, LIBRARY, Statement::Prepared(key), 0, result.is_null());
    if !result.is_null() {
        with_spans(|buf, _| buf.open_result(result as usize, idx));
    }
}

fn fetch_one(call: &Call) {
    let rows = (zend::ret_type(call) != sys::IS_FALSE) as i64;
    fetch(call, LIBRARY, zend::arg_obj(call, 1) as usize, rows);
}

fn fetch_all(call: &Call) {
    fetch(
        call,
        LIBRARY,
        zend::arg_obj(call, 1) as usize,
        zend::ret_count(call) as i64,
    );
}

fn running(call: &Call, full_args: u32) {
    let (_, shift) = conn_of(call, full_args);
    if let Some(sql) = zend::arg_str(call, 1 + shift) {
        crate::module::running(sonde_core::scoreboard::CURRENT_SQL, sql);
    }
}

fn running_prepared(call: &Call) {
    let (conn, shift) = conn_of(call, 3);
    if let Some(name) = zend::arg_str(call, 1 + shift) {
        crate::module::running_prepared(
            sonde_core::scoreboard::CURRENT_SQL,
            statement_key(conn, name),
        );
    }
}
