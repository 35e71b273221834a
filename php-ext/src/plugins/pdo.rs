//! PDO: `PDO::exec`, `PDO::query`, `PDOStatement::execute` as SQL spans
//! (statement text, rows, DB instance, error), and the `PDOStatement`
//! fetch methods aggregated into one fetch span per result set. Each
//! connection opened (`new PDO`, not SQLite) counts in the worker's open
//! database connections.
//!
//! Fetch time is PHP-side time: with buffered results (pdo_mysql's
//! default) the rows arrived during execute, so fetch spans measure turning
//! them into PHP values.

use super::{sql_span, Statement};
use crate::connections::Kind;
use crate::hooks::{Call, HookSpec};
use crate::module::with_spans;
use crate::{sys, zend};

pub const HOOKS: &[HookSpec] = &[
    HookSpec {
        class: Some(c"pdo"),
        function: c"__construct",
        record: connected,
        before: None,
    },
    HookSpec {
        class: Some(c"pdo"),
        function: c"exec",
        record: exec,
        before: Some(running_arg1),
    },
    HookSpec {
        class: Some(c"pdo"),
        function: c"query",
        record: query,
        before: Some(running_arg1),
    },
    HookSpec {
        class: Some(c"pdostatement"),
        function: c"execute",
        record: execute,
        before: Some(running_stmt),
    },
    HookSpec {
        class: Some(c"pdostatement"),
        function: c"fetch",
        record: fetch_one,
        before: None,
    },
    HookSpec {
        class: Some(c"pdostatement"),
        function: c"fetchobject",
        record: fetch_one,
        before: None,
    },
    HookSpec {
        class: Some(c"pdostatement"),
        function: c"fetchcolumn",
        record: fetch_one,
        before: None,
    },
    HookSpec {
        class: Some(c"pdostatement"),
        function: c"fetchall",
        record: fetch_all,
        before: None,
    },
];

const LIBRARY: crate::spans::Library = crate::spans::Library::PDO;

/// `new PDO(...)`: a connection opened (counted for the scoreboard; a
/// persistent one through the process's persistent list).
fn connected(call: &Call) {
    let dbh = zend::this(call);
    if zend::has_exception() {
        return; // the connection failed
    }
    if let Some(persistent) = zend::pdo_connection(dbh) {
        crate::module::db_opened(dbh, Kind::Pdo, persistent);
    }
}

fn exec(call: &Call) {
    let dbh = zend::this(call);
    let sql = zend::arg_str(call, 1);
    let (rows, failed) = match zend::ret_type(call) {
        t if t == sys::IS_LONG => (zend::ret_long(call), false),
        _ => (0, true),
    };
    sql_span(call, LIBRARY, Statement::Pdo(sql, dbh), rows, failed);
}

fn query(call: &Call) {
    let dbh = zend::this(call);
    let sql = zend::arg_str(call, 1);
    let stmt = zend::ret_obj(call);
    let rows = zend::pdo_stmt(stmt).map_or(0, |(_, rows, _)| rows);
    let idx = sql_span(
        call,
        LIBRARY,
        Statement::Pdo(sql, dbh),
        rows,
        stmt.is_null(),
    );
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
    let idx = sql_span(call, LIBRARY, Statement::Pdo(Some(sql), dbh), rows, failed);
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
    super::fetch(call, LIBRARY, zend::this(call) as usize, rows);
}

fn running_arg1(call: &Call) {
    if !crate::module::board_active() {
        return;
    }
    if let Some(sql) = zend::arg_str(call, 1) {
        crate::module::running(sonde_core::scoreboard::CURRENT_SQL, sql);
    }
}

fn running_stmt(call: &Call) {
    if !crate::module::board_active() {
        return;
    }
    if let Some((sql, _, _)) = zend::pdo_stmt(zend::this(call)) {
        crate::module::running(sonde_core::scoreboard::CURRENT_SQL, sql);
    }
}
