//! SoapClient: each SOAP request is an external span — the endpoint
//! (`location`, query removed), the SOAP action as its operation, the HTTP
//! status and the fault (`faultcode: faultstring`).
//!
//! The span is the HTTP exchange, `SoapClient::__doRequest` (also when a
//! subclass overrides it and calls the parent; one that sends by other
//! means, e.g. curl, shows as that library's span). Its outcome is settled
//! when the enclosing `__soapCall`/`__call` returns: a fault the server
//! sent back is only parsed then. The HTTP status comes from the response
//! headers when PHP keeps them (the client's `trace` option); otherwise it
//! follows SOAP's HTTP binding: 200 for a response, 500 for a fault the
//! server answered with, 0 when the exchange itself failed (no connection,
//! a non-SOAP HTTP error: the fault then says which, e.g. `HTTP: Not
//! Found`). Trace headers are not added to SOAP requests.

use crate::hooks::{After, Before, Call, HookSpec};
use crate::module::with_spans;
use crate::{sys, zend};

const LIBRARY: crate::spans::Library = crate::spans::Library::SOAP;

pub const HOOKS: &[HookSpec] = &[
    HookSpec {
        class: Some(c"soapclient"),
        function: c"__dorequest",
        after: After::Now(request_done),
        before: Before::Always(request_starts),
    },
    HookSpec {
        class: Some(c"soapclient"),
        function: c"__soapcall",
        after: After::Now(call_done),
        before: Before::Always(call_starts),
    },
    HookSpec {
        class: Some(c"soapclient"),
        function: c"__call",
        after: After::Now(call_done),
        before: Before::Always(call_starts),
    },
];

fn call_starts(_: &Call) {
    with_spans(|buf, _| buf.pending_outcome = None);
}

fn request_starts(call: &Call) {
    let location = zend::arg_str(call, 2).unwrap_or_default();
    let cut = location
        .iter()
        .position(|b| *b == b'?')
        .unwrap_or(location.len());
    crate::module::running(sonde_core::scoreboard::CURRENT_EXTERNAL, &location[..cut]);
    // The headers a traced client keeps now: after the request, the same
    // text means none arrived (unless it answered again, identically).
    let mut h = [0u8; 512];
    let mark = zend::soap_last_headers(zend::this(call), &mut h).map_or(0, crate::spans::text_hash);
    with_spans(|buf, _| buf.pending_mark = mark);
}

fn request_done(call: &Call) {
    let client = zend::this(call);
    let location = zend::arg_str(call, 2).unwrap_or_default();
    let action = zend::arg_str(call, 3).unwrap_or_default();
    let responded = zend::ret_type(call) == sys::IS_STRING;
    let mut headers = [0u8; 512];
    let fresh = zend::soap_last_headers(client, &mut headers).filter(|h| {
        let mut before = 0;
        with_spans(|buf, _| before = buf.pending_mark);
        responded || crate::spans::text_hash(h) != before
    });
    let known = fresh.and_then(status_line);
    let mut err = [0u8; 700];
    let err_len = if zend::has_exception() {
        let (mut class, mut msg) = ([0u8; 128], [0u8; 512]);
        zend::exception(&mut class, &mut msg)
            .map_or(0, |(c, m)| join(&mut err, c.as_bytes(), m.as_bytes()))
    } else if !responded {
        let (mut code, mut msg) = ([0u8; 128], [0u8; 512]);
        match zend::soap_fault(zend::soap_client_fault(client), &mut code, &mut msg) {
            Some((c, m)) => join(&mut err, c, m),
            None => join(&mut err, b"failed", b"no response"),
        }
    } else {
        0
    };
    let status = known.unwrap_or(if responded { 200 } else { 0 });
    with_spans(|buf, req_start| {
        let idx = buf.external(
            LIBRARY,
            call.start.saturating_sub(req_start),
            call.end.saturating_sub(call.start),
            location,
            action,
            status,
            &err[..err_len],
            [0; 8],
        );
        buf.pending_outcome = idx.map(|i| (i, known.is_some()));
    });
}

/// The SOAP call returned: a fault (thrown, or returned when the client
/// has `exceptions => false`) settles its request's error and status.
fn call_done(call: &Call) {
    let mut pending = None;
    with_spans(|buf, _| pending = buf.pending_outcome.take());
    let Some((idx, status_known)) = pending else {
        return;
    };
    let fault = if zend::has_exception() {
        zend::pending_exception()
    } else {
        zend::ret_obj(call)
    };
    let (mut code, mut msg) = ([0u8; 128], [0u8; 512]);
    let Some((code, msg)) = zend::soap_fault(fault, &mut code, &mut msg) else {
        return;
    };
    let mut err = [0u8; 700];
    let n = join(&mut err, code, msg);
    with_spans(|buf, _| {
        let Some((status, _)) = buf.outcome(idx) else {
            return;
        };
        // A fault the server answered with comes with HTTP 500 (SOAP's HTTP
        // binding); "HTTP" faults are the exchange's own failures.
        let status = if !status_known && status == 200 && code != b"HTTP" {
            500
        } else {
            status
        };
        buf.set_outcome(idx, status, &err[..n]);
    });
}

/// "a: b" into `out`; its length.
fn join(out: &mut [u8; 700], a: &[u8], b: &[u8]) -> usize {
    let mut n = 0;
    for part in [a, b": ", b] {
        let k = part.len().min(out.len() - n);
        out[n..n + k].copy_from_slice(&part[..k]);
        n += k;
    }
    n
}

/// The status of the first line of HTTP response headers.
fn status_line(headers: &[u8]) -> Option<u32> {
    let line = headers.split(|b| *b == b'\n').next()?;
    let rest = line.strip_prefix(b"HTTP/")?;
    let code = rest.split(|b| *b == b' ').nth(1)?;
    let code = code.get(..3)?;
    code.iter()
        .all(u8::is_ascii_digit)
        .then(|| code.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
}
