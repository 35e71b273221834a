//! The rule engine: given the live statistics, the in-flight requests, the
//! agents, the TPS baselines and the time, decides for each rule and scope
//! whether it is ok, pending or firing, and makes the `firing` / `resolved`
//! events. Pure logic: it reads no clock and does no I/O (the evaluation
//! task reads the store and hands the results in), so tests drive it with
//! chosen times.
//!
//! Per (rule, scope): ok → (condition holds `for_checks` times in a row;
//! pending in between) → firing → (condition gone) → ok with a `resolved`
//! event. A firing that comes within `silence_secs` of the scope's last
//! notification is kept silent, and so is its recovery.
//!
//! State is keyed by rule name, so it survives a change of the rule set
//! (console edits) and, saved through [`Engine::export`] and
//! [`Engine::restore`], a collector restart.

use std::collections::{HashMap, HashSet};

use super::config::{By, Compare, RuleConfig, RuleKind, Stat};
use crate::live::ActiveView;
use crate::live_stats::{GroupTotals, LiveStats, HOST_STALE_MS};
use crate::storage::{AgentRecord, AlertStateRecord, EventRecord};

/// After a restart, a scope restored as firing is not resolved for lack of
/// data until this much longer than its rule's window has passed: agents
/// reconnect and the live statistics fill up first.
const RESTORE_GRACE_MS: i64 = 10_000;

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    #[default]
    Ok,
    /// The condition holds, not yet `for_checks` times in a row.
    Pending,
    Firing,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Ok => "ok",
            Phase::Pending => "pending",
            Phase::Firing => "firing",
        }
    }

    fn parse(s: &str) -> Option<Phase> {
        match s {
            "ok" => Some(Phase::Ok),
            "pending" => Some(Phase::Pending),
            "firing" => Some(Phase::Firing),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct ScopeState {
    phase: Phase,
    /// Consecutive checks the condition held.
    held: u32,
    /// Whether the current firing was notified (not silenced).
    notified: bool,
    last_notified_ms: Option<i64>,
    /// Host rules: the sample last checked, so one sample counts once.
    last_sample_ms: Option<i64>,
    /// Restored as firing after a restart: not resolved before this time.
    hold_until_ms: Option<i64>,
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

/// Calls per (app, host) over a TPS rule's baseline window, read from the
/// store by the evaluation task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Baseline {
    pub from_ms: i64,
    pub to_ms: i64,
    /// (app, host, calls)
    pub rows: Vec<(String, String, u64)>,
}

/// The baseline window `[from_ms, to_ms)` a TPS rule compares with at
/// `now_ms`: its current window (the `window_secs` whole seconds before the
/// running one) moved back `compare_minutes` or 7 days.
pub fn baseline_range(rule: &RuleConfig, now_ms: i64) -> (i64, i64) {
    let to_s = now_ms.div_euclid(1000);
    let back_s = match rule.compare {
        Compare::Minutes => i64::from(rule.compare_minutes) * 60,
        Compare::Week => 7 * 86_400,
    };
    let to = (to_s - back_s) * 1000;
    (to - i64::from(rule.window_secs) * 1000, to)
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
    /// The requests in flight now (`stuck_requests`); `None` skips those
    /// rules this round.
    pub active: Option<&'a ActiveView>,
    /// TPS rules' baselines by rule name; a TPS rule without one is
    /// skipped this round (its state is left as it is).
    pub baselines: &'a HashMap<String, Baseline>,
}

/// The rules and their per-scope state.
pub struct Engine {
    rules: Vec<RuleConfig>,
    states: HashMap<(String, Scope), ScopeState>,
    /// When evaluation started (TPS rules wait for a full window of live
    /// data after it).
    started_ms: Option<i64>,
    /// Some state changed since [`Engine::take_dirty`].
    dirty: bool,
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
            started_ms: None,
            dirty: false,
        }
    }

    pub fn rules(&self) -> &[RuleConfig] {
        &self.rules
    }

    /// Evaluation started at `now_ms`: TPS rules make no check until their
    /// window (plus the time agents take to reconnect) is covered by live
    /// data, so an empty window after a restart is not read as a drop.
    pub fn set_started(&mut self, now_ms: i64) {
        self.started_ms = Some(now_ms);
    }

    /// Replaces the rules; the state of a rule whose name and kind stay is
    /// kept, the rest is forgotten (silently: no resolved event).
    pub fn set_rules(&mut self, rules: Vec<RuleConfig>) {
        let keep: HashSet<(&str, Option<RuleKind>)> =
            rules.iter().map(|r| (r.name.as_str(), r.kind)).collect();
        let kinds: HashMap<&str, Option<RuleKind>> = self
            .rules
            .iter()
            .map(|r| (r.name.as_str(), r.kind))
            .collect();
        let before = self.states.len();
        self.states.retain(|(name, _), _| {
            kinds
                .get(name.as_str())
                .is_some_and(|k| keep.contains(&(name.as_str(), *k)))
        });
        self.dirty |= self.states.len() != before;
        self.rules = rules;
    }

    /// Whether some rule needs the agent list.
    pub fn wants_agents(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.kind == Some(RuleKind::AgentDown))
    }

    /// Whether some rule needs the requests in flight.
    pub fn wants_active(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.kind == Some(RuleKind::StuckRequests))
    }

    /// The TPS rules (their baselines are read before each evaluation).
    pub fn tps_rules(&self) -> impl Iterator<Item = &RuleConfig> {
        self.rules
            .iter()
            .filter(|r| r.kind.is_some_and(RuleKind::on_tps))
    }

    /// Where rule `name` stands for `scope`.
    #[cfg(test)]
    pub fn phase(&self, name: &str, scope: &Scope) -> Phase {
        self.states
            .get(&(name.to_owned(), scope.clone()))
            .map_or(Phase::Ok, |s| s.phase)
    }

    /// True once after any change worth saving (a phase, a notification,
    /// a forgotten scope).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// The state to save.
    pub fn export(&self) -> Vec<AlertStateRecord> {
        let mut out: Vec<AlertStateRecord> = self
            .states
            .iter()
            .map(|((rule, scope), s)| AlertStateRecord {
                rule: rule.clone(),
                app: scope.app.clone(),
                endpoint: scope.endpoint.clone(),
                host: scope.host.clone(),
                phase: s.phase.as_str().into(),
                held: s.held,
                notified: s.notified,
                last_notified_ms: s.last_notified_ms,
                last_sample_ms: s.last_sample_ms,
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.rule, &a.app, &a.endpoint, &a.host).cmp(&(&b.rule, &b.app, &b.endpoint, &b.host))
        });
        out
    }

    /// Takes back saved state (after a restart, at `now_ms`). Records of
    /// rules that no longer exist are dropped. A scope that was firing
    /// stays firing — no second message — and is not resolved for lack of
    /// data until its rule's window plus a grace has passed.
    pub fn restore(&mut self, records: Vec<AlertStateRecord>, now_ms: i64) {
        for r in records {
            let Some(rule) = self.rules.iter().find(|x| x.name == r.rule) else {
                continue;
            };
            let Some(phase) = Phase::parse(&r.phase) else {
                continue;
            };
            let hold = (phase == Phase::Firing).then(|| now_ms + restore_grace_ms(rule));
            let scope = Scope {
                app: r.app,
                endpoint: r.endpoint,
                host: r.host,
            };
            self.states.insert(
                (r.rule, scope),
                ScopeState {
                    phase,
                    held: r.held,
                    notified: r.notified,
                    last_notified_ms: r.last_notified_ms,
                    last_sample_ms: r.last_sample_ms,
                    hold_until_ms: hold,
                },
            );
        }
    }

    /// Evaluates every rule at `now_ms`; returns the events to store and
    /// send, in rule order.
    pub fn evaluate(&mut self, now_ms: i64, inputs: &Inputs<'_>) -> Vec<Fired> {
        let mut fired = Vec::new();
        for idx in 0..self.rules.len() {
            let rule = &self.rules[idx];
            let checks = match rule.kind {
                Some(k) if k.on_transactions() => Some(transaction_checks(rule, k, inputs, now_ms)),
                Some(k) if k.on_tps() => {
                    let warm = self
                        .started_ms
                        .is_none_or(|s| now_ms.saturating_sub(s) >= tps_warm_up_ms(rule));
                    if warm {
                        tps_checks(rule, k, inputs, now_ms)
                    } else {
                        None
                    }
                }
                Some(RuleKind::StuckRequests) => stuck_checks(rule, inputs),
                Some(RuleKind::AgentDown) => Some(agent_checks(rule, inputs, now_ms)),
                Some(k) if k.on_hosts() => Some(host_checks(rule, k, inputs, now_ms)),
                _ => None,
            };
            // No input this round: the rule's scopes stay as they are.
            let Some(checks) = checks else {
                continue;
            };
            let name = rule.name.clone();
            // Scopes with state but no data now: the condition is gone.
            let mut scopes: Vec<Scope> = self
                .states
                .keys()
                .filter(|(n, s)| *n == name && !checks.contains_key(s))
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
            let before = self.states.len();
            self.states.retain(|(n, _), s| {
                *n != name
                    || s.phase != Phase::Ok
                    || s.last_notified_ms
                        .is_some_and(|t| now_ms.saturating_sub(t) < silence_ms)
            });
            self.dirty |= self.states.len() != before;
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
        let state = self
            .states
            .entry((rule.name.clone(), scope.clone()))
            .or_default();
        if check.sample_ms.is_some() {
            if state.last_sample_ms == check.sample_ms {
                return None;
            }
            state.last_sample_ms = check.sample_ms;
        }
        let before = (state.phase, state.notified, state.last_notified_ms);
        let event = match (state.phase, check.holds) {
            (Phase::Ok | Phase::Pending, true) => {
                state.held += 1;
                if state.held < rule.for_checks {
                    state.phase = Phase::Pending;
                    None
                } else {
                    state.phase = Phase::Firing;
                    state.notified = state
                        .last_notified_ms
                        .is_none_or(|t| now_ms.saturating_sub(t) >= silence_ms(rule));
                    if state.notified {
                        state.last_notified_ms = Some(now_ms);
                        Some(event(rule, scope, check, now_ms, "firing"))
                    } else {
                        None
                    }
                }
            }
            (Phase::Ok | Phase::Pending, false) => {
                state.phase = Phase::Ok;
                state.held = 0;
                None
            }
            (Phase::Firing, true) => None,
            (Phase::Firing, false) if state.hold_until_ms.is_some_and(|t| now_ms < t) => None,
            (Phase::Firing, false) => {
                state.phase = Phase::Ok;
                state.held = 0;
                state.hold_until_ms = None;
                let notified = std::mem::take(&mut state.notified);
                notified.then(|| event(rule, scope, check, now_ms, "resolved"))
            }
        };
        self.dirty |= before != (state.phase, state.notified, state.last_notified_ms);
        event
    }
}

fn silence_ms(rule: &RuleConfig) -> i64 {
    i64::try_from(rule.silence_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn window_ms(rule: &RuleConfig) -> i64 {
    i64::from(rule.window_secs) * 1000
}

/// How long a restored firing scope is held without data.
fn restore_grace_ms(rule: &RuleConfig) -> i64 {
    match rule.kind {
        Some(k) if k.on_transactions() || k.on_tps() => window_ms(rule) + RESTORE_GRACE_MS,
        Some(k) if k.on_hosts() => HOST_STALE_MS,
        Some(RuleKind::StuckRequests) => RESTORE_GRACE_MS,
        _ => 0,
    }
}

/// How long after the start TPS rules wait: their window, plus the time
/// agents take to reconnect and flush.
fn tps_warm_up_ms(rule: &RuleConfig) -> i64 {
    window_ms(rule) + RESTORE_GRACE_MS
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

/// The scope of a transaction (or request in flight) for `rule`, or `None`
/// when the rule's filters leave it out.
fn scope_of(rule: &RuleConfig, app: &str, host: &str, endpoint: &str) -> Option<Scope> {
    let keep = (rule.app.is_empty() || rule.app == app)
        && (rule.host.is_empty() || rule.host == host)
        && (rule.endpoint.is_empty() || glob_match(&rule.endpoint, endpoint));
    keep.then(|| Scope {
        app: Some(app.to_owned()),
        endpoint: (rule.by == By::Endpoint).then(|| endpoint.to_owned()),
        host: (rule.by == By::Host).then(|| host.to_owned()),
    })
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
            scope_of(rule, app, host, endpoint)
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
        RuleKind::SqlErrors => {
            let n = t.sql_errors as f64;
            (
                n,
                n > rule.threshold,
                format!(
                    "{} failed SQL statements (threshold {})",
                    t.sql_errors, rule.threshold
                ),
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

fn tps_checks(
    rule: &RuleConfig,
    kind: RuleKind,
    inputs: &Inputs<'_>,
    now_ms: i64,
) -> Option<HashMap<Scope, Check>> {
    let base = inputs.baselines.get(&rule.name)?;
    let window_s = i64::from(rule.window_secs);
    // The per-second history has no endpoint: TPS rules are per app or
    // per (app, host), never filtered by endpoint (validation refuses it).
    let current = inputs
        .stats
        .grouped(now_ms, window_s, false, |app, host, _| {
            scope_of(rule, app, host, "")
        });
    let mut baseline: HashMap<Scope, u64> = HashMap::new();
    for (app, host, calls) in &base.rows {
        if let Some(s) = scope_of(rule, app, host, "") {
            *baseline.entry(s).or_default() += calls;
        }
    }
    let span_s = ((base.to_ms - base.from_ms) as f64 / 1000.0).max(1.0);
    let ago = match rule.compare {
        Compare::Minutes => format!("{} min earlier", rule.compare_minutes),
        Compare::Week => "a week earlier".to_owned(),
    };
    let scopes: HashSet<&Scope> = baseline.keys().chain(current.keys()).collect();
    let mut checks = HashMap::new();
    for scope in scopes {
        let base_tps = baseline.get(scope).copied().unwrap_or(0) as f64 / span_s;
        let cur_tps = current.get(scope).map_or(0, |t| t.calls) as f64 / window_s as f64;
        let value = match kind {
            RuleKind::TpsDrop => {
                // Too little traffic in the baseline to call a drop.
                if base_tps <= 0.0 || base_tps < rule.min_tps {
                    continue;
                }
                100.0 * (1.0 - cur_tps / base_tps)
            }
            _ => {
                if base_tps <= 0.0 || cur_tps < rule.min_tps || cur_tps <= 0.0 {
                    continue;
                }
                100.0 * (cur_tps / base_tps - 1.0)
            }
        };
        let word = if kind == RuleKind::TpsDrop {
            "drop"
        } else {
            "rise"
        };
        let detail = format!(
            "{cur_tps:.2} TPS over the last {window_s} s vs {base_tps:.2} TPS {ago}: \
             {word} {value:.0} % (threshold {} %)",
            rule.threshold
        );
        checks.insert(
            scope.clone(),
            Check {
                value,
                holds: value > rule.threshold,
                detail,
                sample_ms: None,
            },
        );
    }
    Some(checks)
}

fn stuck_checks(rule: &RuleConfig, inputs: &Inputs<'_>) -> Option<HashMap<Scope, Check>> {
    let active = inputs.active?;
    let bound_ms = active.bounds_ms[2] as f64;
    // Per scope: the count and the longest request.
    let mut groups: HashMap<Scope, (u64, &crate::live::ActiveRequest)> = HashMap::new();
    for r in active.active.iter().filter(|r| r.elapsed_ms >= bound_ms) {
        let Some(scope) = scope_of(rule, &r.app, &r.host, &r.endpoint) else {
            continue;
        };
        let g = groups.entry(scope).or_insert((0, r));
        g.0 += 1;
        if r.elapsed_ms > g.1.elapsed_ms {
            g.1 = r;
        }
    }
    Some(
        groups
            .into_iter()
            .map(|(scope, (n, longest))| {
                let running = longest
                    .current
                    .as_deref()
                    .map(|c| format!(", running {c}"))
                    .unwrap_or_default();
                let check = Check {
                    value: n as f64,
                    holds: n as f64 > rule.threshold,
                    detail: format!(
                        "{n} requests in flight for {:.0} s or more (threshold {}); longest \
                         {:.1} s: {} {} on {}{running}",
                        bound_ms / 1000.0,
                        rule.threshold,
                        longest.elapsed_ms / 1000.0,
                        longest.method,
                        longest.endpoint,
                        longest.host
                    ),
                    sample_ms: None,
                };
                (scope, check)
            })
            .collect(),
    )
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
        .filter_map(|h| {
            let (what, value) = match kind {
                RuleKind::HostCpu => ("CPU".to_owned(), h.cpu_percent),
                RuleKind::HostDisk => {
                    // The fullest filesystem speaks for the host.
                    let d = h.disks.first()?;
                    (format!("disk {}", d.mount), d.used_percent)
                }
                _ => (
                    "memory".to_owned(),
                    100.0 * h.mem_used_bytes as f64 / h.mem_total_bytes.max(1) as f64,
                ),
            };
            let check = Check {
                value,
                holds: value > rule.threshold,
                detail: format!("{what} {value:.1} % (threshold {} %)", rule.threshold),
                sample_ms: Some(h.ts_ms),
            };
            Some((
                Scope {
                    app: None,
                    endpoint: None,
                    host: Some(h.host),
                },
                check,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::config::Level;
    use crate::live::{ActiveRequest, ActiveView};
    use crate::storage::tests::record;
    use crate::storage::AgentState;
    use sonde_proto::v1::{AgentIdentity, DiskMetrics, HostMetrics, Span, SpanKind};

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

    fn no_baselines() -> &'static HashMap<String, Baseline> {
        Box::leak(Box::default())
    }

    fn inputs(stats: &LiveStats) -> Inputs<'_> {
        Inputs {
            stats,
            agents: &[],
            down_after_ms: 15_000,
            presence: presence(),
            active: None,
            baselines: no_baselines(),
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
            verified: None,
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
            active: None,
            baselines: no_baselines(),
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
            active: None,
            baselines: no_baselines(),
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

    fn tps_rule(kind: RuleKind) -> RuleConfig {
        RuleConfig {
            name: "tps".into(),
            kind: Some(kind),
            threshold: 50.0,
            window_secs: 5,
            min_tps: 0.5,
            compare_minutes: 1,
            silence_secs: 60,
            ..RuleConfig::default()
        }
    }

    fn with_baseline(rule: &RuleConfig, now: i64, calls: u64) -> HashMap<String, Baseline> {
        let (from_ms, to_ms) = baseline_range(rule, now);
        HashMap::from([(
            rule.name.clone(),
            Baseline {
                from_ms,
                to_ms,
                rows: vec![
                    ("shop".into(), "web-1".into(), calls),
                    ("blog".into(), "web-1".into(), 0),
                ],
            },
        )])
    }

    #[test]
    fn baseline_windows() {
        let mut r = tps_rule(RuleKind::TpsDrop);
        // The current window is [995 s, 1000 s); a minute earlier:
        assert_eq!(baseline_range(&r, 1_000_500), (935_000, 940_000));
        r.compare = Compare::Week;
        assert_eq!(
            baseline_range(&r, 1_000_000_000_500),
            (
                1_000_000_000_000 - 604_800_000 - 5000,
                1_000_000_000_000 - 604_800_000
            )
        );
    }

    #[test]
    fn tps_drop_against_the_baseline() {
        let stats = LiveStats::default();
        let rule = tps_rule(RuleKind::TpsDrop);
        let mut engine = Engine::new(vec![rule.clone()]);
        let now = 5_000_000_000;
        // 1 call in the last 5 s (0.2 TPS) against 20 calls (4 TPS) a
        // minute earlier: a 95 % drop.
        traffic(&stats, now / 1000 - 2, 1, 0, now);
        let b = with_baseline(&rule, now, 20);
        let inp = Inputs {
            baselines: &b,
            ..inputs(&stats)
        };
        let f = engine.evaluate(now, &inp);
        assert_eq!(f.len(), 1, "{f:?}");
        let e = &f[0].event;
        assert_eq!(
            (e.kind.as_str(), e.app.as_deref()),
            ("tps_drop", Some("shop"))
        );
        assert!((e.value - 95.0).abs() < 1e-9, "{}", e.value);
        assert!(
            e.message
                .contains("0.20 TPS over the last 5 s vs 4.00 TPS 1 min earlier: drop 95 %"),
            "{}",
            e.message
        );
        // The traffic comes back: resolved.
        traffic(&stats, now / 1000, 20, 0, now + 1000);
        let b = with_baseline(&rule, now + 1000, 20);
        let inp = Inputs {
            baselines: &b,
            ..inputs(&stats)
        };
        let f = engine.evaluate(now + 1000, &inp);
        assert_eq!(f[0].event.state, "resolved");

        // A quiet baseline (below min_tps) is not a drop.
        let mut quiet = Engine::new(vec![rule.clone()]);
        let b = with_baseline(&rule, now + 60_000, 2);
        let inp = Inputs {
            baselines: &b,
            ..inputs(&stats)
        };
        assert!(quiet.evaluate(now + 60_000, &inp).is_empty());
        // Without a baseline this round the rule is skipped, not resolved.
        assert!(engine.evaluate(now + 2000, &inputs(&stats)).is_empty());
    }

    #[test]
    fn tps_rules_wait_for_a_full_window_after_start() {
        let stats = LiveStats::default();
        let rule = tps_rule(RuleKind::TpsDrop);
        let mut engine = Engine::new(vec![rule.clone()]);
        let now = 6_000_000_000;
        engine.set_started(now);
        // Nothing live yet after a restart: that is not a drop.
        let b = with_baseline(&rule, now + 1000, 100);
        let inp = Inputs {
            baselines: &b,
            ..inputs(&stats)
        };
        assert!(engine.evaluate(now + 1000, &inp).is_empty());
        let later = now + tps_warm_up_ms(&rule);
        let b = with_baseline(&rule, later, 100);
        let inp = Inputs {
            baselines: &b,
            ..inputs(&stats)
        };
        assert_eq!(engine.evaluate(later, &inp).len(), 1, "warm now");
    }

    #[test]
    fn tps_surge_needs_traffic_now() {
        let stats = LiveStats::default();
        let mut rule = tps_rule(RuleKind::TpsSurge);
        rule.threshold = 100.0;
        rule.by = By::Host;
        let mut engine = Engine::new(vec![rule.clone()]);
        let now = 7_000_000_000;
        // 30 calls in 5 s (6 TPS) against 5 calls (1 TPS): +500 %.
        for s in 1..=3 {
            traffic(&stats, now / 1000 - s, 10, 0, now);
        }
        let b = with_baseline(&rule, now, 5);
        let inp = Inputs {
            baselines: &b,
            ..inputs(&stats)
        };
        let f = engine.evaluate(now, &inp);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].event.host.as_deref(), Some("web-1"));
        assert!((f[0].event.value - 500.0).abs() < 1e-9);
        assert!(
            f[0].event.message.contains("rise 500 %"),
            "{}",
            f[0].event.message
        );
    }

    fn active(reqs: &[(&str, f64)]) -> ActiveView {
        ActiveView {
            bounds_ms: [100, 300, 1000],
            buckets: [0; 4],
            active: reqs
                .iter()
                .map(|(endpoint, ms)| ActiveRequest {
                    host: "web-1".into(),
                    app: "shop".into(),
                    endpoint: (*endpoint).into(),
                    method: "GET".into(),
                    pid: 1,
                    elapsed_ms: *ms,
                    current: Some("SELECT SLEEP(?)".into()),
                })
                .collect(),
        }
    }

    #[test]
    fn stuck_requests_in_the_slowest_bucket() {
        let stats = LiveStats::default();
        let rule = RuleConfig {
            name: "stuck".into(),
            kind: Some(RuleKind::StuckRequests),
            threshold: 1.0,
            by: By::Endpoint,
            ..RuleConfig::default()
        };
        let mut engine = Engine::new(vec![rule]);
        // One stuck request is not above 1; the fast ones do not count.
        let a = active(&[("/slow", 1500.0), ("/fast", 20.0), ("/fast", 999.0)]);
        let inp = Inputs {
            active: Some(&a),
            ..inputs(&stats)
        };
        assert!(engine.evaluate(1000, &inp).is_empty());
        let a = active(&[("/slow", 2500.0), ("/slow", 1200.0), ("/fast", 20.0)]);
        let inp = Inputs {
            active: Some(&a),
            ..inputs(&stats)
        };
        let f = engine.evaluate(2000, &inp);
        assert_eq!(f.len(), 1);
        let e = &f[0].event;
        assert_eq!(
            (e.kind.as_str(), e.endpoint.as_deref(), e.value),
            ("stuck_requests", Some("/slow"), 2.0)
        );
        assert!(
            e.message.contains("2 requests in flight for 1 s or more")
                && e.message
                    .contains("longest 2.5 s: GET /slow on web-1, running SELECT SLEEP(?)"),
            "{}",
            e.message
        );
        // Unknown this round (no snapshot read): left as it is.
        assert!(engine.evaluate(3000, &inputs(&stats)).is_empty());
        // They finished.
        let a = active(&[]);
        let inp = Inputs {
            active: Some(&a),
            ..inputs(&stats)
        };
        assert_eq!(engine.evaluate(4000, &inp)[0].event.state, "resolved");
    }

    #[test]
    fn sql_errors_are_counted() {
        let stats = LiveStats::default();
        let rule = RuleConfig {
            name: "sql".into(),
            kind: Some(RuleKind::SqlErrors),
            threshold: 1.0,
            window_secs: 5,
            by: By::Endpoint,
            ..RuleConfig::default()
        };
        let mut engine = Engine::new(vec![rule]);
        let now = 8_000_000_000;
        let failed = |ok: bool| Span {
            kind: SpanKind::Sql as i32,
            statement: "SELECT ?".into(),
            error: if ok {
                String::new()
            } else {
                "SQLSTATE[42S02]".into()
            },
            ..Default::default()
        };
        let mut a = record(1, now - 1500, 5);
        a.spans = vec![failed(false), failed(true)];
        let mut b = record(2, now - 1200, 5);
        b.spans = vec![failed(false)];
        stats.observe(&[a.clone()], "web-1", now);
        assert!(
            engine.evaluate(now, &inputs(&stats)).is_empty(),
            "1 is not above 1"
        );
        stats.observe(&[b], "web-1", now);
        let f = engine.evaluate(now, &inputs(&stats));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].event.value, 2.0);
        assert_eq!(f[0].event.endpoint.as_deref(), Some("/users/{num}"));
        assert!(
            f[0].event.message.contains("2 failed SQL statements"),
            "{}",
            f[0].event.message
        );
    }

    #[test]
    fn host_disk_uses_the_fullest_mount() {
        let stats = LiveStats::default();
        let rule = RuleConfig {
            name: "disk".into(),
            kind: Some(RuleKind::HostDisk),
            threshold: 90.0,
            ..RuleConfig::default()
        };
        let mut engine = Engine::new(vec![rule]);
        let sample = |ts: i64, var_used: u64| HostMetrics {
            ts_unix_ms: ts,
            disks: vec![
                DiskMetrics {
                    mount: "/".into(),
                    total_bytes: 100,
                    used_bytes: 50,
                    ..Default::default()
                },
                DiskMetrics {
                    mount: "/var".into(),
                    total_bytes: 1000,
                    used_bytes: var_used,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        stats.host_metrics(&sample(10_000, 800), "web-1", 10_000);
        assert!(engine.evaluate(10_000, &inputs(&stats)).is_empty());
        stats.host_metrics(&sample(11_000, 955), "web-1", 11_000);
        let f = engine.evaluate(11_000, &inputs(&stats));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].event.kind, "host_disk");
        assert!(
            f[0].event.message.contains("disk /var 95.5 %"),
            "{}",
            f[0].event.message
        );
    }

    #[test]
    fn state_survives_a_restart() {
        let stats = LiveStats::default();
        let mut rule = error_rule();
        rule.window_secs = 2;
        let mut first = Engine::new(vec![rule.clone()]);
        let t0 = 9_000_000_000;
        traffic(&stats, t0 / 1000 - 1, 4, 4, t0);
        assert_eq!(first.evaluate(t0, &inputs(&stats)).len(), 1);
        assert!(first.take_dirty());
        assert!(!first.take_dirty(), "taken once");
        let saved = first.export();
        assert_eq!(saved.len(), 1);
        assert_eq!(
            (saved[0].phase.as_str(), saved[0].notified),
            ("firing", true)
        );

        // The restarted engine has empty live statistics: the scope is held
        // (no resolved message) and the still-true condition does not fire
        // again.
        let empty = LiveStats::default();
        let mut second = Engine::new(vec![rule.clone(), tps_rule(RuleKind::TpsDrop)]);
        let t1 = t0 + 3000;
        second.restore(saved.clone(), t1);
        assert_eq!(second.phase("errors", &app_scope()), Phase::Firing);
        assert!(second.evaluate(t1 + 1000, &inputs(&empty)).is_empty());
        traffic(&empty, (t1 + 2000) / 1000 - 1, 4, 4, t1 + 2000);
        assert!(
            second.evaluate(t1 + 2000, &inputs(&empty)).is_empty(),
            "no second firing"
        );
        // Quiet past the grace: resolved, once.
        let t2 = t1 + restore_grace_ms(&rule) + 1000;
        let f = second.evaluate(t2, &inputs(&empty));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].event.state, "resolved");
        // And the silence period remembered from before the restart: a new
        // failure within it is silent.
        traffic(&empty, t2 / 1000, 4, 4, t2 + 500);
        assert!(second.evaluate(t2 + 1000, &inputs(&empty)).is_empty());
        assert_eq!(second.phase("errors", &app_scope()), Phase::Firing);

        // Records of rules that are gone are dropped.
        let mut third = Engine::new(vec![tps_rule(RuleKind::TpsDrop)]);
        third.restore(saved, t1);
        assert!(third.export().is_empty());
    }

    #[test]
    fn rule_edits_keep_state_by_name_and_kind() {
        let stats = LiveStats::default();
        let mut engine = Engine::new(vec![error_rule()]);
        let t0 = 9_500_000_000;
        traffic(&stats, t0 / 1000 - 1, 4, 4, t0);
        assert_eq!(engine.evaluate(t0, &inputs(&stats)).len(), 1);
        // A new threshold for the same rule: still firing, no new event.
        let mut edited = error_rule();
        edited.threshold = 60.0;
        engine.set_rules(vec![edited]);
        assert_eq!(engine.phase("errors", &app_scope()), Phase::Firing);
        assert!(engine.evaluate(t0 + 500, &inputs(&stats)).is_empty());
        // Another kind under the same name: its state starts afresh.
        let mut other = error_rule();
        other.kind = Some(RuleKind::ErrorCount);
        engine.set_rules(vec![other]);
        assert_eq!(engine.phase("errors", &app_scope()), Phase::Ok);
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
