#!/bin/sh
# What an AMI bake runs on the build instance (Packer shell provisioner, EC2
# Image Builder component, or by hand before `aws ec2 create-image`):
# install the agent package, enable the service, and leave no
# instance-specific state in the image. The collector address and token are
# NOT baked in: each instance gets them at launch (packaging/cloud-init.yaml),
# so one image serves every environment and a token can be rotated without a
# new image.
#
#   sudo packaging/ami-bake.sh /path/to/sonde-agent_<version>_amd64.deb
#
# Needs root and PHP (php8.2-fpm) already installed on the build instance.
set -eu

deb=${1:?usage: ami-bake.sh sonde-agent_<version>_<arch>.deb}
[ "$(id -u)" -eq 0 ] || { echo "ami-bake.sh: run as root" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
# apt resolves Depends (phpapi-*) from the configured repositories.
apt-get install -y "$deb"

# On: every instance launched from the image starts the agent at boot.
systemctl enable sonde-agent.service
# Off now: the build instance must not register under the image's name, and
# anything it spooled must not be replayed by every future instance.
systemctl stop sonde-agent.service 2>/dev/null || true

# Instance-specific state. The agent's id on AWS is the instance id read
# from IMDS at start, so a leftover agent-id cannot be shared; remove it (and
# the spool) anyway, for `provider = "none"` images and to keep the image
# clean. /etc/machine-id is emptied so that systemd generates a new one on
# first boot (the fallback agent id off AWS).
rm -rf /var/lib/sonde/agent
rm -rf /run/sonde
if [ -f /etc/machine-id ]; then
	: >/etc/machine-id
fi
rm -f /var/lib/dbus/machine-id

# The token placeholder stays in /etc/sonde/agent.toml; cloud-init replaces
# it at launch. Cloud-init itself must run again on instances: clean it.
if command -v cloud-init >/dev/null 2>&1; then
	cloud-init clean --logs
fi
echo "ami-bake.sh: sonde-agent installed and enabled; instance state removed"
