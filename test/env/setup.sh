#!/usr/bin/env bash
# Starts the real services that the integration and e2e tests use, all under one state dir:
#   - dockerd on its own socket (no bridge, no iptables: containers use network mode host or none),
#   - Debian's docker-registry on 127.0.0.1 (plain HTTP, no auth),
#   - a private PostgreSQL instance on 127.0.0.1 with role det/det and database det_test,
#   - s3rver (the project's devDependency) on 127.0.0.1, an S3 API with no buckets,
#   - a busybox base image, imported locally and pushed to the registry,
#   - for the local AMI bake test (test/e2e/ami-bake.test.ts): a Debian minbase image with systemd
#     (debootstrap, imported into the test dockerd) and a local apt repository with the packages
#     packer/scripts install, both downloaded once from the mirror in this machine's apt sources and
#     cached under $DET_TEST_CACHE_DIR (the test itself only talks to 127.0.0.1),
# and writes $DIR/env.sh with the variables the tests read (see test/support/env.ts).
#
# Idempotent: whatever a previous run in the same dir started and still answers is reused.
# test/env/teardown.sh stops exactly what this script started.
#
# Usage: bash test/env/setup.sh [--install-only]
#   --install-only   only apt-get install the missing system packages (used by .ci/run), start nothing.
# Sourced (as teardown.sh does), it only defines its variables and functions.
# Environment:
#   DET_TESTENV_DIR          state dir (default /tmp/det-testenv); must be reachable by the postgres user
#   DET_TEST_REGISTRY_PORT   registry port on 127.0.0.1 (default 5000)
#   DET_TEST_PG_PORT         PostgreSQL port on 127.0.0.1 (default 55432)
#   DET_TEST_S3_PORT         s3rver port on 127.0.0.1 (default 4569)
#   DET_TESTENV_WAIT_S       how long to wait for each service to answer (default 60)
#   DET_TESTENV_USER         pid of the test run (with-testenv.sh) that will use the services
#   DET_TEST_CACHE_DIR       downloads kept between runs (default /var/cache/det-test)
set -euo pipefail

DIR="${DET_TESTENV_DIR:-/tmp/det-testenv}"
REGISTRY_PORT="${DET_TEST_REGISTRY_PORT:-5000}"
PG_PORT="${DET_TEST_PG_PORT:-55432}"
S3_PORT="${DET_TEST_S3_PORT:-4569}"
WAIT_S="${DET_TESTENV_WAIT_S:-60}"

REGISTRY="127.0.0.1:${REGISTRY_PORT}"
LOCAL_IMAGE="det-test/busybox:latest"
IMAGE="${REGISTRY}/${LOCAL_IMAGE}"
DOCKER_SOCK="${DIR}/docker.sock"
PG_DATA="${DIR}/pgdata"
PG_RUN="${DIR}/pgrun"
PG_URL="postgres://det:det@127.0.0.1:${PG_PORT}/det_test"
S3_ENDPOINT="http://127.0.0.1:${S3_PORT}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
S3RVER_JS="$REPO_ROOT/node_modules/s3rver/bin/s3rver.js"
OTHER_USERS=""

# Packages the test environment needs (Debian 12 names).
# awscli: the storage tests check that what we write is readable by a standard S3 client.
# rclone: the reference of the checkpoint upload benchmark (npm run bench:s3-sync), beside awscli.
# packer, shellcheck, systemd (systemd-analyze): the packer/ template, scripts and unit are checked;
# debootstrap, dpkg-dev (dpkg-scanpackages): the local bake test's base image and apt repository.
APT_PACKAGES=(docker.io docker-registry busybox-static postgresql openssl curl awscli rclone packer shellcheck systemd debootstrap dpkg-dev)

now_us() { local t="${EPOCHREALTIME//[.,]/}"; printf '%s' "$t"; }
START_US="$(now_us)"
log() {
  local ms=$(( ($(now_us) - START_US) / 1000 ))
  printf '[testenv %3d.%01ds] %s\n' $((ms / 1000)) $(((ms % 1000) / 100)) "$*" >&2
}
die() {
  printf '[testenv] ERROR: %s\n' "$*" >&2
  exit 1
}
# Last lines of a log file, indented, for error messages.
tail_log() {
  if [[ -f "$1" ]]; then
    printf -- '--- last lines of %s ---\n' "$1" >&2
    tail -n "${2:-30}" "$1" | sed 's/^/    /' >&2
  fi
}

# ---------------------------------------------------------------------------------------------
# System packages
# ---------------------------------------------------------------------------------------------
pkg_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

pg_bindir() {
  local d
  d="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
  [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]] || return 1
  printf '%s\n' "$d"
}

missing_packages() {
  local missing=()
  { command -v dockerd && command -v docker && command -v containerd && command -v runc; } >/dev/null 2>&1 ||
    missing+=(docker.io)
  [[ -x /usr/bin/docker-registry ]] || missing+=(docker-registry)
  # The image needs a static busybox; Debian's plain "busybox" package is dynamically linked.
  pkg_installed busybox-static || missing+=(busybox-static)
  { pg_bindir && command -v psql && command -v pg_isready; } >/dev/null 2>&1 || missing+=(postgresql)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v aws >/dev/null 2>&1 || missing+=(awscli)
  command -v rclone >/dev/null 2>&1 || missing+=(rclone)
  command -v packer >/dev/null 2>&1 || missing+=(packer)
  command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v dpkg-scanpackages >/dev/null 2>&1 || missing+=(dpkg-dev)
  if ((${#missing[@]})); then printf '%s\n' "${missing[@]}"; fi
}

install_packages() {
  local missing=()
  mapfile -t missing < <(missing_packages)
  if ((${#missing[@]} == 0)); then
    log "system packages present (${APT_PACKAGES[*]})"
    return 0
  fi
  if ((EUID != 0)); then
    die "missing packages: ${missing[*]}; run this script as root or: sudo apt-get install -y ${missing[*]}"
  fi
  log "installing ${missing[*]} with apt-get"
  # Keep the packages' maintainer scripts from starting system services (a system dockerd would
  # create the docker0 bridge and iptables rules; a system PostgreSQL would take port 5432).
  local policy=/usr/sbin/policy-rc.d created_policy=0 rc=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
  fi
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        -o DPkg::Lock::Timeout=120 "${missing[@]}"
  } </dev/null >&2 || rc=$?
  if ((created_policy)); then rm -f "$policy"; fi
  ((rc == 0)) || die "apt-get install ${missing[*]} failed (exit $rc)"
  mapfile -t missing < <(missing_packages)
  ((${#missing[@]} == 0)) || die "still missing after apt-get install: ${missing[*]}"
  log "installed"
}

# ---------------------------------------------------------------------------------------------
# Process helpers: a pid counts as ours only if it is alive, has the expected command name and
# mentions the state dir on its command line (so a recycled pid is never reused or killed).
# ---------------------------------------------------------------------------------------------
# True while the process exists and is not a zombie (PID 1 here may reap exited daemons late).
alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat%% *}" != Z ]]
}

# wait_until_up NAME PID LOGFILE WHERE CHECK...: polls CHECK (a command) until it succeeds; dies
# with the log's tail if the process exits first or WAIT_S passes.
wait_until_up() {
  local name=$1 pid=$2 logf=$3 where=$4
  shift 4
  local i
  for ((i = 0; i < WAIT_S * 10; i++)); do
    if "$@"; then
      log "$name is up (pid $pid)"
      return 0
    fi
    if ! alive "$pid"; then
      tail_log "$logf"
      die "$name exited during startup (see $logf)"
    fi
    sleep 0.1
  done
  tail_log "$logf"
  die "$name did not answer on $where within ${WAIT_S}s (see $logf)"
}

pid_ours() { # pidfile comm -> prints pid
  local pidfile="$1" comm="$2" pid
  [[ -f "$pidfile" ]] || return 1
  pid="$(head -n 1 "$pidfile" 2>/dev/null | tr -dc '0-9')"
  [[ -n "$pid" ]] && alive "$pid" || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/" || return 1
  printf '%s\n' "$pid"
}

wait_gone() { # pid seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    alive "$1" || return 0
    sleep 0.1
  done
  return 1
}

stop_pid() { # pid what [grace seconds]
  local pid="$1" what="$2" grace="${3:-20}"
  kill -TERM "$pid" 2>/dev/null || return 0
  wait_gone "$pid" "$grace" && return 0
  log "$what (pid $pid) did not stop within ${grace}s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  wait_gone "$pid" 5 || log "$what (pid $pid) is still there after SIGKILL"
}

# Runs a command as the postgres OS user (when we are root), from a dir that user can enter.
as_pg() {
  if ((EUID == 0)); then
    (cd "$DIR" && runuser -u postgres -- "$@")
  else
    (cd "$DIR" && "$@")
  fi
}

# Test runs (with-testenv.sh, by pid) that use the services right now. Several runs may share
# one state dir: a later setup then keeps the database and containers of the earlier one, and
# only the last run's teardown stops the services. An entry counts while its pid lives with the
# same start time (so a recycled pid does not).
proc_start() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  awk '{ print $20 }' <<<"$stat"
}
register_user() {
  mkdir -p "$DIR/users"
  proc_start "$1" >"$DIR/users/$1" || rm -f "$DIR/users/$1"
}
unregister_user() { rm -f "$DIR/users/$1"; }
other_users() { # [own pid] -> prints the pids of the other live users; forgets dead ones
  local f pid
  for f in "$DIR"/users/*; do
    [[ -e "$f" ]] || continue
    pid="${f##*/}"
    [[ "$pid" != "${1:-}" ]] || continue
    if [[ -n "$pid" && "$(proc_start "$pid" 2>/dev/null || true)" == "$(cat "$f" 2>/dev/null)" ]]; then
      printf '%s\n' "$pid"
    else
      rm -f "$f"
    fi
  done
}

# Unmounts whatever is still mounted at or below the given paths (deepest first).
unmount_under() {
  local m mounts=()
  mapfile -t mounts < <(awk -v a="$1" -v b="${2:-$1}" '
    $5 == a || index($5, a "/") == 1 || $5 == b || index($5, b "/") == 1 { print $5 }' /proc/self/mountinfo |
    sort -r)
  for m in "${mounts[@]}"; do
    log "unmounting leftover $m"
    umount -l "$m" 2>/dev/null || true
  done
}

# What a dockerd that did not shut down cleanly (SIGKILL, OOM, crash) leaves behind: its
# containerd, running containers and their shims, mounts. All are found through this state dir.
cleanup_docker_leftovers() {
  local pid proc comm id runc_root="$DIR/docker-exec/runtime-runc/moby"
  if pid="$(pid_ours "$DIR/docker-exec/containerd/containerd.pid" containerd)"; then
    log "stopping leftover containerd (pid $pid)"
    stop_pid "$pid" containerd 10
  fi
  # dockerd would take a stale pid (even a zombie's) for a running containerd and wait for it.
  rm -f "$DIR/docker-exec/containerd/containerd.pid"
  if [[ -d "$runc_root" ]] && command -v runc >/dev/null 2>&1; then
    while read -r id; do
      [[ -n "$id" ]] || continue
      log "killing leftover container ${id:0:12}"
      runc --root "$runc_root" delete --force "$id" >/dev/null 2>&1 || true
    done < <(runc --root "$runc_root" list -q 2>/dev/null || true)
  fi
  for proc in /proc/[0-9]*; do
    comm="$(cat "$proc/comm" 2>/dev/null || true)"
    [[ "$comm" == containerd-shim* ]] || continue
    if tr '\0' ' ' <"$proc/cmdline" 2>/dev/null | grep -qF -- "$DIR/docker-exec/"; then
      log "killing leftover $comm (pid ${proc#/proc/})"
      kill -KILL "${proc#/proc/}" 2>/dev/null || true
    fi
  done
  unmount_under "$DIR/docker-exec" "$DIR/docker-data"
}

# ---------------------------------------------------------------------------------------------
# dockerd
# ---------------------------------------------------------------------------------------------
docker_cli() { docker -H "unix://$DOCKER_SOCK" "$@"; }
docker_answers() { timeout 10 docker -H "unix://$DOCKER_SOCK" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start_dockerd() {
  local pidfile="$DIR/dockerd.pid" logf="$DIR/dockerd.log" pid i
  if pid="$(pid_ours "$pidfile" dockerd)"; then
    for ((i = 0; i < 100; i++)); do
      if docker_answers; then
        log "dockerd already running (pid $pid), reusing it"
        return 0
      fi
      alive "$pid" || break
      sleep 0.1
    done
    log "dockerd (pid $pid) does not answer; restarting it"
    stop_pid "$pid" dockerd
  fi
  cleanup_docker_leftovers
  command -v docker >/dev/null || die "no docker CLI on PATH"
  mkdir -p "$DIR/docker-data" "$DIR/docker-exec"
  rm -f "$DOCKER_SOCK" "$pidfile"
  # Our own (empty) config file, so a host /etc/docker/daemon.json cannot change this daemon.
  printf '{}\n' >"$DIR/daemon.json"
  log "starting dockerd on unix://$DOCKER_SOCK"
  # setsid: not in the caller's process group (a terminal ^C goes to the tests, teardown stops us);
  # 9>&- : do not inherit the setup lock.
  setsid dockerd \
    --config-file "$DIR/daemon.json" \
    --host "unix://$DOCKER_SOCK" \
    --data-root "$DIR/docker-data" \
    --exec-root "$DIR/docker-exec" \
    --pidfile "$pidfile" \
    --storage-driver vfs \
    --bridge none \
    --iptables=false \
    --ip-masq=false \
    --log-level warn \
    </dev/null >"$logf" 2>&1 9>&- &
  pid=$!
  for ((i = 0; i < WAIT_S * 10; i++)); do
    if [[ -S "$DOCKER_SOCK" ]] && docker_answers; then
      # dockerd writes its pidfile itself; make sure it is there for teardown.
      [[ -s "$pidfile" ]] || printf '%s\n' "$pid" >"$pidfile"
      log "dockerd is up (pid $pid)"
      return 0
    fi
    if ! alive "$pid"; then
      tail_log "$logf"
      die "dockerd exited during startup (see $logf)"
    fi
    sleep 0.1
  done
  tail_log "$logf"
  die "dockerd did not answer on unix://$DOCKER_SOCK within ${WAIT_S}s (see $logf)"
}

# ---------------------------------------------------------------------------------------------
# docker-registry (distribution 2.8)
# ---------------------------------------------------------------------------------------------
registry_answers() { curl -fsS -o /dev/null --max-time 2 "http://${REGISTRY}/v2/" 2>/dev/null; }

start_registry() {
  local pidfile="$DIR/registry.pid" logf="$DIR/registry.log" config="$DIR/registry.yml" pid i
  if pid="$(pid_ours "$pidfile" docker-registry)"; then
    if grep -qF "addr: ${REGISTRY}" "$config" 2>/dev/null && registry_answers; then
      log "registry already running on ${REGISTRY} (pid $pid), reusing it"
      return 0
    fi
    log "registry (pid $pid) does not answer on ${REGISTRY}; restarting it"
    stop_pid "$pid" docker-registry
  fi
  if registry_answers; then
    die "something that is not ours already answers on http://${REGISTRY}/v2/ (set DET_TEST_REGISTRY_PORT to another port)"
  fi
  mkdir -p "$DIR/registry-data"
  cat >"$config" <<EOF
# Written by test/env/setup.sh: plain HTTP on loopback, no auth, storage in the state dir.
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: ${DIR}/registry-data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: ${REGISTRY}
  secret: det-testenv-not-a-secret
EOF
  log "starting docker-registry on ${REGISTRY}"
  setsid /usr/bin/docker-registry serve "$config" </dev/null >"$logf" 2>&1 9>&- &
  pid=$!
  printf '%s\n' "$pid" >"$pidfile"
  wait_until_up docker-registry "$pid" "$logf" "http://${REGISTRY}/v2/" registry_answers
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------
pg_answers() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2 >/dev/null 2>&1; }
psql_admin() {
  as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_RUN" -p "$PG_PORT" -U postgres -d postgres "$@"
}

start_postgres() {
  local logf="$DIR/postgres.log" major pid
  PG_BIN="$(pg_bindir)" || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
  major="$(basename "$(dirname "$PG_BIN")")"
  if ((EUID == 0)); then
    id postgres >/dev/null 2>&1 || die "no postgres OS user (is the postgresql package installed?)"
    runuser -u postgres -- test -x "$DIR" ||
      die "the postgres OS user cannot enter $DIR: use a DET_TESTENV_DIR whose parents are world-searchable"
  fi

  if pid="$(pid_ours "$PG_DATA/postmaster.pid" postgres)"; then
    if pg_answers && [[ -S "$PG_RUN/.s.PGSQL.$PG_PORT" ]]; then
      log "PostgreSQL already running on 127.0.0.1:$PG_PORT (pid $pid), reusing it"
      PG_REUSED=1
    else
      log "PostgreSQL (pid $pid) does not answer on 127.0.0.1:$PG_PORT; restarting it"
      as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 || stop_pid "$pid" postgres
    fi
  fi

  if [[ "${PG_REUSED:-0}" != 1 ]]; then
    if pg_answers; then
      die "something that is not ours already answers on 127.0.0.1:$PG_PORT (set DET_TEST_PG_PORT to another port)"
    fi
    if [[ -f "$PG_DATA/PG_VERSION" && "$(cat "$PG_DATA/PG_VERSION")" != "$major" ]]; then
      log "existing $PG_DATA is for PostgreSQL $(cat "$PG_DATA/PG_VERSION"), not $major: recreating it"
      rm -rf "$PG_DATA"
    fi
    if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
      log "initdb (PostgreSQL $major) into $PG_DATA"
      rm -rf "$PG_DATA"
      mkdir -p "$PG_DATA"
      if ((EUID == 0)); then chown postgres:postgres "$PG_DATA"; fi
      chmod 700 "$PG_DATA"
      if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --no-locale \
        --auth-local=trust --auth-host=scram-sha-256 --no-sync >"$DIR/initdb.log" 2>&1; then
        tail_log "$DIR/initdb.log"
        die "initdb failed (see $DIR/initdb.log)"
      fi
      # A throwaway test database: durability is not needed, speed is.
      cat >>"$PG_DATA/postgresql.conf" <<'EOF'

# --- test/env/setup.sh ---
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 64MB
logging_collector = off
log_min_messages = warning
EOF
    fi
    mkdir -p "$PG_RUN"
    : >"$logf"
    if ((EUID == 0)); then chown postgres:postgres "$PG_RUN" "$logf"; fi
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    # The port, address and socket dir are given at start so that the data dir is not tied to them.
    if ! as_pg setsid -w "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$logf" -w -t "$WAIT_S" \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_RUN" start </dev/null >/dev/null 2>&1 9>&-; then
      tail_log "$logf"
      die "PostgreSQL did not start on 127.0.0.1:$PG_PORT (see $logf)"
    fi
    pid="$(pid_ours "$PG_DATA/postmaster.pid" postgres)" || die "PostgreSQL started but its postmaster.pid is not readable"
    log "PostgreSQL is up (pid $pid)"
  fi

  # Role det/det (CREATEDB so tests may make databases of their own) and a fresh det_test
  # database, unless another test run is using it right now.
  local reset='DROP DATABASE IF EXISTS det_test WITH (FORCE);'
  if [[ -n "$OTHER_USERS" ]]; then reset=''; fi
  psql_admin -f - <<EOF >/dev/null || die "creating role det and database det_test failed"
SET client_min_messages = warning;
SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'det')
  THEN 'ALTER ROLE det LOGIN CREATEDB PASSWORD ''det'''
  ELSE 'CREATE ROLE det LOGIN CREATEDB PASSWORD ''det''' END \gexec
$reset
SELECT 'CREATE DATABASE det_test OWNER det'
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'det_test') \gexec
EOF
  if [[ -n "$reset" ]]; then
    log "database det_test (owner det) is fresh"
  else
    log "database det_test kept: in use by the test run(s) with pid $OTHER_USERS"
  fi
}

# ---------------------------------------------------------------------------------------------
# s3rver (npm devDependency): the S3 API on loopback, data in the state dir, no buckets
# ---------------------------------------------------------------------------------------------
s3_answers() {
  curl -fsS --max-time 2 "${S3_ENDPOINT}/" 2>/dev/null | grep -qF ListAllMyBucketsResult
}

start_s3() {
  local pidfile="$DIR/s3rver.pid" logf="$DIR/s3rver.log" pid i
  if pid="$(pid_ours "$pidfile" node)"; then
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--port ${S3_PORT} " && s3_answers; then
      log "s3rver already running on ${S3_ENDPOINT} (pid $pid), reusing it"
      return 0
    fi
    log "s3rver (pid $pid) does not answer on ${S3_ENDPOINT}; restarting it"
    stop_pid "$pid" s3rver 10
  fi
  if curl -sS -o /dev/null --max-time 2 "${S3_ENDPOINT}/" 2>/dev/null; then
    die "something that is not ours already answers on ${S3_ENDPOINT} (set DET_TEST_S3_PORT to another port)"
  fi
  [[ -f "$S3RVER_JS" ]] || die "$S3RVER_JS is missing: run npm ci (s3rver is a devDependency)"
  command -v node >/dev/null || die "no node on PATH"
  mkdir -p "$DIR/s3rver-data"
  log "starting s3rver on ${S3_ENDPOINT}"
  # --openssl-legacy-provider: s3rver encrypts ListObjectsV2 continuation tokens with DES, which
  # OpenSSL 3 (Node 17+) only offers through its legacy provider; without it every truncated
  # listing (pagination) is an HTTP 500.
  setsid node --openssl-legacy-provider "$S3RVER_JS" --directory "$DIR/s3rver-data" --address 127.0.0.1 --port "$S3_PORT" --silent \
    </dev/null >"$logf" 2>&1 9>&- &
  pid=$!
  printf '%s\n' "$pid" >"$pidfile"
  wait_until_up s3rver "$pid" "$logf" "${S3_ENDPOINT}/" s3_answers
}

# ---------------------------------------------------------------------------------------------
# busybox base image, imported locally and pushed to the registry
# ---------------------------------------------------------------------------------------------
registry_digest() { # repo tag -> digest of the manifest the registry holds under the tag
  curl -fsS --max-time 5 -o /dev/null -D - \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://${REGISTRY}/v2/$1/manifests/$2" 2>/dev/null |
    tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p'
}

build_image() {
  local repo="${LOCAL_IMAGE%:*}" tag="${LOCAL_IMAGE##*:}" digest
  if docker_cli image inspect "$LOCAL_IMAGE" >/dev/null 2>&1; then
    log "image $LOCAL_IMAGE present, not rebuilding it"
  elif [[ -n "$(registry_digest "$repo" "$tag" || true)" ]] &&
    docker_cli pull -q "$IMAGE" >"$DIR/pull.log" 2>&1 &&
    docker_cli tag "$IMAGE" "$LOCAL_IMAGE"; then
    # Keeps the image (and its digest) stable across runs when only the local copy was removed.
    log "image $LOCAL_IMAGE pulled back from the registry"
  else
    local busybox=/bin/busybox rootfs="$DIR/rootfs" applet
    [[ -x "$busybox" ]] || die "$busybox is missing (install busybox-static)"
    if ldd "$busybox" >/dev/null 2>&1; then
      die "$busybox is dynamically linked: install busybox-static (apt-get install -y busybox-static)"
    fi
    log "building $LOCAL_IMAGE from $busybox"
    rm -rf "$rootfs"
    mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,proc,sys,dev,var/tmp}
    chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
    chmod 700 "$rootfs/root"
    cp "$busybox" "$rootfs/bin/busybox"
    while read -r applet; do
      [[ -n "$applet" && "$applet" != busybox && "$applet" != */* ]] || continue
      ln -sf busybox "$rootfs/bin/$applet"
    done < <("$busybox" --list)
    # For "#!/usr/bin/env sh" scripts.
    ln -sf ../../bin/busybox "$rootfs/usr/bin/env"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
      >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
    tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -c . |
      docker_cli import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["/bin/sh"]' \
        -m 'det-test busybox base image (test/env/setup.sh)' \
        - "$LOCAL_IMAGE" >/dev/null
    rm -rf "$rootfs"
    log "imported $LOCAL_IMAGE"
  fi

  docker_cli tag "$LOCAL_IMAGE" "$IMAGE"
  # Skip the push when the registry already holds exactly this image under the tag.
  digest="$(registry_digest "$repo" "$tag")" || digest=""
  if [[ -n "$digest" ]] &&
    docker_cli image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$IMAGE" 2>/dev/null |
    grep -qxF "${REGISTRY}/${repo}@${digest}"; then
    log "registry already has $IMAGE"
  else
    log "pushing $IMAGE"
    if ! docker_cli push "$IMAGE" >"$DIR/push.log" 2>&1; then
      tail_log "$DIR/push.log"
      tail_log "$DIR/registry.log" 10
      die "docker push $IMAGE failed"
    fi
    log "pushed $IMAGE"
  fi
}

# Containers left by an earlier run that was killed before its teardown.
remove_stale_containers() {
  local ids
  [[ -z "$OTHER_USERS" ]] || return 0
  ids="$(docker_cli ps -aq --filter label=ai.det.test 2>/dev/null || true)"
  if [[ -n "$ids" ]]; then
    log "removing $(wc -w <<<"$ids") stale test container(s)"
    # shellcheck disable=SC2086 # one id per word
    docker_cli rm -f -v $ids >/dev/null 2>&1 || true
  fi
}

# ---------------------------------------------------------------------------------------------
# Local AMI bake (test/e2e/ami-bake.test.ts): a Debian minbase image with systemd (the stand-in for
# a stock cloud image) and a flat apt repository holding the packages packer/scripts install, both
# downloaded once from the mirror this machine's apt sources name and cached under CACHE_DIR. The
# test serves the repository on 127.0.0.1; nothing in the test reaches further.
# ---------------------------------------------------------------------------------------------
CACHE_DIR="${DET_TEST_CACHE_DIR:-/var/cache/det-test}"
# Bump when the way the cache is built changes (the key includes it).
BAKE_RECIPE=1
BAKE_INCLUDE=systemd,systemd-sysv
BAKE_IMAGE_REPO=det-test/bake-base

# The first repository URI of this machine's apt sources for SUITE's main component.
apt_mirror() {
  # shellcheck disable=SC2016 # apt's format fields, not shell
  apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Created-By: Packages' 2>/dev/null |
    awk -v s="$1" '$2 == s && $3 == "main" { print $1; exit }'
}

# build_bake_cache DIR SUITE ARCH MIRROR PACKAGES...: DIR/rootfs.tar and DIR/apt-repo/. Every step
# is checked explicitly: callers run this in an `if` (where set -e does not apply).
build_bake_cache() {
  local dir=$1 suite=$2 arch=$3 mirror=$4 rootfs
  shift 4
  rootfs="$dir/rootfs"
  log "debootstrap --variant=minbase $suite ($arch) from $mirror (a few minutes, once)"
  timeout 1800 debootstrap --variant=minbase --include="$BAKE_INCLUDE" --arch "$arch" "$suite" "$rootfs" "$mirror" \
    >"$dir/debootstrap.log" 2>&1 || {
    tail_log "$dir/debootstrap.log"
    return 1
  }
  log "downloading $* and their dependencies into a local apt repository"
  cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf" || return 1
  # debootstrap leaves the base system's .debs in apt's cache: the repository gets only the rest.
  {
    chroot "$rootfs" apt-get clean &&
      timeout 900 chroot "$rootfs" apt-get -q update &&
      timeout 900 chroot "$rootfs" apt-get -q install -y --download-only --no-install-recommends "$@"
  } >"$dir/download.log" 2>&1 || {
    tail_log "$dir/download.log"
    return 1
  }
  mkdir -p "$dir/apt-repo" &&
    mv "$rootfs"/var/cache/apt/archives/*.deb "$dir/apt-repo/" &&
    (cd "$dir/apt-repo" && dpkg-scanpackages --multiversion . /dev/null >Packages 2>"$dir/scan.log" && gzip -9kf Packages) ||
    return 1
  chroot "$rootfs" apt-get clean &&
    rm -rf "$rootfs"/var/lib/apt/lists/* &&
    : >"$rootfs/etc/resolv.conf" &&
    tar --numeric-owner -C "$rootfs" -cf "$dir/rootfs.tar" . &&
    rm -rf "$rootfs"
}

# Prepares (or finds cached) the bake base and repository; on success writes $DIR/bake-env.sh.
prepare_bake_inner() {
  local suite arch mirror key packages=() base dir tag
  rm -f "$DIR/bake-env.sh"
  ((EUID == 0)) || { printf 'the local bake cache needs root (debootstrap, chroot)\n'; return 1; }
  # shellcheck source=/dev/null
  suite="$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")"
  [[ -n "$suite" ]] || { printf 'no VERSION_CODENAME in /etc/os-release\n'; return 1; }
  arch="$(dpkg --print-architecture)"
  mapfile -t packages < <(bash "$REPO_ROOT/packer/scripts/install-docker.sh" --list-packages)
  ((${#packages[@]})) || { printf 'packer/scripts/install-docker.sh --list-packages printed nothing\n'; return 1; }
  key="$(printf 'recipe=%s suite=%s arch=%s include=%s packages=%s\n' "$BAKE_RECIPE" "$suite" "$arch" "$BAKE_INCLUDE" "${packages[*]}" |
    sha256sum | cut -c1-16)"
  base="$CACHE_DIR/bake"
  dir="$base/$suite-$arch-$key"
  mkdir -p "$base"
  exec 8>"$base/.lock"
  flock -w 3600 8 || { printf 'another setup holds %s/.lock\n' "$base"; return 1; }
  # Half-built caches of setups that were killed.
  rm -rf "$base"/.build-*
  if [[ -f "$dir/rootfs.tar" && -s "$dir/apt-repo/Packages" ]]; then
    log "bake base and apt repository cached in $dir"
  else
    mirror="$(apt_mirror "$suite")"
    [[ -n "$mirror" ]] || { printf 'no apt source for %s main in the apt sources of this machine (apt-get indextargets)\n' "$suite"; return 1; }
    local tmp="$base/.build-$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if ! build_bake_cache "$tmp" "$suite" "$arch" "$mirror" "${packages[@]}"; then
      mv "$tmp"/*.log "$DIR/" 2>/dev/null || true
      rm -rf "$tmp"
      printf 'building the bake cache failed (logs in %s)\n' "$DIR"
      return 1
    fi
    # Older caches of this suite are of no more use.
    find "$base" -mindepth 1 -maxdepth 1 -type d -name "$suite-$arch-*" -exec rm -rf {} +
    mv "$tmp" "$dir" || { printf 'cannot move %s to %s\n' "$tmp" "$dir"; return 1; }
    log "bake cache ready in $dir"
  fi
  tag="$BAKE_IMAGE_REPO:$suite-$key"
  if docker_cli image inspect "$tag" >/dev/null 2>&1; then
    log "image $tag present"
  else
    log "importing $tag"
    docker_cli import -c 'CMD ["/bin/bash"]' -m "det-test bake base ($suite minbase + $BAKE_INCLUDE; test/env/setup.sh)" \
      "$dir/rootfs.tar" "$tag" >/dev/null || { printf 'docker import of %s failed\n' "$dir/rootfs.tar"; return 1; }
    # Bases of older caches.
    docker_cli image ls --format '{{.Repository}}:{{.Tag}}' "$BAKE_IMAGE_REPO" | grep -vxF "$tag" |
      xargs -r docker -H "unix://$DOCKER_SOCK" rmi >/dev/null 2>&1 || true
  fi
  {
    printf 'export DET_TEST_BAKE_BASE_IMAGE=%q\n' "$tag"
    printf 'export DET_TEST_BAKE_APT_REPO=%q\n' "$dir/apt-repo"
  } >"$DIR/bake-env.sh"
}

# A failure does not stop the other suites: the bake test fails with DET_TEST_BAKE_ERROR instead.
prepare_bake() {
  local out
  rm -f "$DIR/bake-error"
  if ! out="$(prepare_bake_inner)"; then
    printf '%s\n' "${out:-preparing the local bake failed}" >"$DIR/bake-error"
    log "WARNING: local bake not prepared: $(cat "$DIR/bake-error")"
  fi
}

write_env() {
  local tmp="$DIR/env.sh.tmp"
  {
    printf '# Written by test/env/setup.sh; source it to reach the test services.\n'
    printf 'export DET_TESTENV_DIR=%q\n' "$DIR"
    printf 'export DOCKER_HOST=%q\n' "unix://$DOCKER_SOCK"
    printf 'export DET_TEST_DOCKER_SOCKET=%q\n' "$DOCKER_SOCK"
    printf 'export DET_TEST_REGISTRY=%q\n' "$REGISTRY"
    printf 'export DET_TEST_IMAGE=%q\n' "$IMAGE"
    printf 'export DET_TEST_LOCAL_IMAGE=%q\n' "$LOCAL_IMAGE"
    printf 'export DET_TEST_PG_URL=%q\n' "$PG_URL"
    printf 'export DET_TEST_S3_ENDPOINT=%q\n' "$S3_ENDPOINT"
    if [[ -f "$DIR/bake-env.sh" ]]; then cat "$DIR/bake-env.sh"; fi
    if [[ -f "$DIR/bake-error" ]]; then printf 'export DET_TEST_BAKE_ERROR=%q\n' "$(cat "$DIR/bake-error")"; fi
  } >"$tmp"
  mv -f "$tmp" "$DIR/env.sh"
}

main() {
  case "${1:-}" in
    --install-only)
      install_packages
      return 0
      ;;
    "") ;;
    *) die "unknown argument: $1 (usage: setup.sh [--install-only])" ;;
  esac

  install_packages

  [[ "$DIR" == /* && "$DIR" != *[[:space:]]* ]] || die "DET_TESTENV_DIR must be an absolute path without spaces: $DIR"
  # Unix socket paths (containerd's ttrpc socket is the longest below DIR) are limited to 107 bytes.
  ((${#DIR} <= 60)) || die "DET_TESTENV_DIR is too long for unix sockets (${#DIR} > 60 characters): $DIR"
  mkdir -p "$DIR"
  chmod 755 "$DIR"
  # One setup or teardown at a time per state dir.
  exec 9>"$DIR/.lock"
  flock -w 300 9 || die "another setup/teardown holds $DIR/.lock"
  OTHER_USERS="$(other_users "${DET_TESTENV_USER:-}" | paste -sd ' ' -)"

  start_dockerd
  start_registry
  start_postgres
  start_s3
  remove_stale_containers
  build_image
  prepare_bake
  write_env
  # with-testenv.sh passes its pid, so that teardown knows when the last run is done.
  if [[ -n "${DET_TESTENV_USER:-}" ]]; then register_user "$DET_TESTENV_USER"; fi
  log "ready: source $DIR/env.sh"
}

# teardown.sh sources this file for its helpers.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
