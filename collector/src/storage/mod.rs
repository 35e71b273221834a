//! Storage: the one [`Store`] interface every backend implements, and the
//! backend-independent meaning of a record (its end time, endpoint, whether
//! it failed, the detail view). Backends live below this module (`sqlite`
//! today, ClickHouse later); nothing above it knows which one runs.
//!
//! A `Store` blocks. Async code calls it through [`run_blocking`] and never
//! directly on the runtime.

pub mod codec;
pub mod detail;
pub mod naming;
pub mod retention;
pub mod rollup;
pub mod sqlite;

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;
use sonde_core::ids::{from_hex, to_hex};
use sonde_proto::v1::{AgentIdentity, HostMetrics, RequestRecord};
use thiserror::Error;

pub use detail::TxDetail;
pub use naming::EndpointNaming;
pub use retention::{Retention, StorageStats};
pub use rollup::{EndpointStats, ExternalStats, HostSeries, RollupRange, SqlStats, Step, Visitors};

/// What a storage operation can fail with.
#[derive(Debug, Error)]
pub enum StoreError {
    // Causes are part of the message (not `source()`), so a log line with
    // `%error` says everything and an error chain repeats nothing.
    #[error("cannot create storage directory {}: {cause}", path.display())]
    CreateDir {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error("database schema version {found} is newer than this collector's ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("storage backend: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    #[error("stored record {id} cannot be decoded: {cause}")]
    Corrupt {
        id: String,
        cause: prost::DecodeError,
    },
    #[error("storage task failed: {0}")]
    Task(String),
    #[error("{0} are not kept by this storage backend")]
    Unsupported(&'static str),
}

/// The storage interface: durable transactions and the agent registry.
/// Every method blocks until its work is done; a write that returns `Ok`
/// has been committed.
pub trait Store: Send + Sync {
    /// Stores each record once (by `RequestRecord.id`) and folds each newly
    /// stored one into the rollups, in one commit; records already stored
    /// are counted as duplicates and leave the rollups untouched. `fallback_host` is used for records
    /// whose `host` is empty (the sending agent's hostname).
    fn insert_records(
        &self,
        records: &[RequestRecord],
        fallback_host: &str,
    ) -> Result<InsertOutcome, StoreError>;

    /// Stores host-metrics samples once per (host, `ts_unix_ms`); a resent
    /// sample is ignored. `fallback_host` names samples without a hostname.
    /// Returns how many were new.
    fn insert_host_metrics(
        &self,
        metrics: &[HostMetrics],
        fallback_host: &str,
    ) -> Result<u32, StoreError>;

    /// Per (app, endpoint) totals over `range`, most total time first.
    fn endpoints(&self, range: &RollupRange) -> Result<Vec<EndpointStats>, StoreError>;

    /// Per SQL statement totals over `range` (optionally of one endpoint),
    /// most total time first.
    fn sql_statements(
        &self,
        range: &RollupRange,
        endpoint: Option<&str>,
    ) -> Result<Vec<SqlStats>, StoreError>;

    /// Per external URL (normalised) totals over `range`, optionally of one
    /// endpoint, most total time first.
    fn externals(
        &self,
        range: &RollupRange,
        endpoint: Option<&str>,
    ) -> Result<Vec<ExternalStats>, StoreError> {
        let _ = (range, endpoint);
        Err(StoreError::Unsupported("external-call rollups"))
    }

    /// Sizes and retention counters.
    fn storage_stats(&self) -> Result<StorageStats, StoreError> {
        Err(StoreError::Unsupported("storage statistics"))
    }

    /// Totals per step of `step_ms`, starting at `range.from_ms`: one
    /// [`Step`] per step up to `range.to_ms` (empty steps included). With
    /// `peak`, each step also gets its busiest second.
    fn steps(&self, range: &RollupRange, step_ms: i64, peak: bool)
        -> Result<Vec<Step>, StoreError>;

    /// Distinct visitors over `range` and per step of `step_ms` from
    /// `range.from_ms`, counted from the hourly sketches whose hour starts
    /// in the range (or step).
    fn visitors(&self, range: &RollupRange, step_ms: i64) -> Result<Visitors, StoreError>;

    /// Host-metrics samples in `[from_ms, to_ms]`, per host, at most
    /// `limit` samples in all (the most recent kept); the bool says whether
    /// some were left out.
    fn host_series(
        &self,
        from_ms: i64,
        to_ms: i64,
        host: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<HostSeries>, bool), StoreError>;

    /// Transaction summaries matching `filter`, oldest first.
    fn query_transactions(&self, filter: &TxFilter) -> Result<TxPage, StoreError>;

    /// One transaction with everything recorded about it, by its bare
    /// record id (a backend may look for it among recent transactions
    /// only: see [`Store::transaction_at`]).
    fn transaction(&self, record_id: &[u8]) -> Result<Option<TxDetail>, StoreError>;

    /// One transaction by its API id, which may carry its end time.
    fn transaction_at(&self, id: &TxId) -> Result<Option<TxDetail>, StoreError> {
        self.transaction(&id.record_id)
    }

    /// The request URLs of listed transactions (`None`: unknown, or its
    /// detail is past retention), in the order of `ids`.
    fn transaction_urls(&self, ids: &[TxId]) -> Result<Vec<Option<String>>, StoreError> {
        ids.iter()
            .map(|id| Ok(self.transaction_at(id)?.map(|d| d.url)))
            .collect()
    }

    /// Creates or updates an agent from its identity (the id is
    /// `identity.agent_id`), keyed by `identity_key` (see
    /// `ingest::registry`), flagged as a duplicate of another live agent or
    /// not, its signed identity checked (`verified`) or not; marks it
    /// running and seen at `now_ms`, and adds its `apps`.
    fn upsert_agent(
        &self,
        identity: &AgentIdentity,
        identity_key: &str,
        duplicate_of: Option<&str>,
        verified: Option<bool>,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// The agents registered under `identity_key`, most recently seen first.
    fn agents_by_key(&self, identity_key: &str) -> Result<Vec<AgentRecord>, StoreError>;

    /// The agent was heard from at `now_ms`. False if it is unknown.
    fn heartbeat(&self, agent_id: &str, now_ms: i64) -> Result<bool, StoreError>;

    /// Sets an agent's state. False if it is unknown.
    fn set_agent_state(
        &self,
        agent_id: &str,
        state: AgentState,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Adds applications seen in an agent's records.
    fn add_agent_apps(&self, agent_id: &str, apps: &[String]) -> Result<(), StoreError>;

    /// One agent.
    fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError>;

    /// Every agent ever registered, by id.
    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    /// Stores an alert event (its `id` and acknowledgement are ignored) and
    /// returns its new id.
    fn insert_event(&self, event: &EventRecord) -> Result<i64, StoreError>;

    /// Events with `from_ms <= ts_ms <= to_ms`, oldest first, at most
    /// `limit` (the most recent kept).
    fn list_events(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError>;

    /// Marks an event acknowledged by `by` at `now_ms` (the first
    /// acknowledgement stays). False if there is no such event.
    fn ack_event(&self, id: i64, by: &str, now_ms: i64) -> Result<bool, StoreError>;

    /// Waits for writes in progress and makes them durable; called once at
    /// shutdown.
    fn flush(&self) -> Result<(), StoreError>;

    // Alerting's own state. A backend without it answers `Unsupported`:
    // alerts then run from the config file alone, without deploy markers,
    // and forget what was firing when the collector restarts.

    /// Deletes events with `ts_ms < before_ms`; how many went.
    fn delete_events_before(&self, before_ms: i64) -> Result<u64, StoreError> {
        let _ = before_ms;
        Err(StoreError::Unsupported("event retention"))
    }

    /// Stores a deploy marker (its `id` is ignored); returns its id.
    fn insert_deploy(&self, deploy: &DeployRecord) -> Result<i64, StoreError> {
        let _ = deploy;
        Err(StoreError::Unsupported("deploy markers"))
    }

    /// Deploy markers with `from_ms <= ts_ms <= to_ms` (of `app` only when
    /// given), oldest first, at most `limit` (the most recent kept).
    fn list_deploys(
        &self,
        from_ms: i64,
        to_ms: i64,
        app: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeployRecord>, StoreError> {
        let _ = (from_ms, to_ms, app, limit);
        Err(StoreError::Unsupported("deploy markers"))
    }

    /// Deletes deploy markers with `ts_ms < before_ms`; how many went.
    fn delete_deploys_before(&self, before_ms: i64) -> Result<u64, StoreError> {
        let _ = before_ms;
        Err(StoreError::Unsupported("deploy markers"))
    }

    /// The alert rules made in the console, by name.
    fn list_console_rules(&self) -> Result<Vec<StoredRule>, StoreError> {
        Err(StoreError::Unsupported("console rules"))
    }

    /// Stores a new console rule. False if one of that name exists.
    fn insert_console_rule(&self, rule: &StoredRule) -> Result<bool, StoreError> {
        let _ = rule;
        Err(StoreError::Unsupported("console rules"))
    }

    /// Replaces the console rule of `rule.name`. False if there is none.
    fn update_console_rule(&self, rule: &StoredRule) -> Result<bool, StoreError> {
        let _ = rule;
        Err(StoreError::Unsupported("console rules"))
    }

    /// Deletes a console rule. False if there is none.
    fn delete_console_rule(&self, name: &str) -> Result<bool, StoreError> {
        let _ = name;
        Err(StoreError::Unsupported("console rules"))
    }

    /// The alert rules' per-scope state as last saved.
    fn load_alert_state(&self) -> Result<Vec<AlertStateRecord>, StoreError> {
        Err(StoreError::Unsupported("alert states"))
    }

    /// Replaces the saved alert state with `states`, in one commit.
    fn save_alert_state(&self, states: &[AlertStateRecord]) -> Result<(), StoreError> {
        let _ = states;
        Err(StoreError::Unsupported("alert states"))
    }

    /// Calls per (app, host) that ended in `[from_ms, to_ms)`, from the
    /// per-second rollup (the TPS rules' baseline).
    fn calls_by_app_host(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, String, u64)>, StoreError> {
        let _ = (from_ms, to_ms);
        Err(StoreError::Unsupported("per-second call counts"))
    }
}

/// A store shared between tasks.
pub type SharedStore = Arc<dyn Store>;

/// Runs `f` against the store on tokio's blocking pool.
pub async fn run_blocking<T, F>(store: &SharedStore, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(&*store))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// What happened to a batch's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InsertOutcome {
    /// Newly stored.
    pub stored: u32,
    /// Stored before (a replay or a resend).
    pub duplicates: u32,
    /// Not stored: no usable record id.
    pub invalid: u32,
    /// Not stored: they ended on a day whose data retention (or the disk
    /// guard) already dropped. Acknowledged all the same.
    pub expired: u32,
}

/// A transaction as the API names it: `id` in `/transactions` is the end
/// time (6 bytes, ms, big-endian) followed by the record id, in hex, so a
/// lookup goes straight to its day and time; a bare record id (from an
/// older link) is also accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxId {
    /// End time, when the id carries it.
    pub end_ms: Option<i64>,
    pub record_id: Vec<u8>,
}

/// Bytes of the end time in an API id.
const TX_ID_TIME_BYTES: usize = 6;

impl TxId {
    /// The API id of a stored record.
    pub fn format(end_ms: i64, record_id: &[u8]) -> String {
        let t = end_ms.to_be_bytes();
        let mut s = to_hex(&t[8 - TX_ID_TIME_BYTES..]);
        s.push_str(&to_hex(record_id));
        s
    }

    /// Reads an API id: 44 hex digits (time and a 16-byte record id) or a
    /// bare 16-byte record id (32 digits). `None` when neither.
    pub fn parse(s: &str) -> Option<TxId> {
        let bytes = from_hex(s)?;
        match bytes.len() {
            16 => Some(TxId {
                end_ms: None,
                record_id: bytes,
            }),
            n if n > TX_ID_TIME_BYTES => {
                let (t, id) = bytes.split_at(TX_ID_TIME_BYTES);
                // Sign-extend the 48-bit time.
                let fill = if t[0] & 0x80 != 0 { 0xff } else { 0 };
                let mut full = [fill; 8];
                full[8 - TX_ID_TIME_BYTES..].copy_from_slice(t);
                Some(TxId {
                    end_ms: Some(i64::from_be_bytes(full)),
                    record_id: id.to_vec(),
                })
            }
            _ => None,
        }
    }
}

/// A transactions query. Ranges are inclusive.
#[derive(Debug, Clone, PartialEq)]
pub struct TxFilter {
    /// End time from, epoch ms.
    pub from_ms: i64,
    /// End time to, epoch ms.
    pub to_ms: i64,
    pub app: Option<String>,
    pub endpoint: Option<String>,
    pub host: Option<String>,
    pub trace_id: Option<Vec<u8>>,
    /// Elapsed at least, ms.
    pub min_ms: Option<f64>,
    /// Elapsed at most, ms.
    pub max_ms: Option<f64>,
    pub errors_only: bool,
    /// At most this many. When more match, every failed and slow
    /// transaction is kept and the rest sampled evenly over the range (if
    /// the failed and slow ones alone are too many, they are sampled).
    pub limit: usize,
}

/// A page of transaction summaries, exactly as `GET /api/v1/transactions`
/// returns it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TxPage {
    pub transactions: Vec<TxSummary>,
    /// More matched than the limit allowed.
    pub truncated: bool,
    /// The transactions that are neither failed nor slow were sampled:
    /// about `sample_rate` of them are returned, evenly over the range
    /// (every failed and slow one is, unless they alone exceed the limit).
    pub sampled: bool,
    /// The fraction of ordinary transactions returned (1 when not sampled).
    pub sample_rate: f64,
    /// The fraction of failed and slow transactions returned: 1 unless
    /// they alone are more than the limit, when they are sampled evenly
    /// too (and no ordinary one is returned).
    pub notable_sample_rate: f64,
}

/// One point of the X-View.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TxSummary {
    /// The transaction's API id ([`TxId`]).
    pub id: String,
    /// End time, epoch ms.
    pub ts_ms: i64,
    pub elapsed_ms: f64,
    pub app: String,
    pub host: String,
    pub endpoint: String,
    pub status: u32,
    /// The transaction failed ([`is_failure`]).
    pub error: bool,
    /// Lower-case hex W3C trace id, if any.
    pub trace_id: Option<String>,
    pub method: String,
    /// The request URL, only when asked for (`with_url`): it is kept with
    /// the span detail, not in the summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// An alert event, as stored and as `GET /api/v1/events` shows it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct EventRecord {
    /// Assigned by the store; 0 before it is stored.
    pub id: i64,
    /// When the rule fired or resolved, epoch ms.
    pub ts_ms: i64,
    /// `warning` or `critical`.
    pub level: String,
    /// The rule's kind (`error_rate`, `agent_down`, …).
    pub kind: String,
    /// `firing` or `resolved`.
    pub state: String,
    pub message: String,
    pub app: Option<String>,
    pub endpoint: Option<String>,
    pub host: Option<String>,
    /// The rule's name.
    pub rule: String,
    /// The measured value when the event was made (unit of the rule's
    /// threshold).
    pub value: f64,
    pub threshold: f64,
    /// When it was acknowledged, epoch ms; null until then.
    pub acked_ms: Option<i64>,
    /// Who acknowledged it (a console user, or `api-token`).
    pub acked_by: Option<String>,
}

/// A deployment, as `POST /api/v1/deploys` records it and
/// `GET /api/v1/deploys` shows it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DeployRecord {
    /// Assigned by the store; 0 before it is stored.
    pub id: i64,
    /// When it was deployed, epoch ms.
    pub ts_ms: i64,
    pub app: String,
    pub version: String,
    pub description: String,
    /// Who deployed it (as the caller said, else the API principal).
    pub user: String,
}

/// An alert rule made in the console: its JSON (the `[[alerts.rules]]`
/// keys) as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRule {
    pub name: String,
    pub json: String,
    pub updated_ms: i64,
    pub updated_by: String,
}

/// Where one alert rule stands for one scope, saved so that a restarted
/// collector neither repeats a firing message nor forgets a silence.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertStateRecord {
    pub rule: String,
    pub app: Option<String>,
    pub endpoint: Option<String>,
    pub host: Option<String>,
    /// `ok`, `pending` or `firing`.
    pub phase: String,
    pub held: u32,
    /// The current firing was notified (not silenced).
    pub notified: bool,
    pub last_notified_ms: Option<i64>,
    pub last_sample_ms: Option<i64>,
}

/// An agent's own state, as last reported by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    /// Registered and not deregistered since.
    Running,
    /// Deregistered on purpose (service stopped).
    Stopped,
    /// Deregistered because its instance is going away.
    Terminated,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Running => "up",
            AgentState::Stopped => "stopped",
            AgentState::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "up" => Some(AgentState::Running),
            "stopped" => Some(AgentState::Stopped),
            "terminated" => Some(AgentState::Terminated),
            _ => None,
        }
    }
}

/// A registered agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    /// As last registered; `identity.agent_id` is the agent's id.
    pub identity: AgentIdentity,
    pub state: AgentState,
    pub last_seen_ms: i64,
    pub registered_ms: i64,
    /// Applications announced by the agent or seen in its records, sorted.
    pub apps: Vec<String>,
    /// What the id is keyed by (`aws:i-…`, `machine:…`); empty for agents
    /// registered before keys existed.
    pub identity_key: String,
    /// Another agent that was live with the same identity when this one
    /// registered: this one got an id of its own and is flagged.
    pub duplicate_of: Option<String>,
    /// Whether its signed instance-identity document verified when it
    /// last registered; `None` when not checked.
    pub verified: Option<bool>,
}

impl AgentRecord {
    /// The status the API shows: `up`, `down` (silent for longer than
    /// `down_after_ms`), `stopped` or `terminated`.
    pub fn status_at(&self, now_ms: i64, down_after_ms: i64) -> &'static str {
        match self.state {
            AgentState::Running if now_ms.saturating_sub(self.last_seen_ms) > down_after_ms => {
                "down"
            }
            state => state.as_str(),
        }
    }
}

/// Longest record id accepted. The protocol's ids are 16 bytes; anything
/// non-empty up to this length still deduplicates correctly.
pub const MAX_RECORD_ID_LEN: usize = 64;

/// Whether a transaction failed: an uncaught exception or fatal error, or
/// an HTTP status of 500 or more (CONTRACT.md).
pub fn is_failure(record: &RequestRecord) -> bool {
    record.error.as_ref().is_some_and(|e| e.fatal) || record.status >= 500
}

/// End time of a record, epoch ms.
pub fn end_ms(record: &RequestRecord) -> i64 {
    let wall = i64::try_from(record.wall_ns).unwrap_or(i64::MAX);
    record
        .start_unix_ns
        .saturating_add(wall)
        .div_euclid(1_000_000)
}

/// Wall time of a record, ms.
pub fn elapsed_ms(record: &RequestRecord) -> f64 {
    record.wall_ns as f64 / 1e6
}

/// The indexed columns of one record, as every backend stores them.
#[derive(Debug, Clone, PartialEq)]
pub struct TxRow<'a> {
    pub id: &'a [u8],
    pub end_ms: i64,
    pub elapsed_ms: f64,
    pub app: &'a str,
    pub host: &'a str,
    pub endpoint: Cow<'a, str>,
    pub method: &'a str,
    pub url: &'a str,
    pub status: u32,
    pub error: bool,
    pub trace_id: Option<&'a [u8]>,
}

impl<'a> TxRow<'a> {
    /// The row for `record`, or `None` when its id is unusable. The
    /// endpoint is named by `naming` (rules, else the extension's name,
    /// else derived from the URL); an empty host is `fallback_host`.
    pub fn from_record(
        record: &'a RequestRecord,
        fallback_host: &'a str,
        naming: &EndpointNaming,
    ) -> Option<Self> {
        if record.id.is_empty() || record.id.len() > MAX_RECORD_ID_LEN {
            return None;
        }
        let endpoint = naming.name(record);
        let host = if record.host.is_empty() {
            fallback_host
        } else {
            &record.host
        };
        let trace_id = record
            .trace
            .as_ref()
            .map(|t| t.trace_id.as_slice())
            .filter(|t| !t.is_empty());
        Some(TxRow {
            id: &record.id,
            end_ms: end_ms(record),
            elapsed_ms: elapsed_ms(record),
            app: &record.app,
            host,
            endpoint,
            method: &record.method,
            url: &record.url,
            status: record.status,
            error: is_failure(record),
            trace_id,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sonde_proto::v1::{ErrorInfo, TraceContext};

    /// A record ending at `end_ms` after `elapsed_ms`.
    pub(crate) fn record(id: u8, end_ms: i64, elapsed_ms: u64) -> RequestRecord {
        let wall_ns = elapsed_ms * 1_000_000;
        RequestRecord {
            id: vec![id; 16],
            app: "shop".into(),
            start_unix_ns: end_ms * 1_000_000 - wall_ns as i64,
            wall_ns,
            method: "GET".into(),
            url: format!("/users/{id}?x=1"),
            status: 200,
            ..Default::default()
        }
    }

    #[test]
    fn failure_rule() {
        let mut r = record(1, 1000, 5);
        assert!(!is_failure(&r));
        r.status = 499;
        assert!(!is_failure(&r));
        r.status = 500;
        assert!(is_failure(&r));
        r.status = 503;
        assert!(is_failure(&r));
        r.status = 200;
        r.error = Some(ErrorInfo {
            class: "RuntimeException".into(),
            fatal: false,
            ..Default::default()
        });
        assert!(
            !is_failure(&r),
            "a caught, non-fatal error does not fail it"
        );
        r.error.as_mut().unwrap().fatal = true;
        assert!(is_failure(&r));
        r.status = 0;
        assert!(is_failure(&r), "a CLI script with a fatal error failed");
    }

    #[test]
    fn end_time_and_elapsed() {
        let mut r = record(1, 0, 0);
        r.start_unix_ns = 1_700_000_000_123_400_000;
        r.wall_ns = 2_500_000;
        assert_eq!(end_ms(&r), 1_700_000_000_125);
        assert_eq!(elapsed_ms(&r), 2.5);
        r.wall_ns = u64::MAX;
        assert_eq!(end_ms(&r), i64::MAX / 1_000_000);
    }

    #[test]
    fn api_ids() {
        let id = TxId::format(1_700_000_000_123, &[0xab; 16]);
        assert_eq!(id.len(), 44);
        assert_eq!(
            TxId::parse(&id),
            Some(TxId {
                end_ms: Some(1_700_000_000_123),
                record_id: vec![0xab; 16]
            })
        );
        let neg = TxId::format(-5, &[1; 16]);
        assert_eq!(TxId::parse(&neg).unwrap().end_ms, Some(-5));
        assert_eq!(
            TxId::parse(&"cd".repeat(16)),
            Some(TxId {
                end_ms: None,
                record_id: vec![0xcd; 16]
            })
        );
        for bad in ["", "zz", "abc", &"00".repeat(6)] {
            assert_eq!(TxId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn row_fills_endpoint_and_host() {
        let namer = EndpointNaming::default();
        let mut r = record(7, 5000, 10);
        let row = TxRow::from_record(&r, "web-1", &namer).unwrap();
        assert_eq!(row.endpoint, "/users/{num}");
        assert_eq!(row.host, "web-1");
        assert_eq!(row.trace_id, None);
        r.endpoint = "/custom".into();
        r.host = "web-2".into();
        r.trace = Some(TraceContext {
            trace_id: vec![0xab; 16],
            ..Default::default()
        });
        let row = TxRow::from_record(&r, "web-1", &namer).unwrap();
        assert_eq!((row.endpoint.as_ref(), row.host), ("/custom", "web-2"));
        assert_eq!(row.id, [7; 16]);
        assert_eq!(row.trace_id, Some(&[0xab; 16][..]));
        assert_eq!((row.end_ms, row.elapsed_ms), (5000, 10.0));
        r.id.clear();
        assert!(TxRow::from_record(&r, "h", &namer).is_none());
    }

    #[test]
    fn agent_status() {
        let a = AgentRecord {
            identity: AgentIdentity::default(),
            state: AgentState::Running,
            last_seen_ms: 10_000,
            registered_ms: 0,
            apps: vec![],
            identity_key: String::new(),
            duplicate_of: None,
            verified: None,
        };
        assert_eq!(a.status_at(25_000, 15_000), "up");
        assert_eq!(a.status_at(25_001, 15_000), "down");
        let stopped = AgentRecord {
            state: AgentState::Stopped,
            ..a.clone()
        };
        assert_eq!(stopped.status_at(99_999, 15_000), "stopped");
        let gone = AgentRecord {
            state: AgentState::Terminated,
            ..a
        };
        assert_eq!(gone.status_at(0, 15_000), "terminated");
        for s in [
            AgentState::Running,
            AgentState::Stopped,
            AgentState::Terminated,
        ] {
            assert_eq!(AgentState::parse(s.as_str()), Some(s));
        }
    }
}
