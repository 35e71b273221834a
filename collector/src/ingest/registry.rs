//! Agent ids, keyed by instance identity: a restarted agent on the same
//! instance keeps its id; a new instance gets a new one even when its image
//! carries another instance's saved id; a second live agent claiming an
//! identity already held gets an id of its own and is flagged, so the two
//! are never merged.

use rand::RngCore;
use sonde_proto::v1::AgentIdentity;

use crate::presence::Sessions;
use crate::storage::{Store, StoreError};

/// What a registration decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub agent_id: String,
    pub identity_key: String,
    /// The live agent this one duplicates, if any.
    pub duplicate_of: Option<String>,
    /// True when the duplicate was found by this registration.
    pub conflict: bool,
}

/// What an agent's id is keyed by: the cloud instance, else the machine id,
/// else (agents older than machine ids) the id it proposes, else its host
/// name.
pub fn identity_key(i: &AgentIdentity) -> String {
    if !i.instance_id.is_empty() {
        let provider = if i.cloud_provider.is_empty() {
            "cloud"
        } else {
            &i.cloud_provider
        };
        format!("{provider}:{}", i.instance_id)
    } else if !i.machine_id.is_empty() {
        format!("machine:{}", i.machine_id)
    } else if !i.agent_id.is_empty() {
        format!("agent:{}", i.agent_id)
    } else {
        format!("host:{}", i.hostname)
    }
}

/// Decides the agent's id, stores the registration (with the result of the
/// identity check, `None` when not checked) and notes the session.
/// `sessions` must stay locked for the whole call, so that two agents
/// registering at once cannot both take the same id.
pub fn register(
    store: &dyn Store,
    sessions: &mut Sessions,
    identity: &mut AgentIdentity,
    verified: Option<bool>,
    now_ms: i64,
) -> Result<Registration, StoreError> {
    let key = identity_key(identity);
    let proposed = identity.agent_id.clone();
    let session = identity.session_id.clone();
    let known = store.agents_by_key(&key)?;
    // The agent's own id if it is one of this identity's, else the
    // identity's original (unflagged) agent.
    let mut candidate = known
        .iter()
        .find(|a| a.identity.agent_id == proposed)
        .or_else(|| known.iter().find(|a| a.duplicate_of.is_none()))
        .or_else(|| known.first())
        .map(|a| (a.identity.agent_id.clone(), a.duplicate_of.clone()));
    if candidate.is_none() && !proposed.is_empty() {
        // Registered by a collector that did not key ids yet, or an agent
        // too old to have sessions (it always chose its own id): adopt it.
        if let Some(a) = store.agent(&proposed)? {
            if a.identity_key.is_empty() || session.is_empty() {
                candidate = Some((proposed.clone(), a.duplicate_of));
            }
        }
    }
    let (agent_id, duplicate_of, conflict) = match candidate {
        Some((id, dup)) if !sessions.held_by_other(&id, &session, now_ms) => {
            // Still a duplicate while the original lives.
            let dup = dup.filter(|d| sessions.held_by_other(d, &session, now_ms));
            (id, dup, false)
        }
        Some((id, dup)) => {
            let original = dup.unwrap_or(id);
            (fresh_id(store, identity, &proposed)?, Some(original), true)
        }
        None => (fresh_id(store, identity, &proposed)?, None, false),
    };
    identity.agent_id.clone_from(&agent_id);
    store.upsert_agent(identity, &key, duplicate_of.as_deref(), verified, now_ms)?;
    sessions.registered(&agent_id, &session, now_ms);
    Ok(Registration {
        agent_id,
        identity_key: key,
        duplicate_of,
        conflict,
    })
}

/// A new id: the first of the proposal, the instance id and the machine id
/// that no agent has, else a random one.
fn fresh_id(
    store: &dyn Store,
    identity: &AgentIdentity,
    proposed: &str,
) -> Result<String, StoreError> {
    for c in [
        proposed,
        identity.instance_id.as_str(),
        identity.machine_id.as_str(),
    ] {
        if !c.is_empty() && store.agent(c)?.is_none() {
            return Ok(c.to_owned());
        }
    }
    loop {
        let mut bytes = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut bytes);
        let id = format!("ag-{}", sonde_core::ids::to_hex(&bytes));
        if store.agent(&id)?.is_none() {
            return Ok(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::Presence;
    use crate::storage::sqlite::SqliteStore;

    fn aws(instance: &str, proposed: &str, session: &str) -> AgentIdentity {
        AgentIdentity {
            agent_id: proposed.into(),
            hostname: "web".into(),
            cloud_provider: "aws".into(),
            instance_id: instance.into(),
            session_id: session.into(),
            ..Default::default()
        }
    }

    #[test]
    fn ids_follow_the_instance_not_the_saved_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let p = Presence::new(5_000);
        let reg =
            |mut i: AgentIdentity, now| register(&store, &mut p.lock(), &mut i, None, now).unwrap();
        let a = reg(aws("i-a", "i-a", "s1"), 1_000);
        assert_eq!(
            (a.agent_id.as_str(), a.identity_key.as_str()),
            ("i-a", "aws:i-a")
        );
        assert_eq!((a.duplicate_of, a.conflict), (None, false));

        // Restarted on the same instance (new session, old one gone): same
        // id, even with its saved state lost.
        p.stream_opened("i-a", "s1", 1_000);
        p.stream_closed("i-a", "s1", 5_000);
        assert_eq!(reg(aws("i-a", "", "s2"), 6_000).agent_id, "i-a");

        // A baked image carrying i-a's saved id, launched as i-b.
        let b = reg(aws("i-b", "i-a", "s3"), 7_000);
        assert_eq!((b.agent_id.as_str(), b.duplicate_of), ("i-b", None));

        // A second live agent claiming i-a while s2 holds it.
        p.stream_opened("i-a", "s2", 6_100);
        let dup = reg(aws("i-a", "i-a", "s4"), 8_000);
        assert!(dup.conflict);
        assert_eq!(dup.duplicate_of.as_deref(), Some("i-a"));
        assert!(dup.agent_id.starts_with("ag-"), "{}", dup.agent_id);
        let stored = store.agent(&dup.agent_id).unwrap().unwrap();
        assert_eq!(stored.duplicate_of.as_deref(), Some("i-a"));
        assert_eq!(store.agent("i-a").unwrap().unwrap().duplicate_of, None);
        // It keeps its own id (and flag) when it comes back.
        p.stream_opened(&dup.agent_id, "s4", 8_000);
        p.stream_closed(&dup.agent_id, "s4", 9_000);
        let again = reg(aws("i-a", &dup.agent_id, "s5"), 9_500);
        assert_eq!(again.agent_id, dup.agent_id);
        assert_eq!(
            (again.duplicate_of.as_deref(), again.conflict),
            (Some("i-a"), false)
        );
        // The original's re-registration from its own process is no conflict.
        assert!(!reg(aws("i-a", "i-a", "s2"), 9_600).conflict);
    }

    #[test]
    fn agents_without_sessions_or_keys_keep_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        // A row written before identity keys.
        let old = AgentIdentity {
            agent_id: "0123abcd".into(),
            hostname: "web".into(),
            ..Default::default()
        };
        store.upsert_agent(&old, "", None, None, 1).unwrap();
        let p = Presence::new(5_000);
        let mut i = AgentIdentity {
            machine_id: "0123abcd".into(),
            ..old.clone()
        };
        let r = register(&store, &mut p.lock(), &mut i, None, 2).unwrap();
        assert_eq!(
            (r.agent_id.as_str(), r.identity_key.as_str()),
            ("0123abcd", "machine:0123abcd")
        );
        // An old agent (no session, no machine id) twice at once: no conflict.
        let mut legacy = old.clone();
        assert_eq!(
            register(&store, &mut p.lock(), &mut legacy, None, 3)
                .unwrap()
                .agent_id,
            "0123abcd"
        );
        let mut legacy = old;
        assert!(
            !register(&store, &mut p.lock(), &mut legacy, None, 4)
                .unwrap()
                .conflict
        );
    }
}
