//! PHP's own HTTP client: `file_get_contents()` and `fopen()` on `http://`
//! or `https://` URLs are external spans (URL without its query; an error
//! when the call failed). The HTTP status is not read: PHP leaves it only in
//! the caller's `$http_response_header`, which this extension does not
//! touch. Trace headers are not added here (that would mean rewriting the
//! app's stream context); use curl for linked calls.

use crate::hooks::{Call, HookSpec};
use crate::module::with_spans;
use crate::{sys, zend};

const LIBRARY: &str = "http-stream";

pub const HOOKS: &[HookSpec] = &[
    HookSpec {
        class: None,
        function: c"file_get_contents",
        record,
        before: Some(running),
    },
    HookSpec {
        class: None,
        function: c"fopen",
        record,
        before: Some(running),
    },
];

fn http_url(call: &Call) -> Option<&[u8]> {
    // Local files are the common case: decide on the first bytes, no copy.
    let url = zend::arg_str(call, 1)?;
    let is = |prefix: &[u8]| {
        url.get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    (is(b"http://") || is(b"https://")).then_some(url)
}

fn running(call: &Call) {
    if let Some(url) = http_url(call) {
        let cut = url.iter().position(|b| *b == b'?').unwrap_or(url.len());
        crate::module::running(sonde_core::scoreboard::CURRENT_EXTERNAL, &url[..cut]);
    }
}

fn record(call: &Call) {
    let Some(url) = http_url(call) else {
        return;
    };
    let failed = zend::ret_type(call) == sys::IS_FALSE;
    with_spans(|buf, req_start| {
        buf.external(
            LIBRARY,
            call.start.saturating_sub(req_start),
            call.end.saturating_sub(call.start),
            url,
            0,
            if failed {
                b"failed (returned false)"
            } else {
                b""
            },
            [0; 8],
        );
    });
}
