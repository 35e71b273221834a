//! The transaction detail view (`GET /api/v1/transactions/{id}`), computed
//! from a stored record. Backend-independent: every backend keeps the whole
//! record and builds this view with [`TxDetail::from_record`].

use serde::Serialize;
use sonde_core::ids::to_hex;
use sonde_proto::v1::{ErrorInfo, RequestRecord, Span, SpanKind};

/// Everything recorded about one transaction.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TxDetail {
    pub id: String,
    /// End time, epoch ms.
    pub ts_ms: i64,
    pub app: String,
    pub host: String,
    pub endpoint: String,
    pub method: String,
    pub url: String,
    pub status: u32,
    pub elapsed_ms: f64,
    /// User plus system CPU time.
    pub cpu_ms: f64,
    /// Peak memory.
    pub memory_bytes: u64,
    pub sql_count: u64,
    pub sql_ms: f64,
    /// Rows fetched.
    pub fetch_count: u64,
    pub fetch_ms: f64,
    pub external_count: u64,
    pub external_ms: f64,
    pub cache_count: u64,
    pub cache_ms: f64,
    /// Time queued before PHP started.
    pub queue_ms: f64,
    /// The error that failed the request, if any.
    pub error: Option<ErrorView>,
    pub trace_id: Option<String>,
    /// The calling transaction's id, when the caller was traced by Sonde.
    pub parent_id: Option<String>,
    /// Spans the extension could not record.
    pub dropped_spans: u32,
    /// Warnings, notices and deprecations PHP raised.
    pub warnings: u32,
    /// Client address and hashed visitor id.
    pub client_ip: String,
    pub visitor_id: String,
    /// What the application added with `sonde_add_attribute()`.
    pub attributes: std::collections::BTreeMap<String, String>,
    pub sapi: String,
    pub php_version: String,
    pub spans: Vec<SpanView>,
    /// The span detail is past its retention (`[storage]
    /// spans_retention_days`): only the summary fields are filled.
    pub spans_expired: bool,
}

/// An error or exception.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorView {
    pub class: String,
    pub message: String,
    pub file: String,
    pub line: u32,
    pub fatal: bool,
}

impl From<&ErrorInfo> for ErrorView {
    fn from(e: &ErrorInfo) -> Self {
        ErrorView {
            class: e.class.clone(),
            message: e.message.clone(),
            file: e.file.clone(),
            line: e.line,
            fatal: e.fatal,
        }
    }
}

/// One span; fields that do not apply to its kind are left out.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SpanView {
    /// `sql`, `fetch`, `external`, `cache` or `error`.
    pub kind: &'static str,
    /// Offset from the transaction's start.
    pub start_ms: f64,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Why the call failed (SQL error, curl error…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Error spans: the exception class and message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    /// Slow SQL: the PHP file and line that issued it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn non_empty_hex(b: &[u8]) -> Option<String> {
    (!b.is_empty()).then(|| to_hex(b))
}

impl SpanView {
    /// The view of `span`, `None` for a kind this collector does not know.
    fn from_span(span: &Span) -> Option<Self> {
        let mut v = SpanView {
            kind: "",
            start_ms: ms(span.start_ns),
            duration_ms: ms(span.duration_ns),
            statement: None,
            db: None,
            rows: None,
            calls: None,
            url: None,
            status: None,
            operation: None,
            error: non_empty(&span.error),
            class: None,
            message: None,
            library: non_empty(&span.library),
            file: None,
            line: None,
        };
        match span.kind() {
            SpanKind::Sql => {
                v.kind = "sql";
                v.statement = Some(span.statement.clone());
                v.db = Some(span.db.clone());
                v.rows = Some(span.rows);
                v.file = non_empty(&span.file);
                v.line = (span.line > 0).then_some(span.line);
            }
            SpanKind::Fetch => {
                v.kind = "fetch";
                // The statement whose result set this fetch read, when the
                // extension attributed it.
                v.statement = non_empty(&span.statement);
                v.rows = Some(span.rows);
                v.calls = Some(span.calls);
                v.db = non_empty(&span.db);
            }
            SpanKind::External => {
                v.kind = "external";
                v.url = Some(span.url.clone());
                v.status = Some(span.status);
                v.operation = non_empty(&span.operation);
            }
            SpanKind::Cache => {
                v.kind = "cache";
                v.operation = Some(span.operation.clone());
                v.db = Some(span.db.clone());
            }
            SpanKind::Error => {
                v.kind = "error";
                let e = span.exception.clone().unwrap_or_default();
                v.class = Some(e.class);
                v.message = Some(e.message);
            }
            SpanKind::Unspecified => return None,
        }
        Some(v)
    }
}

impl TxDetail {
    /// The detail view of `record`, with the `host` and `endpoint` the
    /// store resolved for it.
    pub fn from_record(record: &RequestRecord, host: &str, endpoint: &str) -> Self {
        let mut d = TxDetail {
            id: to_hex(&record.id),
            ts_ms: super::end_ms(record),
            app: record.app.clone(),
            host: host.to_owned(),
            endpoint: endpoint.to_owned(),
            method: record.method.clone(),
            url: record.url.clone(),
            status: record.status,
            elapsed_ms: super::elapsed_ms(record),
            cpu_ms: ms(record.cpu_user_ns.saturating_add(record.cpu_sys_ns)),
            memory_bytes: record.peak_memory_bytes,
            sql_count: 0,
            sql_ms: 0.0,
            fetch_count: 0,
            fetch_ms: 0.0,
            external_count: 0,
            external_ms: 0.0,
            cache_count: 0,
            cache_ms: 0.0,
            queue_ms: ms(record.queue_ns),
            error: record.error.as_ref().map(ErrorView::from),
            trace_id: record
                .trace
                .as_ref()
                .and_then(|t| non_empty_hex(&t.trace_id)),
            parent_id: record
                .trace
                .as_ref()
                .and_then(|t| non_empty_hex(&t.parent_record_id)),
            dropped_spans: record.dropped.as_ref().map_or(0, |d| d.spans),
            warnings: record.warnings,
            client_ip: record.client_ip.clone(),
            visitor_id: record.visitor_id.clone(),
            attributes: record
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            sapi: record.sapi.clone(),
            php_version: record.php_version.clone(),
            spans: Vec::with_capacity(record.spans.len()),
            spans_expired: false,
        };
        for span in &record.spans {
            let duration = ms(span.duration_ns);
            match span.kind() {
                SpanKind::Sql => {
                    d.sql_count += 1;
                    d.sql_ms += duration;
                }
                SpanKind::Fetch => {
                    d.fetch_count += u64::try_from(span.rows).unwrap_or(0);
                    d.fetch_ms += duration;
                }
                SpanKind::External => {
                    d.external_count += 1;
                    d.external_ms += duration;
                }
                SpanKind::Cache => {
                    d.cache_count += 1;
                    d.cache_ms += duration;
                }
                SpanKind::Error | SpanKind::Unspecified => {}
            }
            d.spans.extend(SpanView::from_span(span));
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_proto::v1::{DropCounts, TraceContext};

    fn span(kind: SpanKind, start_ns: u64, duration_ns: u64) -> Span {
        Span {
            kind: kind as i32,
            start_ns,
            duration_ns,
            ..Default::default()
        }
    }

    #[test]
    fn computes_totals_and_spans() {
        let mut r = crate::storage::tests::record(3, 10_000, 100);
        r.cpu_user_ns = 3_000_000;
        r.cpu_sys_ns = 1_500_000;
        r.peak_memory_bytes = 2 << 20;
        r.trace = Some(TraceContext {
            trace_id: vec![1; 16],
            parent_record_id: vec![2; 16],
            ..Default::default()
        });
        r.dropped = Some(DropCounts {
            spans: 4,
            ..Default::default()
        });
        r.error = Some(ErrorInfo {
            class: "PDOException".into(),
            message: "gone away".into(),
            fatal: true,
            ..Default::default()
        });
        let mut sql = span(SpanKind::Sql, 1_000_000, 2_000_000);
        sql.statement = "SELECT * FROM t WHERE id = ?".into();
        sql.db = "mysql://db:3306/shop".into();
        sql.rows = 1;
        let mut failed_sql = span(SpanKind::Sql, 4_000_000, 500_000);
        failed_sql.error = "Deadlock found".into();
        let mut fetch = span(SpanKind::Fetch, 3_000_000, 250_000);
        fetch.rows = 40;
        fetch.calls = 41;
        fetch.statement = "SELECT * FROM t WHERE id = ?".into();
        let mut fetch2 = span(SpanKind::Fetch, 5_000_000, 250_000);
        fetch2.rows = 2;
        let mut ext = span(SpanKind::External, 6_000_000, 30_000_000);
        ext.url = "https://api.example.com/x?key=[redacted]".into();
        ext.status = 502;
        let mut cache = span(SpanKind::Cache, 40_000_000, 100_000);
        cache.operation = "GET".into();
        cache.db = "redis://cache:6379".into();
        let mut err = span(SpanKind::Error, 50_000_000, 0);
        err.exception = r.error.clone();
        let unknown = Span {
            kind: 99,
            ..Default::default()
        };
        r.spans = vec![sql, fetch, failed_sql, fetch2, ext, cache, err, unknown];

        let d = TxDetail::from_record(&r, "web-1", "/users/{num}");
        assert_eq!(d.id, "03".repeat(16));
        assert_eq!(d.ts_ms, 10_000);
        assert_eq!(d.elapsed_ms, 100.0);
        assert_eq!(d.cpu_ms, 4.5);
        assert_eq!(d.memory_bytes, 2 << 20);
        assert_eq!(d.sql_count, 2);
        assert_eq!(d.sql_ms, 2.5);
        assert_eq!(d.fetch_count, 42);
        assert_eq!(d.fetch_ms, 0.5);
        assert_eq!((d.external_count, d.external_ms), (1, 30.0));
        assert_eq!((d.cache_count, d.cache_ms), (1, 0.1));
        assert_eq!(d.trace_id.as_deref(), Some("01".repeat(16).as_str()));
        assert_eq!(d.parent_id.as_deref(), Some("02".repeat(16).as_str()));
        assert_eq!(d.dropped_spans, 4);
        assert_eq!(d.error.as_ref().unwrap().class, "PDOException");
        assert_eq!(d.spans.len(), 7, "the unknown kind is left out");

        let json = serde_json::to_value(&d).unwrap();
        let spans = json["spans"].as_array().unwrap();
        let kinds: Vec<_> = spans.iter().map(|s| s["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["sql", "fetch", "sql", "fetch", "external", "cache", "error"]
        );
        assert_eq!(spans[0]["statement"], "SELECT * FROM t WHERE id = ?");
        assert_eq!(spans[0]["db"], "mysql://db:3306/shop");
        assert_eq!(spans[0]["rows"], 1);
        assert_eq!(spans[0]["start_ms"], 1.0);
        assert_eq!(spans[0]["duration_ms"], 2.0);
        assert!(spans[0].get("error").is_none());
        assert_eq!(spans[2]["error"], "Deadlock found");
        assert_eq!(
            (spans[1]["rows"].as_i64(), spans[1]["calls"].as_i64()),
            (Some(40), Some(41))
        );
        assert_eq!(spans[1]["statement"], "SELECT * FROM t WHERE id = ?");
        assert!(spans[3].get("statement").is_none(), "no statement, no key");
        assert_eq!(spans[4]["url"], "https://api.example.com/x?key=[redacted]");
        assert_eq!(spans[4]["status"], 502);
        assert_eq!(spans[5]["operation"], "GET");
        assert_eq!(spans[5]["db"], "redis://cache:6379");
        assert_eq!(spans[6]["class"], "PDOException");
        assert_eq!(spans[6]["message"], "gone away");
        assert_eq!(json["error"]["message"], "gone away");
        for key in [
            "id",
            "ts_ms",
            "app",
            "host",
            "endpoint",
            "method",
            "url",
            "status",
            "elapsed_ms",
            "cpu_ms",
            "memory_bytes",
            "sql_count",
            "sql_ms",
            "fetch_count",
            "fetch_ms",
            "external_count",
            "external_ms",
            "error",
            "trace_id",
            "parent_id",
            "dropped_spans",
            "spans",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
    }

    #[test]
    fn empty_record_has_nulls() {
        let r = crate::storage::tests::record(1, 1, 1);
        let json = serde_json::to_value(TxDetail::from_record(&r, "h", "/e")).unwrap();
        assert!(json["error"].is_null());
        assert!(json["trace_id"].is_null());
        assert!(json["parent_id"].is_null());
        assert_eq!(json["dropped_spans"], 0);
        assert_eq!(json["spans"], serde_json::json!([]));
    }
}
