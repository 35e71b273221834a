//! The only code that reads Zend / SAPI state. Each function is a thin,
//! documented wrapper over one binding; callers get Rust types and never
//! hold pointers into Zend memory past the current callback.

use std::ffi::{c_char, CStr};

use crate::sys;

/// `zend_ini_long(name)`: 0 when unset.
pub fn ini_long(name: &CStr) -> i64 {
    // SAFETY: `name` is a NUL-terminated string and its length excludes the
    // NUL, as zend_ini_long expects; called from a Zend callback on the
    // request thread, when the ini table exists.
    unsafe { sys::zend_ini_long(name.as_ptr(), name.to_bytes().len(), 0) as i64 }
}

/// `zend_ini_string_ex(name)`: the current value, `None` when the entry does
/// not exist.
pub fn ini_str(name: &CStr) -> Option<&'static CStr> {
    let mut exists = false;
    // SAFETY: as for ini_long; `exists` is a valid out pointer. The returned
    // string is owned by the ini entry and lives until it is changed, which
    // cannot happen during the callback that reads it (callers copy it).
    let p =
        unsafe { sys::zend_ini_string_ex(name.as_ptr(), name.to_bytes().len(), 0, &mut exists) };
    cstr(p)
}

/// The SAPI's name (`fpm-fcgi`, `cli`, …).
pub fn sapi_name() -> &'static str {
    // SAFETY: sapi_module.name is a static string set before MINIT.
    cstr(unsafe { sys::sonde_shim_sapi_name() })
        .and_then(|s| s.to_str().ok())
        .unwrap_or("")
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
    CStr::from_bytes_with_nul(sys::PHP_VERSION)
        .ok()
        .and_then(|s| s.to_str().ok())
        .unwrap_or("")
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
