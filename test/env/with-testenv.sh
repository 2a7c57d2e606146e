#!/usr/bin/env bash
# Runs a command with the real test services up: test/env/setup.sh starts dockerd, the registry
# and PostgreSQL, the command runs with the variables of $DET_TESTENV_DIR/env.sh, and
# test/env/teardown.sh always runs afterwards. Exits with the command's exit code.
#
# Usage: bash test/env/with-testenv.sh CMD [ARGS...]
# Environment:
#   DET_TESTENV_KEEP=1      leave the services running afterwards (fast local iteration; the next
#                           run reuses them; stop them with bash test/env/teardown.sh)
#   DET_TESTENV_EXTERNAL=1  the caller already provides the services and the DET_TEST_* variables:
#                           no setup, no teardown
#   DET_TESTENV_DIR         state dir (default /tmp/det-testenv); see setup.sh for the others
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VARS=(DOCKER_HOST DET_TEST_DOCKER_SOCKET DET_TEST_REGISTRY DET_TEST_IMAGE DET_TEST_LOCAL_IMAGE DET_TEST_PG_URL DET_TEST_S3_ENDPOINT)

if (($# == 0)); then
  printf 'usage: %s CMD [ARGS...]\n' "$0" >&2
  exit 2
fi

if [[ "${DET_TESTENV_EXTERNAL:-}" == 1 ]]; then
  missing=()
  for v in "${VARS[@]}"; do
    [[ -n "${!v:-}" ]] || missing+=("$v")
  done
  if ((${#missing[@]})); then
    printf '[testenv] ERROR: DET_TESTENV_EXTERNAL=1 but %s not set\n' "${missing[*]}" >&2
    exit 2
  fi
  exec "$@"
fi

DET_TESTENV_DIR="${DET_TESTENV_DIR:-/tmp/det-testenv}"
export DET_TESTENV_DIR

# shellcheck disable=SC2317 # called by the EXIT trap
finish() {
  local rc=$?
  if [[ "${DET_TESTENV_KEEP:-}" == 1 ]]; then
    printf '[testenv] DET_TESTENV_KEEP=1: leaving the services running (bash %s to stop them)\n' \
      "$HERE/teardown.sh" >&2
  else
    DET_TESTENV_USER=$$ bash "$HERE/teardown.sh" || true
  fi
  exit "$rc"
}
# Set before setup, so that a setup that fails half-way is torn down too.
trap finish EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

DET_TESTENV_USER=$$ bash "$HERE/setup.sh"
# shellcheck source=/dev/null
source "$DET_TESTENV_DIR/env.sh"

set +e
"$@"
rc=$?
set -e
exit "$rc"
