#!/usr/bin/env bash
# First provisioning step: waits until the base image has finished booting (cloud-init), and, when
# APT_SOURCES is set, replaces the apt sources for the duration of the bake (the originals are kept
# under /var/lib/det-bake and put back by cleanup.sh). Idempotent.
# Environment:
#   APT_SOURCES  one-line-style apt sources to bake with (e.g. a local mirror); empty: the image's own
set -euo pipefail

BACKUP=/var/lib/det-bake/apt-sources

log() { printf 'det-bake prepare: %s\n' "$*"; }

if command -v cloud-init >/dev/null 2>&1; then
  log "waiting for cloud-init to finish"
  # Exit code 2 means "done, with recoverable errors" (cloud-init >= 23.4); the bake can go on.
  rc=0
  cloud-init status --wait >/dev/null || rc=$?
  if ((rc != 0 && rc != 2)); then
    log "cloud-init status --wait failed (exit $rc); continuing"
  fi
fi

if [[ -n "${APT_SOURCES:-}" ]]; then
  if [[ ! -d "$BACKUP" ]]; then
    mkdir -p "$BACKUP"
    if [[ -e /etc/apt/sources.list ]]; then mv /etc/apt/sources.list "$BACKUP/sources.list"; fi
    if [[ -d /etc/apt/sources.list.d ]]; then mv /etc/apt/sources.list.d "$BACKUP/sources.list.d"; fi
  fi
  mkdir -p /etc/apt/sources.list.d
  printf '%s\n' "$APT_SOURCES" >/etc/apt/sources.list
  log "apt sources for this bake: $(tr '\n' ' ' </etc/apt/sources.list)"
else
  log "apt sources: the image's own"
fi
