#!/usr/bin/env bash
# Boots the Kloudak test guest once under libvirt and checks it works end to end.
#
#   bash scripts/guest/selftest.sh [--no-seed] [--pvh] [--console] [OUTDIR]
#
# 1. builds (or reuses) the guest with scripts/build-test-guest.sh [OUTDIR];
# 2. makes a NoCloud seed ISO (volume `cidata`: meta-data, network-config, user-data) and a
#    qcow2 overlay of template.qcow2 in a temporary directory;
# 3. starts a transient domain (TCG: <domain type='qemu'>, 1 vCPU, 256 MiB, direct kernel boot,
#    vda = overlay, vdb = seed, one virtio NIC on QEMU user networking, serial console to a
#    file) and waits (up to $KLOUDAK_SELFTEST_TIMEOUT s, default 60) for the KLOUDAK-READY
#    line, which must show the seed's instance-id, hostname and address;
# 4. forwards a host loopback port to the guest's port 80 (QEMU user networking, HMP
#    hostfwd_add) and checks / serves the instance-id and /hostname the hostname;
# 5. presses the ACPI power button (virsh shutdown) and checks the guest powers off;
# 6. removes the domain and every temporary file, also on failure.
# --no-seed boots without the seed disk and only checks `KLOUDAK-READY instance-id=none`.
# --pvh boots OUTDIR/vmlinux (uncompressed, PVH entry) instead of OUTDIR/vmlinuz: ~2.5 s faster.
# --console prints the guest's serial console log at the end (it is always printed on failure).
#
# The guest only talks to QEMU's built-in user network stack (10.0.2.0/24); nothing leaves the
# host. Needs root (or a user allowed on qemu:///system) and libvirtd (started if down).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

URI=qemu:///system
TIMEOUT="${KLOUDAK_SELFTEST_TIMEOUT:-60}"
MAC=52:54:00:12:34:56
GUEST_IP=10.0.2.15 # inside QEMU's user network, so hostfwd can reach it

seed=1
kernel=vmlinuz
show_console=0
outdir=""
for arg in "$@"; do
  case "$arg" in
    --no-seed) seed=0 ;;
    --pvh) kernel=vmlinux ;;
    --console) show_console=1 ;;
    -h | --help)
      sed -n '2,22p' "$0"
      exit 0
      ;;
    -*) die "unknown option: $arg" ;;
    *) outdir="$arg" ;;
  esac
done
OUTDIR="${outdir:-${KLOUDAK_TEST_GUEST_DIR:-$KLOUDAK_ROOT/.cache/test-guest}}"
case "$OUTDIR" in /*) ;; *) OUTDIR="$PWD/$OUTDIR" ;; esac

virsh_() { virsh -q -c "$URI" "$@"; }
now_ms() { date +%s%3N; }

bash "$KLOUDAK_ROOT/scripts/build-test-guest.sh" "$OUTDIR"
ensure_libvirt
[ -f "$OUTDIR/$kernel" ] || die "$OUTDIR/$kernel does not exist (see scripts/build-test-guest.sh)"
command -v genisoimage >/dev/null 2>&1 || apt_install genisoimage

suffix="$$-$RANDOM"
NAME="kloudak-selftest-$suffix"
IID="i-selftest-$suffix"
HOST="kloudak-selftest"
WORK="$(mktemp -d /tmp/kloudak-selftest.XXXXXX)"
chmod 0755 "$WORK" # QEMU runs as libvirt-qemu: it must reach the files in here

cleanup() {
  local rc=$?
  if virsh_ domstate "$NAME" >/dev/null 2>&1; then
    virsh_ destroy "$NAME" >/dev/null 2>&1 || true
  fi
  if { [ "$rc" -ne 0 ] || [ "$show_console" = 1 ]; } && [ -f "$WORK/console.log" ]; then
    log "console log:"
    sed 's/^/    | /' "$WORK/console.log" >&2 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

# --- seed and overlay -------------------------------------------------------------------------
seed_disk=""
if [ "$seed" = 1 ]; then
  mkdir "$WORK/seed"
  printf 'instance-id: %s\nlocal-hostname: %s\n' "$IID" "$HOST" >"$WORK/seed/meta-data"
  cat >"$WORK/seed/network-config" <<EOF
version: 2
ethernets:
  nic0:
    match: { macaddress: "$MAC" }
    set-name: eth0
    addresses: [$GUEST_IP/24]
    gateway4: 10.0.2.2
    nameservers: { addresses: [10.0.2.3] }
EOF
  printf '#cloud-config\n' >"$WORK/seed/user-data"
  (cd "$WORK/seed" && genisoimage -quiet -output "$WORK/seed.iso" -volid cidata -joliet -rock \
    meta-data network-config user-data)
  chmod 0644 "$WORK/seed.iso"
  seed_disk="
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$WORK/seed.iso'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>"
fi
qemu-img create -q -f qcow2 -F qcow2 -b "$OUTDIR/template.qcow2" "$WORK/overlay.qcow2"
chmod 0644 "$WORK/overlay.qcow2"

cat >"$WORK/domain.xml" <<EOF
<domain type='qemu'>
  <name>$NAME</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$OUTDIR/$kernel</kernel>
    <initrd>$OUTDIR/initrd.img</initrd>
    <cmdline>$(cat "$OUTDIR/cmdline")</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$WORK/overlay.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>$seed_disk
    <interface type='user'>
      <mac address='$MAC'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='$WORK/console.log'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='$WORK/console.log'/>
      <target type='serial' port='0'/>
    </console>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF

# --- boot -----------------------------------------------------------------------------------
t0="$(now_ms)"
virsh_ create "$WORK/domain.xml" >/dev/null
t_created="$(now_ms)"
ready=""
deadline=$((t0 + TIMEOUT * 1000))
n=0
while [ -z "$ready" ]; do
  ready="$(grep -a -m1 'KLOUDAK-READY' "$WORK/console.log" 2>/dev/null | tr -d '\r')" || true
  [ -n "$ready" ] && break
  [ "$(now_ms)" -lt "$deadline" ] || die "no KLOUDAK-READY line within ${TIMEOUT}s"
  n=$((n + 1))
  if [ $((n % 10)) -eq 0 ] && ! virsh_ domstate "$NAME" >/dev/null 2>&1; then
    die "the domain stopped before printing KLOUDAK-READY"
  fi
  sleep 0.1
done
t_ready="$(now_ms)"
boot_ms=$((t_ready - t0))
log "ready line: $ready"
log "boot time: $((boot_ms / 1000)).$(printf '%03d' $((boot_ms % 1000))) s from virsh create to the" \
  "ready line (kernel: $kernel; virsh create itself took $((t_created - t0)) ms)"

count="$(grep -a -c 'KLOUDAK-READY' "$WORK/console.log")"
[ "$count" = 1 ] || die "expected exactly one KLOUDAK-READY line, got $count"
if grep -a -q 'kloudak-init:\|KLOUDAK-ERROR' "$WORK/console.log"; then
  log "guest warnings:"
  grep -a 'kloudak-init:\|KLOUDAK-ERROR' "$WORK/console.log" | sed 's/^/    | /' >&2
fi

if [ "$seed" = 0 ]; then
  [ "$ready" = "KLOUDAK-READY instance-id=none hostname=localhost ip=none" ] \
    || die "unexpected ready line without a seed: $ready"
  log "OK (no seed)"
  exit 0
fi

expected="KLOUDAK-READY instance-id=$IID hostname=$HOST ip=$GUEST_IP"
[ "$ready" = "$expected" ] || die "unexpected ready line; want: $expected"

# --- HTTP through a host loopback forward -------------------------------------------------------
# http_get PORT PATH — body of the response (HTTP/1.0 over bash's /dev/tcp; no curl needed).
http_get() {
  # shellcheck disable=SC2016 # $1/$2 expand in the inner bash, on purpose
  timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; printf "GET %s HTTP/1.0\r\n\r\n" "$2" >&3; cat <&3' \
    _ "$1" "$2" | tr -d '\r' | sed '1,/^$/d'
}
# The id of the user-mode netdev (libvirt calls it hostnet0); `info network` shows it as
#   net0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56
#    \ hostnet0: index=0,type=user,net=10.0.2.0,restrict=off
# Captured first: under pipefail, `virsh … | … | head -n1` fails when head exits before the rest.
netinfo="$(virsh_ qemu-monitor-command "$NAME" --hmp 'info network')"
netdev="$(sed -n 's/\r$//; /: .*type=user/{s/^[[:space:]\\]*\([^:[:space:]]*\): .*/\1/p;q}' <<<"$netinfo")"
netdev="${netdev:-hostnet0}"
port=""
for _ in 1 2 3 4 5; do
  p=$((20000 + RANDOM % 20000))
  out="$(virsh_ qemu-monitor-command "$NAME" --hmp "hostfwd_add $netdev tcp:127.0.0.1:$p-$GUEST_IP:80" 2>&1)"
  if [ -z "$(echo "$out" | tr -d '[:space:]')" ]; then
    port=$p
    break
  fi
  log "hostfwd_add on port $p: $out"
done
[ -n "$port" ] || die "could not forward a host port to the guest"
body="$(http_get "$port" /)"
[ "$body" = "$IID" ] || die "GET / returned '$body', want '$IID'"
body="$(http_get "$port" /hostname)"
[ "$body" = "$HOST" ] || die "GET /hostname returned '$body', want '$HOST'"
log "HTTP OK: / -> $IID, /hostname -> $HOST (via 127.0.0.1:$port)"

# --- ACPI shutdown ------------------------------------------------------------------------------
t_shut="$(now_ms)"
virsh_ shutdown "$NAME" >/dev/null
while virsh_ domstate "$NAME" >/dev/null 2>&1; do
  [ $(($(now_ms) - t_shut)) -lt 20000 ] || die "the guest ignored the ACPI power button for 20 s"
  sleep 0.2
done
log "ACPI shutdown OK: powered off in $(($(now_ms) - t_shut)) ms"
log "OK"
