//! mysqli (procedural and object style): `query`, `real_query`,
//! `multi_query`, `execute_query` as SQL spans; `prepare` remembers the
//! text, `mysqli_stmt::execute` is the span; result and statement fetches
//! aggregate into one fetch span per result set. The instance comes from
//! mysqlnd's connection (host, port, selected database).

use super::{fetch, prepared_span, sql_span};
use crate::hooks::{Call, HookSpec};
use crate::module::with_spans;
use crate::{sys, zend};

const LIBRARY: &str = "mysqli";

macro_rules! spec {
    ($class:expr, $f:expr, $rec:expr) => {
        HookSpec {
            class: $class,
            function: $f,
            record: $rec,
            before: None,
        }
    };
}

pub const HOOKS: &[HookSpec] = &[
    // Object style: the link is $this, the SQL is argument 1.
    spec!(Some(c"mysqli"), c"query", |c| query(c, Link::This)),
    spec!(Some(c"mysqli"), c"real_query", |c| query(c, Link::This)),
    spec!(Some(c"mysqli"), c"multi_query", |c| query(c, Link::This)),
    spec!(Some(c"mysqli"), c"execute_query", |c| query(c, Link::This)),
    spec!(Some(c"mysqli"), c"prepare", |c| prepare(c, Link::This)),
    spec!(Some(c"mysqli_stmt"), c"execute", |c| execute(
        c,
        zend::this(c)
    )),
    spec!(Some(c"mysqli_stmt"), c"get_result", |c| get_result(
        c,
        zend::this(c)
    )),
    spec!(Some(c"mysqli_stmt"), c"fetch", |c| stmt_fetch(
        c,
        zend::this(c)
    )),
    spec!(Some(c"mysqli_result"), c"fetch_assoc", |c| fetch_one(
        c,
        zend::this(c)
    )),
    spec!(Some(c"mysqli_result"), c"fetch_row", |c| fetch_one(
        c,
        zend::this(c)
    )),
    spec!(Some(c"mysqli_result"), c"fetch_array", |c| fetch_one(
        c,
        zend::this(c)
    )),
    spec!(Some(c"mysqli_result"), c"fetch_object", |c| fetch_one(
        c,
        zend::this(c)
    )),
    spec!(Some(c"mysqli_result"), c"fetch_column", |c| fetch_one(
        c,
        zend::this(c)
    )),
    spec!(Some(c"mysqli_result"), c"fetch_all", |c| fetch_all(
        c,
        zend::this(c)
    )),
    // Procedural style: the link (statement, result) is argument 1.
    spec!(None, c"mysqli_query", |c| query(c, Link::Arg1)),
    spec!(None, c"mysqli_real_query", |c| query(c, Link::Arg1)),
    spec!(None, c"mysqli_multi_query", |c| query(c, Link::Arg1)),
    spec!(None, c"mysqli_execute_query", |c| query(c, Link::Arg1)),
    spec!(None, c"mysqli_prepare", |c| prepare(c, Link::Arg1)),
    spec!(None, c"mysqli_stmt_execute", |c| execute(
        c,
        zend::arg_obj(c, 1)
    )),
    spec!(None, c"mysqli_execute", |c| execute(c, zend::arg_obj(c, 1))),
    spec!(None, c"mysqli_stmt_get_result", |c| get_result(
        c,
        zend::arg_obj(c, 1)
    )),
    spec!(None, c"mysqli_stmt_fetch", |c| stmt_fetch(
        c,
        zend::arg_obj(c, 1)
    )),
    spec!(None, c"mysqli_fetch_assoc", |c| fetch_one(
        c,
        zend::arg_obj(c, 1)
    )),
    spec!(None, c"mysqli_fetch_row", |c| fetch_one(
        c,
        zend::arg_obj(c, 1)
    )),
    spec!(None, c"mysqli_fetch_array", |c| fetch_one(
        c,
        zend::arg_obj(c, 1)
    )),
    spec!(None, c"mysqli_fetch_object", |c| fetch_one(
        c,
        zend::arg_obj(c, 1)
    )),
    spec!(None, c"mysqli_fetch_column", |c| fetch_one(
        c,
        zend::arg_obj(c, 1)
    )),
    spec!(None, c"mysqli_fetch_all", |c| fetch_all(
        c,
        zend::arg_obj(c, 1)
    )),
];

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
    let mut dsn = [0u8; 512];
    let conn = zend::mysqli_conn(obj, false, &mut dsn);
    let result = zend::ret_obj(call);
    let rows = match zend::mysqli_result_rows(result) {
        Some(n) => n,
        None => conn.map_or(0, |(_, affected)| affected),
    };
    let failed = zend::ret_type(call) == sys::IS_FALSE;
    let idx = sql_span(
        call,
        LIBRARY,
        obj as usize,
        conn.map(|(d, _)| (&b"mysql"[..], d)),
        sql,
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
        let mut dsn = [0u8; 512];
        let conn = zend::mysqli_conn(obj, false, &mut dsn);
        sql_span(
            call,
            LIBRARY,
            obj as usize,
            conn.map(|(d, _)| (&b"mysql"[..], d)),
            sql,
            0,
            true,
        );
        return;
    }
    let mut dsn = [0u8; 512];
    let conn = zend::mysqli_conn(obj, false, &mut dsn);
    with_spans(|buf, _| {
        let db = buf.db(obj as usize, || conn.map(|(d, _)| (&b"mysql"[..], d)));
        buf.prepared(stmt as usize, sql.unwrap_or_default(), db);
    });
}

fn execute(call: &Call, stmt: *mut sys::zend_object) {
    let mut dsn = [0u8; 512];
    let rows = zend::mysqli_conn(stmt, true, &mut dsn).map_or(0, |(_, affected)| affected);
    let failed = zend::ret_type(call) == sys::IS_FALSE;
    let idx = prepared_span(call, LIBRARY, stmt as usize, rows, failed);
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
