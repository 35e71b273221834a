//! One request record as the agent holds it: the extension's encoding of a
//! `sonde.v1.RequestRecord`, checked (`sources::wire`) but never decoded
//! into a struct or re-encoded, plus the encoded fields the agent adds
//! (its host name), appended after it — in protobuf the last value of a
//! field wins, so the collector decodes the record with the agent's value.
//! The record's bytes, id included, reach the collector exactly as the
//! worker wrote them, through batching, spooling and replay alike.

use prost::bytes::{BufMut, Bytes};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;
use sonde_proto::v1::RequestRecord;

/// `RequestRecord.host`.
const HOST_TAG: u32 = 23;

/// An encoded record, cheap to clone (reference-counted bytes, usually a
/// slice of the buffer it was read into).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    body: Bytes,
    /// Encoded fields appended to `body` (empty: none).
    suffix: Bytes,
    /// For a record read from the ring, the ring offset just past it (0:
    /// from elsewhere): the ring frees its space once the record is durable
    /// (`buffer::durable`).
    ring_end: u64,
}

impl Record {
    /// `body` as received, followed by `suffix` (encoded fields).
    pub fn new(body: Bytes, suffix: Bytes) -> Record {
        Record {
            body,
            suffix,
            ring_end: 0,
        }
    }

    /// The record, read from the ring up to `offset`.
    pub fn with_ring_end(mut self, offset: u64) -> Record {
        self.ring_end = offset;
        self
    }

    /// The ring offset just past it; 0 when it did not come from the ring.
    pub fn ring_end(&self) -> u64 {
        self.ring_end
    }

    /// A record the agent makes itself (a worker that died mid-request).
    pub fn from_message(r: &RequestRecord) -> Record {
        Record::new(r.encode_to_vec().into(), Bytes::new())
    }

    /// Bytes of the encoded `RequestRecord`.
    pub fn len(&self) -> usize {
        self.body.len() + self.suffix.len()
    }

    /// Bytes it adds to an encoded `Batch` (field key, length, record).
    pub fn wire_len(&self) -> usize {
        let len = self.len();
        1 + encoded_len_varint(len as u64) + len
    }

    /// Writes the record as field `tag` (length-delimited) of a message.
    pub fn put_field(&self, tag: u32, buf: &mut impl BufMut) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(self.len() as u64, buf);
        buf.put_slice(&self.body);
        buf.put_slice(&self.suffix);
    }

    /// The record decoded (tests and checks; the agent itself never needs it).
    #[cfg(test)]
    pub fn decode(&self) -> RequestRecord {
        let mut all = self.body.to_vec();
        all.extend_from_slice(&self.suffix);
        RequestRecord::decode(all.as_slice()).expect("a record the agent holds decodes")
    }
}

/// The encoding of `RequestRecord.host = name`, to append to records that
/// come without a host.
pub fn host_field(name: &str) -> Bytes {
    if name.is_empty() {
        return Bytes::new();
    }
    let mut buf = Vec::with_capacity(name.len() + 8);
    prost::encoding::string::encode(HOST_TAG, &name.to_owned(), &mut buf);
    buf.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_appended_host_wins_and_the_rest_is_untouched() {
        let r = RequestRecord {
            id: vec![7; 16],
            app: "shop".into(),
            host: String::new(),
            url: "/x".into(),
            ..Default::default()
        };
        let rec = Record::new(r.encode_to_vec().into(), host_field("web-1"));
        let back = rec.decode();
        assert_eq!(back.host, "web-1");
        assert_eq!(
            RequestRecord {
                host: String::new(),
                ..back
            },
            r
        );
        let mut field = Vec::new();
        rec.put_field(2, &mut field);
        assert_eq!(field.len(), rec.wire_len());
        assert!(host_field("").is_empty());
    }
}
