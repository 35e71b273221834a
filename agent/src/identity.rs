//! Who this agent is: its stable id and host name, and (later) its cloud
//! identity. It reads local files only; cloud metadata lookups belong in a
//! future `cloud/` module and must never delay start-up for long.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rand::RngCore;
use sonde_proto::v1::{AgentIdentity, RequestRecord, Versions};
use thiserror::Error;

use crate::config::{CloudProvider, Config};

/// The systemd machine id: stable across reboots, unique per install.
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";
/// Fallback id file inside `spool_dir`.
const AGENT_ID_FILE: &str = "agent-id";

/// What the agent says about itself at registration.
#[derive(Debug, Clone)]
pub struct Identity {
    pub agent_id: String,
    pub hostname: String,
    /// Empty when there is no cloud identity.
    pub cloud_provider: String,
}

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("cannot read the system host name: {0}")]
    Hostname(#[source] nix::Error),
    #[error("cannot keep the agent id in {path}: {source}")]
    AgentIdFile { path: PathBuf, source: io::Error },
}

impl Identity {
    /// Resolves the identity. `spool_dir` must exist.
    pub fn resolve(config: &Config) -> Result<Identity, IdentityError> {
        let hostname = match &config.hostname {
            Some(h) => h.clone(),
            None => system_hostname()?,
        };
        let agent_id = agent_id(Path::new(MACHINE_ID_PATH), &config.spool_dir)?;
        // Cloud identity is a later issue. "auto" must not contact anything
        // yet (no IMDS probe at start-up), so every provider behaves as none.
        let cloud_provider = match config.cloud.provider {
            CloudProvider::Auto | CloudProvider::None => String::new(),
            CloudProvider::Aws => {
                tracing::warn!(
                    "cloud.provider = \"aws\" is not implemented yet; no cloud identity is reported"
                );
                String::new()
            }
        };
        Ok(Identity {
            agent_id,
            hostname,
            cloud_provider,
        })
    }
}

fn system_hostname() -> Result<String, IdentityError> {
    let h = nix::unistd::gethostname().map_err(IdentityError::Hostname)?;
    Ok(h.to_string_lossy().into_owned())
}

/// The machine id when `machine_id` holds one, else an id kept in
/// `spool_dir/agent-id`, created at random the first time.
pub fn agent_id(machine_id: &Path, spool_dir: &Path) -> Result<String, IdentityError> {
    if let Some(id) = read_id(machine_id) {
        return Ok(id);
    }
    let path = spool_dir.join(AGENT_ID_FILE);
    if let Some(id) = read_id(&path) {
        return Ok(id);
    }
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let id = sonde_core::ids::to_hex(&bytes);
    let err = |source| IdentityError::AgentIdFile {
        path: path.clone(),
        source,
    };
    let tmp = spool_dir.join(format!(".{AGENT_ID_FILE}.tmp"));
    std::fs::write(&tmp, format!("{id}\n")).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    tracing::info!(agent_id = %id, path = %path.display(), "created a new agent id");
    Ok(id)
}

fn read_id(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let id = text.trim();
    let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| id.to_owned())
}

/// Most distinct application names remembered for registration.
const MAX_APPS: usize = 256;

/// What the agent has learned from records about the software on this host:
/// application names and the PHP and extension versions, reported at
/// (re-)registration.
#[derive(Debug, Default)]
pub struct Seen {
    inner: Mutex<SeenInner>,
}

#[derive(Debug, Default, Clone)]
pub struct SeenInner {
    pub apps: BTreeSet<String>,
    pub php_version: String,
    pub ext_version: String,
    /// Bumped on every change, so the sink knows when to re-register.
    pub generation: u64,
}

impl Seen {
    /// Notes what `record` tells about the host. Cheap when nothing changed.
    pub fn note(&self, record: &RequestRecord) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        if !record.app.is_empty() && !s.apps.contains(&record.app) && s.apps.len() < MAX_APPS {
            s.apps.insert(record.app.clone());
            changed = true;
        }
        if !record.php_version.is_empty() && s.php_version != record.php_version {
            s.php_version.clone_from(&record.php_version);
            changed = true;
        }
        if !record.ext_version.is_empty() && s.ext_version != record.ext_version {
            s.ext_version.clone_from(&record.ext_version);
            changed = true;
        }
        if changed {
            s.generation += 1;
        }
    }

    pub fn get(&self) -> SeenInner {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Identity {
    /// The registration message, with what has been seen so far.
    pub fn to_proto(&self, seen: &SeenInner) -> AgentIdentity {
        AgentIdentity {
            agent_id: self.agent_id.clone(),
            hostname: self.hostname.clone(),
            cloud_provider: self.cloud_provider.clone(),
            versions: Some(Versions {
                agent: env!("CARGO_PKG_VERSION").into(),
                extension: seen.ext_version.clone(),
                php: seen.php_version.clone(),
                protocol: sonde_proto::PROTOCOL_VERSION,
            }),
            apps: seen.apps.iter().cloned().collect(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_id_wins_else_a_persisted_random_id() {
        let dir = tempfile::tempdir().unwrap();
        let machine = dir.path().join("machine-id");
        std::fs::write(&machine, "0123abcd\n").unwrap();
        assert_eq!(agent_id(&machine, dir.path()).unwrap(), "0123abcd");

        let missing = dir.path().join("none");
        let a = agent_id(&missing, dir.path()).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(
            agent_id(&missing, dir.path()).unwrap(),
            a,
            "kept across restarts"
        );
    }

    #[test]
    fn seen_apps_and_versions_reach_the_registration() {
        let seen = Seen::default();
        let rec = |app: &str| RequestRecord {
            app: app.into(),
            php_version: "8.3.1".into(),
            ext_version: "0.1.0".into(),
            ..Default::default()
        };
        seen.note(&rec("shop"));
        let g = seen.get().generation;
        seen.note(&rec("shop"));
        assert_eq!(seen.get().generation, g, "no change, no new generation");
        seen.note(&rec("api"));
        let id = Identity {
            agent_id: "a".into(),
            hostname: "h".into(),
            cloud_provider: String::new(),
        };
        let p = id.to_proto(&seen.get());
        assert_eq!(p.apps, ["api", "shop"]);
        let v = p.versions.unwrap();
        assert_eq!((v.php.as_str(), v.extension.as_str()), ("8.3.1", "0.1.0"));
        assert_eq!(v.protocol, sonde_proto::PROTOCOL_VERSION);
    }
}
