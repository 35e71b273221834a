//! Building and framing the per-request `sonde.v1.RequestRecord`. PHP-free:
//! the `module` side captures raw values from Zend and hands them here.
//! Runs once per request at request end, never inside a hook, and writes
//! the protobuf bytes directly (`pb`): no message structs are built.

use std::borrow::Cow;

use sonde_core::endpoint::EndpointNamer;
use sonde_core::frame;
use sonde_core::ids::IdGen;
use sonde_core::redact;
use sonde_core::trace::{parse_traceparent, sonde_parent};

use crate::pb;
use crate::spans::{SpanBuf, StatementCache};

/// What the extension saw of one finished request.
#[derive(Debug, Default)]
pub struct Captured<'a> {
    pub app: &'a str,
    pub pid: u32,
    pub start_unix_ns: i64,
    pub wall_ns: u64,
    pub method: &'a str,
    /// The request URI as received (path and query).
    pub uri: &'a str,
    pub status: u32,
    pub cpu_user_ns: u64,
    pub cpu_sys_ns: u64,
    pub peak_memory_bytes: u64,
    pub client_ip: &'a str,
    pub visitor_id: &'a str,
    pub queue_ns: u64,
    pub http_host: &'a str,
    /// Ids and trace context chosen when the request started.
    pub ids: Option<&'a Ids>,
    pub sapi: &'a str,
    pub php_version: &'a str,
    /// Extra query parameter names to redact (comma-separated ini value).
    pub extra_redact: &'a str,
    /// Texts cut because they did not fit (e.g. a very long URI).
    pub truncated_texts: u32,
    /// Records of this process dropped since the last one sent.
    pub dropped_records: u32,
    /// The name the application gave the transaction
    /// (`sonde_set_transaction_name()`), instead of the endpoint name.
    pub name: Option<&'a str>,
    /// Attributes the application added (`sonde_add_attribute()`).
    pub attributes: &'a [(String, String)],
    /// The extension's version.
    pub ext_version: &'a str,
}

/// A request's ids, chosen when it starts (so hooks can pass the trace on
/// to callees before the request ends).
#[derive(Debug, Clone, Default)]
pub struct Ids {
    /// The record (transaction) id.
    pub record: [u8; 16],
    pub trace: [u8; 16],
    /// This transaction's span id.
    pub span: [u8; 8],
    /// The caller's span id, from an incoming `traceparent`.
    pub parent_span: Option<[u8; 8]>,
    /// The caller's record id, from an incoming `tracestate` (`sonde=`).
    pub parent_record: Option<[u8; 16]>,
    /// The incoming `tracestate`, passed on.
    pub tracestate: String,
}

/// Per-process record builder: id generator, endpoint namer and a reused
/// encode buffer.
#[derive(Debug)]
pub struct Builder {
    ids: IdGen,
    namer: EndpointNamer,
    /// The `sonde.endpoint_params` value `namer` was set from.
    endpoint_params: String,
    buf: Vec<u8>,
}

impl Builder {
    /// A builder whose ids are seeded with `seed` (different per process).
    pub fn new(seed: [u64; 2]) -> Self {
        Builder {
            ids: IdGen::new(seed[0], seed[1]),
            namer: EndpointNamer::default(),
            endpoint_params: String::new(),
            buf: Vec::with_capacity(4096),
        }
    }

    /// Ids for a request starting now, continuing the caller's trace when
    /// `traceparent` is valid.
    pub fn start(&mut self, traceparent: Option<&str>, tracestate: Option<&str>) -> Ids {
        let incoming = traceparent.and_then(parse_traceparent);
        Ids {
            record: self.ids.id128(),
            trace: match incoming {
                Some(tp) => tp.trace_id,
                None => self.ids.id128(),
            },
            span: self.ids.id64(),
            parent_span: incoming.map(|tp| tp.parent_id),
            parent_record: incoming.and(tracestate).and_then(sonde_parent),
            // W3C: without a valid `traceparent`, `tracestate` is ignored
            // (not passed on to callees either).
            tracestate: incoming.and(tracestate).unwrap_or_default().to_string(),
        }
    }

    /// Query parameters kept in endpoint names (`sonde.endpoint_params`, a
    /// comma-separated list, e.g. `r` for `index.php?r=site/login`). Cheap
    /// when unchanged.
    pub fn set_endpoint_params(&mut self, list: &str) {
        if list == self.endpoint_params {
            return;
        }
        self.endpoint_params.clear();
        self.endpoint_params.push_str(list);
        let same = self.namer.keep_query_params.len()
            == list.split(',').filter(|p| !p.trim().is_empty()).count()
            && list
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .zip(&self.namer.keep_query_params)
                .all(|(a, b)| a == b);
        if !same {
            self.namer.keep_query_params = list
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
        }
    }

    /// A new span id (for an outgoing call).
    pub fn span_id(&mut self) -> [u8; 8] {
        self.ids.id64()
    }

    /// Encodes the record of `c` — with the spans, error, warnings and
    /// span drops of `spans` when given — as one frame in the reused
    /// buffer: protobuf written straight from the captured values (see
    /// `pb`), the bytes prost would write for the same `ExtMessage`.
    pub fn frame(&mut self, c: &Captured<'_>, spans: Option<Spans<'_>>) -> &[u8] {
        let fallback;
        let ids = match c.ids {
            Some(ids) => ids,
            None => {
                fallback = self.start(None, None);
                &fallback
            }
        };
        let mut out = std::mem::take(&mut self.buf);
        // The record (field 1 of the frame's `ExtMessage`) is written after
        // room for the frame header, its tag and up to `LEN_ROOM` bytes of
        // length; once its length is known, header, tag and length are
        // written right before it, so the body never moves.
        out.clear();
        out.resize(BODY_AT, 0);
        pb::bytes(&mut out, 1, &ids.record);
        pb::str(
            &mut out,
            2,
            if c.app.is_empty() { "default" } else { c.app },
        );
        pb::uint(&mut out, 3, u64::from(c.pid));
        pb::int64(&mut out, 4, c.start_unix_ns);
        pb::uint(&mut out, 5, c.wall_ns);
        pb::str(&mut out, 6, c.method);
        pb::str(&mut out, 7, &redact_url(c.uri, c.extra_redact));
        match c.name {
            Some(name) => pb::str(&mut out, 8, name),
            None => pb::str(&mut out, 8, &self.namer.name(c.uri)),
        }
        pb::uint(&mut out, 9, u64::from(c.status));
        pb::uint(&mut out, 10, c.queue_ns);
        pb::uint(&mut out, 11, c.cpu_user_ns);
        pb::uint(&mut out, 12, c.cpu_sys_ns);
        pb::uint(&mut out, 13, c.peak_memory_bytes);
        pb::str(&mut out, 14, c.client_ip);
        pb::str(&mut out, 15, c.visitor_id);
        let t = pb::begin(&mut out, 16);
        pb::bytes(&mut out, 1, &ids.trace);
        pb::bytes(&mut out, 2, &ids.span);
        pb::bytes(&mut out, 3, ids.parent_span.as_ref().map_or(&[][..], |p| p));
        pb::bytes(
            &mut out,
            4,
            ids.parent_record.as_ref().map_or(&[][..], |p| p),
        );
        pb::str(&mut out, 5, &ids.tracestate);
        pb::end(&mut out, t);
        let (mut dropped_spans, mut truncated, mut warnings) = (0, c.truncated_texts, 0);
        if let Some(s) = spans {
            s.buf.encode_spans(&mut out, s.ns_per_tick, s.cache);
            s.buf.encode_error(&mut out, c.status);
            dropped_spans = s.buf.dropped_spans;
            truncated += s.buf.truncated_texts;
            warnings = s.buf.warnings;
        }
        let d = pb::begin(&mut out, 19);
        pb::uint(&mut out, 1, u64::from(dropped_spans));
        pb::uint(&mut out, 2, u64::from(c.dropped_records));
        pb::uint(&mut out, 3, u64::from(truncated));
        pb::end(&mut out, d);
        pb::str(&mut out, 20, c.sapi);
        pb::str(&mut out, 21, c.php_version);
        pb::str(&mut out, 22, c.ext_version);
        pb::str(&mut out, 24, c.http_host);
        for (k, v) in c.attributes {
            let a = pb::begin(&mut out, 25);
            pb::str(&mut out, 1, k);
            pb::str(&mut out, 2, v);
            pb::end(&mut out, a);
        }
        pb::uint(&mut out, 26, u64::from(warnings));
        let len = out.len() - BODY_AT;
        let mut head = Vec::with_capacity(0);
        let from = match BODY_AT.checked_sub(HEADER + 1 + pb::varint_len(len as u64)) {
            Some(from) => {
                let mut at = from;
                for b in frame_header() {
                    out[at] = b;
                    at += 1;
                }
                out[at] = 0x0a; // field 1, length-delimited
                let mut v = len as u64;
                for b in &mut out[at + 1..BODY_AT] {
                    *b = (v as u8 & 0x7f) | if v >= 0x80 { 0x80 } else { 0 };
                    v >>= 7;
                }
                from
            }
            None => {
                // Longer than any frame sent (2 MiB): the body moves.
                frame::start(&mut head, frame::Kind::ExtMessage);
                let m = pb::begin(&mut head, 1);
                head.extend_from_slice(&out[BODY_AT..]);
                pb::end(&mut head, m);
                out = head;
                0
            }
        };
        self.buf = out;
        &self.buf[from..]
    }
}

/// Bytes of the frame header (`frame::start`).
const HEADER: usize = 4;
/// Room left for the record's length: 3 varint bytes, up to 2 MiB.
const LEN_ROOM: usize = 3;
/// Where the record's body starts in the frame buffer.
const BODY_AT: usize = HEADER + 1 + LEN_ROOM;

/// The frame header of an `ExtMessage`, as `frame::start` writes it.
fn frame_header() -> [u8; HEADER] {
    [
        frame::MAGIC[0],
        frame::MAGIC[1],
        frame::VERSION,
        frame::Kind::ExtMessage as u8,
    ]
}

/// The `traceparent` of an outgoing call, `00-<trace>-<span>-01`, built
/// without allocating.
pub struct Traceparent([u8; 55]);

impl Traceparent {
    pub fn new(trace: &[u8; 16], span: &[u8; 8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut t = [b'-'; 55];
        t[..2].copy_from_slice(b"00");
        // 32 hex digits of the trace, a dash, 16 of the span.
        for (pair, b) in t[3..35].chunks_exact_mut(2).zip(trace) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 15)];
        }
        for (pair, b) in t[36..52].chunks_exact_mut(2).zip(span) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 15)];
        }
        t[53..].copy_from_slice(b"01");
        Traceparent(t)
    }

    pub fn as_str(&self) -> &str {
        // ASCII by construction.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The span buffer of a request, and what its encoding needs.
#[derive(Debug)]
pub struct Spans<'a> {
    pub buf: &'a mut SpanBuf,
    /// Ticks to nanoseconds for this process.
    pub ns_per_tick: f64,
    pub cache: &'a mut StatementCache,
}

/// `uri` with sensitive query values redacted (borrowed when none is).
fn redact_url<'a>(uri: &'a str, extra: &str) -> Cow<'a, str> {
    if !uri.contains('?') {
        return Cow::Borrowed(uri);
    }
    let redacted = if extra.trim().is_empty() {
        redact::redact_query(uri, redact::DEFAULT_SENSITIVE)
    } else {
        let mut names: Vec<&str> = redact::DEFAULT_SENSITIVE.to_vec();
        names.extend(extra.split(',').map(str::trim).filter(|s| !s.is_empty()));
        redact::redact_query(uri, &names)
    };
    match redacted {
        Some(r) => Cow::Owned(r),
        None => Cow::Borrowed(uri),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::RawSpan;
    use prost::Message;
    use sonde_proto::v1::{ext_message::Msg, ExtMessage, RequestRecord, SpanKind};

    /// Builds a frame and decodes it as the agent does.
    fn record(b: &mut Builder, c: &Captured<'_>, spans: Option<Spans<'_>>) -> RequestRecord {
        let bytes = b.frame(c, spans).to_vec();
        let (kind, payload) = frame::decode(&bytes).unwrap();
        assert_eq!(kind, frame::Kind::ExtMessage);
        match ExtMessage::decode(payload).unwrap().msg {
            Some(Msg::Record(r)) => r,
            other => panic!("not a record: {other:?}"),
        }
    }

    #[test]
    fn builds_a_decodable_frame() {
        let mut b = Builder::new([1, 2]);
        let c = Captured {
            app: "shop",
            pid: 42,
            start_unix_ns: 1_700_000_000_000_000_000,
            wall_ns: 51_000_000,
            method: "GET",
            uri: "/photos/17?lang=ko&token=secret",
            status: 200,
            extra_redact: "lang",
            ext_version: "9.9.9",
            ..Default::default()
        };
        let ids = b.start(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some(&format!("x=1,sonde={}", "cd".repeat(16))),
        );
        let c = Captured {
            ids: Some(&ids),
            ..c
        };
        let r = record(&mut b, &c, None);
        assert_eq!(r.id, ids.record);
        assert_eq!(r.app, "shop");
        assert_eq!(r.method, "GET");
        assert_eq!(r.url, "/photos/17?lang=[redacted]&token=[redacted]");
        assert_eq!(r.endpoint, "/photos/{num}");
        assert_eq!(r.status, 200);
        assert_eq!(r.wall_ns, 51_000_000);
        assert_eq!(r.ext_version, "9.9.9");
        let t = r.trace.unwrap();
        assert_eq!(t.trace_id[0], 0x4b);
        assert_eq!(t.parent_span_id.len(), 8);
        assert_eq!(t.span_id.len(), 8);
        assert_eq!(t.parent_record_id, vec![0xcd; 16]);
        assert_eq!(t.tracestate, format!("x=1,sonde={}", "cd".repeat(16)));
        // A `tracestate` without a valid `traceparent` is ignored (W3C).
        for tp in [None, Some("00-bad")] {
            let ids = b.start(tp, Some("x=1"));
            assert_eq!(ids.tracestate, "");
            assert_eq!(ids.parent_record, None);
        }
        assert!(r.dropped.is_some());
    }

    /// The hand-written encoding is the one prost writes for the same
    /// record: decode ours, encode it again with prost, compare bytes.
    #[test]
    fn same_bytes_as_prost_with_every_kind_of_span() {
        let mut b = Builder::new([7, 8]);
        let mut buf = SpanBuf::new(100);
        let mut cache = StatementCache::default();
        let push_sql = |buf: &mut SpanBuf, text: &str, start: u64, rows: i64| {
            let t = buf.text(text.as_bytes());
            let db = buf.db(1, || {
                Some((&b"pgsql"[..], &b"host=db port=5433 dbname=app"[..]))
            });
            buf.push(RawSpan {
                kind: SpanKind::Sql as i32,
                library: crate::spans::Library::PGSQL,
                start_ns: start,
                duration_ns: 1_000,
                text: t,
                db,
                rows,
                calls: 1,
                ..Default::default()
            })
        };
        let s = push_sql(
            &mut buf,
            "SELECT * FROM t WHERE id = $1 AND n = 'x'",
            500,
            3,
        );
        buf.open_result(9, s);
        buf.fetch(9, crate::spans::Library::PGSQL, 2_000, 2_500, 1);
        buf.fetch(9, crate::spans::Library::PGSQL, 2_600, 2_700, 1);
        // Pushed after a span that started later: encoded in start order.
        push_sql(&mut buf, &format!("SELECT '{}'", "é".repeat(200)), 100, -1);
        let slow = push_sql(&mut buf, "UPDATE t SET a = 1", 3_000, 0).unwrap();
        buf.set_location(slow, b"/app/x.php", 12);
        buf.cache(
            crate::spans::Library::REDIS,
            4_000,
            30,
            b"hGetAll",
            u16::MAX,
            b"",
        );
        buf.external(
            crate::spans::Library::SOAP,
            5_000,
            70_000,
            b"http://h/svc?wsdl",
            b"urn:svc#add",
            500,
            b"SoapFault: Server: boom",
            [1; 8],
        );
        buf.exception(6_000, b"RuntimeException", b"failed \xff");
        buf.php_error(2, b"", 0, b"a warning");
        let attributes = vec![("tier".to_string(), "gold".to_string())];
        let c = Captured {
            app: "shop",
            pid: 7,
            start_unix_ns: 1_700_000_000_000_000_000,
            wall_ns: 9_000_000,
            method: "POST",
            uri: "/cart?password=x",
            status: 503,
            cpu_user_ns: 5,
            cpu_sys_ns: 6,
            peak_memory_bytes: 2 << 20,
            client_ip: "10.0.0.1",
            visitor_id: "c1234",
            queue_ns: 77,
            http_host: "shop.example",
            sapi: "fpm-fcgi",
            php_version: "8.2.36",
            truncated_texts: 1,
            dropped_records: 2,
            name: Some("checkout"),
            attributes: &attributes,
            ..Default::default()
        };
        let spans = Spans {
            buf: &mut buf,
            ns_per_tick: 0.5,
            cache: &mut cache,
        };
        let ours = b.frame(&c, Some(spans)).to_vec();
        let (_, payload) = frame::decode(&ours).unwrap();
        let msg = ExtMessage::decode(payload).unwrap();
        assert_eq!(msg.encode_to_vec(), payload, "prost writes the same bytes");
        let Some(Msg::Record(r)) = msg.msg else {
            panic!("not a record")
        };
        assert_eq!(r.endpoint, "checkout");
        assert_eq!(r.url, "/cart?password=[redacted]");
        assert_eq!(r.warnings, 1);
        let kinds: Vec<i32> = r.spans.iter().map(|s| s.kind).collect();
        use SpanKind::*;
        assert_eq!(
            kinds,
            [Sql, Sql, Fetch, Sql, Cache, External, Error].map(|k| k as i32)
        );
        assert_eq!(r.spans[0].statement, "SELECT ?");
        assert_eq!(r.spans[0].rows, -1);
        assert_eq!(
            r.spans[1].statement,
            "SELECT * FROM t WHERE id = ? AND n = ?"
        );
        assert_eq!(r.spans[1].db, "postgresql://db:5433/app");
        assert_eq!((r.spans[2].calls, r.spans[2].rows), (2, 2));
        assert_eq!(r.spans[2].start_ns, 1_000);
        assert_eq!(
            (r.spans[3].file.as_str(), r.spans[3].line),
            ("/app/x.php", 12)
        );
        assert_eq!(r.spans[4].operation, "HGETALL");
        assert_eq!(r.spans[5].url, "http://h/svc");
        assert_eq!(r.spans[5].status, 500);
        assert_eq!(r.spans[5].operation, "urn:svc#add");
        assert_eq!(
            r.spans[6].exception.as_ref().unwrap().message,
            "failed \u{fffd}"
        );
        let e = r.error.unwrap();
        assert_eq!((e.class.as_str(), e.fatal), ("RuntimeException", false));
        let d = r.dropped.unwrap();
        assert_eq!((d.records, d.truncated_texts), (2, 1));
        assert_eq!(r.attributes.get("tier").map(String::as_str), Some("gold"));
    }

    #[test]
    fn frame_header_is_what_frame_start_writes() {
        let mut v = Vec::new();
        frame::start(&mut v, frame::Kind::ExtMessage);
        assert_eq!(v, frame_header());
    }

    /// Records whose length takes 1, 2 and 3 varint bytes: the frame is
    /// the same as written with the body moved.
    #[test]
    fn frame_of_every_length_size() {
        for name_len in [0usize, 100, 200, 20_000] {
            let mut b = Builder::new([9, 9]);
            let c = Captured {
                uri: "/",
                ..Default::default()
            };
            let name = "n".repeat(name_len);
            let c = Captured {
                name: Some(&name),
                ..c
            };
            let r = record(&mut b, &c, None);
            assert_eq!(r.endpoint, name);
            let bytes = b.frame(&c, None).to_vec();
            let (_, payload) = frame::decode(&bytes).unwrap();
            let msg = ExtMessage::decode(payload).unwrap();
            assert_eq!(msg.encode_to_vec(), payload);
        }
    }

    #[test]
    fn traceparent_without_allocating() {
        let (trace, span) = ([0x4b; 16], [0xf0, 1, 2, 3, 4, 5, 6, 0xff]);
        assert_eq!(
            Traceparent::new(&trace, &span).as_str(),
            sonde_core::trace::traceparent(&trace, &span)
        );
    }

    #[test]
    fn routing_query_parameters_name_endpoints() {
        let mut b = Builder::new([5, 6]);
        let c = Captured {
            uri: "/index.php?id=9&r=site/login",
            ..Default::default()
        };
        assert_eq!(record(&mut b, &c, None).endpoint, "/index.php");
        b.set_endpoint_params(" r ");
        assert_eq!(record(&mut b, &c, None).endpoint, "/index.php?r=site/login");
        b.set_endpoint_params("");
        assert_eq!(record(&mut b, &c, None).endpoint, "/index.php");
    }

    #[test]
    fn new_trace_when_no_parent_and_unique_ids() {
        let mut b = Builder::new([3, 4]);
        let c = Captured {
            uri: "/",
            ..Default::default()
        };
        let r1 = record(&mut b, &c, None);
        let r2 = record(&mut b, &c, None);
        assert_ne!(r1.id, r2.id);
        assert_eq!(r1.app, "default");
        let t1 = r1.trace.unwrap();
        assert_eq!(t1.trace_id.len(), 16);
        assert!(t1.parent_span_id.is_empty());
        assert_ne!(t1.trace_id, r2.trace.unwrap().trace_id);
    }
}
