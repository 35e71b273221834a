//! The only code that reads Zend / SAPI state. Each function is a thin,
//! documented wrapper over one binding; callers get Rust types and never
//! hold pointers into Zend memory past the current callback.

use std::ffi::{c_char, c_int, CStr};

use crate::sys;

/// The extension's ini settings, by name in `php-ext/csrc/shim.c`.
pub use sys::sonde_setting as Setting;

/// A setting's current value as an integer (strtol, base 0).
pub fn setting_long(setting: Setting) -> i64 {
    // SAFETY: reads the value the shim's on_modify handler last stored
    // (Zend calls it on this thread, never during our callbacks).
    let values = unsafe { &*std::ptr::addr_of!(sys::sonde_setting_long) };
    values.get(setting as usize).copied().unwrap_or(0)
}

/// A setting's current value as a string, `None` before start-up.
pub fn setting_str(setting: Setting) -> Option<&'static CStr> {
    // SAFETY: as in `setting_long`; the string is the ini entry's current
    // value (a NUL-terminated zend_string), which lives until the setting
    // changes (ini_set, or its restore at request end), which cannot happen
    // during the callback that reads it (callers copy it).
    let values = unsafe { &*std::ptr::addr_of!(sys::sonde_setting_value) };
    let v = values.get(setting as usize).copied()?;
    if v.is_null() {
        return None;
    }
    // SAFETY: as above.
    Some(unsafe { CStr::from_ptr((*v).val.as_ptr()) })
}

/// The SAPI's name (`fpm-fcgi`, `cli`, …).
pub fn sapi_name() -> &'static str {
    static NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        // SAFETY: sapi_module.name is a static string set before MINIT.
        cstr(unsafe { sys::sonde_shim_sapi_name() })
            .and_then(|s| s.to_str().ok())
            .unwrap_or("")
    })
}

/// `SG(request_info).request_method`.
pub fn request_method() -> Option<&'static CStr> {
    // SAFETY: SAPI globals are valid during a request; the string lives until
    // the request ends and is copied by the caller before that.
    cstr(unsafe { sys::sonde_shim_request_method() })
}

/// `SG(request_info).request_uri` (under php-fpm the script path, not the
/// URI the client sent; see `sapi_env("REQUEST_URI")`).
pub fn request_uri() -> Option<&'static CStr> {
    // SAFETY: as for request_method.
    cstr(unsafe { sys::sonde_shim_request_uri() })
}

/// `SG(request_info).path_translated`: the script file.
pub fn path_translated() -> Option<&'static CStr> {
    // SAFETY: as for request_method.
    cstr(unsafe { sys::sonde_shim_path_translated() })
}

/// `SG(request_info).query_string`.
pub fn query_string() -> Option<&'static CStr> {
    // SAFETY: as for request_method.
    cstr(unsafe { sys::sonde_shim_query_string() })
}

/// `SG(sapi_headers).http_response_code` (0 when none was set, e.g. CLI).
pub fn response_code() -> u32 {
    // SAFETY: reads an int from the SAPI globals, valid during a request.
    let c = unsafe { sys::sonde_shim_response_code() };
    c.max(0) as u32
}

/// A SAPI environment value (a FastCGI param under php-fpm), copied into
/// `buf`. Returns the text and whether it had to be cut to fit.
pub fn sapi_env<'b>(name: &CStr, buf: &'b mut [u8]) -> Option<(&'b str, bool)> {
    // SAFETY: `name` is NUL-terminated; `buf` is valid for `buf.len()` bytes
    // and the shim writes at most that many (including the NUL).
    let len =
        unsafe { sys::sonde_shim_sapi_env(name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    let full = len as usize;
    let n = full.min(buf.len().saturating_sub(1));
    let text = match std::str::from_utf8(&buf[..n]) {
        Ok(s) => s,
        // A cut in the middle of a UTF-8 sequence, or non-UTF-8 bytes: keep
        // the valid prefix.
        Err(e) => std::str::from_utf8(&buf[..e.valid_up_to()]).unwrap_or(""),
    };
    Some((text, full > n))
}

/// Peak memory of the current request, bytes.
pub fn peak_memory() -> u64 {
    // SAFETY: the memory manager exists for the whole request.
    unsafe { sys::zend_memory_peak_usage(false) as u64 }
}

/// The PHP version of the headers this extension was built against.
pub fn php_version() -> &'static str {
    static VERSION: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        CStr::from_bytes_with_nul(sys::PHP_VERSION)
            .ok()
            .and_then(|s| s.to_str().ok())
            .unwrap_or("")
    })
}

fn cstr(p: *const c_char) -> Option<&'static CStr> {
    if p.is_null() {
        None
    } else {
        // SAFETY: non-null pointers handed to us by Zend/SAPI point to
        // NUL-terminated strings; see each caller for their lifetime.
        Some(unsafe { CStr::from_ptr(p) })
    }
}

// ---- reading a hooked call -------------------------------------------------

use crate::hooks::Call;

/// `$this` of the call (null for a plain function).
#[inline]
pub fn this(call: &Call) -> *mut sys::zend_object {
    // SAFETY: `execute_data` is the live frame of the hooked call; its
    // `This` zval holds an object exactly when its type says so (read in
    // Rust: `Z_TYPE`/`Z_OBJ`, no call into the shim on the hot path).
    unsafe {
        let this = &(*call.execute_data).This;
        if u32::from(this.u1.v.type_) == sys::IS_OBJECT {
            this.value.obj
        } else {
            std::ptr::null_mut()
        }
    }
}

/// Argument `n` (1-based) as bytes when it is a string. Valid until the
/// recorder returns (the caller copies it).
pub fn arg_str(call: &Call, n: u32) -> Option<&[u8]> {
    zval_str(arg_zval(call, n))
}

/// The zval a pointer names, with a reference followed (in the shim: rare).
#[inline]
fn deref(zv: *const sys::zval) -> *const sys::zval {
    // SAFETY: callers pass a valid zval (or null, returned as is).
    unsafe {
        if !zv.is_null() && u32::from((*zv).u1.v.type_) == sys::IS_REFERENCE {
            return sys::sonde_shim_zval_deref(zv);
        }
    }
    zv
}

/// A string zval's bytes (read in Rust: `Z_STRVAL`/`Z_STRLEN`).
#[inline]
fn zval_str<'a>(zv: *const sys::zval) -> Option<&'a [u8]> {
    let zv = deref(zv);
    if zv.is_null() {
        return None;
    }
    // SAFETY: `zv` is a valid zval; a string one holds a live zend_string
    // of `len` bytes at `val`, which outlives the recorder (callers copy).
    unsafe {
        if u32::from((*zv).u1.v.type_) != sys::IS_STRING {
            return None;
        }
        let s = (*zv).value.str_;
        Some(std::slice::from_raw_parts(
            (*s).val.as_ptr().cast::<u8>(),
            (*s).len,
        ))
    }
}

/// The type (IS_*) of the call's return value.
#[inline]
pub fn ret_type(call: &Call) -> u32 {
    if call.return_value.is_null() {
        return sys::IS_UNDEF;
    }
    // SAFETY: `return_value` is the zval Zend passed to the handler; its
    // type byte is read in Rust. A reference (not returned by the functions
    // we hook, but possible) goes through the shim, which dereferences it.
    unsafe {
        let t = u32::from((*call.return_value).u1.v.type_);
        if t == sys::IS_REFERENCE {
            sys::sonde_shim_zval_type(call.return_value) as u32
        } else {
            t
        }
    }
}

/// The return value as an int (0 unless it is one).
pub fn ret_long(call: &Call) -> i64 {
    zval_long(call.return_value)
}

/// Elements of the returned array (0 unless an array).
pub fn ret_count(call: &Call) -> u32 {
    let zv = deref(call.return_value);
    // SAFETY: a valid zval (or null); an array one points to a live
    // HashTable (`zend_hash_num_elements` is its nNumOfElements).
    unsafe {
        if zv.is_null() || u32::from((*zv).u1.v.type_) != sys::IS_ARRAY {
            return 0;
        }
        (*(*zv).value.arr).nNumOfElements
    }
}

/// The returned object (null unless an object).
pub fn ret_obj(call: &Call) -> *mut sys::zend_object {
    zval_obj(call.return_value)
}

/// An int zval's value (0 unless an int).
#[inline]
fn zval_long(zv: *const sys::zval) -> i64 {
    let zv = deref(zv);
    // SAFETY: a valid zval (or null).
    unsafe {
        if zv.is_null() || u32::from((*zv).u1.v.type_) != sys::IS_LONG {
            return 0;
        }
        (*zv).value.lval
    }
}

/// An object zval's object (null unless an object).
#[inline]
fn zval_obj(zv: *const sys::zval) -> *mut sys::zend_object {
    let zv = deref(zv);
    // SAFETY: a valid zval (or null).
    unsafe {
        if zv.is_null() || u32::from((*zv).u1.v.type_) != sys::IS_OBJECT {
            return std::ptr::null_mut();
        }
        (*zv).value.obj
    }
}

/// Whether an exception is pending (the call just made threw).
#[inline]
pub fn has_exception() -> bool {
    let slot = crate::HOT
        .exception
        .load(std::sync::atomic::Ordering::Relaxed);
    if slot.is_null() {
        // SAFETY: reads EG(exception), valid during a request.
        return unsafe { sys::sonde_shim_has_exception() != 0 };
    }
    // SAFETY: `slot` is &EG(exception), fixed for the process (NTS).
    unsafe { !(*slot).is_null() }
}

/// The pending exception's class and message, copied into the buffers.
pub fn exception<'b>(
    class: &'b mut [u8; 128],
    msg: &'b mut [u8; 512],
) -> Option<(&'b str, &'b str)> {
    // SAFETY: the buffers are valid for their lengths; the shim writes a
    // NUL-terminated, truncated copy and never calls user code.
    let has = unsafe {
        sys::sonde_shim_exception(
            class.as_mut_ptr().cast(),
            class.len(),
            msg.as_mut_ptr().cast(),
            msg.len(),
        )
    };
    if has == 0 {
        return None;
    }
    let c = CStr::from_bytes_until_nul(class)
        .ok()?
        .to_str()
        .unwrap_or("");
    let m = CStr::from_bytes_until_nul(msg).ok()?.to_str().unwrap_or("");
    Some((c, m))
}

/// A PDOStatement's query text, row count and connection object, read
/// in Rust from `pdo_stmt_t` (its layout bound from the headers).
pub fn pdo_stmt<'a>(obj: *mut sys::zend_object) -> Option<(&'a [u8], i64, *mut sys::zend_object)> {
    use sys::sonde_layout as l;
    if obj.is_null() {
        return None;
    }
    // SAFETY: `obj` is the `$this` of a PDOStatement method or the object a
    // PDO call returned (our hooks are only on those), so it is the `std`
    // member of a pdo_stmt_t (`php_pdo_stmt_fetch_object`); the fields are
    // read at their offsets: a zend_string pointer (or null), a zend_long
    // and a zval.
    unsafe {
        let stmt = obj.cast::<u8>().sub(l::SONDE_PDO_STMT_STD as usize);
        let q = *stmt
            .add(l::SONDE_PDO_STMT_QUERY as usize)
            .cast::<*mut sys::zend_string>();
        let rows = *stmt
            .add(l::SONDE_PDO_STMT_ROWS as usize)
            .cast::<sys::zend_long>();
        let dbh = zval_obj(stmt.add(l::SONDE_PDO_STMT_DBH as usize).cast::<sys::zval>());
        let text = if q.is_null() {
            &[][..]
        } else {
            std::slice::from_raw_parts((*q).val.as_ptr().cast::<u8>(), (*q).len)
        };
        Some((text, rows, dbh))
    }
}

/// A PDO connection's driver name and DSN.
pub fn pdo_dbh<'a>(obj: *mut sys::zend_object) -> Option<(&'a [u8], &'a [u8])> {
    if obj.is_null() {
        return None;
    }
    let (mut dsn, mut dsn_len, mut drv, mut drv_len) =
        (std::ptr::null(), 0usize, std::ptr::null(), 0usize);
    // SAFETY: `obj` is a PDO object (the `$this` of a PDO method or a
    // statement's database handle); the shim checks it is connected.
    let ok =
        unsafe { sys::sonde_shim_pdo_dbh(obj, &mut dsn, &mut dsn_len, &mut drv, &mut drv_len) };
    if ok == 0 {
        return None;
    }
    // SAFETY: both point to strings owned by the connection, of the given
    // lengths; they are copied before the recorder returns.
    unsafe {
        Some((
            std::slice::from_raw_parts(drv.cast::<u8>(), drv_len),
            std::slice::from_raw_parts(dsn.cast::<u8>(), dsn_len),
        ))
    }
}

/// Argument `n` (1-based) when it is an object.
pub fn arg_obj(call: &Call, n: u32) -> *mut sys::zend_object {
    zval_obj(arg_zval(call, n))
}

/// The number of arguments passed.
pub fn num_args(call: &Call) -> u32 {
    // SAFETY: the frame is live.
    unsafe { sys::sonde_shim_num_args(call.execute_data) }
}

/// What mysqlnd knows of a mysqli connection.
#[derive(Debug, Clone, Copy)]
pub struct MysqliConn<'a> {
    pub host: &'a [u8],
    pub port: u32,
    pub db: &'a [u8],
    /// Affected rows of the last statement (0 when unknown).
    pub affected: i64,
}

/// The connection behind `obj`, a mysqli link (`stmt` false) or a
/// mysqli_stmt (`stmt` true). Valid until the recorder returns.
pub fn mysqli_conn<'a>(obj: *mut sys::zend_object, stmt: bool) -> Option<MysqliConn<'a>> {
    if obj.is_null() {
        return None;
    }
    let (mut host, mut host_len, mut port, mut db, mut db_len, mut affected) = (
        std::ptr::null(),
        0usize,
        0u32,
        std::ptr::null(),
        0usize,
        0i64,
    );
    // SAFETY: `obj` is the mysqli (or mysqli_stmt) object of a hooked
    // mysqli call; the shim checks the resource is valid before reading.
    let ok = unsafe {
        if stmt {
            sys::sonde_shim_mysqli_stmt(
                obj,
                &mut host,
                &mut host_len,
                &mut port,
                &mut db,
                &mut db_len,
                &mut affected,
            )
        } else {
            sys::sonde_shim_mysqli_link(
                obj,
                &mut host,
                &mut host_len,
                &mut port,
                &mut db,
                &mut db_len,
                &mut affected,
            )
        }
    };
    if ok == 0 {
        return None;
    }
    // SAFETY: mysqlnd strings of the given lengths, owned by the connection.
    let (host, db) = unsafe {
        (
            std::slice::from_raw_parts(host.cast::<u8>(), host_len),
            std::slice::from_raw_parts(db.cast::<u8>(), db_len),
        )
    };
    Some(MysqliConn {
        host,
        port,
        db,
        affected,
    })
}

/// Rows of a mysqli_result (0 when unknown, e.g. unbuffered).
pub fn mysqli_result_rows(obj: *mut sys::zend_object) -> Option<i64> {
    if obj.is_null() {
        return None;
    }
    let mut rows = 0i64;
    // SAFETY: `obj` is a mysqli_result returned by a hooked call; the shim
    // checks the resource is valid.
    let ok = unsafe { sys::sonde_shim_mysqli_result_rows(obj, &mut rows) };
    (ok != 0).then_some(rows)
}

/// Argument `n` (1-based) as a zval pointer (null past the end), a
/// reference followed. `ZEND_CALL_ARG` in Rust: the arguments follow the
/// frame, `ZEND_CALL_FRAME_SLOT` zvals in.
#[inline]
pub fn arg_zval(call: &Call, n: u32) -> *mut sys::zval {
    let ex = call.execute_data;
    // SAFETY: the frame is live; `This.u2.num_args` is its argument count
    // (`ZEND_CALL_NUM_ARGS`) and `n` is checked against it.
    unsafe {
        if n == 0 || n > (*ex).This.u2.num_args {
            return std::ptr::null_mut();
        }
        let slot = sys::sonde_layout::SONDE_CALL_FRAME_SLOT as usize + n as usize - 1;
        deref(ex.cast::<sys::zval>().add(slot)).cast_mut()
    }
}

/// Argument `n` as an int (0 unless one).
pub fn arg_long(call: &Call, n: u32) -> i64 {
    zval_long(arg_zval(call, n))
}

/// curl: keep the app's header list of handle `ch` (`headers` is the value
/// given to CURLOPT_HTTPHEADER, or the options array when `from_array`).
pub fn curl_remember(ch: *mut sys::zend_object, value: *mut sys::zval, from_array: bool) {
    if ch.is_null() || value.is_null() {
        return;
    }
    // SAFETY: `ch` and `value` come from the live frame; the shim takes its
    // own reference to the array and releases it at request end.
    unsafe {
        if from_array {
            sys::sonde_shim_curl_remember_from_array(ch, value)
        } else {
            sys::sonde_shim_curl_remember(ch, value)
        }
    }
}

/// curl: handle `copy` was copied from `from` (with its headers).
pub fn curl_copied(from: *mut sys::zend_object, copy: *mut sys::zend_object) {
    // SAFETY: compares `from` with remembered handles and takes a reference
    // to the remembered array for `copy`, released at request end.
    unsafe { sys::sonde_shim_curl_copied(from, copy) }
}

/// curl: forget handle `ch`'s headers (closed or reset).
pub fn curl_forget(ch: *mut sys::zend_object) {
    // SAFETY: only compares the pointer and releases our own references.
    unsafe { sys::sonde_shim_curl_forget(ch) }
}

/// curl: releases every remembered header list (request end).
pub fn curl_forget_all() {
    // SAFETY: request shutdown, the memory manager is still up.
    unsafe { sys::sonde_shim_curl_forget_all() }
}

/// curl: adds `traceparent` and `tracestate` to handle `ch`'s headers.
pub fn curl_inject(ch: *mut sys::zval, traceparent: &str, tracestate: &str) -> bool {
    // SAFETY: `ch` is the curl handle argument of the live frame; the shim
    // calls curl_setopt with a new array built from the app's own headers.
    unsafe {
        sys::sonde_shim_curl_inject(
            ch,
            traceparent.as_ptr().cast(),
            traceparent.len(),
            tracestate.as_ptr().cast(),
            tracestate.len(),
        ) != 0
    }
}

/// curl: the effective URL, HTTP status and (when `want_error`) error text
/// of handle `ch`.
pub fn curl_info<'b>(
    ch: *mut sys::zval,
    url: &'b mut [u8; 2048],
    err: &'b mut [u8; 256],
    want_error: bool,
) -> Option<(&'b [u8], u32, &'b [u8])> {
    let mut status = 0i64;
    // SAFETY: buffers valid for their lengths; `ch` from the live frame.
    let ok = unsafe {
        sys::sonde_shim_curl_info(
            ch,
            url.as_mut_ptr().cast(),
            url.len(),
            &mut status,
            err.as_mut_ptr().cast(),
            err.len(),
            c_int::from(want_error),
        )
    };
    if ok == 0 {
        return None;
    }
    let until_nul = |b: &'b [u8]| &b[..b.iter().position(|c| *c == 0).unwrap_or(b.len())];
    Some((
        until_nul(url),
        status.clamp(0, u32::MAX as i64) as u32,
        until_nul(err),
    ))
}

/// The called function's declared name (`hGetAll`).
pub fn function_name(call: &Call) -> &[u8] {
    let mut len = 0usize;
    // SAFETY: the frame is live; the name is an interned string of the
    // function, which lives for the process.
    unsafe {
        let p = sys::sonde_shim_function_name(call.execute_data, &mut len);
        std::slice::from_raw_parts(p.cast::<u8>(), len)
    }
}

/// curl: the transfer time of handle `ch` (CURLINFO_TOTAL_TIME), seconds.
pub fn curl_total_time(ch: *mut sys::zval) -> Option<f64> {
    // SAFETY: `ch` is a curl handle zval of the live frame; the shim calls
    // curl_getinfo and never throws.
    let t = unsafe { sys::sonde_shim_curl_total_time(ch) };
    (t >= 0.0).then_some(t)
}

/// The PHP file and line executing now (the caller of a hooked function).
pub fn executed_location() -> (&'static [u8], u32) {
    // SAFETY: valid during a request; the file name is the compiled script's
    // interned name, copied by the caller before the request ends.
    unsafe {
        let f = sys::zend_get_executed_filename();
        let file = if f.is_null() {
            &b""[..]
        } else {
            CStr::from_ptr(f).to_bytes()
        };
        (file, sys::zend_get_executed_lineno())
    }
}

// ---- open database connections ---------------------------------------------

/// The object's handle (its slot in the object store).
pub fn object_handle(obj: *mut sys::zend_object) -> u32 {
    // SAFETY: `obj` is a live object handed to a hooked call.
    unsafe { sys::sonde_shim_object_handle(obj) }
}

/// Whether `obj` is still the live object in slot `handle` (it may have
/// been freed since; then the slot is free or holds another object).
pub fn object_alive(obj: *mut sys::zend_object, handle: u32) -> bool {
    // SAFETY: the shim only compares `obj` with the object store's slot and
    // dereferences it when they are the same live object.
    unsafe { sys::sonde_shim_object_alive(obj, handle) != 0 }
}

/// Whether a PDO object is connected to a database server (not SQLite),
/// and whether persistently.
pub fn pdo_connection(obj: *mut sys::zend_object) -> Option<bool> {
    let mut persistent = 0;
    // SAFETY: `obj` is the `$this` of a PDO method (our hooks are only on
    // that class); the shim checks the handle is initialised.
    let ok = unsafe { sys::sonde_shim_pdo_connection(obj, &mut persistent) };
    (ok != 0).then_some(persistent != 0)
}

/// Whether a mysqli link object holds an open connection.
pub fn mysqli_connected(obj: *mut sys::zend_object) -> bool {
    // SAFETY: `obj` is a live mysqli object (checked alive by the caller or
    // handed to a hooked mysqli call); the shim checks its resource.
    unsafe { sys::sonde_shim_mysqli_connected(obj) != 0 }
}

/// Persistent database connections the process holds (PDO, pgsql, idle
/// mysqli links).
pub fn persistent_db_connections() -> u32 {
    // SAFETY: walks EG(persistent_list), valid for the process.
    unsafe { sys::sonde_shim_persistent_db_connections() }
}

// ---- Memcached and SoapClient ----------------------------------------------

/// Memcached: the result code of the object's last operation and its
/// message (copied into `msg`).
pub fn memcached_result(obj: *mut sys::zend_object, msg: &mut [u8; 256]) -> Option<(i64, &[u8])> {
    let mut code = 0i64;
    // SAFETY: `obj` is the `$this` of a Memcached method; the shim calls the
    // class's own getResultCode/getResultMessage and clears any exception.
    let ok = unsafe {
        sys::sonde_shim_memcached_result(obj, &mut code, msg.as_mut_ptr().cast(), msg.len())
    };
    (ok != 0).then(|| (code, until_nul(msg)))
}

/// Memcached: the first server (host copied into `host`), its port, and
/// the number of servers.
pub fn memcached_server(
    obj: *mut sys::zend_object,
    host: &mut [u8; 256],
) -> Option<(&[u8], u64, u32)> {
    let (mut port, mut count) = (0i64, 0u32);
    // SAFETY: as memcached_result (getServerList).
    let ok = unsafe {
        sys::sonde_shim_memcached_server(
            obj,
            host.as_mut_ptr().cast(),
            host.len(),
            &mut port,
            &mut count,
        )
    };
    (ok != 0).then(|| (until_nul(host), port.max(0) as u64, count))
}

/// SoapClient: the last response's headers, when the client keeps them
/// (its `trace` option).
pub fn soap_last_headers(client: *mut sys::zend_object, buf: &mut [u8; 512]) -> Option<&[u8]> {
    // SAFETY: `client` is the `$this` of a SoapClient method; the shim reads
    // a declared property with the class's scope.
    let ok =
        unsafe { sys::sonde_shim_soap_last_headers(client, buf.as_mut_ptr().cast(), buf.len()) };
    (ok != 0).then(|| until_nul(buf))
}

/// SoapClient: the SoapFault its last call left (`__soap_fault`), or null.
pub fn soap_client_fault(client: *mut sys::zend_object) -> *mut sys::zend_object {
    // SAFETY: as soap_last_headers.
    unsafe { sys::sonde_shim_soap_client_fault(client) }
}

/// A SoapFault's code and message, when `fault` is one.
pub fn soap_fault<'b>(
    fault: *mut sys::zend_object,
    code: &'b mut [u8; 128],
    msg: &'b mut [u8; 512],
) -> Option<(&'b [u8], &'b [u8])> {
    // SAFETY: the shim checks `fault` is a SoapFault before reading its
    // declared properties.
    let ok = unsafe {
        sys::sonde_shim_soap_fault(
            fault,
            code.as_mut_ptr().cast(),
            code.len(),
            msg.as_mut_ptr().cast(),
            msg.len(),
        )
    };
    (ok != 0).then(|| (until_nul(code), until_nul(msg)))
}

/// The exception the call just made threw, or null.
pub fn pending_exception() -> *mut sys::zend_object {
    // SAFETY: reads EG(exception), valid during a request.
    unsafe { sys::sonde_shim_pending_exception() }
}

fn until_nul(b: &[u8]) -> &[u8] {
    &b[..b.iter().position(|c| *c == 0).unwrap_or(b.len())]
}
