//! Building and framing the per-request `sonde.v1.RequestRecord`. PHP-free:
//! the `module` side captures raw values from Zend and hands them here.
//! Runs once per request at request end, never inside a hook.

use prost::Message;
use sonde_core::endpoint::EndpointNamer;
use sonde_core::frame;
use sonde_core::ids::IdGen;
use sonde_core::redact;
use sonde_core::trace::{parse_traceparent, sonde_parent};
use sonde_proto::v1::{DropCounts, ExtMessage, RequestRecord, TraceContext};

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
    buf: Vec<u8>,
}

impl Builder {
    /// A builder whose ids are seeded with `seed` (different per process).
    pub fn new(seed: [u64; 2]) -> Self {
        Builder {
            ids: IdGen::new(seed[0], seed[1]),
            namer: EndpointNamer::default(),
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
            tracestate: tracestate.unwrap_or_default().to_string(),
        }
    }

    /// Query parameters kept in endpoint names (`sonde.endpoint_params`, a
    /// comma-separated list, e.g. `r` for `index.php?r=site/login`). Cheap
    /// when unchanged.
    pub fn set_endpoint_params(&mut self, list: &str) {
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

    /// Builds the record for `c`.
    pub fn record(&mut self, c: &Captured<'_>) -> RequestRecord {
        let url = redact_url(c.uri, c.extra_redact);
        let ids = match c.ids {
            Some(ids) => ids.clone(),
            None => self.start(None, None),
        };
        let trace = TraceContext {
            trace_id: ids.trace.to_vec(),
            span_id: ids.span.to_vec(),
            parent_span_id: ids.parent_span.map(|p| p.to_vec()).unwrap_or_default(),
            parent_record_id: ids.parent_record.map(|p| p.to_vec()).unwrap_or_default(),
            tracestate: ids.tracestate.clone(),
        };
        RequestRecord {
            id: ids.record.to_vec(),
            app: if c.app.is_empty() {
                "default".into()
            } else {
                c.app.into()
            },
            pid: c.pid,
            start_unix_ns: c.start_unix_ns,
            wall_ns: c.wall_ns,
            method: c.method.into(),
            endpoint: self.namer.name(c.uri),
            url,
            status: c.status,
            cpu_user_ns: c.cpu_user_ns,
            cpu_sys_ns: c.cpu_sys_ns,
            peak_memory_bytes: c.peak_memory_bytes,
            client_ip: c.client_ip.into(),
            visitor_id: c.visitor_id.into(),
            queue_ns: c.queue_ns,
            trace: Some(trace),
            dropped: Some(DropCounts {
                spans: 0,
                records: c.dropped_records,
                truncated_texts: c.truncated_texts,
            }),
            sapi: c.sapi.into(),
            php_version: c.php_version.into(),
            ext_version: crate::VERSION.into(),
            http_host: c.http_host.into(),
            ..Default::default()
        }
    }

    /// Encodes `record` as one socket frame, in the reused buffer.
    pub fn frame(&mut self, record: RequestRecord) -> &[u8] {
        let msg = ExtMessage {
            msg: Some(sonde_proto::v1::ext_message::Msg::Record(record)),
        };
        frame::start(&mut self.buf, frame::Kind::ExtMessage);
        // Encoding into a Vec cannot fail: it grows as needed.
        let _ = msg.encode(&mut self.buf);
        &self.buf
    }
}

fn redact_url(uri: &str, extra: &str) -> String {
    let extra: Vec<&str> = extra
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let redacted = if extra.is_empty() {
        redact::redact_query(uri, redact::DEFAULT_SENSITIVE)
    } else {
        let mut names: Vec<&str> = redact::DEFAULT_SENSITIVE.to_vec();
        names.extend(extra);
        redact::redact_query(uri, &names)
    };
    redacted.unwrap_or_else(|| uri.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let rec = b.record(&c);
        let id = rec.id.clone();
        let bytes = b.frame(rec).to_vec();
        let (kind, payload) = frame::decode(&bytes).unwrap();
        assert_eq!(kind, frame::Kind::ExtMessage);
        let msg = ExtMessage::decode(payload).unwrap();
        let Some(sonde_proto::v1::ext_message::Msg::Record(r)) = msg.msg else {
            panic!("not a record")
        };
        assert_eq!(r.id, id);
        assert_eq!(r.id.len(), 16);
        assert_eq!(r.app, "shop");
        assert_eq!(r.method, "GET");
        assert_eq!(r.url, "/photos/17?lang=[redacted]&token=[redacted]");
        assert_eq!(r.endpoint, "/photos/{num}");
        assert_eq!(r.status, 200);
        assert_eq!(r.wall_ns, 51_000_000);
        let t = r.trace.unwrap();
        assert_eq!(t.trace_id[0], 0x4b);
        assert_eq!(t.parent_span_id.len(), 8);
        assert_eq!(t.span_id.len(), 8);
        assert_eq!(t.parent_record_id, vec![0xcd; 16]);
        assert_eq!(t.tracestate, format!("x=1,sonde={}", "cd".repeat(16)));
    }

    #[test]
    fn routing_query_parameters_name_endpoints() {
        let mut b = Builder::new([5, 6]);
        let c = Captured {
            uri: "/index.php?id=9&r=site/login",
            ..Default::default()
        };
        assert_eq!(b.record(&c).endpoint, "/index.php");
        b.set_endpoint_params(" r ");
        assert_eq!(b.record(&c).endpoint, "/index.php?r=site/login");
        b.set_endpoint_params("");
        assert_eq!(b.record(&c).endpoint, "/index.php");
    }

    #[test]
    fn new_trace_when_no_parent_and_unique_ids() {
        let mut b = Builder::new([3, 4]);
        let c = Captured {
            uri: "/",
            ..Default::default()
        };
        let r1 = b.record(&c);
        let r2 = b.record(&c);
        assert_ne!(r1.id, r2.id);
        assert_eq!(r1.app, "default");
        let t1 = r1.trace.unwrap();
        assert_eq!(t1.trace_id.len(), 16);
        assert!(t1.parent_span_id.is_empty());
        assert_ne!(t1.trace_id, r2.trace.unwrap().trace_id);
    }
}
