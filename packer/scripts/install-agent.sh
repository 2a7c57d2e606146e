#!/usr/bin/env bash
# Installs the agent bundle (npm run bundle:agent) under /opt/determined and the det-agent systemd
# unit, enabled for boot. Re-running replaces the installed bundle. Idempotent.
# Environment:
#   AGENT_BUNDLE  the uploaded tarball (default /tmp/det-agent.tar.gz)
#   AGENT_UNIT    the uploaded unit file (default /tmp/det-agent.service)
set -euo pipefail

BUNDLE="${AGENT_BUNDLE:-/tmp/det-agent.tar.gz}"
UNIT="${AGENT_UNIT:-/tmp/det-agent.service}"
PREFIX=/opt/determined

log() { printf 'det-bake agent: %s\n' "$*"; }
die() {
  printf 'det-bake agent: ERROR: %s\n' "$*" >&2
  exit 1
}

[[ -f "$BUNDLE" ]] || die "no agent bundle at $BUNDLE: run npm run bundle:agent and set the agent_bundle variable"
[[ -f "$UNIT" ]] || die "no unit file at $UNIT"

stage="$(mktemp -d "${PREFIX}.new.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
# The tarball holds one directory (det-agent-<version>-linux-x64/); its content becomes PREFIX.
tar -xzf "$BUNDLE" -C "$stage" --strip-components=1 --no-same-owner
[[ -x "$stage/bin/det-agent" && -x "$stage/lib/node" && -f "$stage/lib/det-agent.js" ]] ||
  die "$BUNDLE is not an agent bundle (expected bin/det-agent, lib/node, lib/det-agent.js)"
version="$("$stage/bin/det-agent" --version)"
chmod 755 "$stage"
rm -rf "${PREFIX}.old"
if [[ -e "$PREFIX" ]]; then mv "$PREFIX" "${PREFIX}.old"; fi
mv "$stage" "$PREFIX"
rm -rf "${PREFIX}.old"
trap - EXIT
log "installed $version under $PREFIX"

install -d -m 0755 /var/lib/det-agent
install -m 0644 "$UNIT" /etc/systemd/system/det-agent.service
systemctl enable det-agent.service
if [[ -d /run/systemd/system ]]; then systemctl daemon-reload; fi
log "det-agent.service enabled: on boot it runs $PREFIX/bin/det-agent --config-source ec2"
