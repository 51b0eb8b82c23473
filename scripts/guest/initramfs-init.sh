#!/bin/sh
# /init of the Kloudak test guest's initramfs (run by the static busybox in the initramfs).
#
# Built by scripts/build-test-guest.sh, which copies this file to /init and puts beside it:
#   /bin/busybox + applet symlinks, /dev/console,
#   /lib/modules/<kver>/kernel/...  the .ko files this guest needs (uncompressed),
#   /etc/modules.load               their paths (relative to /lib/modules/<kver>/), one a line,
#                                   in load order (dependencies first).
#
# It loads the virtio / ext4 / iso9660 modules, mounts the root disk (root= on the kernel
# command line, default /dev/vda, ext4) and switch_roots into it, running /sbin/init there
# (scripts/guest/init.sh).
#
# Kernel command line options read here:
#   root=/dev/vdX        root block device (default /dev/vda)
#   rootfstype=TYPE      its filesystem (default ext4)
#   kloudak.rescue       on failure start a shell on the console instead of powering off
#
# On failure it prints one `KLOUDAK-ERROR ...` line and powers the VM off (so a test waiting
# for KLOUDAK-READY sees the domain stop instead of waiting for its timeout).

export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The kernel opens /dev/console for us when the initramfs has the node; reopen anyway, in
# case it did not (then init would run without stdin/stdout/stderr).
exec </dev/console >/dev/console 2>&1

cmdline="$(cat /proc/cmdline)"

failed_modules=""

fail() {
  echo "KLOUDAK-ERROR initramfs: $*${failed_modules:+ (modules that failed to load:$failed_modules)}"
  case " $cmdline " in
    *" kloudak.rescue "*) exec setsid cttyhack sh ;;
  esac
  poweroff -f
  sleep 5 # poweroff -f does not return; this is belt and braces before init exits (= panic)
  exit 1
}

# Load the modules in the order the build wrote them. A failure is not fatal by itself
# (crc32c-intel always fails under TCG, whose default CPU lacks SSE4.2; crc32c_generic takes
# over); a module that really matters shows up below as a missing disk or filesystem, and the
# failures are listed then (or right away when the command line has no `quiet`).
kver="$(uname -r)"
while read -r ko; do
  [ -n "$ko" ] || continue
  insmod "/lib/modules/$kver/$ko" 2>/dev/null || failed_modules="$failed_modules ${ko##*/}"
done </etc/modules.load
case " $cmdline " in
  *" quiet "*) ;;
  *) [ -z "$failed_modules" ] || echo "initramfs: modules that failed to load:$failed_modules" ;;
esac

root=/dev/vda
rootfstype=ext4
for arg in $cmdline; do
  case "$arg" in
    root=*) root="${arg#root=}" ;;
    rootfstype=*) rootfstype="${arg#rootfstype=}" ;;
  esac
done

# virtio_blk probes asynchronously: wait up to 10 s for the device node.
i=0
while [ ! -b "$root" ]; do
  i=$((i + 1))
  [ "$i" -le 100 ] || fail "root device $root did not appear"
  usleep 100000
done

mkdir -p /newroot
mount -t "$rootfstype" -o rw "$root" /newroot || fail "cannot mount $root ($rootfstype)"
[ -x /newroot/sbin/init ] || fail "no executable /sbin/init on $root"

# Hand /dev over to the new root (saves init.sh a remount); drop what the new root remounts.
mkdir -p /newroot/dev
mount --move /dev /newroot/dev || umount /dev
umount /sys
umount /proc

# switch_root empties the initramfs, chroots into /newroot and execs its init as PID 1.
exec switch_root /newroot /sbin/init
