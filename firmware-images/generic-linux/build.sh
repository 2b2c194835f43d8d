#!/usr/bin/env bash
# Install the edgefleet agent into a root file system: a virtualenv with the `agent`
# extra under /opt/edgefleet, the systemd unit, and a config template.
# Usage: build.sh ROOTFS   (ROOTFS=/ installs on this machine)
set -euo pipefail
rootfs=${1:?usage: build.sh ROOTFS}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

install -d "$rootfs/opt/edgefleet" "$rootfs/etc/edgefleet" "$rootfs/etc/systemd/system"
python3 -m venv "$rootfs/opt/edgefleet/venv"
"$rootfs/opt/edgefleet/venv/bin/pip" install -q "$repo[agent]"
install -m 0644 "$here/edgefleet-agent.service" "$rootfs/etc/systemd/system/"
install -m 0644 "$here/agent.toml.template" "$rootfs/etc/edgefleet/agent.toml.template"
install -m 0644 "$here/profile.toml" "$rootfs/etc/edgefleet/profile.toml"
echo "agent installed under $rootfs/opt/edgefleet; enrol the device next (see README)"
