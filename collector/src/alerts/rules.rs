//! The rule engine: given the live statistics, the agents and the time,
//! decides for each rule and scope whether it is ok, pending or firing,
//! and makes the `firing` / `resolved` events. Pure logic: it reads no
//! clock and does no I/O, so tests drive it with chosen times.
//!
//! Per (rule, scope): ok → (condition holds `for_checks` times in a row;
//! pending in between) → firing → (condition gone) → ok with a `resolved`
//! event. A firing that comes within `silence_secs` of the scope's last
//! notification is kept silent, and so is its recovery.

use std::collections::HashMap;

use super::config::{By, RuleConfig, RuleKind, Stat};
use crate::live_stats::{GroupTotals, LiveStats};
use crate::storage::{AgentRecord, EventRecord};

/// What an event is about. Transaction rules: the app and, per `by`, the
/// endpoint or host; host and agent rules: the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub app: Option<String>,
    pub endpoint: Option<String>,
    pub host: Option<String>,
}

impl Scope {
    fn describe(&self) -> String {
        let parts: Vec<&str> = [&self.app, &self.endpoint, &self.host]
            .into_iter()
            .filter_map(|p| p.as_deref())
            .collect();
        parts.join(" ")
    }
}

/// Where a (rule, scope) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Ok,
    /// The condition holds, not yet `for_checks` times in a row.
    Pending,
    Firing,
}

#[derive(Debug, Clone)]
struct ScopeState {
    phase: Phase,
    /// Consecutive checks the condition held.
    held: u32,
    /// Whether the current firing was notified (not silenced).
    notified: bool,
    last_notified_ms: Option<i64>,
    /// Host rules: the sample last checked, so one sample counts once.
    last_sample_ms: Option<i64>,
}

impl Default for ScopeState {
    fn default() -> Self {
        ScopeState {
            phase: Phase::Ok,
            held: 0,
            notified: false,
            last_notified_ms: None,
            last_sample_ms: None,
        }
    }
}

/// One measurement of a rule for a scope.
#[derive(Debug, Clone)]
struct Check {
    value: f64,
    holds: bool,
    /// What was seen, for the message.
    detail: String,
    /// Host rules: the sample's time; a repeated sample is not a new check.
    sample_ms: Option<i64>,
}

/// What the engine reads besides the live statistics.
pub struct Inputs<'a> {
    pub stats: &'a LiveStats,
    /// Every registered agent (only read when an `agent_down` rule exists).
    pub agents: &'a [AgentRecord],
    /// An agent silent for longer than this is down.
    pub down_after_ms: i64,
    /// Which agents are connected (an agent whose stream dropped is down).
    pub presence: &'a crate::presence::Presence,
}

/// The rules and their per-scope state.
pub struct Engine {
    rules: Vec<RuleConfig>,
    states: HashMap<(usize, Scope), ScopeState>,
}

/// A new event and the channels it goes to (empty: all).
#[derive(Debug, Clone)]
pub struct Fired {
    pub event: EventRecord,
    pub channels: Vec<String>,
}

impl Engine {
    pub fn new(rules: Vec<RuleConfig>) -> Self {
        Engine {
            rules,
            states: HashMap::new(),
        }
    }

    pub fn rules(&self) -> &[RuleConfig] {
        &self.rules
    }

    /// Whether some rule needs the agent list.
    pub fn wants_agents(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.kind == Some(RuleKind::AgentDown))
    }

    /// Where rule `name` stands for `scope`.
    #[cfg(test)]
    pub fn phase(&self, name: &str, scope: &Scope) -> Phase {
        self.rules
            .iter()
            .position(|r| r.name == name)
            .and_then(|i| self.states.get(&(i, scope.clone())))
            .map_or(Phase::Ok, |s| s.phase)
    }

    /// Evaluates every rule at `now_ms`; returns the events to store and
    /// send, in rule order.
    pub fn evaluate(&mut self, now_ms: i64, inputs: &Inputs<'_>) -> Vec<Fired> {
        let mut fired = Vec::new();
        for idx in 0..self.rules.len() {
            let rule = &self.rules[idx];
            let checks = match rule.kind {
                Some(k) if k.on_transactions() => transaction_checks(rule, k, inputs, now_ms),
                Some(RuleKind::AgentDown) => agent_checks(rule, inputs, now_ms),
                Some(k @ (RuleKind::HostCpu | RuleKind::HostMemory)) => {
                    host_checks(rule, k, inputs, now_ms)
                }
                _ => HashMap::new(),
            };
            // Scopes with state but no data now: the condition is gone.
            let mut scopes: Vec<Scope> = self
                .states
                .keys()
                .filter(|(i, s)| *i == idx && !checks.contains_key(s))
                .map(|(_, s)| s.clone())
                .collect();
            scopes.extend(checks.keys().cloned());
            scopes.sort();
            for scope in scopes {
                let check = checks.get(&scope).cloned().unwrap_or(Check {
                    value: 0.0,
                    holds: false,
                    detail: "no data".into(),
                    sample_ms: None,
                });
                if let Some(event) = self.step(idx, &scope, &check, now_ms) {
                    fired.push(Fired {
                        event,
                        channels: self.rules[idx].channels.clone(),
                    });
                }
            }
            // Forget quiet scopes whose silence period is over.
            let silence_ms = silence_ms(&self.rules[idx]);
            self.states.retain(|(i, _), s| {
                *i != idx
                    || s.phase != Phase::Ok
                    || s.last_notified_ms
                        .is_some_and(|t| now_ms.saturating_sub(t) < silence_ms)
            });
        }
        fired
    }

    /// One check of one scope through the state machine.
    fn step(
        &mut self,
        idx: usize,
        scope: &Scope,
        check: &Check,
        now_ms: i64,
    ) -> Option<EventRecord> {
        let rule = &self.rules[idx];
        let state = self.states.entry((idx, scope.clone())).or_default();
        if check.sample_ms.is_some() {
            if state.last_sample_ms == check.sample_ms {
                return None;
            }
            state.last_sample_ms = check.sample_ms;
        }
        match (state.phase, check.holds) {
            (Phase::Ok | Phase::Pending, true) => {
                state.held += 1;
                if state.held < rule.for_checks {
                    state.phase = Phase::Pending;
                    return None;
                }
                state.phase = Phase::Firing;
                state.notified = state
                    .last_notified_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) >= silence_ms(rule));
                if !state.notified {
                    return None;
                }
                state.last_notified_ms = Some(now_ms);
                Some(event(rule, scope, check, now_ms, "firing"))
            }
            (Phase::Ok | Phase::Pending, false) => {
                state.phase = Phase::Ok;
                state.held = 0;
                None
            }
            (Phase::Firing, true) => None,
            (Phase::Firing, false) => {
                state.phase = Phase::Ok;
                state.held = 0;
                let notified = std::mem::take(&mut state.notified);
                notified.then(|| event(rule, scope, check, now_ms, "resolved"))
            }
        }
    }
}

fn silence_ms(rule: &RuleConfig) -> i64 {
    i64::try_from(rule.silence_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn event(rule: &RuleConfig, scope: &Scope, check: &Check, now_ms: i64, state: &str) -> EventRecord {
    let kind = rule.kind.map_or("", RuleKind::as_str);
    let what = scope.describe();
    let message = if state == "firing" {
        format!(
            "[{}] {}: {} — {}",
            rule.level.as_str(),
            rule.name,
            what,
            check.detail
        )
    } else {
        format!("[resolved] {}: {} — {}", rule.name, what, check.detail)
    };
    EventRecord {
        id: 0,
        ts_ms: now_ms,
        level: rule.level.as_str().into(),
        kind: kind.into(),
        state: state.into(),
        message,
        app: scope.app.clone(),
        endpoint: scope.endpoint.clone(),
        host: scope.host.clone(),
        rule: rule.name.clone(),
        value: check.value,
        threshold: rule.threshold,
        acked_ms: None,
        acked_by: None,
    }
}

/// `*` matches any run of characters; everything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn transaction_checks(
    rule: &RuleConfig,
    kind: RuleKind,
    inputs: &Inputs<'_>,
    now_ms: i64,
) -> HashMap<Scope, Check> {
    let window_s = i64::from(rule.window_secs);
    let p90 = kind == RuleKind::ResponseTime && rule.stat == Stat::P90;
    let groups = inputs
        .stats
        .grouped(now_ms, window_s, p90, |app, host, endpoint| {
            let keep = (rule.app.is_empty() || rule.app == app)
                && (rule.host.is_empty() || rule.host == host)
                && (rule.endpoint.is_empty() || glob_match(&rule.endpoint, endpoint));
            keep.then(|| Scope {
                app: Some(app.to_owned()),
                endpoint: (rule.by == By::Endpoint).then(|| endpoint.to_owned()),
                host: (rule.by == By::Host).then(|| host.to_owned()),
            })
        });
    groups
        .into_iter()
        .map(|(scope, t)| {
            let check = transaction_check(rule, kind, &t, window_s);
            (scope, check)
        })
        .collect()
}

fn transaction_check(rule: &RuleConfig, kind: RuleKind, t: &GroupTotals, window_s: i64) -> Check {
    let tps = t.calls as f64 / window_s as f64;
    let busy = t.calls > 0 && tps >= rule.min_tps;
    let (value, holds, what) = match kind {
        RuleKind::ErrorRate => {
            let rate = 100.0 * t.errors as f64 / t.calls.max(1) as f64;
            (
                rate,
                busy && rate > rule.threshold,
                format!("error rate {rate:.1} % (threshold {} %)", rule.threshold),
            )
        }
        RuleKind::ErrorCount => {
            let n = t.errors as f64;
            (
                n,
                n > rule.threshold,
                format!("{} errors (threshold {})", t.errors, rule.threshold),
            )
        }
        _ => {
            let (name, ms) = match rule.stat {
                Stat::Avg => ("avg", t.avg_ms),
                Stat::P90 => ("p90", t.p90_ms),
            };
            (
                ms,
                busy && ms > rule.threshold,
                format!("{name} {ms:.0} ms (threshold {} ms)", rule.threshold),
            )
        }
    };
    Check {
        value,
        holds,
        detail: format!(
            "{what}; {} calls, {} failed, {tps:.2} TPS over {window_s} s",
            t.calls, t.errors
        ),
        sample_ms: None,
    }
}

fn agent_checks(rule: &RuleConfig, inputs: &Inputs<'_>, now_ms: i64) -> HashMap<Scope, Check> {
    inputs
        .agents
        .iter()
        .filter(|a| {
            (rule.host.is_empty() || rule.host == a.identity.hostname)
                && (rule.app.is_empty() || a.apps.contains(&rule.app))
        })
        .filter_map(|a| {
            // Stopped and terminated agents deregistered on purpose: no
            // scope, so a firing one resolves.
            let status = inputs.presence.status(a, now_ms, inputs.down_after_ms);
            if status != "down" && status != "up" {
                return None;
            }
            let silent_s = now_ms.saturating_sub(a.last_seen_ms) as f64 / 1000.0;
            let host = if a.identity.hostname.is_empty() {
                a.identity.agent_id.clone()
            } else {
                a.identity.hostname.clone()
            };
            let check = Check {
                value: silent_s,
                holds: status == "down",
                detail: format!(
                    "agent {} last heard from {silent_s:.0} s ago",
                    a.identity.agent_id
                ),
                sample_ms: None,
            };
            Some((
                Scope {
                    app: None,
                    endpoint: None,
                    host: Some(host),
                },
                check,
            ))
        })
        .collect()
}

fn host_checks(
    rule: &RuleConfig,
    kind: RuleKind,
    inputs: &Inputs<'_>,
    now_ms: i64,
) -> HashMap<Scope, Check> {
    inputs
        .stats
        .latest_hosts(now_ms)
        .into_iter()
        .filter(|h| rule.host.is_empty() || rule.host == h.host)
        .map(|h| {
            let (name, value) = match kind {
                RuleKind::HostCpu => ("CPU", h.cpu_percent),
                _ => (
                    "memory",
                    100.0 * h.mem_used_bytes as f64 / h.mem_total_bytes.max(1) as f64,
                ),
            };
            let check = Check {
                value,
                holds: value > rule.threshold,
                detail: format!("{name} {value:.1} % (threshold {} %)", rule.threshold),
                sample_ms: Some(h.ts_ms),
            };
            (
                Scope {
                    app: None,
                    endpoint: None,
                    host: Some(h.host),
                },
                check,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::config::Level;
    use crate::storage::tests::record;
    use crate::storage::AgentState;
    use sonde_proto::v1::{AgentIdentity, HostMetrics};

    fn error_rule() -> RuleConfig {
        RuleConfig {
            name: "errors".into(),
            kind: Some(RuleKind::ErrorRate),
            threshold: 50.0,
            window_secs: 5,
            min_tps: 0.2,
            silence_secs: 60,
            ..RuleConfig::default()
        }
    }

    /// `n` calls ending in second `s` (epoch s), `failed` of them failing.
    fn traffic(stats: &LiveStats, s: i64, n: u8, failed: u8, now_ms: i64) {
        let recs: Vec<_> = (0..n)
            .map(|i| {
                let mut r = record(i, s * 1000 + i64::from(i), 10);
                r.url = "/api/v6/boom".into();
                if i < failed {
                    r.status = 500;
                }
                r
            })
            .collect();
        stats.observe(&recs, "web-1", now_ms);
    }

    /// No stream seen: the status is the stored state and the silence.
    fn presence() -> &'static crate::presence::Presence {
        Box::leak(Box::new(crate::presence::Presence::new(5_000)))
    }

    fn inputs(stats: &LiveStats) -> Inputs<'_> {
        Inputs {
            stats,
            agents: &[],
            down_after_ms: 15_000,
            presence: presence(),
        }
    }

    fn app_scope() -> Scope {
        Scope {
            app: Some("shop".into()),
            endpoint: None,
            host: None,
        }
    }

    #[test]
    fn fires_within_a_second_then_resolves_after_the_window() {
        let stats = LiveStats::default();
        let mut engine = Engine::new(vec![error_rule()]);
        let t0 = 1_000_000_000; // a whole second
        assert!(engine.evaluate(t0, &inputs(&stats)).is_empty());
        // Failures end in second t0/1000; the next evaluation after that
        // second completes sees them.
        traffic(&stats, t0 / 1000, 4, 4, t0 + 300);
        assert!(engine.evaluate(t0 + 500, &inputs(&stats)).is_empty());
        let fired = engine.evaluate(t0 + 1000, &inputs(&stats));
        assert_eq!(fired.len(), 1);
        let e = &fired[0].event;
        assert_eq!(
            (e.state.as_str(), e.level.as_str(), e.kind.as_str()),
            ("firing", "critical", "error_rate")
        );
        assert_eq!(e.app.as_deref(), Some("shop"));
        assert_eq!(e.value, 100.0);
        assert!(e.message.contains("error rate 100.0 %"), "{}", e.message);
        assert_eq!(engine.phase("errors", &app_scope()), Phase::Firing);
        // Still failing: no repeat.
        assert!(engine.evaluate(t0 + 2000, &inputs(&stats)).is_empty());
        // The failures leave the 5 s window: resolved.
        assert!(engine.evaluate(t0 + 5000, &inputs(&stats)).is_empty());
        let fired = engine.evaluate(t0 + 6000, &inputs(&stats));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].event.state, "resolved");
        assert_eq!(engine.phase("errors", &app_scope()), Phase::Ok);
    }

    #[test]
    fn min_tps_and_threshold_gate_the_condition() {
        let stats = LiveStats::default();
        let mut engine = Engine::new(vec![error_rule()]);
        let t0 = 2_000_000_000;
        // 10 calls in 5 s (2 TPS), 4 failing: 40 % is under the 50 %
        // threshold.
        traffic(&stats, t0 / 1000, 10, 4, t0 + 100);
        assert!(engine.evaluate(t0 + 1000, &inputs(&stats)).is_empty());
        let mut rule = error_rule();
        rule.min_tps = 5.0;
        rule.threshold = 10.0;
        let mut strict = Engine::new(vec![rule]);
        assert!(
            strict.evaluate(t0 + 1000, &inputs(&stats)).is_empty(),
            "2 TPS is below min_tps"
        );
        let mut rule = error_rule();
        rule.min_tps = 2.0;
        rule.threshold = 10.0;
        let mut enough = Engine::new(vec![rule]);
        assert_eq!(
            enough.evaluate(t0 + 1000, &inputs(&stats)).len(),
            1,
            "2 TPS, 40 % > 10 %"
        );
    }

    #[test]
    fn pending_until_for_checks_and_silence_period() {
        let stats = LiveStats::default();
        let mut rule = error_rule();
        rule.for_checks = 2;
        rule.window_secs = 1;
        let mut engine = Engine::new(vec![rule]);
        let mut t = 3_000_000_000i64;
        let tick = |engine: &mut Engine, t: i64| engine.evaluate(t, &inputs(&stats));

        traffic(&stats, t / 1000, 3, 3, t);
        t += 1000;
        assert!(tick(&mut engine, t).is_empty());
        assert_eq!(engine.phase("errors", &app_scope()), Phase::Pending);
        traffic(&stats, t / 1000, 3, 3, t);
        t += 1000;
        let f = tick(&mut engine, t);
        assert_eq!(f.len(), 1, "fires on the second check");
        assert_eq!(f[0].event.state, "firing");
        // Quiet second: resolved.
        t += 1000;
        let f = tick(&mut engine, t);
        assert_eq!(f[0].event.state, "resolved");
        // Flaps again within the 60 s silence: fires and resolves silently.
        for _ in 0..2 {
            traffic(&stats, t / 1000, 3, 3, t);
            t += 1000;
            assert!(tick(&mut engine, t).is_empty());
        }
        assert_eq!(engine.phase("errors", &app_scope()), Phase::Firing);
        t += 1000;
        assert!(tick(&mut engine, t).is_empty(), "silent recovery");
        // After the silence period it notifies again.
        t += 60_000;
        let mut events = Vec::new();
        for _ in 0..2 {
            traffic(&stats, t / 1000, 3, 3, t);
            t += 1000;
            events.extend(tick(&mut engine, t));
        }
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].event.state, "firing");
    }

    #[test]
    fn response_time_per_endpoint_names_it() {
        let stats = LiveStats::default();
        let rule = RuleConfig {
            name: "slow".into(),
            kind: Some(RuleKind::ResponseTime),
            level: Level::Warning,
            threshold: 1000.0,
            stat: Stat::P90,
            by: By::Endpoint,
            window_secs: 5,
            min_tps: 0.0,
            endpoint: "/api/*".into(),
            ..RuleConfig::default()
        };
        let mut engine = Engine::new(vec![rule]);
        let t0 = 4_000_000_000;
        let mut slow = record(1, t0 - 500, 2500);
        slow.url = "/api/slow".into();
        let mut other = record(2, t0 - 500, 2500);
        other.url = "/home".into();
        stats.observe(&[slow, other], "web-1", t0);
        let f = engine.evaluate(t0, &inputs(&stats));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].event.endpoint.as_deref(), Some("/api/slow"));
        assert_eq!(f[0].event.level, "warning");
        assert!(f[0].event.message.contains("p90"), "{}", f[0].event.message);
    }

    #[test]
    fn agent_down_but_not_when_deregistered() {
        let stats = LiveStats::default();
        let rule = RuleConfig {
            name: "down".into(),
            kind: Some(RuleKind::AgentDown),
            ..RuleConfig::default()
        };
        let mut engine = Engine::new(vec![rule]);
        let agent = |id: &str, state, last_seen_ms| AgentRecord {
            identity: AgentIdentity {
                agent_id: id.into(),
                hostname: format!("{id}-host"),
                ..Default::default()
            },
            state,
            last_seen_ms,
            registered_ms: 0,
            apps: vec![],
            identity_key: String::new(),
            duplicate_of: None,
        };
        let agents = vec![
            agent("a", AgentState::Running, 0),
            agent("b", AgentState::Stopped, 0),
            agent("c", AgentState::Terminated, 0),
            agent("d", AgentState::Running, 19_000),
        ];
        let inputs = Inputs {
            stats: &stats,
            agents: &agents,
            down_after_ms: 15_000,
            presence: presence(),
        };
        let f = engine.evaluate(20_000, &inputs);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].event.host.as_deref(), Some("a-host"));
        assert_eq!(f[0].event.kind, "agent_down");
        // It comes back.
        let back = vec![agent("a", AgentState::Running, 21_000)];
        let inputs = Inputs {
            stats: &stats,
            agents: &back,
            down_after_ms: 15_000,
            presence: presence(),
        };
        let f = engine.evaluate(22_000, &inputs);
        assert_eq!(f[0].event.state, "resolved");
    }

    #[test]
    fn host_cpu_counts_samples_not_ticks() {
        let stats = LiveStats::default();
        let rule = RuleConfig {
            name: "cpu".into(),
            kind: Some(RuleKind::HostCpu),
            threshold: 90.0,
            for_checks: 2,
            ..RuleConfig::default()
        };
        let mut engine = Engine::new(vec![rule]);
        let sample = |ts: i64, cpu: f64| HostMetrics {
            ts_unix_ms: ts,
            cpu_percent: cpu,
            ..Default::default()
        };
        stats.host_metrics(&sample(10_000, 95.0), "web-1", 10_000);
        assert!(engine.evaluate(10_000, &inputs(&stats)).is_empty());
        assert!(
            engine.evaluate(11_000, &inputs(&stats)).is_empty(),
            "the same sample is one check"
        );
        stats.host_metrics(&sample(12_000, 97.0), "web-1", 12_000);
        let f = engine.evaluate(12_000, &inputs(&stats));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].event.host.as_deref(), Some("web-1"));
        stats.host_metrics(&sample(13_000, 20.0), "web-1", 13_000);
        assert_eq!(
            engine.evaluate(13_000, &inputs(&stats))[0].event.state,
            "resolved"
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("/api/v6/*", "/api/v6/boom"));
        assert!(glob_match("*boom", "/api/v6/boom"));
        assert!(glob_match("/a/*/c", "/a/b/c"));
        assert!(!glob_match("/a/*/c", "/a/b/d"));
        assert!(glob_match("/x", "/x"));
        assert!(!glob_match("/x", "/xy"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("ab*ba", "aba"));
    }
}
