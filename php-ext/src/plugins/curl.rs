//! curl: each `curl_exec` is an external span (URL without its query,
//! HTTP status, curl error), and the request's trace goes to the callee in
//! `traceparent` (and `tracestate`, only to pass on what this request
//! received), added to the app's own headers for that handle (`sonde.propagate`, default on:
//! it changes what the callee receives, never what this app returns).
//! A handle run by `curl_multi` is one external span from
//! `curl_multi_add_handle` (trace headers added then) lasting curl's own
//! transfer time, recorded at `curl_multi_remove_handle`.

use crate::hooks::{After, Before, Call, HookSpec};
use crate::module::{outgoing, with_spans};
use crate::{sys, zend};

const LIBRARY: crate::spans::Library = crate::spans::Library::CURL;
const CURLOPT_HTTPHEADER: i64 = 10023;

macro_rules! spec {
    ($f:expr, $rec:expr, $before:expr) => {
        HookSpec {
            class: None,
            function: $f,
            after: After::Now($rec),
            before: $before,
        }
    };
}

pub const HOOKS: &[HookSpec] = &[
    spec!(
        c"curl_init",
        |c| zend::curl_forget(zend::ret_obj(c)),
        Before::No
    ),
    spec!(
        c"curl_close",
        |c| zend::curl_forget(zend::arg_obj(c, 1)),
        Before::No
    ),
    spec!(
        c"curl_reset",
        |c| zend::curl_forget(zend::arg_obj(c, 1)),
        Before::No
    ),
    spec!(
        c"curl_copy_handle",
        |c| zend::curl_copied(zend::arg_obj(c, 1), zend::ret_obj(c)),
        Before::No
    ),
    spec!(c"curl_setopt", setopt, Before::No),
    spec!(c"curl_setopt_array", setopt_array, Before::No),
    spec!(c"curl_exec", exec, Before::Always(before_exec)),
    spec!(
        c"curl_multi_add_handle",
        multi_added,
        Before::Always(before_multi_add)
    ),
    spec!(c"curl_multi_remove_handle", multi_removed, Before::No),
];

fn setopt(call: &Call) {
    if zend::arg_long(call, 2) == CURLOPT_HTTPHEADER && zend::ret_type(call) == sys::IS_TRUE {
        zend::curl_remember(zend::arg_obj(call, 1), zend::arg_zval(call, 3), false);
    }
}

fn setopt_array(call: &Call) {
    zend::curl_remember(zend::arg_obj(call, 1), zend::arg_zval(call, 2), true);
}

fn before_exec(call: &Call) {
    crate::module::running(sonde_core::scoreboard::CURRENT_EXTERNAL, b"curl_exec");
    pass_trace_on(zend::arg_zval(call, 1));
}

/// A new span id for the call about to start (taken by the after-hook),
/// and the trace headers on handle `ch` unless `sonde.propagate` is off.
fn pass_trace_on(ch: *mut sys::zval) {
    let propagate = zend::setting_long(zend::Setting::SONDE_INI_PROPAGATE) != 0;
    if let Some(o) = outgoing() {
        if propagate {
            zend::curl_inject(
                ch,
                o.traceparent.as_str(),
                o.tracestate.as_deref().unwrap_or(""),
            );
        }
    }
}

fn exec(call: &Call) {
    let mut url = [0u8; 2048];
    let mut err = [0u8; 256];
    let failed = zend::ret_type(call) == sys::IS_FALSE;
    let info = zend::curl_info(zend::arg_zval(call, 1), &mut url, &mut err, failed);
    with_spans(|buf, req_start| {
        let span = buf.pop_pending();
        let (url, status, err) = info.unwrap_or((&[], 0, &[]));
        let err: &[u8] = if failed && err.is_empty() {
            b"failed (returned false)"
        } else {
            err
        };
        buf.external(
            LIBRARY,
            call.start.saturating_sub(req_start),
            call.end.saturating_sub(call.start),
            url,
            b"",
            status,
            if failed { err } else { &[] },
            span,
        );
    });
}

fn before_multi_add(call: &Call) {
    pass_trace_on(zend::arg_zval(call, 2));
}

fn multi_added(call: &Call) {
    let ch = zend::arg_obj(call, 2) as usize;
    with_spans(|buf, _| {
        let span = buf.pop_pending();
        buf.multi_start(ch, call.start, span);
    });
}

fn multi_removed(call: &Call) {
    let chz = zend::arg_zval(call, 2);
    let ch = zend::arg_obj(call, 2) as usize;
    let mut url = [0u8; 2048];
    let mut err = [0u8; 256];
    let info = zend::curl_info(chz, &mut url, &mut err, true);
    let total = zend::curl_total_time(chz);
    let total_ticks = total.map(|t| crate::module::ns_to_ticks(t * 1e9));
    with_spans(|buf, req_start| {
        let Some((start, span)) = buf.multi_end(ch) else {
            return;
        };
        let (url, status, err) = info.unwrap_or((&[], 0, &[]));
        let duration = total_ticks.unwrap_or_else(|| call.start.saturating_sub(start));
        buf.external(
            LIBRARY,
            start.saturating_sub(req_start),
            duration,
            url,
            b"",
            status,
            err,
            span,
        );
    });
}
