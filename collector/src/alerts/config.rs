//! `[alerts]` in `collector.toml`: the rules, the webhook channels and the
//! evaluation knobs. Each field's `///` comment is the operator reference
//! (docs/alerts.md repeats them with examples).

use serde::Deserialize;

/// `[alerts]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Also evaluate the built-in rules (docs/alerts.md, "Default rules"):
    /// error rate above 5 % at 1 TPS or more over 60 s (critical), p90
    /// above 3000 ms at 1 TPS or more over 60 s per endpoint (warning),
    /// agent down (critical). A rule in `rules` with the same `name`
    /// replaces the built-in one.
    pub defaults: bool,
    /// How often every rule is evaluated, milliseconds. 100 to 10000.
    pub interval_ms: u64,
    /// Events waiting for delivery, per channel. When a channel's queue is
    /// full the new event is not sent to it and counted as dropped (it is
    /// still stored and shown).
    pub queue_capacity: usize,
    /// The rules, `[[alerts.rules]]`.
    pub rules: Vec<RuleConfig>,
    /// Webhook channels, `[[alerts.webhooks]]`.
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            defaults: true,
            interval_ms: 1000,
            queue_capacity: 1000,
            rules: Vec::new(),
            webhooks: Vec::new(),
        }
    }
}

/// What a rule watches.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Failed transactions, percent of calls, over the window.
    ErrorRate,
    /// Failed transactions, count, over the window.
    ErrorCount,
    /// Response time (`stat` = avg or p90), ms, over the window.
    ResponseTime,
    /// An agent that stopped sending heartbeats (not one that deregistered).
    AgentDown,
    /// A host's CPU use, percent.
    HostCpu,
    /// A host's memory use, percent of its total.
    HostMemory,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::ErrorRate => "error_rate",
            RuleKind::ErrorCount => "error_count",
            RuleKind::ResponseTime => "response_time",
            RuleKind::AgentDown => "agent_down",
            RuleKind::HostCpu => "host_cpu",
            RuleKind::HostMemory => "host_memory",
        }
    }

    /// Rules over finished transactions (the live statistics).
    pub fn on_transactions(self) -> bool {
        matches!(
            self,
            RuleKind::ErrorRate | RuleKind::ErrorCount | RuleKind::ResponseTime
        )
    }
}

/// How bad an event is.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stat {
    Avg,
    P90,
}

/// What one transaction rule is evaluated for: each app, each (app,
/// endpoint) or each (app, host).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum By {
    App,
    Endpoint,
    Host,
}

/// `[[alerts.rules]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// Unique name, shown in events and messages. Required.
    pub name: String,
    /// `error_rate`, `error_count`, `response_time`, `agent_down`,
    /// `host_cpu` or `host_memory`. Required.
    pub kind: Option<RuleKind>,
    /// `warning` or `critical`.
    pub level: Level,
    /// Fire above this: percent for `error_rate`, `host_cpu` and
    /// `host_memory`; a count for `error_count`; milliseconds for
    /// `response_time`. Unused by `agent_down`.
    pub threshold: f64,
    /// `response_time` only: `avg` or `p90`.
    pub stat: Stat,
    /// Transaction rules: whole seconds the condition is computed over,
    /// ending with the last complete second. 1 to 60.
    pub window_secs: u32,
    /// Transaction rules: the condition only counts with at least this many
    /// calls per second over the window (the same scope as the rule).
    pub min_tps: f64,
    /// Transaction rules: evaluated per `app`, per `endpoint` (app and
    /// endpoint) or per `host` (app and host).
    pub by: By,
    /// Only this application; empty: every application.
    pub app: String,
    /// Transaction rules: only endpoints matching this pattern (`*` matches
    /// any run of characters, e.g. `/api/v6/*`); empty: every endpoint.
    pub endpoint: String,
    /// Only this host (agent hostname); empty: every host.
    pub host: String,
    /// Consecutive evaluations (host rules: samples) the condition must hold
    /// before the rule fires; until then the rule is pending. At least 1.
    pub for_checks: u32,
    /// After a notification, the same rule and scope notify again only
    /// once this many seconds have passed: a condition that flaps within it
    /// fires and resolves silently (no event, no message).
    pub silence_secs: u64,
    /// Names of the webhooks (`[[alerts.webhooks]] name`) this rule's events
    /// go to; empty: every webhook.
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
    /// Unique name, used by rules' `channels`. Required.
    pub name: String,
    /// `http://host:port/path` the event is POSTed to. Required. (`https`
    /// is not supported yet: put a TLS proxy in front.)
    pub url: String,
    /// `json` (Sonde's schema) or `slack`.
    pub format: WebhookFormat,
    /// When set, each request carries `X-Sonde-Signature: sha256=HEX`, the
    /// HMAC-SHA256 of the body with this secret.
    pub secret: String,
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
    ]
}

impl AlertsConfig {
    /// The rules in force: the built-in ones (unless switched off or
    /// replaced by name), then the configured ones; disabled rules left out.
    pub fn effective_rules(&self) -> Vec<RuleConfig> {
        let mut rules: Vec<RuleConfig> = Vec::new();
        if self.defaults {
            rules.extend(
                default_rules()
                    .into_iter()
                    .filter(|d| !self.rules.iter().any(|r| r.name == d.name)),
            );
        }
        rules.extend(self.rules.iter().cloned());
        rules.retain(|r| r.enabled);
        rules
    }

    /// Checks what the types cannot; the key and the problem.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if !(100..=10_000).contains(&self.interval_ms) {
            return Err(("alerts.interval_ms", "must be between 100 and 10000"));
        }
        if self.queue_capacity == 0 {
            return Err(("alerts.queue_capacity", "must be at least 1"));
        }
        let mut names = std::collections::HashSet::new();
        for r in &self.rules {
            if r.name.trim().is_empty() {
                return Err(("alerts.rules.name", "every rule needs a name"));
            }
            if !names.insert(r.name.as_str()) {
                return Err(("alerts.rules.name", "two rules have the same name"));
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
            if kind != RuleKind::AgentDown && r.threshold == 0.0 && kind != RuleKind::ErrorCount {
                return Err(("alerts.rules.threshold", "must be set for this kind"));
            }
            if r.channels
                .iter()
                .any(|c| !self.webhooks.iter().any(|w| &w.name == c))
            {
                return Err((
                    "alerts.rules.channels",
                    "names a webhook that is not configured",
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for w in &self.webhooks {
            if w.name.trim().is_empty() {
                return Err(("alerts.webhooks.name", "every webhook needs a name"));
            }
            if !names.insert(w.name.as_str()) {
                return Err(("alerts.webhooks.name", "two webhooks have the same name"));
            }
            if super::webhook::parse_url(&w.url).is_none() {
                return Err((
                    "alerts.webhooks.url",
                    "must be http://host[:port][/path] (https is not supported yet)",
                ));
            }
            if w.max_attempts == 0 {
                return Err(("alerts.webhooks.max_attempts", "must be at least 1"));
            }
            if w.timeout_ms == 0 {
                return Err(("alerts.webhooks.timeout_ms", "must be at least 1"));
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
    fn defaults_and_overrides() {
        let c = AlertsConfig::default();
        assert!(c.validate().is_ok());
        let names: Vec<String> = c.effective_rules().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["error-rate", "slow-endpoint", "agent-down"]);

        let c = parse(
            r#"
[[rules]]
name = "error-rate"
kind = "error_rate"
threshold = 50
window_secs = 5
min_tps = 0.2
[[rules]]
name = "agent-down"
enabled = false
kind = "agent_down"
[[rules]]
name = "boom"
kind = "error_count"
threshold = 3
by = "endpoint"
endpoint = "/api/v6/*"
channels = ["ops"]
[[webhooks]]
name = "ops"
url = "http://127.0.0.1:9/hook"
secret = "s"
"#,
        );
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        let rules = c.effective_rules();
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["slow-endpoint", "error-rate", "boom"]);
        assert_eq!(rules[1].threshold, 50.0);
        assert!(!format!("{c:?}").contains("\"s\""));
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
            bad("[[webhooks]]\nname = \"x\"\nurl = \"https://hooks.example/x\"\n"),
            "alerts.webhooks.url"
        );
        assert!(toml::from_str::<AlertsConfig>("[[rules]]\nname = \"x\"\nkidn = 1\n").is_err());
    }
}
