//! The agent's configuration file (`agent.toml`): its keys, their defaults and
//! their validation. Every field's `///` comment is the user reference
//! (docs/agent.md repeats it). This module only parses and checks; it never
//! touches the network or the file system beyond reading the file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use sonde_core::pem::PemKind;
use thiserror::Error;

/// Where the agent reads its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/sonde/agent.toml";

/// 512 MiB: 10 minutes at 1,338 requests/s of ~500-byte records is ~400 MB
/// before compression.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 512 << 20;
/// The smallest spool accepted (a few full batches).
const MIN_SPOOL_MAX_BYTES: u64 = 1 << 20;

/// Longest Unix socket path (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The whole `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The collector's gRPC address: `http://HOST:PORT`, or `https://HOST:PORT`
    /// for TLS (see `[tls]`).
    pub collector: String,
    /// The agent token, sent as `authorization: Bearer <token>` on every call;
    /// it must be one of the collector's `auth.agent_tokens`. Empty = send no
    /// token (only for a collector without tokens).
    pub token: String,
    /// The Unix socket (SOCK_SEQPACKET) the PHP extension sends to; must match
    /// the extension's `sonde.agent_socket`. Its directory is created (0755)
    /// if missing.
    pub socket: PathBuf,
    /// Group that owns the socket, so that PHP workers running as that group
    /// can write to it. If the group does not exist (or cannot be set) the
    /// agent warns and keeps its own group. Empty = do not change the group.
    pub socket_group: String,
    /// Permissions of the socket: a TOML octal integer (`0o660`) or an octal
    /// string (`"0660"`). At most `0o777`.
    pub socket_mode: SocketMode,
    /// The in-flight scoreboard file: one slot per PHP worker, written by the
    /// extension through shared memory and read here every second (the
    /// requests running now, and workers that died mid-request). Leave out
    /// to use the socket's path with the extension `.scoreboard`
    /// (`/run/sonde/agent.scoreboard`, where the extension looks by default;
    /// set `sonde.scoreboard` if you move it). Owned by
    /// `socket_group` with `socket_mode`, like the socket.
    pub scoreboard: Option<PathBuf>,
    /// Slots in the scoreboard: the most PHP workers on this host that
    /// show as in flight. Used when the file is created.
    pub scoreboard_slots: u32,
    /// Directory for the agent's own state: the disk spool (segment files
    /// `spool-<n>.seg` holding batches the collector has not acknowledged),
    /// and `agent-id` (the id the collector assigned). Created (0750) if
    /// missing.
    pub spool_dir: PathBuf,
    /// Most bytes the disk spool may use. When full, the oldest spooled data
    /// is deleted (counted in `records_dropped`, reason `spool_full`) to make
    /// room for new data. The default holds well over 10 minutes of 1,338
    /// requests/s at ~500 bytes a record. At least 1048576 (1 MiB).
    pub spool_max_bytes: u64,
    /// Seconds between host metrics samples (CPU, load, memory, disks,
    /// network, processes, php-fpm pools). 0 = no host metrics.
    pub host_metrics_interval_secs: u64,
    /// Address of the agent's own Prometheus metrics endpoint (`GET
    /// /metrics`, plain HTTP), `IP:PORT`. Meant for loopback. Empty = off.
    pub metrics_listen: String,
    /// Host name reported with every record and at registration. Leave out to
    /// use the system host name.
    pub hostname: Option<String>,
    /// php-fpm status pages to read at every host sample, as
    /// `http://HOST:PORT/PATH` (the pool's `pm.status_path` served on
    /// loopback, e.g. by nginx): listen queue, max-children-reached and
    /// php-fpm's own active/idle/total counts. Empty (default): active/idle
    /// come from the extension's scoreboard alone.
    pub fpm_status_urls: Vec<String>,
    /// Operator labels sent at registration and shown with the server
    /// (`[labels]`, e.g. `role = "api"`). `group` names the Auto Scaling
    /// group when the instance metadata does not expose instance tags.
    pub labels: BTreeMap<String, String>,
    /// Most records in one batch sent to the collector.
    pub batch_max_records: usize,
    /// Largest batch, in bytes of encoded records. A single larger record
    /// still goes alone in its own batch.
    pub batch_max_bytes: usize,
    /// Longest a record waits in a partly filled batch before the batch is
    /// sent, milliseconds.
    pub flush_interval_ms: u64,
    /// Most records held in memory waiting for a batch. When full, new records
    /// are dropped (the newest) and counted in `records_dropped`.
    pub queue_capacity: usize,
    /// Most bytes of encoded records held in memory waiting for a batch; the
    /// same drop policy as `queue_capacity`. At least 196608 (one frame).
    pub queue_max_bytes: usize,
    /// Cloud identity (instance id, zone, Auto Scaling group).
    pub cloud: CloudConfig,
    /// TLS to the collector (with an `https://` collector).
    pub tls: TlsConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[tls]`: how the agent checks the collector, and proves itself when the
/// collector asks for a client certificate. Used with an `https://`
/// `collector`; TLS 1.2 or 1.3 (rustls).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of the CA certificates the collector's certificate must
    /// chain to. Leave out to trust the system's roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate (chain), for a collector that requires one
    /// (`[grpc] tls_client_ca`). Needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// The name the collector's certificate must carry. Leave out to use
    /// the host of `collector`.
    pub server_name: Option<String>,
}

impl TlsConfig {
    fn is_set(&self) -> bool {
        *self != TlsConfig::default()
    }
}

impl Config {
    /// The scoreboard path: `scoreboard`, else beside the socket.
    pub fn scoreboard_path(&self) -> PathBuf {
        match &self.scoreboard {
            Some(p) => p.clone(),
            None => self.socket.with_extension("scoreboard"),
        }
    }

    /// The record ring: beside the socket, named after it
    /// (`agent.sock` -> `agent.ring`), where the extension looks for it.
    pub fn ring_path(&self) -> PathBuf {
        self.socket.with_extension("ring")
    }
}

/// Most `[labels]` entries.
const MAX_LABELS: usize = 64;

impl Default for Config {
    fn default() -> Self {
        Config {
            collector: "http://127.0.0.1:7717".into(),
            token: String::new(),
            socket: "/run/sonde/agent.sock".into(),
            socket_group: "www-data".into(),
            socket_mode: SocketMode(0o660),
            scoreboard: None,
            scoreboard_slots: sonde_core::scoreboard::DEFAULT_SLOTS,
            spool_dir: "/var/lib/sonde/agent".into(),
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            host_metrics_interval_secs: 5,
            metrics_listen: "127.0.0.1:7719".into(),
            hostname: None,
            fpm_status_urls: Vec::new(),
            labels: BTreeMap::new(),
            batch_max_records: 1000,
            batch_max_bytes: 1024 * 1024,
            flush_interval_ms: 1000,
            queue_capacity: 100_000,
            queue_max_bytes: 64 * 1024 * 1024,
            cloud: CloudConfig::default(),
            tls: TlsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// `[cloud]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// Where to look up this host's cloud identity: `"aws"` reads the AWS
    /// instance metadata service (IMDSv2) and warns if it does not answer;
    /// `"auto"` tries it too, with the same short timeouts (200 ms to
    /// connect, 1 s a request), unless the DMI vendor strings are readable
    /// and none says Amazon (checked only with the default
    /// `imds_endpoint`), and quietly goes on without a cloud identity when
    /// nothing answers; `"none"` contacts nothing. Start-up never waits more
    /// than 3 s for it.
    pub provider: CloudProvider,
    /// The AWS instance metadata service (IMDSv2) base URL.
    pub imds_endpoint: String,
    /// On AWS, seconds between looks at whether the instance is being
    /// terminated (Auto Scaling `target-lifecycle-state`, spot
    /// `instance-action`); an agent stopped after such a notice deregisters
    /// as terminated rather than stopped. One more look is taken at
    /// shutdown. 0 = only that last look.
    pub lifecycle_poll_secs: u64,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            provider: CloudProvider::Auto,
            imds_endpoint: "http://169.254.169.254".into(),
            lifecycle_poll_secs: 5,
        }
    }
}

/// Which cloud metadata service identifies this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudProvider {
    /// Detect the provider.
    Auto,
    /// Amazon EC2 (IMDSv2).
    Aws,
    /// No cloud identity.
    None,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Log filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or a
    /// `tracing` directive list such as `"info,sonde_agent=debug"`. The
    /// `RUST_LOG` environment variable overrides it. Logs go to stderr.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// Unix permission bits of the socket file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ModeVisitor;
        const EXPECTED: &str = "an octal mode such as 0o660 or \"0660\", at most 0o777";

        fn check<E: de::Error>(v: u64) -> Result<SocketMode, E> {
            if v > 0o777 {
                return Err(E::custom(format_args!(
                    "{v} (octal {v:o}) is not a valid mode: expected {EXPECTED} \
                     (a plain decimal 660 is not octal; write 0o660)"
                )));
            }
            Ok(SocketMode(v as u32))
        }

        impl Visitor<'_> for ModeVisitor {
            type Value = SocketMode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SocketMode, E> {
                let v =
                    u64::try_from(v).map_err(|_| E::custom(format_args!("expected {EXPECTED}")))?;
                check(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SocketMode, E> {
                check(v)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<SocketMode, E> {
                let digits = s.strip_prefix("0o").unwrap_or(s);
                let v = u64::from_str_radix(digits, 8)
                    .map_err(|_| E::custom(format_args!("{s:?} is not {EXPECTED}")))?;
                check(v)
            }
        }
        d.deserialize_any(ModeVisitor)
    }
}

/// Why the configuration was refused. Each variant names the file; parse and
/// validation errors name the key.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: key `{key}` (line {line}): {message}")]
    Parse {
        path: PathBuf,
        key: String,
        line: usize,
        message: String,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| parse_error(text, path, &e))?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let https = check_url(&self.collector, true).map_err(|m| invalid("collector", m))?;
        if self.tls.is_set() && !https {
            return Err(invalid(
                "collector",
                format!("{:?}: [tls] is set, so use https://", self.collector),
            ));
        }
        for (key, file, kind) in [
            ("tls.ca", &self.tls.ca, PemKind::Certificates),
            ("tls.cert", &self.tls.cert, PemKind::Certificates),
            ("tls.key", &self.tls.key, PemKind::PrivateKey),
        ] {
            if let Some(f) = file {
                sonde_core::pem::read(f, kind).map_err(|m| invalid(key, m))?;
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(invalid(
                "tls.cert",
                "a client certificate needs both tls.cert and tls.key".into(),
            ));
        }
        if self
            .tls
            .server_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err(invalid("tls.server_name", "must not be empty".into()));
        }
        if !self.token.is_empty() {
            let printable = self.token.bytes().all(|b| b.is_ascii_graphic());
            if !printable {
                return Err(invalid(
                    "token",
                    "must be printable ASCII without spaces".into(),
                ));
            }
        }
        if !self.socket.is_absolute() {
            return Err(invalid("socket", "must be an absolute path".into()));
        }
        if self.socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(invalid(
                "socket",
                format!("longer than the {MAX_SOCKET_PATH}-byte limit of a Unix socket path"),
            ));
        }
        if !self.spool_dir.is_absolute() {
            return Err(invalid("spool_dir", "must be an absolute path".into()));
        }
        if self.spool_max_bytes < MIN_SPOOL_MAX_BYTES {
            return Err(invalid(
                "spool_max_bytes",
                format!("must be at least {MIN_SPOOL_MAX_BYTES} (1 MiB)"),
            ));
        }
        if !(1..=65_536).contains(&self.scoreboard_slots) {
            return Err(invalid(
                "scoreboard_slots",
                format!("{} is not between 1 and 65536", self.scoreboard_slots),
            ));
        }
        if !self.metrics_listen.is_empty() {
            self.metrics_listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| {
                    invalid(
                        "metrics_listen",
                        format!(
                            "{:?} is not IP:PORT ({e}); use \"\" to turn it off",
                            self.metrics_listen
                        ),
                    )
                })?;
        }
        for url in &self.fpm_status_urls {
            if crate::sources::fpm_status::parse_url(url).is_none() {
                return Err(invalid(
                    "fpm_status_urls",
                    format!("{url:?} is not http://HOST:PORT/PATH"),
                ));
            }
        }
        if self.labels.len() > MAX_LABELS {
            return Err(invalid("labels", format!("at most {MAX_LABELS} labels")));
        }
        for (k, v) in &self.labels {
            let bad = |t: &str, max| t.len() > max || t.chars().any(char::is_control);
            if k.is_empty() || bad(k, 64) || bad(v, 256) {
                return Err(invalid(
                    "labels",
                    format!("label {k:?}: names are 1-64 and values at most 256 characters, one line each"),
                ));
            }
        }
        if let Some(h) = &self.hostname {
            if h.trim().is_empty() {
                return Err(invalid(
                    "hostname",
                    "must not be empty (leave it out to use the system host name)".into(),
                ));
            }
        }
        let positive = [
            ("batch_max_records", self.batch_max_records as u64),
            ("batch_max_bytes", self.batch_max_bytes as u64),
            ("flush_interval_ms", self.flush_interval_ms),
            ("queue_capacity", self.queue_capacity as u64),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        if self.queue_max_bytes < sonde_core::frame::MAX_FRAME_BYTES {
            return Err(invalid(
                "queue_max_bytes",
                format!(
                    "must be at least {} (the largest frame the extension sends)",
                    sonde_core::frame::MAX_FRAME_BYTES
                ),
            ));
        }
        check_url(&self.cloud.imds_endpoint, false)
            .map_err(|m| invalid("cloud.imds_endpoint", m))?;
        check_log_filter(&self.log.level).map_err(|m| invalid("log.level", m))?;
        Ok(())
    }
}

/// A bare word in a `tracing` filter is a target name, so a typo such as
/// `"inof"` would silently log nothing; only level names may stand alone.
fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| format!("{filter:?}: {e}"))?;
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=') && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} is not a level (expected one of {}) or a `target=level` directive",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Accepts `http://host[:port][/]`, and `https://` when `https` is
/// allowed; true for https.
fn check_url(s: &str, https: bool) -> Result<bool, String> {
    let uri: tonic::transport::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    let is_https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") if https => true,
        Some("https") => return Err(format!("{s:?}: only http:// is supported here")),
        _ if https => return Err(format!("{s:?} must start with http:// or https://")),
        _ => return Err(format!("{s:?} must start with http://")),
    };
    match uri.host() {
        Some(h) if !h.is_empty() => {}
        _ => return Err(format!("{s:?} has no host")),
    }
    Ok(is_https)
}

/// Turns a TOML error into one line naming the key. toml reports a byte span
/// (the key for an unknown field, the value for a bad one); the key is read
/// back from that line and prefixed with the enclosing `[table]`.
fn parse_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    // One line: toml's messages may span several.
    let message = e.message().trim().replace('\n', "; ");
    let Some(span) = e.span() else {
        return ConfigError::Syntax {
            path: path.to_owned(),
            message,
        };
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let key = if let Some(header) = table_header(line) {
        header.to_owned()
    } else {
        let local = line
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"');
        let table = text[..line_start]
            .lines()
            .rev()
            .find_map(|l| table_header(l.trim()));
        match table {
            Some(t) if !local.is_empty() => format!("{t}.{local}"),
            _ => local.to_owned(),
        }
    };
    if key.is_empty() {
        return ConfigError::Syntax {
            path: path.to_owned(),
            message: format!("line {line_no}: {message}"),
        };
    }
    ConfigError::Parse {
        path: path.to_owned(),
        key,
        line: line_no,
        message,
    }
}

/// `[name]` → `name` (array tables `[[…]]` are not used by this file).
fn table_header(line: &str) -> Option<&str> {
    let inner = line.strip_prefix('[')?.split(']').next()?;
    (!inner.starts_with('[')).then(|| inner.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/sonde/agent.toml"))
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.collector, "http://127.0.0.1:7717");
        assert_eq!(c.token, "");
        assert_eq!(c.socket, Path::new("/run/sonde/agent.sock"));
        assert_eq!(c.socket_group, "www-data");
        assert_eq!(c.socket_mode, SocketMode(0o660));
        assert_eq!(c.spool_dir, Path::new("/var/lib/sonde/agent"));
        assert_eq!(c.spool_max_bytes, 512 * 1024 * 1024);
        assert_eq!(c.host_metrics_interval_secs, 5);
        assert_eq!(c.metrics_listen, "127.0.0.1:7719");
        assert_eq!(c.hostname, None);
        assert_eq!(c.batch_max_records, 1000);
        assert_eq!(c.batch_max_bytes, 1 << 20);
        assert_eq!(c.flush_interval_ms, 1000);
        assert_eq!(c.queue_capacity, 100_000);
        assert_eq!(c.cloud.provider, CloudProvider::Auto);
        assert_eq!(c.cloud.imds_endpoint, "http://169.254.169.254");
        assert_eq!(c.cloud.lifecycle_poll_secs, 5);
        assert_eq!(c.log.level, "info");
    }

    #[test]
    fn the_packaged_agent_toml_is_valid() {
        let text = include_str!("../../packaging/agent.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.token, "REPLACE_WITH_AGENT_TOKEN");
        assert_eq!(c.cloud.provider, CloudProvider::Auto);
        assert_eq!(c.cloud.lifecycle_poll_secs, 5);
    }

    #[test]
    fn the_agent_toml_in_the_cloud_init_example_is_valid() {
        // The `content: |` block of packaging/cloud-init.yaml, unindented.
        let yaml = include_str!("../../packaging/cloud-init.yaml");
        let block: String = yaml
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("content: |"))
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with("      "))
            .map(|l| format!("{}\n", l.get(6..).unwrap_or("")))
            .collect();
        let c = parse(&block).unwrap();
        assert_eq!(c.collector, "http://COLLECTOR_HOST:7717");
        assert_eq!(c.cloud.provider, CloudProvider::Aws);
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            r#"
collector = "http://10.0.0.5:7717"
token = "s3cret"
socket = "/tmp/x/agent.sock"
socket_group = "nginx"
socket_mode = "0600"
spool_dir = "/tmp/spool"
spool_max_bytes = 2097152
host_metrics_interval_secs = 0
metrics_listen = ""
hostname = "web-1"
batch_max_records = 10
batch_max_bytes = 2048
flush_interval_ms = 50
queue_capacity = 5
queue_max_bytes = 1048576
[cloud]
provider = "aws"
imds_endpoint = "http://127.0.0.1:1338"
lifecycle_poll_secs = 2
[log]
level = "debug"
"#,
        )
        .unwrap();
        assert_eq!(c.socket_mode, SocketMode(0o600));
        assert_eq!(c.cloud.provider, CloudProvider::Aws);
        assert_eq!(c.cloud.lifecycle_poll_secs, 2);
        assert_eq!(c.hostname.as_deref(), Some("web-1"));
        assert_eq!(c.log.level, "debug");
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let e = parse("collector = \"http://a:1\"\nflush_ms = 5\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/etc/sonde/agent.toml"), "{msg}");
        assert!(msg.contains("key `flush_ms`"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");

        let e = parse("[cloud]\nprovider = \"none\"\nregion = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("key `cloud.region`"), "{e}");

        let e = parse("[clod]\nprovider = \"none\"\n").unwrap_err();
        assert!(e.to_string().contains("key `clod`"), "{e}");
    }

    #[test]
    fn bad_provider_is_refused() {
        let e = parse("[cloud]\nprovider = \"gcp\"\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("key `cloud.provider`"), "{msg}");
        assert!(msg.contains("gcp"), "{msg}");
    }

    #[test]
    fn bad_collector_url_is_refused() {
        for bad in ["not a url", "127.0.0.1:7717", "ftp://c"] {
            let e = parse(&format!("collector = {bad:?}\n")).unwrap_err();
            assert!(e.to_string().contains("key `collector`"), "{bad}: {e}");
        }
        assert!(parse("collector = \"https://c:7717\"\n").is_ok());
        let e = parse("collector = \"http://c:7717\"\n[tls]\nserver_name = \"c\"\n").unwrap_err();
        assert!(e.to_string().contains("use https://"), "{e}");
        let e = parse("[cloud]\nimds_endpoint = \"https://169.254.169.254\"\n").unwrap_err();
        assert!(e.to_string().contains("cloud.imds_endpoint"), "{e}");
    }

    #[test]
    fn socket_mode_forms() {
        let mode = |v: &str| parse(&format!("socket_mode = {v}\n")).map(|c| c.socket_mode);
        assert_eq!(mode("0o660").unwrap(), SocketMode(0o660));
        assert_eq!(mode("\"0660\"").unwrap(), SocketMode(0o660));
        assert_eq!(mode("\"660\"").unwrap(), SocketMode(0o660));
        assert_eq!(mode("\"0o600\"").unwrap(), SocketMode(0o600));
        // Decimal 660 is octal 1224: refused rather than silently wrong.
        let e = mode("660").unwrap_err().to_string();
        assert!(
            e.contains("key `socket_mode`") && e.contains("0o660"),
            "{e}"
        );
        assert!(mode("\"rw\"").is_err());
        assert!(mode("-1").is_err());
    }

    #[test]
    fn wrong_type_and_zero_values_are_refused() {
        let e = parse("batch_max_records = \"many\"\n").unwrap_err();
        assert!(e.to_string().contains("key `batch_max_records`"), "{e}");
        let e = parse("batch_max_records = 0\n").unwrap_err();
        assert!(e.to_string().contains("key `batch_max_records`"), "{e}");
        let e = parse("socket = \"relative.sock\"\n").unwrap_err();
        assert!(e.to_string().contains("key `socket`"), "{e}");
        let e = parse("[log]\nlevel = \"inof\"\n").unwrap_err();
        assert!(e.to_string().contains("key `log.level`"), "{e}");
        let e = parse("spool_max_bytes = 1000\n").unwrap_err();
        assert!(e.to_string().contains("key `spool_max_bytes`"), "{e}");
        let e = parse("metrics_listen = \"localhost\"\n").unwrap_err();
        assert!(e.to_string().contains("key `metrics_listen`"), "{e}");
    }

    #[test]
    fn missing_file_names_the_file() {
        let e = Config::load(Path::new("/nonexistent/sonde/agent.toml")).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/sonde/agent.toml"),
            "{e}"
        );
    }
}
