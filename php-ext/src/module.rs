//! The Zend side: module entry and the callbacks PHP calls (MINIT, RINIT,
//! RSHUTDOWN, MINFO, MSHUTDOWN).
//!
//! Every callback runs inside `boundary`, which catches a panic, switches the
//! extension off for this process and lets PHP carry on. Nothing here
//! prints, blocks or touches the network in MINIT (php-fpm forks after it).

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::mem::MaybeUninit;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::addr_of_mut;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::connections::{Conn, Connections, Kind};
use crate::ipc::{AgentSocket, Outcome};
use crate::record::{Builder, Captured, Ids, Spans, Traceparent};
use crate::ring::{PushError, Ring};
use crate::scoreboard::Board;
use crate::spans::{SpanBuf, DEFAULT_MAX_SPANS};
use crate::{errors, hooks, later, plugins, sys, zend};

const SUCCESS: sys::zend_result = sys::ZEND_RESULT_CODE_SUCCESS;
/// Longest URI kept; longer ones are cut and counted as truncated.
const MAX_URI: usize = 8192;
/// The request-end scratch space: URI, host, address, forwarded-for,
/// cookies, queue header.
const SCRATCH_BYTES: usize = MAX_URI + 256 + 64 + 512 + 4096 + 64;

/// Process-wide state of a non-thread-safe (NTS) PHP build.
struct Global<T>(UnsafeCell<T>);

// SAFETY: NTS PHP runs one request at a time on a single thread per process,
// and Zend calls our callbacks only from that thread; ZTS builds never reach
// `state()` (see `request_startup`).
unsafe impl<T> Sync for Global<T> {}

#[derive(Default)]
struct State {
    /// The current request, between RINIT and RSHUTDOWN.
    request: Option<Request>,
    /// Spans of the current request; allocated on the first traced request.
    spans: Option<SpanBuf>,
    /// Set up lazily on the first traced request of each process.
    process: Option<Process>,
    socket: AgentSocket,
    socket_path: Option<CString>,
    /// Records dropped, by reason: [agent away, socket full, ring full, too
    /// large].
    drops: [u64; 4],
    /// This worker's in-flight slot.
    board: Board,
    /// The record ring shared with the agent, and where it is.
    ring: Ring,
    ring_path: Option<CString>,
    board_path: Option<CString>,
    /// Database connections opened in this request, for the scoreboard.
    conns: Connections,
}

impl Process {
    /// This process's state, set up afresh after a fork (new pid: new id
    /// seed, new calibration), with the clocks read together once more.
    fn of(slot: &mut Option<Process>, pid: u32) -> &mut Process {
        // Checked in place: the state is large, moving it out and back
        // would copy it twice per call.
        if !matches!(slot, Some(p) if p.pid == pid) {
            *slot = None;
        }
        let p = slot.get_or_insert_with(|| Process {
            pid,
            builder: Builder::new(seed(pid)),
            calibration: crate::clock::Calibration::default(),
            statements: crate::spans::StatementCache::default(),
            raw: Vec::with_capacity(16 * 1024),
        });
        p.calibration.observe();
        p
    }
}

struct Process {
    pid: u32,
    builder: Builder,
    /// Ticks to nanoseconds for this process.
    calibration: crate::clock::Calibration,
    /// Normalised statements already seen by this process.
    statements: crate::spans::StatementCache,
    /// The reused buffer of the raw frame (`sonde_capture::raw`).
    raw: Vec<u8>,
}

struct Request {
    /// Set by `sonde_set_transaction_name()`.
    name: Option<String>,
    /// Set by `sonde_add_attribute()` (at most `MAX_ATTRIBUTES`).
    attributes: Vec<(String, String)>,
    /// Set by `sonde_ignore_transaction()`: no record is sent.
    ignore: bool,
    ids: Ids,
    start: Instant,
    /// `clock::ticks()` at the start: spans are offsets from it.
    start_ticks: u64,
    /// The outgoing `tracestate`, built on the first outgoing call.
    tracestate: Option<Rc<str>>,
    /// `REQUEST_URI` as read at the start into the scratch space: its
    /// length and whether it was cut. None for CLI or when the SAPI has none.
    uri: Option<(usize, bool)>,
    start_unix_ns: i64,
    cpu_start: (u64, u64),
}

static STATE: Global<Option<State>> = Global(UnsafeCell::new(None));

/// Reused buffers for SAPI values (allocated once, not zeroed per
/// request): the request URI, read once at request start (for the
/// scoreboard, then the record), and the values read at request end.
static SCRATCH: Global<Vec<u8>> = Global(UnsafeCell::new(Vec::new()));

/// The scratch space. `request_start` writes the URI part, `request_end`
/// reads it and uses the rest; each takes it once per call.
fn scratch() -> &'static mut [u8] {
    // SAFETY: see `Global`; `request_start` and `request_end` are its only
    // users, never run at the same time and do not re-enter themselves.
    let v = unsafe { &mut *SCRATCH.0.get() };
    if v.len() < SCRATCH_BYTES {
        v.resize(SCRATCH_BYTES, 0);
    }
    &mut v[..]
}

/// The process state. Callers must not hold the reference across another
/// call to `state()`; the callbacks are not re-entrant.
fn state() -> &'static mut State {
    // SAFETY: see `Global`: one thread, callbacks never nest, and each
    // callback takes this reference once.
    unsafe { (*STATE.0.get()).get_or_insert_with(State::default) }
}

/// Runs `f` with the current request's span buffer and start instant, if a
/// request is being traced. Hooks call this after the original handler has
/// returned, never across it.
/// (The second argument is the request's start in `clock::ticks()`.)
/// Calls recorded `later` are in the buffer before `f` sees it.
pub(crate) fn with_spans(f: impl FnOnce(&mut SpanBuf, u64)) {
    let st = state();
    if let (Some(req), Some(buf)) = (&st.request, &mut st.spans) {
        later::flush_into(buf, req.start_ticks);
        f(buf, req.start_ticks);
    }
}

/// Turns the calls queued by `later` into spans now.
pub(crate) fn flush_later() {
    with_spans(|_, _| {});
}

/// Most attributes one request keeps; later ones are ignored.
const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute key or value, and transaction name, kept.
const MAX_API_TEXT: usize = 256;

fn api_text(ptr: *const c_char, len: usize) -> String {
    // SAFETY: the shim passes a zend_string's bytes and length, valid for
    // the duration of the call.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    if s.len() > MAX_API_TEXT {
        let mut cut = MAX_API_TEXT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Runs `f` on the traced request; 1 when there is one, else 0.
fn api(f: impl FnOnce(&mut State)) -> c_int {
    let mut done = 0;
    boundary(|| {
        let st = state();
        if st.request.is_some() {
            f(st);
            done = 1;
        }
    });
    done
}

/// `sonde_set_transaction_name(string $name): bool`
#[no_mangle]
pub extern "C" fn sonde_rs_set_name(name: *const c_char, len: usize) -> c_int {
    api(|st| {
        if let Some(req) = &mut st.request {
            req.name = Some(api_text(name, len)).filter(|n| !n.is_empty());
        }
    })
}

/// `sonde_add_attribute(string $key, scalar $value): bool`
#[no_mangle]
pub extern "C" fn sonde_rs_add_attribute(
    key: *const c_char,
    key_len: usize,
    value: *const c_char,
    value_len: usize,
) -> c_int {
    api(|st| {
        if let Some(req) = &mut st.request {
            let key = api_text(key, key_len);
            let value = api_text(value, value_len);
            if let Some(slot) = req.attributes.iter_mut().find(|(k, _)| *k == key) {
                slot.1 = value;
            } else if req.attributes.len() < MAX_ATTRIBUTES {
                req.attributes.push((key, value));
            }
        }
    })
}

/// `sonde_record_error(Throwable $e): bool`
#[no_mangle]
pub extern "C" fn sonde_rs_record_error(error: *mut sys::zend_object) -> c_int {
    let mut class = [0u8; 128];
    let mut msg = [0u8; 512];
    // SAFETY: `error` is the Throwable argument of the call; the shim copies
    // its class name and message without calling user code.
    let ok = unsafe {
        sys::sonde_shim_object_exception(
            error,
            class.as_mut_ptr().cast(),
            class.len(),
            msg.as_mut_ptr().cast(),
            msg.len(),
        )
    };
    if ok == 0 {
        return 0;
    }
    let until_nul = |b: &[u8]| b.iter().position(|c| *c == 0).unwrap_or(b.len());
    api(|st| {
        if let (Some(req), Some(buf)) = (&st.request, &mut st.spans) {
            later::flush_into(buf, req.start_ticks);
            let at = crate::clock::ticks().saturating_sub(req.start_ticks);
            buf.recorded_error(at, &class[..until_nul(&class)], &msg[..until_nul(&msg)]);
        }
    })
}

/// `sonde_ignore_transaction(): bool`
#[no_mangle]
pub extern "C" fn sonde_rs_ignore() -> c_int {
    api(|st| {
        if let Some(req) = &mut st.request {
            req.ignore = true;
        }
    })
}

/// Nanoseconds as ticks for this process (curl reports transfer times).
pub(crate) fn ns_to_ticks(ns: f64) -> u64 {
    let st = state();
    let per = st
        .process
        .as_ref()
        .map_or(1.0, |p| p.calibration.ns_per_tick());
    (ns / per) as u64
}

/// The trace context an outgoing call passes on.
pub(crate) struct Outgoing {
    pub traceparent: Traceparent,
    /// The request's `tracestate` (shared, not copied, per call); None
    /// when there is nothing to pass on (most requests: no allocation).
    pub tracestate: Option<Rc<str>>,
}

/// For an outgoing call of the current request (if traced): a new span
/// id, remembered until the call ends (`SpanBuf::pop_pending`), and the
/// `traceparent` and `tracestate` values that pass the trace on (the
/// latter the same for every call of the request, built once; empty when
/// the request received none).
pub(crate) fn outgoing() -> Option<Outgoing> {
    let st = state();
    let (Some(req), Some(p), Some(buf)) = (&mut st.request, &mut st.process, &mut st.spans) else {
        return None;
    };
    later::flush_into(buf, req.start_ticks);
    let span = p.builder.span_id();
    buf.push_pending(span);
    let ids = &req.ids;
    // The caller's own members only (usually none: then no header at all,
    // which also spares libcurl a header); the callee is linked to this
    // transaction by trace id and span id.
    let ts = if ids.tracestate.is_empty() {
        None
    } else {
        Some(
            req.tracestate
                .get_or_insert_with(|| Rc::from(sonde_core::trace::passed_on(&ids.tracestate)))
                .clone(),
        )
    };
    Some(Outgoing {
        traceparent: Traceparent::new(&ids.trace, &span),
        tracestate: ts,
    })
}

/// The panic boundary, for hooks.
/// Whether `f` ran to its end.
pub(crate) fn in_boundary(f: impl FnOnce()) -> bool {
    boundary(f)
}

/// `in_boundary` without reading the flag, for the dispatcher after a
/// wrapped call (see `hooks::dispatch`).
#[inline]
pub(crate) fn in_boundary_enabled(f: impl FnOnce()) -> bool {
    unwind_boundary(f)
}

/// Runs `f` with panics caught; a panic switches the extension off.
/// Whether `f` ran to its end.
fn boundary(f: impl FnOnce()) -> bool {
    if crate::HOT.disabled.load(Ordering::Relaxed) {
        return false;
    }
    unwind_boundary(f)
}

#[inline(always)]
fn unwind_boundary(f: impl FnOnce()) -> bool {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        crate::HOT.disabled.store(true, Ordering::Relaxed);
        hooks::set_recording(false);
        return false;
    }
    true
}

fn install_hooks() {
    for specs in plugins::ALL {
        hooks::install(specs);
    }
    if plugins::http_stream::install() {
        HTTP_STREAMS.store(true, Ordering::Relaxed);
    }
}

/// Whether PHP's http stream wrapper is wrapped (`plugins::http_stream`).
static HTTP_STREAMS: AtomicBool = AtomicBool::new(false);

/// After every module's MINIT, before opcache preloads or JIT-compiles:
/// wrap the functions of extensions that started after us.
unsafe extern "C" fn post_startup() -> sys::zend_result {
    boundary(install_hooks);
    // SAFETY: chains to the callback that was installed before ours.
    unsafe { sys::sonde_shim_call_prev_post_startup() }
}

unsafe extern "C" fn module_startup(_type: c_int, module_number: c_int) -> sys::zend_result {
    // A panic must never print into the application's output or logs; it is
    // caught at the boundary and shown by phpinfo().
    std::panic::set_hook(Box::new(|_| {}));
    crate::clock::init();
    // SAFETY: registers a plain function that only stores to an atomic (safe
    // in a forked child); glibc drops it if this library is unloaded.
    unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
    // SAFETY: called once by Zend during MINIT with our module number.
    unsafe { sys::sonde_shim_register_ini(module_number) };
    #[cfg(not(php_zts))]
    {
        // SAFETY: returns the address of a field of PHP's executor globals,
        // fixed for the process in an NTS build.
        let slot = unsafe { sys::sonde_shim_exception_slot() };
        crate::HOT.exception.store(slot, Ordering::Relaxed);
        boundary(install_hooks);
        boundary(errors::install);
        // SAFETY: MINIT is single-threaded; chains the previous callback.
        unsafe { sys::sonde_shim_set_post_startup(Some(post_startup)) };
    }
    SUCCESS
}

unsafe extern "C" fn module_shutdown(_type: c_int, module_number: c_int) -> sys::zend_result {
    // SAFETY: called once by Zend during MSHUTDOWN with our module number.
    unsafe { sys::sonde_shim_unregister_ini(module_number) };
    boundary(plugins::http_stream::uninstall);
    boundary(|| {
        if let Some(st) = state_if_any() {
            st.request = None;
            st.board.release(pid());
        }
    });
    SUCCESS
}

fn state_if_any() -> Option<&'static mut State> {
    // SAFETY: as in `state()`.
    unsafe { (*STATE.0.get()).as_mut() }
}

unsafe extern "C" fn request_startup(_type: c_int, _module_number: c_int) -> sys::zend_result {
    #[cfg(not(php_zts))]
    boundary(request_start);
    SUCCESS
}

unsafe extern "C" fn request_shutdown(_type: c_int, _module_number: c_int) -> sys::zend_result {
    #[cfg(not(php_zts))]
    boundary(request_end);
    SUCCESS
}

fn request_start() {
    let st = state();
    st.request = None;
    crate::HOT.board.store(false, Ordering::Relaxed);
    if zend::setting_long(zend::Setting::SONDE_INI_ENABLED) == 0 {
        return;
    }
    let sapi = zend::sapi_name();
    if matches!(sapi, "cli" | "phpdbg" | "embed")
        && zend::setting_long(zend::Setting::SONDE_INI_TRACE_CLI) == 0
    {
        return;
    }
    let start_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    st.spans
        .get_or_insert_with(|| {
            let max = match zend::setting_long(zend::Setting::SONDE_INI_MAX_SPANS) {
                n if n > 0 => (n as usize).clamp(10, 100_000),
                _ => DEFAULT_MAX_SPANS,
            };
            SpanBuf::new(max)
        })
        .clear();
    let pid = pid();
    let process = Process::of(&mut st.process, pid);
    let per_tick = process.calibration.ns_per_tick();
    if let Some(buf) = &mut st.spans {
        let ms = zend::setting_long(zend::Setting::SONDE_INI_SLOW_SQL_MS).max(0) as f64;
        buf.slow_ticks = (ms * 1e6 / per_tick) as u64;
        later::start(buf.slow_ticks);
    }
    // The incoming trace context and the URI (read once, for the
    // scoreboard now and the record at the end) go to the scratch space.
    let (uri_buf, rest) = scratch().split_at_mut(MAX_URI);
    let (tp_buf, rest) = rest.split_at_mut(128);
    let ts_buf = &mut rest[..512];
    let traceparent = zend::sapi_env(c"HTTP_TRACEPARENT", tp_buf).map(|(t, _)| t);
    // W3C: `tracestate` counts only beside a `traceparent` (so most
    // requests, which have none, skip the lookup).
    let tracestate = traceparent
        .and_then(|_| zend::sapi_env(c"HTTP_TRACESTATE", ts_buf))
        .map(|(t, _)| t);
    let ids = process.builder.start(traceparent, tracestate);
    let start = Instant::now();
    let start_ticks = crate::clock::ticks();
    let uri = if matches!(sapi, "cli" | "phpdbg" | "embed") {
        None
    } else {
        zend::sapi_env(c"REQUEST_URI", uri_buf).map(|(u, cut)| (u.len(), cut))
    };
    let url = uri.map_or(&b""[..], |(n, _)| &uri_buf[..n]);
    board_begin(st, pid, start, start_unix_ns, &ids, url);
    st.request = Some(Request {
        name: None,
        attributes: Vec::new(),
        ignore: false,
        ids,
        start,
        start_ticks,
        tracestate: None,
        uri,
        start_unix_ns,
        cpu_start: cpu_times(),
    });
    hooks::set_recording(true);
}

/// Marks this worker busy in the scoreboard (`sonde.scoreboard`, by default
/// `scoreboard` beside the agent socket).
fn board_begin(st: &mut State, pid: u32, now: Instant, start_unix_ns: i64, ids: &Ids, url: &[u8]) {
    let configured =
        zend::setting_str(zend::Setting::SONDE_INI_SCOREBOARD).filter(|p| !p.is_empty());
    let path: &CStr = match configured {
        Some(p) => p,
        None => {
            if st.board_path.is_none() {
                let sock = zend::setting_str(zend::Setting::SONDE_INI_AGENT_SOCKET);
                st.board_path = beside_socket(sock, b"scoreboard");
            }
            match &st.board_path {
                Some(p) => p.as_c_str(),
                None => return,
            }
        }
    };
    if !st.board.attach(path, pid, now) {
        return;
    }
    let method = zend::request_method().map_or(&b""[..], |m| m.to_bytes());
    let app =
        zend::setting_str(zend::Setting::SONDE_INI_APP_NAME).map_or(&b""[..], |a| a.to_bytes());
    let db = st.conns.published.unwrap_or(0);
    st.board
        .begin(start_unix_ns, &ids.record, method, app, url, db);
    crate::HOT
        .board
        .store(st.board.slot().is_some(), Ordering::Relaxed);
}

/// A database connection object was opened (`persistent`: it is counted
/// through the process's persistent list instead).
pub(crate) fn db_opened(obj: *mut sys::zend_object, kind: Kind, persistent: bool) {
    let st = state();
    if st.request.is_none() {
        return;
    }
    if !persistent && !obj.is_null() {
        st.conns.opened(Conn {
            obj: obj as usize,
            handle: zend::object_handle(obj),
            kind,
        });
    }
    publish_db_connections(st, false);
}

/// A database connection was closed explicitly (`obj`, or the default
/// link of `kind`); closed mysqli links are noticed without this.
pub(crate) fn db_closed(obj: Option<*mut sys::zend_object>, kind: Kind) {
    let st = state();
    if st.request.is_none() {
        return;
    }
    st.conns.closed(obj.map(|o| o as usize), kind);
    publish_db_connections(st, false);
}

/// A database connection may have closed (its object tells): count again.
pub(crate) fn db_changed() {
    let st = state();
    if st.request.is_some() && st.conns.published.is_some() {
        publish_db_connections(st, false);
    }
}

/// Writes the worker's open database connections to its scoreboard slot
/// when the count changed. At request end only persistent ones remain.
/// Nothing to do without a slot (no agent): the count is taken when a
/// connection opens with a slot there.
fn publish_db_connections(st: &mut State, request_over: bool) {
    if st.board.slot().is_none() {
        return;
    }
    let persistent = zend::persistent_db_connections();
    let n = if request_over {
        persistent
    } else {
        st.conns.count(persistent, |c| {
            let obj = c.obj as *mut sys::zend_object;
            zend::object_alive(obj, c.handle)
                && (c.kind != Kind::Mysqli || zend::mysqli_connected(obj))
        })
    };
    if let Some(n) = st.conns.changed(n) {
        st.board.db_connections(n);
    }
}

/// Whether this worker has a scoreboard slot to show what runs now in
/// (before hooks check it before reading what they would show).
#[inline]
pub(crate) fn board_active() -> bool {
    crate::HOT.board.load(Ordering::Relaxed)
}

/// The current request now runs `text` (scoreboard `CURRENT_*` kind).
pub(crate) fn running(kind: u32, text: &[u8]) {
    if !board_active() {
        return;
    }
    let st = state();
    if st.board.slot().is_none() {
        return;
    }
    if let Some(now) = request_now_unix_ns(st) {
        st.board.current(kind, text, now);
    }
}

/// Like `running`, for a statement prepared earlier in the request.
pub(crate) fn running_prepared(kind: u32, key: usize) {
    if !board_active() {
        return;
    }
    let st = state();
    if st.board.slot().is_none() {
        return;
    }
    let Some(now) = request_now_unix_ns(st) else {
        return;
    };
    let (Some(req), Some(buf)) = (&st.request, &mut st.spans) else {
        return;
    };
    later::flush_into(buf, req.start_ticks);
    if let Some(text) = buf.prepared_bytes(key) {
        st.board.current(kind, text, now);
    }
}

/// Now in Unix ns, derived from the request's start and the tick counter:
/// no second clock read on the hook path. `None` outside a traced request.
fn request_now_unix_ns(st: &State) -> Option<i64> {
    let req = st.request.as_ref()?;
    let per_tick = st
        .process
        .as_ref()
        .map_or(1.0, |p| p.calibration.ns_per_tick());
    let elapsed = (crate::clock::ticks().saturating_sub(req.start_ticks) as f64 * per_tick) as i64;
    Some(req.start_unix_ns + elapsed)
}

fn request_end() {
    hooks::set_recording(false);
    zend::curl_forget_all();
    let st = state();
    let Some(req) = st.request.take() else {
        return;
    };
    if st.conns.published.is_some() {
        // This process has seen database connections: persistent ones may
        // remain, the request's own objects are freed now.
        publish_db_connections(st, true);
    }
    st.conns.clear();
    st.board.end();
    crate::HOT.board.store(false, Ordering::Relaxed);
    if req.ignore {
        later::discard();
        return;
    }
    if let Some(buf) = &mut st.spans {
        later::flush_into(buf, req.start_ticks);
        buf.close_streams(crate::clock::ticks());
    }
    let end = Instant::now();
    let wall_ns = end.duration_since(req.start).as_nanos() as u64;
    let cpu = cpu_times();
    let pid = pid();

    // The socket path may differ per pool (PHP_INI_PERDIR); keep ours in sync.
    let path = zend::setting_str(zend::Setting::SONDE_INI_AGENT_SOCKET)
        .unwrap_or(c"/run/sonde/agent.sock");
    if st.socket_path.as_deref() != Some(path) {
        st.socket_path = Some(path.to_owned());
        st.socket = AgentSocket::default();
        st.ring_path = None;
        st.ring = Ring::default();
        st.board_path = None;
    }

    let sapi = zend::sapi_name();
    let cli = matches!(sapi, "cli" | "phpdbg" | "embed");
    let scratch = scratch();
    let (uri_buf, rest) = scratch.split_at_mut(MAX_URI);
    let (host_buf, rest) = rest.split_at_mut(256);
    let (ip_buf, rest) = rest.split_at_mut(64);
    let (fwd_buf, rest) = rest.split_at_mut(512);
    let (cookie_buf, rest) = rest.split_at_mut(4096);
    let qs_buf = &mut rest[..64];
    let mut truncated = 0u32;
    let uri_owned: std::borrow::Cow<'_, str>;
    let uri: &str = match req.uri {
        Some((n, cut)) => {
            truncated += cut as u32;
            std::str::from_utf8(&uri_buf[..n]).unwrap_or("")
        }
        None => {
            // CLI and SAPIs without a REQUEST_URI: the script and its query
            // (borrowed when there is no query and it is UTF-8).
            let base = zend::request_uri()
                .or_else(zend::path_translated)
                .map(CStr::to_string_lossy);
            let query = zend::query_string().map(CStr::to_string_lossy);
            uri_owned = match (base, query) {
                (Some(b), Some(q)) if !q.is_empty() => format!("{b}?{q}").into(),
                (Some(b), _) => b,
                (None, _) => "".into(),
            };
            &uri_owned
        }
    };
    let http_host = zend::sapi_env(c"HTTP_HOST", host_buf).map_or("", |(h, _)| h);
    let remote_addr = zend::sapi_env(c"REMOTE_ADDR", ip_buf).map_or("", |(h, _)| h);
    let forwarded = match zend::setting_str(zend::Setting::SONDE_INI_CLIENT_IP_HEADER)
        .and_then(|h| h.to_str().ok())
    {
        Some(h) if !h.is_empty() => {
            let var = format!("HTTP_{}", h.to_ascii_uppercase().replace('-', "_"));
            CString::new(var)
                .ok()
                .and_then(|v| zend::sapi_env(&v, fwd_buf).map(|(f, _)| f.to_string()))
        }
        _ => None,
    };
    let client_ip = sonde_core::request::client_ip(remote_addr, forwarded.as_deref());
    let cookies = zend::sapi_env(c"HTTP_COOKIE", cookie_buf).map(|(c, _)| c);
    let cookie_names = zend::setting_str(zend::Setting::SONDE_INI_VISITOR_COOKIES)
        .and_then(|s| s.to_str().ok())
        .unwrap_or("");
    let visitor = (!cli).then(|| sonde_core::request::visitor_id(cookies, cookie_names, client_ip));
    let visitor_id = visitor.as_ref().map_or("", |v| v.as_str());
    let queue_ns = zend::sapi_env(c"HTTP_X_REQUEST_START", qs_buf)
        .and_then(|(v, _)| sonde_core::request::queue_ns(v, req.start_unix_ns))
        .unwrap_or(0);
    // Borrowed unless not UTF-8.
    let method_lossy = zend::request_method().map(CStr::to_string_lossy);
    let method: &str = match (&method_lossy, sapi) {
        (Some(m), _) => m,
        (None, "cli" | "phpdbg") => "CLI",
        (None, _) => "",
    };
    let app = zend::setting_str(zend::Setting::SONDE_INI_APP_NAME)
        .and_then(|s| s.to_str().ok())
        .unwrap_or("");
    let extra_redact = zend::setting_str(zend::Setting::SONDE_INI_REDACT_PARAMS)
        .and_then(|s| s.to_str().ok())
        .unwrap_or("");
    let endpoint_params = zend::setting_str(zend::Setting::SONDE_INI_ENDPOINT_PARAMS)
        .and_then(|s| s.to_str().ok())
        .unwrap_or("");

    let process = Process::of(&mut st.process, pid);
    let captured = Captured {
        app,
        pid,
        start_unix_ns: req.start_unix_ns,
        wall_ns,
        method,
        uri,
        status: zend::response_code(),
        cpu_user_ns: cpu.0.saturating_sub(req.cpu_start.0),
        cpu_sys_ns: cpu.1.saturating_sub(req.cpu_start.1),
        peak_memory_bytes: zend::peak_memory(),
        client_ip,
        visitor_id,
        queue_ns,
        http_host,
        ids: Some(&req.ids),
        sapi,
        php_version: zend::php_version(),
        extra_redact,
        truncated_texts: truncated,
        dropped_records: st.socket.dropped_since_sent,
        name: req.name.as_deref(),
        attributes: &req.attributes,
        ext_version: crate::VERSION,
    };
    // Handed over raw: the agent normalises, names and encodes (the same
    // code, `sonde_capture::raw`). Only a request whose raw frame would not
    // fit (thousands of spans) is encoded here, more compactly.
    let ns_per_tick = process.calibration.ns_per_tick();
    crate::raw::write(
        &mut process.raw,
        &captured,
        endpoint_params,
        st.spans.as_ref().map(|buf| (buf, ns_per_tick)),
    );
    let frame: &[u8] = if process.raw.len() <= sonde_core::frame::MAX_FRAME_BYTES {
        &process.raw
    } else {
        process.builder.set_endpoint_params(endpoint_params);
        let spans = st.spans.as_mut().map(|buf| Spans {
            buf,
            ns_per_tick,
            cache: &mut process.statements,
        });
        process.builder.frame(&captured, spans)
    };
    if frame.len() > sonde_core::frame::MAX_FRAME_BYTES {
        st.drops[3] += 1;
        st.socket.dropped_total += 1;
        st.socket.dropped_since_sent += 1;
        return;
    }
    // The shared-memory ring first (no syscall; records wait there while the
    // agent is busy or restarting), the socket when there is no ring.
    if st.ring_path.is_none() {
        st.ring_path = beside_socket(st.socket_path.as_deref(), b"ring");
    }
    if let Some(ring_path) = st.ring_path.as_deref() {
        if st.ring.attach(ring_path, end) {
            match st.ring.push(frame) {
                Ok(()) => {
                    st.socket.sent_total += 1;
                    st.socket.dropped_since_sent = 0;
                    return;
                }
                Err(PushError::NoRing) => {}
                Err(e @ (PushError::Full | PushError::TooLarge)) => {
                    st.drops[if e == PushError::Full { 2 } else { 3 }] += 1;
                    st.socket.dropped_total += 1;
                    st.socket.dropped_since_sent = st.socket.dropped_since_sent.saturating_add(1);
                    return;
                }
            }
        }
    }
    let path = st
        .socket_path
        .as_deref()
        .unwrap_or(c"/run/sonde/agent.sock");
    match st.socket.send(path, frame, pid, end) {
        Outcome::Sent => {}
        Outcome::NoAgent => st.drops[0] += 1,
        Outcome::Full => st.drops[1] += 1,
        Outcome::TooLarge => st.drops[3] += 1,
    }
}

/// The agent socket's path with its extension replaced by `ext`
/// (`agent.sock` -> `agent.ring`): where the agent keeps the record ring
/// and the scoreboard.
fn beside_socket(socket: Option<&CStr>, ext: &[u8]) -> Option<CString> {
    let sock = socket.unwrap_or(c"/run/sonde/agent.sock").to_bytes();
    let name_start = sock.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1);
    let stem_end = match sock[name_start..].iter().rposition(|b| *b == b'.') {
        Some(i) if i > 0 => name_start + i,
        _ => sock.len(),
    };
    let mut p = sock[..stem_end].to_vec();
    p.push(b'.');
    p.extend_from_slice(ext);
    CString::new(p).ok()
}

/// This process's id: read once, and again after a fork. getpid is a system
/// call (≈ 150 ns on this project's VMs) and every request needs the pid.
static PID: AtomicU32 = AtomicU32::new(0);

fn pid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => {
            let p = std::process::id();
            PID.store(p, Ordering::Relaxed);
            p
        }
        p => p,
    }
}

/// pthread_atfork's child handler: the child reads its own pid.
extern "C" fn forked_child() {
    PID.store(0, Ordering::Relaxed);
}

/// User and system CPU time of the thread running PHP so far, ns. The
/// thread's, not the process's: half the system call's cost here (≈ 0.35
/// against 0.7 µs), and PHP runs a request on one thread (threads an
/// extension may start are not the request's).
fn cpu_times() -> (u64, u64) {
    let mut ru = MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full rusage into the valid pointer given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) };
    if rc != 0 {
        return (0, 0);
    }
    // SAFETY: initialised above (zeroed, then filled by a successful call).
    let ru = unsafe { ru.assume_init() };
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
    (ns(ru.ru_utime), ns(ru.ru_stime))
}

/// Per-process id seed: 16 bytes from the kernel, mixed with pid and time so
/// a failed getrandom still gives distinct workers distinct ids.
fn seed(pid: u32) -> [u64; 2] {
    let mut bytes = [0u8; 16];
    // SAFETY: `bytes` is valid for 16 bytes; GRND_NONBLOCK never waits.
    let _ = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), libc::GRND_NONBLOCK) };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let a = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default()) ^ now;
    let b = u64::from_le_bytes(bytes[8..].try_into().unwrap_or_default()) ^ ((pid as u64) << 32);
    [a, b]
}

unsafe extern "C" fn module_info(_module: *mut sys::zend_module_entry) {
    let (sent, dropped, connected, drops, ring) = state_if_any()
        .map(|s| {
            (
                s.socket.sent_total,
                s.socket.dropped_total,
                s.socket.is_connected(),
                s.drops,
                s.ring.is_mapped(),
            )
        })
        .unwrap_or_default();
    let by_reason = CString::new(format!(
        "agent away {}, socket full {}, ring full {}, too large {}",
        drops[0], drops[1], drops[2], drops[3]
    ))
    .unwrap_or_default();
    let transport = if ring {
        c"shared-memory ring"
    } else if connected {
        c"socket"
    } else {
        c"none yet"
    };
    let status = if crate::HOT.disabled.load(Ordering::Relaxed) {
        c"disabled after an internal error".to_owned()
    } else {
        c"enabled".to_owned()
    };
    let version = CString::new(crate::VERSION).unwrap_or_default();
    let sent = CString::new(sent.to_string()).unwrap_or_default();
    let dropped = CString::new(dropped.to_string()).unwrap_or_default();
    let connected = if connected { c"yes" } else { c"no" };
    let mut hooked = hooks::installed();
    if HTTP_STREAMS.load(Ordering::Relaxed) {
        hooked.push("http:// and https:// stream wrapper".into());
    }
    let hooked_count = CString::new(hooked.len().to_string()).unwrap_or_default();
    let hooked = CString::new(hooked.join(", ")).unwrap_or_default();
    // SAFETY: MINFO runs inside phpinfo() with output available; every
    // argument is a valid NUL-terminated string living across the calls.
    unsafe {
        sys::php_info_print_table_start();
        sys::php_info_print_table_row(2, c"sonde support".as_ptr(), status.as_ptr());
        sys::php_info_print_table_row(2, c"version".as_ptr(), version.as_ptr());
        sys::php_info_print_table_row(
            2,
            c"agent connected (this process)".as_ptr(),
            connected.as_ptr(),
        );
        sys::php_info_print_table_row(2, c"transport (this process)".as_ptr(), transport.as_ptr());
        sys::php_info_print_table_row(2, c"records sent (this process)".as_ptr(), sent.as_ptr());
        sys::php_info_print_table_row(
            2,
            c"records dropped (this process)".as_ptr(),
            dropped.as_ptr(),
        );
        sys::php_info_print_table_row(2, c"dropped by reason".as_ptr(), by_reason.as_ptr());
        sys::php_info_print_table_row(2, c"hooked functions".as_ptr(), hooked_count.as_ptr());
        sys::php_info_print_table_row(2, c"hooked".as_ptr(), hooked.as_ptr());
        sys::php_info_print_table_end();
    }
}

static mut MODULE: MaybeUninit<sys::zend_module_entry> = MaybeUninit::uninit();
static MODULE_INIT: AtomicBool = AtomicBool::new(false);

/// The entry point PHP looks up after `dlopen("sonde.so")`.
#[no_mangle]
pub extern "C" fn get_module() -> *mut sys::zend_module_entry {
    let module = addr_of_mut!(MODULE);
    if !MODULE_INIT.swap(true, Ordering::AcqRel) {
        let entry = sys::zend_module_entry {
            size: std::mem::size_of::<sys::zend_module_entry>() as u16,
            zend_api: sys::ZEND_MODULE_API_NO,
            zend_debug: sys::ZEND_DEBUG as u8,
            zts: sys::USING_ZTS as u8,
            name: c"sonde".as_ptr(),
            // SAFETY: a pointer to the shim's static function table.
            functions: unsafe { sys::sonde_shim_functions() },
            module_startup_func: Some(module_startup),
            module_shutdown_func: Some(module_shutdown),
            request_startup_func: Some(request_startup),
            request_shutdown_func: Some(request_shutdown),
            info_func: Some(module_info),
            version: VERSION_C.as_ptr().cast::<c_char>(),
            // SAFETY: returns a pointer to a static string literal in the shim.
            build_id: unsafe { sys::sonde_shim_build_id() },
            ..Default::default()
        };
        // SAFETY: `get_module` is called by PHP's loader on one thread,
        // before any other use of MODULE; the swap above makes the write
        // happen once. Zend keeps and updates the entry for the process life.
        unsafe { (*module).write(entry) };
    }
    // SAFETY: initialised above; MaybeUninit<T> has T's layout.
    unsafe { (*module).as_mut_ptr() }
}

/// `VERSION` as a NUL-terminated string for the module entry.
static VERSION_C: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(s) => s,
        Err(_) => c"0",
    };
