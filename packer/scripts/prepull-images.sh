#!/usr/bin/env bash
# Pulls the task images named in IMAGES (space-separated) into the image's Docker, so the first
# task on a new instance starts without a pull. Needs a running dockerd (the amazon-ebs build);
# with no IMAGES it does nothing. Idempotent (docker pull of a present image is a no-op).
set -euo pipefail

log() { printf 'det-bake pre-pull: %s\n' "$*"; }

read -r -a images <<<"${IMAGES:-}"
if ((${#images[@]} == 0)); then
  log "no images to pre-pull"
  exit 0
fi
if ! docker info >/dev/null 2>&1; then
  printf 'det-bake pre-pull: ERROR: no running dockerd to pull %s into (pre-pulling needs the amazon-ebs build, where systemd runs docker)\n' "${images[*]}" >&2
  exit 1
fi
for image in "${images[@]}"; do
  log "pulling $image"
  docker pull -q "$image"
done
