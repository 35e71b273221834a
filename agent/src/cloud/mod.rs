//! Cloud identity and instance lifecycle: who this host is on AWS (IMDSv2:
//! instance id, AMI, type, region, zone, private IP, Auto Scaling group) and
//! whether the instance is being terminated (scale-in, spot interruption).
//! Everything here is bounded by short timeouts: discovery must never hold
//! up start-up for more than a few seconds, and off AWS `auto` gives up in
//! well under one.

pub mod imds;
pub mod lifecycle;

use std::path::Path;
use std::time::Duration;

use tokio::time::timeout;
use tracing::{info, warn};

use crate::config::{CloudConfig, CloudProvider};
use imds::{Imds, ImdsError};

/// The longest the whole discovery may take (token + every path).
const DISCOVERY_BUDGET: Duration = Duration::from_secs(3);
/// The real metadata address; `auto` asks DMI first only for this one (a
/// configured endpoint is an explicit request to probe it).
const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// SMBIOS strings exposed by Linux.
const DMI_DIR: &str = "/sys/class/dmi/id";
/// EC2 says "Amazon EC2" (Nitro) or "…amazon" in the BIOS/product version
/// (Xen) in at least one of these.
const DMI_FILES: [&str; 5] = [
    "sys_vendor",
    "board_vendor",
    "bios_vendor",
    "bios_version",
    "product_version",
];

/// Metadata paths read at start.
const INSTANCE_ID: &str = "/latest/meta-data/instance-id";
const AMI_ID: &str = "/latest/meta-data/ami-id";
const INSTANCE_TYPE: &str = "/latest/meta-data/instance-type";
const ZONE: &str = "/latest/meta-data/placement/availability-zone";
const REGION: &str = "/latest/meta-data/placement/region";
const LOCAL_IPV4: &str = "/latest/meta-data/local-ipv4";
/// Only present when "instance metadata tags" are enabled on the instance
/// (launch template `InstanceMetadataTags=enabled`); 404 otherwise.
const ASG_TAG: &str = "/latest/meta-data/tags/instance/aws:autoscaling:groupName";
const LOCAL_HOSTNAME: &str = "/latest/meta-data/local-hostname";
/// The signed instance-identity document and its RSA SHA-256 signature.
const IDENTITY_DOCUMENT: &str = "/latest/dynamic/instance-identity/document";
const IDENTITY_SIGNATURE: &str = "/latest/dynamic/instance-identity/signature";
/// Longest identity document kept (real ones are under 1 KiB).
const MAX_DOCUMENT: usize = 8 * 1024;

/// This host's identity in a cloud.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudIdentity {
    /// `"aws"`.
    pub provider: String,
    pub instance_id: String,
    pub instance_type: String,
    pub ami_id: String,
    pub region: String,
    pub zone: String,
    /// Auto Scaling group name; empty when not in one or when instance tags
    /// are not exposed in the metadata.
    pub group: String,
    pub private_ip: String,
    /// The instance's host name in the cloud (`local-hostname`).
    pub hostname: String,
    /// The signed instance-identity document (JSON) and its base64
    /// signature; empty when the metadata service has none.
    pub document: String,
    pub signature: String,
}

/// Looks the identity up as `[cloud]` says. `None` for `provider = "none"`,
/// and when no metadata service answers (logged: a warning for `"aws"`,
/// informational for `"auto"`). The metadata client comes back with it, for
/// the lifecycle watcher.
pub async fn discover(config: &CloudConfig) -> Option<(CloudIdentity, Imds)> {
    if config.provider == CloudProvider::None {
        return None;
    }
    if config.provider == CloudProvider::Auto
        && config.imds_endpoint.trim_end_matches('/') == DEFAULT_IMDS_ENDPOINT
        && dmi_rules_out_aws(Path::new(DMI_DIR))
    {
        info!("DMI vendor is not Amazon (cloud.provider = \"auto\"); no cloud identity");
        return None;
    }
    let imds = match Imds::new(&config.imds_endpoint) {
        Ok(i) => i,
        Err(error) => {
            warn!(%error, "no cloud identity");
            return None;
        }
    };
    let started = std::time::Instant::now();
    let result = match timeout(DISCOVERY_BUDGET, aws_identity(&imds)).await {
        Ok(r) => r,
        Err(_) => Err(ImdsError::Timeout(DISCOVERY_BUDGET)),
    };
    match result {
        Ok(id) => {
            info!(instance_id = %id.instance_id, ami_id = %id.ami_id, zone = %id.zone,
                group = %id.group, took_ms = started.elapsed().as_millis() as u64,
                "AWS instance identity found");
            Some((id, imds))
        }
        Err(error) if config.provider == CloudProvider::Aws => {
            warn!(%error, endpoint = %config.imds_endpoint,
                "cloud.provider = \"aws\" but the instance metadata service did not answer; \
                 going on without a cloud identity");
            None
        }
        Err(error) => {
            info!(%error, took_ms = started.elapsed().as_millis() as u64,
                "no instance metadata service (cloud.provider = \"auto\"); no cloud identity");
            None
        }
    }
}

async fn aws_identity(imds: &Imds) -> Result<CloudIdentity, ImdsError> {
    let instance_id = imds.get(INSTANCE_ID).await?;
    if !valid_value(&instance_id) {
        return Err(ImdsError::Malformed("instance-id"));
    }
    // Everything but the instance id is optional: a 404 leaves it empty.
    let opt = |path| async move {
        imds.get_optional(path)
            .await
            .map(|v| v.filter(|v| valid_value(v)).unwrap_or_default())
    };
    let id = CloudIdentity {
        provider: "aws".into(),
        instance_id,
        ami_id: opt(AMI_ID).await?,
        instance_type: opt(INSTANCE_TYPE).await?,
        zone: opt(ZONE).await?,
        region: opt(REGION).await?,
        private_ip: opt(LOCAL_IPV4).await?,
        group: opt(ASG_TAG).await?,
        hostname: opt(LOCAL_HOSTNAME).await?,
        document: multi_line(imds.get_optional(IDENTITY_DOCUMENT).await?),
        signature: multi_line(imds.get_optional(IDENTITY_SIGNATURE).await?),
    };
    Ok(id)
}

/// True when the SMBIOS strings can be read and none of them mentions
/// Amazon. Unreadable (a container without /sys/class/dmi, an odd kernel)
/// is not proof of anything: then the metadata service is probed.
fn dmi_rules_out_aws(dir: &Path) -> bool {
    let values: Vec<String> = DMI_FILES
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .collect();
    !values.is_empty()
        && !values
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("amazon"))
}

/// The identity document and signature span lines: kept whole when they
/// are of a sane size, else dropped.
fn multi_line(v: Option<String>) -> String {
    v.filter(|v| v.len() <= MAX_DOCUMENT && !v.contains('\0'))
        .unwrap_or_default()
}

/// One line of printable text, as every identity value is.
fn valid_value(v: &str) -> bool {
    !v.is_empty() && v.len() <= 256 && !v.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_values_are_single_printable_lines() {
        assert!(valid_value("i-0123456789abcdef0"));
        assert!(valid_value("web asg"));
        assert!(!valid_value(""));
        assert!(!valid_value("a\nb"));
        assert!(!valid_value(&"x".repeat(300)));
    }

    #[test]
    fn dmi_rules_out_aws_only_when_it_says_something_else() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!dmi_rules_out_aws(dir.path()), "unreadable: probe");
        std::fs::write(dir.path().join("sys_vendor"), "QEMU\n").unwrap();
        assert!(dmi_rules_out_aws(dir.path()));
        std::fs::write(dir.path().join("bios_version"), "4.11.amazon\n").unwrap();
        assert!(!dmi_rules_out_aws(dir.path()), "EC2 on Xen");
        std::fs::write(dir.path().join("bios_version"), "1.0\n").unwrap();
        std::fs::write(dir.path().join("sys_vendor"), "Amazon EC2\n").unwrap();
        assert!(!dmi_rules_out_aws(dir.path()), "EC2 on Nitro");
    }

    #[tokio::test]
    async fn none_contacts_nothing_and_a_closed_port_gives_up_fast() {
        let none = CloudConfig {
            provider: CloudProvider::None,
            ..CloudConfig::default()
        };
        assert!(discover(&none).await.is_none());

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let auto = CloudConfig {
            provider: CloudProvider::Auto,
            imds_endpoint: format!("http://127.0.0.1:{port}"),
            ..CloudConfig::default()
        };
        let t = std::time::Instant::now();
        assert!(discover(&auto).await.is_none());
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
