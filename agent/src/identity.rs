//! Who this agent is: its stable id, host name and cloud identity. It reads
//! local files only; the cloud identity is looked up by `cloud/` and handed
//! in.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::RngCore;
use sonde_proto::v1::{AgentIdentity, RequestRecord, Versions};
use thiserror::Error;

use crate::cloud::CloudIdentity;
use crate::config::Config;

/// The systemd machine id: stable across reboots, unique per install (an
/// image bake empties it so that each instance makes its own).
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";
/// Inside `spool_dir`: the id the collector gave this agent last time.
const AGENT_ID_FILE: &str = "agent-id";
/// The `[labels]` key that names the Auto Scaling group when the instance
/// metadata has no tags.
pub const GROUP_LABEL: &str = "group";

/// What the agent says about itself at registration.
#[derive(Debug, Clone)]
pub struct Identity {
    pub hostname: String,
    /// `None` when there is no cloud identity.
    pub cloud: Option<CloudIdentity>,
    /// `/etc/machine-id`, empty when there is none.
    pub machine_id: String,
    /// Random per process (see `AgentIdentity.session_id`).
    pub session_id: String,
    /// Operator labels from `[labels]`.
    pub labels: BTreeMap<String, String>,
    /// The agent id: the proposal until the collector answers, then what it
    /// assigned. Shared by every clone.
    current: Arc<Mutex<String>>,
    /// Where the assigned id is kept (`spool_dir/agent-id`).
    id_file: PathBuf,
}

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("cannot read the system host name: {0}")]
    Hostname(#[source] nix::Error),
    #[error("cannot keep the agent id in {path}: {source}")]
    AgentIdFile { path: PathBuf, source: io::Error },
}

impl Identity {
    /// Resolves the identity. `spool_dir` must exist. The proposed agent id
    /// is the one the collector assigned last time (kept in the spool
    /// directory), else the cloud instance id, else the machine id, else a
    /// random id. The collector keys ids by instance identity, so a
    /// proposal left over in a baked image is not reused elsewhere.
    pub fn resolve(
        config: &Config,
        cloud: Option<CloudIdentity>,
    ) -> Result<Identity, IdentityError> {
        Self::resolve_with(config, cloud, Path::new(MACHINE_ID_PATH))
    }

    fn resolve_with(
        config: &Config,
        mut cloud: Option<CloudIdentity>,
        machine_id_path: &Path,
    ) -> Result<Identity, IdentityError> {
        let hostname = match &config.hostname {
            Some(h) => h.clone(),
            None => system_hostname()?,
        };
        // Without instance-metadata tags, the operator may name the group.
        if let (Some(c), Some(g)) = (cloud.as_mut(), config.labels.get(GROUP_LABEL)) {
            if c.group.is_empty() {
                c.group.clone_from(g);
            }
        }
        let machine_id = read_id(machine_id_path).unwrap_or_default();
        let id_file = config.spool_dir.join(AGENT_ID_FILE);
        let proposed = match read_id(&id_file) {
            Some(id) => id,
            None => match (&cloud, machine_id.is_empty()) {
                (Some(c), _) => c.instance_id.clone(),
                (None, false) => machine_id.clone(),
                (None, true) => random_hex(),
            },
        };
        let identity = Identity {
            hostname,
            cloud,
            machine_id,
            session_id: random_hex(),
            labels: config.labels.clone(),
            current: Arc::new(Mutex::new(String::new())),
            id_file,
        };
        identity.assign(&proposed)?;
        Ok(identity)
    }

    /// The agent id now (the collector's, once registered).
    pub fn agent_id(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the id the collector assigned and keeps it for the next start.
    /// A no-op when it is the id already held and kept.
    pub fn assign(&self, id: &str) -> Result<(), IdentityError> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if *current == id && read_id(&self.id_file).as_deref() == Some(id) {
            return Ok(());
        }
        let err = |source| IdentityError::AgentIdFile {
            path: self.id_file.clone(),
            source,
        };
        let tmp = self.id_file.with_extension("tmp");
        std::fs::write(&tmp, format!("{id}\n")).map_err(err)?;
        std::fs::rename(&tmp, &self.id_file).map_err(err)?;
        if !current.is_empty() {
            tracing::info!(previous = %current, agent_id = %id, "the collector assigned an agent id");
        }
        *current = id.to_owned();
        Ok(())
    }
}

fn system_hostname() -> Result<String, IdentityError> {
    let h = nix::unistd::gethostname().map_err(IdentityError::Hostname)?;
    Ok(h.to_string_lossy().into_owned())
}

fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    sonde_core::ids::to_hex(&bytes)
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
            agent_id: self.agent_id(),
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
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            machine_id: self.machine_id.clone(),
            session_id: self.session_id.clone(),
            identity_document: c.document,
            identity_signature: c.signature,
            cloud_hostname: c.hostname,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        Config {
            hostname: Some("web-1".into()),
            spool_dir: dir.to_owned(),
            ..Config::default()
        }
    }

    #[test]
    fn the_proposal_is_the_kept_id_else_instance_else_machine_else_random() {
        let dir = tempfile::tempdir().unwrap();
        let machine = dir.path().join("machine-id");
        std::fs::write(&machine, "0123abcd\n").unwrap();
        let c = config(dir.path());
        let id = Identity::resolve_with(&c, None, &machine).unwrap();
        assert_eq!(
            (id.agent_id(), id.machine_id.as_str()),
            ("0123abcd".into(), "0123abcd")
        );

        // What the collector assigns is kept and proposed next time, even
        // on an instance (the collector decides whether it still fits).
        id.assign("ag-77").unwrap();
        let cloud = CloudIdentity {
            instance_id: "i-1".into(),
            ..Default::default()
        };
        let again = Identity::resolve_with(&c, Some(cloud.clone()), &machine).unwrap();
        assert_eq!(again.agent_id(), "ag-77");
        assert_ne!(again.session_id, id.session_id, "a session per process");

        std::fs::remove_file(dir.path().join(AGENT_ID_FILE)).unwrap();
        let on_aws = Identity::resolve_with(&c, Some(cloud), &machine).unwrap();
        assert_eq!(on_aws.agent_id(), "i-1");

        std::fs::remove_file(dir.path().join(AGENT_ID_FILE)).unwrap();
        let missing = dir.path().join("none");
        let a = Identity::resolve_with(&c, None, &missing).unwrap();
        assert_eq!(a.agent_id().len(), 32);
        let b = Identity::resolve_with(&c, None, &missing).unwrap();
        assert_eq!(b.agent_id(), a.agent_id(), "kept across restarts");
    }

    #[test]
    fn a_group_label_stands_in_for_missing_instance_tags() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.labels.insert(GROUP_LABEL.into(), "web-asg".into());
        let none = dir.path().join("none");
        let untagged = CloudIdentity {
            instance_id: "i-1".into(),
            ..Default::default()
        };
        let id = Identity::resolve_with(&c, Some(untagged.clone()), &none).unwrap();
        let p = id.to_proto(&SeenInner::default());
        assert_eq!(p.group, "web-asg");
        assert_eq!(p.labels.get("group").map(String::as_str), Some("web-asg"));
        let tagged = CloudIdentity {
            group: "from-tags".into(),
            ..untagged
        };
        let id = Identity::resolve_with(&c, Some(tagged), &none).unwrap();
        assert_eq!(id.to_proto(&SeenInner::default()).group, "from-tags");
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
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::resolve(&config(dir.path()), None).unwrap();
        let p = id.to_proto(&seen.get());
        assert_eq!(p.apps, ["api", "shop"]);
        let v = p.versions.unwrap();
        assert_eq!((v.php.as_str(), v.extension.as_str()), ("8.3.1", "0.1.0"));
        assert_eq!(v.protocol, sonde_proto::PROTOCOL_VERSION);
    }

    #[test]
    fn the_cloud_identity_fills_the_registration_and_names_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let cloud = CloudIdentity {
            provider: "aws".into(),
            instance_id: "i-0abc".into(),
            instance_type: "c7g.large".into(),
            ami_id: "ami-1".into(),
            region: "ap-northeast-2".into(),
            zone: "ap-northeast-2a".into(),
            group: "web-asg".into(),
            private_ip: "10.0.1.5".into(),
            hostname: "ip-10-0-1-5.ec2.internal".into(),
            document: "{}".into(),
            signature: "c2ln".into(),
        };
        let id = Identity::resolve(&config, Some(cloud)).unwrap();
        assert_eq!(id.agent_id(), "i-0abc");
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
        assert_eq!(p.cloud_hostname, "ip-10-0-1-5.ec2.internal");
        assert_eq!(
            (p.identity_document.as_str(), p.identity_signature.as_str()),
            ("{}", "c2ln")
        );
        assert_eq!(p.session_id, id.session_id);
    }
}
