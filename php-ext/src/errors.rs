//! PHP errors and exceptions: the request's failure (uncaught exception or
//! fatal error, with class, message, file and line), an error span per
//! exception thrown, and a count of warnings and notices.
//!
//! Installed once in MINIT through the C shim, which calls these callbacks
//! before the previous handlers, so a fatal error's bailout never crosses a
//! Rust frame.

use std::ffi::c_char;

use crate::module::{in_boundary, with_spans};
use crate::sys;

/// Installs the callbacks (MINIT, single-threaded).
pub fn install() {
    // SAFETY: MINIT; the shim chains to the handlers installed before ours.
    unsafe { sys::sonde_shim_install_error_hooks(Some(on_error), Some(on_throw)) };
}

unsafe extern "C" fn on_error(
    kind: i32,
    file: *const c_char,
    file_len: usize,
    line: u32,
    msg: *const c_char,
    msg_len: usize,
) {
    in_boundary(|| {
        // SAFETY: the shim passes zend_string contents with their lengths,
        // valid for the duration of this call.
        let (file, msg) = unsafe {
            (
                std::slice::from_raw_parts(file.cast::<u8>(), file_len),
                std::slice::from_raw_parts(msg.cast::<u8>(), msg_len),
            )
        };
        with_spans(|buf, _| buf.php_error(kind, file, line, msg));
    });
}

unsafe extern "C" fn on_throw(ex: *mut sys::zend_object) {
    in_boundary(|| {
        let now = crate::clock::ticks();
        let mut class = [0u8; 128];
        let mut msg = [0u8; 512];
        // SAFETY: `ex` is the exception being thrown; the shim copies its
        // class name and message without calling user code.
        let ok = unsafe {
            sys::sonde_shim_object_exception(
                ex,
                class.as_mut_ptr().cast(),
                class.len(),
                msg.as_mut_ptr().cast(),
                msg.len(),
            )
        };
        if ok == 0 {
            return;
        }
        let until_nul = |b: &[u8]| b.iter().position(|c| *c == 0).unwrap_or(b.len());
        with_spans(|buf, start| {
            let at = now.saturating_sub(start);
            buf.exception(at, &class[..until_nul(&class)], &msg[..until_nul(&msg)]);
        });
    });
}
