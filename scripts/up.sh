#!/usr/bin/env bash
# Bring Kloudak up (`npm start`): install what is missing, build, start the orchestrator on its
# embedded database and a local agent enrolled into it, print where to go, and run until Ctrl-C
# (or SIGTERM), which stops both. Extra arguments go to `orchestrator serve`.
#
# The orchestrator stores everything under KLOUDAK_DATA_DIR (default ./data): PGlite (PostgreSQL
# in-process), its keys and its CA. It needs NATS, which this script starts (apt-installed when
# missing) unless NATS_URL points elsewhere. On first start it creates the admin from
# KLOUDAK_ADMIN_USER / KLOUDAK_ADMIN_PASSWORD; unless you set those, this script uses user "admin"
# with a random password kept in <data dir>/admin-password (mode 600), never printed.
#
# The local host (KLOUDAK_UP_HOST):
#   auto (default)  qemu where libvirtd with QEMU and Open vSwitch run (installed and started
#                   when missing, as root), else simulated where libvirtd at least answers, else
#                   none, with the reason
#   qemu            the real thing: libvirt's QEMU driver (KVM when /dev/kvm is usable, plain
#                   emulation otherwise), a dir pool "kloudak-local" holding the test guest's
#                   image, Open vSwitch bridge br-vm (kernel datapath when the openvswitch
#                   module loads, userspace netdev otherwise)
#   simulated       libvirt's test driver: a host that exists only in libvirtd's memory; its VMs
#                   are not real machines. Labelled SIMULATED everywhere it is shown
#   none            no local agent
# The agent's identity (key, certificate) lives in <data dir>/agent (or agent-sim), so the next
# start reuses it instead of enrolling again.
#
# Environment besides the orchestrator's own (README, "Configuration"):
#   KLOUDAK_UP_HOST_DIR   qemu host's files: pool, test guest, console logs
#                         (default /var/lib/kloudak/local-host; must be searchable by libvirt-qemu)
#   KLOUDAK_UP_POOL       libvirt pool name of the qemu host (default kloudak-local)
#   KLOUDAK_UP_SKIP_BUILD=1   skip npm ci and the build (the tests, which have just built)
#   KLOUDAK_AGENT_*       passed to the local agent (e.g. KLOUDAK_AGENT_BRIDGE, _HOSTNAME)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# The orchestrator resolves ./data relative to its working directory: always the repo root.
cd "$KLOUDAK_ROOT"

export TURBO_TELEMETRY_DISABLED=1 TURBO_NO_UPDATE_NOTIFIER=1
# Node.js >= 22 first on PATH (fetches Node 24 into .cache/node when the system one is older).
ensure_node

if [ "${KLOUDAK_UP_SKIP_BUILD:-}" != 1 ]; then
  ensure_node_deps
  log "building (turbo run gen build)"
  npx --no -- turbo run gen build --log-order=grouped
fi

# The orchestrator publishes events on NATS and will not start without it.
if [ -z "${NATS_URL:-}" ]; then
  ensure_nats
  export NATS_URL="nats://$NATS_HOST:$NATS_PORT"
fi

data_dir="${KLOUDAK_DATA_DIR:-./data}"
# umask in a subshell: the data dir (database, keys, CA) is private from the start.
(umask 077 && mkdir -p "$data_dir")
data_dir="$(cd "$data_dir" && pwd)"
export KLOUDAK_DATA_DIR="$data_dir"

if [ -z "${KLOUDAK_ADMIN_USER:-}" ]; then
  export KLOUDAK_ADMIN_USER=admin
  if [ -z "${KLOUDAK_ADMIN_PASSWORD:-}" ]; then
    pw_file="$data_dir/admin-password"
    if [ ! -f "$pw_file" ]; then
      (
        umask 077
        if command -v openssl >/dev/null 2>&1; then
          openssl rand -base64 24 >"$pw_file"
        else
          node -e 'process.stdout.write(require("node:crypto").randomBytes(24).toString("base64") + "\n")' >"$pw_file"
        fi
      )
      chmod 600 "$pw_file"
      log "generated the first admin password"
    fi
    KLOUDAK_ADMIN_PASSWORD="$(head -n 1 "$pw_file")"
    [ -n "$KLOUDAK_ADMIN_PASSWORD" ] || die "$pw_file is empty; delete it to generate a new password"
    export KLOUDAK_ADMIN_PASSWORD
  fi
fi

http_host="${KLOUDAK_HOST:-127.0.0.1}"
http_port="${KLOUDAK_PORT:-8080}"
agent_port="${KLOUDAK_AGENT_PORT:-8443}"
export KLOUDAK_AGENT_PORT="$agent_port"
case "$http_host" in 0.0.0.0 | ::) url_host=127.0.0.1 ;; *) url_host="$http_host" ;; esac
base_url="http://$url_host:$http_port"

# ---------- the local host ----------

host_dir="${KLOUDAK_UP_HOST_DIR:-/var/lib/kloudak/local-host}"
pool_name="${KLOUDAK_UP_POOL:-kloudak-local}"
image=kloudak-test-guest.qcow2
# Host names follow the agent's rule: letters, digits, dots and dashes.
machine_name="$(hostname 2>/dev/null | tr -c 'A-Za-z0-9.\n-' '-' | sed 's/^[-.]*//')"
machine_name="${machine_name:-localhost}"

# qemu_usable — libvirtd answers for QEMU, Open vSwitch runs, and the test guest can be built.
# Each ensure step runs in a subshell: it exits on failure, which here only means "not usable".
qemu_usable() {
  (ensure_libvirt) || { why="libvirtd with the QEMU driver could not be installed or started"; return 1; }
  (ensure_ovs) || { why="Open vSwitch could not be installed or started"; return 1; }
  virsh -c qemu:///system domcapabilities --virttype qemu >/dev/null 2>&1 || { why="libvirt's QEMU driver cannot run guests here"; return 1; }
  guest_dir="${KLOUDAK_TEST_GUEST_DIR:-$host_dir/test-guest}"
  (as_root mkdir -p "$host_dir" && as_root chmod 755 "$host_dir") || { why="cannot create $host_dir"; return 1; }
  bash "$KLOUDAK_ROOT/scripts/build-test-guest.sh" "$guest_dir" >&2 || { why="the test guest could not be built"; return 1; }
}

# simulated_usable — libvirtd answers (the test driver is opened through it) and OVS runs.
simulated_usable() {
  virsh -c test+unix:///default version >/dev/null 2>&1 || { why="libvirtd is not running and could not be started (not root?)"; return 1; }
  ovs_ready || { why="Open vSwitch is not running and could not be started (not root?)"; return 1; }
}

# setup_qemu_host — the pool with the test guest's image, and the agent's settings.
setup_qemu_host() {
  local pool_dir="$host_dir/pool"
  mkdir -p "$pool_dir" "$host_dir/console"
  chmod 755 "$pool_dir" "$host_dir/console"
  if ! virsh -q -c qemu:///system pool-info "$pool_name" >/dev/null 2>&1; then
    virsh -q -c qemu:///system pool-define-as "$pool_name" dir --target "$pool_dir" >/dev/null
    virsh -q -c qemu:///system pool-autostart "$pool_name" >/dev/null
    log "defined the libvirt pool $pool_name at $pool_dir"
  fi
  # Capture, then match: `virsh … | grep -q` under pipefail fails whenever grep exits at its
  # match before virsh has written everything (virsh dies of SIGPIPE, the pipeline counts as
  # failed) — which made a second `npm start` try to start the running pool most of the time.
  local info xml
  info="$(virsh -q -c qemu:///system pool-info "$pool_name")"
  if ! [[ "$info" =~ (^|$'\n')State:[[:space:]]+running ]]; then
    virsh -q -c qemu:///system pool-start "$pool_name" >/dev/null
  fi
  xml="$(virsh -q -c qemu:///system pool-dumpxml "$pool_name")"
  pool_dir="$(sed -n 's:.*<path>\(.*\)</path>.*:\1:p;T;q' <<<"$xml")"
  # Overlays of existing VMs name this file as their backing file: never replace it under them.
  if [ ! -f "$pool_dir/$image" ]; then
    install -m 644 "$guest_dir/template.qcow2" "$pool_dir/$image"
    log "copied the test guest's image into $pool_name as $image"
  elif ! cmp -s "$guest_dir/template.qcow2" "$pool_dir/$image"; then
    log "the test guest was rebuilt; keeping the image already in $pool_name (VMs may be based on it)"
  fi
  virsh -q -c qemu:///system pool-refresh "$pool_name" >/dev/null
  # The guest boots its kernel directly: keep kernel, initrd and command line beside the pool.
  mkdir -p "$host_dir/boot"
  for f in vmlinuz initrd.img cmdline; do install -m 644 "$guest_dir/$f" "$host_dir/boot/$f"; done

  local domain_type=qemu datapath=netdev offload=off
  # libvirt accepts any /dev/kvm, but only hardware virtualisation (kvm_intel, kvm_amd) runs an
  # ordinary guest kernel: e.g. a PVM host's /dev/kvm (kvm_pvm) aborts on `-cpu host`.
  if [ -r /dev/kvm ] && [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; } \
    && virsh -c qemu:///system domcapabilities --virttype kvm >/dev/null 2>&1; then
    domain_type=kvm
  fi
  # The kernel datapath needs the openvswitch module; only probe for it when not told.
  if [ -z "${KLOUDAK_AGENT_OVS_DATAPATH:-}" ] && { [ -d /sys/module/openvswitch ] || as_root modprobe openvswitch >/dev/null 2>&1; }; then
    datapath=system
    offload=on
  fi
  agent_dir="$data_dir/agent"
  agent_host_name="${KLOUDAK_AGENT_HOSTNAME:-$machine_name}"
  agent_env=(
    KLOUDAK_AGENT_LIBVIRT_URI=qemu:///system
    KLOUDAK_AGENT_DOMAIN_TYPE="${KLOUDAK_AGENT_DOMAIN_TYPE:-$domain_type}"
    KLOUDAK_AGENT_OVS_DATAPATH="${KLOUDAK_AGENT_OVS_DATAPATH:-$datapath}"
    KLOUDAK_AGENT_NIC_OFFLOAD="${KLOUDAK_AGENT_NIC_OFFLOAD:-$offload}"
    KLOUDAK_AGENT_CONSOLE_DIR="${KLOUDAK_AGENT_CONSOLE_DIR:-$host_dir/console}"
  )
  up_pool_path="$pool_dir"
  # The template test-guest boots these directly (the image has no bootloader).
  up_boot_dir="$host_dir/boot"
  # Not `$([ … ] && printf …)` inside the assignment: with KVM its status is 1, the function's
  # last status, and set -e ended the script there.
  local emulated=""
  [ "$domain_type" = kvm ] || emulated=" (no usable KVM: guests are emulated, slowly)"
  host_label="qemu host — libvirt $domain_type driver$emulated, OVS $datapath datapath, pool $pool_name ($pool_dir)"
}

# setup_simulated_host — a test-driver node file; each agent connection to it is a fresh host.
setup_simulated_host() {
  local sim_dir="$data_dir/local-host-sim"
  mkdir -p "$sim_dir/console"
  local uri
  uri="$(SIM_DIR="$sim_dir" SIM_POOL="$pool_name" SIM_IMAGE="$image" node --input-type=module -e '
    import { createSimHost } from "@kloudak/agent/testing";
    const e = process.env;
    const h = createSimHost({ dir: e.SIM_DIR, cpus: 8, memoryMb: 16384, poolName: e.SIM_POOL, templateVolume: e.SIM_IMAGE });
    process.stdout.write(h.uri);
  ')"
  agent_dir="$data_dir/agent-sim"
  agent_host_name="${KLOUDAK_AGENT_HOSTNAME:-$machine_name-sim}"
  agent_env=(
    KLOUDAK_AGENT_LIBVIRT_URI="$uri"
    KLOUDAK_AGENT_DOMAIN_TYPE=qemu
    KLOUDAK_AGENT_OVS_DATAPATH=netdev
    KLOUDAK_AGENT_NIC_OFFLOAD=off
    KLOUDAK_AGENT_CONSOLE_DIR="$sim_dir/console"
  )
  up_pool_path="$sim_dir/pool"
  up_boot_dir=""
  host_label="SIMULATED host — libvirt's test driver ($uri): its VMs are not real machines"
}

mode="${KLOUDAK_UP_HOST:-auto}"
why=""
case "$mode" in
  auto)
    if qemu_usable; then
      mode=qemu
    else
      log "no qemu host: $why"
      if simulated_usable; then mode=simulated; else mode=none; fi
    fi
    ;;
  qemu) qemu_usable || die "KLOUDAK_UP_HOST=qemu: $why" ;;
  simulated)
    if ! simulated_usable; then
      (ensure_libvirt && ensure_ovs) || true
      simulated_usable || die "KLOUDAK_UP_HOST=simulated: $why"
    fi
    ;;
  none) why="KLOUDAK_UP_HOST=none" ;;
  *) die "KLOUDAK_UP_HOST must be auto, qemu, simulated or none, not '$mode'" ;;
esac
agent_env=()
agent_dir=""
agent_host_name=""
host_label="none ($why)"
case "$mode" in
  qemu) setup_qemu_host ;;
  simulated) setup_simulated_host ;;
esac

# ---------- processes ----------

# The lifeline: a pipe whose write end only this script holds. The orchestrator and the agent run
# in their own sessions (so a Ctrl-C reaches only this script, which stops them in order) and watch
# its read end (KLOUDAK_LIFELINE_FD, KLOUDAK_AGENT_LIFELINE_FD). When this script ends, however it
# ends (a supervisor's SIGKILL included), the kernel closes the write end: they read end-of-file
# and stop as on SIGTERM instead of holding their ports forever. Bash cannot make an anonymous
# pipe, so: a FIFO in a private directory, opened at both ends, then unlinked. The write end is
# opened read-write (which never blocks) and must reach no other process that outlives this one:
# every child below gets `{lifeline_w}>&-`. Opened only now: NATS, libvirtd and Open vSwitch,
# which the steps above may have started, never saw it.
lifeline_dir="$(mktemp -d)"
mkfifo -m 600 "$lifeline_dir/lifeline"
exec {lifeline_w}<>"$lifeline_dir/lifeline"
exec {lifeline_r}<"$lifeline_dir/lifeline"
rm -rf "$lifeline_dir"

orch_pid=""
agent_pid=""
stop_all() {
  # Further INT/TERM are ignored while the children stop in order: `npm start` forwards the
  # terminal's Ctrl-C (or a supervisor's SIGTERM) that reached its whole group, so this script
  # gets each signal twice. The lifeline still stops the children if this script is killed.
  trap - EXIT
  trap '' INT TERM
  # The agent first: it finishes its running commands while the orchestrator can still hear them.
  local p
  for p in "$agent_pid" "$orch_pid"; do
    [ -n "$p" ] || continue
    kill -TERM "$p" 2>/dev/null || continue
    # Both drain within their own timeouts (30 s by default); then they are killed.
    for _ in $(seq 1 400); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# setsid: Ctrl-C reaches this script only, which then stops each child once, in order.
KLOUDAK_LIFELINE_FD="$lifeline_r" setsid node orchestrator/dist/main.js serve "$@" {lifeline_w}>&- &
orch_pid=$!

if [ "$mode" != none ]; then
  enrolled=0
  [ -f "$agent_dir/identity.json" ] && enrolled=1
  # The command substitution's subshell closes the write end too: it outlives a SIGKILLed script
  # for as long as up-local-host.mjs runs.
  if decision="$(exec {lifeline_w}>&-; UP_LIFELINE_FD="$lifeline_r" UP_URL="$base_url" UP_HOST_NAME="$agent_host_name" UP_AGENT_ENROLLED="$enrolled" \
      UP_POOL_NAME="$pool_name" UP_POOL_PATH="$up_pool_path" UP_TEMPLATE_IMAGE="$image" UP_BOOT_DIR="${up_boot_dir:-}" \
      exec node scripts/up-local-host.mjs)"; then
    join_token=""
    case "$decision" in
      enrolled) ;;
      "token "*) join_token="${decision#token }" ;;
      "reenroll "*)
        join_token="${decision#reenroll }"
        stale="$agent_dir.stale-$(date +%Y%m%d%H%M%S)"
        mv "$agent_dir" "$stale"
        log "the orchestrator no longer knows the local agent's identity; kept it in $stale and enrolling again"
        ;;
      *) die "unexpected answer from up-local-host.mjs" ;;
    esac
    (umask 077 && mkdir -p "$agent_dir")
    # The join token travels in the agent's environment only (not argv, never printed).
    # DEP0123: grpc-js sends the orchestrator's address (an IP here) as TLS SNI, which Node warns
    # about; the certificate is still checked against the IP, which the server certificate holds.
    env "${agent_env[@]}" KLOUDAK_AGENT_HOSTNAME="$agent_host_name" KLOUDAK_AGENT_JOIN_TOKEN="$join_token" \
      KLOUDAK_AGENT_ORCHESTRATOR="127.0.0.1:$agent_port" KLOUDAK_AGENT_DATA_DIR="$agent_dir" \
      KLOUDAK_AGENT_LOG_TARGET="${KLOUDAK_AGENT_LOG_TARGET:-stdout}" KLOUDAK_AGENT_LIFELINE_FD="$lifeline_r" \
      setsid node --disable-warning=DEP0123 agent/dist/main.js {lifeline_w}>&- &
    agent_pid=$!
  else
    kill -0 "$orch_pid" 2>/dev/null || { wait "$orch_pid" || true; die "the orchestrator exited during start (see its log above)"; }
    host_label="none (preparing the local host failed, see above)"
  fi
else
  # Still wait for readiness so the summary below is true when it is printed.
  UP_LIFELINE_FD="$lifeline_r" UP_URL="$base_url" UP_WAIT_ONLY=1 node scripts/up-local-host.mjs {lifeline_w}>&- \
    || die "the orchestrator did not become ready"
fi

cat >&2 <<EOF

  Kloudak is ready.
    API          $base_url/api/v1   (OpenAPI: $base_url/api/v1/openapi.json)
    admin        ${KLOUDAK_ADMIN_USER}$([ -n "${pw_file:-}" ] && printf ', password in %s' "$pw_file")
    agent port   $agent_port (mutual TLS; join tokens: POST /api/v1/hosts/join-tokens)
    local host   ${agent_host_name:+$agent_host_name: }$host_label
    data         $data_dir
  Ctrl-C stops it.

EOF

# Run until the orchestrator ends (or a signal); an agent that dies is reported, not fatal.
while :; do
  wait -n || true
  if ! kill -0 "$orch_pid" 2>/dev/null; then
    rc=0
    wait "$orch_pid" || rc=$?
    orch_pid=""
    log "the orchestrator exited ($rc)"
    exit "$rc"
  fi
  if [ -n "$agent_pid" ] && ! kill -0 "$agent_pid" 2>/dev/null; then
    rc=0
    wait "$agent_pid" || rc=$?
    agent_pid=""
    log "WARNING: the local agent exited ($rc); the orchestrator keeps running"
  fi
done
