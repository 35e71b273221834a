//! Who this agent is: its stable id, host name and cloud identity. It reads
//! local files only; the cloud identity is looked up by `cloud/` and handed
//! in.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rand::RngCore;
use sonde_proto::v1::{AgentIdentity, RequestRecord, Versions};
use thiserror::Error;

use crate::cloud::CloudIdentity;
use crate::config::Config;

/// The systemd machine id: stable across reboots, unique per install.
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";
/// Fallback id file inside `spool_dir`.
const AGENT_ID_FILE: &str = "agent-id";

/// What the agent says about itself at registration.
#[derive(Debug, Clone)]
pub struct Identity {
    pub agent_id: String,
    pub hostname: String,
    /// `None` when there is no cloud identity.
    pub cloud: Option<CloudIdentity>,
}

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("cannot read the system host name: {0}")]
    Hostname(#[source] nix::Error),
    #[error("cannot keep the agent id in {path}: {source}")]
    AgentIdFile { path: PathBuf, source: io::Error },
}

impl Identity {
    /// Resolves the identity. `spool_dir` must exist. The agent id is the
    /// cloud instance id when there is one: an image baked with leftover
    /// state still gets a new id on every instance.
    pub fn resolve(
        config: &Config,
        cloud: Option<CloudIdentity>,
    ) -> Result<Identity, IdentityError> {
        let hostname = match &config.hostname {
            Some(h) => h.clone(),
            None => system_hostname()?,
        };
        let agent_id = match &cloud {
            Some(c) => c.instance_id.clone(),
            None => agent_id(Path::new(MACHINE_ID_PATH), &config.spool_dir)?,
        };
        Ok(Identity {
            agent_id,
            hostname,
            cloud,
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
        let c = self.cloud.clone().unwrap_or_default();
        AgentIdentity {
            agent_id: self.agent_id.clone(),
            hostname: self.hostname.clone(),
            cloud_provider: c.provider,
            instance_id: c.instance_id,
            instance_type: c.instance_type,
            ami_id: c.ami_id,
            region: c.region,
            zone: c.zone,
            group: c.group,
            private_ip: c.private_ip,
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
            cloud: None,
        };
        let p = id.to_proto(&seen.get());
        assert_eq!(p.apps, ["api", "shop"]);
        let v = p.versions.unwrap();
        assert_eq!((v.php.as_str(), v.extension.as_str()), ("8.3.1", "0.1.0"));
        assert_eq!(v.protocol, sonde_proto::PROTOCOL_VERSION);
    }

    #[test]
    fn the_cloud_identity_fills_the_registration_and_names_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            hostname: Some("web-1".into()),
            spool_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let cloud = CloudIdentity {
            provider: "aws".into(),
            instance_id: "i-0abc".into(),
            instance_type: "c7g.large".into(),
            ami_id: "ami-1".into(),
            region: "ap-northeast-2".into(),
            zone: "ap-northeast-2a".into(),
            group: "web-asg".into(),
            private_ip: "10.0.1.5".into(),
        };
        let id = Identity::resolve(&config, Some(cloud)).unwrap();
        assert_eq!(id.agent_id, "i-0abc");
        let p = id.to_proto(&SeenInner::default());
        assert_eq!(
            (
                p.cloud_provider.as_str(),
                p.instance_id.as_str(),
                p.ami_id.as_str()
            ),
            ("aws", "i-0abc", "ami-1")
        );
        assert_eq!(
            (p.zone.as_str(), p.group.as_str()),
            ("ap-northeast-2a", "web-asg")
        );
        assert_eq!(p.private_ip, "10.0.1.5");
        assert_eq!(p.instance_type, "c7g.large");
        assert_eq!(p.region, "ap-northeast-2");
    }
}
