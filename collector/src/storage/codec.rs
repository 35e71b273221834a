//! The compact stored form of a record's detail (its spans and the fields
//! the summary columns do not hold). Backend-independent: repeated texts —
//! SQL statements, database instances, cache operations, library names,
//! SAPI and PHP versions, HTTP hosts — are written as ids of a dictionary
//! the backend keeps (`texts`), and span times as deltas, so ten spans take
//! about as many bytes as one protobuf-encoded statement would.
//!
//! What the summary columns already hold (id, app, host, endpoint, method,
//! status, wall time, trace id) is left out and given back by the
//! caller on decode. Anything not modelled here travels inside embedded
//! protobuf, so a field added to `RequestRecord` or `Span` later is kept.
//!
//! Layout (varints are LEB128):
//! ```text
//! u8      version (1)
//! varint  head: bit0 start given in full, bits1-4 sapi/php_version/
//!         ext_version/http_host are dictionary ids
//! varint  start: sub-ms remainder (see `start_rest`), or zigzag start ns
//! varint* dictionary ids named by head
//! varint  n, then n bytes: protobuf of the record with the above cleared
//! varint  span count, then per span:
//!   u8      bits0-2 kind (7: kind is in the protobuf), bit3 statement,
//!           bit4 db, bit5 operation, bit6 library (dictionary ids follow),
//!           bit7 protobuf follows
//!   varint  zigzag(start_ns − previous span's start_ns)
//!   varint  duration_ns
//!   varint* dictionary ids named by the flags
//!   [varint n, n bytes: protobuf of the span with those fields cleared]
//! ```

use prost::Message;
use sonde_proto::v1::{RequestRecord, Span};

// `stripped` below lists the record's fields kept in the embedded
// protobuf; `tests::every_record_field_is_kept` fails to compile when
// `RequestRecord` gains a field: decide where it goes.
use thiserror::Error;

const VERSION: u8 = 1;

/// Why a stored blob does not decode.
#[derive(Debug, Error)]
pub enum CodecError {
    #[error("unknown blob version {0}")]
    Version(u8),
    #[error("blob cut short")]
    Short,
    #[error("embedded protobuf: {0}")]
    Proto(#[from] prost::DecodeError),
    #[error("unknown text id {0}")]
    UnknownText(i64),
}

/// The fields of a record kept outside the blob, as the summary columns
/// hold them; what [`decode`] starts from.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    pub id: Vec<u8>,
    pub end_ms: i64,
    pub wall_ns: u64,
    pub app: String,
    pub host: String,
    pub endpoint: String,
    pub method: String,
    pub url: String,
    pub status: u32,
    pub trace_id: Option<Vec<u8>>,
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader(bytes)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        let (&b, rest) = self.0.split_first().ok_or(CodecError::Short)?;
        self.0 = rest;
        Ok(b)
    }

    pub(crate) fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(CodecError::Short)
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = usize::try_from(self.varint()?).map_err(|_| CodecError::Short)?;
        if n > self.0.len() {
            return Err(CodecError::Short);
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(b)
    }
}

/// The remainder that, with the end time and wall time, gives back the
/// start: `start = end_ms·10⁶ − wall_ns + rest`, `rest` in `[0, 10⁶)`.
/// `None` when it does not fit (absurd times); the start is then written
/// in full.
fn start_rest(record: &RequestRecord, end_ms: i64) -> Option<u64> {
    let wall = i64::try_from(record.wall_ns).ok()?;
    let base = end_ms.checked_mul(1_000_000)?.checked_sub(wall)?;
    let rest = record.start_unix_ns.checked_sub(base)?;
    (0..1_000_000).contains(&rest).then_some(rest as u64)
}

/// Encodes `record` (whose end time is `end_ms`) into `out`, asking `text`
/// for the dictionary id of each repeated text.
pub fn encode<E>(
    record: &RequestRecord,
    end_ms: i64,
    text: &mut impl FnMut(&str) -> Result<i64, E>,
    out: &mut Vec<u8>,
) -> Result<(), E> {
    out.push(VERSION);
    let rest = start_rest(record, end_ms);
    let dict = [
        &record.sapi,
        &record.php_version,
        &record.ext_version,
        &record.http_host,
    ];
    let mut head = u64::from(rest.is_none());
    for (i, s) in dict.iter().enumerate() {
        if !s.is_empty() {
            head |= 2 << i;
        }
    }
    put_varint(out, head);
    match rest {
        Some(r) => put_varint(out, r),
        None => put_varint(out, zigzag(record.start_unix_ns)),
    }
    for s in dict.iter().filter(|s| !s.is_empty()) {
        put_varint(out, text(s)? as u64);
    }

    // The rest of the record, without what is stored elsewhere, as
    // protobuf (written field by field: no copy of the record).
    put_varint(out, record_rest_len(record) as u64);
    record_rest_encode(record, out);

    put_varint(out, record.spans.len() as u64);
    let mut prev = 0u64;
    for span in &record.spans {
        let kind = u8::try_from(span.kind).ok().filter(|&k| k < 7).unwrap_or(7);
        let texts = [&span.statement, &span.db, &span.operation, &span.library];
        let mut flags = kind;
        for (i, s) in texts.iter().enumerate() {
            if !s.is_empty() {
                flags |= 8 << i;
            }
        }
        let rest_len = span_rest_len(span, kind == 7);
        if rest_len > 0 {
            flags |= 0x80;
        }
        out.push(flags);
        put_varint(out, zigzag(span.start_ns.wrapping_sub(prev) as i64));
        prev = span.start_ns;
        put_varint(out, span.duration_ns);
        for s in texts.iter().filter(|s| !s.is_empty()) {
            put_varint(out, text(s)? as u64);
        }
        if rest_len > 0 {
            put_varint(out, rest_len as u64);
            span_rest_encode(span, kind == 7, out);
        }
    }
    Ok(())
}

// The record's fields kept in the embedded protobuf, as prost encodes a
// `RequestRecord` holding only them (same tags; the trace context without
// its trace id, which is a column). `tests::every_record_field_is_kept`
// fails to compile when `RequestRecord` gains a field: add it here too.

fn trace_rest_len(t: &sonde_proto::v1::TraceContext) -> usize {
    use prost::encoding::{bytes, string};
    let mut n = 0;
    if !t.span_id.is_empty() {
        n += bytes::encoded_len(2, &t.span_id);
    }
    if !t.parent_span_id.is_empty() {
        n += bytes::encoded_len(3, &t.parent_span_id);
    }
    if !t.parent_record_id.is_empty() {
        n += bytes::encoded_len(4, &t.parent_record_id);
    }
    if !t.tracestate.is_empty() {
        n += string::encoded_len(5, &t.tracestate);
    }
    n
}

fn record_rest_len(r: &RequestRecord) -> usize {
    use prost::encoding::{encoded_len_varint, hash_map, key_len, message, string, uint32, uint64};
    let mut n = 0;
    if r.pid != 0 {
        n += uint32::encoded_len(3, &r.pid);
    }
    if !r.url.is_empty() {
        n += string::encoded_len(7, &r.url);
    }
    for (tag, v) in [
        (10, &r.queue_ns),
        (11, &r.cpu_user_ns),
        (12, &r.cpu_sys_ns),
        (13, &r.peak_memory_bytes),
    ] {
        if *v != 0 {
            n += uint64::encoded_len(tag, v);
        }
    }
    if !r.client_ip.is_empty() {
        n += string::encoded_len(14, &r.client_ip);
    }
    if !r.visitor_id.is_empty() {
        n += string::encoded_len(15, &r.visitor_id);
    }
    if let Some(t) = &r.trace {
        let len = trace_rest_len(t);
        n += key_len(16) + encoded_len_varint(len as u64) + len;
    }
    if let Some(e) = &r.error {
        n += message::encoded_len(18, e);
    }
    if let Some(d) = &r.dropped {
        n += message::encoded_len(19, d);
    }
    n += hash_map::encoded_len(string::encoded_len, string::encoded_len, 25, &r.attributes);
    if r.warnings != 0 {
        n += uint32::encoded_len(26, &r.warnings);
    }
    n
}

fn record_rest_encode(r: &RequestRecord, out: &mut Vec<u8>) {
    use prost::encoding::{
        bytes, encode_key, encode_varint, hash_map, message, string, uint32, uint64, WireType,
    };
    if r.pid != 0 {
        uint32::encode(3, &r.pid, out);
    }
    if !r.url.is_empty() {
        string::encode(7, &r.url, out);
    }
    for (tag, v) in [
        (10, &r.queue_ns),
        (11, &r.cpu_user_ns),
        (12, &r.cpu_sys_ns),
        (13, &r.peak_memory_bytes),
    ] {
        if *v != 0 {
            uint64::encode(tag, v, out);
        }
    }
    if !r.client_ip.is_empty() {
        string::encode(14, &r.client_ip, out);
    }
    if !r.visitor_id.is_empty() {
        string::encode(15, &r.visitor_id, out);
    }
    if let Some(t) = &r.trace {
        encode_key(16, WireType::LengthDelimited, out);
        encode_varint(trace_rest_len(t) as u64, out);
        if !t.span_id.is_empty() {
            bytes::encode(2, &t.span_id, out);
        }
        if !t.parent_span_id.is_empty() {
            bytes::encode(3, &t.parent_span_id, out);
        }
        if !t.parent_record_id.is_empty() {
            bytes::encode(4, &t.parent_record_id, out);
        }
        if !t.tracestate.is_empty() {
            string::encode(5, &t.tracestate, out);
        }
    }
    if let Some(e) = &r.error {
        message::encode(18, e, out);
    }
    if let Some(d) = &r.dropped {
        message::encode(19, d, out);
    }
    hash_map::encode(
        string::encode,
        string::encoded_len,
        string::encode,
        string::encoded_len,
        25,
        &r.attributes,
        out,
    );
    if r.warnings != 0 {
        uint32::encode(26, &r.warnings, out);
    }
}

// A span's fields besides kind, times and the dictionary texts, as the
// protobuf `Span` encodes them (same tags), written without building a
// `Span`. `tests::every_span_field_is_kept` fails to compile when `Span`
// gains a field: add it here too.

fn span_rest_len(span: &Span, kind: bool) -> usize {
    use prost::encoding::{bytes, int32, int64, message, string, uint32};
    let mut n = 0;
    if kind && span.kind != 0 {
        n += int32::encoded_len(1, &span.kind);
    }
    if span.rows != 0 {
        n += int64::encoded_len(6, &span.rows);
    }
    if !span.url.is_empty() {
        n += string::encoded_len(7, &span.url);
    }
    if span.status != 0 {
        n += uint32::encoded_len(8, &span.status);
    }
    if !span.error.is_empty() {
        n += string::encoded_len(9, &span.error);
    }
    if span.calls != 0 {
        n += uint32::encoded_len(10, &span.calls);
    }
    if let Some(e) = &span.exception {
        n += message::encoded_len(13, e);
    }
    if !span.span_id.is_empty() {
        n += bytes::encoded_len(14, &span.span_id);
    }
    if !span.file.is_empty() {
        n += string::encoded_len(15, &span.file);
    }
    if span.line != 0 {
        n += uint32::encoded_len(16, &span.line);
    }
    n
}

fn span_rest_encode(span: &Span, kind: bool, out: &mut Vec<u8>) {
    use prost::encoding::{bytes, int32, int64, message, string, uint32};
    if kind && span.kind != 0 {
        int32::encode(1, &span.kind, out);
    }
    if span.rows != 0 {
        int64::encode(6, &span.rows, out);
    }
    if !span.url.is_empty() {
        string::encode(7, &span.url, out);
    }
    if span.status != 0 {
        uint32::encode(8, &span.status, out);
    }
    if !span.error.is_empty() {
        string::encode(9, &span.error, out);
    }
    if span.calls != 0 {
        uint32::encode(10, &span.calls, out);
    }
    if let Some(e) = &span.exception {
        message::encode(13, e, out);
    }
    if !span.span_id.is_empty() {
        bytes::encode(14, &span.span_id, out);
    }
    if !span.file.is_empty() {
        string::encode(15, &span.file, out);
    }
    if span.line != 0 {
        uint32::encode(16, &span.line, out);
    }
}

/// The request URL in a blob made by [`encode`] (empty in blobs of
/// versions that kept it in the summary row).
pub fn url_of(blob: &[u8]) -> Result<String, CodecError> {
    let mut r = Reader(blob);
    let version = r.u8()?;
    if version != VERSION {
        return Err(CodecError::Version(version));
    }
    let head = r.varint()?;
    r.varint()?;
    for i in 0..4 {
        if head & (2 << i) != 0 {
            r.varint()?;
        }
    }
    Ok(RequestRecord::decode(r.bytes()?)?.url)
}

/// Decodes a blob made by [`encode`], filling in `cols`, looking texts up
/// with `text` (which answers `None` for an unknown id).
pub fn decode(
    blob: &[u8],
    cols: Columns,
    text: &mut impl FnMut(i64) -> Option<String>,
) -> Result<RequestRecord, CodecError> {
    let mut r = Reader(blob);
    let version = r.u8()?;
    if version != VERSION {
        return Err(CodecError::Version(version));
    }
    let mut lookup = |r: &mut Reader<'_>| -> Result<String, CodecError> {
        let id = r.varint()? as i64;
        text(id).ok_or(CodecError::UnknownText(id))
    };
    let head = r.varint()?;
    let start = r.varint()?;
    let start_unix_ns = if head & 1 == 1 {
        unzigzag(start)
    } else {
        cols.end_ms
            .wrapping_mul(1_000_000)
            .wrapping_sub(cols.wall_ns as i64)
            .wrapping_add(start as i64)
    };
    let mut dict: [String; 4] = Default::default();
    for (i, slot) in dict.iter_mut().enumerate() {
        if head & (2 << i) != 0 {
            *slot = lookup(&mut r)?;
        }
    }
    let mut record = RequestRecord::decode(r.bytes()?)?;
    let [sapi, php_version, ext_version, http_host] = dict;
    record.sapi = sapi;
    record.php_version = php_version;
    record.ext_version = ext_version;
    record.http_host = http_host;
    record.id = cols.id;
    record.app = cols.app;
    record.host = cols.host;
    record.endpoint = cols.endpoint;
    record.method = cols.method;
    // Older blobs left the URL to the summary row.
    if record.url.is_empty() {
        record.url = cols.url;
    }
    record.status = cols.status;
    record.wall_ns = cols.wall_ns;
    record.start_unix_ns = start_unix_ns;
    if let Some(trace_id) = cols.trace_id {
        record.trace.get_or_insert_with(Default::default).trace_id = trace_id;
    }

    let n = r.varint()?;
    record.spans = Vec::with_capacity(usize::try_from(n.min(4096)).unwrap_or(0));
    let mut prev = 0u64;
    for _ in 0..n {
        let flags = r.u8()?;
        let delta = unzigzag(r.varint()?);
        let start_ns = prev.wrapping_add(delta as u64);
        prev = start_ns;
        let duration_ns = r.varint()?;
        let mut texts: [String; 4] = Default::default();
        for (i, slot) in texts.iter_mut().enumerate() {
            if flags & (8 << i) != 0 {
                *slot = lookup(&mut r)?;
            }
        }
        let mut span = if flags & 0x80 != 0 {
            Span::decode(r.bytes()?)?
        } else {
            Span::default()
        };
        let kind = flags & 7;
        if kind != 7 {
            span.kind = i32::from(kind);
        }
        let [statement, db, operation, library] = texts;
        span.start_ns = start_ns;
        span.duration_ns = duration_ns;
        span.statement = statement;
        span.db = db;
        span.operation = operation;
        span.library = library;
        record.spans.push(span);
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_proto::v1::{DropCounts, ErrorInfo, SpanKind, TraceContext};
    use std::collections::HashMap;

    struct Dict(HashMap<String, i64>);

    impl Dict {
        fn id(&mut self, s: &str) -> Result<i64, ()> {
            let n = self.0.len() as i64 + 1;
            Ok(*self.0.entry(s.to_owned()).or_insert(n))
        }
        fn text(&self, id: i64) -> Option<String> {
            self.0
                .iter()
                .find(|(_, &v)| v == id)
                .map(|(k, _)| k.clone())
        }
    }

    fn columns(r: &RequestRecord) -> Columns {
        Columns {
            id: r.id.clone(),
            end_ms: crate::storage::end_ms(r),
            wall_ns: r.wall_ns,
            app: r.app.clone(),
            host: r.host.clone(),
            endpoint: r.endpoint.clone(),
            method: r.method.clone(),
            url: r.url.clone(),
            status: r.status,
            trace_id: r.trace.as_ref().map(|t| t.trace_id.clone()),
        }
    }

    fn round_trip(r: &RequestRecord) -> (RequestRecord, usize) {
        let mut d = Dict(HashMap::new());
        let mut out = Vec::new();
        encode(r, crate::storage::end_ms(r), &mut |s| d.id(s), &mut out).unwrap();
        let back = decode(&out, columns(r), &mut |id| d.text(id)).unwrap();
        (back, out.len())
    }

    fn full() -> RequestRecord {
        let mut r = crate::storage::tests::record(9, 1_700_000_000_123, 87);
        r.start_unix_ns += 456_789;
        r.wall_ns -= 456_789;
        r.host = "web-1".into();
        r.endpoint = "/users/{num}".into();
        r.pid = 4242;
        r.queue_ns = 1_000;
        r.cpu_user_ns = 5_000_000;
        r.cpu_sys_ns = 1_000_000;
        r.peak_memory_bytes = 2 << 20;
        r.client_ip = "10.0.0.7".into();
        r.visitor_id = "v-abc".into();
        r.sapi = "fpm-fcgi".into();
        r.php_version = "8.2.7".into();
        r.ext_version = "0.1.0".into();
        r.http_host = "shop.example".into();
        r.warnings = 3;
        r.attributes.insert("user".into(), "42".into());
        r.trace = Some(TraceContext {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: vec![3; 8],
            parent_record_id: vec![4; 16],
            tracestate: "a=b".into(),
        });
        r.error = Some(ErrorInfo {
            class: "E".into(),
            message: "m".into(),
            file: "/f.php".into(),
            line: 7,
            fatal: true,
        });
        r.dropped = Some(DropCounts {
            spans: 1,
            records: 2,
            truncated_texts: 3,
        });
        let mut spans = Vec::new();
        for i in 0..8u64 {
            spans.push(Span {
                kind: SpanKind::Sql as i32,
                start_ns: 1_000_000 + i * 1_500_000,
                duration_ns: 200_000 + i * 1000,
                statement: format!("SELECT * FROM t{} WHERE id = ?", i % 3),
                db: "mysql://db:3306/app".into(),
                rows: i as i64 - 2,
                library: "pdo".into(),
                error: if i == 5 {
                    "deadlock".into()
                } else {
                    String::new()
                },
                file: if i == 6 {
                    "/app/x.php".into()
                } else {
                    String::new()
                },
                line: if i == 6 { 12 } else { 0 },
                ..Default::default()
            });
        }
        spans.push(Span {
            kind: SpanKind::External as i32,
            start_ns: 500_000, // out of order
            duration_ns: 2_000_000,
            url: "https://api.example/v1/items/3".into(),
            status: 200,
            operation: "GET".into(),
            span_id: vec![5; 8],
            ..Default::default()
        });
        spans.push(Span {
            kind: SpanKind::Error as i32,
            start_ns: 20_000_000,
            exception: r.error.clone(),
            ..Default::default()
        });
        spans.push(Span {
            kind: 42,
            start_ns: 21_000_000,
            ..Default::default()
        });
        r.spans = spans;
        r
    }

    #[test]
    fn round_trips_everything() {
        let r = full();
        let (back, len) = round_trip(&r);
        assert_eq!(back, r);
        let proto = r.encoded_len();
        assert!(len * 2 < proto, "compact: {len} bytes vs protobuf {proto}");
    }

    /// Every field of `Span` and `RequestRecord` listed (no `..`): a new
    /// protobuf field breaks this until the codec handles it.
    #[test]
    fn every_span_field_is_kept() {
        let span = Span {
            kind: 3,
            start_ns: 10,
            duration_ns: 20,
            statement: "s".into(),
            db: "d".into(),
            rows: -3,
            url: "u".into(),
            status: 404,
            error: "e".into(),
            calls: 2,
            operation: "o".into(),
            library: "l".into(),
            exception: Some(ErrorInfo {
                class: "c".into(),
                message: "m".into(),
                file: "f".into(),
                line: 1,
                fatal: false,
            }),
            span_id: vec![7; 8],
            file: "/x.php".into(),
            line: 9,
        };
        let mut r = full();
        r.spans = vec![span.clone(), Span { kind: 77, ..span }];
        assert_eq!(round_trip(&r).0, r);
    }

    #[test]
    fn every_record_field_is_kept() {
        let base = full();
        let r = RequestRecord {
            id: vec![3; 16],
            app: "a".into(),
            pid: 7,
            start_unix_ns: base.start_unix_ns,
            wall_ns: base.wall_ns,
            method: "POST".into(),
            url: "/u".into(),
            endpoint: "/e".into(),
            status: 201,
            queue_ns: 5,
            cpu_user_ns: 6,
            cpu_sys_ns: 7,
            peak_memory_bytes: 8,
            client_ip: "ip".into(),
            visitor_id: "v".into(),
            trace: base.trace.clone(),
            spans: base.spans.clone(),
            error: base.error.clone(),
            dropped: base.dropped,
            sapi: "cli".into(),
            php_version: "8.3".into(),
            ext_version: "1".into(),
            host: "h".into(),
            http_host: "hh".into(),
            attributes: [("k".to_owned(), "v".to_owned())].into(),
            warnings: 4,
        };
        assert_eq!(round_trip(&r).0, r);
    }

    #[test]
    fn the_record_rest_is_what_prost_writes() {
        let mut r = full();
        r.attributes = [("k".to_owned(), "v".to_owned())].into();
        r.client_ip = "10.0.0.1".into();
        r.warnings = 3;
        let stripped = RequestRecord {
            pid: r.pid,
            url: r.url.clone(),
            queue_ns: r.queue_ns,
            cpu_user_ns: r.cpu_user_ns,
            cpu_sys_ns: r.cpu_sys_ns,
            peak_memory_bytes: r.peak_memory_bytes,
            client_ip: r.client_ip.clone(),
            visitor_id: r.visitor_id.clone(),
            trace: r.trace.clone().map(|mut t| {
                t.trace_id.clear();
                t
            }),
            error: r.error.clone(),
            dropped: r.dropped,
            attributes: r.attributes.clone(),
            warnings: r.warnings,
            ..Default::default()
        };
        let mut ours = Vec::new();
        record_rest_encode(&r, &mut ours);
        assert_eq!(ours, stripped.encode_to_vec());
        assert_eq!(record_rest_len(&r), ours.len());
        assert!(r.trace.as_ref().is_some_and(|t| !t.span_id.is_empty()));
    }

    #[test]
    fn round_trips_odd_times_and_empty_records() {
        let mut r = full();
        r.start_unix_ns = -5;
        r.wall_ns = u64::MAX;
        assert_eq!(round_trip(&r).0, r);
        let mut r = RequestRecord {
            id: vec![1],
            ..Default::default()
        };
        assert_eq!(round_trip(&r).0, r);
        r.trace = Some(TraceContext::default());
        assert_eq!(round_trip(&r).0, r);
    }

    #[test]
    fn bad_blobs_are_errors_not_panics() {
        let r = full();
        let mut d = Dict(HashMap::new());
        let mut out = Vec::new();
        encode(&r, crate::storage::end_ms(&r), &mut |s| d.id(s), &mut out).unwrap();
        for cut in 0..out.len() {
            let _ = decode(&out[..cut], columns(&r), &mut |id| d.text(id));
        }
        assert!(matches!(
            decode(&[9], columns(&r), &mut |_| None),
            Err(CodecError::Version(9))
        ));
        assert!(matches!(
            decode(&out, columns(&r), &mut |_| None),
            Err(CodecError::UnknownText(_))
        ));
    }
}
