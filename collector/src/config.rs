//! The collector's configuration file (TOML). Every key has a default, so an
//! empty file is a working loopback-only collector; unknown keys are refused
//! so a typo never falls back to a default silently. The `///` comments on
//! the fields are the operator reference (docs/collector.md repeats them).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sonde_core::pem::PemKind;
use thiserror::Error;

use crate::storage::rollup::SlowThresholds;
use crate::storage::sqlite::StoreOptions;
use crate::storage::{EndpointNaming, Retention};

/// The whole `collector.toml`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The gRPC listener agents connect to.
    pub grpc: GrpcConfig,
    /// The HTTP listener for the JSON API and the web console.
    pub http: HttpConfig,
    /// Where data is kept.
    pub storage: StorageConfig,
    /// Who may send data and who may read it.
    pub auth: AuthConfig,
    /// The web console.
    pub console: ConsoleConfig,
    /// The dashboard's live stream (`/api/v1/live`, `/api/v1/active`).
    pub live: LiveConfig,
    /// Alert rules and where their events are sent (docs/alerts.md).
    pub alerts: crate::alerts::AlertsConfig,
    /// How agents' cloud identities are checked.
    pub fleet: FleetConfig,
}

/// `[fleet]`
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// What to do with the signed AWS instance-identity document an agent
    /// sends at registration: `"off"` (not checked), `"flag"` (checked;
    /// an agent that fails is registered, shown as unverified and raises an
    /// `identity_unverified` event), `"require"` (an agent that fails is
    /// refused with PERMISSION_DENIED). Agents without a cloud identity are
    /// not affected.
    pub verify_identity: VerifyIdentity,
    /// PEM file of the AWS public certificates (RSA) for the regions the
    /// fleet runs in, as AWS publishes them for verifying instance-identity
    /// document signatures. Needed unless `verify_identity = "off"`.
    pub aws_identity_certs: Option<PathBuf>,
}

/// `[fleet] verify_identity`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VerifyIdentity {
    #[default]
    Off,
    Flag,
    Require,
}

/// `[live]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// Upper bounds, milliseconds, of the first three active-service
    /// buckets (the fourth holds the rest): requests in flight for less
    /// than 1 s, 1–3 s, 3–8 s and 8 s or more by default. Strictly rising.
    pub active_bounds_ms: [u64; 3],
    /// Seconds the dashboard's headline TPS, average and p90 are taken
    /// over (whole seconds, ending one second before the current one).
    /// 1 to 60.
    pub window_secs: u32,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            active_bounds_ms: crate::live::BOUNDS_MS,
            window_secs: 5,
        }
    }
}

/// `[grpc]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Address agents connect to, `IP:port`.
    pub listen: SocketAddr,
    /// Largest message an agent may send, bytes. Agents learn it from the
    /// Register answer and size their batches below it.
    pub max_message_bytes: u32,
    /// How often agents send heartbeats, milliseconds. An agent with no
    /// heartbeat for 3 intervals is shown as `down`, as is one whose stream
    /// dropped and has not come back within one interval.
    pub heartbeat_interval_ms: u32,
    /// PEM certificate chain of the gRPC port. With `tls_key`, agents must
    /// connect with TLS (`https://` in their `collector`); without, plain
    /// HTTP/2.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: when set, agents must also present a client
    /// certificate signed by one of them (mutual TLS; the agent token is
    /// still checked). Needs `tls_cert`.
    pub tls_client_ca: Option<PathBuf>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7717)),
            max_message_bytes: 16 * 1024 * 1024,
            heartbeat_interval_ms: 5000,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the JSON API and web console, `IP:port`.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7718)),
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory of the embedded database (created if absent).
    pub path: PathBuf,
    /// A transaction taking at least this long, milliseconds, is a "bad
    /// response" in the endpoint rollups, and is always kept when a huge
    /// scatter is sampled. Applied as data arrives: a change does not
    /// restate data already stored.
    pub slow_ms: u64,
    /// Per-application slow thresholds, milliseconds, overriding `slow_ms`:
    /// `slow_ms_by_app = { shop = 1000 }`.
    pub slow_ms_by_app: HashMap<String, u64>,
    /// Days the span detail of each transaction (`/transactions/{id}`) is
    /// kept, by whole UTC days: a day goes once all of it is older. At most
    /// `transactions_retention_days`.
    pub spans_retention_days: u32,
    /// Days transaction summaries (`/transactions`, the X-View) are kept,
    /// by whole UTC days. Records arriving for a day already dropped are
    /// acknowledged and not stored.
    pub transactions_retention_days: u32,
    /// Days the per-second rollups (peak TPS in reports, TPS alert
    /// baselines) are kept.
    pub second_rollups_retention_days: u32,
    /// Days the per-minute rollups (endpoints, SQL, external calls, hosts)
    /// are kept; older ranges are answered from the hour rollups.
    pub minute_rollups_retention_days: u32,
    /// Days the per-hour rollups and hourly visitor counts are kept.
    pub hour_rollups_retention_days: u32,
    /// Days host-metrics samples (`/hosts/series`) are kept.
    pub host_metrics_retention_days: u32,
    /// The disk guard: the database may hold at most this many bytes; past
    /// it the oldest raw data (a day's span detail, then its transactions)
    /// is dropped, never the newest day. 0: no cap.
    pub max_disk_bytes: u64,
    /// The disk guard: keep at least this many bytes free on the file
    /// system of `path` (free pages inside the database count as free),
    /// dropping the oldest raw data otherwise. 0: no floor.
    pub min_free_disk_bytes: u64,
    /// Seconds between retention runs and disk checks (retention also runs
    /// at start). At least 1.
    pub retention_interval_secs: u64,
    /// Endpoint naming rules, tried in order on each arriving record's URL
    /// (path and query) before the default naming (the extension's name,
    /// else identifier-like path segments grouped):
    /// `endpoint_rules = [{ match = '^/index\.php\?(?:.*&)?r=([^&]*)', name = "/index.php?r=$1" }]`.
    /// A change applies to records arriving after it.
    pub endpoint_rules: Vec<EndpointRuleConfig>,
}

/// One `[storage] endpoint_rules` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointRuleConfig {
    /// A regular expression (Rust `regex` syntax) searched in the URL.
    #[serde(rename = "match")]
    pub pattern: String,
    /// The endpoint name when it matches; `$1`, `${name}` are the
    /// expression's captures.
    pub name: String,
    /// Only for this application (`sonde.app_name`); all when absent.
    #[serde(default)]
    pub app: Option<String>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        let r = Retention::default();
        StorageConfig {
            path: PathBuf::from("/var/lib/sonde/collector"),
            slow_ms: 3000,
            slow_ms_by_app: HashMap::new(),
            spans_retention_days: r.spans_days,
            transactions_retention_days: r.transactions_days,
            second_rollups_retention_days: r.second_rollup_days,
            minute_rollups_retention_days: r.minute_rollup_days,
            hour_rollups_retention_days: r.hour_rollup_days,
            host_metrics_retention_days: r.host_metrics_days,
            max_disk_bytes: r.max_disk_bytes,
            min_free_disk_bytes: r.min_free_disk_bytes,
            retention_interval_secs: r.interval_secs,
            endpoint_rules: Vec::new(),
        }
    }
}

impl StorageConfig {
    /// The compiled endpoint rules; on a bad one, its key and the reason.
    pub fn naming(&self) -> Result<EndpointNaming, (String, String)> {
        let rules: Vec<_> = self
            .endpoint_rules
            .iter()
            .map(|r| (r.pattern.clone(), r.name.clone(), r.app.clone()))
            .collect();
        EndpointNaming::new(&rules).map_err(|(i, e)| {
            (
                format!("storage.endpoint_rules[{i}].match"),
                e.lines().collect::<Vec<_>>().join(" "),
            )
        })
    }

    /// What the store is opened with (the rules were checked at load).
    pub fn store_options(&self) -> Result<StoreOptions, (String, String)> {
        Ok(StoreOptions {
            slow: SlowThresholds {
                default_ms: self.slow_ms,
                per_app: self.slow_ms_by_app.clone(),
            },
            naming: self.naming()?,
            retention: Retention {
                spans_days: self.spans_retention_days,
                transactions_days: self.transactions_retention_days,
                second_rollup_days: self.second_rollups_retention_days,
                minute_rollup_days: self.minute_rollups_retention_days,
                hour_rollup_days: self.hour_rollups_retention_days,
                host_metrics_days: self.host_metrics_retention_days,
                max_disk_bytes: self.max_disk_bytes,
                min_free_disk_bytes: self.min_free_disk_bytes,
                interval_secs: self.retention_interval_secs,
            },
            background: true,
        })
    }

    /// What the types alone cannot check.
    fn validate(&self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("storage.{k}");
        for (k, days) in [
            ("spans_retention_days", self.spans_retention_days),
            (
                "transactions_retention_days",
                self.transactions_retention_days,
            ),
            (
                "second_rollups_retention_days",
                self.second_rollups_retention_days,
            ),
            (
                "minute_rollups_retention_days",
                self.minute_rollups_retention_days,
            ),
            (
                "hour_rollups_retention_days",
                self.hour_rollups_retention_days,
            ),
            (
                "host_metrics_retention_days",
                self.host_metrics_retention_days,
            ),
        ] {
            if days == 0 {
                return Err((key(k), "must be at least 1".into()));
            }
        }
        if self.spans_retention_days > self.transactions_retention_days {
            return Err((
                key("spans_retention_days"),
                "must not exceed transactions_retention_days (span detail belongs to its transaction)"
                    .into(),
            ));
        }
        if self.retention_interval_secs == 0 {
            return Err((key("retention_interval_secs"), "must be at least 1".into()));
        }
        if let Some(i) = self.endpoint_rules.iter().position(|r| r.name.is_empty()) {
            return Err((
                format!("storage.endpoint_rules[{i}].name"),
                "must not be empty".into(),
            ));
        }
        self.naming().map(|_| ())
    }
}

/// `[auth]`
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Tokens agents may present (`authorization: Bearer TOKEN`). Empty: any
    /// agent is accepted, and the collector warns at start that it is open.
    pub agent_tokens: Vec<String>,
    /// Bearer tokens for `/api/v1/*`. Empty: the API is open (meant for a
    /// loopback `http.listen`).
    pub api_tokens: Vec<String>,
}

// Tokens are secrets: never print them, even in debug logs.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("agent_tokens", &self.agent_tokens.len())
            .field("api_tokens", &self.api_tokens.len())
            .finish()
    }
}

/// `[console]`
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// The first console user, created at start if absent.
    pub admin_user: String,
    /// That user's password. Empty: no console login is created.
    pub admin_password: String,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            admin_user: "admin".into(),
            admin_password: String::new(),
        }
    }
}

impl fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsoleConfig")
            .field("admin_user", &self.admin_user)
            .field("admin_password", &"…")
            .finish()
    }
}

/// Why a configuration file was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("invalid config file {}: {at}{problem}", path.display())]
    Invalid {
        path: PathBuf,
        /// Where: "key `grpc.listen` (line 2, column 10): ", or empty.
        at: String,
        problem: String,
    },
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Config::parse(&text).map_err(|(at, problem)| ConfigError::Invalid {
            path: path.to_owned(),
            at,
            problem,
        })
    }

    /// Parses and checks a configuration text; on error, where and what.
    fn parse(text: &str) -> Result<Config, (String, String)> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let at = match e.span() {
                Some(span) => locate(text, span.start),
                None => String::new(),
            };
            // One line: toml sometimes splits a message over several.
            let problem = e.message().trim().lines().collect::<Vec<_>>().join("; ");
            (at, problem)
        })?;
        config
            .validate()
            .map_err(|(key, problem)| (format!("key `{key}`: "), problem.to_owned()))?;
        config
            .storage
            .validate()
            .map_err(|(key, problem)| (format!("key `{key}`: "), problem))?;
        config
            .validate_tls()
            .map_err(|(key, problem)| (format!("key `{key}`: "), problem))?;
        config
            .alerts
            .validate_files()
            .map_err(|(key, problem)| (format!("key `{key}`: "), problem))?;
        config.identity_verifier().map_err(|problem| {
            let key = match config.fleet.aws_identity_certs {
                Some(_) => "fleet.aws_identity_certs",
                None => "fleet.verify_identity",
            };
            (format!("key `{key}`: "), problem)
        })?;
        Ok(config)
    }

    /// The identity verifier `[fleet]` asks for.
    pub fn identity_verifier(
        &self,
    ) -> Result<Option<crate::ingest::identity_doc::Verifier>, String> {
        match (&self.fleet.verify_identity, &self.fleet.aws_identity_certs) {
            (VerifyIdentity::Off, _) => Ok(None),
            (_, None) => Err("verify_identity needs aws_identity_certs".into()),
            (_, Some(path)) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                crate::ingest::identity_doc::Verifier::from_pem(&pem)
                    .map(Some)
                    .map_err(|m| format!("{}: {m}", path.display()))
            }
        }
    }

    /// The `[grpc] tls_*` files: both or neither of certificate and key, a
    /// client CA only with them, each readable and of the right kind.
    fn validate_tls(&self) -> Result<(), (&'static str, String)> {
        let g = &self.grpc;
        if g.tls_cert.is_some() != g.tls_key.is_some() {
            return Err((
                "grpc.tls_cert",
                "TLS needs both tls_cert and tls_key".into(),
            ));
        }
        if g.tls_client_ca.is_some() && g.tls_cert.is_none() {
            return Err((
                "grpc.tls_client_ca",
                "client certificates need TLS: set tls_cert and tls_key too".into(),
            ));
        }
        for (key, file, kind) in [
            ("grpc.tls_cert", &g.tls_cert, PemKind::Certificates),
            ("grpc.tls_key", &g.tls_key, PemKind::PrivateKey),
            (
                "grpc.tls_client_ca",
                &g.tls_client_ca,
                PemKind::Certificates,
            ),
        ] {
            if let Some(f) = file {
                sonde_core::pem::read(f, kind).map_err(|m| (key, m))?;
            }
        }
        Ok(())
    }

    /// The gRPC port's TLS settings, when `[grpc]` has them.
    pub fn server_tls(&self) -> std::io::Result<Option<tonic::transport::ServerTlsConfig>> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let g = &self.grpc;
        let (Some(cert), Some(key)) = (&g.tls_cert, &g.tls_key) else {
            return Ok(None);
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
        if let Some(ca) = &g.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(std::fs::read(ca)?));
        }
        Ok(Some(tls))
    }

    /// Checks what the types alone cannot: the key and the problem.
    fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.grpc.max_message_bytes < 64 * 1024 {
            return Err(("grpc.max_message_bytes", "must be at least 65536"));
        }
        if self.grpc.heartbeat_interval_ms < 100 {
            return Err(("grpc.heartbeat_interval_ms", "must be at least 100"));
        }
        if self.storage.path.as_os_str().is_empty() {
            return Err(("storage.path", "must not be empty"));
        }
        if self.storage.slow_ms == 0 {
            return Err(("storage.slow_ms", "must be at least 1"));
        }
        if self.storage.slow_ms_by_app.values().any(|&ms| ms == 0) {
            return Err(("storage.slow_ms_by_app", "a threshold must be at least 1"));
        }
        let b = self.live.active_bounds_ms;
        if b[0] == 0 || b[0] >= b[1] || b[1] >= b[2] {
            return Err((
                "live.active_bounds_ms",
                "must be three rising bounds above 0, e.g. [1000, 3000, 8000]",
            ));
        }
        if !(1..=60).contains(&self.live.window_secs) {
            return Err(("live.window_secs", "must be between 1 and 60"));
        }
        if self.auth.agent_tokens.iter().any(|t| t.trim().is_empty()) {
            return Err(("auth.agent_tokens", "a token must not be empty"));
        }
        if self.auth.api_tokens.iter().any(|t| t.trim().is_empty()) {
            return Err(("auth.api_tokens", "a token must not be empty"));
        }
        self.alerts.validate()
    }
}

/// "key `table.key` (line L, column C): " for the byte `offset` of a parse
/// error. toml reports a span, not the key path, so the key is read back
/// from the text: the nearest `key =` line at or above the error and the
/// `[table]` header above that.
fn locate(text: &str, offset: usize) -> String {
    let offset = (0..=offset.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let before = &text[..offset];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);

    let mut key = None;
    let mut table = None;
    for line in text[..line_end].lines().rev().map(str::trim) {
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_end_matches(']').trim_matches(['[', ']', ' ']);
            table = Some(header.to_owned());
            break;
        }
        if key.is_none() {
            if let Some((k, _)) = line.split_once('=') {
                key = Some(k.trim().trim_matches('"').to_owned());
            }
        }
    }
    let key = match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (Some(t), None) => t,
        (None, Some(k)) => k,
        (None, None) => return format!("line {line_no}, column {column}: "),
    };
    format!("key `{key}` (line {line_no}, column {column}): ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        let (at, problem) = Config::parse(text).unwrap_err();
        format!("{at}{problem}")
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.grpc.listen.to_string(), "127.0.0.1:7717");
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:7718");
        assert_eq!(c.storage.path, Path::new("/var/lib/sonde/collector"));
        assert!(c.auth.agent_tokens.is_empty());
        assert!(c.auth.api_tokens.is_empty());
        assert_eq!(c.console.admin_user, "admin");
        assert_eq!(c.console.admin_password, "");
        assert_eq!(c.grpc.heartbeat_interval_ms, 5000);
        assert_eq!(c.grpc.max_message_bytes, 16 << 20);
        assert_eq!(c.storage.slow_ms, 3000);
        assert!(c.storage.slow_ms_by_app.is_empty());
        assert_eq!(c.live.active_bounds_ms, [1000, 3000, 8000]);
        assert_eq!(c.live.window_secs, 5);
    }

    #[test]
    fn live_keys() {
        let c = Config::parse("[live]\nactive_bounds_ms = [500, 2000, 5000]\nwindow_secs = 10\n")
            .unwrap();
        assert_eq!(c.live.active_bounds_ms, [500, 2000, 5000]);
        assert_eq!(c.live.window_secs, 10);
        let m = err("[live]\nactive_bounds_ms = [3000, 1000, 8000]\n");
        assert!(m.contains("key `live.active_bounds_ms`"), "{m}");
        let m = err("[live]\nwindow_secs = 0\n");
        assert!(m.contains("key `live.window_secs`"), "{m}");
    }

    #[test]
    fn slow_thresholds() {
        let c =
            Config::parse("[storage]\nslow_ms = 2000\nslow_ms_by_app = { shop = 500 }\n").unwrap();
        assert_eq!(c.storage.slow_ms, 2000);
        assert_eq!(c.storage.slow_ms_by_app["shop"], 500);
        let m = err("[storage]\nslow_ms = 0\n");
        assert!(m.contains("key `storage.slow_ms`"), "{m}");
        let m = err("[storage]\nslow_ms_by_app = { shop = 0 }\n");
        assert!(m.contains("storage.slow_ms_by_app"), "{m}");
    }

    #[test]
    fn storage_retention_and_rules() {
        let c = Config::parse("").unwrap();
        let o = c.storage.store_options().unwrap();
        assert_eq!(o.retention, Retention::default());
        assert!(o.naming.rules.is_empty());
        let c = Config::parse(
            r#"
[storage]
spans_retention_days = 2
transactions_retention_days = 3
minute_rollups_retention_days = 5
max_disk_bytes = 1000000
min_free_disk_bytes = 0
endpoint_rules = [
  { match = '^/index\.php\?(?:.*&)?r=([^&]*)', name = "/index.php?r=$1" },
  { match = "^/shop/", name = "/shop", app = "shop" },
]
"#,
        )
        .unwrap();
        let o = c.storage.store_options().unwrap();
        assert_eq!(
            (o.retention.spans_days, o.retention.transactions_days),
            (2, 3)
        );
        assert_eq!(o.retention.minute_rollup_days, 5);
        assert_eq!(
            (o.retention.max_disk_bytes, o.retention.min_free_disk_bytes),
            (1_000_000, 0)
        );
        assert_eq!(o.naming.rules.len(), 2);
        assert_eq!(o.naming.rules[1].app.as_deref(), Some("shop"));
        let m = err("[storage]\nspans_retention_days = 30\n");
        assert!(m.contains("key `storage.spans_retention_days`"), "{m}");
        let m = err("[storage]\nhour_rollups_retention_days = 0\n");
        assert!(
            m.contains("key `storage.hour_rollups_retention_days`"),
            "{m}"
        );
        let m = err("[storage]\nendpoint_rules = [{ match = \"(\", name = \"x\" }]\n");
        assert!(m.contains("key `storage.endpoint_rules[0].match`"), "{m}");
        let m = err("[storage]\nendpoint_rules = [{ match = \"x\", nmae = \"x\" }]\n");
        assert!(m.contains("unknown field `nmae`"), "{m}");
    }

    #[test]
    fn contract_example_parses() {
        let c = Config::parse(
            r#"
[grpc]
listen = "0.0.0.0:7717"
[http]
listen = "127.0.0.1:8000"
[storage]
path = "/tmp/x"
[auth]
agent_tokens = ["a", "b"]
api_tokens = ["c"]
[console]
admin_user = "root"
admin_password = "pw"
"#,
        )
        .unwrap();
        assert_eq!(c.grpc.listen.port(), 7717);
        assert_eq!(c.http.listen.port(), 8000);
        assert_eq!(c.auth.agent_tokens, ["a", "b"]);
        assert_eq!(c.console.admin_user, "root");
        // Secrets stay out of debug output.
        let debug = format!("{c:?}");
        assert!(!debug.contains("pw") && !debug.contains("\"c\""), "{debug}");
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let m = err("[grpc]\nlisten = \"127.0.0.1:1\"\nlistne = \"x\"\n");
        assert!(m.contains("key `grpc.listne`"), "{m}");
        assert!(m.contains("unknown field `listne`"), "{m}");
        assert!(m.contains("line 3"), "{m}");

        let m = err("[grcp]\nlisten = \"127.0.0.1:1\"\n");
        assert!(m.contains("unknown field `grcp`"), "{m}");
    }

    #[test]
    fn bad_listen_address_names_the_key() {
        let m = err("[http]\nlisten = \"localhost\"\n");
        assert!(m.contains("key `http.listen`"), "{m}");
        assert!(m.contains("socket address"), "{m}");
    }

    #[test]
    fn wrong_type_and_validation() {
        let m = err("[auth]\nagent_tokens = \"abc\"\n");
        assert!(m.contains("auth.agent_tokens"), "{m}");
        let m = err("[auth]\nagent_tokens = [\"\"]\n");
        assert!(
            m.contains("key `auth.agent_tokens`: a token must not be empty"),
            "{m}"
        );
        let m = err("[grpc]\nheartbeat_interval_ms = 5\n");
        assert!(m.contains("grpc.heartbeat_interval_ms"), "{m}");
    }

    #[test]
    fn alerts_keys_are_named() {
        let c = Config::parse(
            "[alerts]\ninterval_ms = 500\n[[alerts.rules]]\nname = \"e\"\nkind = \"error_rate\"\nthreshold = 5\n",
        )
        .unwrap();
        assert_eq!(c.alerts.interval_ms, 500);
        // The five built-in rules and this one.
        assert_eq!(c.alerts.effective_rules().len(), 6);
        let m = err("[[alerts.rules]]\nname = \"e\"\nkidn = \"error_rate\"\n");
        assert!(m.contains("key `alerts.rules.kidn`"), "{m}");
        assert!(m.contains("unknown field `kidn`"), "{m}");
        let m = err("[[alerts.rules]]\nname = \"e\"\nkind = \"error_rat\"\n");
        assert!(m.contains("alerts.rules.kind"), "{m}");
        let m = err("[alerts]\ninterval_ms = 5\n");
        assert!(m.contains("key `alerts.interval_ms`"), "{m}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("cannot read"), "{e}");
        std::fs::write(&path, "[storage]\npaht = 1\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("storage.paht"), "{e}");
    }
}
