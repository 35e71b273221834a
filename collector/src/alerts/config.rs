//! `[alerts]` in `collector.toml`: the rules, the channels (webhooks and
//! email) and the evaluation knobs. Each field's `///` comment is the
//! operator reference (docs/alerts.md repeats them with examples). The same
//! [`RuleConfig`] is what the console's rule editor sends as JSON.

use serde::{Deserialize, Serialize};

/// The CA bundle TLS channels trust unless `ca_file` says otherwise
/// (Debian's `ca-certificates`).
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// `[alerts]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Also evaluate the built-in rules (docs/alerts.md, "Default rules"):
    /// error rate above 5 % at 1 TPS or more over 60 s (critical), p90
    /// above 3000 ms at 1 TPS or more over 60 s per endpoint (warning),
    /// agent down (critical), disk above 90 % (warning), requests stuck in
    /// the slowest in-flight bucket (warning). A rule in `rules` (or made
    /// in the console) with the same `name` replaces the built-in one.
    pub defaults: bool,
    /// How often every rule is evaluated, milliseconds. 100 to 10000.
    pub interval_ms: u64,
    /// Events waiting for delivery, per channel. When a channel's queue is
    /// full the new event is not sent to it and counted as dropped (it is
    /// still stored and shown).
    pub queue_capacity: usize,
    /// Alert events and deploy markers older than this many days are
    /// deleted (checked at start and hourly). 0 keeps them forever.
    pub events_retention_days: u32,
    /// A firing event of an application mentions that application's latest
    /// deployment (`POST /api/v1/deploys`) when it was recorded within this
    /// many minutes. 0 never mentions deployments.
    pub deploy_mention_minutes: u32,
    /// The rules, `[[alerts.rules]]`.
    pub rules: Vec<RuleConfig>,
    /// Webhook channels, `[[alerts.webhooks]]`.
    pub webhooks: Vec<WebhookConfig>,
    /// Email channels, `[[alerts.email]]`.
    pub email: Vec<EmailConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            defaults: true,
            interval_ms: 1000,
            queue_capacity: 1000,
            events_retention_days: 90,
            deploy_mention_minutes: 30,
            rules: Vec::new(),
            webhooks: Vec::new(),
            email: Vec::new(),
        }
    }
}

/// What a rule watches.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Failed transactions, percent of calls, over the window.
    ErrorRate,
    /// Failed transactions, count, over the window.
    ErrorCount,
    /// Response time (`stat` = avg or p90), ms, over the window.
    ResponseTime,
    /// Calls per second fell by more than `threshold` percent against the
    /// same window `compare_minutes` ago or a week ago.
    TpsDrop,
    /// Calls per second rose by more than `threshold` percent against the
    /// same window `compare_minutes` ago or a week ago.
    TpsSurge,
    /// Requests in flight in the slowest bucket of `[live]
    /// active_bounds_ms` (8 s or more by default), count.
    StuckRequests,
    /// SQL statements that failed, count, over the window.
    SqlErrors,
    /// An agent that stopped sending heartbeats (not one that deregistered).
    AgentDown,
    /// A host's CPU use, percent.
    HostCpu,
    /// A host's memory use, percent of its total.
    HostMemory,
    /// A host's fullest mounted filesystem, percent used.
    HostDisk,
}

impl RuleKind {
    pub const ALL: [RuleKind; 11] = [
        RuleKind::ErrorRate,
        RuleKind::ErrorCount,
        RuleKind::ResponseTime,
        RuleKind::TpsDrop,
        RuleKind::TpsSurge,
        RuleKind::StuckRequests,
        RuleKind::SqlErrors,
        RuleKind::AgentDown,
        RuleKind::HostCpu,
        RuleKind::HostMemory,
        RuleKind::HostDisk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::ErrorRate => "error_rate",
            RuleKind::ErrorCount => "error_count",
            RuleKind::ResponseTime => "response_time",
            RuleKind::TpsDrop => "tps_drop",
            RuleKind::TpsSurge => "tps_surge",
            RuleKind::StuckRequests => "stuck_requests",
            RuleKind::SqlErrors => "sql_errors",
            RuleKind::AgentDown => "agent_down",
            RuleKind::HostCpu => "host_cpu",
            RuleKind::HostMemory => "host_memory",
            RuleKind::HostDisk => "host_disk",
        }
    }

    /// Rules over finished transactions in the live statistics' window.
    pub fn on_transactions(self) -> bool {
        matches!(
            self,
            RuleKind::ErrorRate
                | RuleKind::ErrorCount
                | RuleKind::ResponseTime
                | RuleKind::SqlErrors
        )
    }

    /// Rules comparing the current TPS with a stored baseline.
    pub fn on_tps(self) -> bool {
        matches!(self, RuleKind::TpsDrop | RuleKind::TpsSurge)
    }

    /// Rules over the latest host-metrics sample of each host.
    pub fn on_hosts(self) -> bool {
        matches!(
            self,
            RuleKind::HostCpu | RuleKind::HostMemory | RuleKind::HostDisk
        )
    }

    /// Kinds whose threshold may be 0 (a count: "more than 0" = any).
    fn zero_threshold_ok(self) -> bool {
        matches!(
            self,
            RuleKind::ErrorCount
                | RuleKind::AgentDown
                | RuleKind::StuckRequests
                | RuleKind::SqlErrors
        )
    }
}

/// How bad an event is.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Warning,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }
}

/// Which response time a `response_time` rule compares.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stat {
    Avg,
    P90,
}

/// What one rule is evaluated for: each app, each (app, endpoint) or each
/// (app, host).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum By {
    App,
    Endpoint,
    Host,
}

/// What a TPS rule compares the current window with.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compare {
    /// The same window, `compare_minutes` earlier.
    Minutes,
    /// The same window, 7 days earlier (same weekday and time).
    Week,
}

/// `[[alerts.rules]]`, and a console rule as JSON.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// Unique name, shown in events and messages. Required.
    pub name: String,
    /// `error_rate`, `error_count`, `response_time`, `tps_drop`,
    /// `tps_surge`, `stuck_requests`, `sql_errors`, `agent_down`,
    /// `host_cpu`, `host_memory` or `host_disk`. Required.
    pub kind: Option<RuleKind>,
    /// `warning` or `critical`.
    pub level: Level,
    /// Fire above this: percent for `error_rate`, `host_cpu`,
    /// `host_memory` and `host_disk`; percent change for `tps_drop` and
    /// `tps_surge`; a count for `error_count`, `sql_errors` and
    /// `stuck_requests` (0 = any); milliseconds for `response_time`.
    /// Unused by `agent_down`.
    pub threshold: f64,
    /// `response_time` only: `avg` or `p90`.
    pub stat: Stat,
    /// Transaction and TPS rules: whole seconds the condition is computed
    /// over, ending with the last complete second. 1 to 60.
    pub window_secs: u32,
    /// Transaction rules: the condition only counts with at least this many
    /// calls per second over the window (the same scope as the rule).
    /// `tps_drop`: the baseline needs at least this TPS; `tps_surge`: the
    /// current window does.
    pub min_tps: f64,
    /// Evaluated per `app`, per `endpoint` (app and endpoint) or per `host`
    /// (app and host). TPS rules: `app` or `host`.
    pub by: By,
    /// Only this application; empty: every application.
    pub app: String,
    /// Transaction and stuck-request rules: only endpoints matching this
    /// pattern (`*` matches any run of characters, e.g. `/api/v6/*`);
    /// empty: every endpoint. Not for TPS rules.
    pub endpoint: String,
    /// Only this host (agent hostname); empty: every host.
    pub host: String,
    /// TPS rules: `minutes` (the same window `compare_minutes` ago) or
    /// `week` (the same window 7 days ago).
    pub compare: Compare,
    /// TPS rules with `compare = "minutes"`: how many minutes back the
    /// baseline window is. 1 to 1440.
    pub compare_minutes: u32,
    /// Consecutive evaluations (host rules: samples) the condition must hold
    /// before the rule fires; until then the rule is pending. At least 1.
    pub for_checks: u32,
    /// After a notification, the same rule and scope notify again only
    /// once this many seconds have passed: a condition that flaps within it
    /// fires and resolves silently (no event, no message).
    pub silence_secs: u64,
    /// Names of the channels (`[[alerts.webhooks]]` and `[[alerts.email]]`
    /// names) this rule's events go to; empty: every channel.
    pub channels: Vec<String>,
    /// False switches the rule off (e.g. a built-in rule, by its name).
    pub enabled: bool,
}

impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig {
            name: String::new(),
            kind: None,
            level: Level::Critical,
            threshold: 0.0,
            stat: Stat::P90,
            window_secs: 60,
            min_tps: 1.0,
            by: By::App,
            app: String::new(),
            endpoint: String::new(),
            host: String::new(),
            compare: Compare::Minutes,
            compare_minutes: 10,
            for_checks: 1,
            silence_secs: 600,
            channels: Vec::new(),
            enabled: true,
        }
    }
}

/// Wire format of a webhook.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// Sonde's JSON (docs/alerts.md, "Webhook JSON").
    Json,
    /// A Slack-compatible incoming webhook: `{"text": "…"}`.
    Slack,
}

/// `[[alerts.webhooks]]`
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Unique channel name, used by rules' `channels`. Required.
    pub name: String,
    /// `http://host[:port][/path]` or `https://…` the event is POSTed to.
    /// Required.
    pub url: String,
    /// `json` (Sonde's schema) or `slack`.
    pub format: WebhookFormat,
    /// When set, each request carries `X-Sonde-Signature: sha256=HEX`, the
    /// HMAC-SHA256 of the body with this secret.
    pub secret: String,
    /// `https` only: PEM file of the certificate authorities trusted for
    /// the receiver's certificate.
    pub ca_file: String,
    /// Per attempt, milliseconds.
    pub timeout_ms: u64,
    /// Attempts per event (the first and the retries), at least 1. Retries
    /// wait 1 s, 2 s, 4 s, … (at most 30 s) between attempts.
    pub max_attempts: u32,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            name: String::new(),
            url: String::new(),
            format: WebhookFormat::Json,
            secret: String::new(),
            ca_file: SYSTEM_CA_FILE.into(),
            timeout_ms: 5000,
            max_attempts: 5,
        }
    }
}

// The secret stays out of debug output.
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("format", &self.format)
            .field("secret", &(!self.secret.is_empty()))
            .field("ca_file", &self.ca_file)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

/// How an SMTP connection is protected.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain text throughout (a local relay).
    None,
    /// Plain connect, then `STARTTLS`; a server that does not offer it is
    /// a failed attempt (never a silent downgrade).
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
}

/// `[[alerts.email]]`
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// Unique channel name, used by rules' `channels`. Required.
    pub name: String,
    /// SMTP server host name or IP address. Required.
    pub host: String,
    /// SMTP server port.
    pub port: u16,
    /// `none`, `starttls` or `tls`.
    pub tls: SmtpTls,
    /// PEM file of the certificate authorities trusted for the server's
    /// certificate (`starttls` and `tls`).
    pub ca_file: String,
    /// With a user name, the client authenticates (`AUTH PLAIN`, or `AUTH
    /// LOGIN` when the server offers only that); empty: no authentication.
    pub username: String,
    /// The password for `username`.
    pub password: String,
    /// Envelope and `From:` address. Required.
    pub from: String,
    /// Recipients, at least one.
    pub to: Vec<String>,
    /// Start of every subject line.
    pub subject_prefix: String,
    /// The name this client gives in `EHLO`.
    pub hello_name: String,
    /// Per attempt (the whole SMTP conversation), milliseconds.
    pub timeout_ms: u64,
    /// Attempts per event (the first and the retries), at least 1. Retries
    /// wait 1 s, 2 s, 4 s, … (at most 30 s) between attempts.
    pub max_attempts: u32,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            name: String::new(),
            host: String::new(),
            port: 25,
            tls: SmtpTls::Starttls,
            ca_file: SYSTEM_CA_FILE.into(),
            username: String::new(),
            password: String::new(),
            from: String::new(),
            to: Vec::new(),
            subject_prefix: "[Sonde]".into(),
            hello_name: "sonde-collector".into(),
            timeout_ms: 10_000,
            max_attempts: 5,
        }
    }
}

// The password stays out of debug output.
impl std::fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailConfig")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("username", &self.username)
            .field("password", &(!self.password.is_empty()))
            .field("from", &self.from)
            .field("to", &self.to)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

/// The built-in rules (`[alerts] defaults = true`).
pub fn default_rules() -> Vec<RuleConfig> {
    vec![
        RuleConfig {
            name: "error-rate".into(),
            kind: Some(RuleKind::ErrorRate),
            level: Level::Critical,
            threshold: 5.0,
            ..RuleConfig::default()
        },
        RuleConfig {
            name: "slow-endpoint".into(),
            kind: Some(RuleKind::ResponseTime),
            level: Level::Warning,
            threshold: 3000.0,
            stat: Stat::P90,
            by: By::Endpoint,
            ..RuleConfig::default()
        },
        RuleConfig {
            name: "agent-down".into(),
            kind: Some(RuleKind::AgentDown),
            level: Level::Critical,
            ..RuleConfig::default()
        },
        RuleConfig {
            name: "disk-full".into(),
            kind: Some(RuleKind::HostDisk),
            level: Level::Warning,
            threshold: 90.0,
            for_checks: 2,
            ..RuleConfig::default()
        },
        RuleConfig {
            name: "stuck-requests".into(),
            kind: Some(RuleKind::StuckRequests),
            level: Level::Warning,
            threshold: 0.0,
            by: By::Endpoint,
            ..RuleConfig::default()
        },
    ]
}

/// A problem with one rule: the key (`alerts.rules.<field>`) and why.
pub type RuleError = (&'static str, &'static str);

/// Checks one rule (from the file or the console) against the channel
/// names that exist.
pub fn validate_rule(r: &RuleConfig, channels: &[&str]) -> Result<(), RuleError> {
    if r.name.trim().is_empty() {
        return Err(("alerts.rules.name", "every rule needs a name"));
    }
    if r.name.len() > 100 || r.name.chars().any(char::is_control) {
        return Err((
            "alerts.rules.name",
            "at most 100 characters, no control characters",
        ));
    }
    let Some(kind) = r.kind else {
        return Err(("alerts.rules.kind", "every rule needs a kind"));
    };
    if !(1..=60).contains(&r.window_secs) {
        return Err(("alerts.rules.window_secs", "must be between 1 and 60"));
    }
    if r.for_checks == 0 {
        return Err(("alerts.rules.for_checks", "must be at least 1"));
    }
    if !r.threshold.is_finite() || r.threshold < 0.0 {
        return Err(("alerts.rules.threshold", "must be a number, 0 or more"));
    }
    if !r.min_tps.is_finite() || r.min_tps < 0.0 {
        return Err(("alerts.rules.min_tps", "must be a number, 0 or more"));
    }
    if r.threshold == 0.0 && !kind.zero_threshold_ok() {
        return Err(("alerts.rules.threshold", "must be set for this kind"));
    }
    if kind == RuleKind::TpsDrop && r.threshold > 100.0 {
        return Err((
            "alerts.rules.threshold",
            "a drop is a percentage of the baseline: at most 100",
        ));
    }
    if kind.on_tps() {
        if r.by == By::Endpoint {
            return Err((
                "alerts.rules.by",
                "TPS rules compare per app or per host, not per endpoint",
            ));
        }
        if !r.endpoint.is_empty() {
            return Err((
                "alerts.rules.endpoint",
                "TPS rules cannot filter by endpoint (the per-second history is per app and host)",
            ));
        }
        if !(1..=1440).contains(&r.compare_minutes) {
            return Err(("alerts.rules.compare_minutes", "must be between 1 and 1440"));
        }
    }
    if r.channels.iter().any(|c| !channels.contains(&c.as_str())) {
        return Err((
            "alerts.rules.channels",
            "names a channel that is not configured",
        ));
    }
    Ok(())
}

impl AlertsConfig {
    /// The names of every channel, webhooks first.
    pub fn channel_names(&self) -> Vec<&str> {
        self.webhooks
            .iter()
            .map(|w| w.name.as_str())
            .chain(self.email.iter().map(|e| e.name.as_str()))
            .collect()
    }

    /// The rules in force without console rules: the built-in ones (unless
    /// replaced by name), then the file's; disabled rules left out. With
    /// console rules, see [`super::ruleset::RuleBook::effective`].
    #[cfg(test)]
    pub fn effective_rules(&self) -> Vec<RuleConfig> {
        super::ruleset::RuleBook::new(self).effective()
    }

    /// Checks what the types cannot; the key and the problem.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if !(100..=10_000).contains(&self.interval_ms) {
            return Err(("alerts.interval_ms", "must be between 100 and 10000"));
        }
        if self.queue_capacity == 0 {
            return Err(("alerts.queue_capacity", "must be at least 1"));
        }
        let channels = self.channel_names();
        let mut names = std::collections::HashSet::new();
        for r in &self.rules {
            validate_rule(r, &channels)?;
            if !names.insert(r.name.as_str()) {
                return Err(("alerts.rules.name", "two rules have the same name"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for w in &self.webhooks {
            if w.name.trim().is_empty() {
                return Err(("alerts.webhooks.name", "every webhook needs a name"));
            }
            if !names.insert(w.name.as_str()) {
                return Err(("alerts.webhooks.name", "two channels have the same name"));
            }
            if super::http::Url::parse(&w.url).is_none() {
                return Err((
                    "alerts.webhooks.url",
                    "must be http://host[:port][/path] or https://host[:port][/path]",
                ));
            }
            if w.max_attempts == 0 {
                return Err(("alerts.webhooks.max_attempts", "must be at least 1"));
            }
            if w.timeout_ms == 0 {
                return Err(("alerts.webhooks.timeout_ms", "must be at least 1"));
            }
        }
        for e in &self.email {
            if e.name.trim().is_empty() {
                return Err(("alerts.email.name", "every email channel needs a name"));
            }
            if !names.insert(e.name.as_str()) {
                return Err(("alerts.email.name", "two channels have the same name"));
            }
            if e.host.trim().is_empty() || e.host.contains(['/', ' ', '@']) {
                return Err(("alerts.email.host", "must be a host name or IP address"));
            }
            if e.port == 0 {
                return Err(("alerts.email.port", "must be a port number"));
            }
            if !super::smtp::valid_address(&e.from) {
                return Err(("alerts.email.from", "must be one address, user@domain"));
            }
            if e.to.is_empty() || !e.to.iter().all(|a| super::smtp::valid_address(a)) {
                return Err((
                    "alerts.email.to",
                    "must list at least one address, user@domain",
                ));
            }
            if !e.username.is_empty() && e.password.is_empty() {
                return Err(("alerts.email.password", "a username needs a password"));
            }
            if e.subject_prefix.chars().any(char::is_control)
                || e.hello_name.is_empty()
                || e.hello_name
                    .contains(|c: char| c.is_whitespace() || c.is_control())
            {
                return Err((
                    "alerts.email.hello_name",
                    "subject_prefix and hello_name must not hold control characters; hello_name one word",
                ));
            }
            if e.max_attempts == 0 {
                return Err(("alerts.email.max_attempts", "must be at least 1"));
            }
            if e.timeout_ms == 0 {
                return Err(("alerts.email.timeout_ms", "must be at least 1"));
            }
        }
        Ok(())
    }

    /// Reads the CA files of the channels that use TLS, so a wrong path is
    /// refused at start (naming the key) rather than at the first alert.
    pub fn validate_files(&self) -> Result<(), (&'static str, String)> {
        for w in &self.webhooks {
            if super::http::Url::parse(&w.url).is_some_and(|u| u.tls) {
                super::tls::client_config(&w.ca_file)
                    .map_err(|m| ("alerts.webhooks.ca_file", m))?;
            }
        }
        for e in &self.email {
            if e.tls != SmtpTls::None {
                super::tls::client_config(&e.ca_file).map_err(|m| ("alerts.email.ca_file", m))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> AlertsConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_parse_and_validate() {
        let c = AlertsConfig::default();
        assert!(c.validate().is_ok());
        assert!(c.validate_files().is_ok());
        let names: Vec<String> = default_rules().into_iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            [
                "error-rate",
                "slow-endpoint",
                "agent-down",
                "disk-full",
                "stuck-requests"
            ]
        );
        for r in default_rules() {
            assert_eq!(validate_rule(&r, &[]), Ok(()), "{}", r.name);
        }

        let c = parse(
            r#"
events_retention_days = 7
deploy_mention_minutes = 10
[[rules]]
name = "error-rate"
kind = "error_rate"
threshold = 50
window_secs = 5
min_tps = 0.2
[[rules]]
name = "boom"
kind = "error_count"
threshold = 3
by = "endpoint"
endpoint = "/api/v6/*"
channels = ["ops", "mail"]
[[rules]]
name = "tps"
kind = "tps_drop"
threshold = 50
compare = "week"
[[webhooks]]
name = "ops"
url = "http://127.0.0.1:9/hook"
secret = "s"
[[email]]
name = "mail"
host = "smtp.example.com"
port = 587
username = "u"
password = "pw-secret"
from = "sonde@example.com"
to = ["ops@example.com"]
"#,
        );
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        assert_eq!((c.events_retention_days, c.deploy_mention_minutes), (7, 10));
        assert_eq!(c.rules[2].compare, Compare::Week);
        assert_eq!(c.email[0].tls, SmtpTls::Starttls);
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("\"s\"") && !debug.contains("pw-secret"),
            "{debug}"
        );
    }

    #[test]
    fn refused() {
        let bad = |t: &str| parse(t).validate().unwrap_err().0;
        assert_eq!(
            bad("[[rules]]\nkind = \"error_rate\"\nthreshold = 1\n"),
            "alerts.rules.name"
        );
        assert_eq!(bad("[[rules]]\nname = \"x\"\n"), "alerts.rules.kind");
        assert_eq!(
            bad(
                "[[rules]]\nname = \"x\"\nkind = \"error_rate\"\nthreshold = 1\nwindow_secs = 61\n"
            ),
            "alerts.rules.window_secs"
        );
        assert_eq!(
            bad("[[rules]]\nname = \"x\"\nkind = \"error_rate\"\nthreshold = 1\nchannels = [\"nope\"]\n"),
            "alerts.rules.channels"
        );
        assert_eq!(
            bad("[[rules]]\nname = \"x\"\nkind = \"tps_drop\"\nthreshold = 150\n"),
            "alerts.rules.threshold"
        );
        assert_eq!(
            bad("[[rules]]\nname = \"x\"\nkind = \"tps_surge\"\nthreshold = 50\nby = \"endpoint\"\n"),
            "alerts.rules.by"
        );
        assert_eq!(
            bad("[[rules]]\nname = \"x\"\nkind = \"tps_surge\"\nthreshold = 50\nendpoint = \"/a\"\n"),
            "alerts.rules.endpoint"
        );
        assert_eq!(
            bad("[[rules]]\nname = \"x\"\nkind = \"host_disk\"\n"),
            "alerts.rules.threshold"
        );
        assert_eq!(
            bad("[[webhooks]]\nname = \"x\"\nurl = \"ftp://hooks.example/x\"\n"),
            "alerts.webhooks.url"
        );
        assert_eq!(
            bad("[[webhooks]]\nname = \"x\"\nurl = \"http://a/\"\n[[email]]\nname = \"x\"\nhost = \"h\"\nfrom = \"a@b\"\nto = [\"c@d\"]\n"),
            "alerts.email.name"
        );
        assert_eq!(
            bad("[[email]]\nname = \"m\"\nhost = \"h\"\nfrom = \"a@b\"\nto = []\n"),
            "alerts.email.to"
        );
        assert_eq!(
            bad("[[email]]\nname = \"m\"\nhost = \"h\"\nfrom = \"a b@c\"\nto = [\"c@d\"]\n"),
            "alerts.email.from"
        );
        assert_eq!(
            bad("[[email]]\nname = \"m\"\nhost = \"h\"\nfrom = \"a@b\"\nto = [\"c@d\"]\nusername = \"u\"\n"),
            "alerts.email.password"
        );
        assert!(toml::from_str::<AlertsConfig>("[[rules]]\nname = \"x\"\nkidn = 1\n").is_err());
        // https is accepted now; its CA file must be readable.
        let c = parse(
            "[[webhooks]]\nname = \"x\"\nurl = \"https://hooks.example/x\"\nca_file = \"/nonexistent/ca.pem\"\n",
        );
        assert!(c.validate().is_ok());
        let (key, why) = c.validate_files().unwrap_err();
        assert_eq!(key, "alerts.webhooks.ca_file");
        assert!(why.contains("/nonexistent/ca.pem"), "{why}");
    }

    #[test]
    fn rules_round_trip_as_json() {
        let r = &default_rules()[1];
        let json = serde_json::to_value(r).unwrap();
        assert_eq!(json["kind"], "response_time");
        assert_eq!(json["by"], "endpoint");
        let back: RuleConfig = serde_json::from_value(json).unwrap();
        assert_eq!(&back, r);
        // Unknown keys are refused from the console too.
        assert!(serde_json::from_str::<RuleConfig>(r#"{"name":"x","kidn":"error_rate"}"#).is_err());
    }
}
