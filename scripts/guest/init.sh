#!/bin/sh
# /sbin/init of the Kloudak test guest (PID 1, run by busybox sh after the initramfs
# switch_roots into the root disk; see scripts/guest/initramfs-init.sh and
# scripts/build-test-guest.sh).
#
# A stand-in for cloud-init, just enough for tests:
#   1. mounts /proc, /sys, /dev, /run;
#   2. looks for the NoCloud seed: an ISO 9660 volume labelled `cidata` on one of the other
#      virtio disks (/dev/vdb ... /dev/vdz) that holds a `meta-data` file;
#   3. reads `instance-id` and `local-hostname` from meta-data and sets the hostname;
#   4. applies network-config (version 2, `ethernets:` only, static addresses): each entry's
#      interface is found by match.macaddress (or by the entry's name when there is no match),
#      renamed to set-name, given its addresses and brought up; the default route goes via
#      gateway4/gateway6 or a `routes:` entry with `to: default`; nameservers go to
#      /etc/resolv.conf. DHCP, bonds, bridges, vlans and version 1 are not supported;
#   5. serves /www on port 80 with busybox httpd: /www/index.html holds the instance-id,
#      /www/hostname the hostname (each followed by a newline);
#   6. answers the ACPI power button (`virsh shutdown`) by powering off (busybox acpid);
#   7. prints exactly one line on the serial console (ttyS0):
#        KLOUDAK-READY instance-id=<id> hostname=<hostname> ip=<first address, no /prefix>
#      without a seed: `KLOUDAK-READY instance-id=none hostname=localhost ip=none`;
#      `ip=none` too when network-config is missing or configures no address;
#   8. then sleeps forever (the VM stays up until libvirt shuts it down or destroys it).
# Problems are reported as `kloudak-init: ...` lines on the console before the READY line;
# `kloudak.debug` on the kernel command line also prints the resulting addresses and routes.

export PATH=/sbin:/bin:/usr/sbin:/usr/bin
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
# The initramfs moves its devtmpfs here; mount one if booted some other way.
grep -q ' /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
exec </dev/console >/dev/console 2>&1

# Kernel messages could land in the middle of our console lines: emergencies only from now on.
echo 1 >/proc/sys/kernel/printk

log() { echo "kloudak-init: $*"; }

hostname localhost
ip link set lo up

# --- 2. find the seed -----------------------------------------------------------------------
SEED=""
mkdir -p /run/seed
for dev in /dev/vd[b-z]; do
  [ -b "$dev" ] || continue
  # ISO 9660 primary volume descriptor: volume identifier at byte 32808 (= 4101 * 8), 32 bytes,
  # space padded.
  label="$(dd if="$dev" bs=8 skip=4101 count=4 2>/dev/null | tr -d ' \000' | tr '[:upper:]' '[:lower:]')"
  [ "$label" = cidata ] || continue
  if mount -t iso9660 -o ro "$dev" /run/seed 2>/dev/null; then
    if [ -f /run/seed/meta-data ]; then
      SEED=/run/seed
      break
    fi
    umount /run/seed
  fi
done

# meta_get KEY — value of a top-level `KEY: value` in meta-data (YAML, or JSON on one line),
# quotes removed.
meta_get() {
  tr -d '\r' <"$SEED/meta-data" | awk -v k="$1" '
    match($0, "(^|[{,[:space:]])\"?" k "\"?[[:space:]]*:") {
      v = substr($0, RSTART + RLENGTH); sub(/^[[:space:]]+/, "", v)
      if (v ~ /^"/) { v = substr(v, 2); sub(/".*$/, "", v) }
      else if (v ~ /^\047/) { v = substr(v, 2); sub(/\047.*$/, "", v) }
      else { sub(/[[:space:]]*([,}#].*)?$/, "", v) }
      print v; exit
    }'
}

# --- 4. network-config parser ------------------------------------------------------------------
# Reads cloud-init network config version 2 (optionally under a top-level `network:` key) and
# prints one line per `ethernets:` entry:
#   ID|MAC (lower case)|SET-NAME|ADDR,ADDR...|GATEWAY|NAMESERVER,NAMESERVER...
# It understands the block style of YAML with flow-style values (`[a, b]`, `{ k: v }`) on one
# line, which is what Kloudak and most hand-written configs use; it is not a YAML parser.
# shellcheck disable=SC2016 # an awk program: its $0 etc. are awk's, not the shell's
NETCFG_AWK='
function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
# strip one level of "double" or \047single\047 quotes
function unq(s) {
  s = trim(s)
  if (length(s) >= 2 && (s ~ /^".*"$/ || s ~ /^\047.*\047$/)) s = substr(s, 2, length(s) - 2)
  return s
}
# "[a, b]" or "a" -> "a,b"
function flow(s,   n, i, parts, v, out) {
  s = trim(s); sub(/^\[/, "", s); sub(/\][ \t]*$/, "", s)
  n = split(s, parts, ",")
  out = ""
  for (i = 1; i <= n; i++) { v = unq(parts[i]); if (v != "") out = out (out == "" ? "" : ",") v }
  return out
}
function add(list, v) { v = unq(v); if (v == "") return list; return list (list == "" ? "" : ",") v }
# value of key k in s, which is "k: v" or a flow mapping "{ x: 1, k: v }"; "" when absent
function inline(s, k,   v) {
  if (!match(s, "(^|[{, \t])" k "[ \t]*:")) return ""
  v = trim(substr(s, RSTART + RLENGTH))
  if (v ~ /^\[/) { sub(/\].*$/, "]", v); return flow(v) }
  if (v ~ /^"/) { v = substr(v, 2); sub(/".*$/, "", v); return v }
  if (v ~ /^\047/) { v = substr(v, 2); sub(/\047.*$/, "", v); return v }
  sub(/[,}].*$/, "", v)
  return unq(v)
}
# end of one `routes:` item: remember it if it is the default route
function endroute() {
  if ((rto == "default" || rto == "0.0.0.0/0" || rto == "::/0") && rvia != "" && rgw == "") rgw = rvia
  rto = ""; rvia = ""
}
# end of one ethernets entry: print it
function flush() {
  endroute()
  if (id != "") print id "|" tolower(mac) "|" setname "|" addrs "|" (gw != "" ? gw : rgw) "|" dns
  id = ""; mac = ""; setname = ""; addrs = ""; gw = ""; rgw = ""; dns = ""; cur = ""; sub2 = ""
}
BEGIN { eth = -1 }   # eth: indent of "ethernets:" while inside it, else -1
{
  line = $0
  sub(/\r$/, "", line)
  sub(/(^|[ \t])#.*$/, "", line)          # comments
  if (line ~ /^[ \t]*$/) next
  match(line, /^ */); ind = RLENGTH
  body = substr(line, ind + 1)

  if (eth >= 0 && ind <= eth) { flush(); eth = -1 }   # left the ethernets section
  if (eth < 0) {
    if (body ~ /^ethernets[ \t]*:[ \t]*$/) { eth = ind; ent = -1 }
    next
  }
  if (ent < 0) ent = ind                  # ent: indent of the entry names ("nic0:")
  if (ind <= ent) {
    flush()
    id = body; sub(/[ \t]*:.*$/, "", id); id = unq(id)
    key = -1
    next
  }
  if (key < 0) key = ind                  # key: indent of the entry properties
  item = (body ~ /^-([ \t]|$)/)           # a block sequence item "- x"
  if (ind <= key && !item) {              # a property: "addresses: [...]", "match:", ...
    if (cur == "routes") endroute()
    cur = body; sub(/[ \t]*:.*$/, "", cur)
    v = body; sub(/^[^:]*:/, "", v); v = trim(v)
    sub2 = ""
    if (cur == "addresses") { if (v != "") addrs = flow(v) }
    else if (cur == "gateway4" || cur == "gateway6") { if (gw == "") gw = unq(v) }
    else if (cur == "set-name") setname = unq(v)
    else if (cur == "match") { t = inline(v, "macaddress"); if (t != "") mac = t }
    else if (cur == "nameservers") { t = inline(v, "addresses"); if (t != "") dns = t }
    next
  }
  # deeper lines belong to the current property
  if (cur == "addresses") { if (item) addrs = add(addrs, substr(body, 2)); next }
  if (cur == "match") { t = inline(body, "macaddress"); if (t != "") mac = t; next }
  if (cur == "nameservers") {
    if (item) { if (sub2 == "addresses") dns = add(dns, substr(body, 2)); next }
    sub2 = body; sub(/[ \t]*:.*$/, "", sub2)
    if (sub2 == "addresses") { t = inline(body, "addresses"); if (t != "") dns = t }
    next
  }
  if (cur == "routes") {
    if (item) { endroute(); body = substr(body, 2) }
    t = inline(body, "to"); if (t != "") rto = t
    t = inline(body, "via"); if (t != "") rvia = t
    next
  }
}
END { flush() }
'

# iface_by_mac MAC — name of the interface with that MAC (lower case), if any.
iface_by_mac() {
  for f in /sys/class/net/*/address; do
    if [ "$(tr '[:upper:]' '[:lower:]' <"$f")" = "$1" ]; then
      f="${f%/address}"
      echo "${f##*/}"
      return 0
    fi
  done
  return 1
}

# --- 3./4. apply the seed ----------------------------------------------------------------------
iid=none
host=localhost
first_ip=""
if [ -n "$SEED" ]; then
  iid="$(meta_get instance-id)"
  [ -n "$iid" ] || { log "meta-data has no instance-id"; iid=none; }
  h="$(meta_get local-hostname)"
  [ -n "$h" ] || h="$(meta_get hostname)"
  if [ -n "$h" ]; then
    host="$h"
    hostname "$host" || log "cannot set hostname $host"
  fi
  echo "$host" >/etc/hostname

  if [ -f "$SEED/network-config" ]; then
    grep -Eq '^[[:space:]]*version:[[:space:]]*1([[:space:]]|$)' "$SEED/network-config" \
      && log "network-config version 1 is not supported"
    tr -d '\r' <"$SEED/network-config" | awk "$NETCFG_AWK" >/run/netcfg
    : >/run/resolv.conf
    while IFS='|' read -r id mac setname addrs gw dns; do
      if [ -n "$mac" ]; then
        dev="$(iface_by_mac "$mac")" || { log "network-config $id: no interface with MAC $mac"; continue; }
      elif [ -e "/sys/class/net/$id" ]; then
        dev="$id"
      else
        log "network-config $id: no match.macaddress and no interface named $id"
        continue
      fi
      if [ -n "$setname" ] && [ "$setname" != "$dev" ]; then
        if ip link set dev "$dev" name "$setname"; then dev="$setname"; else log "cannot rename $dev to $setname"; fi
      fi
      for a in $(echo "$addrs" | tr ',' ' '); do
        if ip addr add "$a" dev "$dev"; then
          [ -n "$first_ip" ] || first_ip="${a%%/*}"
        else
          log "cannot add address $a to $dev"
        fi
      done
      ip link set dev "$dev" up || log "cannot bring $dev up"
      case "$gw" in
        "") ;;
        *:*) ip -6 route add default via "$gw" dev "$dev" || log "cannot add default route via $gw" ;;
        *) ip route add default via "$gw" dev "$dev" || log "cannot add default route via $gw" ;;
      esac
      for ns in $(echo "$dns" | tr ',' ' '); do echo "nameserver $ns" >>/run/resolv.conf; done
    done </run/netcfg
    [ -s /run/resolv.conf ] && cp /run/resolv.conf /etc/resolv.conf
  fi
else
  log "no NoCloud seed (ISO 9660 labelled cidata with meta-data on /dev/vd[b-z])"
fi

# --- 5. web server ---------------------------------------------------------------------------
mkdir -p /www
echo "$iid" >/www/index.html
echo "$host" >/www/hostname
if httpd -p 80 -h /www; then
  # httpd daemonizes before it binds: wait (up to 2 s) until port 80 (0050) listens, so a
  # test that reads READY can connect right away.
  i=0
  while ! grep -q '^ *[0-9]*: [0-9A-F:]*:0050 [0-9A-F:]* 0A ' /proc/net/tcp /proc/net/tcp6 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -le 40 ] || { log "httpd is not listening on port 80"; break; }
    usleep 50000
  done
else
  log "httpd failed to start"
fi

# --- 6. ACPI power button ----------------------------------------------------------------------
# The initramfs loaded `button` and `evdev`; busybox acpid maps the power button to the action
# file PWRF/00000080 in its config directory.
mkdir -p /run/acpi/PWRF
printf '#!/bin/sh\necho "kloudak-init: ACPI power button, powering off"\nsync\npoweroff -f\n' \
  >/run/acpi/PWRF/00000080
chmod 0755 /run/acpi/PWRF/00000080
acpid -c /run/acpi -l /run/acpid.log || log "acpid failed to start"

# kloudak.debug on the kernel command line: show what was configured, before READY.
case " $(cat /proc/cmdline) " in
  *" kloudak.debug "*)
    log "seed=${SEED:-none} netcfg: $(tr '\n' ' ' </run/netcfg 2>/dev/null)"
    ip addr | sed 's/^/kloudak-init: ip addr: /'
    ip route | sed 's/^/kloudak-init: ip route: /'
    ip -6 route | sed 's/^/kloudak-init: ip -6 route: /'
    sed 's/^/kloudak-init: resolv.conf: /' /etc/resolv.conf 2>/dev/null
    ;;
esac

# --- 7. ready -------------------------------------------------------------------------------
tty=/dev/console
[ -c /dev/ttyS0 ] && tty=/dev/ttyS0
printf 'KLOUDAK-READY instance-id=%s hostname=%s ip=%s\n' "$iid" "$host" "${first_ip:-none}" >"$tty"

# --- 8. stay up ------------------------------------------------------------------------------
# PID 1 must not exit (that panics the kernel). `wait` also reaps orphans reparented to us.
while :; do
  sleep 86400 &
  wait
done
