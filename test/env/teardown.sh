#!/usr/bin/env bash
# Stops what test/env/setup.sh started in the state dir: the test containers, dockerd (and the
# containerd it supervises), the registry, s3rver and PostgreSQL. Idempotent; never fails because
# something is already stopped. The state dir itself (images, registry blobs, the initdb'd
# cluster) is kept so that the next setup is fast; pass --purge to delete it as well.
#
# Usage: bash test/env/teardown.sh [--purge]
# Environment: DET_TESTENV_DIR (default /tmp/det-testenv); DET_TESTENV_USER (set by
# with-testenv.sh: its pid; then the services stay up while other registered test runs live)
set -euo pipefail

PURGE=0
case "${1:-}" in
  --purge) PURGE=1 ;;
  "") ;;
  *)
    printf 'usage: teardown.sh [--purge]\n' >&2
    exit 2
    ;;
esac

# The variables (DIR, DOCKER_SOCK, PG_DATA, ...) and helpers (pid_ours, stop_pid, as_pg,
# cleanup_docker_leftovers, unmount_under) that setup.sh uses.
# shellcheck source=test/env/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

[[ -d "$DIR" ]] || exit 0

# Wait for a setup running in this dir to finish, then hold the lock while stopping things.
exec 9>>"$DIR/.lock"
flock -w 300 9 || log "could not take $DIR/.lock within 300s; stopping anyway"

# with-testenv.sh passes its pid: the services stay up while another test run still uses them.
# Run by hand (no DET_TESTENV_USER), teardown stops them regardless.
if [[ -n "${DET_TESTENV_USER:-}" ]]; then
  unregister_user "$DET_TESTENV_USER"
  others="$(other_users | paste -sd ' ' -)"
  if [[ -n "$others" ]]; then
    log "still in use by the test run(s) with pid $others: leaving the services running"
    exit 0
  fi
fi
rm -rf "$DIR/users"

# --- test containers and dockerd ---------------------------------------------------------------
if pid="$(pid_ours "$DIR/dockerd.pid" dockerd)"; then
  if docker_answers; then
    # This dockerd only ever runs test containers (labelled ai.det.test or not): remove them all.
    ids="$(timeout 30 docker -H "unix://$DOCKER_SOCK" ps -aq 2>/dev/null || true)"
    if [[ -n "$ids" ]]; then
      log "removing $(wc -w <<<"$ids") container(s)"
      # shellcheck disable=SC2086 # one id per word
      timeout 60 docker -H "unix://$DOCKER_SOCK" rm -f -v $ids >/dev/null 2>&1 || true
    fi
  fi
  log "stopping dockerd (pid $pid)"
  stop_pid "$pid" dockerd 30
fi
cleanup_docker_leftovers
rm -f "$DIR/dockerd.pid" "$DOCKER_SOCK" "$DIR/env.sh"

# --- registry ----------------------------------------------------------------------------------
if pid="$(pid_ours "$DIR/registry.pid" docker-registry)"; then
  log "stopping docker-registry (pid $pid)"
  stop_pid "$pid" docker-registry 10
fi
rm -f "$DIR/registry.pid"

# --- s3rver -------------------------------------------------------------------------------------
if pid="$(pid_ours "$DIR/s3rver.pid" node)"; then
  log "stopping s3rver (pid $pid)"
  stop_pid "$pid" s3rver 10
fi
rm -f "$DIR/s3rver.pid"

# --- PostgreSQL --------------------------------------------------------------------------------
if pid="$(pid_ours "$PG_DATA/postmaster.pid" postgres)"; then
  log "stopping PostgreSQL (pid $pid)"
  pg_ctl="$(dirname "$(readlink -f "/proc/$pid/exe" 2>/dev/null || echo /nonexistent)")/pg_ctl"
  if [[ ! -x "$pg_ctl" ]] || ! as_pg "$pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1; then
    stop_pid "$pid" postgres 30
  fi
fi

unmount_under "$DIR"
if ((PURGE)); then
  log "removing $DIR"
  rm -rf "$DIR" || log "could not remove all of $DIR"
fi
log "stopped"
exit 0
