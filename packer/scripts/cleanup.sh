#!/usr/bin/env bash
# Last provisioning step: leaves a clean image for new instances: the original apt sources back
# (when the bake used APT_SOURCES), no apt caches, cloud-init state, logs, SSH host keys, the bake's
# SSH key, uploaded files or machine id (each instance gets its own on first boot). Idempotent.
set -euo pipefail

BACKUP=/var/lib/det-bake/apt-sources

log() { printf 'det-bake cleanup: %s\n' "$*"; }

if [[ -d "$BACKUP" ]]; then
  rm -rf /etc/apt/sources.list /etc/apt/sources.list.d
  if [[ -e "$BACKUP/sources.list" ]]; then mv "$BACKUP/sources.list" /etc/apt/sources.list; fi
  if [[ -d "$BACKUP/sources.list.d" ]]; then mv "$BACKUP/sources.list.d" /etc/apt/sources.list.d; else mkdir -p /etc/apt/sources.list.d; fi
  log "restored the image's apt sources"
fi
rm -rf /var/lib/det-bake

apt-get clean
rm -rf /var/lib/apt/lists/*

if command -v cloud-init >/dev/null 2>&1; then
  cloud-init clean --logs --seed
  # The bake's temporary key; cloud-init installs the instance's key pair on boot.
  rm -f /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys
fi
rm -f /etc/ssh/ssh_host_*

# An empty machine-id makes systemd generate a new one on first boot.
if [[ -e /etc/machine-id ]]; then : >/etc/machine-id; fi
if [[ -f /var/lib/dbus/machine-id && ! -L /var/lib/dbus/machine-id ]]; then rm -f /var/lib/dbus/machine-id; fi

rm -rf /var/log/journal/*
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
rm -f /root/.bash_history /home/*/.bash_history
rm -f /tmp/det-agent.tar.gz /tmp/det-agent.service
sync
log "done"
