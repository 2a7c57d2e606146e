#!/usr/bin/env bash
# Installs Docker Engine from the distribution's packages (docker.io), through the mirrors in this
# machine's apt sources, and enables it for boot. Idempotent.
# Usage: install-docker.sh                   install
#        install-docker.sh --list-packages   print the apt packages it installs (test/env/setup.sh
#                                            caches them for the local bake test)
set -euo pipefail

PACKAGES=(docker.io)

if [[ "${1:-}" == --list-packages ]]; then
  printf '%s\n' "${PACKAGES[@]}"
  exit 0
fi

log() { printf 'det-bake docker: %s\n' "$*"; }
export DEBIAN_FRONTEND=noninteractive
apt_get() {
  apt-get -q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}
installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]; }

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt_get update
  apt_get install -y --no-install-recommends "${missing[@]}"
else
  log "${PACKAGES[*]} already installed"
fi

# Container logs rotate, so a chatty trial cannot fill the root volume. An existing file is kept.
if [[ ! -e /etc/docker/daemon.json ]]; then
  mkdir -p /etc/docker
  printf '{\n  "log-driver": "json-file",\n  "log-opts": {"max-size": "100m", "max-file": "3"}\n}\n' >/etc/docker/daemon.json
fi

systemctl enable docker.service containerd.service
if [[ -d /run/systemd/system ]]; then
  systemctl start docker.service
  for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then break; fi
    sleep 1
  done
  docker info >/dev/null || { log "dockerd did not come up: journalctl -u docker"; exit 1; }
  log "$(docker version --format 'Docker Engine {{.Server.Version}} is running')"
else
  log "systemd is not running here (container build): docker is enabled for the next boot"
fi
