//! PHP's own HTTP client: every `http://` or `https://` stream —
//! `file_get_contents()`, `fopen()`, `file()`, `copy()`, libxml loading a
//! URL… — is an external span: URL without its query, HTTP status (the
//! final response's, after redirects), and the error PHP reports when the
//! open fails (`HTTP request failed! HTTP/1.1 404 Not Found`,
//! `Connection refused`). It lasts from the open to the stream's close, so
//! the body `file_get_contents()` reads is included; a stream the app never
//! closes ends with the request.
//!
//! Not a function hook: the C shim puts a copy of PHP's http stream wrapper
//! in the global wrapper table at start-up whose opener and closer call
//! here. Reading local files never reaches the extension at all.
//!
//! Trace headers are not added here (that would mean rewriting the app's
//! stream context); use curl for linked calls.

use std::ffi::{c_char, c_void};

use crate::hooks;
use crate::module::{in_boundary, with_spans};
use crate::sys;

const LIBRARY: crate::spans::Library = crate::spans::Library::HTTP_STREAM;

/// Wraps the http and https stream wrappers (start-up, once every module
/// has registered its wrappers). True when wrapped.
pub fn install() -> bool {
    // SAFETY: start-up, single-threaded; the shim only swaps pointers in
    // the global wrapper table, which nothing reads concurrently.
    unsafe { sys::sonde_shim_wrap_http_streams() > 0 }
}

/// Puts PHP's own wrappers back (MSHUTDOWN).
pub fn uninstall() {
    // SAFETY: module shutdown, single-threaded.
    unsafe { sys::sonde_shim_unwrap_http_streams() }
}

/// A remote stream is being opened: its start in ticks, or 0 when no
/// request is traced (then nothing else is recorded).
#[no_mangle]
pub extern "C" fn sonde_rs_stream_open(url: *const c_char, len: usize) -> u64 {
    if !hooks::recording() {
        return 0;
    }
    let mut start = 0;
    in_boundary(|| {
        // SAFETY: the shim passes the path PHP is opening and its length,
        // valid for this call.
        let url = unsafe { bytes(url, len) };
        let cut = url.iter().position(|b| *b == b'?').unwrap_or(url.len());
        crate::module::running(sonde_core::scoreboard::CURRENT_EXTERNAL, &url[..cut]);
        start = crate::clock::ticks().max(1);
    });
    start
}

/// The open returned `stream` (null when it failed, with PHP's `error`).
#[no_mangle]
pub extern "C" fn sonde_rs_stream_opened(
    start: u64,
    stream: *mut c_void,
    url: *const c_char,
    url_len: usize,
    status: i32,
    error: *const c_char,
    error_len: usize,
) {
    let end = crate::clock::ticks();
    in_boundary(|| {
        // SAFETY: as above; `error` is null or `error_len` bytes.
        let (url, error) = unsafe { (bytes(url, url_len), bytes(error, error_len)) };
        with_spans(|buf, req_start| {
            let idx = buf.external(
                LIBRARY,
                start.saturating_sub(req_start),
                end.saturating_sub(start),
                url,
                b"",
                status.max(0) as u32,
                error,
                [0; 8],
            );
            if let (Some(idx), false) = (idx, stream.is_null()) {
                buf.stream_opened(stream as usize, idx, start);
            }
        });
    });
}

/// A stream opened through the wrapper is being closed.
#[no_mangle]
pub extern "C" fn sonde_rs_stream_closed(stream: *mut c_void) {
    if !hooks::recording() {
        return;
    }
    let end = crate::clock::ticks();
    in_boundary(|| with_spans(|buf, _| buf.stream_closed(stream as usize, end)));
}

/// # Safety
/// `p` is null or valid for `len` bytes for the caller's lifetime.
unsafe fn bytes<'a>(p: *const c_char, len: usize) -> &'a [u8] {
    if p.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: per the contract above.
        unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }
    }
}
