//! phpredis (`Redis` class): each command is a cache span with its name,
//! duration, instance and error. The instance comes from `connect` /
//! `pconnect` in the same request (a connection reused from an earlier
//! request shows none).

use crate::hooks::{After, Before, Call, HookSpec};
use crate::module::with_spans;
use crate::zend;

const LIBRARY: crate::spans::Library = crate::spans::Library::REDIS;

macro_rules! commands {
    ($($name:literal),* $(,)?) => {
        &[$(HookSpec { class: Some(c"redis"), function: $name, after: After::Now(command), before: Before::Shown(running) }),*]
    };
}

/// Connections, then the commands timed (lower case, as in the class table).
pub const HOOKS: &[HookSpec] = &[
    HookSpec {
        class: Some(c"redis"),
        function: c"connect",
        after: After::Now(connect),
        before: Before::No,
    },
    HookSpec {
        class: Some(c"redis"),
        function: c"pconnect",
        after: After::Now(connect),
        before: Before::No,
    },
    HookSpec {
        class: Some(c"redis"),
        function: c"open",
        after: After::Now(connect),
        before: Before::No,
    },
    HookSpec {
        class: Some(c"redis"),
        function: c"popen",
        after: After::Now(connect),
        before: Before::No,
    },
];

/// The commands timed.
pub const COMMANDS: &[HookSpec] = commands![
    c"get",
    c"set",
    c"setex",
    c"psetex",
    c"setnx",
    c"del",
    c"unlink",
    c"exists",
    c"expire",
    c"pexpire",
    c"expireat",
    c"ttl",
    c"pttl",
    c"incr",
    c"incrby",
    c"incrbyfloat",
    c"decr",
    c"decrby",
    c"mget",
    c"mset",
    c"msetnx",
    c"getset",
    c"append",
    c"strlen",
    c"hget",
    c"hset",
    c"hsetnx",
    c"hmget",
    c"hmset",
    c"hgetall",
    c"hdel",
    c"hexists",
    c"hincrby",
    c"hkeys",
    c"hvals",
    c"hlen",
    c"lpush",
    c"rpush",
    c"lpop",
    c"rpop",
    c"lrange",
    c"llen",
    c"lrem",
    c"ltrim",
    c"lindex",
    c"lset",
    c"sadd",
    c"srem",
    c"smembers",
    c"sismember",
    c"scard",
    c"spop",
    c"zadd",
    c"zrem",
    c"zrange",
    c"zrevrange",
    c"zrangebyscore",
    c"zrevrangebyscore",
    c"zscore",
    c"zincrby",
    c"zcard",
    c"zrank",
    c"zrevrank",
    c"eval",
    c"evalsha",
    c"publish",
    c"keys",
    c"scan",
    c"ping",
    c"exec",
    c"rawcommand",
    c"select",
    c"flushdb",
    c"info",
];

fn connect(call: &Call) {
    let obj = zend::this(call) as usize;
    let Some(host) = zend::arg_str(call, 1) else {
        return;
    };
    let port = match zend::arg_long(call, 2) {
        p if p > 0 => p,
        _ => 6379,
    };
    let mut buf = [0u8; 300];
    let dsn = super::dsn_into(&mut buf, host, port as u64, b"");
    with_spans(|buf, _| {
        // A reconnect of the same object to another server: forget the old.
        buf.db(obj, || Some((&b"redis"[..], dsn)));
    });
}

fn command(call: &Call) {
    let obj = zend::this(call) as usize;
    let name = zend::function_name(call);
    // Zeroed only when needed: most commands do not throw.
    let (mut class, mut msg);
    let exception = if zend::has_exception() {
        class = [0u8; 128];
        msg = [0u8; 512];
        zend::exception(&mut class, &mut msg)
    } else {
        None
    };
    with_spans(|buf, req_start| {
        let db = buf.db(obj, || None);
        let err: &[u8] = match exception {
            Some((_, m)) => m.as_bytes(),
            None => &[],
        };
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

fn running(call: &Call) {
    crate::module::running(
        sonde_core::scoreboard::CURRENT_CACHE,
        zend::function_name(call),
    );
}
