//! The rule book: which rules are in force, from three sources — the
//! built-in defaults, the config file's `[[alerts.rules]]` and the rules
//! made in the console (stored in the collector's database). Owns the
//! precedence between them and the console rules' in-memory copy; the
//! evaluation task picks up changes by [`RuleBook::version`].
//!
//! Precedence, by rule name: **file > console > built-in**. The file is
//! what configuration management deploys, so a console edit never undoes
//! it; a console rule may replace a built-in one. A console rule whose
//! name is also in the file is kept (and listed) but not evaluated.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use serde::Serialize;
use tracing::warn;

use super::config::{default_rules, AlertsConfig, RuleConfig};
use crate::storage::{run_blocking, SharedStore, StoreError, StoredRule};

/// Where a rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    File,
    Console,
    Default,
}

impl Source {
    /// Higher wins.
    fn rank(self) -> u8 {
        match self {
            Source::File => 2,
            Source::Console => 1,
            Source::Default => 0,
        }
    }
}

/// The precedence as the API states it.
pub const PRECEDENCE: [Source; 3] = [Source::File, Source::Console, Source::Default];

/// A rule made in the console.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleRule {
    pub rule: RuleConfig,
    pub updated_ms: i64,
    pub updated_by: String,
}

/// One rule as `GET /api/v1/alerts/rules` lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuleListing {
    #[serde(flatten)]
    pub rule: RuleConfig,
    pub source: Source,
    /// Evaluated now: enabled and not overridden.
    pub effective: bool,
    /// The source whose rule of the same name is in force instead.
    pub overridden_by: Option<Source>,
    /// Console rules only: changeable through the API.
    pub editable: bool,
    pub updated_ms: Option<i64>,
    pub updated_by: Option<String>,
}

pub struct RuleBook {
    defaults: Vec<RuleConfig>,
    file: Vec<RuleConfig>,
    console: RwLock<Vec<ConsoleRule>>,
    version: AtomicU64,
    channels: Vec<String>,
    /// Serialises "read the console rules from the store, then install
    /// them", so an older read never replaces a newer one.
    reload: tokio::sync::Mutex<()>,
}

impl RuleBook {
    /// The file's rules and the defaults; no console rules until
    /// [`RuleBook::reload`].
    pub fn new(config: &AlertsConfig) -> RuleBook {
        RuleBook {
            defaults: if config.defaults {
                default_rules()
            } else {
                Vec::new()
            },
            file: config.rules.clone(),
            console: RwLock::default(),
            version: AtomicU64::new(0),
            channels: config
                .channel_names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    /// Bumped whenever the console rules change.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The configured channel names (what a rule's `channels` may name).
    pub fn channels(&self) -> Vec<&str> {
        self.channels.iter().map(String::as_str).collect()
    }

    /// Whether the config file defines a rule of this name.
    pub fn in_file(&self, name: &str) -> bool {
        self.file.iter().any(|r| r.name == name)
    }

    /// Every rule of every source, with its standing; in precedence order
    /// (file, console, defaults), each in its own order.
    pub fn listing(&self) -> Vec<RuleListing> {
        let console = self.console.read().unwrap_or_else(PoisonError::into_inner);
        let all: Vec<(Source, &RuleConfig, Option<&ConsoleRule>)> = self
            .file
            .iter()
            .map(|r| (Source::File, r, None))
            .chain(console.iter().map(|c| (Source::Console, &c.rule, Some(c))))
            .chain(self.defaults.iter().map(|r| (Source::Default, r, None)))
            .collect();
        all.iter()
            .map(|&(source, rule, c)| {
                let overridden_by = all
                    .iter()
                    .filter(|(s, r, _)| r.name == rule.name && s.rank() > source.rank())
                    .map(|(s, _, _)| *s)
                    .max_by_key(|s| s.rank());
                RuleListing {
                    rule: rule.clone(),
                    source,
                    effective: rule.enabled && overridden_by.is_none(),
                    overridden_by,
                    editable: source == Source::Console,
                    updated_ms: c.map(|c| c.updated_ms),
                    updated_by: c.map(|c| c.updated_by.clone()),
                }
            })
            .collect()
    }

    /// The rules in force: for each name the rule of the highest source,
    /// if enabled.
    pub fn effective(&self) -> Vec<RuleConfig> {
        self.listing()
            .into_iter()
            .filter(|l| l.effective)
            .map(|l| l.rule)
            .collect()
    }

    /// Installs the console rules.
    pub fn set_console(&self, rules: Vec<ConsoleRule>) {
        *self.console.write().unwrap_or_else(PoisonError::into_inner) = rules;
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Reads the console rules from the store and installs them. A stored
    /// rule that no longer parses or validates (written by another version,
    /// or naming a channel since removed from the file) is skipped with a
    /// warning. Returns how many are installed.
    pub async fn reload(&self, store: &SharedStore) -> Result<usize, StoreError> {
        let _guard = self.reload.lock().await;
        let stored = run_blocking(store, |s| s.list_console_rules()).await?;
        let channels = self.channels();
        let rules: Vec<ConsoleRule> = stored
            .into_iter()
            .filter_map(|s| match parse_stored(&s, &channels) {
                Ok(rule) => Some(ConsoleRule {
                    rule,
                    updated_ms: s.updated_ms,
                    updated_by: s.updated_by,
                }),
                Err(why) => {
                    warn!(rule = %s.name, %why, "console alert rule skipped");
                    None
                }
            })
            .collect();
        let n = rules.len();
        self.set_console(rules);
        Ok(n)
    }
}

fn parse_stored(s: &StoredRule, channels: &[&str]) -> Result<RuleConfig, String> {
    let rule: RuleConfig = serde_json::from_str(&s.json).map_err(|e| e.to_string())?;
    super::config::validate_rule(&rule, channels).map_err(|(k, m)| format!("{k}: {m}"))?;
    if rule.name != s.name {
        return Err("stored under another name".into());
    }
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::config::RuleKind;

    fn rule(name: &str, threshold: f64) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            kind: Some(RuleKind::ErrorRate),
            threshold,
            ..RuleConfig::default()
        }
    }

    fn console(rule: RuleConfig) -> ConsoleRule {
        ConsoleRule {
            rule,
            updated_ms: 5,
            updated_by: "admin".into(),
        }
    }

    #[test]
    fn file_beats_console_beats_defaults() {
        let config = AlertsConfig {
            rules: vec![rule("shared", 10.0), rule("file-only", 20.0)],
            ..AlertsConfig::default()
        };
        let book = RuleBook::new(&config);
        let v0 = book.version();
        book.set_console(vec![
            console(rule("shared", 99.0)),
            console(rule("error-rate", 42.0)),
            console(RuleConfig {
                enabled: false,
                ..rule("agent-down", 1.0)
            }),
            console(rule("console-only", 30.0)),
        ]);
        assert!(book.version() > v0);
        let eff: Vec<(String, f64)> = book
            .effective()
            .into_iter()
            .map(|r| (r.name, r.threshold))
            .collect();
        assert_eq!(
            eff,
            [
                ("shared".into(), 10.0),
                ("file-only".into(), 20.0),
                ("error-rate".into(), 42.0),
                ("console-only".into(), 30.0),
                ("slow-endpoint".into(), 3000.0),
                ("disk-full".into(), 90.0),
                ("stuck-requests".into(), 0.0),
            ]
        );
        let list = book.listing();
        let find = |name: &str, source: Source| {
            list.iter()
                .find(|l| l.rule.name == name && l.source == source)
                .unwrap()
                .clone()
        };
        let shadowed = find("shared", Source::Console);
        assert!(!shadowed.effective);
        assert_eq!(shadowed.overridden_by, Some(Source::File));
        assert!(shadowed.editable);
        assert_eq!(shadowed.updated_by.as_deref(), Some("admin"));
        let default = find("error-rate", Source::Default);
        assert_eq!(default.overridden_by, Some(Source::Console));
        // A disabled console rule switches the built-in one off.
        let off = find("agent-down", Source::Console);
        assert!(!off.effective && off.overridden_by.is_none());
        assert_eq!(
            find("agent-down", Source::Default).overridden_by,
            Some(Source::Console)
        );
        assert!(!find("shared", Source::File).editable);
        let json = serde_json::to_value(&shadowed).unwrap();
        assert_eq!(json["source"], "console");
        assert_eq!(json["overridden_by"], "file");
        assert_eq!(json["kind"], "error_rate");
        assert_eq!(json["threshold"], 99.0);
    }

    #[test]
    fn stored_rules_are_checked() {
        let ok = StoredRule {
            name: "x".into(),
            json: serde_json::to_string(&rule("x", 5.0)).unwrap(),
            updated_ms: 1,
            updated_by: "a".into(),
        };
        assert!(parse_stored(&ok, &[]).is_ok());
        let renamed = StoredRule {
            name: "y".into(),
            ..ok.clone()
        };
        assert!(parse_stored(&renamed, &[]).is_err());
        let gone_channel = StoredRule {
            json: serde_json::to_string(&RuleConfig {
                channels: vec!["removed".into()],
                ..rule("x", 5.0)
            })
            .unwrap(),
            ..ok
        };
        assert!(parse_stored(&gone_channel, &[])
            .unwrap_err()
            .contains("channels"));
    }
}
