//! Checks what the extension sends without decoding it: a walk over the
//! protobuf encoding of a `sonde.v1.ExtMessage` that accepts exactly what
//! prost's decoder accepts (field keys, wire types of the known fields,
//! lengths, varints, UTF-8 of string fields, groups in unknown fields) and
//! picks out the few record fields the agent itself needs. The agent then
//! forwards the record's bytes as they came: a record that passes here
//! decodes at the collector, so one bad record can never spoil a batch.
//!
//! Stricter than prost in two corners only: a map field (`attributes`) must
//! come length-delimited, where prost reads it whatever its wire type says;
//! and nesting stops at 64 levels (prost's limit is 100 from the outermost
//! message, and the collector sees a record two levels deeper than here).
//!
//! The field table below mirrors `record.proto`; a test fails when a field
//! is added there and not here. Never panics, whatever the input.

use thiserror::Error;

/// Nesting allowed inside a record (the extension's records nest three
/// deep; only groups in unknown fields could go further).
const MAX_DEPTH: u32 = 64;

/// Why an encoding would not decode.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("truncated or overlong varint")]
    Varint,
    #[error("invalid field key")]
    Key,
    #[error("field {tag}: wrong wire type {wire_type}")]
    WireType { tag: u32, wire_type: u8 },
    #[error("field {tag}: length beyond the message")]
    Length { tag: u32 },
    #[error("field {tag}: string is not UTF-8")]
    Utf8 { tag: u32 },
    #[error("unbalanced group")]
    Group,
    #[error("nested too deeply")]
    Depth,
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// The messages a record is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    Record,
    Trace,
    Span,
    Error,
    Drops,
    /// An entry of `map<string, string>`.
    StrMap,
}

/// What a known field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Varint,
    Str,
    Bytes,
    Msg(Msg),
    Unknown,
}

/// The schema: `record.proto`, field by field.
fn field(msg: Msg, tag: u32) -> Field {
    use Field::{Bytes, Str, Unknown, Varint};
    match msg {
        Msg::Record => match tag {
            1 => Bytes,
            2 | 6 | 7 | 8 | 14 | 15 | 20 | 21 | 22 | 23 | 24 => Str,
            3 | 4 | 5 | 9 | 10 | 11 | 12 | 13 | 26 => Varint,
            16 => Field::Msg(Msg::Trace),
            17 => Field::Msg(Msg::Span),
            18 => Field::Msg(Msg::Error),
            19 => Field::Msg(Msg::Drops),
            25 => Field::Msg(Msg::StrMap),
            _ => Unknown,
        },
        Msg::Trace => match tag {
            1..=4 => Bytes,
            5 => Str,
            _ => Unknown,
        },
        Msg::Span => match tag {
            1 | 2 | 3 | 6 | 8 | 10 | 16 => Varint,
            4 | 5 | 7 | 9 | 11 | 12 | 15 => Str,
            13 => Field::Msg(Msg::Error),
            14 => Bytes,
            _ => Unknown,
        },
        Msg::Error => match tag {
            1..=3 => Str,
            4 | 5 => Varint,
            _ => Unknown,
        },
        Msg::Drops => match tag {
            1..=3 => Varint,
            _ => Unknown,
        },
        Msg::StrMap => match tag {
            1 | 2 => Str,
            _ => Unknown,
        },
    }
}

/// The record fields the agent looks at. `None`: absent from the encoding.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecordFields<'a> {
    pub id: Option<&'a [u8]>,
    pub app: Option<&'a str>,
    pub php_version: Option<&'a str>,
    pub ext_version: Option<&'a str>,
    pub host: Option<&'a str>,
    /// `dropped.records`.
    pub dropped_records: Option<u32>,
}

impl<'a> RecordFields<'a> {
    /// Protobuf merging: a field present in `later` wins.
    fn merge(&mut self, later: RecordFields<'a>) {
        self.id = later.id.or(self.id);
        self.app = later.app.or(self.app);
        self.php_version = later.php_version.or(self.php_version);
        self.ext_version = later.ext_version.or(self.ext_version);
        self.host = later.host.or(self.host);
        self.dropped_records = later.dropped_records.or(self.dropped_records);
    }
}

/// A cursor over one message's bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// As prost: at most 10 bytes, the tenth at most 1.
    #[inline]
    fn varint(&mut self) -> Result<u64, WireError> {
        // Most keys and lengths are one byte.
        match self.buf.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Ok(u64::from(b))
            }
            _ => self.varint_slow(),
        }
    }

    fn varint_slow(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(WireError::Varint);
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if i == 9 && b >= 0x02 {
                    return Err(WireError::Varint);
                }
                return Ok(value);
            }
        }
        Err(WireError::Varint)
    }

    /// A field key: (tag, wire type).
    fn key(&mut self) -> Result<(u32, u8), WireError> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(WireError::Key);
        }
        let wire_type = (key & 7) as u8;
        let tag = (key as u32) >> 3;
        if tag == 0 || wire_type > FIXED32 {
            return Err(WireError::Key);
        }
        Ok((tag, wire_type))
    }

    fn take(&mut self, len: u64, tag: u32) -> Result<&'a [u8], WireError> {
        let rest = (self.buf.len() - self.pos) as u64;
        if len > rest {
            return Err(WireError::Length { tag });
        }
        let s = &self.buf[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Ok(s)
    }

    fn delimited(&mut self, tag: u32) -> Result<&'a [u8], WireError> {
        let len = self.varint()?;
        self.take(len, tag)
    }

    /// Skips an unknown field as prost does (groups included).
    fn skip(&mut self, tag: u32, wire_type: u8, depth: u32) -> Result<(), WireError> {
        if depth == 0 {
            return Err(WireError::Depth);
        }
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8, tag).map(drop),
            FIXED32 => self.take(4, tag).map(drop),
            LEN => self.delimited(tag).map(drop),
            START_GROUP => loop {
                let (inner, wt) = self.key()?;
                if wt == END_GROUP {
                    return if inner == tag {
                        Ok(())
                    } else {
                        Err(WireError::Group)
                    };
                }
                self.skip(inner, wt, depth - 1)?;
            },
            _ => Err(WireError::Group),
        }
    }
}

fn expect(tag: u32, wire_type: u8, want: u8) -> Result<(), WireError> {
    if wire_type == want {
        Ok(())
    } else {
        Err(WireError::WireType { tag, wire_type })
    }
}

fn utf8(bytes: &[u8], tag: u32) -> Result<&str, WireError> {
    std::str::from_utf8(bytes).map_err(|_| WireError::Utf8 { tag })
}

fn ignore(_: u32, _: Option<&[u8]>, _: u64) {}

/// Checks one message of kind `msg`; `visit` sees every known field of it
/// (not of nested messages) with its value's bytes (varints: `None`).
fn check<'a>(
    buf: &'a [u8],
    msg: Msg,
    depth: u32,
    mut visit: impl FnMut(u32, Option<&'a [u8]>, u64),
) -> Result<(), WireError> {
    if depth == 0 {
        return Err(WireError::Depth);
    }
    let mut c = Cursor::new(buf);
    while !c.done() {
        let (tag, wire_type) = c.key()?;
        match field(msg, tag) {
            Field::Unknown => c.skip(tag, wire_type, depth)?,
            Field::Varint => {
                expect(tag, wire_type, VARINT)?;
                let v = c.varint()?;
                visit(tag, None, v);
            }
            Field::Bytes => {
                expect(tag, wire_type, LEN)?;
                let v = c.delimited(tag)?;
                visit(tag, Some(v), 0);
            }
            Field::Str => {
                expect(tag, wire_type, LEN)?;
                let v = c.delimited(tag)?;
                utf8(v, tag)?;
                visit(tag, Some(v), 0);
            }
            Field::Msg(inner) => {
                expect(tag, wire_type, LEN)?;
                let v = c.delimited(tag)?;
                check(v, inner, depth - 1, ignore)?;
                visit(tag, Some(v), 0);
            }
        }
    }
    Ok(())
}

/// Checks an encoded `RequestRecord` and returns the fields the agent uses.
pub fn check_record(buf: &[u8]) -> Result<RecordFields<'_>, WireError> {
    let mut f = RecordFields::default();
    // Validated by `check` before `visit` sees them.
    fn text(v: Option<&[u8]>) -> Option<&str> {
        v.and_then(|b| std::str::from_utf8(b).ok())
    }
    check(buf, Msg::Record, MAX_DEPTH, |tag, v, _| match tag {
        1 => f.id = v,
        2 => f.app = text(v),
        21 => f.php_version = text(v),
        22 => f.ext_version = text(v),
        23 => f.host = text(v),
        19 => {
            let mut records = None;
            let _ = check(v.unwrap_or_default(), Msg::Drops, 1, |t, _, n| {
                if t == 2 {
                    records = Some(n as u32);
                }
            });
            // Merged: an earlier `dropped` keeps its count unless this one has it.
            f.dropped_records = records.or(f.dropped_records);
        }
        _ => {}
    })?;
    Ok(f)
}

/// The record inside an `ExtMessage`: its bytes, as one slice of the
/// payload or (when the oneof field came in several pieces, which protobuf
/// merges) their concatenation.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordBytes<'a> {
    One(&'a [u8]),
    Merged(Vec<u8>),
}

/// What an `ExtMessage` holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Ext<'a> {
    Record(RecordBytes<'a>, RecordFields<'a>),
    /// An in-flight update (rare; the caller decodes it whole).
    Inflight,
    Empty,
}

/// Checks an encoded `ExtMessage` (the frame's payload).
pub fn check_ext(payload: &[u8]) -> Result<Ext<'_>, WireError> {
    let mut c = Cursor::new(payload);
    // The oneof as prost builds it: the last member wins; the same member
    // again merges into it.
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut fields = RecordFields::default();
    let mut inflight = false;
    while !c.done() {
        let (tag, wire_type) = c.key()?;
        match tag {
            1 => {
                expect(tag, wire_type, LEN)?;
                let v = c.delimited(tag)?;
                let f = check_record(v)?;
                if inflight || pieces.is_empty() {
                    pieces.clear();
                    fields = f;
                } else {
                    fields.merge(f);
                }
                inflight = false;
                pieces.push(v);
            }
            2 => {
                expect(tag, wire_type, LEN)?;
                c.delimited(tag)?;
                inflight = true;
            }
            _ => c.skip(tag, wire_type, MAX_DEPTH)?,
        }
    }
    Ok(match (inflight, pieces.len()) {
        (true, _) => Ext::Inflight,
        (false, 0) => Ext::Empty,
        (false, 1) => Ext::Record(RecordBytes::One(pieces[0]), fields),
        (false, _) => Ext::Record(RecordBytes::Merged(pieces.concat()), fields),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use sonde_proto::v1::{
        ext_message, DropCounts, ErrorInfo, ExtMessage, InflightUpdate, RequestRecord, Span,
        TraceContext,
    };

    /// Every field set (no `..Default::default()`: adding a field to
    /// record.proto breaks this until the table above knows it).
    fn full_record() -> RequestRecord {
        let error = ErrorInfo {
            class: "RuntimeException".into(),
            message: "boom ✓".into(),
            file: "/srv/app.php".into(),
            line: 12,
            fatal: true,
        };
        RequestRecord {
            id: vec![1; 16],
            app: "shop".into(),
            pid: 42,
            start_unix_ns: -5,
            wall_ns: 6,
            method: "GET".into(),
            url: "/p?x=1".into(),
            endpoint: "/p".into(),
            status: 200,
            queue_ns: 7,
            cpu_user_ns: 8,
            cpu_sys_ns: 9,
            peak_memory_bytes: 10,
            client_ip: "10.0.0.1".into(),
            visitor_id: "v".into(),
            trace: Some(TraceContext {
                trace_id: vec![2; 16],
                span_id: vec![3; 8],
                parent_span_id: vec![4; 8],
                parent_record_id: vec![5; 16],
                tracestate: "sonde=01".into(),
            }),
            spans: vec![Span {
                kind: 3,
                start_ns: 1,
                duration_ns: 2,
                statement: "SELECT ?".into(),
                db: "mysql://db".into(),
                rows: -1,
                url: "http://x/".into(),
                status: 503,
                error: "timeout".into(),
                calls: 4,
                operation: "GET".into(),
                library: "curl".into(),
                exception: Some(error.clone()),
                span_id: vec![6; 8],
                file: "/srv/a.php".into(),
                line: 9,
            }],
            error: Some(error),
            dropped: Some(DropCounts {
                spans: 1,
                records: 2,
                truncated_texts: 3,
            }),
            sapi: "fpm-fcgi".into(),
            php_version: "8.3.1".into(),
            ext_version: "0.1.0".into(),
            host: "web-1".into(),
            http_host: "shop.example".into(),
            attributes: [("k".to_string(), "v".to_string())].into(),
            warnings: 11,
        }
    }

    /// Every (message, tag) in an encoding, walking nested messages with
    /// the table.
    fn tags_in(buf: &[u8], msg: Msg, out: &mut Vec<(Msg, u32)>) {
        let mut c = Cursor::new(buf);
        while !c.done() {
            let (tag, wt) = c.key().unwrap();
            out.push((msg, tag));
            match field(msg, tag) {
                Field::Msg(inner) => {
                    let v = c.delimited(tag).unwrap();
                    tags_in(v, inner, out);
                }
                _ => c.skip(tag, wt, 10).unwrap(),
            }
        }
    }

    #[test]
    fn the_table_knows_every_field_of_record_proto() {
        let buf = full_record().encode_to_vec();
        let mut tags = Vec::new();
        tags_in(&buf, Msg::Record, &mut tags);
        assert!(tags.len() > 40, "{tags:?}");
        for (msg, tag) in tags {
            assert_ne!(field(msg, tag), Field::Unknown, "{msg:?} field {tag}");
        }
        let f = check_record(&buf).unwrap();
        assert_eq!(f.id, Some(&[1u8; 16][..]));
        assert_eq!(f.app, Some("shop"));
        assert_eq!(f.php_version, Some("8.3.1"));
        assert_eq!(f.ext_version, Some("0.1.0"));
        assert_eq!(f.host, Some("web-1"));
        assert_eq!(f.dropped_records, Some(2));
    }

    fn ext(msg: ext_message::Msg) -> Vec<u8> {
        ExtMessage { msg: Some(msg) }.encode_to_vec()
    }

    #[test]
    fn records_inflight_and_empty() {
        let rec = full_record();
        let buf = ext(ext_message::Msg::Record(rec.clone()));
        match check_ext(&buf).unwrap() {
            Ext::Record(RecordBytes::One(b), f) => {
                assert_eq!(RequestRecord::decode(b).unwrap(), rec);
                assert_eq!(f.host, Some("web-1"));
            }
            other => panic!("{other:?}"),
        }
        let buf = ext(ext_message::Msg::Inflight(InflightUpdate::default()));
        assert_eq!(check_ext(&buf).unwrap(), Ext::Inflight);
        assert_eq!(check_ext(&[]).unwrap(), Ext::Empty);
        // An absent host is absent, not empty.
        let bare = RequestRecord {
            id: vec![1],
            ..Default::default()
        };
        let buf = ext(ext_message::Msg::Record(bare));
        let Ext::Record(_, f) = check_ext(&buf).unwrap() else {
            panic!()
        };
        assert_eq!((f.host, f.dropped_records), (None, None));
    }

    #[test]
    fn a_record_in_pieces_is_merged_like_prost() {
        let a = RequestRecord {
            id: vec![1; 16],
            app: "a".into(),
            dropped: Some(DropCounts {
                records: 5,
                ..Default::default()
            }),
            ..Default::default()
        };
        let b = RequestRecord {
            app: "b".into(),
            host: "h".into(),
            ..Default::default()
        };
        let mut buf = ext(ext_message::Msg::Record(a));
        buf.extend(ext(ext_message::Msg::Record(b)));
        let want = match ExtMessage::decode(buf.as_slice()).unwrap().msg {
            Some(ext_message::Msg::Record(r)) => r,
            other => panic!("{other:?}"),
        };
        let Ext::Record(RecordBytes::Merged(bytes), f) = check_ext(&buf).unwrap() else {
            panic!()
        };
        assert_eq!(RequestRecord::decode(bytes.as_slice()).unwrap(), want);
        assert_eq!(f.app, Some("b"));
        assert_eq!(f.host, Some("h"));
        assert_eq!(f.id, Some(&[1u8; 16][..]));
        assert_eq!(f.dropped_records, Some(5));
        // An in-flight update after a record replaces it (the last member wins).
        buf.extend(ext(ext_message::Msg::Inflight(InflightUpdate::default())));
        assert_eq!(check_ext(&buf).unwrap(), Ext::Inflight);
    }

    /// Mutations of a record with every field set: whatever is accepted
    /// decodes with prost to what prost makes of the whole message, and
    /// what prost accepts is accepted (but for the map corner).
    #[test]
    fn mutated_full_records_agree_with_prost() {
        let base = ext(ext_message::Msg::Record(full_record()));
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (n, mut only_prost, mut accepted) = (30_000, 0, 0);
        for _ in 0..n {
            let mut f = base.clone();
            for _ in 0..(next() % 3 + 1) {
                let at = (next() as usize) % f.len();
                match next() % 4 {
                    0 => f[at] ^= 1 << (next() % 8),
                    1 => f.truncate(at),
                    2 => f.insert(at, next() as u8),
                    _ => f[at] = next() as u8,
                }
                if f.is_empty() {
                    break;
                }
            }
            let theirs = ExtMessage::decode(f.as_slice()).map(|m| m.msg);
            match (check_ext(&f), theirs) {
                (Ok(Ext::Record(bytes, _)), Ok(Some(ext_message::Msg::Record(want)))) => {
                    let bytes = match bytes {
                        RecordBytes::One(b) => b.to_vec(),
                        RecordBytes::Merged(v) => v,
                    };
                    assert_eq!(RequestRecord::decode(bytes.as_slice()).unwrap(), want);
                    accepted += 1;
                }
                (Ok(Ext::Record(..)), other) => panic!("{f:x?}: prost says {other:?}"),
                (Ok(Ext::Inflight), Ok(Some(ext_message::Msg::Inflight(_)))) => {}
                (Ok(Ext::Empty), Ok(None)) => {}
                (Err(_), Err(_)) => {}
                // An in-flight update is decoded whole by the caller.
                (Ok(Ext::Inflight), Err(_)) => {}
                (Err(_), Ok(_)) => only_prost += 1,
                (ours, theirs) => panic!("{f:x?}: {ours:?} against {theirs:?}"),
            }
        }
        assert!(accepted > n / 20, "{accepted}");
        assert!(
            only_prost <= n / 1000,
            "{only_prost} accepted by prost only"
        );
    }

    #[test]
    fn refuses_what_prost_refuses() {
        let ok = ext(ext_message::Msg::Record(full_record()));
        assert!(check_ext(&ok).is_ok());
        // A bad UTF-8 string inside a span, a wrong wire type, a length past
        // the end, tag 0, wire type 7, an unbalanced group.
        let mut bad_utf8 = full_record();
        bad_utf8.spans[0].statement = "SELECT \u{e9}".into();
        let mut enc = ext(ext_message::Msg::Record(bad_utf8));
        let at = enc.windows(2).position(|w| w == [0xc3, 0xa9]).unwrap();
        enc[at] = 0xff;
        for bad in [
            enc,
            vec![0x0a, 0x02, 0x0a, 0x00], // an empty record.id: fine for both
            vec![0x0a, 0x02, 0x18, 0x80], // record.pid: truncated varint
            vec![0x0a, 0x05, 0x08, 0x01], // record longer than the payload
            vec![0x00],                   // tag 0
            vec![0x0f],                   // wire type 7
            vec![0x0a, 0x02, 0x10, 0x01], // record.app (string) as a varint
            vec![0x0a, 0x02, 0xfb, 0x01], // group start without end
            vec![0x1c],                   // end group at the top
        ] {
            let theirs = ExtMessage::decode(bad.as_slice()).is_ok();
            let ours = check_ext(&bad).is_ok();
            assert_eq!(ours, theirs, "{bad:x?}");
        }
        // Unknown fields of every wire type, groups included, are skipped.
        let mut rec = RequestRecord {
            id: vec![9],
            ..Default::default()
        }
        .encode_to_vec();
        rec.extend([0xf8, 0x07, 0x01]); // field 127 varint
        rec.extend([0xfd, 0x07, 1, 2, 3, 4]); // fixed32
        rec.extend([0xf9, 0x07, 1, 2, 3, 4, 5, 6, 7, 8]); // fixed64
        rec.extend([0xfb, 0x07, 0x08, 0x01, 0xfc, 0x07]); // group with a varint
        let mut buf = vec![0x0a, rec.len() as u8];
        buf.extend(&rec);
        assert!(ExtMessage::decode(buf.as_slice()).is_ok());
        assert!(matches!(check_ext(&buf), Ok(Ext::Record(..))));
    }
}
