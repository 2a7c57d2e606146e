#!/usr/bin/env bash
# GPU images only (DET_GPU=true): the NVIDIA driver (Ubuntu's precompiled, signed kernel modules for
# the running kernel flavour, via ubuntu-drivers), nvidia-smi, the fabric manager (NVSwitch systems
# such as p4d/p5), and the NVIDIA container toolkit with Docker's nvidia runtime configured.
# Idempotent. Needs an Ubuntu base image.
# Environment:
#   DET_GPU                 true to install; anything else skips this step
#   NVIDIA_DRIVER_BRANCH    e.g. 535-server, 550-server, 570-server
#   NVIDIA_CONTAINER_REPO   base URL of NVIDIA's libnvidia-container apt repository
set -euo pipefail

log() { printf 'det-bake nvidia: %s\n' "$*"; }
die() {
  printf 'det-bake nvidia: ERROR: %s\n' "$*" >&2
  exit 1
}

if [[ "${DET_GPU:-false}" != true ]]; then
  log "gpu=false: skipping the NVIDIA driver and container toolkit"
  exit 0
fi

if [[ -f /.dockerenv ]] || systemd-detect-virt --container --quiet 2>/dev/null; then
  die "gpu=true installs kernel modules, which a container build cannot: bake GPU images with -only=amazon-ebs.agent"
fi

BRANCH="${NVIDIA_DRIVER_BRANCH:?set NVIDIA_DRIVER_BRANCH (e.g. 535-server)}"
REPO="${NVIDIA_CONTAINER_REPO:?set NVIDIA_CONTAINER_REPO}"
MAJOR="${BRANCH%%-*}"
KEYRING=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg

# shellcheck source=/dev/null
. /etc/os-release
[[ "${ID:-}" == ubuntu ]] || die "GPU images are baked from Ubuntu (ubuntu-drivers installs the signed kernel modules); this is ${PRETTY_NAME:-unknown}"

export DEBIAN_FRONTEND=noninteractive
apt_get() {
  apt-get -q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

apt_get update
apt_get install -y --no-install-recommends ubuntu-drivers-common ca-certificates curl gnupg

log "installing driver branch $BRANCH"
ubuntu-drivers install --gpgpu "nvidia:${BRANCH}"
apt_get install -y --no-install-recommends "nvidia-utils-${BRANCH}" "nvidia-fabricmanager-${MAJOR}"
# Only does something on NVSwitch systems; elsewhere it exits at boot without harm.
systemctl enable nvidia-fabricmanager.service || log "nvidia-fabricmanager.service not found; skipping"
systemctl enable nvidia-persistenced.service 2>/dev/null || true

log "installing the NVIDIA container toolkit from $REPO"
if [[ ! -s "$KEYRING" ]]; then
  curl -fsSL "$REPO/gpgkey" | gpg --dearmor --yes -o "$KEYRING"
fi
# shellcheck disable=SC2016 # $(ARCH) is for apt to expand
printf 'deb [signed-by=%s] %s/stable/deb/$(ARCH) /\n' "$KEYRING" "$REPO" >/etc/apt/sources.list.d/nvidia-container-toolkit.list
apt_get update
apt_get install -y --no-install-recommends nvidia-container-toolkit

nvidia-ctk runtime configure --runtime=docker
if [[ -d /run/systemd/system ]]; then
  systemctl restart docker.service
fi
log "done (nvidia-smi works on the instance once it boots with a GPU)"
