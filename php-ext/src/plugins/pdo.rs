//! PDO: `PDO::exec`, `PDO::query`, `PDOStatement::execute` as SQL spans
//! (statement text, rows, DB instance, error), and the `PDOStatement`
//! fetch methods aggregated into one fetch span per result set. Each
//! connection opened (`new PDO`, not SQLite) counts in the worker's open
//! database connections.
//!
//! Fetch time is PHP-side time: with buffered results (pdo_mysql's
//! default) the rows arrived during execute, so fetch spans measure turning
//! them into PHP values.

use super::{sql_event, FAILED};
use crate::connections::Kind;
use crate::hooks::{After, Before, Call, HookSpec};
use crate::later::{self, Event, Keep};
use crate::spans::SpanBuf;
use crate::{sys, zend};

pub const HOOKS: &[HookSpec] = &[
    HookSpec {
        class: Some(c"pdo"),
        function: c"__construct",
        after: After::Now(connected),
        before: Before::No,
    },
    HookSpec {
        class: Some(c"pdo"),
        function: c"exec",
        after: After::Later(exec),
        before: Before::Shown(running_arg1),
    },
    HookSpec {
        class: Some(c"pdo"),
        function: c"query",
        after: After::Later(query),
        before: Before::Shown(running_arg1),
    },
    HookSpec {
        class: Some(c"pdostatement"),
        function: c"execute",
        after: After::Later(execute),
        before: Before::Shown(running_stmt),
    },
    HookSpec {
        class: Some(c"pdostatement"),
        function: c"fetch",
        after: After::Later(fetch_one),
        before: Before::No,
    },
    HookSpec {
        class: Some(c"pdostatement"),
        function: c"fetchobject",
        after: After::Later(fetch_one),
        before: Before::No,
    },
    HookSpec {
        class: Some(c"pdostatement"),
        function: c"fetchcolumn",
        after: After::Later(fetch_one),
        before: Before::No,
    },
    HookSpec {
        class: Some(c"pdostatement"),
        function: c"fetchall",
        after: After::Later(fetch_all),
        before: Before::No,
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

/// Statements are recorded later (`later`): the events carry the text,
/// rows, connection and statement object; the connection is named at once
/// the first time the request uses it.
fn exec(call: &Call, ev: &mut Event) -> Keep {
    let dbh = zend::this(call);
    if let Some(sql) = zend::arg_str(call, 1) {
        ev.set_text(sql);
    }
    match zend::ret_type(call) {
        t if t == sys::IS_LONG => ev.rows = zend::ret_long(call),
        _ => ev.flags = FAILED,
    }
    on(ev, dbh)
}

fn query(call: &Call, ev: &mut Event) -> Keep {
    let dbh = zend::this(call);
    if let Some(sql) = zend::arg_str(call, 1) {
        ev.set_text(sql);
    }
    let stmt = zend::ret_obj(call);
    ev.rows = zend::pdo_stmt(stmt).map_or(0, |(_, rows, _)| rows);
    if stmt.is_null() {
        ev.flags = FAILED;
    }
    ev.key = stmt as usize;
    on(ev, dbh)
}

fn execute(call: &Call, ev: &mut Event) -> Keep {
    let stmt = zend::this(call);
    let Some((sql, rows, dbh)) = zend::pdo_stmt(stmt) else {
        return Keep::No;
    };
    ev.set_text(sql);
    ev.rows = rows;
    if zend::ret_type(call) != sys::IS_TRUE {
        ev.flags = FAILED;
    }
    ev.key = stmt as usize;
    on(ev, dbh)
}

/// The statement ran on connection `dbh`: later if the request knows it.
fn on(ev: &mut Event, dbh: *mut sys::zend_object) -> Keep {
    ev.db = dbh as usize;
    ev.replay = statement;
    if later::db_known(ev.db) {
        Keep::Later
    } else {
        Keep::Now
    }
}

/// A SQL span; a statement object (`key`) opens a result set its fetches
/// are aggregated into.
fn statement(ev: &Event, buf: &mut SpanBuf, req_start: u64, now: bool) {
    let dbh = ev.db as *mut sys::zend_object;
    let idx = sql_event(ev, buf, req_start, now, LIBRARY, || {
        if now {
            zend::pdo_dbh(dbh)
        } else {
            None
        }
    });
    if ev.key != 0 {
        buf.open_result(ev.key, idx);
    }
}

fn fetch_one(call: &Call, ev: &mut Event) -> Keep {
    ev.rows = match zend::ret_type(call) {
        t if t == sys::IS_FALSE || t == sys::IS_UNDEF => 0,
        _ => 1,
    };
    fetched(call, ev)
}

fn fetch_all(call: &Call, ev: &mut Event) -> Keep {
    ev.rows = zend::ret_count(call) as i64;
    fetched(call, ev)
}

/// Fetches on one result set in a row become one event (`Keep::Merge`).
fn fetched(call: &Call, ev: &mut Event) -> Keep {
    ev.key = zend::this(call) as usize;
    ev.replay = |ev, buf, req_start, _| {
        let start = ev.start.saturating_sub(req_start);
        let duration = ev.end.saturating_sub(ev.start);
        let calls = u32::from(ev.calls);
        buf.fetch_calls(ev.key, LIBRARY, start, duration, calls, ev.rows);
    };
    Keep::Merge
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
