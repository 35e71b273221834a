//! php-memcached (`Memcached` class): each command is a cache span with its
//! name, duration, instance and error.
//!
//! The instance is the object's first server (`memcached://host:port`, from
//! `getServerList()` the first time the object is used in a request; with
//! several servers the key decides which one serves a command, so this
//! names the pool by its first member). A command that returns false is a
//! failure only when the object's result code says so: a miss
//! (`RES_NOTFOUND`), an `add` of an existing key (`RES_NOTSTORED`) or a
//! `cas` conflict (`RES_DATA_EXISTS`) are answers, not errors. The error
//! text is `getResultMessage()`. Both are read with the Memcached class's
//! own methods, which change nothing the app can see.

use crate::hooks::{After, Before, Call, HookSpec};
use crate::module::with_spans;
use crate::{sys, zend};

const LIBRARY: crate::spans::Library = crate::spans::Library::MEMCACHED;

macro_rules! commands {
    ($($name:literal),* $(,)?) => {
        &[$(HookSpec { class: Some(c"memcached"), function: $name, after: After::Now(command), before: Before::Shown(running) }),*]
    };
}

/// The commands timed (lower case, as in the class table).
pub const HOOKS: &[HookSpec] = commands![
    c"get",
    c"getbykey",
    c"getmulti",
    c"getmultibykey",
    c"getdelayed",
    c"getdelayedbykey",
    c"fetch",
    c"fetchall",
    c"set",
    c"setbykey",
    c"setmulti",
    c"setmultibykey",
    c"add",
    c"addbykey",
    c"replace",
    c"replacebykey",
    c"append",
    c"appendbykey",
    c"prepend",
    c"prependbykey",
    c"cas",
    c"casbykey",
    c"touch",
    c"touchbykey",
    c"delete",
    c"deletebykey",
    c"deletemulti",
    c"deletemultibykey",
    c"increment",
    c"incrementbykey",
    c"decrement",
    c"decrementbykey",
    c"flush",
    c"getallkeys",
    c"getstats",
];

/// libmemcached result codes that answer a command rather than fail it:
/// SUCCESS, DATA_EXISTS, NOTSTORED, STORED, NOTFOUND, END, DELETED, VALUE,
/// STAT, ITEM, BUFFERED.
const ANSWERS: [i64; 11] = [0, 12, 14, 15, 16, 21, 22, 23, 24, 25, 32];

fn command(call: &Call) {
    let obj = zend::this(call);
    let name = zend::function_name(call);
    // Buffers zeroed only when needed: most commands succeed.
    let (mut class, mut msg, mut result_msg);
    let err: &[u8] = if zend::has_exception() {
        (class, msg) = ([0u8; 128], [0u8; 512]);
        zend::exception(&mut class, &mut msg).map_or(&[], |(_, m)| m.as_bytes())
    } else if zend::ret_type(call) == sys::IS_FALSE {
        result_msg = [0u8; 256];
        match zend::memcached_result(obj, &mut result_msg) {
            Some((code, _)) if ANSWERS.contains(&code) => &[],
            Some((_, m)) if !m.is_empty() => m,
            Some(_) | None => b"failed (returned false)",
        }
    } else {
        &[]
    };
    let db = instance(obj);
    with_spans(|buf, req_start| {
        buf.cache(
            LIBRARY,
            call.start.saturating_sub(req_start),
            call.end.saturating_sub(call.start),
            name,
            db,
            err,
        );
    });
}

/// The object's instance entry, named from its first server the first time
/// the object is seen in the request.
fn instance(obj: *mut sys::zend_object) -> u16 {
    let key = obj as usize;
    let mut known = None;
    with_spans(|buf, _| known = buf.db_known(key));
    if let Some(db) = known {
        return db;
    }
    let mut host = [0u8; 256];
    let mut dsn = [0u8; 300];
    // Outside `with_spans`: this calls into PHP.
    let dsn = zend::memcached_server(obj, &mut host)
        .map(|(h, port, _)| super::dsn_into(&mut dsn, h, if port > 0 { port } else { 11211 }, b""));
    let mut db = u16::MAX;
    with_spans(|buf, _| db = buf.db(key, || dsn.map(|d| (&b"memcached"[..], d))));
    db
}

fn running(call: &Call) {
    crate::module::running(
        sonde_core::scoreboard::CURRENT_CACHE,
        zend::function_name(call),
    );
}
