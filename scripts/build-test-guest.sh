#!/usr/bin/env bash
# Builds the tiny test guest that the libvirt/agent tests boot, offline, from Debian packages.
#
#   bash scripts/build-test-guest.sh [OUTDIR]
#
# OUTDIR defaults to $KLOUDAK_TEST_GUEST_DIR, else <repo>/.cache/test-guest. It receives:
#   vmlinuz         the Debian kernel (boot/vmlinuz-<kver> of its package)
#   initrd.img      initramfs: static busybox, the virtio/ext4/iso9660 modules, and
#                   scripts/guest/initramfs-init.sh as /init (mounts /dev/vda, switch_roots)
#   template.qcow2  64 MiB ext4 root: static busybox and scripts/guest/init.sh as /sbin/init
#                   (reads the NoCloud seed, configures the NIC, serves /www on port 80,
#                   prints `KLOUDAK-READY instance-id=... hostname=... ip=...` on ttyS0)
#   vmlinux         the same kernel uncompressed (ELF with the PVH entry note), when it can be
#                   extracted: QEMU boots it directly (PVH) and skips the bzImage's in-guest
#                   decompression, which under TCG costs ~2.5 s of a ~7 s boot. Use it instead
#                   of vmlinuz in <kernel> if boot time matters; everything else is the same.
#   cmdline         the kernel command line to boot it with
#   KERNEL          the kernel package and version it was built from
#   VERSION         hash of the inputs (kernel package and version, busybox, these scripts)
# Boot it with <kernel>, <initrd> and <cmdline> in the domain XML, the root disk (an overlay of
# template.qcow2) as the first virtio disk (vda) and the seed ISO as another virtio disk;
# scripts/guest/selftest.sh does exactly that.
#
# A second run with the same inputs only prints "cached" (well under a second). A change of
# inputs rebuilds in a temporary directory beside OUTDIR and swaps it in; overlays made from
# the previous template.qcow2 must not be reused after that (their backing file changed).
# Concurrent runs are serialised with a lock file (OUTDIR.lock).
#
# The kernel is never installed on the host: the package that linux-image-amd64 depends on
# (linux-image-<kver>, apt's candidate) is fetched with `apt-get download` into
# <repo>/.cache/debs and unpacked with `dpkg-deb -x` into the build's temporary directory (no
# postinst, so no initramfs regenerated for the host; depmod runs on the unpacked tree).
# Other missing packages are installed with apt (busybox-static, e2fsprogs, cpio, qemu-utils,
# kmod; xz-utils/zstd only when the modules or the kernel image need them).
#
# Environment:
#   KLOUDAK_TEST_GUEST_DIR     default OUTDIR
#   KLOUDAK_TEST_GUEST_KERNEL  use this kernel version installed on the host instead
#                              (/boot/vmlinuz-<version> and /lib/modules/<version>)
#
# Everything in OUTDIR is world-readable (files 0644, directory 0755) because libvirt runs
# QEMU as libvirt-qemu; every directory above OUTDIR must be searchable by it too (o+x), which
# the script checks and warns about.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GUEST_SRC="$ROOT/scripts/guest"
SELF="$ROOT/scripts/build-test-guest.sh"

case "${1:-}" in
  -h | --help)
    sed -n '2,43p' "$0"
    exit 0
    ;;
  -*)
    echo "usage: bash scripts/build-test-guest.sh [OUTDIR]" >&2
    exit 2
    ;;
esac
OUTDIR="${1:-${KLOUDAK_TEST_GUEST_DIR:-$ROOT/.cache/test-guest}}"
case "$OUTDIR" in /*) ;; *) OUTDIR="$PWD/$OUTDIR" ;; esac
OUTDIR="${OUTDIR%/}"

CMDLINE="console=ttyS0 panic=-1 root=/dev/vda quiet"
ROOTFS_SIZE=64M

# Modules /init loads, in this order (each after its own dependencies, which modprobe
# resolves, e.g. cdrom for isofs). Missing ones are skipped with a warning when they are built
# into the kernel (modules.builtin), and are an error otherwise. button + evdev let the guest
# see the ACPI power button (virsh shutdown).
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
  failover net_failover virtio_net crc32c_generic crc16 mbcache jbd2 ext4 isofs button evdev)

log() { printf '[%s] build-test-guest: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

# --- packages ------------------------------------------------------------------------------
# pkg_missing PKG... — prints the packages that are not installed.
pkg_missing() {
  local pkg
  for pkg in "$@"; do
    # Captured, not piped into `grep -q`: under pipefail that fails when grep exits first.
    [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null)" == ii* ]] || echo "$pkg"
  done
}

SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo -n)

# apt_update — `apt-get update` at most once per run (shared with scripts/lib.sh through
# KLOUDAK_APT_UPDATED); waits for a dpkg lock held by another apt.
apt_update() {
  [ "${KLOUDAK_APT_UPDATED:-0}" != 1 ] || return 0
  command -v apt-get >/dev/null 2>&1 || die "apt-get is not available"
  log "apt-get update"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -q >&2
  export KLOUDAK_APT_UPDATED=1
}

# apt_install PKG... — install what is missing.
apt_install() {
  local missing
  mapfile -t missing < <(pkg_missing "$@")
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "need ${missing[*]} but apt-get is not available"
  local sudo=("${SUDO[@]}")
  apt_update
  log "apt-get install ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
    --no-install-recommends "${missing[@]}" >&2
}

apt_install busybox-static e2fsprogs cpio qemu-utils kmod

busybox_files="$(dpkg -L busybox-static)"
BUSYBOX="$(grep -m1 -E '/bin/busybox$' <<<"$busybox_files")" || true
[ -x "$BUSYBOX" ] || die "busybox-static is installed but its busybox binary was not found"

# --- kernel --------------------------------------------------------------------------------
# Never `uname -r`: the host may run a different (non-Debian) kernel. KROOT is the root of the
# kernel's files ($KROOT/boot/vmlinuz-$KVER, $KROOT/lib/modules/$KVER): the host's ("") for
# KLOUDAK_TEST_GUEST_KERNEL, else the unpacked package, set by unpack_kernel during the build.
DEB_CACHE="$ROOT/.cache/debs"
KROOT=""
KPKG=""
KPKG_VERSION=""
KVER="${KLOUDAK_TEST_GUEST_KERNEL:-}"
if [ -n "$KVER" ]; then
  [ -f "/boot/vmlinuz-$KVER" ] && [ -f "/lib/modules/$KVER/modules.dep" ] \
    || die "KLOUDAK_TEST_GUEST_KERNEL=$KVER: no /boot/vmlinuz-$KVER with /lib/modules/$KVER on this host"
  KERNEL_ID="host $KVER $(stat -c '%s %Y' "/boot/vmlinuz-$KVER")"
elif [ -s "$OUTDIR/KERNEL" ] && [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -newer "$OUTDIR/KERNEL" -print -quit 2>/dev/null)" ]; then
  # What the last build found, while apt's package lists have not changed since (asking apt-cache
  # costs ~0.6 s, which every `npm start` would pay).
  read -r KPKG KPKG_VERSION <"$OUTDIR/KERNEL" || true
  KPKG_REMEMBERED=1
else
  # linux-image-amd64 (apt's candidate) depends on "linux-image-<kver> (= <version>)".
  meta="$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null)" || true
  if [ -z "$meta" ]; then
    apt_update
    meta="$(apt-cache show --no-all-versions linux-image-amd64)" || die "apt knows no package linux-image-amd64"
  fi
  dep="$(sed -n 's/^Depends: \(linux-image-[^ ,]*\) (= \([^)]*\)).*/\1 \2/p' <<<"$meta")"
  read -r KPKG KPKG_VERSION <<<"$dep" || true
fi
if [ -z "${KLOUDAK_TEST_GUEST_KERNEL:-}" ]; then
  [ -n "$KPKG" ] && [ -n "$KPKG_VERSION" ] || die "cannot tell which kernel package linux-image-amd64 depends on"
  KVER="${KPKG#linux-image-}"
  KERNEL_ID="package $KPKG $KPKG_VERSION"
fi

# unpack_kernel DIR — the kernel package's files under DIR (KROOT=DIR), with the module index
# (modules.dep) that its postinst would have made. The .deb is kept in DEB_CACHE for rebuilds.
unpack_kernel() {
  local dir="$1" deb="$DEB_CACHE/${KPKG}_${KPKG_VERSION}_amd64.deb" dl
  mkdir -p "$DEB_CACHE"
  # Builds of other OUTDIRs share the cache (test.sh's and up.sh's): one download at a time.
  exec 8>"$DEB_CACHE/.lock"
  flock 8
  if [ ! -s "$deb" ]; then
    dl="$(mktemp -d "$DEB_CACHE/.download.XXXXXX")"
    # apt downloads as the unprivileged _apt user when run as root: let it write there.
    [ "$(id -u)" -ne 0 ] || ! id _apt >/dev/null 2>&1 || chown _apt "$dl"
    log "apt-get download $KPKG=$KPKG_VERSION"
    (cd "$dl" && apt-get download -q "$KPKG=$KPKG_VERSION" >&2) || { rm -rf "$dl"; die "could not download $KPKG=$KPKG_VERSION"; }
    local got=("$dl"/*.deb)
    [ "${#got[@]}" -eq 1 ] && [ -s "${got[0]}" ] || { rm -rf "$dl"; die "apt-get download left no package in $dl"; }
    # Older kernels' packages are of no further use.
    find "$DEB_CACHE" -maxdepth 1 -name 'linux-image-*.deb' -delete
    mv "${got[0]}" "$deb"
    rm -rf "$dl"
  fi
  [ "$(dpkg-deb -f "$deb" Package Version | tr '\n' ' ')" = "Package: $KPKG Version: $KPKG_VERSION " ] \
    || die "$deb is not $KPKG $KPKG_VERSION"
  log "unpacking $(basename "$deb")"
  dpkg-deb -x "$deb" "$dir"
  exec 8>&-
  [ -f "$dir/boot/vmlinuz-$KVER" ] && [ -d "$dir/lib/modules/$KVER" ] || die "$deb holds no boot/vmlinuz-$KVER with lib/modules/$KVER"
  depmod -b "$dir" "$KVER"
  KROOT="$dir"
}

# --- cache ---------------------------------------------------------------------------------
inputs_hash() {
  {
    echo "kernel $KERNEL_ID"
    echo "busybox $(dpkg-query -W -f='${Version}' busybox-static)"
    cat "$SELF" "$GUEST_SRC/init.sh" "$GUEST_SRC/initramfs-init.sh"
  } | sha256sum | cut -c1-32
}
HASH="$(inputs_hash)"
OUTPUTS=(vmlinuz initrd.img template.qcow2 cmdline VERSION)

is_cached() {
  local f
  [ "$(cat "$OUTDIR/VERSION" 2>/dev/null)" = "$HASH" ] || return 1
  for f in "${OUTPUTS[@]}"; do [ -s "$OUTDIR/$f" ] || return 1; done
}

if is_cached; then
  # Asked apt again (its lists changed) and the answer was the same: remember it from now on.
  [ -n "${KPKG_REMEMBERED:-}" ] || [ -z "$KPKG" ] || touch "$OUTDIR/KERNEL" 2>/dev/null || true
  echo "cached: $OUTDIR ($HASH)"
  exit 0
fi

PARENT="$(dirname "$OUTDIR")"
mkdir -p "$PARENT"
exec 9>"$OUTDIR.lock"
flock 9
if is_cached; then # another run built it while we waited for the lock
  echo "cached: $OUTDIR ($HASH)"
  exit 0
fi
if [ -e "$OUTDIR" ] && [ ! -f "$OUTDIR/VERSION" ] && [ -n "$(ls -A "$OUTDIR" 2>/dev/null)" ]; then
  die "$OUTDIR exists, is not empty and was not made by this script; not replacing it"
fi

started=$SECONDS
log "building test guest: kernel $KVER${KPKG:+ ($KPKG $KPKG_VERSION)} -> $OUTDIR"

# Staging next to OUTDIR (same filesystem, so the final move is a rename).
TMP="$(mktemp -d "$PARENT/.$(basename "$OUTDIR").tmp.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
OUT="$TMP/out"
WORK="$TMP/work"
mkdir -p "$OUT" "$WORK"
[ -z "$KPKG" ] || unpack_kernel "$WORK/kernel"

# populate_busybox DIR — busybox at DIR/bin/busybox plus a symlink for every applet where
# busybox would install it (bin/sh, sbin/ip, usr/bin/awk, ...), except init/linuxrc.
populate_busybox() {
  local dir="$1" applet
  mkdir -p "$dir/bin" "$dir/sbin" "$dir/usr/bin" "$dir/usr/sbin"
  install -m 0755 "$BUSYBOX" "$dir/bin/busybox"
  "$BUSYBOX" --list-full | while read -r applet; do
    case "$applet" in sbin/init | linuxrc | bin/busybox) continue ;; esac
    ln -sf /bin/busybox "$dir/$applet"
  done
}

# --- kernel modules -> initramfs -------------------------------------------------------------
INITRAMFS="$WORK/initramfs"
populate_busybox "$INITRAMFS"
mkdir -p "$INITRAMFS"/{dev,proc,sys,newroot,etc}
mknod -m 0600 "$INITRAMFS/dev/console" c 5 1 2>/dev/null \
  || log "cannot mknod /dev/console (not root?); /init reopens it after mounting devtmpfs"

MODDIR="$KROOT/lib/modules/$KVER"
declare -A seen=()
: >"$INITRAMFS/etc/modules.load"
for mod in "${MODULES[@]}"; do
  if ! deps="$(modprobe ${KROOT:+-d "$KROOT"} -S "$KVER" --show-depends "$mod" 2>/dev/null)"; then
    if grep -Eq "/${mod//_/[-_]}\.ko(\.[a-z]+)?$" "$MODDIR/modules.builtin" 2>/dev/null; then
      log "module $mod is built into the kernel"
      continue
    fi
    die "module $mod is neither in $MODDIR nor built in"
  fi
  while read -r verb path _; do
    case "$verb" in
      builtin) continue ;; # built in: nothing to load
      insmod) ;;
      *) continue ;;
    esac
    rel="${path#"$MODDIR"/}"
    [ -z "${seen[$rel]:-}" ] || continue
    seen[$rel]=1
    dest="$INITRAMFS/lib/modules/$KVER/$rel"
    mkdir -p "$(dirname "$dest")"
    case "$rel" in
      *.ko.xz) command -v xz >/dev/null || apt_install xz-utils; xz -dc "$path" >"${dest%.xz}"; rel="${rel%.xz}" ;;
      *.ko.zst) command -v zstd >/dev/null || apt_install zstd; zstd -qdc "$path" >"${dest%.zst}"; rel="${rel%.zst}" ;;
      *.ko.gz) gzip -dc "$path" >"${dest%.gz}"; rel="${rel%.gz}" ;;
      *) cp "$path" "$dest" ;;
    esac
    echo "$rel" >>"$INITRAMFS/etc/modules.load"
  done <<<"$deps"
done
install -m 0755 "$GUEST_SRC/initramfs-init.sh" "$INITRAMFS/init"

(cd "$INITRAMFS" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
  | cpio --null --create --format=newc --reproducible --owner=0:0 --quiet) \
  | gzip -n -6 >"$OUT/initrd.img"

# --- root filesystem -------------------------------------------------------------------------
ROOTFS="$WORK/rootfs"
populate_busybox "$ROOTFS"
mkdir -p "$ROOTFS"/{dev,proc,sys,run,tmp,mnt,root,www,etc,var/log}
chmod 1777 "$ROOTFS/tmp"
install -m 0755 "$GUEST_SRC/init.sh" "$ROOTFS/sbin/init"
echo localhost >"$ROOTFS/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOTFS/etc/passwd"
printf 'root:x:0:\n' >"$ROOTFS/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$ROOTFS/etc/hosts"

truncate -s "$ROOTFS_SIZE" "$WORK/root.raw"
mkfs.ext4 -q -F -L kloudak-root -E root_owner=0:0 -d "$ROOTFS" "$WORK/root.raw"
qemu-img convert -f raw -O qcow2 "$WORK/root.raw" "$OUT/template.qcow2"

# --- kernel ----------------------------------------------------------------------------------
cp "$KROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"

# extract_vmlinux BZIMAGE OUT — the ELF kernel inside a bzImage (like the kernel's
# scripts/extract-vmlinux): decompress from the first xz/zstd/gzip magic on. True when OUT is an
# ELF file with the PVH entry note (Xen note type 18, XEN_ELFNOTE_PHYS32_ENTRY).
extract_vmlinux() {
  local img="$1" out="$2" magic tool off
  for magic in 'xz:\xfd7zXZ\x00' 'zstd:\x28\xb5\x2f\xfd' 'gzip:\x1f\x8b\x08'; do
    tool="${magic%%:*}"
    off="$(LC_ALL=C grep -abo -m1 -P "${magic#*:}" "$img" | head -n1 | cut -d: -f1)" || true
    [ -n "$off" ] || continue
    command -v "$tool" >/dev/null || apt_install "$([ "$tool" = xz ] && echo xz-utils || echo "$tool")"
    case "$tool" in
      xz) tail -c +"$((off + 1))" "$img" | xz -dcq --single-stream >"$out" 2>/dev/null || true ;;
      zstd) tail -c +"$((off + 1))" "$img" | zstd -dcq >"$out" 2>/dev/null || true ;;
      gzip) tail -c +"$((off + 1))" "$img" | gzip -dcq >"$out" 2>/dev/null || true ;;
    esac
    if [ "$(head -c4 "$out" | od -An -c | tr -d ' ')" = '177ELF' ] \
      && LC_ALL=C grep -qaP '\x04\x00\x00\x00[\x04\x08]\x00\x00\x00\x12\x00\x00\x00Xen\x00' "$out"; then
      return 0
    fi
  done
  rm -f "$out"
  return 1
}
extract_vmlinux "$OUT/vmlinuz" "$OUT/vmlinux" \
  || log "no PVH-bootable vmlinux could be extracted from vmlinuz-$KVER; only vmlinuz is provided"

# --- the rest --------------------------------------------------------------------------------
echo "$CMDLINE" >"$OUT/cmdline"
[ -z "$KPKG" ] || echo "$KPKG $KPKG_VERSION" >"$OUT/KERNEL"
echo "$HASH" >"$OUT/VERSION"
chmod 0644 "$OUT"/*
chmod 0755 "$OUT"

# Swap it in: two renames (a moment without OUTDIR, never a half-built one).
old=""
if [ -e "$OUTDIR" ]; then
  old="$TMP/old"
  mv -T "$OUTDIR" "$old"
fi
mv -T "$OUT" "$OUTDIR"
rm -rf "$TMP"

# libvirt-qemu must be able to reach the files: every directory above needs o+x.
d="$OUTDIR"
while [ "$d" != / ]; do
  d="$(dirname "$d")"
  if [ "$(($(stat -c '0%a' "$d") & 1))" -eq 0 ]; then
    log "WARNING: $d is not searchable by others (mode $(stat -c %a "$d")): QEMU, running as" \
      "libvirt-qemu, will not be able to open the files in $OUTDIR"
  fi
done

log "built in $((SECONDS - started)) s: $(du -sh "$OUTDIR" | cut -f1) in $OUTDIR"
echo "built: $OUTDIR ($HASH)"
