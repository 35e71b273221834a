//! Which agent processes are connected now (in memory, rebuilt as agents
//! reconnect after a collector restart). It tells
//! - a restarted agent (new session, its old stream gone) from a second live
//!   agent claiming the same identity (another session with a stream open);
//! - an agent whose stream dropped without a deregistration (killed,
//!   crashed, host gone) from one merely between heartbeats, so that it
//!   shows `down` a short grace after the drop instead of after three
//!   missed heartbeats.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use sonde_proto::v1::AgentCounters;

use crate::storage::AgentRecord;

/// An agent clock further off than this (either way) is warned about.
pub const CLOCK_SKEW_WARN_MS: i64 = 2_000;

/// Least time between two "agent dropped records" events for one agent.
pub const DROP_EVENT_EVERY_MS: i64 = 5 * 60_000;

/// How long after registering a session holds its id without a stream yet
/// (registration and stream opening are two calls).
pub const REGISTER_HOLD_MS: i64 = 10_000;

#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// `AgentIdentity.session_id` of the process holding the id (empty for
    /// agents that predate sessions).
    pub session: String,
    /// Streams open for this id now.
    pub streams: u32,
    pub registered_ms: i64,
    /// When the last stream closed without a deregistration.
    pub disconnected_ms: Option<i64>,
}

/// The map behind [`Presence`], locked for a whole registration decision.
#[derive(Debug, Default)]
pub struct Sessions(HashMap<String, Entry>);

impl Sessions {
    /// Whether `agent_id` is held now by a live agent process other than
    /// `session`. Agents without sessions never conflict.
    pub fn held_by_other(&self, agent_id: &str, session: &str, now_ms: i64) -> bool {
        let Some(e) = self.0.get(agent_id) else {
            return false;
        };
        !session.is_empty()
            && !e.session.is_empty()
            && e.session != session
            && (e.streams > 0
                || (e.disconnected_ms.is_none()
                    && now_ms.saturating_sub(e.registered_ms) < REGISTER_HOLD_MS))
    }

    /// `session` registered as `agent_id` at `now_ms`.
    pub fn registered(&mut self, agent_id: &str, session: &str, now_ms: i64) {
        let e = self.0.entry(agent_id.to_owned()).or_default();
        if e.session != session {
            // Streams of the previous process are not this one's.
            e.streams = 0;
        }
        e.session = session.to_owned();
        e.registered_ms = now_ms;
        e.disconnected_ms = None;
    }
}

/// An agent's own counters, as its last heartbeat said.
#[derive(Debug, Clone, Default)]
pub struct Reported {
    pub counters: AgentCounters,
    pub at_ms: i64,
    /// `records_dropped` when an event last told of drops.
    dropped_told: u64,
    told_at_ms: Option<i64>,
    /// The agent's clock minus ours, milliseconds, at its last heartbeat.
    pub clock_skew_ms: Option<i64>,
}

#[derive(Debug)]
pub struct Presence {
    sessions: Mutex<Sessions>,
    /// Kept after a deregistration, so a stopped agent's last counts show.
    reported: Mutex<HashMap<String, Reported>>,
    /// A dropped agent that has not reconnected after this long is down.
    grace_ms: i64,
}

impl Presence {
    pub fn new(grace_ms: i64) -> Presence {
        Presence {
            sessions: Mutex::default(),
            reported: Mutex::default(),
            grace_ms,
        }
    }

    /// Takes a heartbeat's counters. Returns the records dropped since an
    /// event last told of drops, when a new event is due (at most one per
    /// agent every [`DROP_EVENT_EVERY_MS`]). A restarted agent counts from
    /// zero again.
    pub fn report(&self, agent_id: &str, counters: AgentCounters, now_ms: i64) -> Option<u64> {
        let mut all = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        let r = all.entry(agent_id.to_owned()).or_default();
        if counters.records_dropped < r.counters.records_dropped {
            r.dropped_told = 0;
        }
        let dropped = counters.records_dropped;
        r.counters = counters;
        r.at_ms = now_ms;
        let due = r
            .told_at_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= DROP_EVENT_EVERY_MS);
        if dropped > r.dropped_told && due {
            let new = dropped - r.dropped_told;
            r.dropped_told = dropped;
            r.told_at_ms = Some(now_ms);
            return Some(new);
        }
        None
    }

    /// Notes an agent's clock skew. `Some(true)` when it has just gone
    /// past [`CLOCK_SKEW_WARN_MS`], `Some(false)` when it has just come
    /// back within it, else `None`.
    pub fn clock(&self, agent_id: &str, skew_ms: i64) -> Option<bool> {
        let mut all = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        let r = all.entry(agent_id.to_owned()).or_default();
        let was_off = r
            .clock_skew_ms
            .is_some_and(|s| s.abs() > CLOCK_SKEW_WARN_MS);
        let is_off = skew_ms.abs() > CLOCK_SKEW_WARN_MS;
        r.clock_skew_ms = Some(skew_ms);
        (was_off != is_off).then_some(is_off)
    }

    /// What the agent's last heartbeat said.
    pub fn reported(&self, agent_id: &str) -> Option<Reported> {
        let all = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        all.get(agent_id).cloned()
    }

    pub fn lock(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stream said hello for `agent_id` (`session` may be empty: an older
    /// agent).
    pub fn stream_opened(&self, agent_id: &str, session: &str, now_ms: i64) {
        let mut s = self.lock();
        let e = s.0.entry(agent_id.to_owned()).or_default();
        if !session.is_empty() && e.session != session {
            e.session = session.to_owned();
            e.streams = 0;
            e.registered_ms = now_ms;
        }
        e.streams += 1;
        e.disconnected_ms = None;
    }

    /// A stream of `agent_id` ended.
    pub fn stream_closed(&self, agent_id: &str, session: &str, now_ms: i64) {
        let mut s = self.lock();
        if let Some(e) = s.0.get_mut(agent_id) {
            // A stream of a replaced process does not count down the new one.
            if session.is_empty() || e.session.is_empty() || e.session == session {
                e.streams = e.streams.saturating_sub(1);
                if e.streams == 0 {
                    e.disconnected_ms = Some(now_ms);
                }
            }
        }
    }

    /// The agent said goodbye: nothing about it is pending.
    pub fn deregistered(&self, agent_id: &str) {
        self.lock().0.remove(agent_id);
    }

    /// The status the API and the alerts show: the stored state, with a
    /// running agent whose stream dropped more than the grace ago as
    /// `down`, as is one silent for longer than `down_after_ms`.
    pub fn status(&self, a: &AgentRecord, now_ms: i64, down_after_ms: i64) -> &'static str {
        let status = a.status_at(now_ms, down_after_ms);
        if status != "up" {
            return status;
        }
        let dropped = self
            .lock()
            .0
            .get(&a.identity.agent_id)
            .and_then(|e| e.disconnected_ms)
            .is_some_and(|t| now_ms.saturating_sub(t) > self.grace_ms);
        if dropped {
            "down"
        } else {
            "up"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::AgentState;
    use sonde_proto::v1::AgentIdentity;

    fn record(id: &str, last_seen_ms: i64) -> AgentRecord {
        AgentRecord {
            identity: AgentIdentity {
                agent_id: id.into(),
                ..Default::default()
            },
            state: AgentState::Running,
            last_seen_ms,
            registered_ms: 0,
            apps: vec![],
            identity_key: String::new(),
            duplicate_of: None,
            verified: None,
        }
    }

    #[test]
    fn a_second_live_session_conflicts_a_restart_does_not() {
        let p = Presence::new(5_000);
        p.lock().registered("a", "s1", 1_000);
        // Registered, stream not open yet: held for a while.
        assert!(p.lock().held_by_other("a", "s2", 2_000));
        assert!(!p.lock().held_by_other("a", "s1", 2_000), "same process");
        assert!(!p.lock().held_by_other("a", "s2", 1_000 + REGISTER_HOLD_MS));
        p.stream_opened("a", "s1", 2_000);
        assert!(p.lock().held_by_other("a", "s2", 60_000), "stream open");
        assert!(!p.lock().held_by_other("a", "", 60_000), "old agents never");
        // Killed: the stream closes, a restart takes the id over.
        p.stream_closed("a", "s1", 61_000);
        assert!(!p.lock().held_by_other("a", "s2", 61_001));
        p.lock().registered("a", "s2", 61_001);
        // The dead process's late close does not touch the new one.
        p.stream_opened("a", "s2", 61_002);
        p.stream_closed("a", "s1", 61_003);
        assert!(p.lock().held_by_other("a", "s3", 61_004));
    }

    #[test]
    fn drops_raise_an_event_at_most_every_five_minutes() {
        let p = Presence::new(5_000);
        let c = |dropped| AgentCounters {
            records_dropped: dropped,
            ..Default::default()
        };
        assert_eq!(p.report("a", c(0), 0), None);
        assert_eq!(p.report("a", c(10), 1_000), Some(10));
        assert_eq!(p.report("a", c(15), 2_000), None, "within five minutes");
        assert_eq!(p.report("a", c(15), 1_000 + DROP_EVENT_EVERY_MS), Some(5));
        assert_eq!(
            p.report("a", c(15), 3 * DROP_EVENT_EVERY_MS),
            None,
            "no new drops"
        );
        // Restarted: counts from zero.
        assert_eq!(p.report("a", c(2), 4 * DROP_EVENT_EVERY_MS), Some(2));
        assert_eq!(p.reported("a").unwrap().counters.records_dropped, 2);
    }

    #[test]
    fn clock_skew_is_kept_and_crossings_reported() {
        let p = Presence::new(5_000);
        assert_eq!(p.clock("a", 30), None);
        assert_eq!(p.clock("a", -5_000), Some(true));
        assert_eq!(p.clock("a", -6_000), None, "still off: said once");
        assert_eq!(p.clock("a", 100), Some(false));
        assert_eq!(p.reported("a").unwrap().clock_skew_ms, Some(100));
    }

    #[test]
    fn a_dropped_stream_is_down_after_the_grace() {
        let p = Presence::new(5_000);
        let a = record("a", 10_000);
        assert_eq!(p.status(&a, 11_000, 15_000), "up", "never connected here");
        p.stream_opened("a", "s", 10_000);
        p.stream_closed("a", "s", 12_000);
        assert_eq!(p.status(&a, 17_000, 15_000), "up", "within the grace");
        assert_eq!(p.status(&a, 17_001, 15_000), "down");
        p.stream_opened("a", "s", 17_500);
        assert_eq!(p.status(&a, 18_000, 15_000), "up", "reconnected");
        p.deregistered("a");
        assert_eq!(p.status(&a, 30_000, 15_000), "down", "silent too long");
    }
}
