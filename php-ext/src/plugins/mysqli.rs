//! mysqli (procedural and object style): `query`, `real_query`,
//! `multi_query`, `execute_query` as SQL spans; `prepare` remembers the
//! text, `mysqli_stmt::execute` is the span; result and statement fetches
//! aggregate into one fetch span per result set. The instance comes from
//! mysqlnd's connection (host, port, selected database). Links that
//! connect count in the worker's open database connections.

use super::{dsn_into, fetch, sql_span, Statement};
use crate::connections::Kind;
use crate::hooks::{After, Before, Call, HookSpec};
use crate::module::with_spans;
use crate::{sys, zend};

const LIBRARY: crate::spans::Library = crate::spans::Library::MYSQLI;

macro_rules! spec {
    ($class:expr, $f:expr, $rec:expr) => {
        spec!($class, $f, $rec, Before::No)
    };
    ($class:expr, $f:expr, $rec:expr, $before:expr) => {
        HookSpec {
            class: $class,
            function: $f,
            after: After::Now($rec),
            before: $before,
        }
    };
}

const M: Option<&std::ffi::CStr> = Some(c"mysqli");
const STMT: Option<&std::ffi::CStr> = Some(c"mysqli_stmt");
const RES: Option<&std::ffi::CStr> = Some(c"mysqli_result");

pub const HOOKS: &[HookSpec] = &[
    // Connections (counted for the scoreboard) and closes.
    spec!(M, c"__construct", |c| connected(zend::this(c))),
    spec!(M, c"connect", |c| connected(zend::this(c))),
    spec!(M, c"real_connect", |c| connected(zend::this(c))),
    spec!(None, c"mysqli_connect", |c| connected(zend::ret_obj(c))),
    spec!(None, c"mysqli_real_connect", |c| connected(zend::arg_obj(
        c, 1
    ))),
    spec!(M, c"close", closed),
    spec!(None, c"mysqli_close", closed),
    // Object style: the link (statement, result) is $this, the SQL argument 1.
    spec!(M, c"query", query_this, Before::Shown(running_this)),
    spec!(M, c"real_query", query_this, Before::Shown(running_this)),
    spec!(M, c"multi_query", query_this, Before::Shown(running_this)),
    spec!(M, c"execute_query", query_this, Before::Shown(running_this)),
    spec!(M, c"prepare", |c| prepare(c, Link::This)),
    spec!(
        STMT,
        c"execute",
        execute_this,
        Before::Shown(running_stmt_this)
    ),
    spec!(STMT, c"get_result", |c| get_result(c, zend::this(c))),
    spec!(STMT, c"fetch", |c| stmt_fetch(c, zend::this(c))),
    spec!(RES, c"fetch_assoc", fetch_one_this),
    spec!(RES, c"fetch_row", fetch_one_this),
    spec!(RES, c"fetch_array", fetch_one_this),
    spec!(RES, c"fetch_object", fetch_one_this),
    spec!(RES, c"fetch_column", fetch_one_this),
    spec!(RES, c"fetch_all", |c| fetch_all(c, zend::this(c))),
    // Procedural style: the link (statement, result) is argument 1.
    spec!(None, c"mysqli_query", query_arg, Before::Shown(running_arg)),
    spec!(
        None,
        c"mysqli_real_query",
        query_arg,
        Before::Shown(running_arg)
    ),
    spec!(
        None,
        c"mysqli_multi_query",
        query_arg,
        Before::Shown(running_arg)
    ),
    spec!(
        None,
        c"mysqli_execute_query",
        query_arg,
        Before::Shown(running_arg)
    ),
    spec!(None, c"mysqli_prepare", |c| prepare(c, Link::Arg1)),
    spec!(
        None,
        c"mysqli_stmt_execute",
        execute_arg,
        Before::Shown(running_stmt_arg)
    ),
    spec!(
        None,
        c"mysqli_execute",
        execute_arg,
        Before::Shown(running_stmt_arg)
    ),
    spec!(None, c"mysqli_stmt_get_result", |c| get_result(
        c,
        zend::arg_obj(c, 1)
    )),
    spec!(None, c"mysqli_stmt_fetch", |c| stmt_fetch(
        c,
        zend::arg_obj(c, 1)
    )),
    spec!(None, c"mysqli_fetch_assoc", fetch_one_arg),
    spec!(None, c"mysqli_fetch_row", fetch_one_arg),
    spec!(None, c"mysqli_fetch_array", fetch_one_arg),
    spec!(None, c"mysqli_fetch_object", fetch_one_arg),
    spec!(None, c"mysqli_fetch_column", fetch_one_arg),
    spec!(None, c"mysqli_fetch_all", |c| fetch_all(
        c,
        zend::arg_obj(c, 1)
    )),
];

/// A link that may have connected: counted while it stays open (a
/// persistent `p:` link too: in use, it is not in the persistent list's
/// idle links).
fn connected(link: *mut sys::zend_object) {
    if zend::mysqli_connected(link) {
        crate::module::db_opened(link, Kind::Mysqli, false);
    }
}

/// The closed link no longer counts (its object shows it closed).
fn closed(_: &Call) {
    crate::module::db_changed();
}

fn query_this(c: &Call) {
    query(c, Link::This)
}
fn query_arg(c: &Call) {
    query(c, Link::Arg1)
}
fn running_this(c: &Call) {
    running(c, Link::This)
}
fn running_arg(c: &Call) {
    running(c, Link::Arg1)
}
fn execute_this(c: &Call) {
    execute(c, zend::this(c))
}
fn execute_arg(c: &Call) {
    execute(c, zend::arg_obj(c, 1))
}
fn running_stmt_this(c: &Call) {
    running_stmt(zend::this(c))
}
fn running_stmt_arg(c: &Call) {
    running_stmt(zend::arg_obj(c, 1))
}
fn fetch_one_this(c: &Call) {
    fetch_one(c, zend::this(c))
}
fn fetch_one_arg(c: &Call) {
    fetch_one(c, zend::arg_obj(c, 1))
}

#[derive(Clone, Copy)]
enum Link {
    This,
    Arg1,
}

fn link_and_sql(call: &Call, link: Link) -> (*mut sys::zend_object, Option<&[u8]>) {
    match link {
        Link::This => (zend::this(call), zend::arg_str(call, 1)),
        Link::Arg1 => (zend::arg_obj(call, 1), zend::arg_str(call, 2)),
    }
}

fn query(call: &Call, link: Link) {
    let (obj, sql) = link_and_sql(call, link);
    let conn = zend::mysqli_conn(obj, false);
    let result = zend::ret_obj(call);
    let rows = match zend::mysqli_result_rows(result) {
        Some(n) => n,
        None => conn.map_or(0, |c| c.affected),
    };
    let failed = zend::ret_type(call) == sys::IS_FALSE;
    let mut buf = [0u8; 512];
    let dsn = instance(conn, &mut buf);
    let idx = sql_span(
        call,
        LIBRARY,
        Statement::Text(sql, obj as usize, dsn),
        rows,
        failed,
    );
    if !result.is_null() {
        with_spans(|buf, _| buf.open_result(result as usize, idx));
    }
}

fn prepare(call: &Call, link: Link) {
    let (obj, sql) = link_and_sql(call, link);
    let stmt = zend::ret_obj(call);
    if stmt.is_null() {
        // A failed prepare is a failed statement.
        let mut buf = [0u8; 512];
        let dsn = instance(zend::mysqli_conn(obj, false), &mut buf);
        sql_span(
            call,
            LIBRARY,
            Statement::Text(sql, obj as usize, dsn),
            0,
            true,
        );
        return;
    }
    let mut dsn = [0u8; 512];
    let conn = instance(zend::mysqli_conn(obj, false), &mut dsn);
    with_spans(|buf, _| {
        let db = buf.db(obj as usize, || conn);
        buf.prepared(stmt as usize, sql.unwrap_or_default(), db);
    });
}

fn execute(call: &Call, stmt: *mut sys::zend_object) {
    let rows = zend::mysqli_conn(stmt, true).map_or(0, |c| c.affected);
    let failed = zend::ret_type(call) == sys::IS_FALSE;
    let idx = sql_span(
        call,
        LIBRARY,
        Statement::Prepared(stmt as usize),
        rows,
        failed,
    );
    with_spans(|buf, _| buf.open_result(stmt as usize, idx));
}

fn get_result(call: &Call, stmt: *mut sys::zend_object) {
    let result = zend::ret_obj(call);
    if !result.is_null() {
        with_spans(|buf, _| buf.alias_result(stmt as usize, result as usize));
    }
}

fn stmt_fetch(call: &Call, stmt: *mut sys::zend_object) {
    let rows = (zend::ret_type(call) == sys::IS_TRUE) as i64;
    fetch(call, LIBRARY, stmt as usize, rows);
}

fn fetch_one(call: &Call, result: *mut sys::zend_object) {
    let t = zend::ret_type(call);
    let rows = (t != sys::IS_NULL && t != sys::IS_FALSE && t != sys::IS_UNDEF) as i64;
    fetch(call, LIBRARY, result as usize, rows);
}

fn fetch_all(call: &Call, result: *mut sys::zend_object) {
    fetch(call, LIBRARY, result as usize, zend::ret_count(call) as i64);
}

/// The (driver, DSN) a span names its instance from.
fn instance<'b>(
    conn: Option<zend::MysqliConn<'_>>,
    buf: &'b mut [u8; 512],
) -> Option<(&'static [u8], &'b [u8])> {
    let c = conn?;
    Some((
        &b"mysql"[..],
        dsn_into(buf, c.host, u64::from(c.port), c.db),
    ))
}

fn running(call: &Call, link: Link) {
    if let (_, Some(sql)) = link_and_sql(call, link) {
        crate::module::running(sonde_core::scoreboard::CURRENT_SQL, sql);
    }
}

fn running_stmt(stmt: *mut sys::zend_object) {
    crate::module::running_prepared(sonde_core::scoreboard::CURRENT_SQL, stmt as usize);
}
